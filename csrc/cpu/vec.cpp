// Vectorised BLAS-1 helpers of the CPU kernels (see vec.h): omp-simd loops, cloned per instruction set.
#include "vec.h"

namespace lvmmed::cpu {

template <typename T>
LVMMED_CPU_CLONES T dot(const T* a, const T* b, index_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (index_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

template <typename T>
LVMMED_CPU_CLONES T squared_distance(const T* a, const T* b, index_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (index_t i = 0; i < n; ++i) acc += (a[i] - b[i]) * (a[i] - b[i]);
  return acc;
}

template <typename T>
LVMMED_CPU_CLONES void axpy(T alpha, const T* x, T* y, index_t n) {
#pragma omp simd
  for (index_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

template float dot<float>(const float*, const float*, index_t);
template double dot<double>(const double*, const double*, index_t);
template float squared_distance<float>(const float*, const float*, index_t);
template double squared_distance<double>(const double*, const double*, index_t);
template void axpy<float>(float, const float*, float*, index_t);
template void axpy<double>(double, const double*, double*, index_t);

}  // namespace lvmmed::cpu
