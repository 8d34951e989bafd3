// The per-graph QAP engine, run by a team (team.h): shared by the CPU kernels (a team of one thread per graph) and
// the CUDA kernels (one thread block per graph). One graph: unary [N,M], quad [Es,Et] over edge lists es [Es,2],
// et [Et,2], dense Koopmans-Beckmann A [N,N], B [M,M]; maximise
//   f(X) = <U, X> + sum_{p=(i,j), q=(a,b)} quad[p,q] X[i,a] X[j,b] + sum A[i,j] B[a,b] X[i,a] X[j,b].
//
// The search keeps an assignment pi (row -> column, -1 unmatched), its inverse, and the gradient
// L = U + (K + K^T) x at the current assignment. Every move changes at most two rows, and its exact gain is
//   <L, D> + D^T K D      (D = the change of X),
// where D^T K D only involves edges between the moved rows and the diagonal/cross terms of A, B: O(deg) per move.
// After a move, L is updated through the edges incident to the moved rows (and rank-1 updates of the dense term).
// Self-loop edges: a loop pair ((i,i), (a,a)) is a unary term and is folded into U; a loop paired with a non-loop
// edge never contributes to a valid assignment, so loops are left out of the edge lists of the search.
#pragma once
#include <cmath>

#include "lvmmed/detail/lap_engine.h"
#include "lvmmed/qap.h"

