// CPU kernels of the local (region-aware) affinity. Forward: per (graph, source node) row of a Gram chunk, the
// feature distances of its P x (M*Q) slab, nearest neighbours in both directions, location neighbours from the
// positions, top-k selections and cosine means, all read from the Gram slab (no D-vector is touched). Backward:
// sparse gathers of the selected vectors (axpy per selection) and the chain rule through the normalisation.
#include "lvmmed/local_affinity.h"

#include <algorithm>
#include <cstring>
#include <limits>
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

// Location nearest neighbours of one pair from the cell positions ps [P,2], pt [Q,2] ((x, y) interleaved), in
// float64, one pass: for each source cell p the nearest target cell (row_arg, row_min), for each target cell q the
// nearest source cell (col_arg, col_min); first index on ties. scratch: [3Q].
LVMMED_CPU_CLONES void location_neighbours(const double* ps, const double* pt, index_t P, index_t Q, double* row_min,
                                           int32_t* row_arg, double* col_min, int32_t* col_arg, double* scratch) {
  double* tx = scratch;
  double* ty = scratch + Q;
  double* row = scratch + 2 * Q;
  for (index_t q = 0; q < Q; ++q) {
    tx[q] = pt[2 * q];
    ty[q] = pt[2 * q + 1];
    col_min[q] = std::numeric_limits<double>::infinity();
    col_arg[q] = 0;
  }
  for (index_t p = 0; p < P; ++p) {
    const double x = ps[2 * p], y = ps[2 * p + 1];
#pragma omp simd
    for (index_t q = 0; q < Q; ++q) {
      const double dx = x - tx[q], dy = y - ty[q];
      row[q] = dx * dx + dy * dy;
    }
    double m = row[0];
#pragma omp simd reduction(min : m)
    for (index_t q = 1; q < Q; ++q) m = row[q] < m ? row[q] : m;
    index_t first = 0;
    while (row[first] != m) ++first;
    row_min[p] = m;
    row_arg[p] = static_cast<int32_t>(first);
    const int32_t pp = static_cast<int32_t>(p);
#pragma omp simd
    for (index_t q = 0; q < Q; ++q) {
      const bool lt = row[q] < col_min[q];  // strict: ties keep the lower source cell
      col_min[q] = lt ? row[q] : col_min[q];
      col_arg[q] = lt ? pp : col_arg[q];
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

// Sums of the kept cosines of one pair, read from its Gram block S [P, Q] (row stride ld) and inverse norms:
// direction i -> a (ms[p] = target cell matched to source cell p) and a -> i (mt[q] = source cell matched to q).
template <typename T>
double kept_cosines_st(const T* S, index_t ld, const int32_t* ms, index_t P, const T* invs, const T* invt) {
  double sum = 0;
  for (index_t p = 0; p < P; ++p)
    if (ms[p] >= 0) sum += double(S[p * ld + ms[p]] * invs[p] * invt[ms[p]]);
  return sum;
}

template <typename T>
double kept_cosines_ts(const T* S, index_t ld, const int32_t* mt, index_t Q, const T* invs, const T* invt) {
  double sum = 0;
  for (index_t q = 0; q < Q; ++q)
    if (mt[q] >= 0) sum += double(S[mt[q] * ld + q] * invs[mt[q]] * invt[q]);
  return sum;
}

// Scratch of one forward task, reused across its rows.
template <typename T>
struct ForwardScratch {
  std::vector<T> dist;              // [P, M*Q] feature distances of the slab
  std::vector<T> row_min, col_min;  // [M, P] nearest target distance per source cell / [M*Q] the reverse
  std::vector<int32_t> row_arg, col_arg;
  std::vector<double> loc, loc_row_min, loc_col_min;  // scratch [3Q], [P], [Q]
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
    w.loc.resize(3 * Q);
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
      int32_t* m = matches + (node * M + a) * W;  // sections: feat i->a [P], feat a->i [Q], loc i->a, loc a->i
      const T* Sa = S + a * Q;                    // the pair's [P, Q] block, row stride M*Q
      const T* invt_a = invt + a * Q;
      std::copy_n(w.row_arg.data() + a * P, P, m);
      keep_smallest(w.row_min.data() + a * P, P, s.feat_s, m, w.order);
      std::copy_n(w.col_arg.data() + a * Q, Q, m + P);
      keep_smallest(w.col_min.data() + a * Q, Q, s.feat_t, m + P, w.order);
      double l_st = kept_cosines_st(Sa, MQ, m, P, invs, invt_a) / double(s.feat_s);
      double l_ts = kept_cosines_ts(Sa, MQ, m + P, Q, invs, invt_a) / double(s.feat_t);
      if (s.with_positions) {  // the same with location neighbours and location distances
        int32_t* ml = m + P + Q;
        location_neighbours(pos_s + node * P * 2, pos_t + (g * M + a) * Q * 2, P, Q, w.loc_row_min.data(), ml,
                            w.loc_col_min.data(), ml + P, w.loc.data());
        keep_smallest(w.loc_row_min.data(), P, s.loc_s, ml, w.order);
        keep_smallest(w.loc_col_min.data(), Q, s.loc_t, ml + P, w.order);
        l_st = 0.5 * (l_st + kept_cosines_st(Sa, MQ, ml, P, invs, invt_a) / double(s.loc_s));
        l_ts = 0.5 * (l_ts + kept_cosines_ts(Sa, MQ, ml + P, Q, invs, invt_a) / double(s.loc_t));
      }
      out[node * M + a] = static_cast<T>(0.5 * (l_st + l_ts));
    }
  }
}

namespace {

// The selections of one graph as a sparse matrix in CSR form, one row per destination vector (a cell of the side
// being differentiated), entries (source cell, weight): dL/d(yhat_dest) = sum_entries weight * y_src (the weight
// includes grad[g,i,a], the selection weight and the source's inverse norm). Rows list their entries in the order
// (pair, term, cell), so the sums are deterministic.
template <typename T>
struct SelectionRows {
  std::vector<index_t> start;  // [rows + 1]
  std::vector<int32_t> src;
  std::vector<T> weight;
};

// Visits every selection of graph g with a nonzero upstream gradient as f(source cell, target cell, weight without
// inverse norms), cells numbered within the graph: source cell i*P + p, target cell a*Q + q.
template <typename T, typename F>
void for_each_selection(const T* grad, const int32_t* matches, const LocalAffinityShape& s, index_t g, F&& f) {
  const index_t P = s.P, Q = s.Q, W = s.match_width();
  const double w[4] = {s.feat_weight(s.feat_s), s.feat_weight(s.feat_t), s.with_positions ? s.loc_weight(s.loc_s) : 0.0,
                       s.with_positions ? s.loc_weight(s.loc_t) : 0.0};
  for (index_t i = 0; i < s.N; ++i)
    for (index_t a = 0; a < s.M; ++a) {
      const index_t pair = (g * s.N + i) * s.M + a;
      const double go = double(grad[pair]);
      if (go == 0) continue;  // exact: every contribution of this pair is 0 * finite
      const int32_t* m = matches + pair * W;
      for (int term = 0; term < (s.with_positions ? 2 : 1); ++term) {
        const int32_t* ms = m + term * (P + Q);  // i -> a: target cell matched to source cell p
        const int32_t* mt = ms + P;              // a -> i: source cell matched to target cell q
        for (index_t p = 0; p < P; ++p)
          if (ms[p] >= 0) f(i * P + p, a * Q + ms[p], go * w[2 * term]);
        for (index_t q = 0; q < Q; ++q)
          if (mt[q] >= 0) f(i * P + mt[q], a * Q + q, go * w[2 * term + 1]);
      }
    }
}

// CSR of graph g's selections with destination rows on the source side (to_source) or the target side.
template <typename T>
void build_selection_rows(const T* grad, const int32_t* matches, const T* inv_src, const LocalAffinityShape& s,
                          index_t g, bool to_source, SelectionRows<T>& rows) {
  const index_t n_rows = to_source ? s.N * s.P : s.M * s.Q;
  rows.start.assign(n_rows + 1, 0);
  for_each_selection(grad, matches, s, g,
                     [&](index_t cs, index_t ct, double) { ++rows.start[(to_source ? cs : ct) + 1]; });
  std::partial_sum(rows.start.begin(), rows.start.end(), rows.start.begin());
  rows.src.resize(rows.start[n_rows]);
  rows.weight.resize(rows.start[n_rows]);
  std::vector<index_t> next(rows.start.begin(), rows.start.end() - 1);
  for_each_selection(grad, matches, s, g, [&](index_t cs, index_t ct, double w) {
    const index_t dst = to_source ? cs : ct, src = to_source ? ct : cs;
    const index_t e = next[dst]++;
    rows.src[e] = static_cast<int32_t>(src);
    rows.weight[e] = static_cast<T>(w * double(inv_src[src]));
  });
}

// dst[0..R*L) = sum_e weight[e] * y[src[e] * ld + 0..R*L): R accumulators of one 32-byte vector (L lanes) each,
// kept in registers (GCC/Clang vector extensions, so each CPU clone gets its own instructions).
template <typename T>
struct Vec32;  // one 32-byte SIMD vector of T (the attribute needs a non-dependent type)
template <>
struct Vec32<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vec32<double> {
  typedef double type __attribute__((vector_size(32)));
};

template <typename T, int R>
LVMMED_CPU_CLONES void gather_rows_fixed(const T* y, index_t ld, const int32_t* src, const T* weight, index_t n,
                                         T* dst) {
  using V = typename Vec32<T>::type;
  constexpr int L = 32 / sizeof(T);
  V acc[R] = {};
  for (index_t e = 0; e < n; ++e) {
    const T* row = y + src[e] * ld;
    const V w = V{} + weight[e];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      V x;
      std::memcpy(&x, row + r * L, sizeof(V));
      acc[r] += w * x;
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) std::memcpy(dst + r * L, &acc[r], sizeof(V));
}

// The same for a chunk of any width (the tail of D), one output at a time.
template <typename T>
void gather_rows_tail(const T* y, index_t ld, const int32_t* src, const T* weight, index_t n, index_t width, T* dst) {
  for (index_t c = 0; c < width; ++c) {
    T acc = 0;
    for (index_t e = 0; e < n; ++e) acc += weight[e] * y[src[e] * ld + c];
    dst[c] = acc;
  }
}

// One side of graph g: grad [rows, D] of the side's cells, from the other side's vectors y_src [cells, D].
template <typename T>
void backward_side(const T* grad, const T* y_dst, const T* y_src, const T* inv_dst, const T* inv_src,
                   const int32_t* matches, T* grad_dst, const LocalAffinityShape& s, index_t g, bool to_source) {
  constexpr int R = 8, C = R * 32 / static_cast<int>(sizeof(T));  // 8 AVX2 registers: 64 floats / 32 doubles
  SelectionRows<T> rows;
  build_selection_rows(grad, matches, inv_src, s, g, to_source, rows);
  const index_t n_rows = to_source ? s.N * s.P : s.M * s.Q, D = s.D;
  // D-chunks outermost, over source rows packed chunk-major [D/C][cells][C] in one sequential pass: a chunk's panel
  // stays in cache across destination rows (unpacked rows D apart alias the same cache sets when D is a power of 2).
  const index_t n_src = to_source ? s.M * s.Q : s.N * s.P, n_chunks = (D + C - 1) / C;
  std::vector<T> panels(n_chunks * n_src * C);
  for (index_t r = 0; r < n_src; ++r)
    for (index_t k = 0; k < n_chunks; ++k)
      std::copy_n(y_src + r * D + k * C, std::min<index_t>(C, D - k * C), panels.data() + (k * n_src + r) * C);
  for (index_t k = 0; k < n_chunks; ++k) {
    const index_t c0 = k * C, width = std::min<index_t>(C, D - c0);
    const T* panel = panels.data() + k * n_src * C;
    for (index_t r = 0; r < n_rows; ++r) {
      const index_t b = rows.start[r], n = rows.start[r + 1] - b;
      T* dst = grad_dst + r * D + c0;
      if (width == C)
        gather_rows_fixed<T, R>(panel, C, rows.src.data() + b, rows.weight.data() + b, n, dst);
      else
        gather_rows_tail(panel, C, rows.src.data() + b, rows.weight.data() + b, n, width, dst);
    }
  }
  project_rows(grad_dst, y_dst, inv_dst, D, grad_dst, 0, n_rows);
}

}  // namespace

template <typename T>
void local_affinity_backward(const T* grad, const T* ys, const T* yt, const T* inv_s, const T* inv_t,
                             const int32_t* matches, T* grad_ys, T* grad_yt, LocalAffinityShape s, index_t t_begin,
                             index_t t_end) {
  const index_t NP = s.N * s.P, MQ = s.M * s.Q, D = s.D;
  for (index_t t = t_begin; t < t_end; ++t) {
    const index_t g = t / 2;
    if (t % 2 == 0)
      backward_side(grad, ys + g * NP * D, yt + g * MQ * D, inv_s + g * NP, inv_t + g * MQ, matches,
                    grad_ys + g * NP * D, s, g, true);
    else
      backward_side(grad, yt + g * MQ * D, ys + g * NP * D, inv_t + g * MQ, inv_s + g * NP, matches,
                    grad_yt + g * MQ * D, s, g, false);
  }
}

#define LVMMED_INSTANTIATE(T)                                                                                        \
  template void local_affinity_forward<T>(const T*, const T*, const T*, const T*, const T*, const double*,           \
                                          const double*, T*, int32_t*, LocalAffinityShape, GramChunk, index_t,       \
                                          index_t);                                                                  \
  template void local_affinity_backward<T>(const T*, const T*, const T*, const T*, const T*, const int32_t*, T*, T*, \
                                           LocalAffinityShape, index_t, index_t);
LVMMED_INSTANTIATE(float)
LVMMED_INSTANTIATE(double)
#undef LVMMED_INSTANTIATE

}  // namespace lvmmed::cpu
