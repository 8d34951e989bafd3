// CPU kernel of the exact batched linear assignment: the team LAP of lap_engine.h run by one thread per graph.
#include <algorithm>
#include <vector>

#include "lvmmed/detail/lap_engine.h"
#include "lvmmed/qap.h"

namespace lvmmed::cpu {

template <typename T>
void linear_assignment(const T* score, std::int64_t* assign, LapShape s, bool maximize, bool partial, double* duals,
                       index_t g_begin, index_t g_end) {
  const int N = static_cast<int>(s.N), M = static_cast<int>(s.M);
  const index_t big = std::max(s.N, s.M);
  std::vector<double> d(detail::lap_doubles(big, s.M + s.N));
  std::vector<int> k(detail::lap_ints(big, s.M + s.N) + 2 * big);
  const detail::LapWork w = detail::lap_work_at(d.data(), k.data(), big, s.M + s.N);
  int* rows = k.data() + detail::lap_ints(big, s.M + s.N);
  int* out = rows + big;
  const detail::SerialTeam team;
  for (index_t g = g_begin; g < g_end; ++g) {
    const T* sg = score + g * s.N * s.M;
    const auto sc = [&](int i, int a) { return sg[static_cast<index_t>(i) * M + a]; };
    detail::lap_assign(team, N, M, sc, maximize, partial, w, rows, out, duals ? duals + g * s.M : nullptr);
    for (int i = 0; i < N; ++i) assign[g * s.N + i] = out[i];
  }
}

template void linear_assignment<float>(const float*, std::int64_t*, LapShape, bool, bool, double*, index_t, index_t);
template void linear_assignment<double>(const double*, std::int64_t*, LapShape, bool, bool, double*, index_t, index_t);

}  // namespace lvmmed::cpu
