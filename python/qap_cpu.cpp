// CPU backend of the QAP ops (linear_assignment, solve_qap, qap_objective[_backward]): validate, make contiguous,
// split graphs across torch's thread pool, call csrc/cpu; the batched methods run in qap_pipeline.cpp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include "cpu_glue.h"
#include "lvmmed/qap.h"
#include "qap_pipeline.h"
#include "validate.h"

namespace lvmmed::glue {
namespace {

// Graphs [0, G) in chunks handed out dynamically to torch's threads: a thread slowed down by other load on the
// machine takes fewer chunks instead of holding up the batch (results do not depend on which thread runs a graph).
template <typename F>
void for_graphs_dynamic(int64_t G, int64_t chunk, const F& f) {
  const int64_t tasks = std::min<int64_t>(at::get_num_threads(), (G + chunk - 1) / chunk);
  if (tasks <= 1) {
    if (G > 0) f(0, G);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    for (int64_t b = next.fetch_add(chunk); b < G; b = next.fetch_add(chunk)) f(b, std::min(G, b + chunk));
  });
}

template <typename T>
QAPInputs<T> inputs_of(const QAPTensors& p) {
  QAPInputs<T> in;
  in.unary = p.unary.const_data_ptr<T>();
  if (p.s.has_edges) {
    in.quad = p.quad.const_data_ptr<T>();
    in.edges_s = p.edges_s.const_data_ptr<int64_t>();
    in.edges_t = p.edges_t.const_data_ptr<int64_t>();
  }
  if (p.s.has_kb) {
    in.A = p.A.const_data_ptr<T>();
    in.B = p.B.const_data_ptr<T>();
  }
  return in;
}

at::Tensor lap_cpu(const at::Tensor& score, bool maximize, bool partial, const at::Tensor& duals) {
  const LapShape s{score.size(0), score.size(1), score.size(2)};
  auto assign = at::empty({s.G, s.N}, score.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(score.scalar_type(), "linear_assignment_cpu", [&] {
    const int64_t grain = graph_grain(s.N * s.M * std::max(s.N, s.M));
    for_graphs_dynamic(s.G, grain, [&](int64_t b, int64_t e) {
      cpu::linear_assignment<scalar_t>(score.const_data_ptr<scalar_t>(), assign.mutable_data_ptr<int64_t>(), s,
                                       maximize, partial, duals.defined() ? duals.mutable_data_ptr<double>() : nullptr,
                                       b, e);
    });
  });
  return assign;
}

at::Tensor search_cpu(const QAPTensors& p, const std::optional<at::Tensor>& init, const QAPSearchOptions& o) {
  auto assign = at::empty({p.s.G, p.s.N}, p.unary.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(p.unary.scalar_type(), "qap_search_cpu", [&] {
    const auto in = inputs_of<scalar_t>(p);
    const scalar_t* x0 = init.has_value() ? init->const_data_ptr<scalar_t>() : nullptr;
    for_graphs_dynamic(p.s.G, 4, [&](int64_t b, int64_t e) {
      cpu::qap_search<scalar_t>(in, x0, assign.mutable_data_ptr<int64_t>(), p.s, o, b, e);
    });
  });
  return assign;
}

int64_t edge_work(const QAPTensors& p) {
  return p.s.N * p.s.M + p.s.Es * p.s.Et;
}

at::Tensor edge_gradient_cpu(const at::Tensor& X, const QAPTensors& p) {
  auto out = at::empty_like(p.unary);
  AT_DISPATCH_FLOATING_TYPES(p.unary.scalar_type(), "qap_edge_gradient_cpu", [&] {
    const auto in = inputs_of<scalar_t>(p);
    at::parallel_for(0, p.s.G, graph_grain(edge_work(p)), [&](int64_t b, int64_t e) {
      cpu::qap_edge_gradient<scalar_t>(X.const_data_ptr<scalar_t>(), in, out.mutable_data_ptr<scalar_t>(), p.s, b, e);
    });
  });
  return out;
}

at::Tensor edge_objective_cpu(const at::Tensor& X, const QAPTensors& p) {
  auto out = at::empty({p.s.G}, p.unary.options());
  AT_DISPATCH_FLOATING_TYPES(p.unary.scalar_type(), "qap_edge_objective_cpu", [&] {
    const auto in = inputs_of<scalar_t>(p);
    at::parallel_for(0, p.s.G, graph_grain(edge_work(p)), [&](int64_t b, int64_t e) {
      cpu::qap_edge_objective<scalar_t>(X.const_data_ptr<scalar_t>(), in, out.mutable_data_ptr<scalar_t>(), p.s, b, e);
    });
  });
  return out;
}

at::Tensor lawler_product_cpu(const at::Tensor& X, const QAPTensors& p, bool transpose) {
  auto out = at::empty_like(p.unary);
  AT_DISPATCH_FLOATING_TYPES(p.unary.scalar_type(), "qap_lawler_product_cpu", [&] {
    const auto in = inputs_of<scalar_t>(p);
    at::parallel_for(0, p.s.G, graph_grain(edge_work(p)), [&](int64_t b, int64_t e) {
      cpu::qap_lawler_product<scalar_t>(X.const_data_ptr<scalar_t>(), in, out.mutable_data_ptr<scalar_t>(), transpose,
                                        p.s, b, e);
    });
  });
  return out;
}

at::Tensor quad_grad_cpu(const at::Tensor& grad, const at::Tensor& X, const QAPTensors& p) {
  auto out = at::empty({p.s.G, p.s.Es, p.s.Et}, p.unary.options());
  AT_DISPATCH_FLOATING_TYPES(p.unary.scalar_type(), "qap_quad_grad_cpu", [&] {
    const auto in = inputs_of<scalar_t>(p);
    at::parallel_for(0, p.s.G, graph_grain(edge_work(p)), [&](int64_t b, int64_t e) {
      cpu::qap_quad_grad<scalar_t>(grad.const_data_ptr<scalar_t>(), X.const_data_ptr<scalar_t>(), in,
                                   out.mutable_data_ptr<scalar_t>(), p.s, b, e);
    });
  });
  return out;
}

const QAPBackend& cpu_backend() {
  static const QAPBackend be{lap_cpu,      search_cpu, edge_gradient_cpu, edge_objective_cpu, lawler_product_cpu,
                             quad_grad_cpu};
  return be;
}

at::Tensor linear_assignment_op(const at::Tensor& score, bool maximize, bool partial) {
  const auto s = validate_linear_assignment(score);
  return assignment_matrix(lap_cpu(cpu_compute_input(score), maximize, partial, at::Tensor()), s.M,
                           score.scalar_type());
}

at::Tensor solve_qap_op(const at::Tensor& unary, const std::optional<at::Tensor>& quad,
                        const std::optional<at::Tensor>& edges_s, const std::optional<at::Tensor>& edges_t,
                        const std::optional<at::Tensor>& A, const std::optional<at::Tensor>& B,
                        const std::optional<at::Tensor>& init, bool partial, c10::string_view method, int64_t max_iter,
                        double time_limit, int64_t seed) {
  const auto s = validate_solve_qap(unary, quad, edges_s, edges_t, A, B, init, partial);
  const auto p = qap_tensors(unary, quad, edges_s, edges_t, A, B, s);
  return solve_qap_with(cpu_backend(), p, init, partial, std::string(method), max_iter, time_limit, seed)
      .to(unary.scalar_type());
}

at::Tensor qap_objective_op(const at::Tensor& X, const at::Tensor& unary, const std::optional<at::Tensor>& quad,
                            const std::optional<at::Tensor>& edges_s, const std::optional<at::Tensor>& edges_t,
                            const std::optional<at::Tensor>& A, const std::optional<at::Tensor>& B) {
  const auto s = validate_qap(unary, quad, edges_s, edges_t, A, B, X, "X", false);
  const auto p = qap_tensors(unary, quad, edges_s, edges_t, A, B, s);
  return qap_objective_with(cpu_backend(), X.to(p.unary.scalar_type()).contiguous(), p).to(unary.scalar_type());
}

std::vector<at::Tensor> qap_objective_backward_op(const at::Tensor& grad, const at::Tensor& X, const at::Tensor& unary,
                                                  const std::optional<at::Tensor>& quad,
                                                  const std::optional<at::Tensor>& edges_s,
                                                  const std::optional<at::Tensor>& edges_t,
                                                  const std::optional<at::Tensor>& A,
                                                  const std::optional<at::Tensor>& B) {
  const auto s = validate_qap_objective_backward(grad, X, unary, quad, edges_s, edges_t, A, B);
  const auto p = qap_tensors(unary, quad, edges_s, edges_t, A, B, s);
  const auto ct = p.unary.scalar_type();
  auto out = qap_objective_backward_with(cpu_backend(), grad.to(ct).contiguous(), X.to(ct).contiguous(), p);
  for (auto& t : out) t = t.to(unary.scalar_type());
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(lvmmed, CPU, m) {
  m.impl("linear_assignment", &linear_assignment_op);
  m.impl("solve_qap", &solve_qap_op);
  m.impl("qap_objective", &qap_objective_op);
  m.impl("qap_objective_backward", &qap_objective_backward_op);
}

}  // namespace lvmmed::glue
