// Self-test kernels of the CUDA emulator (tests/test_cuda_emulator.py): one correct kernel and one kernel per defect
// the emulator must report (a shared-memory race, a missing barrier, a race between blocks, a divergent full-mask
// shuffle, a barrier in divergent code, uninitialised and out-of-bounds shared memory). Plain CUDA: nvcc
// compile-checks this file with the real kernels.
#include <cstring>

#include "../cuda/cuda_common.cuh"
#include "toy_kernels.h"

namespace lvmmed::toys {
namespace {

using cuda::warp_sum;

// Correct: the block sums of x, added into out[0] atomically, through shared memory, barriers and shuffles.
__global__ void block_sum_kernel(const float* x, float* out, int n) {
  LVMMED_SHARED(float, partial, [32]);
  float v = 0;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v += x[i];
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.0f;
    v = warp_sum(v);
    if (threadIdx.x == 0) atomicAdd(out, v);
  }
}

// Missing barrier: every thread writes its slot, then reads its neighbour's without __syncthreads() between.
__global__ void missing_barrier_kernel(float* x) {
  LVMMED_SHARED(float, s, [1024]);
  const unsigned t = threadIdx.x;
  s[t] = x[t];
  x[t] = s[(t + 1) % blockDim.x];
}

// Race: every thread increments one shared counter with a plain read-modify-write.
__global__ void racy_counter_kernel(int* out) {
  LVMMED_SHARED(int, count, [1]);
  if (threadIdx.x == 0) count[0] = 0;
  __syncthreads();
  count[0] += 1;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = count[0];
}

// Race between blocks: thread 0 of every block writes out[0].
__global__ void block_race_kernel(float* out) {
  if (threadIdx.x == 0) out[0] = static_cast<float>(blockIdx.x);
}

// Divergent full-mask shuffle: only lanes 0-15 of each warp reach it.
__global__ void divergent_shuffle_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// Barrier in divergent code: only the first warp reaches __syncthreads().
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 32) __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// Uninitialised shared memory: threads 32.. read slots that no thread wrote.
__global__ void uninit_shared_kernel(float* out) {
  LVMMED_SHARED(float, s, [64]);
  if (threadIdx.x < 32) s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

// n floats of dynamic shared memory per block, written, then summed by thread 0 into out[blockIdx.x].
__global__ void dynamic_smem_kernel(float* out, int n) {
  LVMMED_DYNAMIC_SHARED(float, s);
  for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = static_cast<float>(i);
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0;
    for (int i = 0; i < n; ++i) t += s[i];
    out[blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z)] = t;
  }
}

// Out-of-bounds shared memory: one float per thread in a dynamic array of n floats (n < blockDim.x).
__global__ void shared_overflow_kernel(float* out, int n) {
  LVMMED_DYNAMIC_SHARED(float, s);
  if (static_cast<int>(threadIdx.x) < n + 1) s[threadIdx.x] = 1.0f;
  out[threadIdx.x] = 0.0f;
}

// Every warp collective the emulator offers, 8 results per thread: __shfl_sync from lane + 3, __shfl_up_sync by 1,
// __shfl_down_sync by 2, __shfl_xor_sync by 5 within segments of 16 lanes, __ballot_sync of lane % 3 == 0,
// __any_sync(lane == 5), __all_sync(lane < 31), and a shuffle among lanes 0-15 only (mask 0xffff).
__global__ void warp_ops_kernel(int* out) {
  const int t = static_cast<int>(threadIdx.x), lane = t % 32;
  int* o = out + 8 * t;
  o[0] = __shfl_sync(0xffffffffu, lane * 10, (lane + 3) % 32);
  o[1] = __shfl_up_sync(0xffffffffu, lane, 1);
  o[2] = __shfl_down_sync(0xffffffffu, lane, 2);
  o[3] = __shfl_xor_sync(0xffffffffu, lane, 5, 16);
  o[4] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 3 == 0));
  o[5] = __any_sync(0xffffffffu, lane == 5);
  o[6] = __all_sync(0xffffffffu, lane < 31);
  __syncwarp();
  o[7] = lane < 16 ? __shfl_xor_sync(0xffffu, lane, 1) : -1;
}

}  // namespace

cudaError_t run_toy_kernel(const char* name, void* buf, int n, dim3 grid, dim3 block, std::size_t smem, int opt_in,
                           cudaStream_t stream) {
  float* f = static_cast<float*>(buf);
  const auto is = [&](const char* k) { return std::strcmp(name, k) == 0; };
  if (is("block_sum")) {
    LVMMED_LAUNCH(grid, block, smem, stream, block_sum_kernel)(f + 1, f, n - 1);
  } else if (is("missing_barrier")) {
    LVMMED_LAUNCH(grid, block, smem, stream, missing_barrier_kernel)(f);
  } else if (is("racy_counter")) {
    LVMMED_LAUNCH(grid, block, smem, stream, racy_counter_kernel)(static_cast<int*>(buf));
  } else if (is("block_race")) {
    LVMMED_LAUNCH(grid, block, smem, stream, block_race_kernel)(f);
  } else if (is("divergent_shuffle")) {
    LVMMED_LAUNCH(grid, block, smem, stream, divergent_shuffle_kernel)(f);
  } else if (is("divergent_barrier")) {
    LVMMED_LAUNCH(grid, block, smem, stream, divergent_barrier_kernel)(f);
  } else if (is("uninit_shared")) {
    LVMMED_LAUNCH(grid, block, smem, stream, uninit_shared_kernel)(f);
  } else if (is("dynamic_smem")) {
    if (opt_in > 0)
      LVMMED_CUDA_TRY(cudaFuncSetAttribute(dynamic_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, opt_in));
    LVMMED_LAUNCH(grid, block, smem, stream, dynamic_smem_kernel)(f, n);
  } else if (is("warp_ops")) {
    LVMMED_LAUNCH(grid, block, smem, stream, warp_ops_kernel)(static_cast<int*>(buf));
  } else if (is("shared_overflow")) {
    LVMMED_LAUNCH(grid, block, smem, stream, shared_overflow_kernel)(f, n);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace lvmmed::toys
