// Helpers of the CPU glue files (*_cpu.cpp).
#pragma once
#include <ATen/ATen.h>

#include <algorithm>

namespace lvmmed::glue {

// CPU kernels exist for float32/float64; half-precision inputs are computed in float32 and cast back.
inline at::Tensor cpu_compute_input(const at::Tensor& t) {
  const auto st = t.scalar_type();
  return (st == at::kFloat || st == at::kDouble) ? t.contiguous() : t.to(at::kFloat).contiguous();
}

// Grain for at::parallel_for over graphs: each task gets whole graphs, at least ~64k multiply-adds.
inline int64_t graph_grain(int64_t work_per_graph) {
  return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, work_per_graph));
}

}  // namespace lvmmed::glue
