// CUDA kernel of the batched kNN graph: one block per node; its warps compute the squared distances to every node
// into shared memory, then k rounds of a block-wide argmin pick the neighbours, nearest first (lower index on ties).
#include <climits>

#include "cuda_common.cuh"
#include "lvmmed/knn_graph.h"

namespace lvmmed::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

template <typename T, typename A_t>
__global__ void __launch_bounds__(kThreads)
    knn_graph_kernel(const T* __restrict__ z, std::int64_t* __restrict__ edges, KnnGraphShape s) {
  LVMMED_DYNAMIC_SHARED(double, smem);  // dist [N] (A_t), then taken [N] (bytes)
  LVMMED_SHARED(A_t, best_v, [kWarps]);
  LVMMED_SHARED(int, best_i, [kWarps]);
  A_t* dist = reinterpret_cast<A_t*>(smem);
  unsigned char* taken = reinterpret_cast<unsigned char*>(dist + s.N);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  for (index_t row = blockIdx.x; row < s.G * s.N; row += gridDim.x) {
    const index_t g = row / s.N, i = row % s.N;
    const T* zg = z + g * s.N * s.F;
    for (index_t j = warp; j < s.N; j += kWarps) {
      A_t acc = 0;
      for (index_t f = lane; f < s.F; f += 32) {
        const A_t d = load_as<A_t>(zg + i * s.F + f) - load_as<A_t>(zg + j * s.F + f);
        acc += d * d;
      }
      acc = warp_sum(acc);
      if (lane == 0) {
        dist[j] = acc;
        taken[j] = j == i;  // no self loops
      }
    }
    __syncthreads();
    for (index_t r = 0; r < s.k; ++r) {
      A_t v = A_t(INFINITY);
      int arg = INT_MAX;
      for (index_t j = tid; j < s.N; j += kThreads) {
        const bool better = dist[j] < v || (dist[j] == v && static_cast<int>(j) < arg);
        if (!taken[j] && better) {
          v = dist[j];
          arg = static_cast<int>(j);
        }
      }
      for (int off = 16; off > 0; off >>= 1) {
        const A_t ov = __shfl_xor_sync(0xffffffffu, v, off);
        const int oi = __shfl_xor_sync(0xffffffffu, arg, off);
        if (ov < v || (ov == v && oi < arg)) {
          v = ov;
          arg = oi;
        }
      }
      if (lane == 0) {
        best_v[warp] = v;
        best_i[warp] = arg;
      }
      __syncthreads();
      if (tid == 0) {
        for (int w = 1; w < kWarps; ++w)
          if (best_v[w] < v || (best_v[w] == v && best_i[w] < arg)) {
            v = best_v[w];
            arg = best_i[w];
          }
        // k <= N-1 untaken nodes exist, so arg is a node (distances are finite: inputs are checked).
        edges[(row * s.k + r) * 2] = i;
        edges[(row * s.k + r) * 2 + 1] = arg;
        taken[arg] = 1;
      }
      __syncthreads();
    }
  }
}

}  // namespace

cudaError_t knn_graph(DType dtype, const void* z, std::int64_t* edges, KnnGraphShape s, cudaStream_t stream) {
  const index_t rows = s.G * s.N;
  if (rows == 0) return cudaSuccess;
  if (s.N > kKnnGraphMaxNodes || s.k < 1 || s.k > s.N - 1) return cudaErrorInvalidValue;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A_t = acc_t<T>;
    const size_t smem = static_cast<size_t>(s.N) * (sizeof(A_t) + 1);
    LVMMED_LAUNCH(grid_stride_blocks(rows), kThreads, smem, stream, knn_graph_kernel<T, A_t>)
    (static_cast<const T*>(z), edges, s);
    return cudaGetLastError();
  });
}

}  // namespace lvmmed::cuda
