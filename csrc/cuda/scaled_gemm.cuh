// Batched SIMT matrix product with optional diagonal scalings, for the small products of the affinity ops:
//   C[g,i,j] = rs[g,i] * cs[g,j] * sum_k A[g,i,k] * ks[g,k] * B[g,k,j]
// A, B, C are strided views (any transposition); scales may be null (= 1). Accumulates in A_t.
#pragma once
#include "cuda_common.cuh"

namespace lvmmed::cuda {

// Element (b, r, c) of a strided batch of matrices lives at b*batch + r*row + c*col.
struct Strides3 {
  index_t batch, row, col;
};

template <typename A_t>
struct Scales {
  const A_t* row = nullptr;  // [G, rows]
  const A_t* col = nullptr;  // [G, cols]
  const A_t* k = nullptr;    // [G, K]
};

constexpr int kGemmTile = 32;  // rows and columns of C per block
constexpr int kGemmK = 16;     // depth of one shared-memory stage
constexpr int kGemmRowsPerThread = 4;

template <typename TA, typename TB, typename TC, typename A_t>
__global__ void __launch_bounds__(kGemmTile* kGemmTile / kGemmRowsPerThread)
    scaled_gemm_kernel(const TA* __restrict__ a, Strides3 sa, const TB* __restrict__ b, Strides3 sb, TC* __restrict__ c,
                       Strides3 sc, Scales<A_t> scales, index_t rows, index_t cols, index_t K, index_t g0,
                       index_t row_tile0, index_t col_tile0) {
  LVMMED_SHARED(A_t, As, [kGemmK][kGemmTile + 1]);
  LVMMED_SHARED(A_t, Bs, [kGemmK][kGemmTile + 1]);
  const index_t g = g0 + blockIdx.z;
  const int tx = threadIdx.x, ty = threadIdx.y;  // blockDim = (32, 8)
  const int tid = ty * kGemmTile + tx;
  const index_t row0 = (row_tile0 + blockIdx.y) * kGemmTile;  // *_tile0: the first tiles of this launch
  const index_t col0 = (col_tile0 + blockIdx.x) * kGemmTile;
  const TA* ag = a + g * sa.batch;
  const TB* bg = b + g * sb.batch;
  const A_t* ks = scales.k ? scales.k + g * K : nullptr;

  A_t acc[kGemmRowsPerThread] = {};
  for (index_t k0 = 0; k0 < K; k0 += kGemmK) {
    for (int e = tid; e < kGemmK * kGemmTile; e += blockDim.x * blockDim.y) {
      const int kk = e / kGemmTile, rr = e % kGemmTile;
      const index_t k = k0 + kk;
      A_t va = 0, vb = 0;
      if (k < K && row0 + rr < rows) {
        va = load_as<A_t>(ag + (row0 + rr) * sa.row + k * sa.col);
        if (ks) va *= ks[k];
      }
      if (k < K && col0 + rr < cols) vb = load_as<A_t>(bg + k * sb.row + (col0 + rr) * sb.col);
      As[kk][rr] = va;
      Bs[kk][rr] = vb;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kGemmK; ++kk) {
      const A_t bv = Bs[kk][tx];
#pragma unroll
      for (int r = 0; r < kGemmRowsPerThread; ++r) acc[r] += As[kk][ty + r * (kGemmTile / kGemmRowsPerThread)] * bv;
    }
    __syncthreads();
  }
  const index_t col = col0 + tx;
  if (col >= cols) return;
  const A_t cscale = scales.col ? scales.col[g * cols + col] : A_t(1);
#pragma unroll
  for (int r = 0; r < kGemmRowsPerThread; ++r) {
    const index_t row = row0 + ty + r * (kGemmTile / kGemmRowsPerThread);
    if (row >= rows) continue;
    const A_t rscale = scales.row ? scales.row[g * rows + row] : A_t(1);
    store_from(c + g * sc.batch + row * sc.row + col * sc.col, acc[r] * rscale * cscale);
  }
}

template <typename TA, typename TB, typename TC, typename A_t>
cudaError_t scaled_gemm(const TA* a, Strides3 sa, const TB* b, Strides3 sb, TC* c, Strides3 sc, Scales<A_t> scales,
                        index_t G, index_t rows, index_t cols, index_t K, cudaStream_t stream) {
  if (G == 0 || rows == 0 || cols == 0) return cudaSuccess;
  const dim3 block(kGemmTile, kGemmTile / kGemmRowsPerThread);
  const index_t row_tiles = (rows + kGemmTile - 1) / kGemmTile, col_tiles = (cols + kGemmTile - 1) / kGemmTile;
  // a grid has at most max_grid_dim(axis) blocks per axis (65535 along y and z): launches over slices of column
  // tiles (x), row tiles (y) and graphs (z)
  const index_t cap_x = max_grid_dim(0), cap_y = max_grid_dim(1), cap_z = max_grid_dim(2);
  for (index_t g0 = 0; g0 < G; g0 += cap_z) {
    for (index_t r0 = 0; r0 < row_tiles; r0 += cap_y) {
      for (index_t c0 = 0; c0 < col_tiles; c0 += cap_x) {
        const dim3 grid(static_cast<unsigned>(std::min(col_tiles - c0, cap_x)),
                        static_cast<unsigned>(std::min(row_tiles - r0, cap_y)),
                        static_cast<unsigned>(std::min(G - g0, cap_z)));
        LVMMED_LAUNCH(grid, block, 0, stream, scaled_gemm_kernel<TA, TB, TC, A_t>)
        (a, sa, b, sb, c, sc, scales, rows, cols, K, g0, r0, c0);
        LVMMED_CUDA_TRY(cudaGetLastError());
      }
    }
  }
  return cudaGetLastError();
}

}  // namespace lvmmed::cuda
