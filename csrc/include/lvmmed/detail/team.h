// The "team" that runs one problem of the per-graph solvers (LAP, QAP search): the same SPMD code runs on the CPU
// as a team of one thread (SerialTeam, here) and on CUDA as one thread block (BlockTeam, csrc/cuda/block_team.cuh).
//
// Rules of the SPMD code: every thread of a team executes the same control flow; arrays live in team-shared memory
// and are written in team.range loops (each index by one thread) or by the leader, followed by team.sync();
// scalars are replicated (every thread computes the same value, e.g. from the broadcast result of a reduction).
#pragma once
#include <cstdint>
#ifndef __CUDACC__
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
