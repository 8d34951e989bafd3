// Vectorised BLAS-1 helpers of the CPU kernels. On x86-64 each is compiled twice (baseline and x86-64-v3:
// AVX2+FMA) and the best clone is picked at load time, so the package runs on any x86-64 CPU.
#pragma once
#include "lvmmed/common.h"

// Compile a hot loop twice (x86-64 baseline and x86-64-v3: AVX2+FMA), picked at load time.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LVMMED_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LVMMED_CPU_CLONES
#endif

namespace lvmmed::cpu {

template <typename T>
T dot(const T* a, const T* b, index_t n);
// sum_i (a[i] - b[i])^2
template <typename T>
T squared_distance(const T* a, const T* b, index_t n);
// y += alpha * x
template <typename T>
void axpy(T alpha, const T* x, T* y, index_t n);

}  // namespace lvmmed::cpu
