// The CUDA emulator's runtime: launches, the per-block scheduler of fibers (one per CUDA thread), barriers, warp
// collectives, shared memory, atomics, the runtime API subset and the device attributes. Not instrumented: only the
// kernels' own accesses reach the access checker.
#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include "control.h"
#include "state.h"

// ---- fibers: a minimal context switch (the callee-saved registers), x86-64 System V
// ---------------------------------- The MXCSR and x87 control words are not switched: every fiber runs in the
// launching thread's floating-point mode.
#if defined(__x86_64__)
extern "C" void lvmmed_emu_switch(void** save_sp, void* to_sp);
extern "C" void lvmmed_emu_fiber_start();
asm(R"(
    .text
    .globl lvmmed_emu_switch
    .hidden lvmmed_emu_switch
    .type lvmmed_emu_switch, @function
lvmmed_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size lvmmed_emu_switch, .-lvmmed_emu_switch

    .globl lvmmed_emu_fiber_start
    .hidden lvmmed_emu_fiber_start
    .type lvmmed_emu_fiber_start, @function
lvmmed_emu_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size lvmmed_emu_fiber_start, .-lvmmed_emu_fiber_start
)");
#else
#error "the CUDA emulator's fibers are written for x86-64 (csrc/emu/runtime.cpp)"
#endif

