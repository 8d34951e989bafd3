// Argument checks shared by the CPU and CUDA glue: every message names the argument, what was expected
// and what was received.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "lvmmed/global_affinity.h"
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
