// How the local-affinity glue splits the Gram matrix y_s . y_t^T into bounded chunks (shared by CPU and CUDA glue).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "lvmmed/local_affinity.h"

namespace lvmmed::glue {

// Workspace bound of one Gram chunk, in elements: all graphs in one batched product when they fit (the
// ResNet-50 shape G=12, N=M=16, P=Q=49 needs 7.4M), else whole graphs, else blocks of source nodes of one graph.
constexpr int64_t kGramChunkElements = int64_t{1} << 24;

inline std::vector<GramChunk> gram_chunks(const LocalAffinityShape& s, int64_t cap = kGramChunkElements) {
  std::vector<GramChunk> chunks;
  const int64_t per_node = s.P * s.M * s.Q, per_graph = s.N * per_node;
  if (per_graph == 0) return chunks;  // empty result
  if (per_graph <= cap) {
    const int64_t graphs = std::max<int64_t>(1, cap / per_graph);
    for (int64_t g0 = 0; g0 < s.G; g0 += graphs) chunks.push_back({g0, std::min(graphs, s.G - g0), 0, s.N});
  } else {
    const int64_t nodes = std::max<int64_t>(1, cap / per_node);
    for (int64_t g = 0; g < s.G; ++g)
      for (int64_t i0 = 0; i0 < s.N; i0 += nodes) chunks.push_back({g, 1, i0, std::min(nodes, s.N - i0)});
  }
  return chunks;
}

inline int64_t max_chunk_elements(const std::vector<GramChunk>& chunks, const LocalAffinityShape& s) {
  int64_t most = 0;
  for (const auto& c : chunks) most = std::max(most, c.graphs * c.nodes * s.P * s.M * s.Q);
  return most;
}

}  // namespace lvmmed::glue
