// CUDA kernels of the local affinity. Forward: one block per (source node, target node) pair of a Gram chunk finds
// the feature and location nearest neighbours in both directions, the top-k selections and the cosine means, all
// from the pair's P x Q Gram block (fp32, or fp64 for fp64 inputs). Backward: the recorded selections become dense
// coefficient blocks for two library GEMMs in the glue (tensor cores for fp16/bf16).
#include <climits>

#include "cuda_common.cuh"
#include "lvmmed/local_affinity.h"

namespace lvmmed::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// (value, index) pairs ordered by value, then index: equal values go to the lower index.
template <typename V>
__device__ __forceinline__ bool before(V a, int ia, V b, int ib) {
  return a < b || (a == b && ia < ib);
}

// Warp-wide lexicographic minimum of (v, i); every lane gets it.
template <typename V>
__device__ __forceinline__ void warp_argmin(V& v, int& i) {
  for (int off = 16; off > 0; off >>= 1) {
    const V ov = __shfl_xor_sync(0xffffffffu, v, off);
    const int oi = __shfl_xor_sync(0xffffffffu, i, off);
    if (before(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}

// Block-wide sum, valid in thread 0; ends with a barrier, so shared buffers may be reused afterwards.
template <typename A_t>
__device__ A_t block_sum(A_t v, A_t* scratch) {
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  A_t total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kWarps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

// Keeps the k entries of nn[0..n) with the smallest (dist, index) and marks the others -1; copies nn to out and
// returns (in thread 0) the sum of cos(j, nn[j]) over the kept j. dist/nn must be complete (after a barrier).
template <typename A_t, typename Cos>
__device__ A_t select_and_sum(const double* dist, int* nn, index_t n, index_t k, std::int32_t* out, Cos cos,
                              A_t* scratch) {
  A_t acc = 0;
  for (index_t j = threadIdx.x; j < n; j += blockDim.x) {
    int m = nn[j];
    if (k < n) {  // rank of j among the n candidates: O(n) per entry, n <= kLocalAffinityMaxCells
      const double dj = dist[j];
      index_t rank = 0;
      for (index_t q = 0; q < n && rank < k; ++q) rank += before(dist[q], static_cast<int>(q), dj, static_cast<int>(j));
      if (rank >= k) m = -1;
    }
    out[j] = m;
    if (m >= 0) acc += cos(j, m);
  }
  return block_sum(acc, scratch);
}

// For each of the n_from cells at `from` [n_from,2] (float64 positions), the squared distance to its nearest cell at
// `to` [n_to,2] and that cell's index (the lower index on ties); the block's threads share the cells.
__device__ void nearest_positions(const double* from, index_t n_from, const double* to, index_t n_to, double* dist,
                                  int* nn) {
  for (index_t p = threadIdx.x; p < n_from; p += kThreads) {
    double best = 0;
    int arg = 0;
    for (index_t q = 0; q < n_to; ++q) {
      const double dx = from[2 * p] - to[2 * q], dy = from[2 * p + 1] - to[2 * q + 1];
      const double d = dx * dx + dy * dy;
      if (q == 0 || d < best) {
        best = d;
        arg = static_cast<int>(q);
      }
    }
    dist[p] = best;
    nn[p] = arg;
  }
}

template <typename T, typename A_t>
__global__ void __launch_bounds__(kThreads)
    local_forward_kernel(const A_t* __restrict__ gram, const A_t* __restrict__ sq_s, const A_t* __restrict__ inv_s,
                         const A_t* __restrict__ sq_t, const A_t* __restrict__ inv_t, const double* __restrict__ pos_s,
                         const double* __restrict__ pos_t, T* __restrict__ out, std::int32_t* __restrict__ matches,
                         LocalAffinityShape s, GramChunk c) {
  LVMMED_DYNAMIC_SHARED(double, smem);  // dist [L] then nn [L], L = max(P, Q)
  LVMMED_SHARED(A_t, scratch, [kWarps]);
  const index_t P = s.P, Q = s.Q, M = s.M, MQ = s.M * s.Q, W = s.match_width();
  double* dist = smem;
  int* nn = reinterpret_cast<int*>(smem + (P > Q ? P : Q));
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const A_t inf = A_t(INFINITY);
  const index_t pairs = c.graphs * c.nodes * M;
  for (index_t pair = blockIdx.x; pair < pairs; pair += gridDim.x) {
    const index_t r = pair / M, a = pair % M;
    const index_t g = c.g0 + r / c.nodes, i = c.i0 + r % c.nodes, node = g * s.N + i;
    const A_t* S = gram + r * P * MQ + a * Q;  // the pair's [P, Q] block, row stride M*Q
    const A_t* sqs = sq_s + node * P;
    const A_t* invs = inv_s + node * P;
    const A_t* sqt = sq_t + (g * M + a) * Q;
    const A_t* invt = inv_t + (g * M + a) * Q;
    std::int32_t* m = matches + (node * M + a) * W;
    const auto cos_st = [&](index_t p, int q) { return S[p * MQ + q] * invs[p] * invt[q]; };
    const auto cos_ts = [&](index_t q, int p) { return S[p * MQ + q] * invs[p] * invt[q]; };

    // i -> a by features: a warp per source cell, lanes over target cells.
    for (index_t p = warp; p < P; p += kWarps) {
      A_t best = inf;
      int arg = INT_MAX;
      for (index_t q = lane; q < Q; q += 32) {
        const A_t d = (sqs[p] + sqt[q]) - A_t(2) * S[p * MQ + q];
        if (before(d, static_cast<int>(q), best, arg)) {
          best = d;
          arg = static_cast<int>(q);
        }
      }
      warp_argmin(best, arg);
      if (lane == 0) {
        dist[p] = static_cast<double>(best);
        nn[p] = arg;
      }
    }
    __syncthreads();
    const A_t feat_st = select_and_sum(dist, nn, P, s.feat_s, m, cos_st, scratch);

    // a -> i by features: a thread per target cell, increasing source cells (strict <: the lower one on ties).
    for (index_t q = tid; q < Q; q += kThreads) {
      A_t best = inf;
      int arg = 0;
      for (index_t p = 0; p < P; ++p) {
        const A_t d = (sqs[p] + sqt[q]) - A_t(2) * S[p * MQ + q];
        if (p == 0 || d < best) {
          best = d;
          arg = static_cast<int>(p);
        }
      }
      dist[q] = static_cast<double>(best);
      nn[q] = arg;
    }
    __syncthreads();
    const A_t feat_ts = select_and_sum(dist, nn, Q, s.feat_t, m + P, cos_ts, scratch);
    double l_st = double(feat_st) / double(s.feat_s), l_ts = double(feat_ts) / double(s.feat_t);

    if (s.with_positions) {  // the same with location neighbours (float64 distances between cell positions)
      const double* ps = pos_s + node * P * 2;
      const double* pt = pos_t + (g * M + a) * Q * 2;
      nearest_positions(ps, P, pt, Q, dist, nn);
      __syncthreads();
      const A_t loc_st = select_and_sum(dist, nn, P, s.loc_s, m + P + Q, cos_st, scratch);
      nearest_positions(pt, Q, ps, P, dist, nn);
      __syncthreads();
      const A_t loc_ts = select_and_sum(dist, nn, Q, s.loc_t, m + 2 * P + Q, cos_ts, scratch);
      l_st = 0.5 * (l_st + double(loc_st) / double(s.loc_s));
      l_ts = 0.5 * (l_ts + double(loc_ts) / double(s.loc_t));
    }
    if (tid == 0) store_from(out + node * M + a, static_cast<A_t>(0.5 * (l_st + l_ts)));
    __syncthreads();
  }
}

// c_s[p,q] = grad * w(p,q) * inv_t[q] and c_t[p,q] = grad * w(p,q) * inv_s[p] for the chunk's pairs, w(p,q) the
// summed weights of the selections pairing source cell p with target cell q. Every element is written once.
template <typename T, typename A_t>
__global__ void local_coefficients_kernel(const T* __restrict__ grad, const A_t* __restrict__ inv_s,
                                          const A_t* __restrict__ inv_t, const std::int32_t* __restrict__ matches,
                                          T* __restrict__ c_s, T* __restrict__ c_t, LocalAffinityShape s, GramChunk c) {
  const index_t P = s.P, Q = s.Q, M = s.M, MQ = s.M * s.Q, W = s.match_width();
  const double wfs = s.feat_weight(s.feat_s), wft = s.feat_weight(s.feat_t);
  const double wls = s.with_positions ? s.loc_weight(s.loc_s) : 0.0;
  const double wlt = s.with_positions ? s.loc_weight(s.loc_t) : 0.0;
  const index_t pairs = c.graphs * c.nodes * M;
  for (index_t pair = blockIdx.x; pair < pairs; pair += gridDim.x) {
    const index_t r = pair / M, a = pair % M;
    const index_t g = c.g0 + r / c.nodes, i = c.i0 + r % c.nodes, node = g * s.N + i;
    const std::int32_t* m = matches + (node * M + a) * W;
    const A_t go = load_as<A_t>(grad + node * M + a);
    const A_t* invs = inv_s + node * P;
    const A_t* invt = inv_t + (g * M + a) * Q;
    for (index_t e = threadIdx.x; e < P * Q; e += blockDim.x) {
      const index_t p = e / Q, q = e % Q;
      double w = 0;
      if (m[p] == q) w += wfs;
      if (m[P + q] == p) w += wft;
      if (s.with_positions) {
        if (m[P + Q + p] == q) w += wls;
        if (m[2 * P + Q + q] == p) w += wlt;
      }
      const A_t wg = go * static_cast<A_t>(w);
      const index_t off = (r * P + p) * MQ + a * Q + q;
      store_from(c_s + off, wg * invt[q]);
      store_from(c_t + off, wg * invs[p]);
    }
  }
}

__global__ void flag_nonfinite_kernel(const double* __restrict__ x, index_t n, int* __restrict__ flag) {
  for (index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
       k += static_cast<index_t>(gridDim.x) * blockDim.x)
    if (!isfinite(x[k])) atomicOr(flag, 1);
}

}  // namespace

cudaError_t flag_nonfinite(const double* x, index_t n, int* nonfinite, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  LVMMED_LAUNCH(grid_stride_blocks(ceil_div(n, kThreads)), kThreads, 0, stream, flag_nonfinite_kernel)(x, n, nonfinite);
  return cudaGetLastError();
}

cudaError_t local_affinity_forward(DType dtype, const void* gram, const void* sq_s, const void* inv_s, const void* sq_t,
                                   const void* inv_t, const double* pos_s, const double* pos_t, void* out,
                                   std::int32_t* matches, LocalAffinityShape s, GramChunk c, cudaStream_t stream) {
  const index_t pairs = c.graphs * c.nodes * s.M;
  if (pairs == 0) return cudaSuccess;
  if (s.P > kLocalAffinityMaxCells || s.Q > kLocalAffinityMaxCells) return cudaErrorInvalidValue;
  const size_t smem = static_cast<size_t>(s.P > s.Q ? s.P : s.Q) * (sizeof(double) + sizeof(int));
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A_t = acc_t<T>;
    LVMMED_LAUNCH(grid_stride_blocks(pairs), kThreads, smem, stream, local_forward_kernel<T, A_t>)
    (static_cast<const A_t*>(gram), static_cast<const A_t*>(sq_s), static_cast<const A_t*>(inv_s),
     static_cast<const A_t*>(sq_t), static_cast<const A_t*>(inv_t), pos_s, pos_t, static_cast<T*>(out), matches, s, c);
    return cudaGetLastError();
  });
}

cudaError_t local_affinity_backward_coefficients(DType dtype, const void* grad, const void* inv_s, const void* inv_t,
                                                 const std::int32_t* matches, void* c_s, void* c_t,
                                                 LocalAffinityShape s, GramChunk c, cudaStream_t stream) {
  const index_t pairs = c.graphs * c.nodes * s.M;
  if (pairs == 0) return cudaSuccess;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A_t = acc_t<T>;
    LVMMED_LAUNCH(grid_stride_blocks(pairs), kThreads, 0, stream, local_coefficients_kernel<T, A_t>)
    (static_cast<const T*>(grad), static_cast<const A_t*>(inv_s), static_cast<const A_t*>(inv_t), matches,
     static_cast<T*>(c_s), static_cast<T*>(c_t), s, c);
    return cudaGetLastError();
  });
}

}  // namespace lvmmed::cuda