namespace lvmmed::detail {

template <typename T>
struct QAPGraph {
  const T* unary;          // [N,M]
  const T* quad;           // [Es,Et] or null
  const std::int64_t* es;  // [Es,2] or null
  const std::int64_t* et;  // [Et,2] or null
  const T* A;              // [N,N] or null
  const T* B;              // [M,M] or null
  int N, M, Es, Et;
};

// The view of graph g of a batch (null edge/dense pointers when the batch has no such term).
template <typename T>
LVMMED_HD_FN QAPGraph<T> graph_of(const QAPInputs<T>& in, const QAPShape& s, index_t g) {
  QAPGraph<T> gr;
  gr.N = static_cast<int>(s.N);
  gr.M = static_cast<int>(s.M);
  gr.Es = s.has_edges ? static_cast<int>(s.Es) : 0;
  gr.Et = s.has_edges ? static_cast<int>(s.Et) : 0;
  gr.unary = in.unary + g * s.N * s.M;
  gr.quad = s.has_edges ? in.quad + g * s.Es * s.Et : nullptr;
  gr.es = s.has_edges ? in.edges_s + g * s.Es * 2 : nullptr;
  gr.et = s.has_edges ? in.edges_t + g * s.Et * 2 : nullptr;
  gr.A = s.has_kb ? in.A + g * s.N * s.N : nullptr;
  gr.B = s.has_kb ? in.B + g * s.M * s.M : nullptr;
  return gr;
}

// Compressed adjacency of one side: the edges leaving (out) and entering (in) every node, in edge order.
struct Adjacency {
  int* out_off;    // [n+1]
  int* out_e;      // [E]
  int* in_off;     // [n+1]
  int* in_e;       // [E]
  int* src;        // [E] endpoints (int32 copies of the int64 edge list)
  int* dst;        // [E]
  bool loops;      // self loops are in the lists
  bool has_loops;  // the edge list has self loops
};

// Byte layout of the workspace of one team. Doubles first, then ints; every block 8-byte aligned.
struct QAPLayout {
  index_t U, L, Lb, X, S, Z, rs, cs, lapd, Ad, At, P, Pt, D, TT, TM, dv, popf;  // double offsets (in doubles)
  index_t pi, inv, best, keep, rows, tabu, adj_s, adj_t, pairs, lapi, pop;      // int offsets (after the doubles)
  index_t n_doubles, n_ints;
  LVMMED_HD_FN index_t bytes() const { return 8 * n_doubles + 4 * n_ints + 8; }
};

LVMMED_HD_FN index_t round2(index_t n) {
  return (n + 1) / 2 * 2;
}

// Members of the population of the dense iterated tabu search, plus one slot (SearchPlan::population, below this)
// for the best of the current run on sparse problems.
constexpr int kMaxPopulation = 16;

// need_search: the local-search state (L, pi, tabu, target pair table); need_ga: the softassign buffers;
// need_dense: the swap-gain state of the dense iterated tabu search (N = M, see "Dense swap gains" below).
LVMMED_HD_FN QAPLayout qap_layout(index_t N, index_t M, index_t Es, index_t Et, bool need_search, bool need_ga,
                                  bool need_dense = false) {
  QAPLayout l{};
  index_t d = 0;
  const index_t NM = N * M;
  const index_t big = vmax(N, M);
  l.U = d;
  d += NM;
  l.L = d;
  d += need_search ? NM : 0;
  l.Lb = d;
  d += need_search ? NM : 0;
  l.X = d;
  d += need_ga ? (N + 1) * (M + 1) : 0;
  l.S = d;
  d += NM;
  l.Z = d;
  d += need_ga ? NM : 0;
  l.rs = d;
  d += need_ga ? N + 1 : 0;
  l.cs = d;
  d += need_ga ? M + 1 : 0;
  l.lapd = d;
  d += lap_doubles(big, M + N);
  const index_t NN = need_dense ? N * N : 0;
  l.Ad = d;
  d += NN;
  l.At = d;
  d += NN;
  l.P = d;
  d += NN;
  l.Pt = d;
  d += NN;
  l.D = d;
  d += NN;
  l.TT = d;
  d += NN;
  l.TM = d;
  d += NN;
  l.dv = d;
  d += need_dense ? 8 * N : 0;
  l.popf = d;
  d += need_dense ? kMaxPopulation : 0;
  l.n_doubles = d;
  index_t k = 0;
  l.pi = k;
  k += round2(N);
  l.inv = k;
  k += round2(M);
  l.best = k;
  k += round2(N);
  l.keep = k;
  k += round2(N);
  l.rows = k;
  k += round2(big);
  l.tabu = k;
  k += need_search ? round2(N * (M + 1)) : 0;
  l.adj_s = k;
  k += round2(2 * (N + 1) + 4 * Es);
  l.adj_t = k;
  k += round2(2 * (M + 1) + 4 * Et);
  l.pairs = k;
  k += (need_search && Et > 0) ? round2(M * M + Et) : 0;
  l.lapi = k;
  k += round2(lap_ints(big, M + N));
  l.pop = k;
  k += need_dense ? round2(kMaxPopulation * N) : 0;
  l.n_ints = k;
  return l;
}

LVMMED_TEAM_FN Adjacency adjacency_at(int* base, index_t n, index_t E) {
  Adjacency a;
  a.out_off = base;
  a.out_e = a.out_off + (n + 1);
  a.in_off = a.out_e + E;
  a.in_e = a.in_off + (n + 1);
  a.src = a.in_e + E;
  a.dst = a.src + E;
  a.loops = false;
  a.has_loops = false;
  return a;
}

// CSR of the edges by key(e) (a node in [0, n), or -1 to leave the edge out), edges of one node in edge order.
template <class Team, class Key>
LVMMED_TEAM_FN void build_csr(const Team& team, int n, int E, const Key& key, int* off, int* list) {
  if constexpr (Team::kSerial) {
    for (int v = 0; v <= n; ++v) off[v] = 0;
    for (int e = 0; e < E; ++e) {
      const int k = key(e);
      if (k >= 0) ++off[k + 1];
    }
    for (int v = 0; v < n; ++v) off[v + 1] += off[v];
    for (int e = 0; e < E; ++e) {  // off[k] runs ahead while filling, then is shifted back
      const int k = key(e);
      if (k >= 0) list[off[k]++] = e;
    }
    for (int v = n; v > 0; --v) off[v] = off[v - 1];
    off[0] = 0;
  } else {
    team.range(n, [&](index_t v) {
      int c = 0;
      for (int e = 0; e < E; ++e) c += key(e) == v;
      off[v + 1] = c;
    });
    team.sync();
    if (team.leader()) {
      off[0] = 0;
      for (int v = 0; v < n; ++v) off[v + 1] += off[v];
    }
    team.sync();
    team.range(n, [&](index_t v) {
      int w = off[v];
      for (int e = 0; e < E; ++e)
        if (key(e) == v) list[w++] = e;
    });
  }
  team.sync();
}

// Endpoints and out/in adjacency of an edge list [E,2] over n nodes; with_loops=false leaves self loops out.
template <class Team>
LVMMED_TEAM_FN void build_adjacency(const Team& team, const std::int64_t* edges, int n, int E, bool with_loops,
                                    Adjacency& a) {
  team.range(E, [&](index_t e) {
    a.src[e] = static_cast<int>(edges[2 * e]);
    a.dst[e] = static_cast<int>(edges[2 * e + 1]);
  });
  team.sync();
  a.loops = with_loops;
  a.has_loops = false;
  for (int e = 0; e < E; ++e) a.has_loops |= a.src[e] == a.dst[e];  // replicated: every thread reads all
  const auto out_key = [&](int e) { return (with_loops || a.src[e] != a.dst[e]) ? a.src[e] : -1; };
  const auto in_key = [&](int e) { return (with_loops || a.src[e] != a.dst[e]) ? a.dst[e] : -1; };
  build_csr(team, n, E, out_key, a.out_off, a.out_e);
  build_csr(team, n, E, in_key, a.in_off, a.in_e);
}

// ------------------------------------------------------------------------------------------------------------
// Continuous edge products (any real X, loops included): the ops qap_objective / its gradient / pygmtools-style
// Lawler products. X, out are [N, ld] row-major.

// out[i,a] (+)= sum_{p in out(i)} sum_q quad[p,q] X[dst p, dst q] at column src q   (K_e x), and/or
//              sum_{p in in(i)} sum_q quad[p,q] X[src p, src q] at column dst q     (K_e^T x). Row-owned.
template <class Team, typename T, typename XT, typename OT>
LVMMED_TEAM_FN void edge_product(const Team& team, const QAPGraph<T>& g, const Adjacency& as, const Adjacency& at,
                                 const XT* X, index_t ldx, OT* out, index_t ldo, bool forward, bool transpose) {
  if constexpr (Team::kSerial) {
    // Gather table tab[j][q] = X[j, column of q], then per row a dense multiply-add over q and one scatter.
    const int N = g.N, Et = g.Et;
    T* tab = team.template scratch<T>(0, static_cast<index_t>(N) * Et);  // in T: twice the SIMD width for float
    T* acc = team.template scratch<T>(1, Et);
    for (int dir = 0; dir < 2; ++dir) {
      if ((dir == 0 && !forward) || (dir == 1 && !transpose)) continue;
      const int* xcol = dir == 0 ? at.dst : at.src;         // column of X read through q
      const int* ooff = dir == 0 ? at.out_off : at.in_off;  // the q written to column a of out
      const int* olst = dir == 0 ? at.out_e : at.in_e;
      const int* off = dir == 0 ? as.out_off : as.in_off;
      const int* lst = dir == 0 ? as.out_e : as.in_e;
      const int* other = dir == 0 ? as.dst : as.src;
      bool contiguous = ooff[g.M] == Et;  // the CSR order of this direction is the edge order
      for (int q = 0; q < Et && contiguous; ++q) contiguous = olst[q] == q;
      for (int j = 0; j < N; ++j)
        for (int q = 0; q < Et; ++q) tab[static_cast<index_t>(j) * Et + q] = static_cast<T>(X[j * ldx + xcol[q]]);
      for (int i = 0; i < N; ++i) {
        if (off[i] == off[i + 1]) continue;
        for (int q = 0; q < Et; ++q) acc[q] = 0;
        for (int k = off[i]; k < off[i + 1]; ++k) {
          const int p = lst[k];
          team.multiply_add(acc, g.quad + static_cast<index_t>(p) * Et, tab + static_cast<index_t>(other[p]) * Et, Et);
        }
        OT* o = out + i * ldo;
        if (contiguous) {  // the q of column a are the range [ooff[a], ooff[a+1]): short independent sums
          for (int a = 0; a < g.M; ++a) {
            double sum = 0;
            for (int q = ooff[a]; q < ooff[a + 1]; ++q) sum += static_cast<double>(acc[q]);
            o[a] += static_cast<OT>(sum);
          }
        } else {  // scatter in edge order (consecutive edges rarely share this endpoint: no store chains)
          const int* ocol = dir == 0 ? at.src : at.dst;
          if (at.loops || !at.has_loops) {
            for (int q = 0; q < Et; ++q) o[ocol[q]] += static_cast<OT>(acc[q]);
          } else {
            for (int q = 0; q < Et; ++q)
              if (at.src[q] != at.dst[q]) o[ocol[q]] += static_cast<OT>(acc[q]);
          }
        }
      }
    }
    return;
  }
  team.range(g.N, [&](index_t i) {
    OT* o = out + i * ldo;
    if (forward) {
      for (int k = as.out_off[i]; k < as.out_off[i + 1]; ++k) {
        const int p = as.out_e[k];
        const XT* xj = X + static_cast<index_t>(as.dst[p]) * ldx;
        const T* qp = g.quad + static_cast<index_t>(p) * g.Et;
        for (int q = 0; q < g.Et; ++q)
          if (at.loops || at.src[q] != at.dst[q])
            o[at.src[q]] += static_cast<OT>(qp[q]) * static_cast<OT>(xj[at.dst[q]]);
      }
    }
    if (transpose) {
      for (int k = as.in_off[i]; k < as.in_off[i + 1]; ++k) {
        const int p = as.in_e[k];
        const XT* xj = X + static_cast<index_t>(as.src[p]) * ldx;
        const T* qp = g.quad + static_cast<index_t>(p) * g.Et;
        for (int q = 0; q < g.Et; ++q)
          if (at.loops || at.src[q] != at.dst[q])
            o[at.dst[q]] += static_cast<OT>(qp[q]) * static_cast<OT>(xj[at.src[q]]);
      }
    }
  });
  team.sync();
}

// ------------------------------------------------------------------------------------------------------------
// The search engine.

template <typename T>
struct QAPSearch {
  QAPGraph<T> g;
  bool partial, has_edges, has_kb;
  double eps;                                // gains <= eps are not improvements
  double *U, *L, *Lb, *X, *S, *Z, *rs, *cs;  // Lb: L at the best assignment of a tabu search
  int *pi, *inv, *best, *keep, *rows, *tabu;
  int* tfirst;  // [M,M] first target edge q = (a,b) of every pair (a,b), -1 if none (loops left out)
  int* tnext;   // [Et] next target edge with the same pair, -1 at the end
  Adjacency as, at;
  LapWork lap;
  // Dense swap gains (N = M): A' and A'^T, P = B'[pi, pi] and P^T, gains D, 8 vectors of N (dense_swap);
  // TT[u,v] = the move until which row u may not take the column of row v, TM[u,v] = min(TT[u,v], TT[v,u]) (u < v:
  // the swap is tabu until then; doubles, so that the pick scans doubles only). sym: A' and B' symmetric.
  double *Ad, *At, *P, *Pt, *D, *dv;
  double *TT, *TM;
  bool sym, has_unary;
  int* pop;      // [kMaxPopulation, N] the population of the dense iterated tabu search
  double* popf;  // [kMaxPopulation] their objectives
};

template <typename T>
LVMMED_TEAM_FN QAPSearch<T> qap_search_at(const QAPGraph<T>& g, void* ws, bool partial, bool need_search, bool need_ga,
                                          bool need_dense = false) {
  const QAPLayout l = qap_layout(g.N, g.M, g.Es, g.Et, need_search, need_ga, need_dense);
  double* d = static_cast<double*>(ws);
  int* k = reinterpret_cast<int*>(d + l.n_doubles);
  QAPSearch<T> c;
  c.g = g;
  c.partial = partial;
  c.has_edges = g.quad != nullptr && g.Es > 0 && g.Et > 0;
  c.has_kb = g.A != nullptr;
  c.eps = 0;
  c.U = d + l.U;
  c.L = d + l.L;
  c.Lb = d + l.Lb;
  c.X = d + l.X;
  c.S = d + l.S;
  c.Z = d + l.Z;
  c.rs = d + l.rs;
  c.cs = d + l.cs;
  c.pi = k + l.pi;
  c.inv = k + l.inv;
  c.best = k + l.best;
  c.keep = k + l.keep;
  c.rows = k + l.rows;
  c.tabu = k + l.tabu;
  c.as = adjacency_at(k + l.adj_s, g.N, g.Es);
  c.at = adjacency_at(k + l.adj_t, g.M, g.Et);
  c.tfirst = k + l.pairs;
  c.tnext = c.tfirst + static_cast<index_t>(g.M) * g.M;
  c.lap = lap_work_at(d + l.lapd, k + l.lapi, vmax(g.N, g.M), g.M + g.N);
  c.Ad = d + l.Ad;
  c.At = d + l.At;
  c.P = d + l.P;
  c.Pt = d + l.Pt;
  c.D = d + l.D;
  c.dv = d + l.dv;
  c.TT = d + l.TT;
  c.TM = d + l.TM;
  c.sym = c.has_unary = false;
  c.pop = k + l.pop;
  c.popf = d + l.popf;
  return c;
}

template <typename T>
LVMMED_TEAM_FN double qv(const T* p, index_t k) {
  return static_cast<double>(p[k]);
}

// B[a,b] with index -1 meaning "unmatched" (zero row/column).
template <typename T>
LVMMED_TEAM_FN double Bv(const QAPSearch<T>& c, int a, int b) {
  return (a < 0 || b < 0) ? 0.0 : qv(c.g.B, static_cast<index_t>(a) * c.g.M + b);
}
template <typename T>
LVMMED_TEAM_FN double Av(const QAPSearch<T>& c, int i, int j) {
  return qv(c.g.A, static_cast<index_t>(i) * c.g.N + j);
}
template <typename T>
LVMMED_TEAM_FN double Lv(const QAPSearch<T>& c, int i, int a) {
  return a < 0 ? 0.0 : c.L[static_cast<index_t>(i) * c.g.M + a];
}

// W_p(a, b) = sum of quad[p, q] over the target edges q = (a, b), a != b (0 if a or b is -1).
template <typename T>
LVMMED_TEAM_FN double edge_weight(const QAPSearch<T>& c, int p, int a, int b) {
  if (a < 0 || b < 0) return 0.0;
  double w = 0;
  const T* qp = c.g.quad + static_cast<index_t>(p) * c.g.Et;
  for (int q = c.tfirst[static_cast<index_t>(a) * c.g.M + b]; q >= 0; q = c.tnext[q]) w += qv(qp, q);
  return w;
}

// Edge part of the swap gain of rows r, s (both matched): sum over the edges p between them of
// W_p(pi s, pi r) + W_p(pi r, pi s).
template <typename T>
LVMMED_TEAM_FN double swap_edge_gain(const QAPSearch<T>& c, int r, int s) {
  const int orr = c.pi[r], os = c.pi[s];
  double d = 0;
  for (int k = c.as.out_off[r]; k < c.as.out_off[r + 1]; ++k) {
    const int p = c.as.out_e[k];
    if (c.as.dst[p] == s) d += edge_weight(c, p, os, orr) + edge_weight(c, p, orr, os);
  }
  for (int k = c.as.out_off[s]; k < c.as.out_off[s + 1]; ++k) {
    const int p = c.as.out_e[k];
    if (c.as.dst[p] == r) d += edge_weight(c, p, os, orr) + edge_weight(c, p, orr, os);
  }
  return d;
}

// max_k |x[k]| over the team (replicated result).
template <class Team, typename V>
LVMMED_TEAM_FN double max_abs(const Team& team, const V* x, index_t n) {
  if constexpr (Team::kSerial) {
    return team.max_abs(x, n);
  } else {
    Best m = no_best();
    team.range(n, [&](index_t k) {
      const double v = vabs(static_cast<double>(x[k]));
      if (v > m.value) m.value = v;
    });
    m.code = 0;
    return vmax(team.argmax(m).value, 0.0);
  }
}

// Setup of one graph: edge endpoints and adjacency (no loops), U = unary + folded loop pairs, eps from the scale.
template <class Team, typename T>
LVMMED_TEAM_FN void search_setup(const Team& team, QAPSearch<T>& c) {
  const QAPGraph<T>& g = c.g;
  if (c.has_edges) {
    build_adjacency(team, g.es, g.N, g.Es, false, c.as);
    build_adjacency(team, g.et, g.M, g.Et, false, c.at);
    team.range(static_cast<index_t>(g.M) * g.M, [&](index_t k) { c.tfirst[k] = -1; });
    team.sync();
    if (team.leader()) {
      for (int q = g.Et - 1; q >= 0; --q) {
        const int a = c.at.src[q], b = c.at.dst[q];
        if (a == b) continue;
        const index_t key = static_cast<index_t>(a) * g.M + b;
        c.tnext[q] = c.tfirst[key];
        c.tfirst[key] = q;
      }
    }
    team.sync();
  } else {
    team.range(g.N + 1, [&](index_t v) { c.as.out_off[v] = c.as.in_off[v] = 0; });
    team.range(g.M + 1, [&](index_t v) { c.at.out_off[v] = c.at.in_off[v] = 0; });
  }
  team.range(static_cast<index_t>(g.N) * g.M, [&](index_t k) { c.U[k] = qv(g.unary, k); });
  team.sync();
  if (c.has_edges && team.leader()) {
    for (int p = 0; p < g.Es; ++p) {
      if (c.as.src[p] != c.as.dst[p]) continue;
      for (int q = 0; q < g.Et; ++q)
        if (c.at.src[q] == c.at.dst[q])
          c.U[static_cast<index_t>(c.as.src[p]) * g.M + c.at.src[q]] += qv(g.quad, static_cast<index_t>(p) * g.Et + q);
    }
  }
  team.sync();
  // Scale of the objective: N max|U| + Es max|quad| + N^2 max|A| max|B|; gains below 1e-11 of it are noise.
  const double mu = max_abs(team, c.U, static_cast<index_t>(g.N) * g.M);
  const double mq = c.has_edges ? max_abs(team, g.quad, static_cast<index_t>(g.Es) * g.Et) : 0.0;
  const double ma = c.has_kb ? max_abs(team, g.A, static_cast<index_t>(g.N) * g.N) : 0.0;
  const double mb = c.has_kb ? max_abs(team, g.B, static_cast<index_t>(g.M) * g.M) : 0.0;
  c.eps = 1e-11 * (1.0 + g.N * mu + g.Es * mq + static_cast<double>(g.N) * g.N * ma * mb);
}

// L = U + (K + K^T) x for the assignment c.pi (row-owned); returns f(pi) = (<U,x> + <L,x>) / 2 (replicated).
template <class Team, typename T>
LVMMED_TEAM_FN double linearise(const Team& team, QAPSearch<T>& c) {
  const QAPGraph<T>& g = c.g;
  const int M = g.M;
  team.range(g.N, [&](index_t i) {
    double* Li = c.L + i * M;
    for (int a = 0; a < M; ++a) Li[a] = c.U[i * M + a];
    if (c.has_edges) {
      for (int k = c.as.out_off[i]; k < c.as.out_off[i + 1]; ++k) {  // p = (i, j): sum_q quad[p,q] X[j, dst q]
        const int p = c.as.out_e[k];
        const int b = c.pi[c.as.dst[p]];
        if (b < 0) continue;
        const T* qp = g.quad + static_cast<index_t>(p) * g.Et;
        for (int kk = c.at.in_off[b]; kk < c.at.in_off[b + 1]; ++kk) {
          const int q = c.at.in_e[kk];
          Li[c.at.src[q]] += qv(qp, q);
        }
      }
      for (int k = c.as.in_off[i]; k < c.as.in_off[i + 1]; ++k) {  // p = (j, i)
        const int p = c.as.in_e[k];
        const int a = c.pi[c.as.src[p]];
        if (a < 0) continue;
        const T* qp = g.quad + static_cast<index_t>(p) * g.Et;
        for (int kk = c.at.out_off[a]; kk < c.at.out_off[a + 1]; ++kk) {
          const int q = c.at.out_e[kk];
          Li[c.at.dst[q]] += qv(qp, q);
        }
      }
    }
    if (c.has_kb && !Team::kSerial) {
      for (int j = 0; j < g.N; ++j) {
        const int b = c.pi[j];
        if (b < 0) continue;
        const double aij = Av(c, static_cast<int>(i), j), aji = Av(c, j, static_cast<int>(i));
        for (int a = 0; a < M; ++a) Li[a] += aij * Bv(c, a, b) + aji * Bv(c, b, a);
      }
    }
  });
  if constexpr (Team::kSerial) {
    if (c.has_kb) {  // L += A X B^T + A^T X B as rank-1 updates: column and row pi(j) of B, row by row (axpy)
      double* colb = team.template scratch<double>(2, 2 * static_cast<index_t>(M));
      double* rowb = colb + M;
      for (int j = 0; j < g.N; ++j) {
        const int b = c.pi[j];
        if (b < 0) continue;
        for (int a = 0; a < M; ++a) {
          colb[a] = Bv(c, a, b);
          rowb[a] = Bv(c, b, a);
        }
        for (int i = 0; i < g.N; ++i) {
          double* Li = c.L + static_cast<index_t>(i) * M;
          const double aij = Av(c, i, j), aji = Av(c, j, i);
          if (aij != 0.0) team.axpy(aij, colb, Li, M);
          if (aji != 0.0) team.axpy(aji, rowb, Li, M);
        }
      }
    }
  }
  team.sync();
  double f = 0;
  for (int i = 0; i < g.N; ++i) {
    const int a = c.pi[i];
    if (a >= 0) f += c.U[static_cast<index_t>(i) * M + a] + c.L[static_cast<index_t>(i) * M + a];
  }
  return 0.5 * f;
}

// Gain of swapping the columns of rows r and s (either may be unmatched, not both).
template <typename T>
LVMMED_TEAM_FN double swap_gain(const QAPSearch<T>& c, int r, int s) {
  const int orr = c.pi[r], os = c.pi[s];
  double d = Lv(c, r, os) - Lv(c, r, orr) + Lv(c, s, orr) - Lv(c, s, os);
  if (c.has_kb) {
    const double beta = Bv(c, os, os) - Bv(c, os, orr) - Bv(c, orr, os) + Bv(c, orr, orr);
    d += (Av(c, r, r) + Av(c, s, s) - Av(c, r, s) - Av(c, s, r)) * beta;
  }
  if (c.has_edges && orr >= 0 && os >= 0) d += swap_edge_gain(c, r, s);
  return d;
}

// Gain of moving row r to column col (a free column, or -1: unmatched).
template <typename T>
LVMMED_TEAM_FN double move_gain(const QAPSearch<T>& c, int r, int col) {
  const int o = c.pi[r];
  double d = Lv(c, r, col) - Lv(c, r, o);
  if (c.has_kb) d += Av(c, r, r) * (Bv(c, col, col) - Bv(c, col, o) - Bv(c, o, col) + Bv(c, o, o));
  return d;
}

// L update of row i for source row j moving from column o to column n (edges between i and j, dense term).
template <typename T>
LVMMED_TEAM_FN void update_row(const QAPSearch<T>& c, int i, int j, int o, int n) {
  const QAPGraph<T>& g = c.g;
  double* Li = c.L + static_cast<index_t>(i) * g.M;
  if (c.has_edges) {
    for (int k = c.as.out_off[i]; k < c.as.out_off[i + 1]; ++k) {  // p = (i, j): L[i, src q] for q entering o / n
      const int p = c.as.out_e[k];
      if (c.as.dst[p] != j) continue;
      const T* qp = g.quad + static_cast<index_t>(p) * g.Et;
      if (o >= 0)
        for (int kk = c.at.in_off[o]; kk < c.at.in_off[o + 1]; ++kk)
          Li[c.at.src[c.at.in_e[kk]]] -= qv(qp, c.at.in_e[kk]);
      if (n >= 0)
        for (int kk = c.at.in_off[n]; kk < c.at.in_off[n + 1]; ++kk)
          Li[c.at.src[c.at.in_e[kk]]] += qv(qp, c.at.in_e[kk]);
    }
    for (int k = c.as.in_off[i]; k < c.as.in_off[i + 1]; ++k) {  // p = (j, i): L[i, dst q] for q leaving o / n
      const int p = c.as.in_e[k];
      if (c.as.src[p] != j) continue;
      const T* qp = g.quad + static_cast<index_t>(p) * g.Et;
      if (o >= 0)
        for (int kk = c.at.out_off[o]; kk < c.at.out_off[o + 1]; ++kk)
          Li[c.at.dst[c.at.out_e[kk]]] -= qv(qp, c.at.out_e[kk]);
      if (n >= 0)
        for (int kk = c.at.out_off[n]; kk < c.at.out_off[n + 1]; ++kk)
          Li[c.at.dst[c.at.out_e[kk]]] += qv(qp, c.at.out_e[kk]);
    }
  }
  if (c.has_kb) {
    const double aij = Av(c, i, j), aji = Av(c, j, i);
    if (aij != 0.0 || aji != 0.0)
      for (int a = 0; a < g.M; ++a) Li[a] += aij * (Bv(c, a, n) - Bv(c, a, o)) + aji * (Bv(c, n, a) - Bv(c, o, a));
  }
}

// Applies a move: row r to column nr, and (s >= 0) row s to column ns; updates L, pi, inv.
// Serial L update for row j moving from column o to n, through the edges of j (edge-owned); kb: 2M doubles of
// scratch for the dense term.
template <typename T>
LVMMED_TEAM_FN void update_from_row(const QAPSearch<T>& c, int j, int o, int n, double* kb) {
  const QAPGraph<T>& g = c.g;
  if (c.has_edges) {
    for (int k = c.as.in_off[j]; k < c.as.in_off[j + 1]; ++k) {  // p = (i, j)
      const int p = c.as.in_e[k];
      double* Li = c.L + static_cast<index_t>(c.as.src[p]) * g.M;
      const T* qp = g.quad + static_cast<index_t>(p) * g.Et;
      if (o >= 0)
        for (int kk = c.at.in_off[o]; kk < c.at.in_off[o + 1]; ++kk)
          Li[c.at.src[c.at.in_e[kk]]] -= qv(qp, c.at.in_e[kk]);
      if (n >= 0)
        for (int kk = c.at.in_off[n]; kk < c.at.in_off[n + 1]; ++kk)
          Li[c.at.src[c.at.in_e[kk]]] += qv(qp, c.at.in_e[kk]);
    }
    for (int k = c.as.out_off[j]; k < c.as.out_off[j + 1]; ++k) {  // p = (j, i)
      const int p = c.as.out_e[k];
      double* Li = c.L + static_cast<index_t>(c.as.dst[p]) * g.M;
      const T* qp = g.quad + static_cast<index_t>(p) * g.Et;
      if (o >= 0)
        for (int kk = c.at.out_off[o]; kk < c.at.out_off[o + 1]; ++kk)
          Li[c.at.dst[c.at.out_e[kk]]] -= qv(qp, c.at.out_e[kk]);
      if (n >= 0)
        for (int kk = c.at.out_off[n]; kk < c.at.out_off[n + 1]; ++kk)
          Li[c.at.dst[c.at.out_e[kk]]] += qv(qp, c.at.out_e[kk]);
    }
  }
  if (c.has_kb) {  // rank-1 updates: L[i,:] += A[i,j] (B[:,n] - B[:,o]) + A[j,i] (B[n,:] - B[o,:])
    for (int a = 0; a < g.M; ++a) {
      kb[a] = Bv(c, a, n) - Bv(c, a, o);
      kb[g.M + a] = Bv(c, n, a) - Bv(c, o, a);
    }
    for (int i = 0; i < g.N; ++i) {
      const double aij = Av(c, i, j), aji = Av(c, j, i);
      if (aij == 0.0 && aji == 0.0) continue;
      double* Li = c.L + static_cast<index_t>(i) * g.M;
      for (int a = 0; a < g.M; ++a) Li[a] += aij * kb[a] + aji * kb[g.M + a];
    }
  }
}

template <class Team, typename T>
LVMMED_TEAM_FN void apply_move(const Team& team, QAPSearch<T>& c, int r, int nr, int s, int ns) {
  const int orr = c.pi[r], os = s >= 0 ? c.pi[s] : -1;
  if constexpr (Team::kSerial) {
    double* kb = c.has_kb ? team.template scratch<double>(2, 2 * static_cast<index_t>(c.g.M)) : nullptr;
    update_from_row(c, r, orr, nr, kb);
    if (s >= 0) update_from_row(c, s, os, ns, kb);
  } else {
    team.range(c.g.N, [&](index_t i) {
      update_row(c, static_cast<int>(i), r, orr, nr);
      if (s >= 0) update_row(c, static_cast<int>(i), s, os, ns);
    });
  }
  team.sync();
  if (team.leader()) {
    if (orr >= 0) c.inv[orr] = -1;
    if (s >= 0 && os >= 0) c.inv[os] = -1;
    c.pi[r] = nr;
    if (nr >= 0) c.inv[nr] = r;
    if (s >= 0) {
      c.pi[s] = ns;
      if (ns >= 0) c.inv[ns] = s;
    }
  }
  team.sync();
}

template <class Team, typename T>
LVMMED_TEAM_FN void set_inverse(const Team& team, QAPSearch<T>& c) {
  team.range(c.g.M, [&](index_t a) { c.inv[a] = -1; });
  team.sync();
  team.range(c.g.N, [&](index_t i) {
    if (c.pi[i] >= 0) c.inv[c.pi[i]] = static_cast<int>(i);
  });
  team.sync();
}

template <class Team>
LVMMED_TEAM_FN void copy_ints(const Team& team, int* dst, const int* src, int n) {
  team.range(n, [&](index_t i) { dst[i] = src[i]; });
  team.sync();
}

// From this many rows on, the serial pair scan works on gathered pair-ordered matrices (contiguous rows).
constexpr int kMatrixScanMin = 48;

// The per-problem time limit of a search: started when the team begins the problem; limit_ns <= 0: none.
struct Stopwatch {
  std::int64_t start_ns, limit_ns;
};

// Whether the time limit is spent (the same answer on every thread of the team; every thread must call it).
template <class Team>
LVMMED_TEAM_FN bool time_up(const Team& team, const Stopwatch& w) {
  return w.limit_ns > 0 && team.clock_ns() - w.start_ns >= w.limit_ns;
}

// Moves between two looks at the clock.
constexpr int kClockEvery = 16;

// Best-improvement search from c.pi (L, f current). tenure = 0: steepest descent until no gain > eps (at most
// max_moves moves). tenure > 0: tabu search, max_moves moves of the best non-tabu move (improving or not; a tabu
// move is allowed when it beats the best found), a row may not return to a column it left for `tenure` moves.
// Stops early when the time limit of `watch` is spent. Leaves the best assignment found in c.pi (with L) and returns
// its objective.
template <class Team, typename T>
LVMMED_TEAM_FN double local_search(const Team& team, QAPSearch<T>& c, double f, index_t max_moves, int tenure,
                                   const Stopwatch& watch) {
  const int N = c.g.N, M = c.g.M;
  const bool tabu = tenure > 0;
  const index_t NM = static_cast<index_t>(N) * M;
  if (tabu) {
    team.range(static_cast<index_t>(N) * (M + 1), [&](index_t k) { c.tabu[k] = -1; });
    team.range(NM, [&](index_t k) { c.Lb[k] = c.L[k]; });
    copy_ints(team, c.best, c.pi, N);
  }
  double best_f = f;
  bool best_is_current = true;
  const std::int64_t n_swaps = static_cast<std::int64_t>(N) * N;
  // Serial path: C[min,max] = sum over edges p between two rows of w[p] = W_p(pi j, pi i) + W_p(pi i, pi j).
  double* C = nullptr;
  double* w = nullptr;
  if constexpr (Team::kSerial) {
    if (c.has_edges) {
      C = team.template scratch<double>(0, static_cast<index_t>(N) * N + c.g.Es);
      w = C + static_cast<index_t>(N) * N;
    }
  }
  const auto refresh_edge = [&](int p) {  // idempotent: C keeps the sum of the current w
    const int i = c.as.src[p], j = c.as.dst[p];
    if (i == j) return;
    const int a = c.pi[i], b = c.pi[j];
    const double nw = (a >= 0 && b >= 0) ? edge_weight(c, p, b, a) + edge_weight(c, p, a, b) : 0.0;
    C[static_cast<index_t>(vmin(i, j)) * N + vmax(i, j)] += nw - w[p];
    w[p] = nw;
  };
  const auto refresh_row = [&](int x) {
    for (int k = c.as.out_off[x]; k < c.as.out_off[x + 1]; ++k) refresh_edge(c.as.out_e[k]);
    for (int k = c.as.in_off[x]; k < c.as.in_off[x + 1]; ++k) refresh_edge(c.as.in_e[k]);
  };
  if (C != nullptr) {
    for (index_t k = 0; k < static_cast<index_t>(N) * N + c.g.Es; ++k) C[k] = 0;
    for (int p = 0; p < c.g.Es; ++p) refresh_edge(p);
  }
  // Serial path: L[i, pi i]; and for the dense term A[i,i], B[a,a], A + A^T, B + B^T (the pair gains read rows);
  // for N >= kMatrixScanMin the pair-ordered gathers Lp[r,s] = L[r, pi s], its transpose, Bp[r,s] = (B+B^T)[pi r, pi s]
  double *lpi = nullptr, *kad = nullptr, *kbd = nullptr, *kas = nullptr, *kbs = nullptr;
  double *Lp = nullptr, *LpT = nullptr, *Bp = nullptr;
  if constexpr (Team::kSerial) {
    if (N >= kMatrixScanMin) {
      Lp = team.template scratch<double>(3, 3 * static_cast<index_t>(N) * N);
      LpT = Lp + static_cast<index_t>(N) * N;
      Bp = LpT + static_cast<index_t>(N) * N;
    }
    const index_t nkb =
        c.has_kb ? static_cast<index_t>(N) + M + static_cast<index_t>(N) * N + static_cast<index_t>(M) * M : 0;
    lpi = team.template scratch<double>(1, N + nkb);
    if (c.has_kb) {
      kad = lpi + N;
      kbd = kad + N;
      kas = kbd + M;
      kbs = kas + static_cast<index_t>(N) * N;
      for (int i = 0; i < N; ++i) {
        kad[i] = Av(c, i, i);
        for (int j = 0; j < N; ++j) kas[static_cast<index_t>(i) * N + j] = Av(c, i, j) + Av(c, j, i);
      }
      for (int a = 0; a < M; ++a) {
        kbd[a] = Bv(c, a, a);
        for (int b = 0; b < M; ++b) kbs[static_cast<index_t>(a) * M + b] = Bv(c, a, b) + Bv(c, b, a);
      }
    }
  }
  const bool relocate = c.partial || N < M;  // free columns (every row stays matched unless partial) or unmatching
  for (index_t it = 0; it < max_moves; ++it) {
    if (watch.limit_ns > 0 && it % kClockEvery == kClockEvery - 1 && time_up(team, watch)) break;
    const auto allowed = [&](int r, int col, double gain) {
      if (!tabu) return true;
      return c.tabu[static_cast<index_t>(r) * (M + 1) + (col < 0 ? M : col)] < it || f + gain > best_f + c.eps;
    };
    Best cand = no_best();
    const auto offer_swap = [&](int r, int s, double d) {
      if (d <= cand.value) return;  // codes come in increasing order: only a strictly larger gain can win
      if (tabu) {
        const bool tr = c.tabu[static_cast<index_t>(r) * (M + 1) + (c.pi[s] < 0 ? M : c.pi[s])] >= it;
        const bool ts = c.tabu[static_cast<index_t>(s) * (M + 1) + (c.pi[r] < 0 ? M : c.pi[r])] >= it;
        if ((tr || ts) && !(f + d > best_f + c.eps)) return;
      }
      offer(cand, d, static_cast<std::int64_t>(r) * N + s);
    };
    if constexpr (Team::kSerial) {
      for (int i = 0; i < N; ++i) lpi[i] = Lv(c, i, c.pi[i]);
    }
    if constexpr (Team::kSerial) {
      if (N >= kMatrixScanMin) {  // large N: gather L[r, pi s] (and B + B^T) into pair order, scan rows contiguously
        for (int r = 0; r < N; ++r) {
          const double* Lr = c.L + static_cast<index_t>(r) * M;
          double* lp = Lp + static_cast<index_t>(r) * N;
          for (int s2 = 0; s2 < N; ++s2) lp[s2] = c.pi[s2] >= 0 ? Lr[c.pi[s2]] : 0.0;
          if (c.has_kb) {
            double* bp = Bp + static_cast<index_t>(r) * N;
            const double* bsr = c.pi[r] >= 0 ? kbs + static_cast<index_t>(c.pi[r]) * M : nullptr;
            for (int s2 = 0; s2 < N; ++s2) bp[s2] = (bsr != nullptr && c.pi[s2] >= 0) ? bsr[c.pi[s2]] : 0.0;
          }
        }
        for (int r0 = 0; r0 < N; r0 += 32)  // LpT = Lp^T, blocked
          for (int s0 = 0; s0 < N; s0 += 32)
            for (int r = r0; r < vmin(r0 + 32, N); ++r)
              for (int s2 = s0; s2 < vmin(s0 + 32, N); ++s2)
                LpT[static_cast<index_t>(s2) * N + r] = Lp[static_cast<index_t>(r) * N + s2];
        for (int r = 0; r < N; ++r) {
          const int orr = c.pi[r];
          const double* lp = Lp + static_cast<index_t>(r) * N;
          const double* lpt = LpT + static_cast<index_t>(r) * N;
          const double* bp = c.has_kb ? Bp + static_cast<index_t>(r) * N : nullptr;
          const double* asr = c.has_kb ? kas + static_cast<index_t>(r) * N : nullptr;
          const double* cr = C != nullptr ? C + static_cast<index_t>(r) * N : nullptr;
          const double bdr = (c.has_kb && orr >= 0) ? kbd[orr] : 0.0;
          for (int s2 = r + 1; s2 < N; ++s2) {
            const int os = c.pi[s2];
            if (orr < 0 && os < 0) continue;
            double d = lp[s2] - lpi[r] + lpt[s2] - lpi[s2];
            if (c.has_kb) d += (kad[r] + kad[s2] - asr[s2]) * ((os >= 0 ? kbd[os] : 0.0) + bdr - bp[s2]);
            if (cr != nullptr) d += cr[s2];
            offer_swap(r, s2, d);
          }
        }
      }
    }
    if constexpr (Team::kSerial) {
      for (int r = 0; r < N && N < kMatrixScanMin; ++r) {
        const int orr = c.pi[r];
        const double* Lr = c.L + static_cast<index_t>(r) * M;
        const double* asr = c.has_kb ? kas + static_cast<index_t>(r) * N : nullptr;
        const double* bsr = orr >= 0 && c.has_kb ? kbs + static_cast<index_t>(orr) * M : nullptr;
        for (int s2 = r + 1; s2 < N; ++s2) {
          const int os = c.pi[s2];
          if (orr < 0 && os < 0) continue;
          double d =
              (os >= 0 ? Lr[os] : 0.0) - lpi[r] + (orr >= 0 ? c.L[static_cast<index_t>(s2) * M + orr] : 0.0) - lpi[s2];
          if (c.has_kb) {  // (A[r,r] + A[s,s] - A[r,s] - A[s,r]) (B[os,os] + B[or,or] - B[or,os] - B[os,or])
            const double beta =
                (os >= 0 ? kbd[os] : 0.0) + (orr >= 0 ? kbd[orr] : 0.0) - (bsr != nullptr && os >= 0 ? bsr[os] : 0.0);
            d += (kad[r] + kad[s2] - asr[s2]) * beta;
          }
          if (C != nullptr) d += C[static_cast<index_t>(r) * N + s2];
          offer_swap(r, s2, d);
        }
      }
    } else {
      team.range(n_swaps, [&](index_t k) {
        const int r = static_cast<int>(k / N), s2 = static_cast<int>(k % N);
        if (r >= s2 || (c.pi[r] < 0 && c.pi[s2] < 0)) return;
        offer_swap(r, s2, swap_gain(c, r, s2));
      });
    }
    if (relocate) {
      team.range(static_cast<index_t>(N) * (M + 1), [&](index_t k) {
        const int r = static_cast<int>(k / (M + 1));
        int col = static_cast<int>(k % (M + 1));
        if (col == M) {
          if (!c.partial || c.pi[r] < 0) return;
          col = -1;
        } else if (c.inv[col] >= 0) {
          return;
        }
        const double d = move_gain(c, r, col);
        if (allowed(r, col, d)) offer(cand, d, n_swaps + k);
      });
    }
    cand = team.argmax(cand);
    if (cand.code == kNoCode || (!tabu && cand.value <= c.eps)) break;
    if (cand.code < n_swaps) {
      const int r = static_cast<int>(cand.code / N), s = static_cast<int>(cand.code % N);
      const int orr = c.pi[r], os = c.pi[s];
      if (tabu && team.leader()) {
        c.tabu[static_cast<index_t>(r) * (M + 1) + (orr < 0 ? M : orr)] = static_cast<int>(it + tenure);
        c.tabu[static_cast<index_t>(s) * (M + 1) + (os < 0 ? M : os)] = static_cast<int>(it + tenure);
      }
      apply_move(team, c, r, os, s, orr);
      if (C != nullptr) {
        refresh_row(r);
        refresh_row(s);
      }
    } else {
      const index_t k = cand.code - n_swaps;
      const int r = static_cast<int>(k / (M + 1));
      const int col = static_cast<int>(k % (M + 1)) == M ? -1 : static_cast<int>(k % (M + 1));
      const int o = c.pi[r];
      if (tabu && team.leader())
        c.tabu[static_cast<index_t>(r) * (M + 1) + (o < 0 ? M : o)] = static_cast<int>(it + tenure);
      apply_move(team, c, r, col, -1, -1);
      if (C != nullptr) refresh_row(r);
    }
    f += cand.value;
    if (tabu) {
      if (f > best_f + c.eps) {
        best_f = f;
        team.range(NM, [&](index_t k) { c.Lb[k] = c.L[k]; });
        copy_ints(team, c.best, c.pi, N);
        best_is_current = true;
      } else {
        best_is_current = false;
      }
    } else {
      best_f = f;
    }
  }
  if (tabu && !best_is_current) {  // back to the best assignment and its saved gradient
    team.range(NM, [&](index_t k) { c.L[k] = c.Lb[k]; });
    copy_ints(team, c.pi, c.best, N);
    set_inverse(team, c);
  }
  return best_f;
}

// ------------------------------------------------------------------------------------------------------------
// Softassign (graduated assignment): X <- Sinkhorn(exp(beta_t * grad(X) / max|grad|)), beta annealed
// geometrically. X is [N+1, M+1]: the last row/column are the slacks of the free columns / unmatched rows.

struct SoftassignOptions {
  int steps, sinkhorn_iters;
  double beta0, beta1;
};

// S = U + (K + K^T) x for the soft X (row-owned; the loop-free edges of the search).
template <class Team, typename T>
LVMMED_TEAM_FN void soft_gradient(const Team& team, QAPSearch<T>& c) {
  const QAPGraph<T>& g = c.g;
  const int M = g.M;
  const index_t ldx = M + 1;
  team.range(static_cast<index_t>(g.N) * M, [&](index_t k) { c.S[k] = c.U[k]; });
  team.sync();
  if (c.has_edges) edge_product(team, g, c.as, c.at, c.X, ldx, c.S, M, true, true);
  if (c.has_kb) {  // S += A (X B^T) + A^T (X B): Y = X B^T in L (free during softassign), Z = X B
    team.range(g.N, [&](index_t j) {
      const double* xj = c.X + j * ldx;
      for (int a = 0; a < M; ++a) {
        double y = 0, z = 0;
        for (int b = 0; b < M; ++b) {
          y += xj[b] * Bv(c, a, b);
          z += xj[b] * Bv(c, b, a);
        }
        c.L[j * M + a] = y;
        c.Z[j * M + a] = z;
      }
    });
    team.sync();
    team.range(g.N, [&](index_t i) {
      double* Si = c.S + i * M;
      for (int j = 0; j < g.N; ++j) {
        const double aij = Av(c, static_cast<int>(i), j), aji = Av(c, j, static_cast<int>(i));
        for (int a = 0; a < M; ++a) Si[a] += aij * c.L[j * M + a] + aji * c.Z[j * M + a];
      }
    });
    team.sync();
  }
}

template <class Team, typename T>
LVMMED_TEAM_FN void softassign(const Team& team, QAPSearch<T>& c, const SoftassignOptions& o) {
  const int N = c.g.N, M = c.g.M;
  const index_t ldx = M + 1;
  const bool slack_row = c.partial || M > N, slack_col = c.partial;
  const double row_mass = c.partial ? M : M - N, col_mass = N;
  team.range(static_cast<index_t>(N + 1) * ldx, [&](index_t k) {
    const index_t i = k / ldx, a = k % ldx;
    c.X[k] = (i < N && a < M) ? 1.0 / vmax(M, 1) : 0.0;
  });
  team.sync();
  for (int t = 0; t < o.steps; ++t) {
    soft_gradient(team, c);
    const double m = max_abs(team, c.S, static_cast<index_t>(N) * M);
    const double frac = o.steps > 1 ? static_cast<double>(t) / (o.steps - 1) : 1.0;
    const double beta = o.beta0 * pow(o.beta1 / o.beta0, frac) / vmax(m, 1e-300);
    // kernel: exp(beta S) on the real block, 1 on the slacks that exist, 0 elsewhere
    if constexpr (Team::kSerial) {
      for (int i = 0; i < N; ++i) {
        team.exp_scaled(c.X + i * ldx, c.S + static_cast<index_t>(i) * M, beta, M);
        c.X[i * ldx + M] = slack_col ? 1.0 : 0.0;
      }
      for (int a = 0; a <= M; ++a) c.X[N * ldx + a] = slack_row && (a < M || slack_col) ? 1.0 : 0.0;
    } else {
      team.range(static_cast<index_t>(N + 1) * ldx, [&](index_t k) {
        const index_t i = k / ldx, a = k % ldx;
        double v;
        if (i < N && a < M)
          v = exp(beta * c.S[i * M + a]);
        else if (i == N && a == M)
          v = (slack_row && slack_col) ? 1.0 : 0.0;
        else
          v = (i == N) ? (slack_row ? 1.0 : 0.0) : (slack_col ? 1.0 : 0.0);
        c.X[k] = v;
      });
    }
    team.range(N + 1, [&](index_t i) { c.rs[i] = 1.0; });
    team.sync();
    for (int it = 0; it < o.sinkhorn_iters; ++it) {
      if constexpr (Team::kSerial) {  // column sums as row axpys, row sums as dots: vectorised, no long chains
        for (int a = 0; a <= M; ++a) c.cs[a] = 0;
        for (int i = 0; i <= N; ++i) team.axpy(c.rs[i], c.X + i * ldx, c.cs, M + 1);
        for (int a = 0; a <= M; ++a) {
          const double mass = a < M ? 1.0 : (slack_col ? col_mass : 0.0);
          c.cs[a] = c.cs[a] > 0 ? mass / c.cs[a] : 0.0;
        }
        for (int i = 0; i <= N; ++i) {
          const double mass = i < N ? 1.0 : (slack_row ? row_mass : 0.0);
          const double sum = team.dot(c.X + i * ldx, c.cs, M + 1);
          c.rs[i] = sum > 0 ? mass / sum : 0.0;
        }
        continue;
      }
      team.range(M + 1, [&](index_t a) {
        const double mass = a < M ? 1.0 : (slack_col ? col_mass : 0.0);
        double s = 0;
        for (int i = 0; i <= N; ++i) s += c.X[i * ldx + a] * c.rs[i];
        c.cs[a] = s > 0 ? mass / s : 0.0;
      });
      team.sync();
      team.range(N + 1, [&](index_t i) {
        const double mass = i < N ? 1.0 : (slack_row ? row_mass : 0.0);
        double s = 0;
        for (int a = 0; a <= M; ++a) s += c.X[i * ldx + a] * c.cs[a];
        c.rs[i] = s > 0 ? mass / s : 0.0;
      });
      team.sync();
    }
    team.range(static_cast<index_t>(N + 1) * ldx, [&](index_t k) { c.X[k] *= c.rs[k / ldx] * c.cs[k % ldx]; });
    team.sync();
  }
  soft_gradient(team, c);  // S = gradient at the final X (a start of its own)
}

// ------------------------------------------------------------------------------------------------------------
// The plan of a search.

struct SearchPlan {
  bool multistart;
  SoftassignOptions ga;
  int tabu_iters, tenure, kicks, kick_size;
  index_t max_descent;
  std::uint64_t seed;
  // iterated tabu search (method "its"): dense = on the dense swap gains (dense_its: tenures drawn in [tenure_lo,
  // tenure_hi], a tabu entry older than `aspiration` moves aspires, a phase ends after `stall` moves without a new
  // best of the phase, `population` members); else generic_its (phases of `stall` moves, tenures in [tenure_lo,
  // tenure_hi], kicks of kick_lo..kick_hi swaps)
  bool iterated, dense;
  int tenure_lo, tenure_hi, aspiration, stall, kick_lo, kick_hi, population;
  // dense_its on a sparse problem (A or B with at most ils_degree N nonzeros off the diagonal, see dense_sparse):
  // phases of tenures in [ils_tenure_lo, ils_tenure_hi] that end after ils_stall moves without a new best of the
  // phase, each from the best of its run after min(ils_kick_lo + the run's failed phases, ils_kick_hi) random
  // swaps; a new run from a crossover after ils_restart failed phases in a row
  int ils_degree, ils_tenure_lo, ils_tenure_hi, ils_stall, ils_kick_lo, ils_kick_hi, ils_restart;
  std::int64_t time_limit_ns;  // per problem, 0: none
};

LVMMED_HD_FN std::uint64_t mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Whether the iterated tabu search of a batch runs on the dense swap gains: a square Koopmans-Beckmann problem
// without an edge term, every row matched.
LVMMED_HD_FN bool dense_swaps(const QAPShape& s, bool partial) {
  return s.has_kb && !(s.has_edges && s.Es > 0 && s.Et > 0) && !partial && s.N == s.M;
}

// The plan of a search from the user-facing options (host side, shared by the CPU and CUDA launchers).
inline SearchPlan make_search_plan(const QAPSearchOptions& o, const QAPShape& s) {
  const index_t N = s.N, M = s.M;
  SearchPlan p;
  p.multistart = o.multistart;
  p.ga = {o.multistart ? o.ga_steps : 0, o.sinkhorn_iters, 2.0, 40.0};
  p.tabu_iters = o.tabu_iters;
  p.tenure = static_cast<int>(vmin<index_t>(vmax<index_t>(N / 4, 2), 10));
  p.kicks = o.kicks;
  p.kick_size = static_cast<int>(vmin<index_t>(vmax<index_t>(N / 8, 2), 8));
  p.max_descent = o.max_descent > 0 ? o.max_descent : 16 * N * (M + 1) + 64;
  p.seed = o.seed;
  p.iterated = o.iterated;
  p.dense = o.iterated && dense_swaps(s, o.partial);
  if (p.dense) {  // robust tabu search: tenures around N (Taillard 1991); aspiration by age after 4 N^2 moves
    p.tenure_lo = static_cast<int>(vmax<index_t>(9 * N / 10, 1));
    p.tenure_hi = static_cast<int>(vmax<index_t>(11 * N / 10, p.tenure_lo + 1));
    p.aspiration = static_cast<int>(vmin<index_t>(4 * N * N, 1 << 28));
    p.stall = static_cast<int>(vmax<index_t>(4 * N, 32));
  } else {  // the local search's tabu rule (either row tabu): shorter tenures
    p.tenure_lo = p.tenure;
    p.tenure_hi = 2 * p.tenure;
    p.aspiration = 0;
    p.stall = static_cast<int>(vmax<index_t>(4 * N, 32));
  }
  p.kick_lo = static_cast<int>(vmax<index_t>(N / 10, 2));
  p.kick_hi = static_cast<int>(vmax<index_t>(N / 4, p.kick_lo));
  p.population = 8;  // < kMaxPopulation: the slot after the members holds the best of a sparse problem's run
  // sparse problems (tree-shaped flows such as QAPLIB's chr): iterated local search (Stuetzle 2006) whose local
  // search is a short tabu phase, the perturbation growing with the run's failed phases from 8 % to 30 % of the
  // rows, restarts from crossovers of the population (measured on chr, BENCHMARKS.md)
  p.ils_degree = 4;
  p.ils_tenure_lo = static_cast<int>(vmax<index_t>(2 * N / 5, 1));
  p.ils_tenure_hi = static_cast<int>(vmax<index_t>(4 * N / 5, p.ils_tenure_lo + 1));
  p.ils_stall = 5;
  p.ils_kick_lo = static_cast<int>(vmax<index_t>(2 * N / 25, 2));
  p.ils_kick_hi = static_cast<int>(vmax<index_t>(3 * N / 10, p.ils_kick_lo));
  p.ils_restart = 40;
  p.time_limit_ns = o.time_limit > 0 ? static_cast<std::int64_t>(o.time_limit * 1e9) : 0;
  return p;
}

// The next of a counter-based random stream (replicated: every thread of a team draws the same numbers).
LVMMED_TEAM_FN int draw(std::uint64_t& state, int n) {
  state = mix64(state);
  return static_cast<int>(state % static_cast<std::uint64_t>(n));
}

// Two distinct rows r < s drawn at random (N > 1).
LVMMED_TEAM_FN void draw_pair(std::uint64_t& state, int N, int& r, int& s) {
  r = draw(state, N);
  s = draw(state, N - 1);
  s += s >= r;
  if (s < r) {
    const int t = r;
    r = s;
    s = t;
  }
}

// The random stream of a problem's event (a kick, a move), the same for any thread count.
LVMMED_TEAM_FN std::uint64_t stream_of(const SearchPlan& plan, std::uint64_t graph_id, std::uint64_t event) {
  return mix64(plan.seed ^ mix64(graph_id * 0x100000001B3ull + event));
}

// Descent from c.pi; keeps it in c.keep when it beats best_f (then `kept` is set: the search state is c.keep).
// Returns the new best objective.
template <class Team, typename T>
LVMMED_TEAM_FN double try_start(const Team& team, QAPSearch<T>& c, const SearchPlan& plan, double best_f, bool& kept,
                                const Stopwatch& w) {
  set_inverse(team, c);
  double f = linearise(team, c);
  f = local_search(team, c, f, plan.max_descent, 0, w);
  kept = f > best_f + c.eps;
  if (kept) {
    copy_ints(team, c.keep, c.pi, c.g.N);
    return f;
  }
  return best_f;
}

// `swaps` random swaps of the columns of two rows of c.pi (c.inv and L are left stale).
template <class Team, typename T>
LVMMED_TEAM_FN void kick(const Team& team, QAPSearch<T>& c, std::uint64_t state, int swaps) {
  if (team.leader() && c.g.N > 1) {
    for (int k = 0; k < swaps; ++k) {
      int r, s;
      draw_pair(state, c.g.N, r, s);
      const int t = c.pi[r];
      c.pi[r] = c.pi[s];
      c.pi[s] = t;
    }
  }
  team.sync();
}

// ------------------------------------------------------------------------------------------------------------
// Dense swap gains: the iterated tabu search of a square Koopmans-Beckmann problem without edges, every row
// matched. With A' = A and B' = B, or one of them replaced by its symmetric part when the other is symmetric (the
// objective is unchanged), and P = B'[pi, pi] (P[u,v] = B'[pi u, pi v]), the gain of swapping the columns of rows
// x and v is
//   D[x,v] = U[x,pi v] + U[v,pi x] - U[x,pi x] - U[v,pi v]
//          + sum_{k != x,v} (A'[x,k] - A'[v,k]) (P[v,k] - P[x,k]) + (A'[k,x] - A'[k,v]) (P[k,v] - P[k,x])
//          + (A'[x,x] - A'[v,v]) (P[v,v] - P[x,x]) + (A'[x,v] - A'[v,x]) (P[v,x] - P[x,v]).
// Written with the sums over every k, a whole row x of gains is t[v] - e[x] - e[v] plus O(1) terms, where
//   t[v] = sum_k A'[x,k] P[v,k] + P[x,k] A'[v,k] + A'[k,x] P[k,v] + P[k,x] A'[k,v]   (four transposed mat-vecs)
//   e[v] = sum_k A'[v,k] P[v,k] + A'[k,v] P[k,v]                                        (kept up to date).
// After a swap of rows r and s, with c = A'[:,r] - A'[:,s], e = A'[r,:] - A'[s,:], g = P[:,s] - P[:,r] and
// h = P[s,:] - P[r,:] taken before it, the gain of two other rows u, v changes by O(1) (Taillard's update)
//   D[u,v] += (c[u] - c[v]) (g[v] - g[u]) + (e[u] - e[v]) (h[v] - h[u]),
// and e[v] by c[v] g[v] + e[v] h[v]. A move thus costs O(N^2): that update, two rows and columns of P swapped,
// and the rows r and s of gains.

// The scratch vectors of the dense search: the four gathered differences of a swap, e, the row t, and the diagonals
// A'[v,v] and P[v,v].
struct DenseVectors {
  double *c, *e, *g, *h, *diag, *t, *dA, *dP;
};
template <typename T>
LVMMED_TEAM_FN DenseVectors dense_vectors(const QAPSearch<T>& c) {
  const int N = c.g.N;
  return {c.dv, c.dv + N, c.dv + 2 * N, c.dv + 3 * N, c.dv + 4 * N, c.dv + 5 * N, c.dv + 6 * N, c.dv + 7 * N};
}

// Below: the per-element formulas of the dense search, shared by the team code and the serial team's vectorised
// loops (csrc/cpu/qap_search.cpp).

// Taillard's O(1) change of the gain of rows u, v when rows r, s swap (see above), from c, e, g, h at u and v.
LVMMED_HD_FN double swap_gain_delta(double cu, double eu, double gu, double hu, double cv, double ev, double gv,
                                    double hv) {
  return (cu - cv) * (gv - gu) + (eu - ev) * (hv - hu);
}

// The gain of rows x and v without the unary term, from t[v], e[x], e[v] and the O(1) terms: axx = A'[x,x],
// pxx = P[x,x], axv = A'[x,v], avx = A'[v,x], pxv = P[x,v], pvx = P[v,x], avv = A'[v,v], pvv = P[v,v].
LVMMED_HD_FN double dense_row_gain(double tv, double ex, double ev, double axx, double pxx, double axv, double avx,
                                   double pxv, double pvx, double avv, double pvv, bool sym) {
  // the terms k = x and k = v of the full sums in t - e[x] - e[v], and the diagonal terms
  double outer = (axx - avx) * (pvx - pxx) + (axv - avv) * (pvv - pxv);
  outer += sym ? outer : (axx - axv) * (pxv - pxx) + (avx - avv) * (pvv - pvx);
  const double inner = (axx - avv) * (pvv - pxx) + (axv - avx) * (pvx - pxv);
  return (sym ? 2 * tv : tv) - ex - ev - outer + inner;
}

// The class of a swap of gain d whose rows are tabu until move tm (the earlier of the two) in a robust tabu step:
// 0 aspired (d > need, or tm < old: a tabu entry older than the aspiration), 1 authorised (not both rows tabu at
// move `now`), 2 tabu.
LVMMED_HD_FN bool swap_aspired(double d, double tm, double need, double old) {
  return vmax(d - need, old - tm) > 0;  // branch-free: the serial scan vectorises
}
LVMMED_HD_FN int swap_class(double d, double tm, double need, double old, double now) {
  return swap_aspired(d, tm, need, old) ? 0 : (tm < now ? 1 : 2);
}

// A' and A'^T in double, c.sym (A' and B' symmetric: the transposed half of t and e is the first one again).
// Returns whether P is built from the symmetric part of B.
template <class Team, typename T>
LVMMED_TEAM_FN bool dense_setup(const Team& team, QAPSearch<T>& c) {
  const int N = c.g.N;
  const index_t NN = static_cast<index_t>(N) * N;
  Best asym = no_best(), bsym = no_best();
  team.range(NN, [&](index_t k) {
    const int i = static_cast<int>(k / N), j = static_cast<int>(k % N);
    if (Av(c, i, j) != Av(c, j, i)) offer(asym, 1.0, 0);
    if (Bv(c, i, j) != Bv(c, j, i)) offer(bsym, 1.0, 0);
  });
  const bool a_sym = team.argmax(asym).value <= 0, b_sym = team.argmax(bsym).value <= 0;
  c.sym = a_sym || b_sym;
  team.range(NN, [&](index_t k) {
    const int i = static_cast<int>(k / N), j = static_cast<int>(k % N);
    const double a = (b_sym && !a_sym) ? 0.5 * (Av(c, i, j) + Av(c, j, i)) : Av(c, i, j);
    c.Ad[k] = a;
    c.At[static_cast<index_t>(j) * N + i] = a;
  });
  const DenseVectors dv = dense_vectors(c);
  team.range(N, [&](index_t i) { dv.dA[i] = Av(c, static_cast<int>(i), static_cast<int>(i)); });
  c.has_unary = max_abs(team, c.U, NN) > 0;
  team.sync();
  return a_sym && !b_sym;
}

// Whether the problem is sparse: A or B has at most max_degree N nonzero entries off its diagonal (on average at
// most max_degree per row: the tree-shaped flows of QAPLIB's chr instances have fewer than 2). Counted per row into
// the scratch vectors t and c of dense_vectors, then summed by every thread.
template <class Team, typename T>
LVMMED_TEAM_FN bool dense_sparse(const Team& team, const QAPSearch<T>& c, int max_degree) {
  const int N = c.g.N;
  const DenseVectors dv = dense_vectors(c);
  team.range(N, [&](index_t ii) {
    const int i = static_cast<int>(ii);
    int a = 0, b = 0;
    for (int j = 0; j < N; ++j) {
      a += j != i && Av(c, i, j) != 0;
      b += j != i && Bv(c, i, j) != 0;
    }
    dv.t[i] = a;
    dv.c[i] = b;
  });
  team.sync();
  double a = 0, b = 0;
  for (int i = 0; i < N; ++i) {
    a += dv.t[i];
    b += dv.c[i];
  }
  team.sync();
  return vmin(a, b) <= static_cast<double>(max_degree) * N;
}

// e[x] (see above) for one row.
template <typename T>
LVMMED_TEAM_FN double dense_diag(const QAPSearch<T>& c, int x) {
  const int N = c.g.N;
  const index_t xN = static_cast<index_t>(x) * N;
  double e = 0;
  for (int k = 0; k < N; ++k) e += c.Ad[xN + k] * c.P[xN + k];
  if (!c.sym)
    for (int k = 0; k < N; ++k) e += c.At[xN + k] * c.Pt[xN + k];
  return c.sym ? 2 * e : e;
}

// The gains of row x against every row v > x (after: only those v, else every v but x and `skip`) -> D.
template <class Team, typename T>
LVMMED_TEAM_FN void dense_row(const Team& team, QAPSearch<T>& c, int x, int skip, bool upper_only) {
  const int N = c.g.N;
  const index_t xN = static_cast<index_t>(x) * N;
  const DenseVectors dv = dense_vectors(c);
  if constexpr (Team::kSerial) {
    for (int v = 0; v < N; ++v) dv.t[v] = 0;
    team.transposed_matvec2(dv.t, c.Pt, c.Ad + xN, c.At, c.P + xN, N);
    if (!c.sym) team.transposed_matvec2(dv.t, c.P, c.At + xN, c.Ad, c.Pt + xN, N);
  } else {
    team.range(N, [&](index_t v) {
      double t = 0;
      for (int k = 0; k < N; ++k) {
        const index_t kN = static_cast<index_t>(k) * N;
        t += c.Ad[xN + k] * c.Pt[kN + v] + c.P[xN + k] * c.At[kN + v];
        if (!c.sym) t += c.At[xN + k] * c.P[kN + v] + c.Pt[xN + k] * c.Ad[kN + v];
      }
      dv.t[v] = t;
    });
    team.sync();
  }
  const double *ax = c.Ad + xN, *px = c.P + xN, *atx = c.At + xN, *ptx = c.Pt + xN;
  if constexpr (Team::kSerial) {
    team.dense_row_gains(dv.t, ax, px, atx, ptx, dv.dA, dv.dP, dv.diag, x, c.sym, N);
  } else {
    team.range(N, [&](index_t v) {
      dv.t[v] = dense_row_gain(dv.t[v], dv.diag[x], dv.diag[v], ax[x], px[x], ax[v], atx[v], px[v], ptx[v], dv.dA[v],
                               dv.dP[v], c.sym);
    });
    team.sync();
  }
  const double* Ux = c.U + xN;
  const int a = c.pi[x];
  team.range(N, [&](index_t vi) {  // + the unary term -> D[min(x,v), max(x,v)]
    const int v = static_cast<int>(vi);
    if (v == x || v == skip || (upper_only && v < x)) return;
    double d = dv.t[v];
    if (c.has_unary) {
      const index_t vN = static_cast<index_t>(v) * N;
      const int b = c.pi[v];
      d += Ux[b] + c.U[vN + a] - Ux[a] - c.U[vN + b];
    }
    const index_t k = static_cast<index_t>(vmin(x, v)) * N + vmax(x, v);
    c.D[k] = d;
    c.TM[k] = vmin(c.TT[xN + v], c.TT[static_cast<index_t>(v) * N + x]);
  });
  team.sync();
}

// P, P^T, e and every gain D[u,v] (u < v) for c.pi; half_b: P from the symmetric part of B. Returns f(pi).
template <class Team, typename T>
LVMMED_TEAM_FN double dense_build(const Team& team, QAPSearch<T>& c, bool half_b) {
  const int N = c.g.N;
  const index_t NN = static_cast<index_t>(N) * N;
  const DenseVectors dv = dense_vectors(c);
  team.range(NN, [&](index_t k) {
    const int u = static_cast<int>(k / N), v = static_cast<int>(k % N);
    const int a = c.pi[u], b = c.pi[v];
    const double p = half_b ? 0.5 * (Bv(c, a, b) + Bv(c, b, a)) : Bv(c, a, b);
    c.P[k] = p;
    c.Pt[static_cast<index_t>(v) * N + u] = p;
    if (u >= v) c.D[k] = -kInf;  // never a move (the serial pick scans the whole matrix)
    if (u == v) dv.dP[u] = p;
  });
  team.sync();
  team.range(N, [&](index_t x) { dv.diag[x] = dense_diag(c, static_cast<int>(x)); });
  team.sync();
  for (int x = 0; x + 1 < N; ++x) dense_row(team, c, x, -1, true);
  // f = sum_x U[x,pi x] + e[x] / 2, summed in row order by every thread
  double f = 0;
  for (int x = 0; x < N; ++x) f += c.U[static_cast<index_t>(x) * N + c.pi[x]] + 0.5 * dv.diag[x];
  team.sync();
  return f;
}

// Swaps the columns of rows r < s: the gains, P, P^T, e, pi, inv, and the tabu tables (columns r, s of TT swapped,
// then r may not return to its old column before move tr, s to its before ts).
template <class Team, typename T>
LVMMED_TEAM_FN void dense_swap(const Team& team, QAPSearch<T>& c, int r, int s, double tr, double ts) {
  const int N = c.g.N;
  const DenseVectors dv = dense_vectors(c);
  const index_t rN = static_cast<index_t>(r) * N, sN = static_cast<index_t>(s) * N;
  team.range(N, [&](index_t w) {
    dv.c[w] = c.At[rN + w] - c.At[sN + w];
    dv.e[w] = c.Ad[rN + w] - c.Ad[sN + w];
    dv.g[w] = c.Pt[sN + w] - c.Pt[rN + w];
    dv.h[w] = c.P[sN + w] - c.P[rN + w];
    dv.diag[w] += dv.c[w] * dv.g[w] + dv.e[w] * dv.h[w];  // rows r and s are recomputed below
  });
  team.sync();
  // O(1) updates of every pair (those with r or s are recomputed below)
  if constexpr (Team::kSerial) {
    team.swap_gain_update(c.D, dv.c, dv.e, dv.g, dv.h, N);
  } else {
    team.range(static_cast<index_t>(N) * N, [&](index_t k) {
      const int u = static_cast<int>(k / N), v = static_cast<int>(k % N);
      if (u < v) c.D[k] += swap_gain_delta(dv.c[u], dv.e[u], dv.g[u], dv.h[u], dv.c[v], dv.e[v], dv.g[v], dv.h[v]);
    });
  }
  // rows r, s of P and P^T, then their columns of P, P^T, TT
  team.range(N, [&](index_t w) {
    double t = c.P[rN + w];
    c.P[rN + w] = c.P[sN + w];
    c.P[sN + w] = t;
    t = c.Pt[rN + w];
    c.Pt[rN + w] = c.Pt[sN + w];
    c.Pt[sN + w] = t;
  });
  team.sync();
  team.range(N, [&](index_t w) {
    const index_t wN = w * N;
    double t = c.P[wN + r];
    c.P[wN + r] = c.P[wN + s];
    c.P[wN + s] = t;
    t = c.Pt[wN + r];
    c.Pt[wN + r] = c.Pt[wN + s];
    c.Pt[wN + s] = t;
    t = c.TT[wN + r];
    c.TT[wN + r] = c.TT[wN + s];
    c.TT[wN + s] = t;
  });
  if (team.leader()) {
    const int t = c.pi[r];
    c.pi[r] = c.pi[s];
    c.pi[s] = t;
    c.inv[c.pi[r]] = r;
    c.inv[c.pi[s]] = s;
    const double p = dv.dP[r];
    dv.dP[r] = dv.dP[s];
    dv.dP[s] = p;
  }
  team.sync();
  if (team.leader()) {  // r left the column s now holds, s the one r holds
    c.TT[rN + s] = tr;
    c.TT[sN + r] = ts;
  }
  team.sync();
  team.range(2, [&](index_t k) { dv.diag[k == 0 ? r : s] = dense_diag(c, k == 0 ? r : s); });
  team.sync();
  dense_row(team, c, r, -1, false);
  dense_row(team, c, s, r, false);
}

// The move of a robust tabu step `it` (objective f, best found best_f): the best aspired swap -- one reaching a new
// best, or one moving a row to a column its tabu entry has not named for `aspiration` moves -- else the best
// authorised one (not both rows tabu), else the best one. Returns the code u * N + v (u < v), kNoCode if none.
// No tabu entry is below `floor` (the phase's reset value).
template <class Team, typename T>
LVMMED_TEAM_FN std::int64_t dense_pick(const Team& team, const QAPSearch<T>& c, int it, double f, double best_f,
                                       int aspiration, int floor) {
  const int N = c.g.N;
  const double need = best_f + c.eps - f;  // an aspired gain exceeds this
  const int old = it - aspiration;
  if constexpr (Team::kSerial) {  // D's lower triangle and diagonal hold -kInf (dense_build): never a candidate
    return team.dense_pick(c.D, c.TM, static_cast<index_t>(N) * N, need, old > floor ? old : -kInf, it).code;
  } else {
    Best best[3] = {no_best(), no_best(), no_best()};
    team.range(static_cast<index_t>(N) * N, [&](index_t k) {
      if (k / N < k % N) offer(best[swap_class(c.D[k], c.TM[k], need, old, it)], c.D[k], k);
    });
    Best b = team.argmax(best[0]);
    if (b.code == kNoCode) b = team.argmax(best[1]);
    if (b.code == kNoCode) b = team.argmax(best[2]);
    return b.code;
  }
}

// pi <- the start of phase `phase` of the dense search: the best start (phase 0), a random assignment (while the
// population fills), or a crossover of two members (their common columns kept, the other rows given the remaining
// columns in random order).
template <class Team, typename T>
LVMMED_TEAM_FN void phase_start(const Team& team, QAPSearch<T>& c, int phase, int members, int population,
                                std::uint64_t state) {
  const int N = c.g.N;
  if (phase == 0) {
    copy_ints(team, c.pi, c.keep, N);
    return;
  }
  if (team.leader()) {
    int* free_cols = c.rows;
    int n_free = 0;
    if (members < population) {
      for (int i = 0; i < N; ++i) {
        c.pi[i] = -1;
        free_cols[n_free++] = i;
      }
    } else {
      const int a = draw(state, members);
      int b = draw(state, members - 1);
      b += b >= a;
      const int *pa = c.pop + static_cast<index_t>(a) * N, *pb = c.pop + static_cast<index_t>(b) * N;
      for (int i = 0; i < N; ++i) c.inv[i] = -1;
      for (int i = 0; i < N; ++i) {
        c.pi[i] = pa[i] == pb[i] ? pa[i] : -1;
        if (c.pi[i] >= 0) c.inv[c.pi[i]] = i;
      }
      for (int a2 = 0; a2 < N; ++a2)
        if (c.inv[a2] < 0) free_cols[n_free++] = a2;
    }
    for (int k = n_free - 1; k > 0; --k) {  // Fisher-Yates
      const int j = draw(state, k + 1), t = free_cols[k];
      free_cols[k] = free_cols[j];
      free_cols[j] = t;
    }
    for (int i = 0, k = 0; i < N; ++i)
      if (c.pi[i] < 0) c.pi[i] = free_cols[k++];
  }
  team.sync();
}

// Memetic iterated robust tabu search on the dense swap gains from c.keep (objective best_f). Every phase is a
// robust tabu search (Taillard 1991: a tenure drawn at random in [tenure_lo, tenure_hi] per move, a swap is tabu
// when both rows would return to a column they left within their tenure, aspiration by a new best of the phase or
// by a tabu entry older than `aspiration` moves) that ends after `stall` moves without a new best of the phase. It
// starts from the best start, then from random assignments until the population is full, then from crossovers of
// two random members; its best assignment replaces the worst member when it is better and its objective is new.
// On a sparse problem (dense_sparse: tree-shaped flows such as QAPLIB's chr, where long robust tabu phases from
// random and crossover starts stall) it is an iterated local search instead: short phases (ils_stall moves without a
// new best, shorter tenures), each from the best of the current run after random swaps, one more for each phase of
// the run that failed to beat it (up to ils_kick_hi), a new run from a crossover (a random assignment while the
// population has fewer than two members) after ils_restart failures in a row; the population is fed as above.
// Stops after tabu_iters moves in all or when the time limit is spent. The best assignment -> c.keep; returns its
// objective.
template <class Team, typename T>
LVMMED_TEAM_FN double dense_its(const Team& team, QAPSearch<T>& c, const SearchPlan& plan, double best_f,
                                std::uint64_t graph_id, const Stopwatch& w) {
  const int N = c.g.N;
  const index_t NN = static_cast<index_t>(N) * N;
  if (N < 2 || plan.tabu_iters <= 0) return best_f;
  const bool half_b = dense_setup(team, c);
  const bool sparse = dense_sparse(team, c, plan.ils_degree);
  const int tenure_lo = sparse ? plan.ils_tenure_lo : plan.tenure_lo;
  const int span = (sparse ? plan.ils_tenure_hi : plan.tenure_hi) - tenure_lo + 1;
  const int stall = sparse ? plan.ils_stall : plan.stall;
  int* centre = c.pop + static_cast<index_t>(plan.population) * N;  // sparse: the best of the current run
  int it = 0, members = 0, run_fails = 0;
  double run_f = -kInf;
  bool stop = false, new_run = true;
  for (int phase = 0; it < plan.tabu_iters && !stop; ++phase) {
    if (phase > 0 && time_up(team, w)) break;
    const std::uint64_t start_state = stream_of(plan, graph_id, 2 * phase);
    if (!sparse || phase == 0) {
      phase_start(team, c, phase, members, plan.population, start_state);
    } else if (run_fails < plan.ils_restart) {  // the run's best after random swaps, more the longer it fails
      copy_ints(team, c.pi, centre, N);
      kick(team, c, start_state, vmin(plan.ils_kick_lo + run_fails, plan.ils_kick_hi));
    } else {  // a new run from a crossover of two members (a random assignment while there are fewer)
      new_run = true;
      run_fails = 0;
      const bool cross = members >= 2;
      phase_start(team, c, phase, cross ? members : 0, cross ? members : 1, start_state);
    }
    set_inverse(team, c);
    const int floor = it - 1;
    team.range(NN, [&](index_t k) { c.TT[k] = c.TM[k] = floor; });
    team.sync();
    double f = dense_build(team, c, half_b);
    copy_ints(team, c.best, c.pi, N);
    double phase_f = f;
    int last_best = it;
    std::uint64_t state = stream_of(plan, graph_id, 2 * phase + 1);
    for (; it < plan.tabu_iters; ++it) {
      if (w.limit_ns > 0 && it % kClockEvery == 0 && time_up(team, w)) {
        stop = true;
        break;
      }
      const std::int64_t code = dense_pick(team, c, it, f, phase_f, plan.aspiration, floor);
      if (code == kNoCode) {
        stop = true;
        break;
      }
      const int r = static_cast<int>(code / N), s = static_cast<int>(code % N);
      f += c.D[code];
      const int tr = it + tenure_lo + draw(state, span), ts = it + tenure_lo + draw(state, span);
      dense_swap(team, c, r, s, tr, ts);
      if (f > phase_f + c.eps) {
        phase_f = f;
        copy_ints(team, c.best, c.pi, N);
        last_best = it;
      } else if (it - last_best >= stall) {
        ++it;
        break;
      }
    }
    if (phase_f > best_f + c.eps) {
      best_f = phase_f;
      copy_ints(team, c.keep, c.best, N);
    }
    if (sparse) {  // the phase's best becomes the run's centre when it starts the run or beats the centre
      if (new_run || phase_f > run_f + c.eps) {
        if (!new_run) run_fails = 0;
        run_f = phase_f;
        copy_ints(team, centre, c.best, N);
      } else {
        ++run_fails;
      }
      new_run = false;
    }
    // the phase's best into the population: appended while it fills, else in place of the worst member
    int slot = members < plan.population ? members : 0;
    bool fresh = true;
    for (int m = 0; m < members; ++m) {
      fresh = fresh && vabs(c.popf[m] - phase_f) > c.eps;
      if (members == plan.population && c.popf[m] < c.popf[slot]) slot = m;
    }
    if (fresh && (members < plan.population || phase_f > c.popf[slot] + c.eps)) {
      team.range(N, [&](index_t i) { c.pop[static_cast<index_t>(slot) * N + i] = c.best[i]; });
      if (team.leader()) c.popf[slot] = phase_f;
      team.sync();
      members += members < plan.population;
    }
  }
  return best_f;
}

// Iterated tabu search of any other problem (the local search's moves and tabu rule): phases of `stall` tabu moves
// with a tenure drawn in [tenure_lo, tenure_hi], each from the best assignment after kick_lo..kick_hi random swaps
// (the first from the best start as it is). Stops after tabu_iters moves in all or when the time limit is spent.
// The best assignment -> c.keep; returns its objective.
template <class Team, typename T>
LVMMED_TEAM_FN double generic_its(const Team& team, QAPSearch<T>& c, const SearchPlan& plan, double best_f,
                                  std::uint64_t graph_id, const Stopwatch& w) {
  const int N = c.g.N;
  index_t used = 0;
  for (std::uint64_t phase = 0; used < plan.tabu_iters; ++phase) {
    if (phase > 0 && time_up(team, w)) break;
    copy_ints(team, c.pi, c.keep, N);
    std::uint64_t state = stream_of(plan, graph_id, 2 * phase);
    const int swaps = plan.kick_lo + draw(state, plan.kick_hi - plan.kick_lo + 1);
    if (phase > 0) kick(team, c, state, swaps);
    set_inverse(team, c);
    double f = linearise(team, c);
    const index_t moves = vmin<index_t>(plan.tabu_iters - used, plan.stall);
    const int tenure = plan.tenure_lo + draw(state, plan.tenure_hi - plan.tenure_lo + 1);
    f = local_search(team, c, f, moves, tenure, w);
    used += moves;
    if (f > best_f + c.eps) {
      best_f = f;
      copy_ints(team, c.keep, c.pi, N);
    }
  }
  return best_f;
}

// pi <- the warm start: a valid 0/1 (partial) assignment is taken as is, anything else is rounded by a LAP
// (partial: the pairs maximising sum (init - 1/2)).
template <class Team, typename T>
LVMMED_TEAM_FN void start_from_init(const Team& team, QAPSearch<T>& c, const T* init) {
  const int N = c.g.N, M = c.g.M;
  Best bad = no_best();
  team.range(N, [&](index_t i) {
    int ones = 0, col = -1;
    for (int a = 0; a < M; ++a) {
      const double v = qv(init, i * M + a);
      if (v == 1.0) {
        ++ones;
        col = a;
      } else if (v != 0.0) {
        ones = 2;
      }
    }
    if (ones > 1 || (ones == 0 && !c.partial && N <= M)) offer(bad, 1.0, 0);
    c.pi[i] = col;
  });
  team.range(M, [&](index_t a) {
    int ones = 0;
    for (int i = 0; i < N; ++i) ones += qv(init, i * M + a) == 1.0;
    if (ones > 1) offer(bad, 1.0, 0);
  });
  bad = team.argmax(bad);
  if (bad.value > 0) {
    const double shift = c.partial ? 0.5 : 0.0;
    const auto score = [&](int i, int a) { return qv(init, static_cast<index_t>(i) * M + a) - shift; };
    lap_assign(team, N, M, score, true, c.partial, c.lap, c.rows, c.pi);
  }
  team.sync();
}

// The driver: multi-start descent, then tabu search + optional random-kick restarts ("ls", "ils") or the iterated
// tabu search ("its"), within the plan's move budget and time limit; the best assignment -> out.
template <class Team, typename T>
LVMMED_TEAM_FN void search_solve(const Team& team, QAPSearch<T>& c, const SearchPlan& plan, const T* init,
                                 std::int64_t* out, std::uint64_t graph_id) {
  const int N = c.g.N, M = c.g.M;
  const Stopwatch w{plan.time_limit_ns > 0 ? team.clock_ns() : 0, plan.time_limit_ns};
  search_setup(team, c);
  double best_f = -kInf;
  bool state_is_keep = false;  // the search state (pi, L) is the kept assignment
  team.range(N, [&](index_t i) { c.keep[i] = -1; });
  team.sync();
  if (plan.multistart || init == nullptr) {
    const auto score = [&](int i, int a) { return c.U[static_cast<index_t>(i) * M + a]; };
    lap_assign(team, N, M, score, true, c.partial, c.lap, c.rows, c.pi);
    best_f = try_start(team, c, plan, best_f, state_is_keep, w);
  }
  if (init != nullptr) {
    start_from_init(team, c, init);
    best_f = try_start(team, c, plan, best_f, state_is_keep, w);
  }
  if (plan.multistart && plan.ga.steps > 0 && !time_up(team, w)) {
    softassign(team, c, plan.ga);
    const index_t ldx = M + 1;
    const auto from_x = [&](int i, int a) {
      const double x = c.X[i * ldx + a];
      return c.partial ? x - 0.5 * (c.X[i * ldx + M] + c.X[N * ldx + a]) : x;
    };
    lap_assign(team, N, M, from_x, true, c.partial, c.lap, c.rows, c.pi);
    best_f = try_start(team, c, plan, best_f, state_is_keep, w);
    const auto from_s = [&](int i, int a) { return c.S[static_cast<index_t>(i) * M + a]; };
    lap_assign(team, N, M, from_s, true, c.partial, c.lap, c.rows, c.pi);
    best_f = try_start(team, c, plan, best_f, state_is_keep, w);
  }
  if (plan.iterated) {
    best_f =
        plan.dense ? dense_its(team, c, plan, best_f, graph_id, w) : generic_its(team, c, plan, best_f, graph_id, w);
  } else if (plan.tabu_iters > 0 && !time_up(team, w)) {
    double f = best_f;
    if (!state_is_keep) {
      copy_ints(team, c.pi, c.keep, N);
      set_inverse(team, c);
      f = linearise(team, c);
    }
    f = local_search(team, c, f, plan.tabu_iters, plan.tenure, w);
    if (f > best_f + c.eps) {
      best_f = f;
      copy_ints(team, c.keep, c.pi, N);
    }
  }
  for (int k = 0; k < plan.kicks && !time_up(team, w); ++k) {
    copy_ints(team, c.pi, c.keep, N);
    kick(team, c, stream_of(plan, graph_id, static_cast<std::uint64_t>(k)), plan.kick_size);
    best_f = try_start(team, c, plan, best_f, state_is_keep, w);
  }
  team.range(N, [&](index_t i) { out[i] = c.keep[i]; });
  team.sync();
}

}  // namespace lvmmed::detail
