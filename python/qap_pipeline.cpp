// The batched QAP methods as tensor programs over the backend kernels (see qap_pipeline.h).
#include "qap_pipeline.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

namespace lvmmed::glue {
namespace {

// Per-method defaults of max_iter (< 0 from the caller).
struct Defaults {
  int64_t ls_tabu(const QAPShape& s) const { return 3 * std::max<int64_t>(s.N, 8) / 2; }
  int64_t its_moves(const QAPShape& s) const { return 100 * std::max<int64_t>(s.N, 8); }
  int64_t max_moves = INT32_MAX / 2;  // the engine counts moves in int
  int ls_ga_steps = 4;
  int ls_sinkhorn_iters = 5;
  int64_t ga_steps = 20;
  int64_t faq_iters = 30;
  double faq_tol = 0.03;      // scipy's FAQ tolerance
  double ga_faq_tol = 0.005;  // method "ga" converges further (cheap with warm-started LAPs)
  int64_t power_iters = 50;   // sm, rrwm, ipfp (pygmtools' max_iter)
};

at::Tensor sum_gm(const at::Tensor& t) {  // [G,N,M] -> [G]
  return t.sum({1, 2});
}

// Dense Koopmans-Beckmann term: gradient A X B^T + A^T X B, value sum A .* (X B X^T).
at::Tensor kb_gradient(const at::Tensor& X, const QAPTensors& p) {
  if (p.kb_symmetric) return 2 * at::matmul(p.A, at::matmul(X, p.B));
  return at::matmul(p.A, at::matmul(X, p.B.transpose(1, 2))) + at::matmul(p.A.transpose(1, 2), at::matmul(X, p.B));
}
at::Tensor kb_value(const at::Tensor& X, const QAPTensors& p) {
  return sum_gm(p.A * at::matmul(at::matmul(X, p.B), X.transpose(1, 2)));
}

// Gradient of the objective at X: unary + (K + K^T) x.
at::Tensor full_gradient(const QAPBackend& be, const at::Tensor& X, const QAPTensors& p) {
  at::Tensor g = be.edge_gradient(X, p);
  if (p.s.has_kb) g = g + kb_gradient(X, p);
  return g;
}

// (K + K^T) d: the gradient of the quadratic part at d (the objective's gradient is linear: g(x + t d) = g(x) + t
// (K + K^T) d, and d^T K d = <d, (K + K^T) d> / 2).
at::Tensor quadratic_gradient(const QAPBackend& be, const at::Tensor& D, const QAPTensors& p) {
  at::Tensor g = p.s.has_edges ? be.edge_gradient(D, p) - p.unary : at::zeros_like(D);
  if (p.s.has_kb) g = g + kb_gradient(D, p);
  return g;
}

// Lawler product K x with pygmtools' K (unary on the diagonal, edge and dense terms), or K^T x.
at::Tensor lawler(const QAPBackend& be, const at::Tensor& X, const QAPTensors& p, bool transpose) {
  at::Tensor y = be.lawler_product(X, p, transpose);
  if (p.s.has_kb)
    y = y + (transpose ? at::matmul(p.A.transpose(1, 2), at::matmul(X, p.B))
                       : at::matmul(p.A, at::matmul(X, p.B.transpose(1, 2))));
  return y;
}

at::Tensor assignment_of(const QAPBackend& be, const at::Tensor& score, bool partial,
                         const at::Tensor& duals = at::Tensor()) {
  return be.lap(score.contiguous(), true, partial, duals);
}

// Sinkhorn balancing of exp(logits) [G,N,M] in the scaling form, with a slack row (free columns: partial or N < M)
// and a slack column (unmatched rows: partial) of logit 0. Returns the [G,N,M] block.
at::Tensor sinkhorn(const at::Tensor& logits, bool partial, int64_t iters) {
  const int64_t G = logits.size(0), N = logits.size(1), M = logits.size(2);
  const bool slack_row = partial || M > N, slack_col = partial;
  const int64_t R = N + (slack_row ? 1 : 0), C = M + (slack_col ? 1 : 0);
  at::Tensor L = at::zeros({G, R, C}, logits.options());
  L.narrow(1, 0, N).narrow(2, 0, M).copy_(logits);
  // each row's maximum -> 0 so no row underflows; the slack entries stay at 0 relative to it
  at::Tensor K = (L - std::get<0>(L.max(2, true))).exp();
  at::Tensor mu = at::ones({G, R, 1}, logits.options()), nu = at::ones({G, 1, C}, logits.options());
  if (slack_row) mu.narrow(1, N, 1).fill_(static_cast<double>(partial ? M : M - N));
  if (slack_col) nu.narrow(2, M, 1).fill_(static_cast<double>(N));
  at::Tensor r = at::ones({G, R, 1}, logits.options()), c;
  const double tiny = 1e-30;
  for (int64_t it = 0; it < iters; ++it) {          // products + sums, not tiny bmm calls (batched mat-vecs are slow)
    c = nu / (K * r).sum(1, true).clamp_min(tiny);  // [G,1,C]
    r = mu / (K * c).sum(2, true).clamp_min(tiny);  // [G,R,1]
  }
  c = nu / (K * r).sum(1, true).clamp_min(tiny);
  return (r * K * c).narrow(1, 0, N).narrow(2, 0, M).contiguous();
}

// Softassign / graduated assignment from X (uniform when undefined): X <- Sinkhorn(exp(beta_t G(X) / max|G(X)|)).
at::Tensor softassign(const QAPBackend& be, const QAPTensors& p, at::Tensor X, bool partial, int64_t steps) {
  const double beta0 = 2.0, beta1 = 40.0;
  for (int64_t t = 0; t < steps; ++t) {
    const at::Tensor g = full_gradient(be, X, p);
    const at::Tensor m = g.abs().amax({1, 2}, true).clamp_min(1e-30);
    const double frac = steps > 1 ? static_cast<double>(t) / static_cast<double>(steps - 1) : 1.0;
    const double beta = beta0 * std::pow(beta1 / beta0, frac);
    X = sinkhorn(g * (beta / m), partial, 10);
  }
  return X;
}

// Frank-Wolfe on the relaxation (FAQ): LAP direction, exact line search of the quadratic along it; stops, as
// scipy's FAQ, when every graph moved by at most tol_per_node (scipy: 0.03) in ||.||_F / sqrt(N).
at::Tensor frank_wolfe(const QAPBackend& be, const QAPTensors& p, at::Tensor X, bool partial, int64_t iters,
                       double tol_per_node) {
  const auto dt = X.scalar_type();
  const double tol = tol_per_node * std::sqrt(static_cast<double>(std::max<int64_t>(p.s.N, 1)));
  at::Tensor g = full_gradient(be, X, p);
  // the LAPs of consecutive steps are warm-started from the previous column potentials
  const at::Tensor duals = at::zeros({p.s.G, p.s.M}, X.options().dtype(at::kDouble));
  for (int64_t it = 0; it < iters; ++it) {
    const at::Tensor P = assignment_matrix(assignment_of(be, g, partial, duals), p.s.M, dt);
    const at::Tensor D = P - X;
    const at::Tensor gd = quadratic_gradient(be, D, p);
    const at::Tensor lin = sum_gm(g * D), quad = 0.5 * sum_gm(D * gd);
    // f(X + t D) = f(X) + t lin + t^2 quad on [0, 1]
    const at::Tensor t_in = (-lin / (2 * quad).clamp_max(-1e-30)).clamp(0, 1);
    const at::Tensor t = at::where(quad < 0, t_in, at::where(lin + quad > 0, at::ones_like(lin), at::zeros_like(lin)));
    X = X + t.view({-1, 1, 1}) * D;
    g = g + t.view({-1, 1, 1}) * gd;
    if (t.numel() == 0 || (t * at::sqrt(sum_gm(D * D))).max().item<double>() <= tol) break;
  }
  return X;
}

// The batch twice over (graphs g and G + g are the same problem).
QAPTensors twice(const QAPTensors& p) {
  const auto rep = [](const at::Tensor& t) { return t.defined() ? at::cat({t, t}) : t; };
  QAPTensors q = p;
  q.unary = rep(p.unary);
  q.quad = rep(p.quad);
  q.edges_s = rep(p.edges_s);
  q.edges_t = rep(p.edges_t);
  q.A = rep(p.A);
  q.B = rep(p.B);
  q.s.G = 2 * p.s.G;
  return q;
}

// Polish of assignments by the backend's local search (descent, then `tabu` tabu moves).
at::Tensor polish(const QAPBackend& be, const QAPTensors& p, const at::Tensor& assign, bool partial, int64_t tabu) {
  QAPSearchOptions o;
  o.partial = partial;
  o.multistart = false;
  o.ga_steps = 0;
  o.tabu_iters = static_cast<int>(tabu);
  return be.search(p, assignment_matrix(assign, p.s.M, p.unary.scalar_type()), o);
}

// ---- pygmtools-style solvers on K (unary on the diagonal), x0 = 1/(N M), max_iter iterations --------------

at::Tensor spectral(const QAPBackend& be, const QAPTensors& p, int64_t iters) {  // SM: power iteration
  const auto& s = p.s;
  at::Tensor v =
      at::full({s.G, s.N, s.M}, 1.0 / static_cast<double>(std::max<int64_t>(s.N * s.M, 1)), p.unary.options());
  for (int64_t it = 0; it < iters; ++it) {
    at::Tensor w = lawler(be, v, p, false);
    w = w / at::sqrt(sum_gm(w * w)).clamp_min(1e-30).view({-1, 1, 1});
    const double change = (w - v).abs().max().item<double>();
    v = w;
    if (change < 1e-6) break;
  }
  return v;
}

// RRWM as pygmtools defines it: x <- normalise((1 - alpha) w + alpha Sinkhorn(exp(beta w / max w))), with the walk
// w = normalise(K x / max row sum of K), L1 normalisations, and sk_iter alternating row/column half-steps.
at::Tensor rrwm(const QAPBackend& be, const QAPTensors& p, int64_t iters) {
  const auto& s = p.s;
  const double alpha = 0.2, beta = 30.0;
  const int64_t sk_half_steps = 20;
  const auto l1 = [](const at::Tensor& x) { return x / x.abs().sum({1, 2}, true).clamp_min(1e-300); };
  const at::Tensor dmax =
      lawler(be, at::ones({s.G, s.N, s.M}, p.unary.options()), p, false).amax({1, 2}, true).clamp_min(1e-300);
  at::Tensor x =
      at::full({s.G, s.N, s.M}, 1.0 / static_cast<double>(std::max<int64_t>(s.N * s.M, 1)), p.unary.options());
  for (int64_t it = 0; it < iters; ++it) {
    const at::Tensor walk = l1(lawler(be, x, p, false) / dmax);
    const at::Tensor wmax = walk.amax({1, 2}, true);
    at::Tensor y = (beta * walk / at::where(wmax > 0, wmax, walk.abs().amax({1, 2}, true)).clamp_min(1e-300)).exp();
    for (int64_t h = 0; h < sk_half_steps; ++h) y = y / y.sum(h % 2 == 0 ? 2 : 1, true).clamp_min(1e-300);
    x = l1((1 - alpha) * walk + alpha * y);
  }
  return x;
}

at::Tensor ipfp(const QAPBackend& be, const QAPTensors& p, bool partial, int64_t iters) {
  const auto& s = p.s;
  const auto dt = p.unary.scalar_type();
  at::Tensor v =
      at::full({s.G, s.N, s.M}, 1.0 / static_cast<double>(std::max<int64_t>(s.N * s.M, 1)), p.unary.options());
  at::Tensor best = assignment_matrix(assignment_of(be, p.unary, partial), s.M, dt);
  at::Tensor best_f = at::full({s.G}, -INFINITY, p.unary.options());
  for (int64_t it = 0; it < iters; ++it) {
    const at::Tensor kv = lawler(be, v, p, false);
    const at::Tensor b = assignment_matrix(assignment_of(be, kv, partial), s.M, dt);
    const at::Tensor d = b - v;
    // xᵀKx along v + t d: f(v) + t (vᵀK d + dᵀK v) + t² dᵀK d
    const at::Tensor lin = sum_gm(v * lawler(be, d, p, false)) + sum_gm(d * kv);
    const at::Tensor quad = sum_gm(d * lawler(be, d, p, false));
    const at::Tensor t_in = (-lin / (2 * quad).clamp_max(-1e-30)).clamp(0, 1);
    const at::Tensor t = at::where(quad >= 0, at::ones_like(lin), t_in);
    const at::Tensor fb = sum_gm(b * lawler(be, b, p, false));
    const at::Tensor improved = fb > best_f;
    best = at::where(improved.view({-1, 1, 1}), b, best);
    best_f = at::where(improved, fb, best_f);
    v = v + t.view({-1, 1, 1}) * d;
  }
  return best;
}

}  // namespace

QAPTensors qap_tensors(const at::Tensor& unary, const std::optional<at::Tensor>& quad,
                       const std::optional<at::Tensor>& edges_s, const std::optional<at::Tensor>& edges_t,
                       const std::optional<at::Tensor>& A, const std::optional<at::Tensor>& B, const QAPShape& s) {
  const auto st = unary.scalar_type();
  const auto ct = (st == at::kFloat || st == at::kDouble) ? st : at::kFloat;
  QAPTensors p;
  p.s = s;
  p.unary = unary.to(ct).contiguous();
  if (s.has_edges) {
    p.quad = quad->to(ct).contiguous();
    p.edges_s = edges_s->contiguous();
    p.edges_t = edges_t->contiguous();
  }
  if (s.has_kb) {
    p.A = A->to(ct).contiguous();
    p.B = B->to(ct).contiguous();
    p.kb_symmetric = at::equal(p.A, p.A.transpose(1, 2)) && at::equal(p.B, p.B.transpose(1, 2));
  }
  return p;
}

at::Tensor assignment_matrix(const at::Tensor& assign, int64_t M, at::ScalarType dtype) {
  const int64_t G = assign.size(0), N = assign.size(1);
  at::Tensor X = at::zeros({G, N, M + 1}, assign.options().dtype(dtype));
  X.scatter_(2, at::where(assign < 0, at::full_like(assign, M), assign).unsqueeze(2), 1.0);
  return X.narrow(2, 0, M).contiguous();
}

at::Tensor solve_qap_with(const QAPBackend& be, const QAPTensors& p, const std::optional<at::Tensor>& init,
                          bool partial, const std::string& method, int64_t max_iter, double time_limit, int64_t seed) {
  const Defaults def;
  const auto& s = p.s;
  const auto dt = p.unary.scalar_type();
  const auto iters = [&](int64_t d) { return max_iter >= 0 ? max_iter : d; };
  std::optional<at::Tensor> x0;
  if (init.has_value()) x0 = init->to(dt).contiguous();
  at::Tensor assign;
  if (s.G == 0 || s.N == 0) {
    assign = at::full({s.G, s.N}, -1, p.unary.options().dtype(at::kLong));
  } else if (method == "lap") {
    assign = assignment_of(be, p.unary, partial);
  } else if (method == "ls" || method == "ils" || method == "its") {
    QAPSearchOptions o;
    o.partial = partial;
    o.ga_steps = def.ls_ga_steps;
    o.sinkhorn_iters = def.ls_sinkhorn_iters;
    o.iterated = method == "its";
    // "its" with a time limit and no move budget runs until the time limit
    const int64_t its_default = time_limit > 0 ? def.max_moves : def.its_moves(s);
    o.tabu_iters = static_cast<int>(std::min(iters(o.iterated ? its_default : def.ls_tabu(s)), def.max_moves));
    o.kicks = method == "ils" ? static_cast<int>(std::max<int64_t>(s.N, 8)) : 0;
    o.time_limit = std::max(time_limit, 0.0);
    o.seed = static_cast<uint64_t>(seed);
    assign = be.search(p, x0, o);
  } else if (method == "ga") {
    // softassign, then Frank-Wolfe from its X and from the barycentre (or init) in one batch of 2G problems: the
    // better LAP-rounded answer of each graph is polished by the local search (softassign wins on structured
    // problems, the barycentre FAQ on unstructured ones)
    const at::Tensor bary =
        x0.has_value() ? *x0 : at::full({s.G, s.N, s.M}, 1.0 / static_cast<double>(s.M), p.unary.options());
    const at::Tensor X = softassign(be, p, bary, partial, iters(def.ga_steps));
    const QAPTensors p2 = twice(p);
    const at::Tensor Xf = frank_wolfe(be, p2, at::cat({X, bary}), partial, def.faq_iters, def.ga_faq_tol);
    const at::Tensor a2 = partial ? assignment_of(be, Xf - 0.5, true) : assignment_of(be, Xf, false);
    const at::Tensor f2 = qap_objective_with(be, assignment_matrix(a2, s.M, dt), p2).view({2, s.G});
    const at::Tensor a = a2.view({2, s.G, s.N});
    assign = at::where((f2[0] >= f2[1]).view({s.G, 1}), a[0], a[1]);
    assign = polish(be, p, assign, partial, std::max<int64_t>(s.N / 2, 8));
  } else if (method == "faq") {
    at::Tensor X = x0.has_value() ? *x0 : at::full({s.G, s.N, s.M}, 1.0 / static_cast<double>(s.M), p.unary.options());
    X = frank_wolfe(be, p, X, partial, iters(def.faq_iters), def.faq_tol);
    assign = partial ? assignment_of(be, X - 0.5, true) : assignment_of(be, X, false);
  } else if (method == "sm") {
    assign = assignment_of(be, spectral(be, p, iters(def.power_iters)), partial);
  } else if (method == "rrwm") {
    assign = assignment_of(be, rrwm(be, p, iters(def.power_iters)), partial);
  } else if (method == "ipfp") {
    const at::Tensor b = ipfp(be, p, partial, iters(def.power_iters));
    assign = assignment_of(be, b, partial);
  } else {
    TORCH_CHECK_VALUE(false,
                      "method must be one of 'ls', 'ils', 'its', 'ga', 'faq', 'sm', 'rrwm', 'ipfp', 'lap', got '",
                      method, "'");
  }
  return assignment_matrix(assign, s.M, dt);
}

at::Tensor qap_objective_with(const QAPBackend& be, const at::Tensor& X, const QAPTensors& p) {
  at::Tensor f = be.edge_objective(X, p);
  if (p.s.has_kb) f = f + kb_value(X, p);
  return f;
}

std::vector<at::Tensor> qap_objective_backward_with(const QAPBackend& be, const at::Tensor& grad, const at::Tensor& X,
                                                    const QAPTensors& p) {
  const at::Tensor g3 = grad.view({-1, 1, 1});
  const at::Tensor gX = g3 * full_gradient(be, X, p);
  const at::Tensor gU = g3 * X;
  at::Tensor gQ = p.s.has_edges ? be.quad_grad(grad.contiguous(), X, p) : at::empty({0}, X.options());
  at::Tensor gA = at::empty({0}, X.options()), gB = at::empty({0}, X.options());
  if (p.s.has_kb) {
    gA = g3 * at::matmul(at::matmul(X, p.B), X.transpose(1, 2));
    gB = g3 * at::matmul(at::matmul(X.transpose(1, 2), p.A), X);
  }
  return {gX, gU, gQ, gA, gB};
}

}  // namespace lvmmed::glue
