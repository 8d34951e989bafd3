// Row-wise building blocks shared by the cosine kernels (global, local and edge affinity): norms of the rows of a
// [rows,D] matrix, and the chain rule through the row normalisation xhat = x/||x||. A zero row has inverse norm 0,
// so its cosines are 0 and it receives zero gradient.
#pragma once
#include "lvmmed/common.h"

#if defined(LVMMED_WITH_CUDA) || defined(__CUDACC__)
#include <cuda_runtime_api.h>
#endif

namespace lvmmed {

namespace cpu {
// Rows [r_begin, r_end) of x [rows,D]: sq[r] = ||x[r]||^2 (skipped if sq is null), inv[r] = 1/||x[r]|| (0 if zero).
template <typename T>
void row_norms(const T* x, index_t D, T* sq, T* inv, index_t r_begin, index_t r_end);
// Rows [r_begin, r_end): grad_x[r] = inv[r] * (d[r] - inv[r]^2 <d[r], x[r]> x[r]), where d[r] = dL/dxhat[r].
// grad_x may alias d.
template <typename T>
void project_rows(const T* d, const T* x, const T* inv, index_t D, T* grad_x, index_t r_begin, index_t r_end);
}  // namespace cpu

#if defined(LVMMED_WITH_CUDA) || defined(__CUDACC__)
namespace cuda {
// x [rows,D] in `dtype`; sq (may be null) and inv in the accumulation type (fp32; fp64 for fp64). If nonfinite is not
// null, sets *nonfinite = 1 when some squared norm is NaN or Inf.
cudaError_t row_norms(DType dtype, const void* x, index_t rows, index_t D, void* sq, void* inv, int* nonfinite,
                      cudaStream_t stream);
// grad (dtype) from d and inv (accumulation type) and x (dtype), rows of [rows,D].
cudaError_t project_rows(DType dtype, const void* d, const void* x, const void* inv, void* grad, index_t rows,
                         index_t D, cudaStream_t stream);
}  // namespace cuda
#endif

}  // namespace lvmmed
