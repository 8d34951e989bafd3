// Batched QAP (graph matching) and linear assignment: shapes, options and launchers of the CPU and CUDA kernels.
//
// Per graph g (contiguous buffers, T = float or double):
//   unary [N,M]; quad [Es,Et] over the edge lists edges_s [Es,2] = (i,j) and edges_t [Et,2] = (a,b) (int64);
//   A [N,N], B [M,M] of the dense Koopmans-Beckmann term. Objective, maximised over assignments X:
//     f(X) = sum unary.X + sum_{p=(i,j), q=(a,b)} quad[p,q] X[i,a] X[j,b] + sum A[i,j] B[a,b] X[i,a] X[j,b].
//   Assignments are int64 [G,N]: the column of every row, -1 for an unmatched row.
#pragma once
#include "lvmmed/common.h"

#if defined(LVMMED_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace lvmmed {

struct LapShape {
  index_t G, N, M;
};

struct QAPShape {
  index_t G, N, M;
  index_t Es, Et;  // edges per graph (0 without a quadratic edge term)
  bool has_edges, has_kb;
};

template <typename T>
struct QAPInputs {
  const T* unary = nullptr;               // [G,N,M]
  const T* quad = nullptr;                // [G,Es,Et] or null
  const std::int64_t* edges_s = nullptr;  // [G,Es,2] or null
  const std::int64_t* edges_t = nullptr;  // [G,Et,2] or null
  const T* A = nullptr;                   // [G,N,N] or null
  const T* B = nullptr;                   // [G,M,M] or null
};

// The typed view of the type-erased inputs the CUDA launchers receive (T = the DType tag's type).
template <typename T>
QAPInputs<T> typed_inputs(const QAPInputs<void>& in) {
  QAPInputs<T> t;
  t.unary = static_cast<const T*>(in.unary);
  t.quad = static_cast<const T*>(in.quad);
  t.edges_s = in.edges_s;
  t.edges_t = in.edges_t;
  t.A = static_cast<const T*>(in.A);
  t.B = static_cast<const T*>(in.B);
  return t;
}

// What qap_search runs per graph (methods "ls", "ils", "its" and the polish of the batched methods).
struct QAPSearchOptions {
  bool partial = false;     // row/column sums <= 1 (unmatched contributes 0) instead of every row matched
  bool multistart = true;   // LAP(unary) + softassign starts; false: only descend (+ tabu) from `init`
  int ga_steps = 4;         // softassign annealing steps of the softassign starts (0: none)
  int sinkhorn_iters = 5;   // Sinkhorn iterations per softassign step
  int tabu_iters = 0;       // tabu-search moves after the descents (0: none); iterated: the moves of all phases
  int kicks = 0;            // random-kick restarts of the iterated local search (method "ils")
  bool iterated = false;    // iterated robust tabu search (method "its"): tabu phases from perturbed best solutions
  double time_limit = 0;    // seconds per graph (0: none); the search stops its moves once they are spent
  std::uint64_t seed = 0;   // seeds the kicks (counter-based, per graph: deterministic and thread-independent)
  index_t max_descent = 0;  // cap on the moves of one descent (0: 16 * N * (M + 1) + 64)
};

namespace cpu {
// Exact linear assignment of score [G,N,M] -> assign [G,N]: maximise (or minimise) the total score of a
// matching; partial=false matches min(N,M) pairs (every row if N <= M, every column otherwise), partial=true
// any number of pairs (a pair is only taken when it beats leaving both unmatched at 0). Graphs [g_begin, g_end).
// duals [G,M] float64 (may be null; used when !partial and N <= M): column potentials to warm-start from, replaced
// by the final ones (consecutive, similar problems, e.g. the Frank-Wolfe steps, then solve much faster).
template <typename T>
void linear_assignment(const T* score, std::int64_t* assign, LapShape s, bool maximize, bool partial, double* duals,
                       index_t g_begin, index_t g_end);

// Approximate QAP: assign [G,N] (init [G,N,M] or null: a warm start, 0/1 or soft). Graphs [g_begin, g_end).
template <typename T>
void qap_search(QAPInputs<T> in, const T* init, std::int64_t* assign, QAPShape s, QAPSearchOptions o, index_t g_begin,
                index_t g_end);

// Edge part of the objective for any real X [G,N,M]: out[g] = sum_{p,q} quad[p,q] X[i_p,a_q] X[j_p,b_q] + unary.X.
template <typename T>
void qap_edge_objective(const T* X, QAPInputs<T> in, T* out, QAPShape s, index_t g_begin, index_t g_end);

// Gradient of the edge + unary part w.r.t. X: out = unary + (K_e + K_e^T) x, i.e. out[i,a] = unary[i,a] +
// sum_{p=(i,j), q=(a,b)} quad[p,q] X[j,b] + sum_{p=(j,i), q=(b,a)} quad[p,q] X[j,b].
template <typename T>
void qap_edge_gradient(const T* X, QAPInputs<T> in, T* out, QAPShape s, index_t g_begin, index_t g_end);

// One-sided Lawler product (pygmtools' K without the dense term): out = unary * X + K_e x, K_e x [i,a] =
// sum_{p=(i,j), q=(a,b)} quad[p,q] X[j,b]; transpose: K_e^T x [j,b] = sum quad[p,q] X[i,a].
template <typename T>
void qap_lawler_product(const T* X, QAPInputs<T> in, T* out, bool transpose, QAPShape s, index_t g_begin,
                        index_t g_end);

// d objective / d quad = grad[g] * X[i_p,a_q] X[j_p,b_q]  -> out [G,Es,Et].
template <typename T>
void qap_quad_grad(const T* grad, const T* X, QAPInputs<T> in, T* out, QAPShape s, index_t g_begin, index_t g_end);
}  // namespace cpu

#if defined(LVMMED_WITH_CUDA) || defined(__CUDACC__)
namespace cuda {
// T is float or double (the glue computes half-precision inputs in float32). Scratch from the caller.
index_t linear_assignment_workspace_bytes(DType dtype, LapShape s, bool partial);
cudaError_t linear_assignment(DType dtype, const void* score, std::int64_t* assign, void* workspace, LapShape s,
                              bool maximize, bool partial, double* duals, cudaStream_t stream);

index_t qap_search_workspace_bytes(DType dtype, QAPShape s, QAPSearchOptions o);
cudaError_t qap_search(DType dtype, QAPInputs<void> in, const void* init, std::int64_t* assign, void* workspace,
                       QAPShape s, QAPSearchOptions o, cudaStream_t stream);

cudaError_t qap_edge_objective(DType dtype, const void* X, QAPInputs<void> in, void* out, QAPShape s,
                               cudaStream_t stream);
// scratch of qap_edge_gradient / qap_lawler_product (the adjacency, when it does not fit in shared memory)
index_t qap_edge_workspace_bytes(QAPShape s);
cudaError_t qap_edge_gradient(DType dtype, const void* X, QAPInputs<void> in, void* out, QAPShape s, void* workspace,
                              cudaStream_t stream);
cudaError_t qap_lawler_product(DType dtype, const void* X, QAPInputs<void> in, void* out, bool transpose, QAPShape s,
                               void* workspace, cudaStream_t stream);
cudaError_t qap_quad_grad(DType dtype, const void* grad, const void* X, QAPInputs<void> in, void* out, QAPShape s,
                          cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace lvmmed
