// CPU emulation of the part of the CUDA runtime and device model that csrc/cuda uses (test-only).
//
// The CUDA sources are compiled as host C++ with csrc/emu/include first on the include path, so that <cuda_runtime.h>,
// <cuda_fp16.h> and <cuda_bf16.h> resolve to this layer. A launch runs the kernel's blocks one after another; the
// threads of a block are fibers on one OS thread (csrc/emu/runtime.cpp), so __syncthreads() is a real barrier, and
// a warp's shuffles exchange values only among the lanes of their mask once every lane of the mask has arrived.
// Memory accesses of the kernels are checked for races by the access checker (csrc/emu/checker.cpp) when the
// kernel sources are compiled with -fsanitize=thread (the compiler's instrumentation, our own runtime).
// Nothing here measures speed: timing, coalescing, occupancy and nvcc's code generation are out of reach.
#pragma once
#include <math.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "lvmmed_emu/half.h"

#ifndef LVMMED_EMULATED
#define LVMMED_EMULATED 1
#endif

// ---- qualifiers: host C++ has one address space ---------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

// The attribute of the emulator's own inline helpers: not instrumented, so the access checker sees only the
// kernels' accesses.
#define LVMMED_EMU_UNCHECKED __attribute__((no_sanitize_thread))

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// ---- runtime API: errors, devices, attributes, streams, copies -------------------------------------------------
enum cudaError : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorInvalidDevice = 101,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
};
using cudaError_t = cudaError;

enum cudaDeviceAttr : int {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxBlockDimX = 2,
  cudaDevAttrMaxBlockDimY = 3,
  cudaDevAttrMaxBlockDimZ = 4,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxGridDimY = 6,
  cudaDevAttrMaxGridDimZ = 7,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

enum cudaFuncAttribute : int {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

enum cudaMemcpyKind : int {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t err);
const char* cudaGetErrorName(cudaError_t err);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemset(void* dst, int value, size_t bytes);

namespace lvmmed::emu {
cudaError_t func_set_attribute(const void* kernel, cudaFuncAttribute attr, int value);
}  // namespace lvmmed::emu

template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute attr, int value) {
  return ::lvmmed::emu::func_set_attribute(reinterpret_cast<const void*>(kernel), attr, value);
}

// ---- device side: built-in variables, barriers, warp collectives, atomics ---------------------------------------
namespace lvmmed::emu {

struct ThreadState;  // one emulated thread (a fiber)
extern __attribute__((tls_model("initial-exec"))) thread_local ThreadState* tl_thread;

LVMMED_EMU_UNCHECKED const uint3& thread_idx();
LVMMED_EMU_UNCHECKED const uint3& block_idx();
LVMMED_EMU_UNCHECKED const dim3& block_dim();
LVMMED_EMU_UNCHECKED const dim3& grid_dim();

void syncthreads(const char* file, int line);
void syncwarp(const char* file, int line, unsigned mask = 0xffffffffu);
void threadfence();

enum class Shfl : int { Idx = 0, Up = 1, Down = 2, Xor = 3, Ballot = 4, Any = 5, All = 6 };
// One warp-collective step of the calling lane: waits for every lane of `mask`, returns the 64-bit payload this lane
// receives (Idx/Up/Down/Xor: the source lane's value, or its own when the source is outside the width; Ballot:
// the vote mask; Any/All: 0/1).
std::uint64_t warp_collective(const char* file, int line, Shfl kind, unsigned mask, std::uint64_t value, int arg,
                              int width);

template <typename T>
LVMMED_EMU_UNCHECKED T shfl(const char* file, int line, Shfl kind, unsigned mask, T v, int arg, int width = 32) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move values of at most 8 bytes");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_collective(file, line, kind, mask, bits, arg, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

LVMMED_EMU_UNCHECKED inline unsigned vote(const char* file, int line, Shfl kind, unsigned mask, bool pred) {
  return static_cast<unsigned>(warp_collective(file, line, kind, mask, pred ? 1u : 0u, 0, 32));
}

// Static __shared__ arrays of a block: the storage of declaration `key` (one per declaration and kernel
// instantiation), allocated in the block's shared memory by the first thread that reaches it.
void* static_shared(const void* key, std::size_t bytes, std::size_t align);
// The block's dynamic shared memory (the launch's third configuration argument).
void* dynamic_shared();

// Atomics on device memory: one thread at a time runs, so they are plain read-modify-writes, reported to the
// access checker as atomic accesses (which never race with each other).
int atomic_add(int* p, int v);
unsigned atomic_add(unsigned* p, unsigned v);
unsigned long long atomic_add(unsigned long long* p, unsigned long long v);
float atomic_add(float* p, float v);
double atomic_add(double* p, double v);
int atomic_or(int* p, int v);
unsigned atomic_or(unsigned* p, unsigned v);
int atomic_and(int* p, int v);
unsigned atomic_and(unsigned* p, unsigned v);
int atomic_max(int* p, int v);
int atomic_min(int* p, int v);
int atomic_exch(int* p, int v);
int atomic_cas(int* p, int compare, int v);
unsigned long long atomic_cas(unsigned long long* p, unsigned long long compare, unsigned long long v);

// ---- launches ---------------------------------------------------------------------------------------------------
struct LaunchConfig {
  const char* name;  // the kernel's name, template arguments left out
  const void* kernel;
  dim3 grid, block;
  std::size_t dynamic_smem;
  cudaStream_t stream;
};

// Runs body(thread) for every thread of every block (see runtime.cpp); the launch's errors become cudaGetLastError().
using ThreadBody = void (*)(const void* args);
void run_launch(const LaunchConfig& cfg, ThreadBody body, const void* args);

template <typename... P>
struct Launcher {
  void (*kernel)(P...);
  LaunchConfig cfg;

