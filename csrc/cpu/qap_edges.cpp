// CPU kernels of the continuous QAP edge operations (any real X, self loops included): objective, gradient,
// pygmtools-style Lawler products and the gradient w.r.t. quad. One thread per graph.
#include <vector>

#include "lvmmed/detail/qap_engine.h"
#include "lvmmed/qap.h"

namespace lvmmed::cpu {
namespace {

// Adjacency (with loops) of both sides of graph g in `buf`.
struct Sides {
  detail::Adjacency as, at;
};

template <typename T>
Sides adjacency(const detail::QAPGraph<T>& gr, std::vector<int>& buf) {
  const index_t need =
      2 * (gr.N + 1) + 4 * static_cast<index_t>(gr.Es) + 2 * (gr.M + 1) + 4 * static_cast<index_t>(gr.Et);
  if (static_cast<index_t>(buf.size()) < need) buf.resize(need);
  Sides sd;
  sd.as = detail::adjacency_at(buf.data(), gr.N, gr.Es);
  sd.at = detail::adjacency_at(buf.data() + 2 * (gr.N + 1) + 4 * static_cast<index_t>(gr.Es), gr.M, gr.Et);
  const detail::SerialTeam team;
  detail::build_adjacency(team, gr.es, gr.N, gr.Es, true, sd.as);
  detail::build_adjacency(team, gr.et, gr.M, gr.Et, true, sd.at);
  return sd;
}

}  // namespace

template <typename T>
void qap_edge_objective(const T* X, QAPInputs<T> in, T* out, QAPShape s, index_t g_begin, index_t g_end) {
  for (index_t g = g_begin; g < g_end; ++g) {
    const auto gr = detail::graph_of(in, s, g);
    const T* x = X + g * s.N * s.M;
    double f = 0;
    for (index_t k = 0; k < s.N * s.M; ++k) f += static_cast<double>(gr.unary[k]) * static_cast<double>(x[k]);
    for (int p = 0; p < gr.Es; ++p) {
      const T* xi = x + gr.es[2 * p] * s.M;
      const T* xj = x + gr.es[2 * p + 1] * s.M;
      const T* qp = gr.quad + static_cast<index_t>(p) * gr.Et;
      double acc = 0;
      for (int q = 0; q < gr.Et; ++q)
        acc += static_cast<double>(qp[q]) * static_cast<double>(xi[gr.et[2 * q]]) *
               static_cast<double>(xj[gr.et[2 * q + 1]]);
      f += acc;
    }
    out[g] = static_cast<T>(f);
  }
}

template <typename T>
void qap_edge_gradient(const T* X, QAPInputs<T> in, T* out, QAPShape s, index_t g_begin, index_t g_end) {
  std::vector<int> buf;
  std::vector<double> acc(s.N * s.M);
  const detail::SerialTeam team;
  for (index_t g = g_begin; g < g_end; ++g) {
    const auto gr = detail::graph_of(in, s, g);
    for (index_t k = 0; k < s.N * s.M; ++k) acc[k] = static_cast<double>(gr.unary[k]);
    if (gr.Es > 0 && gr.Et > 0) {
      const Sides sd = adjacency(gr, buf);
      detail::edge_product(team, gr, sd.as, sd.at, X + g * s.N * s.M, s.M, acc.data(), s.M, true, true);
    }
    T* o = out + g * s.N * s.M;
    for (index_t k = 0; k < s.N * s.M; ++k) o[k] = static_cast<T>(acc[k]);
  }
}

template <typename T>
void qap_lawler_product(const T* X, QAPInputs<T> in, T* out, bool transpose, QAPShape s, index_t g_begin,
                        index_t g_end) {
  std::vector<int> buf;
  std::vector<double> acc(s.N * s.M);
  const detail::SerialTeam team;
  for (index_t g = g_begin; g < g_end; ++g) {
    const auto gr = detail::graph_of(in, s, g);
    const T* x = X + g * s.N * s.M;
    for (index_t k = 0; k < s.N * s.M; ++k) acc[k] = static_cast<double>(gr.unary[k]) * static_cast<double>(x[k]);
    if (gr.Es > 0 && gr.Et > 0) {
      const Sides sd = adjacency(gr, buf);
      detail::edge_product(team, gr, sd.as, sd.at, x, s.M, acc.data(), s.M, !transpose, transpose);
    }
    T* o = out + g * s.N * s.M;
    for (index_t k = 0; k < s.N * s.M; ++k) o[k] = static_cast<T>(acc[k]);
  }
}

template <typename T>
void qap_quad_grad(const T* grad, const T* X, QAPInputs<T> in, T* out, QAPShape s, index_t g_begin, index_t g_end) {
  for (index_t g = g_begin; g < g_end; ++g) {
    const auto gr = detail::graph_of(in, s, g);
    const T* x = X + g * s.N * s.M;
    const double w = static_cast<double>(grad[g]);
    for (int p = 0; p < gr.Es; ++p) {
      const T* xi = x + gr.es[2 * p] * s.M;
      const T* xj = x + gr.es[2 * p + 1] * s.M;
      T* o = out + (g * s.Es + p) * s.Et;
      for (int q = 0; q < gr.Et; ++q)
        o[q] = static_cast<T>(w * static_cast<double>(xi[gr.et[2 * q]]) * static_cast<double>(xj[gr.et[2 * q + 1]]));
    }
  }
}

#define LVMMED_INSTANTIATE(T)                                                                        \
  template void qap_edge_objective<T>(const T*, QAPInputs<T>, T*, QAPShape, index_t, index_t);       \
  template void qap_edge_gradient<T>(const T*, QAPInputs<T>, T*, QAPShape, index_t, index_t);        \
  template void qap_lawler_product<T>(const T*, QAPInputs<T>, T*, bool, QAPShape, index_t, index_t); \
  template void qap_quad_grad<T>(const T*, const T*, QAPInputs<T>, T*, QAPShape, index_t, index_t);
LVMMED_INSTANTIATE(float)
LVMMED_INSTANTIATE(double)
#undef LVMMED_INSTANTIATE

}  // namespace lvmmed::cpu
