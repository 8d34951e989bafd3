// CUDA backend of the affinity ops: validate, make contiguous, guard the device, launch csrc/cuda on the
// current stream with scratch from torch's caching allocator.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cuda_glue.h"
#include "gram_chunks.h"
#include "lvmmed/cosine.h"
#include "lvmmed/edge_affinity.h"
#include "lvmmed/global_affinity.h"
#include "lvmmed/knn_graph.h"
#include "lvmmed/local_affinity.h"
#include "validate.h"

namespace lvmmed::glue {
namespace {

at::Tensor global_affinity_cuda(const at::Tensor& z_s, const at::Tensor& z_t) {
  const NvtxRange nvtx("lvmmed::global_affinity");
  const auto s = validate_global_affinity(z_s, z_t);
  check_cuda(z_s, "z_s");
  const DeviceGuard guard(z_s.device());
  const auto zs = z_s.contiguous(), zt = z_t.contiguous();
  const DType dt = cuda_dtype(zs, "z_s");
  auto out = at::empty({s.G, s.N, s.M}, zs.options());
  auto ws = cuda_workspace(cuda::global_affinity_forward_workspace_bytes(dt, s), zs);
  LVMMED_CUDA_CHECK(cuda::global_affinity_forward(dt, zs.const_data_ptr(), zt.const_data_ptr(), out.mutable_data_ptr(),
                                                  ws.mutable_data_ptr(), s, current_stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> global_affinity_backward_cuda(const at::Tensor& grad, const at::Tensor& z_s,
                                                                 const at::Tensor& z_t) {
  const NvtxRange nvtx("lvmmed::global_affinity_backward");
  const auto s = validate_global_affinity_backward(grad, z_s, z_t);
  check_cuda(z_s, "z_s");
  const DeviceGuard guard(z_s.device());
  const auto g = grad.contiguous(), zs = z_s.contiguous(), zt = z_t.contiguous();
  const DType dt = cuda_dtype(zs, "z_s");
  auto grad_zs = at::empty_like(zs), grad_zt = at::empty_like(zt);
  auto ws = cuda_workspace(cuda::global_affinity_backward_workspace_bytes(dt, s), zs);
  LVMMED_CUDA_CHECK(cuda::global_affinity_backward(dt, g.const_data_ptr(), zs.const_data_ptr(), zt.const_data_ptr(),
                                                   grad_zs.mutable_data_ptr(), grad_zt.mutable_data_ptr(),
                                                   ws.mutable_data_ptr(), s, current_stream()));
  return {grad_zs, grad_zt};
}

// Accumulation dtype of the CUDA kernels for inputs of dtype dt: float64 for float64, else float32.
at::ScalarType acc_dtype(DType dt) {
  return dt == DType::Float64 ? at::kDouble : at::kFloat;
}

// out = a . b with the accumulation dtype (float32 output from float16/bfloat16 inputs on tensor cores). The emulated
// backend has no mixed-precision CPU product: it multiplies float32 copies (products of half-precision values are
// exact in float32, so only the summation order differs).
void bmm_acc(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  if (out.scalar_type() == a.scalar_type())
    at::bmm_out(out, a, b);
  else if (kEmulated)
    at::bmm_out(out, a.to(out.scalar_type()), b.to(out.scalar_type()));
  else
    at::bmm_out(out, a, b, out.scalar_type());
}

// Row norms in the accumulation dtype of x [..., D]: (sq or undefined, inv), flagging NaN/Inf rows into *flag.
std::tuple<at::Tensor, at::Tensor> row_norms_cuda(const at::Tensor& x, int64_t D, DType dt, bool with_sq, int* flag) {
  const int64_t rows = x.numel() / D;
  const auto opts = x.options().dtype(acc_dtype(dt));
  auto inv = at::empty({rows}, opts);
  auto sq = with_sq ? at::empty({rows}, opts) : at::Tensor();
  LVMMED_CUDA_CHECK(cuda::row_norms(dt, x.const_data_ptr(), rows, D, with_sq ? sq.mutable_data_ptr() : nullptr,
                                    inv.mutable_data_ptr(), flag, current_stream()));
  return {sq, inv};
}

std::tuple<at::Tensor, at::Tensor> local_affinity_cuda(const at::Tensor& y_s, const at::Tensor& y_t,
                                                       const std::optional<at::Tensor>& pos_s,
                                                       const std::optional<at::Tensor>& pos_t, int64_t top_loc,
                                                       std::optional<int64_t> top_feat) {
  const NvtxRange nvtx("lvmmed::local_affinity");
  const auto s = validate_local_affinity(y_s, y_t, pos_s, pos_t, top_loc, top_feat);
  check_cuda(y_s, "y_s");
  TORCH_CHECK_VALUE(s.P <= cuda::kLocalAffinityMaxCells && s.Q <= cuda::kLocalAffinityMaxCells,
                    "local_affinity on CUDA takes at most ", cuda::kLocalAffinityMaxCells,
                    " cells per map (P and Q), got P = ", s.P, " and Q = ", s.Q);
  const DeviceGuard guard(y_s.device());
  const auto stream = current_stream();
  const auto ys = y_s.contiguous(), yt = y_t.contiguous();
  const DType dt = cuda_dtype(ys, "y_s");
  auto out = at::empty({s.G, s.N, s.M}, ys.options());
  auto matches = at::empty({s.G, s.N, s.M, s.match_width()}, ys.options().dtype(at::kInt));
  const auto chunks = gram_chunks(s);
  if (chunks.empty()) return {out, matches};

  // NaN/Inf checks: flags [y_s, y_t, pos_s, pos_t] set on the device, read back with one synchronisation.
  auto flags = at::zeros({4}, ys.options().dtype(at::kInt));
  int* flag = flags.mutable_data_ptr<int>();
  const auto [sq_s, inv_s] = row_norms_cuda(ys, s.D, dt, true, flag);
  const auto [sq_t, inv_t] = row_norms_cuda(yt, s.D, dt, true, flag + 1);
  at::Tensor ps, pt;
  if (s.with_positions) {
    ps = pos_s->to(at::kDouble).contiguous();
    pt = pos_t->to(at::kDouble).contiguous();
    LVMMED_CUDA_CHECK(cuda::flag_nonfinite(ps.const_data_ptr<double>(), ps.numel(), flag + 2, stream));
    LVMMED_CUDA_CHECK(cuda::flag_nonfinite(pt.const_data_ptr<double>(), pt.numel(), flag + 3, stream));
  }
  const auto bad = flags.cpu();
  const int* b = bad.const_data_ptr<int>();
  if (b[0]) check_finite_rows(sq_s, "y_s", {s.G, s.N, s.P}, "[G,N,P,D]");
  if (b[1]) check_finite_rows(sq_t, "y_t", {s.G, s.M, s.Q}, "[G,M,Q,D]");
  TORCH_CHECK_VALUE(!b[2], "pos_s contains NaN or Inf values");
  TORCH_CHECK_VALUE(!b[3], "pos_t contains NaN or Inf values");

  auto ws = at::empty({max_chunk_elements(chunks, s)}, ys.options().dtype(acc_dtype(dt)));
  for (const auto& c : chunks) {
    auto gram = ws.narrow(0, 0, c.graphs * c.nodes * s.P * s.M * s.Q).view({c.graphs, c.nodes * s.P, s.M * s.Q});
    bmm_acc(gram, ys.narrow(0, c.g0, c.graphs).narrow(1, c.i0, c.nodes).reshape({c.graphs, c.nodes * s.P, s.D}),
            yt.narrow(0, c.g0, c.graphs).reshape({c.graphs, s.M * s.Q, s.D}).transpose(1, 2));
    LVMMED_CUDA_CHECK(cuda::local_affinity_forward(
        dt, gram.const_data_ptr(), sq_s.const_data_ptr(), inv_s.const_data_ptr(), sq_t.const_data_ptr(),
        inv_t.const_data_ptr(), s.with_positions ? ps.const_data_ptr<double>() : nullptr,
        s.with_positions ? pt.const_data_ptr<double>() : nullptr, out.mutable_data_ptr(),
        matches.mutable_data_ptr<int32_t>(), s, c, stream));
  }
  return {out, matches};
}

std::tuple<at::Tensor, at::Tensor> local_affinity_backward_cuda(const at::Tensor& grad, const at::Tensor& y_s,
                                                                const at::Tensor& y_t, const at::Tensor& matches,
                                                                bool with_positions, int64_t top_loc,
                                                                std::optional<int64_t> top_feat) {
  const NvtxRange nvtx("lvmmed::local_affinity_backward");
  const auto s = validate_local_affinity_backward(grad, y_s, y_t, matches, with_positions, top_loc, top_feat);
  check_cuda(y_s, "y_s");
  const DeviceGuard guard(y_s.device());
  const auto stream = current_stream();
  const auto g = grad.contiguous(), ys = y_s.contiguous(), yt = y_t.contiguous(), m = matches.contiguous();
  const DType dt = cuda_dtype(ys, "y_s");
  auto grad_ys = at::empty_like(ys), grad_yt = at::empty_like(yt);
  const auto chunks = gram_chunks(s);
  if (chunks.empty()) {  // N, M or G is 0: nothing is selected
    grad_ys.zero_();
    grad_yt.zero_();
    return {grad_ys, grad_yt};
  }
  const auto inv_s = std::get<1>(row_norms_cuda(ys, s.D, dt, false, nullptr));
  const auto inv_t = std::get<1>(row_norms_cuda(yt, s.D, dt, false, nullptr));
  // d_s = dL/d(yhat_s) [G, N*P, D], d_t = dL/d(yhat_t) [G, M*Q, D], from dense coefficient blocks of each chunk.
  const auto acc = ys.options().dtype(acc_dtype(dt));
  auto d_s = at::empty({s.G, s.N * s.P, s.D}, acc), d_t = at::zeros({s.G, s.M * s.Q, s.D}, acc);
  const int64_t most = max_chunk_elements(chunks, s);
  auto c_s = at::empty({most}, ys.options()), c_t = at::empty({most}, ys.options());
  for (const auto& c : chunks) {
    LVMMED_CUDA_CHECK(cuda::local_affinity_backward_coefficients(
        dt, g.const_data_ptr(), inv_s.const_data_ptr(), inv_t.const_data_ptr(), m.const_data_ptr<int32_t>(),
        c_s.mutable_data_ptr(), c_t.mutable_data_ptr(), s, c, stream));
    const int64_t rows = c.nodes * s.P, n = c.graphs * rows * s.M * s.Q;
    const auto cs = c_s.narrow(0, 0, n).view({c.graphs, rows, s.M * s.Q});
    const auto ct = c_t.narrow(0, 0, n).view({c.graphs, rows, s.M * s.Q}).transpose(1, 2);
    const auto ys_c = ys.narrow(0, c.g0, c.graphs).narrow(1, c.i0, c.nodes).reshape({c.graphs, rows, s.D});
    const auto yt_c = yt.narrow(0, c.g0, c.graphs).reshape({c.graphs, s.M * s.Q, s.D});
    auto ds_c = d_s.narrow(0, c.g0, c.graphs).narrow(1, c.i0 * s.P, rows);
    bmm_acc(ds_c, cs, yt_c);
    auto dt_c = d_t.narrow(0, c.g0, c.graphs);
    if (c.nodes == s.N) {
      bmm_acc(dt_c, ct, ys_c);
    } else {  // source nodes of one graph split across chunks: accumulate their contributions
      auto part = at::empty_like(dt_c);
      bmm_acc(part, ct, ys_c);
      dt_c.add_(part);
    }
  }
  LVMMED_CUDA_CHECK(cuda::project_rows(dt, d_s.const_data_ptr(), ys.const_data_ptr(), inv_s.const_data_ptr(),
                                       grad_ys.mutable_data_ptr(), s.G * s.N * s.P, s.D, stream));
  LVMMED_CUDA_CHECK(cuda::project_rows(dt, d_t.const_data_ptr(), yt.const_data_ptr(), inv_t.const_data_ptr(),
                                       grad_yt.mutable_data_ptr(), s.G * s.M * s.Q, s.D, stream));
  return {grad_ys, grad_yt};
}

at::Tensor knn_graph_cuda(const at::Tensor& z, int64_t k) {
  const NvtxRange nvtx("lvmmed::knn_graph");
  const auto s = validate_knn_graph(z, k);
  check_cuda(z, "z");
  TORCH_CHECK_VALUE(s.N <= cuda::kKnnGraphMaxNodes, "knn_graph on CUDA takes at most ", cuda::kKnnGraphMaxNodes,
                    " nodes per graph, got N = ", s.N);
  const DeviceGuard guard(z.device());
  const auto zc = z.contiguous();
  auto edges = at::empty({s.G, s.N * s.k, 2}, zc.options().dtype(at::kLong));
  LVMMED_CUDA_CHECK(cuda::knn_graph(cuda_dtype(zc, "z"), zc.const_data_ptr(), edges.mutable_data_ptr<int64_t>(), s,
                                    current_stream()));
  return edges;
}

// Edge vectors d [G,E,F] of one side, in the dtype of z.
at::Tensor edge_vectors_cuda(const at::Tensor& z, const at::Tensor& edges, const EdgeListShape& s) {
  auto d = at::empty({s.G, s.E, s.F}, z.options());
  LVMMED_CUDA_CHECK(cuda::edge_vectors(cuda_dtype(z, "z_s"), z.const_data_ptr(), edges.const_data_ptr<int64_t>(),
                                       d.mutable_data_ptr(), s, current_stream()));
  return d;
}

at::Tensor edge_affinity_cuda(const at::Tensor& z_s, const at::Tensor& edges_s, const at::Tensor& z_t,
                              const at::Tensor& edges_t) {
  const NvtxRange nvtx("lvmmed::edge_affinity");
  const auto [ss, st] = validate_edge_affinity(z_s, edges_s, z_t, edges_t);
  check_cuda(z_s, "z_s");
  const DeviceGuard guard(z_s.device());
  const auto d_s = edge_vectors_cuda(z_s.contiguous(), edges_s.contiguous(), ss);
  const auto d_t = edge_vectors_cuda(z_t.contiguous(), edges_t.contiguous(), st);
  return global_affinity_cuda(d_s, d_t);
}

std::tuple<at::Tensor, at::Tensor> edge_affinity_backward_cuda(const at::Tensor& grad, const at::Tensor& z_s,
                                                               const at::Tensor& edges_s, const at::Tensor& z_t,
                                                               const at::Tensor& edges_t) {
  const NvtxRange nvtx("lvmmed::edge_affinity_backward");
  const auto [ss, st] = validate_edge_affinity_backward(grad, z_s, edges_s, z_t, edges_t);
  check_cuda(z_s, "z_s");
  const DeviceGuard guard(z_s.device());
  const auto zs = z_s.contiguous(), zt = z_t.contiguous(), es = edges_s.contiguous(), et = edges_t.contiguous();
  const auto [grad_ds, grad_dt] =
      global_affinity_backward_cuda(grad, edge_vectors_cuda(zs, es, ss), edge_vectors_cuda(zt, et, st));
  auto grad_zs = at::empty_like(zs), grad_zt = at::empty_like(zt);
  const DType dt = cuda_dtype(zs, "z_s");
  const auto stream = current_stream();
  LVMMED_CUDA_CHECK(cuda::edge_vectors_backward(dt, grad_ds.const_data_ptr(), es.const_data_ptr<int64_t>(),
                                                grad_zs.mutable_data_ptr(), ss, stream));
  LVMMED_CUDA_CHECK(cuda::edge_vectors_backward(dt, grad_dt.const_data_ptr(), et.const_data_ptr<int64_t>(),
                                                grad_zt.mutable_data_ptr(), st, stream));
  return {grad_zs, grad_zt};
}

}  // namespace

LVMMED_CUDA_LIBRARY_IMPL(m) {
  m.impl("global_affinity", &global_affinity_cuda);
  m.impl("global_affinity_backward", &global_affinity_backward_cuda);
  m.impl("local_affinity", &local_affinity_cuda);
  m.impl("local_affinity_backward", &local_affinity_backward_cuda);
  m.impl("knn_graph", &knn_graph_cuda);
  m.impl("edge_affinity", &edge_affinity_cuda);
  m.impl("edge_affinity_backward", &edge_affinity_backward_cuda);
}

}  // namespace lvmmed::glue
