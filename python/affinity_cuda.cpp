// CUDA backend of the affinity ops: validate, make contiguous, guard the device, launch csrc/cuda on the
// current stream with scratch from torch's caching allocator.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda_glue.h"
#include "lvmmed/global_affinity.h"
#include "validate.h"

namespace lvmmed::glue {
namespace {

at::Tensor global_affinity_cuda(const at::Tensor& z_s, const at::Tensor& z_t) {
  const auto s = validate_global_affinity(z_s, z_t);
  check_cuda(z_s, "z_s");
  const c10::cuda::CUDAGuard guard(z_s.device());
  const auto zs = z_s.contiguous(), zt = z_t.contiguous();
  const DType dt = cuda_dtype(zs, "z_s");
  auto out = at::empty({s.G, s.N, s.M}, zs.options());
  auto ws = cuda_workspace(cuda::global_affinity_forward_workspace_bytes(dt, s), zs);
  C10_CUDA_CHECK(cuda::global_affinity_forward(dt, zs.const_data_ptr(), zt.const_data_ptr(), out.mutable_data_ptr(),
                                               ws.mutable_data_ptr(), s, c10::cuda::getCurrentCUDAStream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> global_affinity_backward_cuda(const at::Tensor& grad, const at::Tensor& z_s,
                                                                 const at::Tensor& z_t) {
  const auto s = validate_global_affinity_backward(grad, z_s, z_t);
  check_cuda(z_s, "z_s");
  const c10::cuda::CUDAGuard guard(z_s.device());
  const auto g = grad.contiguous(), zs = z_s.contiguous(), zt = z_t.contiguous();
  const DType dt = cuda_dtype(zs, "z_s");
  auto grad_zs = at::empty_like(zs), grad_zt = at::empty_like(zt);
  auto ws = cuda_workspace(cuda::global_affinity_backward_workspace_bytes(dt, s), zs);
  C10_CUDA_CHECK(cuda::global_affinity_backward(dt, g.const_data_ptr(), zs.const_data_ptr(), zt.const_data_ptr(),
                                                grad_zs.mutable_data_ptr(), grad_zt.mutable_data_ptr(),
                                                ws.mutable_data_ptr(), s, c10::cuda::getCurrentCUDAStream()));
  return {grad_zs, grad_zt};
}

}  // namespace

TORCH_LIBRARY_IMPL(lvmmed, CUDA, m) {
  m.impl("global_affinity", &global_affinity_cuda);
  m.impl("global_affinity_backward", &global_affinity_backward_cuda);
}

}  // namespace lvmmed::glue
