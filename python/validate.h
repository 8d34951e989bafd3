// Argument checks shared by the CPU and CUDA glue: every message names the argument, what was expected
// and what was received.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "lvmmed/edge_affinity.h"
#include "lvmmed/global_affinity.h"
#include "lvmmed/knn_graph.h"
#include "lvmmed/local_affinity.h"
#include "lvmmed/qap.h"

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

// local_affinity: y_s [G,N,P,D], y_t [G,M,Q,D], optional pos_s [G,N,P,2] / pos_t [G,M,Q,2] (both or neither),
// top_loc >= 1, top_feat >= 1 or None; the kept counts are clamped to P and Q.
LocalAffinityShape validate_local_affinity(const at::Tensor& y_s, const at::Tensor& y_t,
                                           const std::optional<at::Tensor>& pos_s,
                                           const std::optional<at::Tensor>& pos_t, int64_t top_loc,
                                           std::optional<int64_t> top_feat);
LocalAffinityShape validate_local_affinity_backward(const at::Tensor& grad, const at::Tensor& y_s,
                                                    const at::Tensor& y_t, const at::Tensor& matches,
                                                    bool with_positions, int64_t top_loc,
                                                    std::optional<int64_t> top_feat);
// sq [rows] squared row norms of `name` (layout e.g. "[G,N,P,D]", sizes its leading dims): ValueError naming the first
// row that holds a NaN/Inf (or whose squared norm overflows).
void check_finite_rows(const at::Tensor& sq, const char* name, at::IntArrayRef row_dims, const char* row_layout);

// knn_graph: z [G,N,F] finite, 1 <= k <= N-1.
KnnGraphShape validate_knn_graph(const at::Tensor& z, int64_t k);

// edge_affinity: z_s [G,N,F], edges_s [G,Es,2] int64 with entries in [0,N); the same for t; same device/dtype.
std::tuple<EdgeListShape, EdgeListShape> validate_edge_affinity(const at::Tensor& z_s, const at::Tensor& edges_s,
                                                                const at::Tensor& z_t, const at::Tensor& edges_t);
std::tuple<EdgeListShape, EdgeListShape> validate_edge_affinity_backward(const at::Tensor& grad, const at::Tensor& z_s,
                                                                         const at::Tensor& edges_s,
                                                                         const at::Tensor& z_t,
                                                                         const at::Tensor& edges_t);
// check_finite without the [numel] bool temporary: one float64 sum, the exact check only when it is not finite.
void check_finite_fast(const at::Tensor& t, const char* name);
// linear_assignment: score [G,N,M], floating, finite.
LapShape validate_linear_assignment(const at::Tensor& score);
// The QAP inputs of solve_qap / qap_objective: unary [G,N,M]; quad [G,Es,Et] with edges_s [G,Es,2] and
// edges_t [G,Et,2] (int64, indices in range), all three or none; A [G,N,N] with B [G,M,M], both or none; optional
// init/X [G,N,M] (`x_name`). Costs must be finite when `finite` (the solver; the objective propagates NaN).
QAPShape validate_qap(const at::Tensor& unary, const std::optional<at::Tensor>& quad,
                      const std::optional<at::Tensor>& edges_s, const std::optional<at::Tensor>& edges_t,
                      const std::optional<at::Tensor>& A, const std::optional<at::Tensor>& B,
                      const std::optional<at::Tensor>& x, const char* x_name, bool finite);
// solve_qap: validate_qap with finite costs and init, and N <= M unless partial.
QAPShape validate_solve_qap(const at::Tensor& unary, const std::optional<at::Tensor>& quad,
                            const std::optional<at::Tensor>& edges_s, const std::optional<at::Tensor>& edges_t,
                            const std::optional<at::Tensor>& A, const std::optional<at::Tensor>& B,
                            const std::optional<at::Tensor>& init, bool partial);
// qap_objective_backward: validate_qap with X, and grad [G].
QAPShape validate_qap_objective_backward(const at::Tensor& grad, const at::Tensor& X, const at::Tensor& unary,
                                         const std::optional<at::Tensor>& quad,
                                         const std::optional<at::Tensor>& edges_s,
                                         const std::optional<at::Tensor>& edges_t, const std::optional<at::Tensor>& A,
                                         const std::optional<at::Tensor>& B);

}  // namespace lvmmed::glue