namespace lvmmed::emu {

__attribute__((tls_model("initial-exec"))) thread_local ThreadState* tl_thread = nullptr;
BlockState* g_block = nullptr;
std::int64_t g_checked_accesses = 0;
std::uint64_t g_interval_serial = 0;
std::uintptr_t g_stack_lo = 0, g_stack_hi = 0;

namespace {

constexpr std::size_t kStackBytes = 256 * 1024;  // per fiber, a guard page below
constexpr int kMaxThreads = 1024;
constexpr std::size_t kArenaBytes = 512 * 1024;  // shared memory of a block, red zones included
constexpr std::size_t kArenaTail = 64 * 1024;    // trailing red zone

std::recursive_mutex g_mutex;  // one launch at a time
DeviceProps g_props;
Schedule g_schedule = Schedule::Forward;
std::uint64_t g_seed = 0;
std::uint64_t g_launch_serial = 0;
std::map<std::string, LaunchStats> g_launch_stats;
std::unordered_map<const void*, int> g_max_dynamic;        // cudaFuncAttributeMaxDynamicSharedMemorySize
std::unordered_map<const void*, std::size_t> g_static_of;  // static shared bytes, once a block has run
std::vector<Report> g_reports;
std::int64_t g_total_reports = 0;
Counters g_counters;

thread_local cudaError_t tl_last_error = cudaSuccess;
thread_local std::string tl_error_detail;
thread_local cudaError_t tl_detail_code = cudaSuccess;

// per launch
void* g_sched_sp = nullptr;
ThreadBody g_body = nullptr;
const void* g_args = nullptr;
std::vector<ThreadState> g_threads;
std::size_t g_launch_reports = 0;  // reports of the current launch
cudaError_t g_launch_code = cudaSuccess;
unsigned char* g_arena = nullptr;
std::size_t g_arena_dirty = 0;  // high-water mark of the bytes used since the last poisoning

unsigned char* stack_pool() {
  static unsigned char* pool = [] {
    const std::size_t bytes = kStackBytes * kMaxThreads;
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      std::fprintf(stderr, "lvmmed emulator: cannot reserve %zu bytes of fiber stacks\n", bytes);
      std::abort();
    }
    auto* base = static_cast<unsigned char*>(p);
    const long page = sysconf(_SC_PAGESIZE);
    for (int i = 0; i < kMaxThreads; ++i) mprotect(base + i * kStackBytes, static_cast<std::size_t>(page), PROT_NONE);
    g_stack_lo = reinterpret_cast<std::uintptr_t>(base);
    g_stack_hi = g_stack_lo + bytes;
    return base;
  }();
  return pool;
}

unsigned char* arena() {
  if (g_arena == nullptr) {
    void* p = nullptr;
    if (posix_memalign(&p, 4096, kArenaBytes + kArenaTail) != 0) std::abort();
    g_arena = static_cast<unsigned char*>(p);
    std::memset(g_arena, 0xff, kArenaBytes + kArenaTail);
  }
  return g_arena;
}

std::size_t round_up(std::size_t n, std::size_t a) {
  return (n + a - 1) / a * a;
}

std::string kernel_name(const char* spelled) {
  std::string s(spelled);
  const auto lt = s.find('<');
  if (lt != std::string::npos) s.resize(lt);
  while (!s.empty() && (s.back() == ' ' || s.back() == ')')) s.pop_back();
  while (!s.empty() && (s.front() == ' ' || s.front() == '(')) s.erase(s.begin());
  const auto colons = s.rfind("::");
  if (colons != std::string::npos) s = s.substr(colons + 2);
  return s;
}

const char* collective_name(Shfl kind) {
  switch (kind) {
    case Shfl::Idx:
      return "__shfl_sync";
    case Shfl::Up:
      return "__shfl_up_sync";
    case Shfl::Down:
      return "__shfl_down_sync";
    case Shfl::Xor:
      return "__shfl_xor_sync";
    case Shfl::Ballot:
      return "__ballot_sync";
    case Shfl::Any:
      return "__any_sync";
    case Shfl::All:
      return "__all_sync";
  }
  return "warp collective";
}

std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

std::string at(const char* file, int line) {
  std::string f = file ? file : "?";
  const auto pos = f.rfind("csrc/");
  if (pos != std::string::npos) f = f.substr(pos);
  return f + ":" + std::to_string(line);
}

// "lanes 0-15, 17" of a lane mask
std::string lanes(unsigned mask) {
  std::string out;
  for (int l = 0; l < kWarp;) {
    if (!(mask >> l & 1u)) {
      ++l;
      continue;
    }
    int e = l;
    while (e + 1 < kWarp && (mask >> (e + 1) & 1u)) ++e;
    if (!out.empty()) out += ", ";
    out += e > l ? std::to_string(l) + "-" + std::to_string(e) : std::to_string(l);
    l = e + 1;
  }
  return out.empty() ? "none" : out;
}

std::string block_name(const BlockState& b) {
  return "(" + std::to_string(b.idx.x) + "," + std::to_string(b.idx.y) + "," + std::to_string(b.idx.z) + ")";
}

void yield(ThreadState& t) {
  lvmmed_emu_switch(&t.sp, g_sched_sp);
}

void release_barrier(BlockState& b) {
  for (int i = 0; i < b.nthreads; ++i)
    if (g_threads[i].wait == Wait::Barrier) g_threads[i].wait = Wait::Ready;
  b.at_barrier = 0;
  b.interval = ++g_interval_serial;
  ++g_counters.barriers;
}

unsigned present_lanes(const BlockState& b, int warp) {
  const int n = b.nthreads - warp * kWarp;
  return n >= kWarp ? 0xffffffffu : (1u << n) - 1u;
}

void complete_collective(BlockState& b, int warp) {
  WarpCollective& w = b.warps[warp];
  const unsigned mask = w.mask;
  std::uint64_t vote = 0;
  bool any = false, all = true;
  for (int l = 0; l < kWarp; ++l)
    if (mask >> l & 1u) {
      const bool p = w.values[l] != 0;
      vote |= static_cast<std::uint64_t>(p) << l;
      any |= p;
      all &= p;
    }
  for (int l = 0; l < kWarp; ++l) {
    if (!(mask >> l & 1u)) continue;
    ThreadState& t = g_threads[warp * kWarp + l];
    std::uint64_t r = 0;
    if (w.kind == Shfl::Ballot) {
      r = vote;
    } else if (w.kind == Shfl::Any) {
      r = any;
    } else if (w.kind == Shfl::All) {
      r = all;
    } else {
      const int width = w.width, seg = l & ~(width - 1), a = w.args[l];
      int src = l;
      if (w.kind == Shfl::Idx) src = seg + (a & (width - 1));
      if (w.kind == Shfl::Up && a >= 0 && l - seg >= a) src = l - a;
      if (w.kind == Shfl::Down && a >= 0 && l - seg + a < width) src = l + a;
      if (w.kind == Shfl::Xor) {
        src = l ^ a;
        if (src < 0 || src >= kWarp || (src & ~(width - 1)) > seg) src = l;
      }
      if (!(mask >> src & 1u))
        fatal("warp", std::string(collective_name(w.kind)) + " at " + at(w.file, w.line) + ": lane " +
                          std::to_string(l) + " of warp " + std::to_string(warp) + " reads lane " +
                          std::to_string(src) + ", which is not in the mask " + hex(mask) +
                          " (an undefined value on the GPU)");
      r = w.values[src];
    }
    t.result = r;
    if (t.wait == Wait::Warp) t.wait = Wait::Ready;
  }
  w.pending = false;
  w.arrived = 0;
  ++g_counters.warp_collectives;
}

void thread_exit(ThreadState& t) {
  BlockState& b = *g_block;
  --b.live;
  ++b.exited;
  const unsigned bit = 1u << t.lane;
  b.exited_lanes[t.warp] |= bit;
  const WarpCollective& w = b.warps[t.warp];
  if (w.pending && (w.mask & bit) && !(w.arrived & bit))
    fatal("warp", thread_name(t.linear) + " exited without arriving at the " + collective_name(w.kind) + " at " +
                      at(w.file, w.line) + " that lanes " + lanes(w.arrived) + " of warp " + std::to_string(t.warp) +
                      " wait at (mask " + hex(w.mask) + "): on the GPU they would read an undefined value");
  if (b.at_barrier > 0)
    fatal("barrier", thread_name(t.linear) + " exited while " + std::to_string(b.at_barrier) +
                         " thread(s) of its block wait at __syncthreads() at " + at(b.bar_file, b.bar_line) +
                         ": a barrier in divergent code");
}

extern "C" void lvmmed_emu_thread_main(ThreadState* t) {
  try {
    g_body(g_args);
  } catch (const std::exception& e) {
    report("exception", thread_name(t->linear) + " threw: " + e.what());
  } catch (...) {
    report("exception", thread_name(t->linear) + " threw an exception");
  }
  thread_exit(*t);
  t->wait = Wait::Done;
  yield(*t);
  __builtin_trap();  // a finished fiber is never resumed
}

// A fresh fiber for thread i: the frame lvmmed_emu_switch pops, returning into lvmmed_emu_fiber_start.
void* initial_stack(int i, ThreadState* t) {
  unsigned char* top = stack_pool() + static_cast<std::size_t>(i + 1) * kStackBytes;
  // after the 6 pops and the return, rsp = sp + 56 must be 16-byte aligned (the call in fiber_start then enters the
  // thread's main with the alignment the ABI promises)
  auto* sp = reinterpret_cast<std::uint64_t*>(top - 128 - 8);
  sp[0] = 0;                                                         // r15
  sp[1] = 0;                                                         // r14
  sp[2] = reinterpret_cast<std::uint64_t>(&lvmmed_emu_thread_main);  // r13: the function
  sp[3] = reinterpret_cast<std::uint64_t>(t);                        // r12: its argument
  sp[4] = 0;                                                         // rbx
  sp[5] = 0;                                                         // rbp
  sp[6] = reinterpret_cast<std::uint64_t>(&lvmmed_emu_fiber_start);  // return address
  return sp;
}

std::vector<std::uint64_t> order_of(std::uint64_t n, std::uint64_t salt) {
  std::vector<std::uint64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  if (g_schedule == Schedule::Reverse) std::reverse(order.begin(), order.end());
  if (g_schedule == Schedule::Shuffle) {
    std::mt19937_64 rng(g_seed ^ (salt * 0x9E3779B97F4A7C15ull));
    std::shuffle(order.begin(), order.end(), rng);
  }
  return order;
}

std::string describe_waits(const BlockState& b) {
  // group the live threads by where they wait
  std::map<std::string, std::vector<int>> where;
  for (int i = 0; i < b.nthreads; ++i) {
    const ThreadState& t = g_threads[i];
    if (t.wait == Wait::Done) continue;
    std::string w;
    if (t.wait == Wait::Barrier) w = "__syncthreads() at " + at(t.file, t.line);
    if (t.wait == Wait::Warp) {
      const WarpCollective& c = b.warps[t.warp];
      w = std::string(collective_name(c.kind)) + " at " + at(c.file, c.line) + " (warp " + std::to_string(t.warp) +
          ", mask " + hex(c.mask) + ", lanes " + lanes(c.mask & ~c.arrived) + " missing)";
    }
    where[w].push_back(i);
  }
  std::string out;
  for (const auto& [w, ids] : where) {
    std::string list;
    for (std::size_t k = 0; k < ids.size();) {
      std::size_t e = k;
      while (e + 1 < ids.size() && ids[e + 1] == ids[e] + 1) ++e;
      if (!list.empty()) list += ", ";
      list += e > k ? std::to_string(ids[k]) + "-" + std::to_string(ids[e]) : std::to_string(ids[k]);
      k = e + 1;
    }
    out += "; threads " + list + " wait at " + w;
  }
  return out;
}

void run_block(BlockState& b) {
  for (int i = 0; i < b.nthreads; ++i) {
    ThreadState& t = g_threads[i];
    t = ThreadState{};
    const unsigned bx = b.cfg->block.x, by = b.cfg->block.y;
    t.idx = {static_cast<unsigned>(i) % bx, static_cast<unsigned>(i) / bx % by, static_cast<unsigned>(i) / (bx * by)};
    t.linear = i;
    t.warp = i / kWarp;
    t.lane = i % kWarp;
    t.wait = Wait::Ready;
    t.sp = initial_stack(i, &t);
  }
  const auto order = order_of(static_cast<std::uint64_t>(b.nthreads), b.launch * 1315423911ull + b.linear);
  while (!b.aborted && b.live > 0) {
    bool ran = false;
    for (const std::uint64_t i : order) {
      ThreadState& t = g_threads[i];
      if (t.wait != Wait::Ready) continue;
      t.wait = Wait::Running;
      tl_thread = &t;
      lvmmed_emu_switch(&g_sched_sp, t.sp);
      tl_thread = nullptr;
      ran = true;
      if (b.aborted) break;
    }
    if (!ran && !b.aborted && b.live > 0) {
      report("deadlock", "block " + block_name(b) + " can make no progress" + describe_waits(b));
      b.aborted = true;
    }
  }
}

void set_launch_error(cudaError_t code, const std::string& detail) {
  tl_last_error = code;
  tl_detail_code = code;
  tl_error_detail = detail;
}

}  // namespace

