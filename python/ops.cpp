// The lvmmed operator library: every schema, declared once. Backends attach in ops_cpu.cpp / ops_cuda.cpp,
// fake kernels and autograd in lvmmed_ext/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(lvmmed, m) {
  // z_s [G,N,F], z_t [G,M,F] -> [G,N,M] cosine affinities
  m.def("global_affinity(Tensor z_s, Tensor z_t) -> Tensor", {at::Tag::pt2_compliant_tag});
  // grad [G,N,M], z_s [G,N,F], z_t [G,M,F] -> (grad_z_s [G,N,F], grad_z_t [G,M,F])
  m.def("global_affinity_backward(Tensor grad, Tensor z_s, Tensor z_t) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
}
