// The emulator's access checker. The kernel sources are compiled with -fsanitize=thread, which makes the compiler
// call __tsan_read*/__tsan_write* before every memory access; this file defines those entry points (ThreadSanitizer's
// own runtime is not linked) and checks each access of a kernel against CUDA's memory model:
//   - two threads of a block touch the same byte between two __syncthreads(), one of them writing, not both atomic;
//   - two blocks of one launch touch the same global byte, one of them writing (blocks are not ordered);
//   - a thread reads shared memory that no thread of its block wrote (shared memory starts undefined);
//   - a shared-memory access outside the block's dynamic array and static __shared__ arrays.
// Shadow state is kept per 8-byte granule for aligned accesses of 8 bytes or more, per 4-byte word for other aligned
// accesses of 4 bytes or more, and per byte for smaller ones (byte and half-precision arrays written by neighbouring
// threads are not races); two accesses of different granules to the same bytes within one interval are not compared
// (no kernel here views one array with two element sizes at once). __syncwarp() is not modelled as an ordering point
// (no kernel here communicates through memory within a warp), so such code would be reported.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <set>
#include <unordered_map>

#include "control.h"
#include "state.h"

namespace lvmmed::emu {
namespace {

constexpr std::uint32_t kSeveral = 0xffffffffu;
constexpr int kChunkShift = 16;  // shadow is allocated per 64 KB of address space
constexpr std::size_t kChunk = std::size_t{1} << kChunkShift;

struct Cell {
  std::uint32_t interval = 0;                          // barrier interval (serial mod 2^32) of writer/reader/atomic
  std::uint32_t launch = 0;                            // launch (serial mod 2^32) of wblock/rblock/ablock
  std::uint32_t wblock = 0, rblock = 0, ablock = 0;    // linear block + 1 in that launch; kSeveral: several
  std::int16_t writer = -1, reader = -1, atomic = -1;  // thread in that interval; reader/atomic -2: several
  std::int16_t last_reader = -1;
  const void* wpc = nullptr;  // the last write or atomic update
  const void* rpc = nullptr;  // the last read
};

// Shadow cells of one granule size, in chunks found through a small direct-mapped cache.
template <int kShift>
struct Shadow {
  std::unordered_map<std::uintptr_t, std::unique_ptr<Cell[]>> chunks;
  struct Slot {
    std::uintptr_t chunk = ~std::uintptr_t{0};
    Cell* cells = nullptr;
  } cache[1024];

