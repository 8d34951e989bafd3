// Local ("region-aware") affinity between the feature maps of two batches of graphs: launchers of the CPU and CUDA
// kernels. The caller computes the Gram matrix of the maps chunk by chunk (a library GEMM); these kernels turn a
// chunk of it into nearest-neighbour matches, top-k selections and cosine means, and scatter gradients back.
//
//   y_s [G,N,P,D], y_t [G,M,Q,D] feature maps (P, Q positions of D channels), optional cell positions
//   pos_s [G,N,P,2], pos_t [G,M,Q,2] (float64 here). For the pair (i, a) of graph g, with q_p = y_s[g,i,p] and
//   q'_p' = y_t[g,a,p']:
//     feat(i->a) = mean over the feat_s positions p with the smallest ||q_p - q'_m'(p)||, m'(p) = argmin_p' ||q_p -
//     q'_p'||,
//                  of cos(q_p, q'_m'(p));
//     loc(i->a)  = the same with m(p) = argmin_p' ||pos_s[p] - pos_t[p']|| and the loc_s smallest position distances;
//     l(i->a)    = (loc + feat)/2 with positions, feat without; (a->i) symmetrically with p' over Q;
//     out[g,i,a] = (l(i->a) + l(a->i))/2.
//   Ties (equal distances) go to the lower index, both in the argmins and in the top-k selections.
//   A zero vector has cosine 0 with everything.
//
// matches [G,N,M,W] int32 records every selection, W = (P+Q) without positions, 2(P+Q) with:
//   [0,P)       feat i->a: m'(p) for the selected p, -1 for the others
//   [P,P+Q)     feat a->i: for each p' of y_t[g,a] its nearest p in y_s[g,i], or -1
//   [P+Q,2P+Q)  loc i->a, [2P+Q,2P+2Q) loc a->i: the same for the location term.
// The backward only needs matches, the maps and their norms: the gradient flows into the selected vectors.
#pragma once
#include <cstdint>

#include "lvmmed/common.h"

#if defined(LVMMED_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace lvmmed {

struct LocalAffinityShape {
  index_t G, N, M, P, Q, D;
  bool with_positions;
  index_t feat_s, feat_t;  // positions averaged by the feature term: min(top_feat, P), min(top_feat, Q)
  index_t loc_s, loc_t;    // positions averaged by the location term: min(top_loc, P), min(top_loc, Q)

  // constexpr: also callable from device code (nvcc --expt-relaxed-constexpr).
  constexpr index_t match_width() const { return (with_positions ? 2 : 1) * (P + Q); }
  // Weight of one selected cosine in out[g,i,a], per term: 1/2 (directions) x 1/2 (loc/feat, with positions) / k.
  constexpr double feat_weight(index_t kept) const { return (with_positions ? 0.25 : 0.5) / static_cast<double>(kept); }
  constexpr double loc_weight(index_t kept) const { return 0.25 / static_cast<double>(kept); }
};

// A slab of the Gram matrix y_s . y_t^T computed by the caller, laid out [graphs, nodes*P, M*Q] (contiguous):
// graphs [g0, g0+graphs) x source nodes [i0, i0+nodes) of each (nodes == N whenever graphs > 1).
// Its "rows" are the (graph, node) pairs r in [0, graphs*nodes): g = g0 + r / nodes, i = i0 + r % nodes.
struct GramChunk {
  index_t g0, graphs, i0, nodes;
};

namespace cpu {
// Forward for the chunk rows [r_begin, r_end): writes out[g,i,:] and matches[g,i,:,:]. gram is the chunk (in T);
// sq_*/inv_* [G*N*P] / [G*M*Q] squared norms and inverse norms (0 for zero rows) of the map rows; pos_* may be null
// (then s.with_positions is false).
template <typename T>
void local_affinity_forward(const T* gram, const T* sq_s, const T* inv_s, const T* sq_t, const T* inv_t,
                            const double* pos_s, const double* pos_t, T* out, std::int32_t* matches,
                            LocalAffinityShape s, GramChunk c, index_t r_begin, index_t r_end);
// grad [G,N,M] -> grad_ys [G,N,P,D], grad_yt [G,M,Q,D] for the tasks [t_begin, t_end) of [0, 2G): task 2g computes
// graph g's grad_ys, task 2g+1 its grad_yt. inv_* as in the forward.
template <typename T>
void local_affinity_backward(const T* grad, const T* ys, const T* yt, const T* inv_s, const T* inv_t,
                             const std::int32_t* matches, T* grad_ys, T* grad_yt, LocalAffinityShape s, index_t t_begin,
                             index_t t_end);
}  // namespace cpu

#if defined(LVMMED_WITH_CUDA) || defined(__CUDACC__)
namespace cuda {
// Largest P and Q the CUDA forward takes: a block keeps one float64 distance and one index per cell in the
// default 48 KB of shared memory.
constexpr index_t kLocalAffinityMaxCells = 4000;
// Sets *nonfinite = 1 if one of the n doubles is NaN or Inf.
cudaError_t flag_nonfinite(const double* x, index_t n, int* nonfinite, cudaStream_t stream);
// Forward for every pair of the chunk: gram [graphs, nodes*P, M*Q], sq_*/inv_* from row_norms (lvmmed/cosine.h), all
// in the accumulation type A (fp32; fp64 for fp64); out [G,N,M] in the dtype. P, Q <= kLocalAffinityMaxCells.
cudaError_t local_affinity_forward(DType dtype, const void* gram, const void* sq_s, const void* inv_s, const void* sq_t,
                                   const void* inv_t, const double* pos_s, const double* pos_t, void* out,
                                   std::int32_t* matches, LocalAffinityShape s, GramChunk c, cudaStream_t stream);
// Dense coefficients of the backward for the chunk, both [graphs, nodes*P, M*Q] in the dtype:
//   c_s[p,p'] = grad[g,i,a] * w(p,p') * inv_t[p'],  c_t[p,p'] = grad[g,i,a] * w(p,p') * inv_s[p],
// w(p,p') the summed weights of the selections that pair p with p'. Then d_s = c_s . y_t = dL/d(yhat_s) and
// d_t = c_t^T . y_s = dL/d(yhat_t) (library GEMMs in the glue), and project_rows finishes the chain rule.
cudaError_t local_affinity_backward_coefficients(DType dtype, const void* grad, const void* inv_s, const void* inv_t,
                                                 const std::int32_t* matches, void* c_s, void* c_t,
                                                 LocalAffinityShape s, GramChunk c, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace lvmmed
