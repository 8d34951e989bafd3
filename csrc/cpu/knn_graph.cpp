// CPU kernel of the batched kNN graph: per node, squared distances to every other node and a partial sort.
#include "lvmmed/knn_graph.h"

#include <algorithm>
#include <vector>

#include "vec.h"

namespace lvmmed::cpu {

template <typename T>
void knn_graph(const T* z, std::int64_t* edges, KnnGraphShape s, index_t g_begin, index_t g_end) {
  std::vector<T> d(s.N);
  std::vector<index_t> order;
  order.reserve(s.N);
  const auto nearer = [&d](index_t a, index_t b) { return d[a] < d[b] || (d[a] == d[b] && a < b); };
  for (index_t g = g_begin; g < g_end; ++g) {
    const T* zg = z + g * s.N * s.F;
    std::int64_t* eg = edges + g * s.N * s.k * 2;
    for (index_t i = 0; i < s.N; ++i) {
      order.clear();
      for (index_t j = 0; j < s.N; ++j) {
        if (j == i) continue;
        d[j] = squared_distance(zg + i * s.F, zg + j * s.F, s.F);
        order.push_back(j);
      }
      std::partial_sort(order.begin(), order.begin() + s.k, order.end(), nearer);
      for (index_t r = 0; r < s.k; ++r) {
        eg[(i * s.k + r) * 2] = i;
        eg[(i * s.k + r) * 2 + 1] = order[r];
      }
    }
  }
}

template void knn_graph<float>(const float*, std::int64_t*, KnnGraphShape, index_t, index_t);
template void knn_graph<double>(const double*, std::int64_t*, KnnGraphShape, index_t, index_t);

}  // namespace lvmmed::cpu
