// Argument checks shared by the CPU and CUDA glue.
#include "validate.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <vector>

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

namespace {

// "[0, 1, 2, :]": the vector at index idx of a tensor whose last dim is the feature dim.
std::string vector_index_str(const std::vector<int64_t>& idx) {
  std::ostringstream os;
  os << "[";
  for (const auto i : idx) os << i << ", ";
  os << ":]";
  return os.str();
}

// The shape of a local_affinity call: the maps' sizes, the kept counts clamped to P and Q.
LocalAffinityShape local_affinity_shape(const at::Tensor& y_s, const at::Tensor& y_t, bool with_positions,
                                        int64_t top_loc, std::optional<int64_t> top_feat) {
  check_float_tensor(y_s, "y_s", 4, "[G,N,P,D]");
  check_float_tensor(y_t, "y_t", 4, "[G,M,Q,D]");
  check_same_device_dtype(y_t, "y_t", y_s, "y_s");
  TORCH_CHECK_VALUE(y_s.size(0) == y_t.size(0),
                    "y_s [G,N,P,D] and y_t [G,M,Q,D] must have the same number of graphs G, got y_s ", shape_str(y_s),
                    " and y_t ", shape_str(y_t));
  TORCH_CHECK_VALUE(y_s.size(3) == y_t.size(3),
                    "y_s [G,N,P,D] and y_t [G,M,Q,D] must have the same number of channels D, got y_s ", shape_str(y_s),
                    " and y_t ", shape_str(y_t));
  TORCH_CHECK_VALUE(
      y_s.size(2) > 0 && y_t.size(2) > 0 && y_s.size(3) > 0,
      "y_s [G,N,P,D] and y_t [G,M,Q,D] need at least one position and one channel (P, Q, D >= 1), got y_s ",
      shape_str(y_s), " and y_t ", shape_str(y_t));
  TORCH_CHECK_VALUE(top_loc >= 1, "top_loc must be >= 1, got ", top_loc);
  TORCH_CHECK_VALUE(!top_feat || *top_feat >= 1, "top_feat must be >= 1 or None, got ", top_feat.value_or(0));
  LocalAffinityShape s{};
  s.G = y_s.size(0);
  s.N = y_s.size(1);
  s.M = y_t.size(1);
  s.P = y_s.size(2);
  s.Q = y_t.size(2);
  s.D = y_s.size(3);
  TORCH_CHECK_VALUE(s.P <= INT32_MAX && s.Q <= INT32_MAX, "y_s and y_t may have at most 2^31-1 positions, got y_s ",
                    shape_str(y_s), " and y_t ", shape_str(y_t));
  s.with_positions = with_positions;
  const int64_t tf = top_feat.value_or(INT64_MAX);
  s.feat_s = std::min(tf, s.P);
  s.feat_t = std::min(tf, s.Q);
  s.loc_s = std::min(top_loc, s.P);
  s.loc_t = std::min(top_loc, s.Q);
  return s;
}

void check_positions(const at::Tensor& pos, const char* name, const at::Tensor& y, const char* y_name,
                     const char* layout) {
  TORCH_CHECK_VALUE(pos.dim() == 4 && pos.size(0) == y.size(0) && pos.size(1) == y.size(1) &&
                        pos.size(2) == y.size(2) && pos.size(3) == 2,
                    name, " must be ", layout, " = [", y.size(0), ", ", y.size(1), ", ", y.size(2),
                    ", 2] (the (x, y) position of every cell of ", y_name, "), got ", shape_str(pos));
  TORCH_CHECK_TYPE(at::isFloatingType(pos.scalar_type()), name, " must have a floating-point dtype, got ",
                   dtype_str(pos.scalar_type()));
  TORCH_CHECK_VALUE(pos.device() == y.device(), y_name, " and ", name, " must be on the same device, got ", y_name,
                    " on ", y.device(), " and ", name, " on ", pos.device());
}

// int64 edge list [G,E,2] over graphs of n nodes (E may be 0), on the device of `ref` (layout `ref_layout`, e.g.
// "[G,N,F]"); `n_sym` names n in messages ("N" or "M").
void check_edge_list(const at::Tensor& e, const char* name, int64_t G, int64_t n, const char* n_sym,
                     const at::Tensor& ref, const char* ref_name, const char* ref_layout) {
  TORCH_CHECK_VALUE(e.defined(), name, " must be a tensor [G,E,2], got None");
  TORCH_CHECK_VALUE(e.dim() == 3 && e.size(2) == 2, name, " must be [G,E,2] (one (i, j) pair per edge), got ",
                    shape_str(e));
  TORCH_CHECK_TYPE(e.scalar_type() == at::kLong, name, " must have dtype torch.int64, got ",
                   dtype_str(e.scalar_type()));
  TORCH_CHECK_VALUE(e.device() == ref.device(), ref_name, " and ", name, " must be on the same device, got ", ref_name,
                    " on ", ref.device(), " and ", name, " on ", e.device());
  TORCH_CHECK_VALUE(e.size(0) == G, name, " [G,E,2] and ", ref_name, " ", ref_layout,
                    " must have the same number of graphs G, got ", name, " ", shape_str(e), " and ", ref_name, " ",
                    shape_str(ref));
  if (e.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(e);
  const int64_t mn = lo.item<int64_t>(), mx = hi.item<int64_t>();
  TORCH_CHECK_VALUE(mn >= 0 && mx < n, name, " holds node index ", mn < 0 ? mn : mx, " outside [0, ", n_sym,
                    "-1] = [0, ", n - 1, "] of ", ref_name, " ", shape_str(ref));
}

EdgeListShape check_edges(const at::Tensor& edges, const char* name, const at::Tensor& z, const char* z_name) {
  check_edge_list(edges, name, z.size(0), z.size(1), "N", z, z_name, "[G,N,F]");
  return {z.size(0), z.size(1), edges.size(1), z.size(2)};
}

}  // namespace

LocalAffinityShape validate_local_affinity(const at::Tensor& y_s, const at::Tensor& y_t,
                                           const std::optional<at::Tensor>& pos_s,
                                           const std::optional<at::Tensor>& pos_t, int64_t top_loc,
                                           std::optional<int64_t> top_feat) {
  const auto s = local_affinity_shape(y_s, y_t, pos_s.has_value(), top_loc, top_feat);
  TORCH_CHECK_VALUE(pos_s.has_value() == pos_t.has_value(),
                    "pos_s and pos_t must both be given or both be None, got pos_s ", pos_s ? "given" : "None",
                    " and pos_t ", pos_t ? "given" : "None");
  if (pos_s) {
    check_positions(*pos_s, "pos_s", y_s, "y_s", "[G,N,P,2]");
    check_positions(*pos_t, "pos_t", y_t, "y_t", "[G,M,Q,2]");
  }
  return s;
}

LocalAffinityShape validate_local_affinity_backward(const at::Tensor& grad, const at::Tensor& y_s,
                                                    const at::Tensor& y_t, const at::Tensor& matches,
                                                    bool with_positions, int64_t top_loc,
                                                    std::optional<int64_t> top_feat) {
  const auto s = local_affinity_shape(y_s, y_t, with_positions, top_loc, top_feat);
  check_float_tensor(grad, "grad", 3, "[G,N,M]");
  check_same_device_dtype(grad, "grad", y_s, "y_s");
  TORCH_CHECK_VALUE(grad.size(0) == s.G && grad.size(1) == s.N && grad.size(2) == s.M, "grad must be [G,N,M] = [", s.G,
                    ", ", s.N, ", ", s.M, "], got ", shape_str(grad));
  TORCH_CHECK_TYPE(matches.scalar_type() == at::kInt, "matches must have dtype torch.int32, got ",
                   dtype_str(matches.scalar_type()));
  TORCH_CHECK_VALUE(matches.device() == y_s.device(), "y_s and matches must be on the same device, got y_s on ",
                    y_s.device(), " and matches on ", matches.device());
  const int64_t W = s.match_width();
  TORCH_CHECK_VALUE(matches.dim() == 4 && matches.size(0) == s.G && matches.size(1) == s.N && matches.size(2) == s.M &&
                        matches.size(3) == W,
                    "matches must be [G,N,M,W] = [", s.G, ", ", s.N, ", ", s.M, ", ", W,
                    "] (W = ", with_positions ? "2(P+Q)" : "P+Q", "), got ", shape_str(matches));
  return s;
}

void check_finite_rows(const at::Tensor& sq, const char* name, at::IntArrayRef row_dims, const char* row_layout) {
  if (sq.numel() == 0 || at::isfinite(sq).all().item<bool>()) return;
  int64_t flat = at::nonzero(at::logical_not(at::isfinite(sq.reshape({-1})))).min().item<int64_t>();
  std::vector<int64_t> idx(row_dims.size());
  for (int64_t d = static_cast<int64_t>(row_dims.size()) - 1; d >= 0; --d) {
    idx[d] = flat % row_dims[d];
    flat /= row_dims[d];
  }
  TORCH_CHECK_VALUE(false, name, " contains NaN or Inf (first in the vector ", name, vector_index_str(idx),
                    " of the layout ", row_layout,
                    ", or its squared norm overflows): nearest neighbours and top-k selections are undefined there");
}

KnnGraphShape validate_knn_graph(const at::Tensor& z, int64_t k) {
  check_float_tensor(z, "z", 3, "[G,N,F]");
  TORCH_CHECK_VALUE(z.size(2) > 0, "z needs at least one feature (F >= 1), got z ", shape_str(z));
  const int64_t N = z.size(1);
  TORCH_CHECK_VALUE(k >= 1 && k <= N - 1, "k must be in [1, N-1] = [1, ", N - 1, "], got ", k, " (z ", shape_str(z),
                    ")");
  if (z.numel() > 0)
    TORCH_CHECK_VALUE(at::isfinite(z).all().item<bool>(),
                      "z contains NaN or Inf values: nearest neighbours are undefined there");
  return {z.size(0), N, z.size(2), k};
}

std::tuple<EdgeListShape, EdgeListShape> validate_edge_affinity(const at::Tensor& z_s, const at::Tensor& edges_s,
                                                                const at::Tensor& z_t, const at::Tensor& edges_t) {
  validate_global_affinity(z_s, z_t);
  return {check_edges(edges_s, "edges_s", z_s, "z_s"), check_edges(edges_t, "edges_t", z_t, "z_t")};
}

std::tuple<EdgeListShape, EdgeListShape> validate_edge_affinity_backward(const at::Tensor& grad, const at::Tensor& z_s,
                                                                         const at::Tensor& edges_s,
                                                                         const at::Tensor& z_t,
                                                                         const at::Tensor& edges_t) {
  const auto [ss, st] = validate_edge_affinity(z_s, edges_s, z_t, edges_t);
  check_float_tensor(grad, "grad", 3, "[G,Es,Et]");
  check_same_device_dtype(grad, "grad", z_s, "z_s");
  TORCH_CHECK_VALUE(grad.size(0) == ss.G && grad.size(1) == ss.E && grad.size(2) == st.E, "grad must be [G,Es,Et] = [",
                    ss.G, ", ", ss.E, ", ", st.E, "], got ", shape_str(grad));
  return {ss, st};
}

// One vectorised sum in the tensor's own precision (float32 for half types): NaN/Inf anywhere make it non-finite.
// Summing in float64 instead would first materialise a float64 copy (25x slower on CPU: 37 ms for a batch of 1024
// graphs' 80x80 edge affinities, more than half of solve_qap's time). A non-finite sum can also be an overflow of
// finite values, so it falls back to the exact elementwise check.
void check_finite_fast(const at::Tensor& t, const char* name) {
  if (t.numel() == 0) return;
  const auto st = t.scalar_type();
  const at::Tensor total = (st == at::kFloat || st == at::kDouble) ? t.sum() : t.sum(at::kFloat);
  if (std::isfinite(total.item<double>())) return;
  check_finite(t, name);
}

LapShape validate_linear_assignment(const at::Tensor& score) {
  check_float_tensor(score, "score", 3, "[G,N,M]");
  check_finite_fast(score, "score");
  return {score.size(0), score.size(1), score.size(2)};
}

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
    check_edge_list(*edges_s, "edges_s", G, N, "N", unary, "unary", "[G,N,M]");
    check_edge_list(*edges_t, "edges_t", G, M, "M", unary, "unary", "[G,N,M]");
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
