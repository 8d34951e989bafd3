// Exact linear assignment for one problem, run by a team (see team.h): the shortest-augmenting-path Hungarian
// method with row/column potentials (O(n^2 m)). The scan over the columns of each Dijkstra step is the parallel
// part (team.range + a team argmax), the path bookkeeping is done by the leader. Deterministic: ties go to the
// lowest column, on the CPU and on CUDA alike.
#pragma once
#include "lvmmed/detail/team.h"

namespace lvmmed::detail {

// Scratch of one LAP with n <= n_max rows and m <= m_max columns (pointers into team-shared memory).
struct LapWork {
  double* u;     // [n_max + 1] row potentials
  double* v;     // [m_max + 1] column potentials
  double* minv;  // [m_max + 1] tentative distances
  int* p;        // [m_max + 1] row (1-based) matched to each column, 0 = none; p[0] is the row being inserted
  int* way;      // [m_max + 1] previous column on the shortest path
  int* used;     // [m_max + 1] column already reached in this Dijkstra
};

// Doubles and ints a LapWork needs for problems of up to n_max rows and m_max columns.
LVMMED_HD_FN index_t lap_doubles(index_t n_max, index_t m_max) {
  return (n_max + 1) + 2 * (m_max + 1);
}
LVMMED_HD_FN index_t lap_ints(index_t m_max) {
  return 3 * (m_max + 1);
}

// Min-cost assignment of all n rows to distinct columns among m >= n; cost(i, j) for 0-based i < n, j < m.
// Writes col_of_row[i] (0-based). All threads of the team must call it.
template <class Team, class Cost>
LVMMED_TEAM_FN void lap_min(const Team& team, int n, int m, const Cost& cost, const LapWork& w, int* col_of_row) {
  team.range(m + 1, [&](index_t j) {
    w.v[j] = 0;
    w.p[j] = 0;
  });
  team.range(n + 1, [&](index_t i) { w.u[i] = 0; });
  team.sync();
  for (int i = 1; i <= n; ++i) {
    if (team.leader()) w.p[0] = i;
    team.range(m + 1, [&](index_t j) {
      w.minv[j] = kInf;
      w.used[j] = 0;
    });
    team.sync();
    int j0 = 0;
    for (int step = 0; step <= m; ++step) {  // each step reaches a new column: at most m steps
      if (team.leader()) w.used[j0] = 1;
      team.sync();
      const int i0 = w.p[j0];
      const double ui0 = w.u[i0];
      Best best = no_best();
      team.range(m + 1, [&](index_t j) {
        if (j == 0 || w.used[j]) return;
        const double cur = cost(i0 - 1, static_cast<int>(j - 1)) - ui0 - w.v[j];
        if (cur < w.minv[j]) {
          w.minv[j] = cur;
          w.way[j] = j0;
        }
        offer(best, -w.minv[j], j);
      });
      best = team.argmax(best);
      const double delta = -best.value;
      const int j1 = static_cast<int>(best.code);
      team.range(m + 1, [&](index_t j) {
        if (w.used[j]) {
          w.u[w.p[j]] += delta;
          w.v[j] -= delta;
        } else {
          w.minv[j] -= delta;
        }
      });
      team.sync();
      j0 = j1;
      if (w.p[j0] == 0) break;
    }
    if (team.leader()) {  // augment along the path ending at the free column j0
      for (int guard = 0; j0 != 0 && guard <= m; ++guard) {
        const int j1 = w.way[j0];
        w.p[j0] = w.p[j1];
        j0 = j1;
      }
    }
    team.sync();
  }
  team.range(m, [&](index_t j) {
    if (w.p[j + 1] != 0) col_of_row[w.p[j + 1] - 1] = static_cast<int>(j);
  });
  team.sync();
}

// Assignment of an N x M score matrix, score(i, a) -> assign[i] (column, or -1 when unmatched).
//   partial = false: min(N, M) pairs (every row when N <= M, every column otherwise);
//   partial = true: any number of pairs; leaving a row and a column unmatched scores 0.
// `rows` is int scratch of max(N, M) entries. LapWork sized for lap_doubles(max(N,M), M + N), lap_ints(M + N).
template <class Team, class Score>
LVMMED_TEAM_FN void lap_assign(const Team& team, int N, int M, const Score& score, bool maximize, bool partial,
                               const LapWork& w, int* rows, int* assign) {
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
    lap_min(team, N, M, cost, w, rows);
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
