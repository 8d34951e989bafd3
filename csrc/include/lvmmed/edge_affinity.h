// Edge affinity: cosine between the edge vectors (difference of the endpoint embeddings) of two batches of graphs.
//   z_s [G,N,F], edges_s [G,Es,2] int64, z_t [G,M,F], edges_t [G,Et,2] -> out [G,Es,Et],
//   out[g,e,f] = cos(z_s[g,i] - z_s[g,j], z_t[g,a] - z_t[g,b]) for e = (i,j), f = (a,b).
// The kernels here gather the edge vectors and scatter their gradients back; the cosine matrix and its backward
// are the global-affinity kernels applied to the [G,E,F] edge vectors.
#pragma once
#include <cstdint>

#include "lvmmed/common.h"

#if defined(LVMMED_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace lvmmed {

// One side: z [G,N,F] and its edge list [G,E,2].
struct EdgeListShape {
  index_t G, N, E, F;
};

namespace cpu {
// d[g,e] = z[g, edges[g,e,0]] - z[g, edges[g,e,1]] for graphs [g_begin, g_end); d [G,E,F].
template <typename T>
void edge_vectors(const T* z, const std::int64_t* edges, T* d, EdgeListShape s, index_t g_begin, index_t g_end);
// The adjoint: grad_z [G,N,F] = sum over edges (i,j) of +grad_d at row i and -grad_d at row j, in edge order.
template <typename T>
void edge_vectors_backward(const T* grad_d, const std::int64_t* edges, T* grad_z, EdgeListShape s, index_t g_begin,
                           index_t g_end);
}  // namespace cpu

#if defined(LVMMED_WITH_CUDA) || defined(__CUDACC__)
namespace cuda {
cudaError_t edge_vectors(DType dtype, const void* z, const std::int64_t* edges, void* d, EdgeListShape s,
                         cudaStream_t stream);
// Deterministic (each node gathers its edges in edge order; no atomics).
cudaError_t edge_vectors_backward(DType dtype, const void* grad_d, const std::int64_t* edges, void* grad_z,
                                  EdgeListShape s, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace lvmmed
