// Helpers of the CUDA glue files (*_cuda.cpp).
#pragma once
#include <ATen/ATen.h>
#include <nvtx3/nvToolsExt.h>

#include <algorithm>

#include "lvmmed/common.h"
#include "validate.h"

namespace lvmmed::glue {

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

// A kernel argument that must live on CUDA (the dispatcher picked CUDA because some argument does).
inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), name, " must be a CUDA tensor here, got device ", t.device());
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