// ---- reports -----------------------------------------------------------------------------------------------------
std::string thread_name(int linear) {
  const BlockState* b = g_block;
  std::string s = "thread " + std::to_string(linear);
  if (b != nullptr && linear >= 0 && linear < b->nthreads) {
    const uint3 i = g_threads[linear].idx;
    if (b->cfg->block.y > 1 || b->cfg->block.z > 1)
      s += " (" + std::to_string(i.x) + "," + std::to_string(i.y) + "," + std::to_string(i.z) + ")";
    s += " of block " + block_name(*b);
  }
  return s;
}

void report(const char* kind, const std::string& message) {
  const std::lock_guard<std::recursive_mutex> lock(g_mutex);
  const std::string kernel = g_block != nullptr ? kernel_name(g_block->cfg->name) : "";
  ++g_total_reports;
  ++g_launch_reports;
  if (g_reports.size() < 1000) g_reports.push_back({kind, kernel, message});
}

void fatal(const char* kind, const std::string& message) {
  report(kind, message);
  if (g_block != nullptr) g_block->aborted = true;
  ThreadState* t = tl_thread;
  if (t == nullptr) throw std::logic_error(message);  // never on a fiber: a misuse of the emulator itself
  t->wait = Wait::Done;
  yield(*t);
  __builtin_trap();
}

