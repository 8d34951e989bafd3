// Row-wise device kernels shared by the CUDA cosine kernels (global, local and edge affinity): norms of the rows of
// a [rows,D] matrix and the chain rule through the row normalisation. One warp per row (grid-stride over rows).
#pragma once
#include "cuda_common.cuh"

namespace lvmmed::cuda {

constexpr int kRowWarpsPerBlock = 8;

// sq[r] = ||x[r]||^2 (if sq), inv[r] = 1/||x[r]|| (0 for a zero row); *nonfinite = 1 if some sq is NaN/Inf.
template <typename T, typename A_t>
__global__ void row_norms_kernel(const T* __restrict__ x, A_t* __restrict__ sq, A_t* __restrict__ inv,
                                 int* __restrict__ nonfinite, index_t rows, index_t D) {
  const int lane = threadIdx.x % 32;
  for (index_t r = static_cast<index_t>(blockIdx.x) * kRowWarpsPerBlock + threadIdx.x / 32; r < rows;
       r += static_cast<index_t>(gridDim.x) * kRowWarpsPerBlock) {
    A_t s = 0;
    for (index_t f = lane; f < D; f += 32) {
      const A_t v = load_as<A_t>(x + r * D + f);
      s += v * v;
    }
    s = warp_sum(s);
    if (lane == 0) {
      const A_t n = sqrt(s);
      if (sq) sq[r] = s;
      inv[r] = n > A_t(0) ? A_t(1) / n : A_t(0);
      if (nonfinite && !isfinite(s)) atomicOr(nonfinite, 1);
    }
  }
}

// grad[r] = inv[r] * (d[r] - inv[r]^2 <d[r], x[r]> x[r]), d = dL/dxhat in A_t.
template <typename T, typename A_t>
__global__ void project_rows_kernel(const A_t* __restrict__ d, const T* __restrict__ x, const A_t* __restrict__ inv,
                                    T* __restrict__ grad, index_t rows, index_t D) {
  const int lane = threadIdx.x % 32;
  for (index_t r = static_cast<index_t>(blockIdx.x) * kRowWarpsPerBlock + threadIdx.x / 32; r < rows;
       r += static_cast<index_t>(gridDim.x) * kRowWarpsPerBlock) {
    A_t c = 0;
    for (index_t f = lane; f < D; f += 32) c += d[r * D + f] * load_as<A_t>(x + r * D + f);
    const A_t ir = inv[r];
    c = warp_sum(c) * ir * ir;
    for (index_t f = lane; f < D; f += 32)
      store_from(grad + r * D + f, ir * (d[r * D + f] - c * load_as<A_t>(x + r * D + f)));
  }
}

template <typename T, typename A_t>
cudaError_t launch_row_norms(const T* x, A_t* sq, A_t* inv, int* nonfinite, index_t rows, index_t D,
                             cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  LVMMED_LAUNCH(grid_stride_blocks(ceil_div(rows, kRowWarpsPerBlock)), 32 * kRowWarpsPerBlock, 0, stream,
                row_norms_kernel<T, A_t>)
  (x, sq, inv, nonfinite, rows, D);
  return cudaGetLastError();
}

template <typename T, typename A_t>
cudaError_t launch_project_rows(const A_t* d, const T* x, const A_t* inv, T* grad, index_t rows, index_t D,
                                cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  LVMMED_LAUNCH(grid_stride_blocks(ceil_div(rows, kRowWarpsPerBlock)), 32 * kRowWarpsPerBlock, 0, stream,
                project_rows_kernel<T, A_t>)
  (d, x, inv, grad, rows, D);
  return cudaGetLastError();
}

}  // namespace lvmmed::cuda
