// k-nearest-neighbour graphs of batches of point sets (Euclidean, no self loops): launchers of the CPU and CUDA
// kernels.
//   z [G,N,F] (contiguous) -> edges [G, N*k, 2] int64: rows i*k .. i*k+k-1 are (i, j_0), ..., (i, j_{k-1}), the k
//   nearest j != i of node i by increasing distance; equal distances go to the lower index. 1 <= k <= N-1.
#pragma once
#include <cstdint>

#include "lvmmed/common.h"

#if defined(LVMMED_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace lvmmed {

struct KnnGraphShape {
  index_t G, N, F, k;
};

namespace cpu {
// Graphs [g_begin, g_end) only, so the caller can split the batch across threads.
template <typename T>
void knn_graph(const T* z, std::int64_t* edges, KnnGraphShape s, index_t g_begin, index_t g_end);
}  // namespace cpu

#if defined(LVMMED_WITH_CUDA) || defined(__CUDACC__)
namespace cuda {
// Largest N the CUDA kernel takes (one block per node keeps the N distances of its row in shared memory).
constexpr index_t kKnnGraphMaxNodes = 4096;
cudaError_t knn_graph(DType dtype, const void* z, std::int64_t* edges, KnnGraphShape s, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace lvmmed
