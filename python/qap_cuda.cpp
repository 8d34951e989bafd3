// CUDA backend of the QAP ops (linear_assignment, solve_qap, qap_objective[_backward]): validate, make contiguous,
// guard the device, launch csrc/cuda on the current stream with scratch from torch's caching allocator; the batched
// methods run in qap_pipeline.cpp (products by torch's cuBLAS).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda_glue.h"
#include "lvmmed/qap.h"
#include "qap_pipeline.h"
#include "validate.h"

namespace lvmmed::glue {
namespace {

QAPInputs<void> inputs_of(const QAPTensors& p) {
  QAPInputs<void> in;
  in.unary = p.unary.const_data_ptr();
  if (p.s.has_edges) {
    in.quad = p.quad.const_data_ptr();
    in.edges_s = p.edges_s.const_data_ptr<int64_t>();
    in.edges_t = p.edges_t.const_data_ptr<int64_t>();
  }
  if (p.s.has_kb) {
    in.A = p.A.const_data_ptr();
    in.B = p.B.const_data_ptr();
  }
  return in;
}

at::Tensor lap_cuda(const at::Tensor& score, bool maximize, bool partial, const at::Tensor& duals) {
  const LapShape s{score.size(0), score.size(1), score.size(2)};
  const DType dt = cuda_dtype(score, "score");
  auto assign = at::empty({s.G, s.N}, score.options().dtype(at::kLong));
  auto ws = cuda_workspace(cuda::linear_assignment_workspace_bytes(dt, s, partial), score);
  LVMMED_CUDA_CHECK(cuda::linear_assignment(
      dt, score.const_data_ptr(), assign.mutable_data_ptr<int64_t>(), ws.mutable_data_ptr(), s, maximize, partial,
      duals.defined() ? duals.mutable_data_ptr<double>() : nullptr, current_stream()));
  return assign;
}

at::Tensor search_cuda(const QAPTensors& p, const std::optional<at::Tensor>& init, const QAPSearchOptions& o) {
  const DType dt = cuda_dtype(p.unary, "unary");
  auto assign = at::empty({p.s.G, p.s.N}, p.unary.options().dtype(at::kLong));
  auto ws = cuda_workspace(cuda::qap_search_workspace_bytes(dt, p.s, o), p.unary);
  LVMMED_CUDA_CHECK(cuda::qap_search(dt, inputs_of(p), init.has_value() ? init->const_data_ptr() : nullptr,
                                     assign.mutable_data_ptr<int64_t>(), ws.mutable_data_ptr(), p.s, o,
                                     current_stream()));
  return assign;
}

at::Tensor edge_gradient_cuda(const at::Tensor& X, const QAPTensors& p) {
  auto out = at::empty_like(p.unary);
  auto ws = cuda_workspace(cuda::qap_edge_workspace_bytes(p.s), p.unary);
  LVMMED_CUDA_CHECK(cuda::qap_edge_gradient(cuda_dtype(p.unary, "unary"), X.const_data_ptr(), inputs_of(p),
                                            out.mutable_data_ptr(), p.s, ws.mutable_data_ptr(), current_stream()));
  return out;
}

at::Tensor edge_objective_cuda(const at::Tensor& X, const QAPTensors& p) {
  auto out = at::empty({p.s.G}, p.unary.options());
  LVMMED_CUDA_CHECK(cuda::qap_edge_objective(cuda_dtype(p.unary, "unary"), X.const_data_ptr(), inputs_of(p),
                                             out.mutable_data_ptr(), p.s, current_stream()));
  return out;
}

at::Tensor lawler_product_cuda(const at::Tensor& X, const QAPTensors& p, bool transpose) {
  auto out = at::empty_like(p.unary);
  auto ws = cuda_workspace(cuda::qap_edge_workspace_bytes(p.s), p.unary);
  LVMMED_CUDA_CHECK(cuda::qap_lawler_product(cuda_dtype(p.unary, "unary"), X.const_data_ptr(), inputs_of(p),
                                             out.mutable_data_ptr(), transpose, p.s, ws.mutable_data_ptr(),
                                             current_stream()));
  return out;
}

at::Tensor quad_grad_cuda(const at::Tensor& grad, const at::Tensor& X, const QAPTensors& p) {
  auto out = at::empty({p.s.G, p.s.Es, p.s.Et}, p.unary.options());
  LVMMED_CUDA_CHECK(cuda::qap_quad_grad(cuda_dtype(p.unary, "unary"), grad.const_data_ptr(), X.const_data_ptr(),
                                        inputs_of(p), out.mutable_data_ptr(), p.s, current_stream()));
  return out;
}

const QAPBackend& cuda_backend() {
  static const QAPBackend be{lap_cuda,      search_cuda, edge_gradient_cuda, edge_objective_cuda, lawler_product_cuda,
                             quad_grad_cuda};
  return be;
}

// float32/float64 contiguous copy (float16/bfloat16 are solved in float32)
at::Tensor compute_input(const at::Tensor& t) {
  const auto st = t.scalar_type();
  return (st == at::kFloat || st == at::kDouble) ? t.contiguous() : t.to(at::kFloat).contiguous();
}

at::Tensor linear_assignment_op(const at::Tensor& score, bool maximize, bool partial) {
  const NvtxRange nvtx("lvmmed::linear_assignment");
  const auto s = validate_linear_assignment(score);
  check_cuda(score, "score");
  const DeviceGuard guard(score.device());
  return assignment_matrix(lap_cuda(compute_input(score), maximize, partial, at::Tensor()), s.M, score.scalar_type());
}

at::Tensor solve_qap_op(const at::Tensor& unary, const std::optional<at::Tensor>& quad,
                        const std::optional<at::Tensor>& edges_s, const std::optional<at::Tensor>& edges_t,
                        const std::optional<at::Tensor>& A, const std::optional<at::Tensor>& B,
                        const std::optional<at::Tensor>& init, bool partial, c10::string_view method, int64_t max_iter,
                        double time_limit, int64_t seed) {
  const NvtxRange nvtx("lvmmed::solve_qap");
  const auto s = validate_solve_qap(unary, quad, edges_s, edges_t, A, B, init, partial);
  check_cuda(unary, "unary");
  const DeviceGuard guard(unary.device());
  const auto p = qap_tensors(unary, quad, edges_s, edges_t, A, B, s);
  return solve_qap_with(cuda_backend(), p, init, partial, std::string(method), max_iter, time_limit, seed)
      .to(unary.scalar_type());
}

at::Tensor qap_objective_op(const at::Tensor& X, const at::Tensor& unary, const std::optional<at::Tensor>& quad,
                            const std::optional<at::Tensor>& edges_s, const std::optional<at::Tensor>& edges_t,
                            const std::optional<at::Tensor>& A, const std::optional<at::Tensor>& B) {
  const NvtxRange nvtx("lvmmed::qap_objective");
  const auto s = validate_qap(unary, quad, edges_s, edges_t, A, B, X, "X", false);
  check_cuda(unary, "unary");
  const DeviceGuard guard(unary.device());
  const auto p = qap_tensors(unary, quad, edges_s, edges_t, A, B, s);
  return qap_objective_with(cuda_backend(), X.to(p.unary.scalar_type()).contiguous(), p).to(unary.scalar_type());
}

std::vector<at::Tensor> qap_objective_backward_op(const at::Tensor& grad, const at::Tensor& X, const at::Tensor& unary,
                                                  const std::optional<at::Tensor>& quad,
                                                  const std::optional<at::Tensor>& edges_s,
                                                  const std::optional<at::Tensor>& edges_t,
                                                  const std::optional<at::Tensor>& A,
                                                  const std::optional<at::Tensor>& B) {
  const NvtxRange nvtx("lvmmed::qap_objective_backward");
  const auto s = validate_qap_objective_backward(grad, X, unary, quad, edges_s, edges_t, A, B);
  check_cuda(unary, "unary");
  const DeviceGuard guard(unary.device());
  const auto p = qap_tensors(unary, quad, edges_s, edges_t, A, B, s);
  const auto ct = p.unary.scalar_type();
  auto out = qap_objective_backward_with(cuda_backend(), grad.to(ct).contiguous(), X.to(ct).contiguous(), p);
  for (auto& t : out) t = t.to(unary.scalar_type());
  return out;
}

}  // namespace

LVMMED_CUDA_LIBRARY_IMPL(m) {
  m.impl("linear_assignment", &linear_assignment_op);
  m.impl("solve_qap", &solve_qap_op);
  m.impl("qap_objective", &qap_objective_op);
  m.impl("qap_objective_backward", &qap_objective_backward_op);
}

}  // namespace lvmmed::glue
