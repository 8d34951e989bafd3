// CUDA kernels of the edge affinity's gather (edge vectors z[i] - z[j]) and its adjoint. The adjoint is a gather
// too: every node sums the gradients of its edges in edge order (deterministic, no atomics), O(N*E) per graph.
#include "cuda_common.cuh"
#include "lvmmed/edge_affinity.h"

namespace lvmmed::cuda {
namespace {

constexpr int kThreads = 128;

template <typename T, typename A_t>
__global__ void edge_vectors_kernel(const T* __restrict__ z, const std::int64_t* __restrict__ edges, T* __restrict__ d,
                                    EdgeListShape s) {
  const index_t total = s.G * s.E * s.F;
  for (index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t f = k % s.F, ge = k / s.F, g = ge / s.E;
    const std::int64_t* ij = edges + ge * 2;
    store_from(d + k, load_as<A_t>(z + (g * s.N + ij[0]) * s.F + f) - load_as<A_t>(z + (g * s.N + ij[1]) * s.F + f));
  }
}

// One block per node (g, n), threads over features.
template <typename T, typename A_t>
__global__ void edge_vectors_backward_kernel(const T* __restrict__ grad_d, const std::int64_t* __restrict__ edges,
                                             T* __restrict__ grad_z, EdgeListShape s) {
  for (index_t node = blockIdx.x; node < s.G * s.N; node += gridDim.x) {
    const index_t g = node / s.N, n = node % s.N;
    const std::int64_t* eg = edges + g * s.E * 2;
    for (index_t f = threadIdx.x; f < s.F; f += blockDim.x) {
      A_t acc = 0;
      for (index_t e = 0; e < s.E; ++e) {
        if (eg[2 * e] == n) acc += load_as<A_t>(grad_d + (g * s.E + e) * s.F + f);
        if (eg[2 * e + 1] == n) acc -= load_as<A_t>(grad_d + (g * s.E + e) * s.F + f);
      }
      store_from(grad_z + node * s.F + f, acc);
    }
  }
}

}  // namespace

cudaError_t edge_vectors(DType dtype, const void* z, const std::int64_t* edges, void* d, EdgeListShape s,
                         cudaStream_t stream) {
  const index_t total = s.G * s.E * s.F;
  if (total == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    LVMMED_LAUNCH(grid_stride_blocks(ceil_div(total, kThreads)), kThreads, 0, stream, edge_vectors_kernel<T, acc_t<T>>)
    (static_cast<const T*>(z), edges, static_cast<T*>(d), s);
    return cudaGetLastError();
  });
}

cudaError_t edge_vectors_backward(DType dtype, const void* grad_d, const std::int64_t* edges, void* grad_z,
                                  EdgeListShape s, cudaStream_t stream) {
  const index_t nodes = s.G * s.N;
  if (nodes == 0 || s.F == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    LVMMED_LAUNCH(grid_stride_blocks(nodes), kThreads, 0, stream, edge_vectors_backward_kernel<T, acc_t<T>>)
    (static_cast<const T*>(grad_d), edges, static_cast<T*>(grad_z), s);
    return cudaGetLastError();
  });
}

}  // namespace lvmmed::cuda
