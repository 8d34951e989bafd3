// CPU kernels of the edge affinity's gather (edge vectors) and its adjoint (scatter into the endpoints).
#include "lvmmed/edge_affinity.h"

#include <algorithm>

#include "vec.h"

namespace lvmmed::cpu {

template <typename T>
void edge_vectors(const T* z, const std::int64_t* edges, T* d, EdgeListShape s, index_t g_begin, index_t g_end) {
  for (index_t g = g_begin; g < g_end; ++g)
    for (index_t e = 0; e < s.E; ++e) {
      const std::int64_t* ij = edges + (g * s.E + e) * 2;
      const T* zi = z + (g * s.N + ij[0]) * s.F;
      const T* zj = z + (g * s.N + ij[1]) * s.F;
      T* de = d + (g * s.E + e) * s.F;
      for (index_t f = 0; f < s.F; ++f) de[f] = zi[f] - zj[f];
    }
}

template <typename T>
void edge_vectors_backward(const T* grad_d, const std::int64_t* edges, T* grad_z, EdgeListShape s, index_t g_begin,
                           index_t g_end) {
  for (index_t g = g_begin; g < g_end; ++g) {
    T* gz = grad_z + g * s.N * s.F;
    std::fill(gz, gz + s.N * s.F, T(0));
    for (index_t e = 0; e < s.E; ++e) {
      const std::int64_t* ij = edges + (g * s.E + e) * 2;
      const T* gd = grad_d + (g * s.E + e) * s.F;
      axpy(T(1), gd, gz + ij[0] * s.F, s.F);
      axpy(T(-1), gd, gz + ij[1] * s.F, s.F);
    }
  }
}

template void edge_vectors<float>(const float*, const std::int64_t*, float*, EdgeListShape, index_t, index_t);
template void edge_vectors<double>(const double*, const std::int64_t*, double*, EdgeListShape, index_t, index_t);
template void edge_vectors_backward<float>(const float*, const std::int64_t*, float*, EdgeListShape, index_t, index_t);
template void edge_vectors_backward<double>(const double*, const std::int64_t*, double*, EdgeListShape, index_t,
                                            index_t);

}  // namespace lvmmed::cpu
