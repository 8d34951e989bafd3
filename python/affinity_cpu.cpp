// CPU backend of the affinity ops: validate, make contiguous, split graphs across torch's thread pool, call csrc/cpu.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cpu_glue.h"
#include "gram_chunks.h"
#include "lvmmed/cosine.h"
#include "lvmmed/edge_affinity.h"
#include "lvmmed/global_affinity.h"
#include "lvmmed/knn_graph.h"
#include "lvmmed/local_affinity.h"
#include "validate.h"

namespace lvmmed::glue {
namespace {

// Squared norms (if with_sq) and inverse norms [rows] of the rows of x [..., D] (contiguous float/double).
std::tuple<at::Tensor, at::Tensor> row_norms_cpu(const at::Tensor& x, int64_t D, bool with_sq) {
  const int64_t rows = x.numel() / D;
  auto inv = at::empty({rows}, x.options());
  auto sq = with_sq ? at::empty({rows}, x.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "row_norms_cpu", [&] {
    at::parallel_for(0, rows, graph_grain(D), [&](int64_t begin, int64_t end) {
      cpu::row_norms<scalar_t>(x.const_data_ptr<scalar_t>(), D, with_sq ? sq.mutable_data_ptr<scalar_t>() : nullptr,
                               inv.mutable_data_ptr<scalar_t>(), begin, end);
    });
  });
  return {sq, inv};
}

// In place: d [rows, D] = dL/dxhat of the rows of x becomes dL/dx (the chain rule through x/||x||).
at::Tensor project_rows_cpu(at::Tensor d, const at::Tensor& x, const at::Tensor& inv, int64_t D) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "project_rows_cpu", [&] {
    at::parallel_for(0, inv.numel(), graph_grain(2 * D), [&](int64_t begin, int64_t end) {
      cpu::project_rows<scalar_t>(d.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                  inv.const_data_ptr<scalar_t>(), D, d.mutable_data_ptr<scalar_t>(), begin, end);
    });
  });
  return d;
}

// Multiply-adds per graph from which global_affinity uses library GEMMs: the direct kernel computes each cosine as
// its own dot product, which loses to a blocked GEMM once a graph's rows no longer stay in cache.
constexpr int64_t kGlobalAffinityGemmWork = int64_t{1} << 20;

