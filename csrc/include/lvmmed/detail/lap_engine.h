// Exact linear assignment for one problem, run by a team (see team.h): the shortest-augmenting-path Hungarian
// method with row/column potentials (O(n^2 m) worst case). The scan over the columns of each Dijkstra step is the
// parallel part (team.range + a team argmax), the path bookkeeping is done by the leader. Deterministic: the same
// tie-breaking on the CPU and on CUDA.
#pragma once
#include "lvmmed/detail/team.h"

namespace lvmmed::detail {

// Scratch of one LAP with n <= n_max rows and m <= m_max columns (pointers into team-shared memory).
struct LapWork {
  double* u;         // [n_max] row potentials
  double* v;         // [m_max] column potentials
  double* shortest;  // [m_max] shortest-path distances of the current augmentation
  int* path;         // [m_max] row preceding each column on its shortest path
  int* row4col;      // [m_max] row matched to each column, -1 = free
  int* scanned;      // [m_max] column settled in the current augmentation
  int* col4row;      // [n_max] column matched to each row, -1 = none
  int* visited;      // [n_max] row reached in the current augmentation
  int* rem;          // [m_max] the unsettled columns (serial path)
};

// Doubles and ints a LapWork needs for problems of up to n_max rows and m_max columns.
LVMMED_HD_FN index_t lap_doubles(index_t n_max, index_t m_max) {
  return n_max + 2 * m_max;
}
LVMMED_HD_FN index_t lap_ints(index_t n_max, index_t m_max) {
  return 4 * m_max + 2 * n_max;
}

LVMMED_TEAM_FN LapWork lap_work_at(double* d, int* k, index_t n_max, index_t m_max) {
  LapWork w;
  w.u = d;
  w.v = w.u + n_max;
  w.shortest = w.v + m_max;
  w.path = k;
  w.row4col = w.path + m_max;
  w.scanned = w.row4col + m_max;
  w.col4row = w.scanned + m_max;
  w.visited = w.col4row + n_max;
  w.rem = w.visited + n_max;
  return w;
}

// Min-cost assignment of all n rows to distinct columns among m >= n; cost(i, j) for 0-based i < n, j < m.
// Writes col_of_row[i]. All threads of the team must call it.
//
// Shortest augmenting paths with lazy dual updates: rows start with u_i = min_j cost(i, j) and take their
// cheapest column when it is free (most rows of a random problem are settled here); every other row is inserted by
// a Dijkstra over the columns on the reduced costs cost - u - v >= 0, the potentials of the settled columns and
// visited rows being updated once per augmentation. Column ties prefer a free column, then the lowest index.
// duals (may be null): column potentials [m] of a previous, similar problem to start from (warm start), and the
// final column potentials on return.
template <class Team, class Cost>
LVMMED_TEAM_FN void lap_min(const Team& team, int n, int m, const Cost& cost, const LapWork& w, int* col_of_row,
                            double* duals = nullptr) {
  team.range(m, [&](index_t j) {
    w.v[j] = duals != nullptr ? vmin(duals[j], 0.0) : 0.0;  // v <= 0 keeps unmatched columns (m > n) optimal
    w.row4col[j] = -1;
  });
  team.sync();
  team.range(n, [&](index_t i) {  // row reduction; the cheapest column of row i parked in col4row[i]
    double best = kInf;
    int arg = 0;
    for (int j = 0; j < m; ++j) {
      const double c = cost(static_cast<int>(i), j) - w.v[j];
      if (c < best) {
        best = c;
        arg = j;
      }
    }
    w.u[i] = best;
    w.col4row[i] = arg;
  });
  team.sync();
  if (team.leader()) {  // greedy: a row takes its cheapest column if still free (tight: cost - u - 0 = 0)
    for (int i = 0; i < n; ++i) {
      const int j = w.col4row[i];
      if (w.row4col[j] < 0) {
        w.row4col[j] = i;
      } else {
        w.col4row[i] = -1;
      }
    }
  }
  team.sync();
  for (int cur = 0; cur < n; ++cur) {
    if (w.col4row[cur] >= 0) continue;
    team.range(m, [&](index_t j) {
      w.shortest[j] = kInf;
      w.scanned[j] = 0;
      w.rem[j] = static_cast<int>(j);
    });
    team.range(n, [&](index_t i) { w.visited[i] = 0; });
    team.sync();
    double min_val = 0;
    int i = cur, sink = -1;
    for (int step = 0; step < m && sink < 0; ++step) {  // each step settles one column
      const double ui = w.u[i];
      Best best = no_best();
      if constexpr (Team::kSerial) {  // over the unsettled columns only (a shrinking list), branch-free relaxation
        double* __restrict sh = w.shortest;
        int* __restrict path = w.path;
        const double* __restrict v = w.v;
        const int* __restrict rc = w.row4col;
        const int* __restrict rem = w.rem;
        const int nrem = m - step;
        const double base = min_val - ui;
        double bv = kInf;
        for (int k = 0; k < nrem; ++k) {
          const int j = rem[k];
          const double r = base + cost(i, j) - v[j];
          const double old = sh[j];
          const bool closer = r < old;
          const double sj = closer ? r : old;
          sh[j] = sj;
          path[j] = closer ? i : path[j];
          bv = sj < bv ? sj : bv;
        }
        int bj = -1, bfree = 0, bk = -1;
        for (int k = 0; k < nrem; ++k) {  // among the minimal columns: a free one first, then the lowest index
          const int j = rem[k];
          if (sh[j] != bv) continue;
          const int fj = rc[j] < 0;
          if (bk < 0 || fj > bfree || (fj == bfree && j < bj)) {
            bj = j;
            bfree = fj;
            bk = k;
          }
        }
        w.rem[bk] = w.rem[nrem - 1];  // settle bj
        w.rem[nrem - 1] = bj;
        best = {-bv, (bfree ? 0 : m) + bj};
      } else {
        team.range(m, [&](index_t j) {
          if (w.scanned[j]) return;
          // the serial path's operation order: bit-identical reduced costs, so the same ties on CPU and CUDA
          const double r = (min_val - ui) + cost(i, static_cast<int>(j)) - w.v[j];
          if (r < w.shortest[j]) {
            w.shortest[j] = r;
            w.path[j] = i;
          }
          offer(best, -w.shortest[j], (w.row4col[j] >= 0 ? m : 0) + j);  // ties: a free column first
        });
        best = team.argmax(best);
      }
      const int j = static_cast<int>(best.code >= m ? best.code - m : best.code);
      min_val = -best.value;
      if (team.leader()) w.scanned[j] = 1;
      if (w.row4col[j] < 0) {
        sink = j;
      } else {
        i = w.row4col[j];
        if (team.leader()) w.visited[i] = 1;
      }
      team.sync();
    }
    // dual updates of the settled columns and the rows reached, then augmentation along the path to the sink
    team.range(n, [&](index_t r) {
      if (r == cur)
        w.u[r] += min_val;
      else if (w.visited[r])
        w.u[r] += min_val - w.shortest[w.col4row[r]];
    });
    team.range(m, [&](index_t j) {
      if (w.scanned[j]) w.v[j] -= min_val - w.shortest[j];
    });
    team.sync();
    if (team.leader()) {
      int j = sink;
      for (int guard = 0; guard <= n && j >= 0; ++guard) {
        const int r = w.path[j];
        w.row4col[j] = r;
        const int prev = w.col4row[r];
        w.col4row[r] = j;
        j = prev;
        if (r == cur) break;
      }
    }
    team.sync();
  }
  team.range(n, [&](index_t r) { col_of_row[r] = w.col4row[r]; });
  if (duals != nullptr) team.range(m, [&](index_t j) { duals[j] = w.v[j]; });
  team.sync();
}

// Assignment of an N x M score matrix, score(i, a) -> assign[i] (column, or -1 when unmatched).
//   partial = false: min(N, M) pairs (every row when N <= M, every column otherwise);
//   partial = true: any number of pairs; leaving a row and a column unmatched scores 0.
// `rows` is int scratch of max(N, M) entries. LapWork sized for lap_doubles/lap_ints(max(N, M), M + N).
// duals: as for lap_min (used when !partial and N <= M; ignored otherwise).
template <class Team, class Score>
LVMMED_TEAM_FN void lap_assign(const Team& team, int N, int M, const Score& score, bool maximize, bool partial,
                               const LapWork& w, int* rows, int* assign, double* duals = nullptr) {
  const double sign = maximize ? -1.0 : 1.0;
  team.range(N, [&](index_t i) { assign[i] = -1; });
  team.sync();
  if (N == 0) return;
  if (partial) {
    const auto cost = [&](int i, int j) { return j < M ? sign * static_cast<double>(score(i, j)) : 0.0; };
    lap_min(team, N, M + N, cost, w, rows);
    team.range(N, [&](index_t i) { assign[i] = rows[i] < M ? rows[i] : -1; });
  } else if (N <= M) {
    const auto cost = [&](int i, int j) { return sign * static_cast<double>(score(i, j)); };
    lap_min(team, N, M, cost, w, rows, duals);
    team.range(N, [&](index_t i) { assign[i] = rows[i]; });
  } else {  // more rows than columns: assign every column to a row
    const auto cost = [&](int a, int i) { return sign * static_cast<double>(score(i, a)); };
    lap_min(team, M, N, cost, w, rows);
    team.sync();
    team.range(M, [&](index_t a) { assign[rows[a]] = static_cast<int>(a); });
  }
  team.sync();
}

}  // namespace lvmmed::detail
