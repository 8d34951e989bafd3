// Emulator stand-in for NVTX 3: ranges are no-ops (there is no profiler to attach).
#pragma once
inline int nvtxRangePushA(const char*) {
  return 0;
}
inline int nvtxRangePop() {
  return 0;
}
