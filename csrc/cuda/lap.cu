// CUDA kernel of the exact batched linear assignment: one thread block per problem (lap_engine.h run by a
// BlockTeam): the column scans of each shortest-path step are parallel across the block's threads.
#include "block_team.cuh"
#include "cuda_common.cuh"
#include "lvmmed/detail/lap_engine.h"
#include "lvmmed/qap.h"
#include "team_launch.cuh"

namespace lvmmed::cuda {
namespace {

index_t lap_team_bytes(LapShape s) {
  const index_t big = std::max(s.N, s.M);
  return 8 * detail::lap_doubles(big, s.M + s.N) + 4 * (detail::lap_ints(big, s.M + s.N) + 2 * big) + 8;
}

TeamLaunch lap_launch(LapShape s, bool partial) {
  return plan_team_launch(s.G, lap_team_bytes(s), team_threads(s.M + (partial ? s.N : 0)));
}

template <typename T>
__global__ void __launch_bounds__(512)
    lap_kernel(const T* __restrict__ score, std::int64_t* __restrict__ assign, LapShape s, bool maximize, bool partial,
               double* duals, unsigned char* workspace, index_t bytes, bool use_smem) {
  LVMMED_DYNAMIC_SHARED(unsigned char, smem);
  LVMMED_SHARED(detail::Best, red, [kTeamMaxWarps]);
  const BlockTeam team{red};
  unsigned char* base = use_smem ? smem : workspace + static_cast<index_t>(blockIdx.x) * bytes;
  const index_t big = s.N > s.M ? s.N : s.M;
  double* d = reinterpret_cast<double*>(base);
  int* k = reinterpret_cast<int*>(d + detail::lap_doubles(big, s.M + s.N));
  const detail::LapWork w = detail::lap_work_at(d, k, big, s.M + s.N);
  int* rows = k + detail::lap_ints(big, s.M + s.N);
  int* out = rows + big;
  const int N = static_cast<int>(s.N), M = static_cast<int>(s.M);
  for (index_t g = blockIdx.x; g < s.G; g += gridDim.x) {
    const T* sg = score + g * s.N * s.M;
    const auto sc = [&](int i, int a) { return static_cast<double>(sg[static_cast<index_t>(i) * M + a]); };
    detail::lap_assign(team, N, M, sc, maximize, partial, w, rows, out, duals ? duals + g * s.M : nullptr);
    team.range(s.N, [&](index_t i) { assign[g * s.N + i] = out[i]; });
    team.sync();
  }
}

template <typename T>
cudaError_t launch(const T* score, std::int64_t* assign, void* workspace, LapShape s, bool maximize, bool partial,
                   double* duals, cudaStream_t stream) {
  if (s.G == 0 || s.N == 0) return cudaSuccess;
  const TeamLaunch l = lap_launch(s, partial);
  LVMMED_CUDA_TRY(prepare_team_kernel(lap_kernel<T>, l));
  LVMMED_LAUNCH(l.blocks, l.threads, l.use_smem ? l.bytes : 0, stream, lap_kernel<T>)
  (score, assign, s, maximize, partial, duals, static_cast<unsigned char*>(workspace), l.bytes, l.use_smem);
  return cudaGetLastError();
}

}  // namespace

index_t linear_assignment_workspace_bytes(DType, LapShape s, bool partial) {
  return lap_launch(s, partial).workspace_bytes;
}

cudaError_t linear_assignment(DType dtype, const void* score, std::int64_t* assign, void* workspace, LapShape s,
                              bool maximize, bool partial, double* duals, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32:
      return launch(static_cast<const float*>(score), assign, workspace, s, maximize, partial, duals, stream);
    case DType::Float64:
      return launch(static_cast<const double*>(score), assign, workspace, s, maximize, partial, duals, stream);
    default:
      return cudaErrorInvalidValue;  // the glue computes float16/bfloat16 in float32
  }
}

}  // namespace lvmmed::cuda
