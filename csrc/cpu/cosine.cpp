// CPU row-wise helpers shared by the cosine kernels (see lvmmed/cosine.h).
#include "lvmmed/cosine.h"

#include <cmath>

#include "vec.h"

namespace lvmmed::cpu {

template <typename T>
void row_norms(const T* x, index_t D, T* sq, T* inv, index_t r_begin, index_t r_end) {
  for (index_t r = r_begin; r < r_end; ++r) {
    const T s = dot(x + r * D, x + r * D, D);
    const T n = std::sqrt(s);
    if (sq) sq[r] = s;
    inv[r] = n > T(0) ? T(1) / n : T(0);
  }
}

template <typename T>
void project_rows(const T* d, const T* x, const T* inv, index_t D, T* grad_x, index_t r_begin, index_t r_end) {
  for (index_t r = r_begin; r < r_end; ++r) {
    const T* dr = d + r * D;
    const T* xr = x + r * D;
    T* gr = grad_x + r * D;
    const T c = dot(dr, xr, D) * inv[r] * inv[r];
    for (index_t f = 0; f < D; ++f) gr[f] = inv[r] * (dr[f] - c * xr[f]);
  }
}

template void row_norms<float>(const float*, index_t, float*, float*, index_t, index_t);
template void row_norms<double>(const double*, index_t, double*, double*, index_t, index_t);
template void project_rows<float>(const float*, const float*, const float*, index_t, float*, index_t, index_t);
template void project_rows<double>(const double*, const double*, const double*, index_t, double*, index_t, index_t);

}  // namespace lvmmed::cpu
