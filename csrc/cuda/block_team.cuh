// The CUDA team of the per-graph solvers (see csrc/include/lvmmed/detail/team.h): one thread block.
// Every thread of the block must call every member (block-wide barriers inside).
#pragma once
#include <cuda_runtime.h>

#include "cuda_common.cuh"
#include "lvmmed/detail/team.h"

namespace lvmmed::cuda {

constexpr int kTeamMaxWarps = 32;

struct BlockTeam {
  static constexpr bool kSerial = false;
  detail::Best* red;  // __shared__ scratch of kTeamMaxWarps entries

  __device__ bool leader() const { return threadIdx.x == 0; }
  __device__ void sync() const { __syncthreads(); }
  template <typename F>
  __device__ void range(index_t n, F&& f) const {
    for (index_t i = threadIdx.x; i < n; i += blockDim.x) f(i);
  }

  // Block-wide argmax (largest value, ties to the smallest code); every thread gets the result. blockDim.x must
  // be a multiple of 32.
  __device__ detail::Best argmax(detail::Best b) const {
    b = warp_argmax(b);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();  // the previous reduction's readers are done with red
    if (lane == 0) red[warp] = b;
    __syncthreads();
    if (warp == 0) {
      const int n_warps = static_cast<int>((blockDim.x + 31) / 32);
      b = warp_argmax(lane < n_warps ? red[lane] : detail::no_best());
      if (lane == 0) red[kTeamMaxWarps - 1] = b;
    }
    __syncthreads();
    return red[kTeamMaxWarps - 1];
  }

  // The GPU's global timer in nanoseconds as the leader read it, broadcast to the block (a reduction: every thread
  // must call it).
  __device__ std::int64_t clock_ns() const {
    const double t = leader() ? static_cast<double>(lvmmed_globaltimer_ns()) : -detail::kInf;
    return static_cast<std::int64_t>(argmax({t, 0}).value);
  }

 private:
  __device__ static detail::Best warp_argmax(detail::Best b) {
    for (int off = 16; off > 0; off >>= 1) {
      detail::Best o;
      o.value = __shfl_down_sync(0xffffffffu, b.value, off);
      o.code = static_cast<std::int64_t>(__shfl_down_sync(0xffffffffu, static_cast<long long>(b.code), off));
      if (detail::better(o, b)) b = o;
    }
    return b;
  }
};

}  // namespace lvmmed::cuda
