// Vectorised BLAS-1 helpers of the CPU kernels. On x86-64 each is compiled twice (baseline and x86-64-v3:
// AVX2+FMA) and the best clone is picked at load time, so the package runs on any x86-64 CPU.
#pragma once
#include "lvmmed/common.h"

namespace lvmmed::cpu {

template <typename T>
T dot(const T* a, const T* b, index_t n);
// y += alpha * x
template <typename T>
void axpy(T alpha, const T* x, T* y, index_t n);

}  // namespace lvmmed::cpu
