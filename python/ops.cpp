// The lvmmed operator library: every schema, declared once. Backends attach in ops_cpu.cpp / ops_cuda.cpp,
// fake kernels and autograd in lvmmed_ext/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(lvmmed, m) {
  // z_s [G,N,F], z_t [G,M,F] -> [G,N,M] cosine affinities
  m.def("global_affinity(Tensor z_s, Tensor z_t) -> Tensor", {at::Tag::pt2_compliant_tag});
  // grad [G,N,M], z_s [G,N,F], z_t [G,M,F] -> (grad_z_s [G,N,F], grad_z_t [G,M,F])
  m.def("global_affinity_backward(Tensor grad, Tensor z_s, Tensor z_t) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  // score [G,N,M] -> X [G,N,M] (0/1, exact maximum / minimum assignment)
  m.def("linear_assignment(Tensor score, bool maximize, bool partial) -> Tensor", {at::Tag::pt2_compliant_tag});
  // unary [G,N,M], quad [G,Es,Et], edges_s [G,Es,2], edges_t [G,Et,2], A [G,N,N], B [G,M,M], init [G,N,M]
  //   -> X [G,N,M] (0/1); method a resolved name, max_iter < 0 = the method's default
  m.def(
      "solve_qap(Tensor unary, Tensor? quad, Tensor? edges_s, Tensor? edges_t, Tensor? A, Tensor? B, Tensor? init, "
      "bool partial, str method, int max_iter, int seed) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  // X [G,N,M] + the problem of solve_qap -> objective [G]
  m.def(
      "qap_objective(Tensor X, Tensor unary, Tensor? quad, Tensor? edges_s, Tensor? edges_t, Tensor? A, Tensor? B) "
      "-> Tensor",
      {at::Tag::pt2_compliant_tag});
  // grad [G] -> [grad_X [G,N,M], grad_unary [G,N,M], grad_quad [G,Es,Et], grad_A [G,N,N], grad_B [G,M,M]]
  // (an absent term's gradient is an empty tensor)
  m.def(
      "qap_objective_backward(Tensor grad, Tensor X, Tensor unary, Tensor? quad, Tensor? edges_s, Tensor? edges_t, "
      "Tensor? A, Tensor? B) -> Tensor[]",
      {at::Tag::pt2_compliant_tag});
}
