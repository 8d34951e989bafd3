// CPU kernels of the local (region-aware) affinity. Forward: per (graph, source node) row of a Gram chunk, the
// feature distances of its P x (M*Q) slab, nearest neighbours in both directions, location neighbours from the
// positions, top-k selections and cosine means, all read from the Gram slab (no D-vector is touched). Backward:
// sparse gathers of the selected vectors (axpy per selection) and the chain rule through the normalisation.
#include "lvmmed/local_affinity.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "lvmmed/cosine.h"
#include "vec.h"

namespace lvmmed::cpu {
namespace {

using std::int32_t;

// For each of `rows` rows of x (row stride ld) of `cols` entries: the minimum and the first column attaining it,
// written at minv[r * ostride], arg[r * ostride].
template <typename V>
LVMMED_CPU_CLONES void argmin_rows(const V* x, index_t rows, index_t cols, index_t ld, V* minv, int32_t* arg,
                                   index_t ostride) {
  for (index_t r = 0; r < rows; ++r) {
    const V* xr = x + r * ld;
    V m = xr[0];
#pragma omp simd reduction(min : m)
    for (index_t c = 1; c < cols; ++c) m = xr[c] < m ? xr[c] : m;
    index_t c = 0;
    while (xr[c] != m) ++c;  // m is one of the entries, so this stops at its first occurrence
    minv[r * ostride] = m;
    arg[r * ostride] = static_cast<int32_t>(c);
  }
}

// For each of `cols` columns of x [rows, ld]: the minimum over the rows and the first row attaining it.
template <typename V>
LVMMED_CPU_CLONES void argmin_cols(const V* x, index_t rows, index_t cols, index_t ld, V* minv, int32_t* arg) {
  for (index_t c = 0; c < cols; ++c) {
    minv[c] = x[c];
    arg[c] = 0;
  }
  for (index_t r = 1; r < rows; ++r) {
    const V* xr = x + r * ld;
    const int32_t rr = static_cast<int32_t>(r);
#pragma omp simd
    for (index_t c = 0; c < cols; ++c) {
      const bool lt = xr[c] < minv[c];  // strict: ties keep the lower row
      minv[c] = lt ? xr[c] : minv[c];
      arg[c] = lt ? rr : arg[c];
    }
  }
}

// Squared feature distances of a [rows, cols] Gram slab (row stride cols): d = sq_s[p] + sq_t[c] - 2 gram[p, c].
template <typename T>
LVMMED_CPU_CLONES void feature_distances(const T* gram, const T* sq_s, const T* sq_t, index_t rows, index_t cols,
                                         T* d) {
  for (index_t p = 0; p < rows; ++p) {
    const T sp = sq_s[p];
    const T* g = gram + p * cols;
    T* dp = d + p * cols;
#pragma omp simd
    for (index_t c = 0; c < cols; ++c) dp[c] = (sp + sq_t[c]) - T(2) * g[c];
  }
}

// Squared distances between the cell positions ps [P,2] and pt [Q,2] (x, y interleaved): d [P,Q].
LVMMED_CPU_CLONES void location_distances(const double* ps, const double* pt, index_t P, index_t Q, double* d) {
  for (index_t p = 0; p < P; ++p) {
    const double x = ps[2 * p], y = ps[2 * p + 1];
    double* dp = d + p * Q;
#pragma omp simd
    for (index_t q = 0; q < Q; ++q) {
      const double dx = x - pt[2 * q], dy = y - pt[2 * q + 1];
      dp[q] = dx * dx + dy * dy;
    }
  }
}

// Keeps the k entries of idx[0..n) with the smallest d (ties: lower index); the others become -1.
template <typename V>
void keep_smallest(const V* d, index_t n, index_t k, int32_t* idx, std::vector<index_t>& order) {
  if (k >= n) return;
  order.resize(n);
  std::iota(order.begin(), order.end(), index_t{0});
  std::nth_element(order.begin(), order.begin() + k, order.end(),
                   [d](index_t a, index_t b) { return d[a] < d[b] || (d[a] == d[b] && a < b); });
  for (index_t j = k; j < n; ++j) idx[order[j]] = -1;
}

// Scratch of one forward task, reused across its rows.
template <typename T>
struct ForwardScratch {
  std::vector<T> dist;                  // [P, M*Q] feature distances of the slab
  std::vector<T> row_min, col_min;      // [M, P] nearest target distance per source cell / [M*Q] the reverse
  std::vector<int32_t> row_arg, col_arg;
  std::vector<double> loc, loc_row_min, loc_col_min;  // [P,Q], [P], [Q]
  std::vector<index_t> order;
};

}  // namespace

template <typename T>
void local_affinity_forward(const T* gram, const T* sq_s, const T* inv_s, const T* sq_t, const T* inv_t,
                            const double* pos_s, const double* pos_t, T* out, int32_t* matches, LocalAffinityShape s,
                            GramChunk c, index_t r_begin, index_t r_end) {
  const index_t P = s.P, Q = s.Q, M = s.M, MQ = s.M * s.Q, W = s.match_width();
  ForwardScratch<T> w;
  w.dist.resize(P * MQ);
  w.row_min.resize(M * P);
  w.row_arg.resize(M * P);
  w.col_min.resize(MQ);
  w.col_arg.resize(MQ);
  if (s.with_positions) {
    w.loc.resize(P * Q);
    w.loc_row_min.resize(P);
    w.loc_col_min.resize(Q);
  }
  for (index_t r = r_begin; r < r_end; ++r) {
    const index_t g = c.g0 + r / c.nodes, i = c.i0 + r % c.nodes;
    const index_t node = g * s.N + i;
    const T* S = gram + r * P * MQ;  // [P, M*Q] slab of node i against every target node of graph g
    const T* sqs = sq_s + node * P;
    const T* invs = inv_s + node * P;
    const T* sqt = sq_t + g * MQ;
    const T* invt = inv_t + g * MQ;

    feature_distances(S, sqs, sqt, P, MQ, w.dist.data());
    for (index_t p = 0; p < P; ++p)  // nearest cell of every target node a, for each source cell p
      argmin_rows(w.dist.data() + p * MQ, M, Q, Q, w.row_min.data() + p, w.row_arg.data() + p, P);
    argmin_cols(w.dist.data(), P, MQ, MQ, w.col_min.data(), w.col_arg.data());

    for (index_t a = 0; a < M; ++a) {
      int32_t* m = matches + (node * M + a) * W;
      const index_t off = a * Q;  // column offset of target node a in the slab
      // i -> a by features: m'(p), kept by distance, mean cosine of the kept pairs.
      std::copy_n(w.row_arg.data() + a * P, P, m);
      keep_smallest(w.row_min.data() + a * P, P, s.feat_s, m, w.order);
      double feat_st = 0;
      for (index_t p = 0; p < P; ++p)
        if (m[p] >= 0) feat_st += double(S[p * MQ + off + m[p]] * invs[p] * invt[off + m[p]]);
      // a -> i by features.
      int32_t* mt = m + P;
      std::copy_n(w.col_arg.data() + off, Q, mt);
      keep_smallest(w.col_min.data() + off, Q, s.feat_t, mt, w.order);
      double feat_ts = 0;
      for (index_t q = 0; q < Q; ++q)
        if (mt[q] >= 0) feat_ts += double(S[mt[q] * MQ + off + q] * invs[mt[q]] * invt[off + q]);
      double l_st = feat_st / double(s.feat_s), l_ts = feat_ts / double(s.feat_t);

      if (s.with_positions) {  // the same with location neighbours and location distances
        location_distances(pos_s + node * P * 2, pos_t + (g * M + a) * Q * 2, P, Q, w.loc.data());
        int32_t* ml = m + P + Q;
        int32_t* mlt = ml + P;
        argmin_rows(w.loc.data(), P, Q, Q, w.loc_row_min.data(), ml, 1);
        keep_smallest(w.loc_row_min.data(), P, s.loc_s, ml, w.order);
        argmin_cols(w.loc.data(), P, Q, Q, w.loc_col_min.data(), mlt);
        keep_smallest(w.loc_col_min.data(), Q, s.loc_t, mlt, w.order);
        double loc_st = 0, loc_ts = 0;
        for (index_t p = 0; p < P; ++p)
          if (ml[p] >= 0) loc_st += double(S[p * MQ + off + ml[p]] * invs[p] * invt[off + ml[p]]);
        for (index_t q = 0; q < Q; ++q)
          if (mlt[q] >= 0) loc_ts += double(S[mlt[q] * MQ + off + q] * invs[mlt[q]] * invt[off + q]);
        l_st = 0.5 * (l_st + loc_st / double(s.loc_s));
        l_ts = 0.5 * (l_ts + loc_ts / double(s.loc_t));
      }
      out[node * M + a] = static_cast<T>(0.5 * (l_st + l_ts));
    }
  }
}

template <typename T>
void local_affinity_backward_source(const T* grad, const T* ys, const T* yt, const T* inv_s, const T* inv_t,
                                    const int32_t* matches, T* grad_ys, LocalAffinityShape s, index_t n_begin,
                                    index_t n_end) {
  const index_t P = s.P, Q = s.Q, M = s.M, D = s.D, W = s.match_width();
  const double wfs = s.feat_weight(s.feat_s), wft = s.feat_weight(s.feat_t);
  const double wls = s.with_positions ? s.loc_weight(s.loc_s) : 0, wlt = s.with_positions ? s.loc_weight(s.loc_t) : 0;
  for (index_t node = n_begin; node < n_end; ++node) {
    const index_t g = node / s.N;
    T* A = grad_ys + node * P * D;  // dL/d(yhat_s) of node's cells, then the gradient in place
    std::fill(A, A + P * D, T(0));
    const T* yt_g = yt + g * M * Q * D;
    const T* invt = inv_t + g * M * Q;
    for (index_t a = 0; a < M; ++a) {
      const double go = double(grad[node * M + a]);
      if (go == 0) continue;  // exact: every contribution of this pair is 0 * finite
      const int32_t* m = matches + (node * M + a) * W;
      const index_t off = a * Q;
      // Sections i->a (m[p] = matched target cell of source cell p) and a->i (m[q] = matched source cell of q).
      const auto gather = [&](const int32_t* ms, const int32_t* mt, double wst, double wts) {
        for (index_t p = 0; p < P; ++p)
          if (ms[p] >= 0) {
            const index_t t = off + ms[p];
            axpy(T(go * wst * double(invt[t])), yt_g + t * D, A + p * D, D);
          }
        for (index_t q = 0; q < Q; ++q)
          if (mt[q] >= 0) axpy(T(go * wts * double(invt[off + q])), yt_g + (off + q) * D, A + mt[q] * D, D);
      };
      gather(m, m + P, wfs, wft);
      if (s.with_positions) gather(m + P + Q, m + 2 * P + Q, wls, wlt);
    }
    project_rows(A, ys + node * P * D, inv_s + node * P, D, A, 0, P);
  }
}

template <typename T>
void local_affinity_backward_target(const T* grad, const T* ys, const T* yt, const T* inv_s, const T* inv_t,
                                    const int32_t* matches, T* grad_yt, LocalAffinityShape s, index_t n_begin,
                                    index_t n_end) {
  const index_t P = s.P, Q = s.Q, N = s.N, M = s.M, D = s.D, W = s.match_width();
  const double wfs = s.feat_weight(s.feat_s), wft = s.feat_weight(s.feat_t);
  const double wls = s.with_positions ? s.loc_weight(s.loc_s) : 0, wlt = s.with_positions ? s.loc_weight(s.loc_t) : 0;
  for (index_t tnode = n_begin; tnode < n_end; ++tnode) {
    const index_t g = tnode / M, a = tnode % M;
    T* B = grad_yt + tnode * Q * D;
    std::fill(B, B + Q * D, T(0));
    for (index_t i = 0; i < N; ++i) {
      const index_t node = g * N + i;
      const double go = double(grad[node * M + a]);
      if (go == 0) continue;
      const int32_t* m = matches + (node * M + a) * W;
      const T* ys_i = ys + node * P * D;
      const T* invs = inv_s + node * P;
      const auto gather = [&](const int32_t* ms, const int32_t* mt, double wst, double wts) {
        for (index_t p = 0; p < P; ++p)
          if (ms[p] >= 0) axpy(T(go * wst * double(invs[p])), ys_i + p * D, B + ms[p] * D, D);
        for (index_t q = 0; q < Q; ++q)
          if (mt[q] >= 0) axpy(T(go * wts * double(invs[mt[q]])), ys_i + mt[q] * D, B + q * D, D);
      };
      gather(m, m + P, wfs, wft);
      if (s.with_positions) gather(m + P + Q, m + 2 * P + Q, wls, wlt);
    }
    project_rows(B, yt + tnode * Q * D, inv_t + tnode * Q, D, B, 0, Q);
  }
}

#define LVMMED_INSTANTIATE(T)                                                                                       \
  template void local_affinity_forward<T>(const T*, const T*, const T*, const T*, const T*, const double*,          \
                                          const double*, T*, int32_t*, LocalAffinityShape, GramChunk, index_t,      \
                                          index_t);                                                                 \
  template void local_affinity_backward_source<T>(const T*, const T*, const T*, const T*, const T*, const int32_t*, \
                                                  T*, LocalAffinityShape, index_t, index_t);                        \
  template void local_affinity_backward_target<T>(const T*, const T*, const T*, const T*, const T*, const int32_t*, \
                                                  T*, LocalAffinityShape, index_t, index_t);
LVMMED_INSTANTIATE(float)
LVMMED_INSTANTIATE(double)
#undef LVMMED_INSTANTIATE

}  // namespace lvmmed::cpu