  Cell& at(std::uintptr_t a) {
    const std::uintptr_t c = a >> kChunkShift;
    Slot& s = cache[c & 1023];
    if (s.chunk != c) {
      auto& owned = chunks[c];
      if (!owned) owned = std::make_unique<Cell[]>(kChunk >> kShift);
      s.chunk = c;
      s.cells = owned.get();
    }
    return s.cells[(a & (kChunk - 1)) >> kShift];
  }
  void clear() {
    chunks.clear();
    for (Slot& s : cache) s = Slot{};
  }
};

Shadow<3> g_granules;  // 8-byte
Shadow<2> g_words;     // 4-byte
Shadow<0> g_bytes;
std::uint64_t g_shadow_epoch = 0;  // interval serial >> 31 at the last clear: 32-bit serials in cells stay unique
bool g_checks = true;
bool g_instrumented = false;
std::vector<unsigned char> g_written;  // shared memory: byte written in this block
std::size_t g_written_dirty = 0;
std::set<std::pair<const void*, const void*>> g_seen;  // (pc, other pc) reported in this launch

std::string shared_place(const BlockState& b, std::size_t off) {
  if (off < b.dynamic_bytes) return "byte " + std::to_string(off) + " of the dynamic shared array";
  for (std::size_t k = 0; k < b.statics.size(); ++k)
    if (off >= b.statics[k].offset && off < b.statics[k].offset + b.statics[k].bytes)
      return "byte " + std::to_string(off - b.statics[k].offset) + " of static __shared__ array #" +
             std::to_string(k + 1) + " (" + std::to_string(b.statics[k].bytes) + " bytes)";
  return "shared offset " + std::to_string(off);
}

std::string hex_address(std::uintptr_t a) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%zx", static_cast<std::size_t>(a));
  return buf;
}

const char* verb(Access k) {
  return k == Access::Read ? "reads" : (k == Access::Write ? "writes" : "updates atomically");
}

std::string block_of(std::uint64_t linear) {
  const dim3 g = g_block->cfg->grid;
  return "(" + std::to_string(linear % g.x) + "," + std::to_string(linear / g.x % g.y) + "," +
         std::to_string(linear / (std::uint64_t{g.x} * g.y)) + ")";
}

void race(bool shared, bool cross_block, std::uintptr_t a, std::size_t size, Access kind, const void* pc,
          const std::string& other, const void* opc) {
  if (!g_seen.insert({pc, opc}).second) {
    report("race", "");  // the launch fails; the description was given once
    return;
  }
  const BlockState& b = *g_block;
  const std::string place =
      shared ? shared_place(b, a - reinterpret_cast<std::uintptr_t>(b.smem)) : "global memory at " + hex_address(a);
  report("race",
         std::string("data race on ") + place + ": " + thread_name(tl_thread->linear) + " " + verb(kind) + " " +
             std::to_string(size) + " bytes at " + source_line(pc) + ", while " + other + " at " + source_line(opc) +
             (cross_block ? " in the same launch (blocks are not ordered)" : " with no __syncthreads() between"));
}

// The rules of one shadow cell for an access of the current thread (see the top of the file).
void check_cell_slow(Cell& c, bool shared, std::uintptr_t a, std::size_t size, Access kind, const void* pc);

// Fast path: a repeated access that changes nothing (most reads of a kernel), else the full rules.
inline void check_cell(Cell& c, bool shared, std::uintptr_t a, std::size_t size, Access kind, const void* pc) {
  const BlockState& b = *g_block;
  const int t = tl_thread->linear;
  const std::uint32_t me = static_cast<std::uint32_t>(b.linear) + 1;
  const bool block_quiet = shared || (c.launch == static_cast<std::uint32_t>(b.launch) &&
                                      (c.wblock == 0 || c.wblock == me) && c.ablock == 0);
  if (c.interval == static_cast<std::uint32_t>(b.interval) && c.atomic == -1 && block_quiet) {
    if (kind == Access::Read && (c.writer == -1 || c.writer == t) && (c.reader == t || c.reader == -2) &&
        (shared || c.rblock == me || c.rblock == kSeveral))
      return;
    if (kind == Access::Write && c.writer == t && (c.reader == -1 || c.reader == t) && (shared || c.wblock == me) &&
        (shared || c.rblock == 0 || c.rblock == me)) {
      c.wpc = pc;
      return;
    }
  }
  check_cell_slow(c, shared, a, size, kind, pc);
}

void check_cell_slow(Cell& c, bool shared, std::uintptr_t a, std::size_t size, Access kind, const void* pc) {
  const BlockState& b = *g_block;
  const int t = tl_thread->linear;
  if (c.interval != static_cast<std::uint32_t>(b.interval)) {
    c.interval = static_cast<std::uint32_t>(b.interval);
    c.writer = c.reader = c.last_reader = c.atomic = -1;
  }
  const auto other_thread = [&](int tid, const char* what) {
    return (tid == -2 ? std::string("several threads of its block") : "thread " + std::to_string(tid)) + " " + what;
  };
  const bool other_reader = c.reader == -2 || (c.reader >= 0 && c.reader != t);
  const bool other_atomic = c.atomic == -2 || (c.atomic >= 0 && c.atomic != t);
  if (c.writer >= 0 && c.writer != t) {
    race(shared, false, a, size, kind, pc, other_thread(c.writer, "wrote it"), c.wpc);
  } else if (kind != Access::Read && other_reader) {
    race(shared, false, a, size, kind, pc, other_thread(c.reader == -2 ? c.last_reader : c.reader, "read it"), c.rpc);
  } else if (kind != Access::Atomic && other_atomic) {
    race(shared, false, a, size, kind, pc, other_thread(c.atomic, "updated it atomically"), c.wpc);
  }
  switch (kind) {
    case Access::Read:
      c.reader = (c.reader == -1 || c.reader == t) ? static_cast<std::int16_t>(t) : std::int16_t{-2};
      c.last_reader = static_cast<std::int16_t>(t);
      c.rpc = pc;
      break;
    case Access::Write:
      c.writer = static_cast<std::int16_t>(t);
      c.wpc = pc;
      break;
    case Access::Atomic:
      c.atomic = (c.atomic == -1 || c.atomic == t) ? static_cast<std::int16_t>(t) : std::int16_t{-2};
      c.wpc = pc;
      break;
  }
  if (shared) return;  // every block has its own shared memory
  if (c.launch != static_cast<std::uint32_t>(b.launch)) {
    c.launch = static_cast<std::uint32_t>(b.launch);
    c.wblock = c.rblock = c.ablock = 0;
  }
  const std::uint32_t me = static_cast<std::uint32_t>(b.linear) + 1;
  const auto other_block = [&](std::uint32_t blk) { return blk != 0 && blk != me; };
  const auto in_block = [&](const char* what) {
    return std::string("a thread of block ") + block_of(c.wblock - 1) + " " + what;
  };
  if (other_block(c.wblock)) {
    race(false, true, a, size, kind, pc, in_block("wrote it"), c.wpc);
  } else if (kind != Access::Read && other_block(c.rblock)) {
    race(false, true, a, size, kind, pc, "a thread of another block read it", c.rpc);
  } else if (kind != Access::Atomic && other_block(c.ablock)) {
    race(false, true, a, size, kind, pc, "a thread of another block updated it atomically", c.wpc);
  }
  switch (kind) {
    case Access::Read:
      c.rblock = (c.rblock == 0 || c.rblock == me) ? me : kSeveral;
      break;
    case Access::Write:
      c.wblock = me;
      break;
    case Access::Atomic:
      c.ablock = (c.ablock == 0 || c.ablock == me) ? me : kSeveral;
      break;
  }
}

bool shared_in_bounds(const BlockState& b, std::size_t off, std::size_t size) {
  if (off + size <= b.dynamic_bytes) return true;
  for (const StaticShared& s : b.statics)
    if (off >= s.offset && off + size <= s.offset + s.bytes) return true;
  return false;
}

}  // namespace

