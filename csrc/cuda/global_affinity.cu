// CUDA kernels of the global cosine affinity: inverse row norms + one scaled batched product forward,
// two products + a per-row projection backward (row kernels shared in cosine.cuh). fp16/bf16/fp32 accumulate in fp32,
// fp64 in fp64.
#include "cosine.cuh"
#include "cuda_common.cuh"
#include "lvmmed/global_affinity.h"
#include "scaled_gemm.cuh"

namespace lvmmed::cuda {
namespace {

template <typename T>
cudaError_t forward_impl(const T* zs, const T* zt, T* out, void* workspace, GlobalAffinityShape s,
                         cudaStream_t stream) {
  using A_t = acc_t<T>;
  A_t* inv_s = static_cast<A_t*>(workspace);
  A_t* inv_t = inv_s + s.G * s.N;
  LVMMED_CUDA_TRY((launch_row_norms<T, A_t>(zs, nullptr, inv_s, nullptr, s.G * s.N, s.F, stream)));
  LVMMED_CUDA_TRY((launch_row_norms<T, A_t>(zt, nullptr, inv_t, nullptr, s.G * s.M, s.F, stream)));
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
  LVMMED_CUDA_TRY((launch_row_norms<T, A_t>(zs, nullptr, inv_s, nullptr, s.G * s.N, s.F, stream)));
  LVMMED_CUDA_TRY((launch_row_norms<T, A_t>(zt, nullptr, inv_t, nullptr, s.G * s.M, s.F, stream)));
  Scales<A_t> by_t, by_s;
  by_t.k = inv_t;
  by_s.k = inv_s;
  LVMMED_CUDA_TRY((scaled_gemm<T, T, A_t, A_t>(grad, {s.N * s.M, s.M, 1}, zt, {s.M * s.F, s.F, 1}, ds,
                                               {s.N * s.F, s.F, 1}, by_t, s.G, s.N, s.F, s.M, stream)));
  LVMMED_CUDA_TRY((scaled_gemm<T, T, A_t, A_t>(grad, {s.N * s.M, 1, s.M}, zs, {s.N * s.F, s.F, 1}, dt,
                                               {s.M * s.F, s.F, 1}, by_s, s.G, s.M, s.F, s.N, stream)));
  LVMMED_CUDA_TRY((launch_project_rows<T, A_t>(ds, zs, inv_s, grad_zs, s.G * s.N, s.F, stream)));
  return launch_project_rows<T, A_t>(dt, zt, inv_t, grad_zt, s.G * s.M, s.F, stream);
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
