// CPU backend of the affinity ops: validate, make contiguous, split graphs across torch's thread pool, call csrc/cpu.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_glue.h"
#include "lvmmed/global_affinity.h"
#include "validate.h"

namespace lvmmed::glue {
namespace {

at::Tensor global_affinity_cpu(const at::Tensor& z_s, const at::Tensor& z_t) {
  const auto s = validate_global_affinity(z_s, z_t);
  const auto zs = cpu_compute_input(z_s), zt = cpu_compute_input(z_t);
  auto out = at::empty({s.G, s.N, s.M}, zs.options());
  AT_DISPATCH_FLOATING_TYPES(zs.scalar_type(), "global_affinity_cpu", [&] {
    at::parallel_for(0, s.G, graph_grain(s.N * s.M * s.F), [&](int64_t begin, int64_t end) {
      cpu::global_affinity_forward<scalar_t>(zs.const_data_ptr<scalar_t>(), zt.const_data_ptr<scalar_t>(),
                                             out.mutable_data_ptr<scalar_t>(), s, begin, end);
    });
  });
  return out.to(z_s.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> global_affinity_backward_cpu(const at::Tensor& grad, const at::Tensor& z_s,
                                                                const at::Tensor& z_t) {
  const auto s = validate_global_affinity_backward(grad, z_s, z_t);
  const auto g = cpu_compute_input(grad), zs = cpu_compute_input(z_s), zt = cpu_compute_input(z_t);
  auto grad_zs = at::empty_like(zs), grad_zt = at::empty_like(zt);
  AT_DISPATCH_FLOATING_TYPES(zs.scalar_type(), "global_affinity_backward_cpu", [&] {
    at::parallel_for(0, s.G, graph_grain(2 * s.N * s.M * s.F), [&](int64_t begin, int64_t end) {
      cpu::global_affinity_backward<scalar_t>(g.const_data_ptr<scalar_t>(), zs.const_data_ptr<scalar_t>(),
                                              zt.const_data_ptr<scalar_t>(), grad_zs.mutable_data_ptr<scalar_t>(),
                                              grad_zt.mutable_data_ptr<scalar_t>(), s, begin, end);
    });
  });
  return {grad_zs.to(z_s.scalar_type()), grad_zt.to(z_t.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(lvmmed, CPU, m) {
  m.impl("global_affinity", &global_affinity_cpu);
  m.impl("global_affinity_backward", &global_affinity_backward_cpu);
}

}  // namespace lvmmed::glue
