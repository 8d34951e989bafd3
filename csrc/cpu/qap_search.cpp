// CPU kernel of the approximate QAP search (multi-start descent + tabu / iterated tabu, qap_engine.h): one thread
// per graph.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "lvmmed/detail/qap_engine.h"
#include "lvmmed/qap.h"
#include "vec.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LVMMED_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LVMMED_CPU_CLONES
#endif

namespace lvmmed {
namespace {

template <typename T>
LVMMED_CPU_CLONES void multiply_add_impl(T* acc, const T* a, const T* b, index_t n) {
#pragma omp simd
  for (index_t k = 0; k < n; ++k) acc[k] += a[k] * b[k];
}

template <typename T>
LVMMED_CPU_CLONES double max_abs_impl(const T* x, index_t n) {
  T m = 0;
#pragma omp simd reduction(max : m)
  for (index_t k = 0; k < n; ++k) m = std::max(m, x[k] < T(0) ? -x[k] : x[k]);
  return static_cast<double>(m);
}

// exp(scale * in[k]) in a vectorisable form: 2^n * P(r), x = n ln2 + r, |r| <= ln2 / 2, P the degree-12 Taylor
// polynomial (relative error ~1e-14 on that range).
LVMMED_CPU_CLONES void exp_scaled_impl(double* out, const double* in, double scale, index_t n) {
  constexpr double kLog2e = 1.4426950408889634, kLn2Hi = 0.6931471803691238, kLn2Lo = 1.9082149292705877e-10;
#pragma omp simd
  for (index_t k = 0; k < n; ++k) {
    double x = scale * in[k];
    x = x < -700.0 ? -700.0 : (x > 700.0 ? 700.0 : x);
    const double nf = std::floor(x * kLog2e + 0.5);
    const double r = (x - nf * kLn2Hi) - nf * kLn2Lo;
    double p = 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    const std::int64_t bits = (static_cast<std::int64_t>(nf) + 1023) << 52;
    double scale2;
    std::memcpy(&scale2, &bits, sizeof(double));
    out[k] = p * scale2;
  }
}

LVMMED_CPU_CLONES void transposed_matvec2_impl(double* __restrict out, const double* __restrict M1,
                                               const double* __restrict x1, const double* __restrict M2,
                                               const double* __restrict x2, index_t n) {
  for (index_t k = 0; k < n; ++k) {
    const double a = x1[k], b = x2[k];
    const double* __restrict m1 = M1 + k * n;
    const double* __restrict m2 = M2 + k * n;
#pragma omp simd
    for (index_t v = 0; v < n; ++v) out[v] += a * m1[v] + b * m2[v];
  }
}

LVMMED_CPU_CLONES void swap_gain_update_impl(double* __restrict D, const double* __restrict c,
                                             const double* __restrict e, const double* __restrict g,
                                             const double* __restrict h, index_t n) {
  for (index_t u = 0; u + 1 < n; ++u) {
    double* __restrict Du = D + u * n;
    const double cu = c[u], eu = e[u], gu = g[u], hu = h[u];
#pragma omp simd
    for (index_t v = u + 1; v < n; ++v) Du[v] += detail::swap_gain_delta(cu, eu, gu, hu, c[v], e[v], g[v], h[v]);
  }
}

// The swap_class rule in three maxima: of every entry (m_any), of those with tm < old (aspired by age; none when old
// is -kInf) and with tm < now (authorised). Aspired are: every entry when m_any > need (the best of them then is the
// best of all), else those with tm < old; then the authorised ones; then any. The maxima of every chunk come from a
// vectorised pass, the first position of the winner from a scalar pass over the first chunk that holds it.
template <bool kAged>
LVMMED_CPU_CLONES void dense_pick_maxima(const double* __restrict D, const double* __restrict TM, index_t k0,
                                         index_t k1, double old, double now, double* m) {
  constexpr double kNone = -detail::kInf;
  double m0 = kNone, m1 = kNone, m2 = kNone;
#pragma omp simd reduction(max : m0, m1, m2)
  for (index_t k = k0; k < k1; ++k) {
    m0 = std::max(m0, D[k]);
    if constexpr (kAged) m1 = std::max(m1, TM[k] < old ? D[k] : kNone);
    m2 = std::max(m2, TM[k] < now ? D[k] : kNone);
  }
  m[0] = m0;
  m[1] = m1;
  m[2] = m2;
}

LVMMED_CPU_CLONES detail::Best dense_pick_impl(const double* __restrict D, const double* __restrict TM, index_t nn,
                                               double need, double old, double now) {
  constexpr index_t kChunk = 32;
  constexpr double kNone = -detail::kInf;
  double* chunk_max = detail::SerialTeam().scratch<double>(3, 3 * ((nn + kChunk - 1) / kChunk));
  double m[3] = {kNone, kNone, kNone};  // any, aged, authorised
  for (index_t k0 = 0, b = 0; k0 < nn; k0 += kChunk, ++b) {
    double* cm = chunk_max + 3 * b;
    if (old > kNone)
      dense_pick_maxima<true>(D, TM, k0, std::min(nn, k0 + kChunk), old, now, cm);
    else
      dense_pick_maxima<false>(D, TM, k0, std::min(nn, k0 + kChunk), old, now, cm);
    for (int c = 0; c < 3; ++c) m[c] = std::max(m[c], cm[c]);
  }
  int which = 0;  // 0: any entry, 1: tm < old, 2: tm < now
  if (!(m[0] > need)) which = m[1] > kNone ? 1 : (m[2] > kNone ? 2 : 0);
  if (!(m[which] > kNone)) return detail::no_best();
  const double bound = which == 1 ? old : (which == 2 ? now : detail::kInf);
  for (index_t k0 = 0, b = 0; k0 < nn; k0 += kChunk, ++b) {
    if (chunk_max[3 * b + which] != m[which]) continue;
    for (index_t k = k0; k < std::min(nn, k0 + kChunk); ++k)
      if (D[k] == m[which] && TM[k] < bound) return {m[which], k};
  }
  return detail::no_best();  // not reached
}

LVMMED_CPU_CLONES void dense_row_gains_impl(double* __restrict t, const double* __restrict ax,
                                            const double* __restrict px, const double* __restrict atx,
                                            const double* __restrict ptx, const double* __restrict dA,
                                            const double* __restrict dP, const double* __restrict e, int x, bool sym,
                                            index_t n) {
  const double axx = ax[x], pxx = px[x], ex = e[x];
#pragma omp simd
  for (index_t v = 0; v < n; ++v)
    t[v] = detail::dense_row_gain(t[v], ex, e[v], axx, pxx, ax[v], atx[v], px[v], ptx[v], dA[v], dP[v], sym);
}

}  // namespace

namespace detail {
template <>
void SerialTeam::multiply_add<float>(float* acc, const float* a, const float* b, index_t n) const {
  multiply_add_impl(acc, a, b, n);
}
template <>
void SerialTeam::multiply_add<double>(double* acc, const double* a, const double* b, index_t n) const {
  multiply_add_impl(acc, a, b, n);
}
void SerialTeam::axpy(double alpha, const double* x, double* y, index_t n) const {
  cpu::axpy(alpha, x, y, n);
}
double SerialTeam::dot(const double* a, const double* b, index_t n) const {
  return cpu::dot(a, b, n);
}
void SerialTeam::exp_scaled(double* out, const double* in, double scale, index_t n) const {
  exp_scaled_impl(out, in, scale, n);
}
Best SerialTeam::dense_pick(const double* D, const double* TM, index_t nn, double need, double old, double now) const {
  return dense_pick_impl(D, TM, nn, need, old, now);
}
void SerialTeam::dense_row_gains(double* t, const double* ax, const double* px, const double* atx, const double* ptx,
                                 const double* dA, const double* dP, const double* e, int x, bool sym,
                                 index_t n) const {
  dense_row_gains_impl(t, ax, px, atx, ptx, dA, dP, e, x, sym, n);
}
void SerialTeam::transposed_matvec2(double* out, const double* M1, const double* x1, const double* M2, const double* x2,
                                    index_t n) const {
  transposed_matvec2_impl(out, M1, x1, M2, x2, n);
}
void SerialTeam::swap_gain_update(double* D, const double* c, const double* e, const double* g, const double* h,
                                  index_t n) const {
  swap_gain_update_impl(D, c, e, g, h, n);
}
template <>
double SerialTeam::max_abs<float>(const float* x, index_t n) const {
  return max_abs_impl(x, n);
}
template <>
double SerialTeam::max_abs<double>(const double* x, index_t n) const {
  return max_abs_impl(x, n);
}
}  // namespace detail

namespace cpu {

template <typename T>
void qap_search(QAPInputs<T> in, const T* init, std::int64_t* assign, QAPShape s, QAPSearchOptions o, index_t g_begin,
                index_t g_end) {
  const bool need_ga = o.multistart && o.ga_steps > 0;
  const detail::SearchPlan plan = detail::make_search_plan(o, s);
  const detail::QAPLayout l =
      detail::qap_layout(s.N, s.M, s.has_edges ? s.Es : 0, s.has_edges ? s.Et : 0, true, need_ga, plan.dense);
  std::vector<double> ws(l.bytes() / 8 + 1);
  const detail::SerialTeam team;
  for (index_t g = g_begin; g < g_end; ++g) {
    auto c = detail::qap_search_at(detail::graph_of(in, s, g), ws.data(), o.partial, true, need_ga, plan.dense);
    detail::search_solve(team, c, plan, init ? init + g * s.N * s.M : nullptr, assign + g * s.N,
                         static_cast<std::uint64_t>(g));
  }
}

template void qap_search<float>(QAPInputs<float>, const float*, std::int64_t*, QAPShape, QAPSearchOptions, index_t,
                                index_t);
template void qap_search<double>(QAPInputs<double>, const double*, std::int64_t*, QAPShape, QAPSearchOptions, index_t,
                                 index_t);

}  // namespace cpu
}  // namespace lvmmed