std::string source_line(const void* pc) {
  static std::unordered_map<const void*, std::string> cache;
  const auto it = cache.find(pc);
  if (it != cache.end()) return it->second;
  Dl_info info{};
  std::string out = "?";
  if (pc != nullptr && dladdr(pc, &info) != 0 && info.dli_fname != nullptr) {
    const auto offset = reinterpret_cast<std::uintptr_t>(pc) - reinterpret_cast<std::uintptr_t>(info.dli_fbase) - 1;
    char cmd[4096];
    std::snprintf(cmd, sizeof cmd, "addr2line -C -f -i -e '%s' 0x%zx 2>/dev/null", info.dli_fname,
                  static_cast<std::size_t>(offset));
    std::string text;
    if (FILE* f = popen(cmd, "r")) {
      char line[4096];
      while (std::fgets(line, sizeof line, f) != nullptr) text += line;
      pclose(f);
    }
    std::istringstream lines(text);
    std::string function, location;
    if (std::getline(lines, function) && std::getline(lines, location) && location.rfind("??", 0) != 0) {
      const auto pos = location.rfind("csrc/");
      if (pos != std::string::npos) location = location.substr(pos);
      for (std::size_t k; (k = function.find("(anonymous namespace)::")) != std::string::npos;) function.erase(k, 23);
      const auto paren = function.find('(');
      if (paren != std::string::npos) function.resize(paren);
      out = location + " (" + function + ")";
    } else {
      char buf[64];
      std::snprintf(buf, sizeof buf, "+0x%zx", static_cast<std::size_t>(offset));
      out = std::string(info.dli_fname) + buf;
    }
  }
  cache.emplace(pc, out);
  return out;
}

// ---- device side -------------------------------------------------------------------------------------------------
const uint3& thread_idx() {
  return tl_thread->idx;
}
const uint3& block_idx() {
  return g_block->idx;
}
const dim3& block_dim() {
  return g_block->cfg->block;
}
const dim3& grid_dim() {
  return g_block->cfg->grid;
}

void syncthreads(const char* file, int line) {
  ThreadState& t = *tl_thread;
  BlockState& b = *g_block;
  if (b.exited > 0)
    fatal("barrier", thread_name(t.linear) + " reaches __syncthreads() at " + at(file, line) + " after " +
                         std::to_string(b.exited) + " thread(s) of its block exited: a barrier in divergent code");
  if (b.at_barrier == 0) {
    b.bar_file = file;
    b.bar_line = line;
  } else if (line != b.bar_line || std::strcmp(file, b.bar_file) != 0) {
    fatal("barrier", thread_name(t.linear) + " waits at __syncthreads() at " + at(file, line) + " while " +
                         std::to_string(b.at_barrier) + " thread(s) wait at the one at " + at(b.bar_file, b.bar_line) +
                         ": a barrier in divergent code");
  }
  if (++b.at_barrier == b.live) {
    release_barrier(b);
    return;
  }
  t.wait = Wait::Barrier;
  t.file = file;
  t.line = line;
  yield(t);
}

