// CUDA kernels of the global cosine affinity: inverse row norms + one scaled batched product forward,
// two products + a per-row projection backward. fp16/bf16/fp32 accumulate in fp32, fp64 in fp64.
#include "cuda_common.cuh"
#include "lvmmed/global_affinity.h"
#include "scaled_gemm.cuh"

namespace lvmmed::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

// inv[r] = 1/||x[r]|| (0 for a zero row), x [rows,F]; one warp per row.
template <typename T, typename A_t>
__global__ void inverse_norms_kernel(const T* __restrict__ x, A_t* __restrict__ inv, index_t rows, index_t F) {
  const index_t r = static_cast<index_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  A_t sq = 0;
  for (index_t f = lane; f < F; f += 32) {
    const A_t v = load_as<A_t>(x + r * F + f);
    sq += v * v;
  }
  sq = warp_sum(sq);
  if (lane == 0) {
    const A_t n = sqrt(sq);
    inv[r] = n > A_t(0) ? A_t(1) / n : A_t(0);
  }
}

// grad[r] = inv[r] * (d[r] - inv[r]^2 <d[r], x[r]> x[r]): the chain rule through x/||x||; one warp per row.
template <typename T, typename A_t>
__global__ void project_rows_kernel(const A_t* __restrict__ d, const T* __restrict__ x, const A_t* __restrict__ inv,
                                    T* __restrict__ grad, index_t rows, index_t F) {
  const index_t r = static_cast<index_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  A_t c = 0;
  for (index_t f = lane; f < F; f += 32) c += d[r * F + f] * load_as<A_t>(x + r * F + f);
  const A_t ir = inv[r];
  c = warp_sum(c) * ir * ir;
  for (index_t f = lane; f < F; f += 32)
    store_from(grad + r * F + f, ir * (d[r * F + f] - c * load_as<A_t>(x + r * F + f)));
}

template <typename T, typename A_t>
cudaError_t inverse_norms(const T* x, A_t* inv, index_t rows, index_t F, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  inverse_norms_kernel<T, A_t><<<ceil_div(rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, stream>>>(x, inv, rows, F);
  return cudaGetLastError();
}

template <typename T>
cudaError_t forward_impl(const T* zs, const T* zt, T* out, void* workspace, GlobalAffinityShape s,
                         cudaStream_t stream) {
  using A_t = acc_t<T>;
  A_t* inv_s = static_cast<A_t*>(workspace);
  A_t* inv_t = inv_s + s.G * s.N;
  LVMMED_CUDA_TRY(inverse_norms(zs, inv_s, s.G * s.N, s.F, stream));
  LVMMED_CUDA_TRY(inverse_norms(zt, inv_t, s.G * s.M, s.F, stream));
  // out[i,j] = inv_s[i] inv_t[j] sum_f zs[i,f] zt[j,f]
  Scales<A_t> sc;
  sc.row = inv_s;
  sc.col = inv_t;
  return scaled_gemm<T, T, T, A_t>(zs, {s.N * s.F, s.F, 1}, zt, {s.M * s.F, 1, s.F}, out, {s.N * s.M, s.M, 1}, sc, s.G,
                                   s.N, s.M, s.F, stream);
}

template <typename T>
cudaError_t backward_impl(const T* grad, const T* zs, const T* zt, T* grad_zs, T* grad_zt, void* workspace,
                          GlobalAffinityShape s, cudaStream_t stream) {
  using A_t = acc_t<T>;
  A_t* inv_s = static_cast<A_t*>(workspace);
  A_t* inv_t = inv_s + s.G * s.N;
  A_t* ds = inv_t + s.G * s.M;     // [G,N,F] = grad @ zthat
  A_t* dt = ds + s.G * s.N * s.F;  // [G,M,F] = grad^T @ zshat
  LVMMED_CUDA_TRY(inverse_norms(zs, inv_s, s.G * s.N, s.F, stream));
  LVMMED_CUDA_TRY(inverse_norms(zt, inv_t, s.G * s.M, s.F, stream));
  Scales<A_t> by_t, by_s;
  by_t.k = inv_t;
  by_s.k = inv_s;
  LVMMED_CUDA_TRY((scaled_gemm<T, T, A_t, A_t>(grad, {s.N * s.M, s.M, 1}, zt, {s.M * s.F, s.F, 1}, ds,
                                               {s.N * s.F, s.F, 1}, by_t, s.G, s.N, s.F, s.M, stream)));
  LVMMED_CUDA_TRY((scaled_gemm<T, T, A_t, A_t>(grad, {s.N * s.M, 1, s.M}, zs, {s.N * s.F, s.F, 1}, dt,
                                               {s.M * s.F, s.F, 1}, by_s, s.G, s.M, s.F, s.N, stream)));
  const index_t rs = s.G * s.N, rt = s.G * s.M;
  if (rs > 0)
    project_rows_kernel<T, A_t>
        <<<ceil_div(rs, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, stream>>>(ds, zs, inv_s, grad_zs, rs, s.F);
  LVMMED_CUDA_TRY(cudaGetLastError());
  if (rt > 0)
    project_rows_kernel<T, A_t>
        <<<ceil_div(rt, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, stream>>>(dt, zt, inv_t, grad_zt, rt, s.F);
  return cudaGetLastError();
}

}  // namespace

index_t global_affinity_forward_workspace_bytes(DType dtype, GlobalAffinityShape s) {
  return acc_size(dtype) * (s.G * s.N + s.G * s.M);
}

index_t global_affinity_backward_workspace_bytes(DType dtype, GlobalAffinityShape s) {
  return acc_size(dtype) * (s.G * s.N + s.G * s.M + s.G * s.N * s.F + s.G * s.M * s.F);
}

cudaError_t global_affinity_forward(DType dtype, const void* zs, const void* zt, void* out, void* workspace,
                                    GlobalAffinityShape s, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return forward_impl<T>(static_cast<const T*>(zs), static_cast<const T*>(zt), static_cast<T*>(out), workspace, s,
                           stream);
  });
}

cudaError_t global_affinity_backward(DType dtype, const void* grad, const void* zs, const void* zt, void* grad_zs,
                                     void* grad_zt, void* workspace, GlobalAffinityShape s, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return backward_impl<T>(static_cast<const T*>(grad), static_cast<const T*>(zs), static_cast<const T*>(zt),
                            static_cast<T*>(grad_zs), static_cast<T*>(grad_zt), workspace, s, stream);
  });
}

}  // namespace lvmmed::cuda