void checker_begin_launch() {
  g_seen.clear();
  const std::uint64_t epoch = g_interval_serial >> 31;
  const std::size_t bytes = (g_granules.chunks.size() * (kChunk >> 3) + g_words.chunks.size() * (kChunk >> 2) +
                             g_bytes.chunks.size() * kChunk) *
                            sizeof(Cell);
  if (bytes > (std::size_t{1} << 30) || epoch != g_shadow_epoch) {  // 1 GB of shadow, or 2^31 intervals: afresh
    g_granules.clear();
    g_words.clear();
    g_bytes.clear();
    g_shadow_epoch = epoch;
  }
}

void checker_begin_block() {
  if (g_written.empty()) g_written.assign(512 * 1024 + 64 * 1024, 0);
  std::fill(g_written.begin(),
            g_written.begin() + static_cast<std::ptrdiff_t>(std::min(g_written_dirty, g_written.size())), 0);
  g_written_dirty = 0;
}

void checker_mark_written(const void* p, std::size_t bytes) {
  const std::size_t off = static_cast<const unsigned char*>(p) - g_block->smem;
  std::fill(g_written.begin() + static_cast<std::ptrdiff_t>(off),
            g_written.begin() + static_cast<std::ptrdiff_t>(off + bytes), 1);
  g_written_dirty = std::max(g_written_dirty, off + bytes);
}

