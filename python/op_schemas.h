// Every schema of the lvmmed operator library, declared once: registered as torch.ops.lvmmed by ops.cpp, and as
// torch.ops.lvmmed_emu by the test-only emulated CUDA backend (python/emu_module.cpp).
#pragma once
#include <torch/library.h>

namespace lvmmed::glue {

inline void define_ops(torch::Library& m) {
  // z_s [G,N,F], z_t [G,M,F] -> [G,N,M] cosine affinities
  m.def("global_affinity(Tensor z_s, Tensor z_t) -> Tensor", {at::Tag::pt2_compliant_tag});
  // grad [G,N,M], z_s [G,N,F], z_t [G,M,F] -> (grad_z_s [G,N,F], grad_z_t [G,M,F])
  m.def("global_affinity_backward(Tensor grad, Tensor z_s, Tensor z_t) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  // y_s [G,N,P,D], y_t [G,M,Q,D], pos_s [G,N,P,2]?, pos_t [G,M,Q,2]? -> (affinity [G,N,M], matches int32 [G,N,M,W]),
  // W = P+Q, or 2(P+Q) with positions (layout in csrc/include/lvmmed/local_affinity.h)
  m.def(
      "local_affinity(Tensor y_s, Tensor y_t, Tensor? pos_s, Tensor? pos_t, int top_loc, int? top_feat) -> "
      "(Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  // grad [G,N,M], y_s, y_t, matches [G,N,M,W] -> (grad_y_s [G,N,P,D], grad_y_t [G,M,Q,D])
  m.def(
      "local_affinity_backward(Tensor grad, Tensor y_s, Tensor y_t, Tensor matches, bool with_positions, "
      "int top_loc, int? top_feat) -> (Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  // z [G,N,F] -> edges int64 [G,N*k,2]: (i, j) for the k nearest j != i of every i, nearest first
  m.def("knn_graph(Tensor z, int k) -> Tensor", {at::Tag::pt2_compliant_tag});
  // z_s [G,N,F], edges_s int64 [G,Es,2], z_t [G,M,F], edges_t int64 [G,Et,2] -> [G,Es,Et] edge-vector cosines
  m.def("edge_affinity(Tensor z_s, Tensor edges_s, Tensor z_t, Tensor edges_t) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  // grad [G,Es,Et], z_s, edges_s, z_t, edges_t -> (grad_z_s [G,N,F], grad_z_t [G,M,F])
  m.def(
      "edge_affinity_backward(Tensor grad, Tensor z_s, Tensor edges_s, Tensor z_t, Tensor edges_t) -> (Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  // score [G,N,M] -> X [G,N,M] (0/1, exact maximum / minimum assignment)
  m.def("linear_assignment(Tensor score, bool maximize, bool partial) -> Tensor", {at::Tag::pt2_compliant_tag});
  // unary [G,N,M], quad [G,Es,Et], edges_s [G,Es,2], edges_t [G,Et,2], A [G,N,N], B [G,M,M], init [G,N,M]
  //   -> X [G,N,M] (0/1); method a resolved name, max_iter < 0 = the method's default, time_limit seconds per graph
  //   (<= 0: none; the search methods)
  m.def(
      "solve_qap(Tensor unary, Tensor? quad, Tensor? edges_s, Tensor? edges_t, Tensor? A, Tensor? B, Tensor? init, "
      "bool partial, str method, int max_iter, float time_limit, int seed) -> Tensor",
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

}  // namespace lvmmed::glue
