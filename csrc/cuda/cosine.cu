// DType-dispatched launchers of the shared row-wise cosine kernels (lvmmed/cosine.h), for the glue.
#include "cosine.cuh"
#include "lvmmed/cosine.h"

namespace lvmmed::cuda {

cudaError_t row_norms(DType dtype, const void* x, index_t rows, index_t D, void* sq, void* inv, int* nonfinite,
                      cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A_t = acc_t<T>;
    return launch_row_norms<T, A_t>(static_cast<const T*>(x), static_cast<A_t*>(sq), static_cast<A_t*>(inv), nonfinite,
                                    rows, D, stream);
  });
}

cudaError_t project_rows(DType dtype, const void* d, const void* x, const void* inv, void* grad, index_t rows,
                         index_t D, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A_t = acc_t<T>;
    return launch_project_rows<T, A_t>(static_cast<const A_t*>(d), static_cast<const T*>(x),
                                       static_cast<const A_t*>(inv), static_cast<T*>(grad), rows, D, stream);
  });
}

}  // namespace lvmmed::cuda