void syncwarp(const char* file, int line, unsigned mask) {
  warp_collective(file, line, Shfl::All, mask, 1, 0, 32);
}

void threadfence() {}

std::uint64_t warp_collective(const char* file, int line, Shfl kind, unsigned mask, std::uint64_t value, int arg,
                              int width) {
  ThreadState& t = *tl_thread;
  BlockState& b = *g_block;
  WarpCollective& w = b.warps[t.warp];
  const unsigned bit = 1u << t.lane;
  const auto what = [&] { return std::string(collective_name(kind)) + " at " + at(file, line); };  // errors only
  if (!(mask & bit))
    fatal("warp", what() + ": " + thread_name(t.linear) + " (lane " + std::to_string(t.lane) +
                      ") is not in its own mask " + hex(mask));
  if (mask & ~present_lanes(b, t.warp))
    fatal("warp", what() + ": the mask " + hex(mask) + " names lanes " + lanes(mask & ~present_lanes(b, t.warp)) +
                      " that warp " + std::to_string(t.warp) + " of a " + std::to_string(b.nthreads) +
                      "-thread block does not have");
  if (mask & b.exited_lanes[t.warp])
    fatal("warp", what() + " (mask " + hex(mask) + "): lanes " + lanes(mask & b.exited_lanes[t.warp]) + " of warp " +
                      std::to_string(t.warp) + " have exited and never arrive: on the GPU " + thread_name(t.linear) +
                      " would read an undefined value");
  if (width < 1 || width > kWarp || (width & (width - 1)) != 0)
    fatal("warp", what() + ": width " + std::to_string(width) + " is not a power of 2 in [1, 32]");
  if (!w.pending) {
    w.pending = true;
    w.kind = kind;
    w.mask = mask;
    w.arrived = 0;
    w.width = width;
    w.file = file;
    w.line = line;
  } else if (w.kind != kind || w.mask != mask || w.width != width) {
    fatal("warp", "divergent warp collectives in warp " + std::to_string(t.warp) + " of block " + block_name(b) +
                      ": lane " + std::to_string(t.lane) + " calls " + what() + " (mask " + hex(mask) +
                      ") while lanes " + lanes(w.arrived) + " wait at the " + collective_name(w.kind) + " at " +
                      at(w.file, w.line) + " (mask " + hex(w.mask) + ")");
  }
  w.values[t.lane] = value;
  w.args[t.lane] = arg;
  w.arrived |= bit;
  if (w.arrived == w.mask) {
    complete_collective(b, t.warp);
    return t.result;
  }
  t.wait = Wait::Warp;
  t.file = file;
  t.line = line;
  yield(t);
  return t.result;
}

void* dynamic_shared() {
  return g_block->smem;
}

void* static_shared(const void* key, std::size_t bytes, std::size_t align) {
  BlockState& b = *g_block;
  for (const StaticShared& s : b.statics)
    if (s.key == key) return b.smem + s.offset;
  const std::size_t offset = round_up(b.used, std::max<std::size_t>(align, 16));
  const std::size_t stat = b.static_bytes + bytes, dyn = b.dynamic_bytes;
  const auto attr = g_max_dynamic.find(b.cfg->kernel);
  const std::string kernel = kernel_name(b.cfg->name);
  const DeviceProps& d = g_props;
  std::string why;
  if (attr == g_max_dynamic.end() && stat + dyn > static_cast<std::size_t>(d.smem_per_block))
    why = "more than the " + std::to_string(d.smem_per_block) +
          " bytes a block may use without cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize)";
  if (attr != g_max_dynamic.end() &&
      stat + static_cast<std::size_t>(attr->second) > static_cast<std::size_t>(d.smem_per_block_optin))
    why = "with the opted-in " + std::to_string(attr->second) + " dynamic bytes, more than the device's opt-in " +
          "maximum of " + std::to_string(d.smem_per_block_optin) + " bytes per block";
  if (!why.empty() || offset + bytes + kRedZone > kArenaBytes) {
    g_launch_code = cudaErrorInvalidValue;
    fatal("shared-memory", kernel + " asks for " + std::to_string(stat) + " bytes of static and " +
                               std::to_string(dyn) + " bytes of dynamic shared memory per block: " +
                               (why.empty() ? std::string("more than the emulator holds") : why) +
                               " (the launch fails on the GPU)");
  }
  b.statics.push_back({key, offset, bytes});
  b.static_bytes = stat;
  b.used = offset + bytes + kRedZone;
  g_arena_dirty = std::max(g_arena_dirty, b.used);
  return b.smem + offset;
}

