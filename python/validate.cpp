// Argument checks shared by the CPU and CUDA glue.
#include "validate.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
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

void check_finite_fast(const at::Tensor& t, const char* name) {
  if (t.numel() == 0 || std::isfinite(t.sum(at::kDouble).item<double>())) return;
  check_finite(t, name);  // a non-finite sum may also be an overflow of finite values
}

LapShape validate_linear_assignment(const at::Tensor& score) {
  check_float_tensor(score, "score", 3, "[G,N,M]");
  check_finite_fast(score, "score");
  return {score.size(0), score.size(1), score.size(2)};
}

namespace {

// int64 edge list [G,E,2] of graphs with n nodes; E may be 0.
void check_edges(const at::Tensor& e, const char* name, int64_t G, int64_t n, const char* n_name,
                 const at::Tensor& unary) {
  TORCH_CHECK_VALUE(e.dim() == 3 && e.size(2) == 2, name, " must be [G,E,2] (int64 pairs of node indices), got shape ",
                    shape_str(e));
  TORCH_CHECK_TYPE(e.scalar_type() == at::kLong, name, " must be int64, got ", dtype_str(e.scalar_type()));
  TORCH_CHECK_VALUE(e.device() == unary.device(), "unary and ", name, " must be on the same device, got unary on ",
                    unary.device(), " and ", name, " on ", e.device());
  TORCH_CHECK_VALUE(e.size(0) == G, name, " must have G = ", G, " graphs like unary, got shape ", shape_str(e));
  if (e.numel() == 0) return;
  const auto mm = at::aminmax(e);
  const int64_t lo = std::get<0>(mm).item<int64_t>(), hi = std::get<1>(mm).item<int64_t>();
  TORCH_CHECK_VALUE(lo >= 0 && hi < n, name, " must hold node indices in [0, ", n_name, "-1] = [0, ", n - 1,
                    "], got values in [", lo, ", ", hi, "]");
}

}  // namespace

QAPShape validate_qap(const at::Tensor& unary, const std::optional<at::Tensor>& quad,
                      const std::optional<at::Tensor>& edges_s, const std::optional<at::Tensor>& edges_t,
                      const std::optional<at::Tensor>& A, const std::optional<at::Tensor>& B,
                      const std::optional<at::Tensor>& x, const char* x_name, bool finite) {
  check_float_tensor(unary, "unary", 3, "[G,N,M]");
  const int64_t G = unary.size(0), N = unary.size(1), M = unary.size(2);
  QAPShape s{G, N, M, 0, 0, false, false};
  if (finite) check_finite_fast(unary, "unary");
  const bool any_edges = quad.has_value() || edges_s.has_value() || edges_t.has_value();
  if (any_edges) {
    TORCH_CHECK_VALUE(quad.has_value() && edges_s.has_value() && edges_t.has_value(),
                      "quad, edges_s and edges_t go together (all three or none), got quad ",
                      quad.has_value() ? "given" : "None", ", edges_s ", edges_s.has_value() ? "given" : "None",
                      ", edges_t ", edges_t.has_value() ? "given" : "None");
    check_edges(*edges_s, "edges_s", G, N, "N", unary);
    check_edges(*edges_t, "edges_t", G, M, "M", unary);
    check_float_tensor(*quad, "quad", 3, "[G,Es,Et]");
    check_same_device_dtype(*quad, "quad", unary, "unary");
    const int64_t Es = edges_s->size(1), Et = edges_t->size(1);
    TORCH_CHECK_VALUE(quad->size(0) == G && quad->size(1) == Es && quad->size(2) == Et, "quad must be [G,Es,Et] = [", G,
                      ", ", Es, ", ", Et, "] (graphs x edges_s x edges_t), got ", shape_str(*quad));
    if (finite) check_finite_fast(*quad, "quad");
    s.Es = Es;
    s.Et = Et;
    s.has_edges = Es > 0 && Et > 0;
  }
  TORCH_CHECK_VALUE(A.has_value() == B.has_value(), "A and B go together (both or none), got A ",
                    A.has_value() ? "given" : "None", " and B ", B.has_value() ? "given" : "None");
  if (A.has_value()) {
    check_float_tensor(*A, "A", 3, "[G,N,N]");
    check_float_tensor(*B, "B", 3, "[G,M,M]");
    check_same_device_dtype(*A, "A", unary, "unary");
    check_same_device_dtype(*B, "B", unary, "unary");
    TORCH_CHECK_VALUE(A->size(0) == G && A->size(1) == N && A->size(2) == N, "A must be [G,N,N] = [", G, ", ", N, ", ",
                      N, "], got ", shape_str(*A));
    TORCH_CHECK_VALUE(B->size(0) == G && B->size(1) == M && B->size(2) == M, "B must be [G,M,M] = [", G, ", ", M, ", ",
                      M, "], got ", shape_str(*B));
    if (finite) {
      check_finite_fast(*A, "A");
      check_finite_fast(*B, "B");
    }
    s.has_kb = true;
  }
  if (x.has_value()) {
    check_float_tensor(*x, x_name, 3, "[G,N,M]");
    check_same_device_dtype(*x, x_name, unary, "unary");
    TORCH_CHECK_VALUE(x->size(0) == G && x->size(1) == N && x->size(2) == M, x_name, " must be [G,N,M] = [", G, ", ", N,
                      ", ", M, "] like unary, got ", shape_str(*x));
    if (finite) check_finite_fast(*x, x_name);
  }
  return s;
}

QAPShape validate_solve_qap(const at::Tensor& unary, const std::optional<at::Tensor>& quad,
                            const std::optional<at::Tensor>& edges_s, const std::optional<at::Tensor>& edges_t,
                            const std::optional<at::Tensor>& A, const std::optional<at::Tensor>& B,
                            const std::optional<at::Tensor>& init, bool partial) {
  const auto s = validate_qap(unary, quad, edges_s, edges_t, A, B, init, "init", true);
  TORCH_CHECK_VALUE(partial || s.N <= s.M, "partial=False matches every row, so it needs N <= M, got N = ", s.N,
                    " > M = ", s.M, " (unary ", shape_str(unary), "); pass partial=True to allow unmatched rows");
  return s;
}

QAPShape validate_qap_objective_backward(const at::Tensor& grad, const at::Tensor& X, const at::Tensor& unary,
                                         const std::optional<at::Tensor>& quad,
                                         const std::optional<at::Tensor>& edges_s,
                                         const std::optional<at::Tensor>& edges_t, const std::optional<at::Tensor>& A,
                                         const std::optional<at::Tensor>& B) {
  const auto s = validate_qap(unary, quad, edges_s, edges_t, A, B, X, "X", false);
  check_float_tensor(grad, "grad", 1, "[G]");
  check_same_device_dtype(grad, "grad", unary, "unary");
  TORCH_CHECK_VALUE(grad.size(0) == s.G, "grad must be [G] = [", s.G, "], got ", shape_str(grad));
  return s;
}

}  // namespace lvmmed::glue
