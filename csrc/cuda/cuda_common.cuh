// Device helpers shared by the CUDA kernels: accumulation types, conversions, reductions, dtype dispatch.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "lvmmed/common.h"

// The two spellings the kernels use instead of CUDA's own syntax, so that the CPU emulator (csrc/emu, which defines
// them itself) compiles the very same kernel bodies:
//   LVMMED_LAUNCH(grid, block, smem, stream, kernel)(args...)   is   kernel<<<grid, block, smem, stream>>>(args...)
//   LVMMED_SHARED(T, name, [dims]);                              is   __shared__ T name[dims];
//   LVMMED_DYNAMIC_SHARED(T, name);                              is   extern __shared__ __align__(8) T name[];
// and the device's nanosecond timer (the %globaltimer register) is lvmmed_globaltimer_ns().
#ifndef LVMMED_EMULATED
#define LVMMED_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define LVMMED_SHARED(T, name, dims) __shared__ T name dims
#define LVMMED_DYNAMIC_SHARED(T, name) extern __shared__ __align__(8) T name[]
__device__ __forceinline__ unsigned long long lvmmed_globaltimer_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
#endif

// Return the error of a launch or runtime call from the enclosing launcher.
#define LVMMED_CUDA_TRY(expr)             \
  do {                                    \
    const cudaError_t err_ = (expr);      \
    if (err_ != cudaSuccess) return err_; \
  } while (0)

namespace lvmmed::cuda {

// Accumulate fp16/bf16/fp32 in fp32 and fp64 in fp64.
template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <typename T>
using acc_t = typename Acc<T>::type;

template <typename A, typename T>
__device__ __forceinline__ A load_as(const T* p) {
  return static_cast<A>(*p);
}
template <>
__device__ __forceinline__ float load_as<float, __half>(const __half* p) {
  return __half2float(*p);
}
template <>
__device__ __forceinline__ float load_as<float, __nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}

template <typename T, typename A>
__device__ __forceinline__ void store_from(T* p, A v) {
  *p = static_cast<T>(v);
}
template <>
__device__ __forceinline__ void store_from<__half, float>(__half* p, float v) {
  *p = __float2half_rn(v);
}
template <>
__device__ __forceinline__ void store_from<__nv_bfloat16, float>(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

inline unsigned ceil_div(index_t a, index_t b) {
  return static_cast<unsigned>((a + b - 1) / b);
}

// The current device's largest grid along x (axis 0), y (1) or z (2): 2^31 - 1, 65535, 65535 on sm_80/sm_90.
inline index_t max_grid_dim(int axis) {
  const cudaDeviceAttr attr =
      axis == 0 ? cudaDevAttrMaxGridDimX : (axis == 1 ? cudaDevAttrMaxGridDimY : cudaDevAttrMaxGridDimZ);
  int dev = 0, v = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, attr, dev) != cudaSuccess || v <= 0) {
    cudaGetLastError();  // a failed query must not leave an error behind for the next launch check
    return axis == 0 ? 2147483647 : 65535;
  }
  return v;
}

// Blocks per launch of the grid-stride kernels (they loop over the rest): at most 2^20, and the device's limit.
constexpr index_t kGridStrideCap = index_t{1} << 20;
inline unsigned grid_stride_blocks(index_t blocks) {
  return static_cast<unsigned>(std::max<index_t>(1, std::min({blocks, kGridStrideCap, max_grid_dim(0)})));
}

// Calls fn(T{}) with T the C++ type of `dtype`; returns cudaErrorInvalidValue for an unknown tag.
template <typename Fn>
cudaError_t dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float32:
      return fn(float{});
    case DType::Float64:
      return fn(double{});
    case DType::Float16:
      return fn(__half{});
    case DType::BFloat16:
      return fn(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

inline index_t acc_size(DType dtype) {
  return dtype == DType::Float64 ? 8 : 4;
}

}  // namespace lvmmed::cuda
