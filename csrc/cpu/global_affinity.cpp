// CPU kernels of the global cosine affinity (forward and backward), one graph at a time.
#include "lvmmed/global_affinity.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "vec.h"

namespace lvmmed::cpu {
namespace {

// 1/||row|| for every row of x [rows,F]; 0 for a zero row so its cosines (and gradients) vanish.
template <typename T>
void inverse_norms(const T* x, index_t rows, index_t F, T* inv) {
  for (index_t r = 0; r < rows; ++r) {
    const T n = std::sqrt(dot(x + r * F, x + r * F, F));
    inv[r] = n > T(0) ? T(1) / n : T(0);
  }
}

// Chain rule through xhat = x/||x||: given d[r] = dL/dxhat[r], dL/dx[r] = inv[r] * (d[r] - <d[r], xhat[r]> xhat[r]).
template <typename T>
void project_rows(const T* d, const T* x, const T* inv, index_t rows, index_t F, T* grad_x) {
  for (index_t r = 0; r < rows; ++r) {
    const T* dr = d + r * F;
    const T* xr = x + r * F;
    T* gr = grad_x + r * F;
    const T c = dot(dr, xr, F) * inv[r] * inv[r];
    for (index_t f = 0; f < F; ++f) gr[f] = inv[r] * (dr[f] - c * xr[f]);
  }
}

}  // namespace

template <typename T>
void global_affinity_forward(const T* zs, const T* zt, T* out, GlobalAffinityShape s, index_t g_begin, index_t g_end) {
  std::vector<T> inv_s(s.N), inv_t(s.M);
  for (index_t g = g_begin; g < g_end; ++g) {
    const T* a = zs + g * s.N * s.F;
    const T* b = zt + g * s.M * s.F;
    T* o = out + g * s.N * s.M;
    inverse_norms(a, s.N, s.F, inv_s.data());
    inverse_norms(b, s.M, s.F, inv_t.data());
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
    inverse_norms(a, s.N, s.F, inv_s.data());
    inverse_norms(b, s.M, s.F, inv_t.data());
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
    project_rows(ds.data(), a, inv_s.data(), s.N, s.F, grad_zs + g * s.N * s.F);
    project_rows(dt.data(), b, inv_t.data(), s.M, s.F, grad_zt + g * s.M * s.F);
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