  template <typename... A>
  void operator()(A&&... a) const {
    // The arguments are converted to the parameter types once, as a CUDA launch copies them into constant memory;
    // every thread receives its own copy, as its parameters.
    struct Args {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> values;
    } args{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(a)...)};
    run_launch(cfg, &Launcher::thread_body<Args>, &args);
  }

  template <typename Args>
  LVMMED_EMU_UNCHECKED static void thread_body(const void* p) {
    const Args& args = *static_cast<const Args*>(p);
    std::apply(args.kernel, args.values);
  }
};

template <typename... P>
Launcher<P...> make_launcher(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, std::size_t smem,
                             cudaStream_t stream) {
  return Launcher<P...>{kernel, LaunchConfig{name, reinterpret_cast<const void*>(kernel), grid, block, smem, stream}};
}

}  // namespace lvmmed::emu

#define threadIdx (::lvmmed::emu::thread_idx())
#define blockIdx (::lvmmed::emu::block_idx())
#define blockDim (::lvmmed::emu::block_dim())
#define gridDim (::lvmmed::emu::grid_dim())
#define warpSize 32

#define __syncthreads() ::lvmmed::emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::lvmmed::emu::syncwarp(__FILE__, __LINE__, ##__VA_ARGS__)
#define __threadfence() ::lvmmed::emu::threadfence()
#define __threadfence_block() ::lvmmed::emu::threadfence()

#define __shfl_sync(mask, v, ...) \
  ::lvmmed::emu::shfl(__FILE__, __LINE__, ::lvmmed::emu::Shfl::Idx, (mask), (v), __VA_ARGS__)
#define __shfl_up_sync(mask, v, ...) \
  ::lvmmed::emu::shfl(__FILE__, __LINE__, ::lvmmed::emu::Shfl::Up, (mask), (v), __VA_ARGS__)
#define __shfl_down_sync(mask, v, ...) \
  ::lvmmed::emu::shfl(__FILE__, __LINE__, ::lvmmed::emu::Shfl::Down, (mask), (v), __VA_ARGS__)
#define __shfl_xor_sync(mask, v, ...) \
  ::lvmmed::emu::shfl(__FILE__, __LINE__, ::lvmmed::emu::Shfl::Xor, (mask), (v), __VA_ARGS__)
#define __ballot_sync(mask, pred) ::lvmmed::emu::vote(__FILE__, __LINE__, ::lvmmed::emu::Shfl::Ballot, (mask), (pred))
#define __any_sync(mask, pred) \
  static_cast<int>(::lvmmed::emu::vote(__FILE__, __LINE__, ::lvmmed::emu::Shfl::Any, (mask), (pred)))
#define __all_sync(mask, pred) \
  static_cast<int>(::lvmmed::emu::vote(__FILE__, __LINE__, ::lvmmed::emu::Shfl::All, (mask), (pred)))

// The %globaltimer register (cuda_common.cuh reads it by inline PTX): the host's steady clock in nanoseconds.
unsigned long long lvmmed_globaltimer_ns();

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

#define atomicAdd(p, v) ::lvmmed::emu::atomic_add((p), (v))
#define atomicOr(p, v) ::lvmmed::emu::atomic_or((p), (v))
#define atomicAnd(p, v) ::lvmmed::emu::atomic_and((p), (v))
#define atomicMax(p, v) ::lvmmed::emu::atomic_max((p), (v))
#define atomicMin(p, v) ::lvmmed::emu::atomic_min((p), (v))
#define atomicExch(p, v) ::lvmmed::emu::atomic_exch((p), (v))
#define atomicCAS(p, c, v) ::lvmmed::emu::atomic_cas((p), (c), (v))

// ---- the two spellings csrc/cuda uses instead of CUDA's own syntax (nvcc's definitions: cuda_common.cuh) ---------
// LVMMED_LAUNCH(grid, block, smem, stream, kernel)(args...)   kernel<<<grid, block, smem, stream>>>(args...)
#define LVMMED_LAUNCH(grid, block, smem, stream, ...) \
  ::lvmmed::emu::make_launcher(#__VA_ARGS__, __VA_ARGS__, (grid), (block), (smem), (stream))
// LVMMED_SHARED(T, name, [dims]);   __shared__ T name[dims];
#define LVMMED_SHARED(T, name, dims)              \
  static const char lvmmed_shared_key_##name = 0; \
  auto& name =                                    \
      *static_cast<T(*) dims>(::lvmmed::emu::static_shared(&lvmmed_shared_key_##name, sizeof(T dims), alignof(T)))
// LVMMED_DYNAMIC_SHARED(T, name);   extern __shared__ __align__(8) T name[];
#define LVMMED_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::lvmmed::emu::dynamic_shared())