at::Tensor global_affinity_cpu(const at::Tensor& z_s, const at::Tensor& z_t) {
  const auto s = validate_global_affinity(z_s, z_t);
  const auto zs = cpu_compute_input(z_s), zt = cpu_compute_input(z_t);
  if (s.N * s.M * s.F >= kGlobalAffinityGemmWork) {  // out = diag(inv_s) zs zt^T diag(inv_t)
    const auto inv_s = std::get<1>(row_norms_cpu(zs, s.F, false)).view({s.G, s.N, 1});
    const auto inv_t = std::get<1>(row_norms_cpu(zt, s.F, false)).view({s.G, 1, s.M});
    return at::bmm(zs, zt.transpose(1, 2)).mul_(inv_s).mul_(inv_t).to(z_s.scalar_type());
  }
  auto out = at::empty({s.G, s.N, s.M}, zs.options());
  AT_DISPATCH_FLOATING_TYPES(zs.scalar_type(), "global_affinity_cpu", [&] {
    at::parallel_for(0, s.G, graph_grain(s.N * s.M * s.F), [&](int64_t begin, int64_t end) {
      cpu::global_affinity_forward<scalar_t>(zs.const_data_ptr<scalar_t>(), zt.const_data_ptr<scalar_t>(),
                                             out.mutable_data_ptr<scalar_t>(), s, begin, end);
    });
  });
  return out.to(z_s.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> global_affinity_backward_cpu(const at::Tensor& grad, const at::Tensor& z_s,
                                                                const at::Tensor& z_t) {
  const auto s = validate_global_affinity_backward(grad, z_s, z_t);
  const auto g = cpu_compute_input(grad), zs = cpu_compute_input(z_s), zt = cpu_compute_input(z_t);
  if (s.N * s.M * s.F >= kGlobalAffinityGemmWork) {  // dL/d(zhat_s) = (grad diag(inv_t)) zt, the same for t
    const auto inv_s = std::get<1>(row_norms_cpu(zs, s.F, false));
    const auto inv_t = std::get<1>(row_norms_cpu(zt, s.F, false));
    auto ds = at::bmm(g * inv_t.view({s.G, 1, s.M}), zt);
    auto dt = at::bmm((g * inv_s.view({s.G, s.N, 1})).transpose(1, 2), zs);
    return {project_rows_cpu(ds, zs, inv_s, s.F).to(z_s.scalar_type()),
            project_rows_cpu(dt, zt, inv_t, s.F).to(z_t.scalar_type())};
  }
  auto grad_zs = at::empty_like(zs), grad_zt = at::empty_like(zt);
  AT_DISPATCH_FLOATING_TYPES(zs.scalar_type(), "global_affinity_backward_cpu", [&] {
    at::parallel_for(0, s.G, graph_grain(2 * s.N * s.M * s.F), [&](int64_t begin, int64_t end) {
      cpu::global_affinity_backward<scalar_t>(g.const_data_ptr<scalar_t>(), zs.const_data_ptr<scalar_t>(),
                                              zt.const_data_ptr<scalar_t>(), grad_zs.mutable_data_ptr<scalar_t>(),
                                              grad_zt.mutable_data_ptr<scalar_t>(), s, begin, end);
    });
  });
  return {grad_zs.to(z_s.scalar_type()), grad_zt.to(z_t.scalar_type())};
}

// Cell positions as contiguous float64 (the location distances are computed in float64 on both backends), after
// the NaN/Inf check.
at::Tensor positions_cpu(const std::optional<at::Tensor>& pos, const char* name) {
  if (!pos) return {};
  check_finite(*pos, name);
  return pos->to(at::kDouble).contiguous();
}

// The Gram chunk y_s[g0:g0+graphs, i0:i0+nodes] . y_t[g0:g0+graphs]^T -> [graphs, nodes*P, M*Q] in ws (a library GEMM).
at::Tensor gram_chunk(const at::Tensor& ys, const at::Tensor& yt, const GramChunk& c, const LocalAffinityShape& s,
                      at::Tensor& ws) {
  const auto a = ys.narrow(0, c.g0, c.graphs).narrow(1, c.i0, c.nodes).reshape({c.graphs, c.nodes * s.P, s.D});
  const auto b = yt.narrow(0, c.g0, c.graphs).reshape({c.graphs, s.M * s.Q, s.D}).transpose(1, 2);
  auto out = ws.narrow(0, 0, c.graphs * c.nodes * s.P * s.M * s.Q).view({c.graphs, c.nodes * s.P, s.M * s.Q});
  at::bmm_out(out, a, b);
  return out;
}

std::tuple<at::Tensor, at::Tensor> local_affinity_cpu(const at::Tensor& y_s, const at::Tensor& y_t,
                                                      const std::optional<at::Tensor>& pos_s,
                                                      const std::optional<at::Tensor>& pos_t, int64_t top_loc,
                                                      std::optional<int64_t> top_feat) {
  const auto s = validate_local_affinity(y_s, y_t, pos_s, pos_t, top_loc, top_feat);
  const auto ys = cpu_compute_input(y_s), yt = cpu_compute_input(y_t);
  const auto ps = positions_cpu(pos_s, "pos_s"), pt = positions_cpu(pos_t, "pos_t");
  auto out = at::empty({s.G, s.N, s.M}, ys.options());
  auto matches = at::empty({s.G, s.N, s.M, s.match_width()}, ys.options().dtype(at::kInt));
  const auto chunks = gram_chunks(s);
  if (chunks.empty()) return {out.to(y_s.scalar_type()), matches};
  const auto [sq_s, inv_s] = row_norms_cpu(ys, s.D, true);
  const auto [sq_t, inv_t] = row_norms_cpu(yt, s.D, true);
  check_finite_rows(sq_s, "y_s", {s.G, s.N, s.P}, "[G,N,P,D]");
  check_finite_rows(sq_t, "y_t", {s.G, s.M, s.Q}, "[G,M,Q,D]");
  auto ws = at::empty({max_chunk_elements(chunks, s)}, ys.options());
  AT_DISPATCH_FLOATING_TYPES(ys.scalar_type(), "local_affinity_cpu", [&] {
    for (const auto& c : chunks) {
      const auto gram = gram_chunk(ys, yt, c, s, ws);
      at::parallel_for(0, c.graphs * c.nodes, 1, [&](int64_t begin, int64_t end) {
        cpu::local_affinity_forward<scalar_t>(
            gram.const_data_ptr<scalar_t>(), sq_s.const_data_ptr<scalar_t>(), inv_s.const_data_ptr<scalar_t>(),
            sq_t.const_data_ptr<scalar_t>(), inv_t.const_data_ptr<scalar_t>(),
            s.with_positions ? ps.const_data_ptr<double>() : nullptr,
            s.with_positions ? pt.const_data_ptr<double>() : nullptr, out.mutable_data_ptr<scalar_t>(),
            matches.mutable_data_ptr<int32_t>(), s, c, begin, end);
      });
    }
  });
  return {out.to(y_s.scalar_type()), matches};
}

std::tuple<at::Tensor, at::Tensor> local_affinity_backward_cpu(const at::Tensor& grad, const at::Tensor& y_s,
                                                               const at::Tensor& y_t, const at::Tensor& matches,
                                                               bool with_positions, int64_t top_loc,
                                                               std::optional<int64_t> top_feat) {
  const auto s = validate_local_affinity_backward(grad, y_s, y_t, matches, with_positions, top_loc, top_feat);
  const auto g = cpu_compute_input(grad), ys = cpu_compute_input(y_s), yt = cpu_compute_input(y_t);
  const auto m = matches.contiguous();
  auto grad_ys = at::empty_like(ys), grad_yt = at::empty_like(yt);
  const auto inv_s = std::get<1>(row_norms_cpu(ys, s.D, false));
  const auto inv_t = std::get<1>(row_norms_cpu(yt, s.D, false));
  AT_DISPATCH_FLOATING_TYPES(ys.scalar_type(), "local_affinity_backward_cpu", [&] {
    const auto* gp = g.const_data_ptr<scalar_t>();
    const auto* ysp = ys.const_data_ptr<scalar_t>();
    const auto* ytp = yt.const_data_ptr<scalar_t>();
    const auto* isp = inv_s.const_data_ptr<scalar_t>();
    const auto* itp = inv_t.const_data_ptr<scalar_t>();
    const auto* mp = m.const_data_ptr<int32_t>();
    at::parallel_for(0, 2 * s.G, 1, [&](int64_t begin, int64_t end) {
      cpu::local_affinity_backward<scalar_t>(gp, ysp, ytp, isp, itp, mp, grad_ys.mutable_data_ptr<scalar_t>(),
                                             grad_yt.mutable_data_ptr<scalar_t>(), s, begin, end);
    });
  });
  return {grad_ys.to(y_s.scalar_type()), grad_yt.to(y_t.scalar_type())};
}

at::Tensor knn_graph_cpu(const at::Tensor& z, int64_t k) {
  const auto s = validate_knn_graph(z, k);
  const auto zc = cpu_compute_input(z);
  auto edges = at::empty({s.G, s.N * s.k, 2}, zc.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(zc.scalar_type(), "knn_graph_cpu", [&] {
    at::parallel_for(0, s.G, graph_grain(s.N * s.N * s.F), [&](int64_t begin, int64_t end) {
      cpu::knn_graph<scalar_t>(zc.const_data_ptr<scalar_t>(), edges.mutable_data_ptr<int64_t>(), s, begin, end);
    });
  });
  return edges;
}

// Edge vectors d [G,E,F] of one side (float/double, contiguous z and edges).
at::Tensor edge_vectors_cpu(const at::Tensor& z, const at::Tensor& edges, const EdgeListShape& s) {
  auto d = at::empty({s.G, s.E, s.F}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "edge_vectors_cpu", [&] {
    at::parallel_for(0, s.G, graph_grain(s.E * s.F), [&](int64_t begin, int64_t end) {
      cpu::edge_vectors<scalar_t>(z.const_data_ptr<scalar_t>(), edges.const_data_ptr<int64_t>(),
                                  d.mutable_data_ptr<scalar_t>(), s, begin, end);
    });
  });
  return d;
}

// The adjoint of edge_vectors_cpu: grad_d [G,E,F] -> grad_z [G,N,F].
at::Tensor edge_vectors_backward_cpu(const at::Tensor& grad_d, const at::Tensor& edges, const EdgeListShape& s) {
  auto grad_z = at::empty({s.G, s.N, s.F}, grad_d.options());
  AT_DISPATCH_FLOATING_TYPES(grad_d.scalar_type(), "edge_vectors_backward_cpu", [&] {
    at::parallel_for(0, s.G, graph_grain(s.E * s.F), [&](int64_t begin, int64_t end) {
      cpu::edge_vectors_backward<scalar_t>(grad_d.const_data_ptr<scalar_t>(), edges.const_data_ptr<int64_t>(),
                                           grad_z.mutable_data_ptr<scalar_t>(), s, begin, end);
    });
  });
  return grad_z;
}

at::Tensor edge_affinity_cpu(const at::Tensor& z_s, const at::Tensor& edges_s, const at::Tensor& z_t,
                             const at::Tensor& edges_t) {
  const auto [ss, st] = validate_edge_affinity(z_s, edges_s, z_t, edges_t);
  const auto d_s = edge_vectors_cpu(cpu_compute_input(z_s), edges_s.contiguous(), ss);
  const auto d_t = edge_vectors_cpu(cpu_compute_input(z_t), edges_t.contiguous(), st);
  return global_affinity_cpu(d_s, d_t).to(z_s.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> edge_affinity_backward_cpu(const at::Tensor& grad, const at::Tensor& z_s,
                                                              const at::Tensor& edges_s, const at::Tensor& z_t,
                                                              const at::Tensor& edges_t) {
  const auto [ss, st] = validate_edge_affinity_backward(grad, z_s, edges_s, z_t, edges_t);
  const auto zs = cpu_compute_input(z_s), zt = cpu_compute_input(z_t);
  const auto es = edges_s.contiguous(), et = edges_t.contiguous();
  const auto [grad_ds, grad_dt] =
      global_affinity_backward_cpu(cpu_compute_input(grad), edge_vectors_cpu(zs, es, ss), edge_vectors_cpu(zt, et, st));
  return {edge_vectors_backward_cpu(grad_ds, es, ss).to(z_s.scalar_type()),
          edge_vectors_backward_cpu(grad_dt, et, st).to(z_t.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(lvmmed, CPU, m) {
  m.impl("global_affinity", &global_affinity_cpu);
  m.impl("global_affinity_backward", &global_affinity_backward_cpu);
  m.impl("local_affinity", &local_affinity_cpu);
  m.impl("local_affinity_backward", &local_affinity_backward_cpu);
  m.impl("knn_graph", &knn_graph_cpu);
  m.impl("edge_affinity", &edge_affinity_cpu);
  m.impl("edge_affinity_backward", &edge_affinity_backward_cpu);
}

}  // namespace lvmmed::glue
