// Launcher of the emulator's self-test kernels (toy_kernels.cu).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>

namespace lvmmed::toys {

// Runs toy kernel `name` on buf (floats or ints, as the kernel reads it) with n elements. opt_in > 0 first opts the
// kernel into that many bytes of dynamic shared memory (its error is returned). cudaErrorInvalidValue for an unknown
// name.
cudaError_t run_toy_kernel(const char* name, void* buf, int n, dim3 grid, dim3 block, std::size_t smem, int opt_in,
                           cudaStream_t stream);

}  // namespace lvmmed::toys
