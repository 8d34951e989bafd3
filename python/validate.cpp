// Argument checks shared by the CPU and CUDA glue.
#include "validate.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <sstream>

namespace lvmmed::glue {

std::string dtype_str(at::ScalarType st) {
  return "torch." + std::string(c10::getDtypeNames(st).first);
}

std::string shape_str(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}

void check_float_tensor(const at::Tensor& t, const char* name, int64_t rank, const char* layout) {
  TORCH_CHECK_VALUE(t.defined(), name, " must be a tensor ", layout, ", got None");
  TORCH_CHECK_VALUE(t.dim() == rank, name, " must be ", layout, " (", rank, "-D), got shape ", shape_str(t));
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name,
                   " must have a floating-point dtype (float32, float64, float16 or bfloat16), got ",
                   dtype_str(t.scalar_type()));
}

void check_same_device_dtype(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), ref_name, " and ", name, " must be on the same device, got ", ref_name,
                    " on ", ref.device(), " and ", name, " on ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), ref_name, " and ", name, " must have the same dtype, got ",
                   ref_name, " ", dtype_str(ref.scalar_type()), " and ", name, " ", dtype_str(t.scalar_type()));
}

void check_finite(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(at::isfinite(t).all().item<bool>(), name, " contains NaN or Inf values");
}

GlobalAffinityShape validate_global_affinity(const at::Tensor& z_s, const at::Tensor& z_t) {
  check_float_tensor(z_s, "z_s", 3, "[G,N,F]");
  check_float_tensor(z_t, "z_t", 3, "[G,M,F]");
  check_same_device_dtype(z_t, "z_t", z_s, "z_s");
  TORCH_CHECK_VALUE(z_s.size(0) == z_t.size(0), "z_s [G,N,F] and z_t [G,M,F] must have the same number of graphs G, ",
                    "got z_s ", shape_str(z_s), " and z_t ", shape_str(z_t));
  TORCH_CHECK_VALUE(z_s.size(2) == z_t.size(2), "z_s [G,N,F] and z_t [G,M,F] must have the same feature size F, ",
                    "got z_s ", shape_str(z_s), " and z_t ", shape_str(z_t));
  TORCH_CHECK_VALUE(z_s.size(2) > 0, "z_s and z_t need at least one feature (F >= 1), got z_s ", shape_str(z_s));
  return {z_s.size(0), z_s.size(1), z_t.size(1), z_s.size(2)};
}

GlobalAffinityShape validate_global_affinity_backward(const at::Tensor& grad, const at::Tensor& z_s,
                                                      const at::Tensor& z_t) {
  const auto s = validate_global_affinity(z_s, z_t);
  check_float_tensor(grad, "grad", 3, "[G,N,M]");
  check_same_device_dtype(grad, "grad", z_s, "z_s");
  TORCH_CHECK_VALUE(grad.size(0) == s.G && grad.size(1) == s.N && grad.size(2) == s.M, "grad must be [G,N,M] = [", s.G,
                    ", ", s.N, ", ", s.M, "], got ", shape_str(grad));
  return s;
}

}  // namespace lvmmed::glue
