// Launch shape of the one-block-per-problem ("team") kernels: the per-problem scratch lives in dynamic shared
// memory when it fits (opt-in limit of the device), otherwise in a global workspace, one slice per block, with
// blocks looping over the problems.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda_common.cuh"
#include "lvmmed/common.h"

namespace lvmmed::cuda {

struct TeamLaunch {
  unsigned blocks = 0;
  int threads = 128;
  bool use_smem = false;
  index_t bytes = 0;            // scratch bytes per team (8-byte multiple)
  index_t workspace_bytes = 0;  // global workspace (0 with shared memory)
};

// Static shared memory of the team kernels besides the dynamic scratch (the reduction slots), with some slack.
constexpr index_t kTeamStaticSmem = 1024;

inline TeamLaunch plan_team_launch(index_t problems, index_t bytes_per_team, int threads) {
  TeamLaunch l;
  l.threads = threads;
  l.bytes = (bytes_per_team + 7) / 8 * 8;
  int dev = 0, optin = 48 * 1024, sms = 108;
  if (cudaGetDevice(&dev) == cudaSuccess) {
    cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  }
  cudaGetLastError();  // attribute queries must not leave a sticky error behind
  l.use_smem = l.bytes + kTeamStaticSmem <= static_cast<index_t>(optin);
  const index_t cap =
      std::min(l.use_smem ? (index_t{1} << 30) : 4 * static_cast<index_t>(std::max(sms, 1)), max_grid_dim(0));
  l.blocks = static_cast<unsigned>(std::max<index_t>(1, std::min(problems, cap)));
  l.workspace_bytes = l.use_smem ? 0 : static_cast<index_t>(l.blocks) * l.bytes;
  return l;
}

// Threads of a team kernel whose parallel loops run over about `width` items.
inline int team_threads(index_t width) {
  return width <= 128 ? 128 : (width <= 512 ? 256 : 512);
}

// Opt the kernel into the dynamic shared memory of the launch (no-op for the global-workspace path). Without the
// opt-in a block gets 48 KB of shared memory in all, the kernel's static reduction slots included, so the opt-in is
// needed from 48 KB - kTeamStaticSmem of dynamic scratch on (e.g. a 300 x 700 LAP: 48808 bytes + 512 static).
template <typename Kernel>
cudaError_t prepare_team_kernel(Kernel kernel, const TeamLaunch& l) {
  if (!l.use_smem || l.bytes + kTeamStaticSmem <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(l.bytes));
}

}  // namespace lvmmed::cuda