// ---- atomics: plain read-modify-writes (one thread runs at a time), reported as atomic accesses -------------------
namespace {
template <typename T, typename F>
T atomic_rmw(T* p, F f, const void* pc) {
  check_access(p, sizeof(T), Access::Atomic, pc);
  const T old = *p;
  *p = f(old);
  return old;
}
}  // namespace

#define LVMMED_EMU_ATOMIC(name, T, expr)                                            \
  T name(T* p, T v) {                                                               \
    return atomic_rmw(p, [&](T old) { return expr; }, __builtin_return_address(0)); \
  }
LVMMED_EMU_ATOMIC(atomic_add, int, static_cast<int>(static_cast<unsigned>(old) + static_cast<unsigned>(v)))
LVMMED_EMU_ATOMIC(atomic_add, unsigned, old + v)
LVMMED_EMU_ATOMIC(atomic_add, unsigned long long, old + v)
LVMMED_EMU_ATOMIC(atomic_add, float, old + v)
LVMMED_EMU_ATOMIC(atomic_add, double, old + v)
LVMMED_EMU_ATOMIC(atomic_or, int, old | v)
LVMMED_EMU_ATOMIC(atomic_or, unsigned, old | v)
LVMMED_EMU_ATOMIC(atomic_and, int, old& v)
LVMMED_EMU_ATOMIC(atomic_and, unsigned, old& v)
LVMMED_EMU_ATOMIC(atomic_max, int, old > v ? old : v)
LVMMED_EMU_ATOMIC(atomic_min, int, old < v ? old : v)
LVMMED_EMU_ATOMIC(atomic_exch, int, (static_cast<void>(old), v))
#undef LVMMED_EMU_ATOMIC

int atomic_cas(int* p, int compare, int v) {
  return atomic_rmw(p, [&](int old) { return old == compare ? v : old; }, __builtin_return_address(0));
}
unsigned long long atomic_cas(unsigned long long* p, unsigned long long compare, unsigned long long v) {
  return atomic_rmw(p, [&](unsigned long long old) { return old == compare ? v : old; }, __builtin_return_address(0));
}

