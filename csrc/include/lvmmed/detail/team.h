// The "team" that runs one problem of the per-graph solvers (LAP, QAP search): the same SPMD code runs on the CPU
// as a team of one thread (SerialTeam, here) and on CUDA as one thread block (BlockTeam, csrc/cuda/block_team.cuh).
//
// Rules of the SPMD code: every thread of a team executes the same control flow; arrays live in team-shared memory
// and are written in team.range loops (each index by one thread) or by the leader, followed by team.sync();
// scalars are replicated (every thread computes the same value, e.g. from the broadcast result of a reduction, or
// team.clock_ns(), which every thread of the team must call and which returns the same value to all).
#pragma once
#include <cstdint>
#ifndef __CUDACC__
#include <chrono>
#include <vector>
#endif

#include "lvmmed/common.h"

#ifdef __CUDACC__
#define LVMMED_TEAM_FN __device__ inline
#define LVMMED_HD_FN __host__ __device__ inline
#else
#define LVMMED_TEAM_FN inline
#define LVMMED_HD_FN inline
#endif

namespace lvmmed::detail {

// A candidate of a team-wide argmax: the largest value wins, ties go to the smallest code (deterministic).
struct Best {
  double value;
  std::int64_t code;
};

constexpr std::int64_t kNoCode = INT64_MAX;
constexpr double kInf = 1e300;  // "infinite" cost: finite, so arithmetic on it stays defined

LVMMED_TEAM_FN Best no_best() {
  return {-kInf, kNoCode};
}

LVMMED_TEAM_FN bool better(const Best& a, const Best& b) {
  return a.value > b.value || (a.value == b.value && a.code < b.code);
}

LVMMED_TEAM_FN void offer(Best& best, double value, std::int64_t code) {
  if (value > best.value || (value == best.value && code < best.code)) best = {value, code};
}

template <typename V>
LVMMED_HD_FN V vmin(V a, V b) {
  return b < a ? b : a;
}
template <typename V>
LVMMED_HD_FN V vmax(V a, V b) {
  return a < b ? b : a;
}
template <typename V>
LVMMED_HD_FN V vabs(V a) {
  return a < V(0) ? -a : a;
}

#ifndef __CUDACC__
// A team of one CPU thread. It also offers what only the serial fast paths of the engine use: per-thread scratch
// and a vectorised multiply-accumulate (defined in csrc/cpu/qap.cpp, cloned per instruction set).
struct SerialTeam {
  static constexpr bool kSerial = true;
  bool leader() const { return true; }
  void sync() const {}
  template <typename F>
  void range(index_t n, F&& f) const {
    for (index_t i = 0; i < n; ++i) f(i);
  }
  Best argmax(Best b) const { return b; }
  // Nanoseconds of a monotonic clock (the time limits of the search).
  std::int64_t clock_ns() const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  // Thread-local scratch of n values of V (V of at most 8 bytes); slots 0..3 are independent buffers.
  template <typename V>
  V* scratch(int slot, index_t n) const {
    static thread_local std::vector<double> buf[4];
    if (static_cast<index_t>(buf[slot].size()) < n) buf[slot].resize(n);
    return reinterpret_cast<V*>(buf[slot].data());
  }
  // acc[k] += a[k] * b[k], k < n
  template <typename T>
  void multiply_add(T* acc, const T* a, const T* b, index_t n) const;
  // max_k |x[k]| (0 for n = 0)
  template <typename T>
  double max_abs(const T* x, index_t n) const;
  // y += alpha x; <a, b>; out = exp(scale * in) (relative error < 1e-12, arguments clamped to +-700)
  void axpy(double alpha, const double* x, double* y, index_t n) const;
  double dot(const double* a, const double* b, index_t n) const;
  void exp_scaled(double* out, const double* in, double scale, index_t n) const;
  // The serial versions of the dense search's loops (qap_engine.h, vectorised in csrc/cpu/qap_search.cpp):
  // the best entry k < nn of D (tabu until TM) of the first swap_class (0, 1, 2) that has one, the first on ties
  // (old = -kInf: no tabu entry is old enough to aspire);
  Best dense_pick(const double* D, const double* TM, index_t nn, double need, double old, double now) const;
  // t[v] = dense_row_gain(t[v], ...) for row x, v < n.
  void dense_row_gains(double* t, const double* ax, const double* px, const double* atx, const double* ptx,
                       const double* dA, const double* dP, const double* e, int x, bool sym, index_t n) const;
  // out[v] += sum_k x1[k] M1[k,v] + x2[k] M2[k,v], v < n (M1, M2 row-major [n, n])
  void transposed_matvec2(double* out, const double* M1, const double* x1, const double* M2, const double* x2,
                          index_t n) const;
  // D[u,v] += swap_gain_delta(...) for u < v < n
  void swap_gain_update(double* D, const double* c, const double* e, const double* g, const double* h, index_t n) const;
};
template <>
void SerialTeam::multiply_add<float>(float* acc, const float* a, const float* b, index_t n) const;
template <>
void SerialTeam::multiply_add<double>(double* acc, const double* a, const double* b, index_t n) const;
template <>
double SerialTeam::max_abs<float>(const float* x, index_t n) const;
template <>
double SerialTeam::max_abs<double>(const double* x, index_t n) const;
#endif

}  // namespace lvmmed::detail
