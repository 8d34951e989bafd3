// Global cosine affinity between two batches of embeddings: launchers for the CPU and CUDA kernels.
//   zs [G,N,F], zt [G,M,F] (contiguous) -> out [G,N,M], out[g,i,a] = cos(zs[g,i], zt[g,a]);
//   a zero vector has cosine 0 with everything (and receives zero gradient).
#pragma once
#include "lvmmed/common.h"

#if defined(LVMMED_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace lvmmed {

struct GlobalAffinityShape {
  index_t G, N, M, F;
};

namespace cpu {
// Graphs [g_begin, g_end) only, so the caller can split the batch across threads.
template <typename T>
void global_affinity_forward(const T* zs, const T* zt, T* out, GlobalAffinityShape s, index_t g_begin, index_t g_end);
// grad [G,N,M] -> grad_zs [G,N,F], grad_zt [G,M,F].
template <typename T>
void global_affinity_backward(const T* grad, const T* zs, const T* zt, T* grad_zs, T* grad_zt, GlobalAffinityShape s,
                              index_t g_begin, index_t g_end);
}  // namespace cpu

#if defined(LVMMED_WITH_CUDA) || defined(__CUDACC__)
namespace cuda {
// Scratch bytes the launchers need (inverse norms; backward also the two [G,*,F] products), in the
// accumulation type: fp32 for fp16/bf16/fp32, fp64 for fp64.
index_t global_affinity_forward_workspace_bytes(DType dtype, GlobalAffinityShape s);
index_t global_affinity_backward_workspace_bytes(DType dtype, GlobalAffinityShape s);
cudaError_t global_affinity_forward(DType dtype, const void* zs, const void* zt, void* out, void* workspace,
                                    GlobalAffinityShape s, cudaStream_t stream);
cudaError_t global_affinity_backward(DType dtype, const void* grad, const void* zs, const void* zt, void* grad_zs,
                                     void* grad_zt, void* workspace, GlobalAffinityShape s, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace lvmmed