// ---- launches ------------------------------------------------------------------------------------------------------
void run_launch(const LaunchConfig& cfg, ThreadBody body, const void* args) {
  const std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (tl_thread != nullptr) {  // a launch from device code (dynamic parallelism) is not emulated
    report("config", "a kernel launch from inside a kernel (dynamic parallelism) is not emulated");
    return;
  }
  const std::string name = kernel_name(cfg.name);
  LaunchStats& stats = g_launch_stats[name];
  ++stats.launches;
  const DeviceProps& d = g_props;
  const auto bad_config = [&](cudaError_t code, const std::string& why) {
    g_reports.push_back({"config", name, why});
    ++g_total_reports;
    set_launch_error(code, "lvmmed emulator: launch of " + name + " failed: " + why);
  };
  const dim3 g = cfg.grid, bl = cfg.block;
  const std::uint64_t threads = std::uint64_t{bl.x} * bl.y * bl.z;
  if (bl.x == 0 || bl.y == 0 || bl.z == 0 || bl.x > static_cast<unsigned>(d.max_block_x) ||
      bl.y > static_cast<unsigned>(d.max_block_y) || bl.z > static_cast<unsigned>(d.max_block_z) ||
      threads > static_cast<std::uint64_t>(d.max_threads_per_block))
    return bad_config(cudaErrorInvalidConfiguration,
                      "blockDim (" + std::to_string(bl.x) + "," + std::to_string(bl.y) + "," + std::to_string(bl.z) +
                          ") is outside the device's limits (at most (" + std::to_string(d.max_block_x) + "," +
                          std::to_string(d.max_block_y) + "," + std::to_string(d.max_block_z) + ") and " +
                          std::to_string(d.max_threads_per_block) + " threads)");
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > static_cast<unsigned>(d.max_grid_x) ||
      g.y > static_cast<unsigned>(d.max_grid_y) || g.z > static_cast<unsigned>(d.max_grid_z))
    return bad_config(cudaErrorInvalidConfiguration,
                      "gridDim (" + std::to_string(g.x) + "," + std::to_string(g.y) + "," + std::to_string(g.z) +
                          ") is outside the device's limits (1 to (" + std::to_string(d.max_grid_x) + "," +
                          std::to_string(d.max_grid_y) + "," + std::to_string(d.max_grid_z) + "))");
  const auto attr = g_max_dynamic.find(cfg.kernel);
  const auto known = g_static_of.find(cfg.kernel);
  const std::size_t stat = known == g_static_of.end() ? 0 : known->second;
  const std::size_t dyn_limit = attr != g_max_dynamic.end() ? static_cast<std::size_t>(attr->second)
                                                            : static_cast<std::size_t>(d.smem_per_block) - stat;
  if (cfg.dynamic_smem > dyn_limit)
    return bad_config(cudaErrorInvalidValue,
                      std::to_string(cfg.dynamic_smem) + " bytes of dynamic shared memory per block exceed the " +
                          std::to_string(dyn_limit) + " bytes allowed " +
                          (attr != g_max_dynamic.end() ? "by cudaFuncSetAttribute"
                                                       : "without cudaFuncSetAttribute (48 KB less the static bytes)"));

  stack_pool();
  if (g_threads.size() < kMaxThreads) g_threads.resize(kMaxThreads);
  unsigned char* smem = arena();
  g_body = body;
  g_args = args;
  g_launch_reports = 0;
  g_launch_code = cudaSuccess;
  const std::uint64_t launch = ++g_launch_serial;
  checker_begin_launch();
  const std::uint64_t blocks = std::uint64_t{g.x} * g.y * g.z;
  // a seeded or reversed order needs the list of blocks; huge grids run in index order
  const bool ordered = g_schedule != Schedule::Forward && blocks <= (std::uint64_t{1} << 22);
  const std::vector<std::uint64_t> order = ordered ? order_of(blocks, launch) : std::vector<std::uint64_t>{};
  BlockState b;
  b.cfg = &cfg;
  b.launch = launch;
  b.nthreads = static_cast<int>(threads);
  b.threads = &g_threads;
  b.smem = smem;
  b.smem_capacity = kArenaBytes;
  for (std::uint64_t k = 0; k < blocks; ++k) {
    const std::uint64_t l = ordered ? order[k] : k;
    b.linear = l;
    b.idx = {static_cast<unsigned>(l % g.x), static_cast<unsigned>(l / g.x % g.y),
             static_cast<unsigned>(l / (std::uint64_t{g.x} * g.y))};
    b.interval = ++g_interval_serial;
    b.live = b.nthreads;
    b.at_barrier = b.exited = 0;
    b.bar_file = nullptr;
    std::fill(std::begin(b.exited_lanes), std::end(b.exited_lanes), 0u);
    for (WarpCollective& w : b.warps) w.pending = false;
    b.aborted = false;
    b.statics.clear();
    b.static_bytes = 0;
    b.dynamic_bytes = cfg.dynamic_smem;
    b.used = round_up(cfg.dynamic_smem, 16) + kRedZone;
    std::memset(smem, 0xff, std::max(g_arena_dirty, b.used));  // shared memory starts undefined: poison it
    g_arena_dirty = b.used;
    g_block = &b;
    checker_begin_block();
    run_block(b);
    g_block = nullptr;
    ++g_counters.blocks;
    g_static_of[cfg.kernel] = b.static_bytes;
    if (b.aborted) break;
  }
  g_body = nullptr;
  g_args = nullptr;
  const DeviceProps defaults{};
  stats.multi_block += blocks > 1;
  stats.multi_warp += threads > kWarp;
  stats.dynamic_smem += cfg.dynamic_smem > 0;
  stats.no_dynamic_smem += cfg.dynamic_smem == 0;
  stats.opt_in += cfg.dynamic_smem + g_static_of[cfg.kernel] > static_cast<std::size_t>(defaults.smem_per_block);
  stats.at_grid_cap += (d.max_grid_x < defaults.max_grid_x && g.x == static_cast<unsigned>(d.max_grid_x)) ||
                       (d.max_grid_y < defaults.max_grid_y && g.y == static_cast<unsigned>(d.max_grid_y)) ||
                       (d.max_grid_z < defaults.max_grid_z && g.z == static_cast<unsigned>(d.max_grid_z));
  if (g_launch_reports > 0) {
    // the first described problems (a repeat of an already described one has an empty message)
    std::string detail = "lvmmed emulator: " + name + ": ";
    std::size_t shown = 0;
    for (auto it = g_reports.end() - static_cast<std::ptrdiff_t>(std::min(g_launch_reports, g_reports.size()));
         it != g_reports.end() && shown < 3; ++it) {
      if (it->message.empty()) continue;
      detail += (shown++ ? " | " : "") + it->kind + ": " + it->message;
    }
    if (g_launch_reports > shown)
      detail += " (" + std::to_string(g_launch_reports - shown) + " more reports, also of the same code)";
    set_launch_error(g_launch_code != cudaSuccess ? g_launch_code : cudaErrorLaunchFailure, detail);
  } else {
    set_launch_error(cudaSuccess, "");
  }
}