void check_access(const void* addr, std::size_t size, Access kind, const void* pc) {
  if (tl_thread == nullptr || !g_checks) return;  // outside a kernel
  const auto a = reinterpret_cast<std::uintptr_t>(addr);
  if (a - g_stack_lo < g_stack_hi - g_stack_lo) return;  // a thread's own stack
  const BlockState& b = *g_block;
  ++g_checked_accesses;
  const auto base = reinterpret_cast<std::uintptr_t>(b.smem);
  const bool shared = a - base < b.smem_capacity + 64 * 1024;
  if (shared) {
    const std::size_t off = a - base;
    if (!shared_in_bounds(b, off, size)) {
      if (g_seen.insert({pc, nullptr}).second)
        report("out-of-bounds", thread_name(tl_thread->linear) + " " + verb(kind) + " " + std::to_string(size) +
                                    " bytes of shared memory at offset " + std::to_string(off) + ", outside the " +
                                    std::to_string(b.dynamic_bytes) + " dynamic bytes and the static arrays, at " +
                                    source_line(pc));
      else
        report("out-of-bounds", "");
      return;
    }
    if (kind != Access::Write) {
      bool defined = true;
      for (std::size_t i = 0; i < size; ++i) defined &= g_written[off + i] != 0;
      if (!defined) {
        if (g_seen.insert({pc, pc}).second)
          report("uninitialised", thread_name(tl_thread->linear) + " reads " + std::to_string(size) + " bytes at " +
                                      shared_place(b, off) + " that no thread of its block wrote, at " +
                                      source_line(pc));
        else
          report("uninitialised", "");
      }
    }
    if (kind != Access::Read) {
      std::fill(g_written.begin() + static_cast<std::ptrdiff_t>(off),
                g_written.begin() + static_cast<std::ptrdiff_t>(off + size), 1);
      g_written_dirty = std::max(g_written_dirty, off + size);
    }
  }
  if (size >= 8 && a % 8 == 0 && size % 8 == 0) {
    for (std::uintptr_t w = a; w < a + size; w += 8) check_cell(g_granules.at(w), shared, a, size, kind, pc);
  } else if (size >= 4 && a % 4 == 0 && size % 4 == 0) {
    for (std::uintptr_t w = a; w < a + size; w += 4) check_cell(g_words.at(w), shared, a, size, kind, pc);
  } else {
    for (std::uintptr_t w = a; w < a + size; ++w) check_cell(g_bytes.at(w), shared, a, size, kind, pc);
  }
}

void set_checks(bool on) {
  g_checks = on;
}
bool checks_on() {
  return g_checks && g_instrumented;
}
bool checker_compiled_in() {
  return g_instrumented;
}

}  // namespace lvmmed::emu

// ---- the compiler's instrumentation entry points -------------------------------------------------------------------
using lvmmed::emu::Access;
using lvmmed::emu::check_access;

#define LVMMED_EMU_HOOK(name, size, kind)                        \
  extern "C" void name(void* addr) {                             \
    check_access(addr, size, kind, __builtin_return_address(0)); \
  }
#define LVMMED_EMU_HOOKS(size)                                       \
  LVMMED_EMU_HOOK(__tsan_read##size, size, Access::Read)             \
  LVMMED_EMU_HOOK(__tsan_write##size, size, Access::Write)           \
  LVMMED_EMU_HOOK(__tsan_unaligned_read##size, size, Access::Read)   \
  LVMMED_EMU_HOOK(__tsan_unaligned_write##size, size, Access::Write) \
  LVMMED_EMU_HOOK(__tsan_volatile_read##size, size, Access::Read)    \
  LVMMED_EMU_HOOK(__tsan_volatile_write##size, size, Access::Write)
LVMMED_EMU_HOOK(__tsan_read1, 1, Access::Read)
LVMMED_EMU_HOOK(__tsan_write1, 1, Access::Write)
LVMMED_EMU_HOOK(__tsan_volatile_read1, 1, Access::Read)
LVMMED_EMU_HOOK(__tsan_volatile_write1, 1, Access::Write)
LVMMED_EMU_HOOKS(2)
LVMMED_EMU_HOOKS(4)
LVMMED_EMU_HOOKS(8)
LVMMED_EMU_HOOKS(16)
#undef LVMMED_EMU_HOOKS
#undef LVMMED_EMU_HOOK

extern "C" void __tsan_read_range(void* addr, unsigned long size) {
  check_access(addr, size, Access::Read, __builtin_return_address(0));
}
extern "C" void __tsan_write_range(void* addr, unsigned long size) {
  check_access(addr, size, Access::Write, __builtin_return_address(0));
}
extern "C" void __tsan_vptr_update(void** vptr, void*) {
  check_access(vptr, sizeof(void*), Access::Write, __builtin_return_address(0));
}
extern "C" void __tsan_vptr_read(void** vptr) {
  check_access(vptr, sizeof(void*), Access::Read, __builtin_return_address(0));
}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}
extern "C" void __tsan_init() {
  lvmmed::emu::g_instrumented = true;
}
