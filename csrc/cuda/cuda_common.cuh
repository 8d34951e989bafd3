// Device helpers shared by the CUDA kernels: accumulation types, conversions, reductions, dtype dispatch.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "lvmmed/common.h"

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

constexpr int kMaxGridY = 65535;
constexpr int kMaxGridZ = 65535;

inline unsigned ceil_div(index_t a, index_t b) {
  return static_cast<unsigned>((a + b - 1) / b);
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