cudaError_t func_set_attribute(const void* kernel, cudaFuncAttribute attr, int value) {
  const std::lock_guard<std::recursive_mutex> lock(g_mutex);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    const auto known = g_static_of.find(kernel);
    const int stat = known == g_static_of.end() ? 0 : static_cast<int>(known->second);
    if (value < 0 || value > g_props.smem_per_block_optin - stat) return cudaErrorInvalidValue;
    g_max_dynamic[kernel] = value;
    return cudaSuccess;
  }
  if (attr == cudaFuncAttributePreferredSharedMemoryCarveout)
    return value >= -1 && value <= 100 ? cudaSuccess : cudaErrorInvalidValue;
  return cudaErrorInvalidValue;
}

// ---- control
// ---------------------------------------------------------------------------------------------------------
DeviceProps& device_props() {
  return g_props;
}
void reset_device_props() {
  const std::lock_guard<std::recursive_mutex> lock(g_mutex);
  g_props = DeviceProps{};
  g_max_dynamic.clear();
  g_static_of.clear();
}
void set_schedule(Schedule s, std::uint64_t seed) {
  g_schedule = s;
  g_seed = seed;
}
std::map<std::string, LaunchStats> launch_stats() {
  const std::lock_guard<std::recursive_mutex> lock(g_mutex);
  return g_launch_stats;
}
std::map<std::string, std::int64_t> launch_counts() {
  const std::lock_guard<std::recursive_mutex> lock(g_mutex);
  std::map<std::string, std::int64_t> out;
  for (const auto& [name, st] : g_launch_stats) out[name] = st.launches;
  return out;
}
void reset_launch_counts() {
  const std::lock_guard<std::recursive_mutex> lock(g_mutex);
  g_launch_stats.clear();
}
std::vector<Report> take_reports() {
  const std::lock_guard<std::recursive_mutex> lock(g_mutex);
  std::vector<Report> out;
  out.swap(g_reports);
  return out;
}
std::int64_t total_reports() {
  return g_total_reports;
}
Counters counters() {
  Counters c = g_counters;
  c.checked_accesses = g_checked_accesses;
  return c;
}
void reset_counters() {
  g_counters = Counters{};
  g_checked_accesses = 0;
}

}  // namespace lvmmed::emu

// ---- the runtime API subset
// ------------------------------------------------------------------------------------------
using lvmmed::emu::g_props;

cudaError_t cudaGetLastError() {
  const cudaError_t e = lvmmed::emu::tl_last_error;
  lvmmed::emu::tl_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() {
  return lvmmed::emu::tl_last_error;
}
const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDeviceFunction:
      return "cudaErrorInvalidDeviceFunction";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorIllegalAddress:
      return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources:
      return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t err) {
  if (err != cudaSuccess && err == lvmmed::emu::tl_detail_code && !lvmmed::emu::tl_error_detail.empty())
    return lvmmed::emu::tl_error_detail.c_str();
  switch (err) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure";
    default:
      return cudaGetErrorName(err);
  }
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : cudaErrorInvalidDevice;
}
cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  const auto& d = g_props;
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock:
      *value = d.max_threads_per_block;
      return cudaSuccess;
    case cudaDevAttrMaxBlockDimX:
      *value = d.max_block_x;
      return cudaSuccess;
    case cudaDevAttrMaxBlockDimY:
      *value = d.max_block_y;
      return cudaSuccess;
    case cudaDevAttrMaxBlockDimZ:
      *value = d.max_block_z;
      return cudaSuccess;
    case cudaDevAttrMaxGridDimX:
      *value = d.max_grid_x;
      return cudaSuccess;
    case cudaDevAttrMaxGridDimY:
      *value = d.max_grid_y;
      return cudaSuccess;
    case cudaDevAttrMaxGridDimZ:
      *value = d.max_grid_z;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = d.smem_per_block;
      return cudaSuccess;
    case cudaDevAttrWarpSize:
      *value = 32;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *value = d.multiprocessors;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor:
      *value = d.cc_major;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = d.cc_minor;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
      *value = d.smem_per_multiprocessor;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = d.smem_per_block_optin;
      return cudaSuccess;
  }
  lvmmed::emu::tl_last_error = cudaErrorInvalidValue;
  return cudaErrorInvalidValue;
}
cudaError_t cudaDeviceSynchronize() {
  return cudaSuccess;  // launches run to completion before they return
}
cudaError_t cudaStreamSynchronize(cudaStream_t) {
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t) {
  if (bytes > 0 && (dst == nullptr || src == nullptr)) return cudaErrorInvalidValue;
  if (bytes > 0) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) {
  if (bytes > 0 && dst == nullptr) return cudaErrorInvalidValue;
  if (bytes > 0) std::memset(dst, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}
cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  return cudaMemsetAsync(dst, value, bytes, nullptr);
}

unsigned long long lvmmed_globaltimer_ns() {
  return static_cast<unsigned long long>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}
