// Shared vocabulary of the compute layer: index type, dtype tags for the CUDA launchers.
#pragma once
#include <cstdint>

namespace lvmmed {

using index_t = std::int64_t;

// Element type of a buffer handed to a CUDA launcher (host code cannot instantiate device templates).
enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };

}  // namespace lvmmed
