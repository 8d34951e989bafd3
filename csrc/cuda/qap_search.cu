// CUDA kernel of the approximate QAP search (qap_engine.h run by a BlockTeam): one thread block per graph, the
// per-graph state (gradient L, assignment, adjacency, softassign buffers, LAP scratch) in shared memory when it
// fits (N <= 64 with kNN edges), in a global workspace slice otherwise; blocks loop over the graphs.
#include "block_team.cuh"
#include "cuda_common.cuh"
#include "lvmmed/detail/qap_engine.h"
#include "lvmmed/qap.h"
#include "team_launch.cuh"

namespace lvmmed::cuda {
namespace {

constexpr int kSearchThreads = 256;  // at most; __launch_bounds__ keeps two blocks per SM (<= 128 registers)

bool needs_ga(const QAPSearchOptions& o) {
  return o.multistart && o.ga_steps > 0;
}

TeamLaunch search_launch(QAPShape s, const QAPSearchOptions& o) {
  const index_t Es = s.has_edges ? s.Es : 0, Et = s.has_edges ? s.Et : 0;
  const bool dense = o.iterated && detail::dense_swaps(s, o.partial);
  const index_t bytes = detail::qap_layout(s.N, s.M, Es, Et, true, needs_ga(o), dense).bytes();
  return plan_team_launch(s.G, bytes, std::min(kSearchThreads, team_threads(std::max(s.N * s.N / 4, s.M + s.N))));
}

template <typename T>
__global__ void __launch_bounds__(kSearchThreads, 2)
    qap_search_kernel(QAPInputs<T> in, const T* init, std::int64_t* __restrict__ assign, QAPShape s,
                      detail::SearchPlan plan, bool partial, bool need_ga, unsigned char* workspace, index_t bytes,
                      bool use_smem) {
  LVMMED_DYNAMIC_SHARED(unsigned char, smem);
  LVMMED_SHARED(detail::Best, red, [kTeamMaxWarps]);
  const BlockTeam team{red};
  void* ws = use_smem ? static_cast<void*>(smem) : static_cast<void*>(workspace + blockIdx.x * bytes);
  for (index_t g = blockIdx.x; g < s.G; g += gridDim.x) {
    auto c = detail::qap_search_at(detail::graph_of(in, s, g), ws, partial, true, need_ga, plan.dense);
    detail::search_solve(team, c, plan, init ? init + g * s.N * s.M : nullptr, assign + g * s.N,
                         static_cast<std::uint64_t>(g));
    team.sync();
  }
}

template <typename T>
cudaError_t launch(const QAPInputs<void>& in, const void* init, std::int64_t* assign, void* workspace, QAPShape s,
                   const QAPSearchOptions& o, cudaStream_t stream) {
  if (s.G == 0 || s.N == 0) return cudaSuccess;
  const TeamLaunch l = search_launch(s, o);
  LVMMED_CUDA_TRY(prepare_team_kernel(qap_search_kernel<T>, l));
  const detail::SearchPlan plan = detail::make_search_plan(o, s);
  LVMMED_LAUNCH(l.blocks, l.threads, l.use_smem ? l.bytes : 0, stream, qap_search_kernel<T>)
  (typed_inputs<T>(in), static_cast<const T*>(init), assign, s, plan, o.partial, needs_ga(o),
   static_cast<unsigned char*>(workspace), l.bytes, l.use_smem);
  return cudaGetLastError();
}

}  // namespace

index_t qap_search_workspace_bytes(DType, QAPShape s, QAPSearchOptions o) {
  return search_launch(s, o).workspace_bytes;
}

cudaError_t qap_search(DType dtype, QAPInputs<void> in, const void* init, std::int64_t* assign, void* workspace,
                       QAPShape s, QAPSearchOptions o, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32:
      return launch<float>(in, init, assign, workspace, s, o, stream);
    case DType::Float64:
      return launch<double>(in, init, assign, workspace, s, o, stream);
    default:
      return cudaErrorInvalidValue;  // the glue computes float16/bfloat16 in float32
  }
}

}  // namespace lvmmed::cuda
