// Helpers of the CUDA glue files (*_cuda.cpp).
//
// The glue is compiled twice: for the CUDA backend (torch's CUDA tensors, streams and guards), and, with
// LVMMED_EMULATED, for the test-only emulated backend: the same glue on CPU tensors, registered as the lvmmed_emu
// operators, its kernels run by the CPU emulator of csrc/emu (tests/emulator.py). Only the few lines below differ.
#pragma once
#include <ATen/ATen.h>
#include <cuda_runtime_api.h>
#include <nvtx3/nvToolsExt.h>

#include <algorithm>

#include "lvmmed/common.h"
#include "validate.h"

#ifdef LVMMED_EMULATED
#define LVMMED_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(lvmmed_emu, CPU, m)
#define LVMMED_CUDA_CHECK(expr)                                                                          \
  do {                                                                                                   \
    const cudaError_t lvmmed_err_ = (expr);                                                              \
    TORCH_CHECK(lvmmed_err_ == cudaSuccess, "CUDA error (emulated): ", cudaGetErrorString(lvmmed_err_)); \
  } while (0)
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define LVMMED_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(lvmmed, CUDA, m)
#define LVMMED_CUDA_CHECK(expr) C10_CUDA_CHECK(expr)
#endif

namespace lvmmed::glue {

#ifdef LVMMED_EMULATED
// The emulated device has no streams or device index to guard: launches run to completion on the host.
struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};
inline cudaStream_t current_stream() {
  return nullptr;
}
constexpr bool kEmulated = true;
#else
using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() {
  return c10::cuda::getCurrentCUDAStream();
}
constexpr bool kEmulated = false;
#endif

// The csrc dtype tag of a floating tensor; TypeError for anything else.
inline DType cuda_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::Float32;
    case at::kDouble:
      return DType::Float64;
    case at::kHalf:
      return DType::Float16;
    case at::kBFloat16:
      return DType::BFloat16;
    default:
      TORCH_CHECK_TYPE(false, name, " must be float32, float64, float16 or bfloat16 on CUDA, got ",
                       dtype_str(t.scalar_type()));
  }
}

// A kernel argument that must live on CUDA (the dispatcher picked CUDA because some argument does); on the CPU for the
// emulated backend.
inline void check_cuda(const at::Tensor& t, const char* name) {
  if (kEmulated) {
    TORCH_CHECK_VALUE(t.is_cpu(), name, " must be a CPU tensor for the emulated CUDA backend, got device ", t.device());
  } else {
    TORCH_CHECK_VALUE(t.is_cuda(), name, " must be a CUDA tensor here, got device ", t.device());
  }
}

// An NVTX range named after the op around all of its launches, so Nsight Systems shows which op every kernel
// belongs to (lvmmed bench --profile; nsys profile -t cuda,nvtx). Header-only NVTX 3: a no-op unless a profiler
// is attached.
class NvtxRange {
 public:
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

// Scratch bytes from torch's caching allocator on like's device (never a raw cudaMalloc).
inline at::Tensor cuda_workspace(int64_t bytes, const at::Tensor& like) {
  return at::empty({std::max<int64_t>(bytes, 1)}, like.options().dtype(at::kByte));
}

}  // namespace lvmmed::glue
