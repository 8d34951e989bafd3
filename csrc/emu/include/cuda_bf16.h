// Emulator stand-in for CUDA's <cuda_bf16.h> (see lvmmed_emu/half.h).
#pragma once
#include "lvmmed_emu/half.h"
