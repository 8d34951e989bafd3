// Argument checks shared by the CPU and CUDA glue: every message names the argument, what was expected
// and what was received.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>

#include "lvmmed/global_affinity.h"

namespace lvmmed::glue {

std::string shape_str(const at::Tensor& t);  // "[4, 16, 128]"
std::string dtype_str(at::ScalarType st);    // "torch.float32"
// A floating-point tensor of the given rank; `layout` describes it, e.g. "[G,N,F]".
void check_float_tensor(const at::Tensor& t, const char* name, int64_t rank, const char* layout);
// Same device and dtype as `ref`.
void check_same_device_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name);
// All elements finite (used where a NaN/Inf would silently corrupt a discrete result).
void check_finite(const at::Tensor& t, const char* name);

GlobalAffinityShape validate_global_affinity(const at::Tensor& z_s, const at::Tensor& z_t);
GlobalAffinityShape validate_global_affinity_backward(const at::Tensor& grad, const at::Tensor& z_s,
                                                      const at::Tensor& z_t);

}  // namespace lvmmed::glue
