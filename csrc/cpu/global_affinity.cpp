// CPU kernels of the global cosine affinity (forward and backward), one graph at a time.
#include "lvmmed/global_affinity.h"

#include <algorithm>
#include <vector>

#include "lvmmed/cosine.h"
#include "vec.h"

namespace lvmmed::cpu {

template <typename T>
void global_affinity_forward(const T* zs, const T* zt, T* out, GlobalAffinityShape s, index_t g_begin, index_t g_end) {
  std::vector<T> inv_s(s.N), inv_t(s.M);
  for (index_t g = g_begin; g < g_end; ++g) {
    const T* a = zs + g * s.N * s.F;
    const T* b = zt + g * s.M * s.F;
    T* o = out + g * s.N * s.M;
    row_norms<T>(a, s.F, nullptr, inv_s.data(), 0, s.N);
    row_norms<T>(b, s.F, nullptr, inv_t.data(), 0, s.M);
    for (index_t i = 0; i < s.N; ++i)
      for (index_t j = 0; j < s.M; ++j) o[i * s.M + j] = dot(a + i * s.F, b + j * s.F, s.F) * inv_s[i] * inv_t[j];
  }
}

template <typename T>
void global_affinity_backward(const T* grad, const T* zs, const T* zt, T* grad_zs, T* grad_zt, GlobalAffinityShape s,
                              index_t g_begin, index_t g_end) {
  std::vector<T> inv_s(s.N), inv_t(s.M), ds(s.N * s.F), dt(s.M * s.F);
  for (index_t g = g_begin; g < g_end; ++g) {
    const T* a = zs + g * s.N * s.F;
    const T* b = zt + g * s.M * s.F;
    const T* w = grad + g * s.N * s.M;
    row_norms<T>(a, s.F, nullptr, inv_s.data(), 0, s.N);
    row_norms<T>(b, s.F, nullptr, inv_t.data(), 0, s.M);
    // ds[i] = sum_j w[i,j] * bhat[j],  dt[j] = sum_i w[i,j] * ahat[i]
    std::fill(ds.begin(), ds.end(), T(0));
    std::fill(dt.begin(), dt.end(), T(0));
    for (index_t i = 0; i < s.N; ++i) {
      T* di = ds.data() + i * s.F;
      const T* ai = a + i * s.F;
      for (index_t j = 0; j < s.M; ++j) {
        const T wij = w[i * s.M + j];
        const T* bj = b + j * s.F;
        T* dj = dt.data() + j * s.F;
        axpy(wij * inv_t[j], bj, di, s.F);
        axpy(wij * inv_s[i], ai, dj, s.F);
      }
    }
    project_rows(ds.data(), a, inv_s.data(), s.F, grad_zs + g * s.N * s.F, 0, s.N);
    project_rows(dt.data(), b, inv_t.data(), s.F, grad_zt + g * s.M * s.F, 0, s.M);
  }
}

template void global_affinity_forward<float>(const float*, const float*, float*, GlobalAffinityShape, index_t, index_t);
template void global_affinity_forward<double>(const double*, const double*, double*, GlobalAffinityShape, index_t,
                                              index_t);
template void global_affinity_backward<float>(const float*, const float*, const float*, float*, float*,
                                              GlobalAffinityShape, index_t, index_t);
template void global_affinity_backward<double>(const double*, const double*, const double*, double*, double*,
                                               GlobalAffinityShape, index_t, index_t);

}  // namespace lvmmed::cpu
