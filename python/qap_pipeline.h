// The QAP methods written once for both backends: the batched solvers (softassign -> FAQ -> polish, FAQ, and the
// pygmtools-style SM / RRWM / IPFP) are tensor programs (at:: products, Sinkhorn) around a few backend kernels
// (exact LAP, edge products, the per-graph local search), which qap_cpu.cpp / qap_cuda.cpp provide.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "lvmmed/qap.h"

namespace lvmmed::glue {

// The inputs of one batched QAP: contiguous, in the compute dtype (float32 or float64), on one device;
// absent terms are undefined tensors.
struct QAPTensors {
  at::Tensor unary, quad, edges_s, edges_t, A, B;
  QAPShape s;
  bool kb_symmetric = false;  // A and B symmetric: A X B^T + A^T X B = 2 A X B (half the products)
};

// The kernels a backend provides (all take and return contiguous tensors of QAPTensors' dtype and device).
struct QAPBackend {
  // score [G,N,M] -> assignment int64 [G,N] (column or -1); duals: undefined, or float64 [G,M] column potentials
  // to warm-start from, updated in place (similar consecutive problems)
  std::function<at::Tensor(const at::Tensor& score, bool maximize, bool partial, const at::Tensor& duals)> lap;
  // local search (multi-start or from init [G,N,M]) -> assignment int64 [G,N]
  std::function<at::Tensor(const QAPTensors& p, const std::optional<at::Tensor>& init, const QAPSearchOptions& o)>
      search;
  // unary + (K_e + K_e^T) x -> [G,N,M]
  std::function<at::Tensor(const at::Tensor& X, const QAPTensors& p)> edge_gradient;
  // <unary, X> + edge term -> [G]
  std::function<at::Tensor(const at::Tensor& X, const QAPTensors& p)> edge_objective;
  // unary * X + K_e x (or K_e^T x) -> [G,N,M]
  std::function<at::Tensor(const at::Tensor& X, const QAPTensors& p, bool transpose)> lawler_product;
  // grad [G] -> d objective / d quad [G,Es,Et]
  std::function<at::Tensor(const at::Tensor& grad, const at::Tensor& X, const QAPTensors& p)> quad_grad;
};

// Contiguous compute-dtype copies of the inputs (float16/bfloat16 -> float32).
QAPTensors qap_tensors(const at::Tensor& unary, const std::optional<at::Tensor>& quad,
                       const std::optional<at::Tensor>& edges_s, const std::optional<at::Tensor>& edges_t,
                       const std::optional<at::Tensor>& A, const std::optional<at::Tensor>& B, const QAPShape& s);

// assignment int64 [G,N] (column or -1) -> 0/1 [G,N,M] of `dtype`.
at::Tensor assignment_matrix(const at::Tensor& assign, int64_t M, at::ScalarType dtype);

// solve_qap for a resolved method name ("lap", "ls", "ils", "its", "ga", "faq", "sm", "rrwm", "ipfp"); max_iter < 0
// picks the method's default; time_limit: seconds per graph of the search methods ("ls", "ils", "its"), <= 0 for
// none (with max_iter < 0, "its" then runs until the time limit). Returns the 0/1 X [G,N,M] in the compute dtype.
at::Tensor solve_qap_with(const QAPBackend& be, const QAPTensors& p, const std::optional<at::Tensor>& init,
                          bool partial, const std::string& method, int64_t max_iter, double time_limit, int64_t seed);

// Objective [G] of any real X [G,N,M], and its gradients (X, unary, quad, A, B; empty for absent terms).
at::Tensor qap_objective_with(const QAPBackend& be, const at::Tensor& X, const QAPTensors& p);
std::vector<at::Tensor> qap_objective_backward_with(const QAPBackend& be, const at::Tensor& grad, const at::Tensor& X,
                                                    const QAPTensors& p);

}  // namespace lvmmed::glue
