// Test-side control of the CUDA emulator (csrc/emu): the emulated device's attributes, the schedule of threads and
// blocks, the access checker, launch counters and the reports of the last launches. Bound to Python by
// python/emu_module.cpp.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lvmmed::emu {

// What the emulated device answers to cudaDeviceGetAttribute (an H100 SXM by default).
struct DeviceProps {
  int multiprocessors = 132;
  int max_threads_per_block = 1024;
  int max_block_x = 1024, max_block_y = 1024, max_block_z = 64;
  int max_grid_x = 2147483647, max_grid_y = 65535, max_grid_z = 65535;
  int smem_per_block = 48 * 1024;     // without opt-in
  int smem_per_block_optin = 232448;  // 227 KB, the sm_90 opt-in maximum (sm_80: 163 KB)
  int smem_per_multiprocessor = 233472;
  int cc_major = 9, cc_minor = 0;
};
DeviceProps& device_props();
// Back to the defaults; also forgets cudaFuncSetAttribute and the static shared memory sizes learnt from launches.
void reset_device_props();

// The order in which runnable threads of a block, and the blocks of a grid, are run: in index order, in reverse
// index order, or in a seeded random order (the same seed gives the same order). A race-free kernel gives the same
// result under every order.
enum class Schedule : int { Forward = 0, Reverse = 1, Shuffle = 2 };
void set_schedule(Schedule s, std::uint64_t seed);

// The access checker (needs kernels compiled with -fsanitize=thread): off, or on (the default).
void set_checks(bool on);
bool checks_on();
bool checker_compiled_in();

// Launches per kernel name since the last reset (template arguments left out), and what they covered.
struct LaunchStats {
  std::int64_t launches = 0;
  std::int64_t multi_block = 0;      // with more than one block
  std::int64_t multi_warp = 0;       // with more than one warp per block
  std::int64_t dynamic_smem = 0;     // with dynamic shared memory
  std::int64_t no_dynamic_smem = 0;  // without (the team kernels' global-workspace path)
  std::int64_t opt_in = 0;           // with more than 48 KB of shared memory per block (after cudaFuncSetAttribute)
  std::int64_t at_grid_cap = 0;      // with a grid as large as a lowered device limit along some axis
};
std::map<std::string, LaunchStats> launch_stats();
std::map<std::string, std::int64_t> launch_counts();
void reset_launch_counts();

// One problem the emulator found in a launch: "race", "uninitialised", "out-of-bounds", "barrier", "warp",
// "deadlock", "shared-memory", "config" or "exception", with a readable description (source lines of both
// accesses for a race).
struct Report {
  std::string kind, kernel, message;
};
// The reports of the launches since the last call (cleared by it). A launch with a report also fails with
// cudaErrorLaunchFailure (config errors with the code the hardware gives), so the CUDA glue raises.
std::vector<Report> take_reports();
std::int64_t total_reports();

// Barriers and warp collectives that completed since the last reset (the tests check that shapes reach them).
struct Counters {
  std::int64_t blocks = 0, barriers = 0, warp_collectives = 0, checked_accesses = 0;
};
Counters counters();
void reset_counters();

}  // namespace lvmmed::emu
