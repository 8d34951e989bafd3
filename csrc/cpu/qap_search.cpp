// CPU kernel of the approximate QAP search (multi-start descent + tabu, qap_engine.h): one thread per graph.
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
  const detail::QAPLayout l =
      detail::qap_layout(s.N, s.M, s.has_edges ? s.Es : 0, s.has_edges ? s.Et : 0, true, need_ga);
  std::vector<double> ws(l.bytes() / 8 + 1);
  const detail::SearchPlan plan = detail::make_search_plan(o, s.N, s.M);
  const detail::SerialTeam team;
  for (index_t g = g_begin; g < g_end; ++g) {
    auto c = detail::qap_search_at(detail::graph_of(in, s, g), ws.data(), o.partial, true, need_ga);
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
