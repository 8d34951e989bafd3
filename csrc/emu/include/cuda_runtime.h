// Emulator stand-in for CUDA's <cuda_runtime.h> (see lvmmed_emu/cuda.h).
#pragma once
#include "lvmmed_emu/cuda.h"
