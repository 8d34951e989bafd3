// Internal state of the CUDA emulator shared by its scheduler (runtime.cpp) and its access checker (checker.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "control.h"
#include "lvmmed_emu/cuda.h"

namespace lvmmed::emu {

constexpr int kWarp = 32;
constexpr int kMaxWarps = 32;

enum class Wait : int { Running, Ready, Barrier, Warp, Done };

// One emulated thread: a fiber with its own stack.
struct ThreadState {
  void* sp = nullptr;  // saved stack pointer while suspended
  uint3 idx{0, 0, 0};
  int linear = 0, warp = 0, lane = 0;
  Wait wait = Wait::Ready;
  const char* file = nullptr;  // where it waits
  int line = 0;
  std::uint64_t result = 0;  // the value a completed warp collective hands this lane
};

// A warp collective that some lanes of a warp have reached.
struct WarpCollective {
  bool pending = false;
  Shfl kind = Shfl::Idx;
  unsigned mask = 0, arrived = 0;
  int width = 32;
  const char* file = nullptr;
  int line = 0;
  std::uint64_t values[kWarp] = {};
  int args[kWarp] = {};
};

struct StaticShared {
  const void* key;
  std::size_t offset, bytes;
};

// The block being run (one at a time, on one OS thread).
struct BlockState {
  const LaunchConfig* cfg = nullptr;
  std::uint64_t launch = 0;    // serial number of the launch
  std::uint64_t linear = 0;    // linear block index within the grid
  std::uint64_t interval = 0;  // serial number of the current barrier interval (unique over all blocks)
  uint3 idx{0, 0, 0};
  int nthreads = 0, live = 0, at_barrier = 0, exited = 0;
  const char* bar_file = nullptr;
  int bar_line = 0;
  unsigned exited_lanes[kMaxWarps] = {};
  WarpCollective warps[kMaxWarps];
  std::vector<ThreadState>* threads = nullptr;
  bool aborted = false;
  // shared memory: [dynamic | red zone | static 1 | red zone | static 2 | ...] inside the arena
  unsigned char* smem = nullptr;
  std::size_t smem_capacity = 0, dynamic_bytes = 0, used = 0, static_bytes = 0;
  std::vector<StaticShared> statics;
};

extern BlockState* g_block;  // the block being run, or null
extern std::int64_t g_checked_accesses;
extern std::uint64_t g_interval_serial;  // barrier intervals so far (every block and barrier starts one)
constexpr std::size_t kRedZone = 64;

// Fiber stacks live in one region: accesses there are a thread's private locals and are never checked.
extern std::uintptr_t g_stack_lo, g_stack_hi;

// Reports (runtime.cpp): record one; `fatal` stops the block (deadlock, divergence).
void report(const char* kind, const std::string& message);
[[noreturn]] void fatal(const char* kind, const std::string& message);
std::string thread_name(int linear);
std::string source_line(const void* pc);  // "file:line (function)" of a code address

// Checker (checker.cpp).
void checker_begin_launch();
void checker_begin_block();                                   // new interval, shared memory written-map cleared
void checker_mark_written(const void* p, std::size_t bytes);  // shared memory made defined by the emulator
enum class Access : int { Read = 0, Write = 1, Atomic = 2 };
void check_access(const void* addr, std::size_t size, Access kind, const void* pc);

}  // namespace lvmmed::emu
