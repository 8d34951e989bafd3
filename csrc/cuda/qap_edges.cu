// CUDA kernels of the continuous QAP edge operations (any real X, self loops included): objective, gradient,
// pygmtools-style Lawler products (one thread block per graph, rows of the output owned by threads, the adjacency
// of both edge lists in shared memory) and the gradient w.r.t. quad (elementwise).
#include "block_team.cuh"
#include "cuda_common.cuh"
#include "lvmmed/detail/qap_engine.h"
#include "lvmmed/qap.h"
#include "team_launch.cuh"

namespace lvmmed::cuda {
namespace {

enum class EdgeMode : int { Gradient = 0, Forward = 1, Transpose = 2 };

index_t adjacency_ints(QAPShape s) {
  return 2 * (s.N + 1) + 4 * s.Es + 2 * (s.M + 1) + 4 * s.Et;
}

TeamLaunch edges_launch(QAPShape s) {
  return plan_team_launch(s.G, 4 * adjacency_ints(s) + 8, team_threads(s.N));
}

// out = unary (Gradient) or unary * X (Forward / Transpose), then + (K_e + K_e^T) x, K_e x or K_e^T x.
template <typename T>
__global__ void __launch_bounds__(512)
    edge_product_kernel(const T* __restrict__ X, QAPInputs<T> in, T* __restrict__ out, QAPShape s, EdgeMode mode,
                        unsigned char* workspace, index_t bytes, bool use_smem) {
  LVMMED_DYNAMIC_SHARED(unsigned char, smem);
  LVMMED_SHARED(detail::Best, red, [kTeamMaxWarps]);
  const BlockTeam team{red};
  int* base = reinterpret_cast<int*>(use_smem ? smem : workspace + static_cast<index_t>(blockIdx.x) * bytes);
  for (index_t g = blockIdx.x; g < s.G; g += gridDim.x) {
    const auto gr = detail::graph_of(in, s, g);
    const T* x = X + g * s.N * s.M;
    T* o = out + g * s.N * s.M;
    team.range(s.N * s.M, [&](index_t k) { o[k] = mode == EdgeMode::Gradient ? gr.unary[k] : gr.unary[k] * x[k]; });
    team.sync();
    if (gr.Es > 0 && gr.Et > 0) {
      detail::Adjacency as = detail::adjacency_at(base, gr.N, gr.Es);
      detail::Adjacency at = detail::adjacency_at(base + 2 * (gr.N + 1) + 4 * gr.Es, gr.M, gr.Et);
      detail::build_adjacency(team, gr.es, gr.N, gr.Es, true, as);
      detail::build_adjacency(team, gr.et, gr.M, gr.Et, true, at);
      detail::edge_product<BlockTeam, T, T, T>(team, gr, as, at, x, s.M, o, s.M, mode != EdgeMode::Transpose,
                                               mode != EdgeMode::Forward);
    }
    team.sync();
  }
}

// Block-wide sum (fixed reduction tree: deterministic); every thread gets the result.
__device__ double block_sum(double v, double* red) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int n_warps = static_cast<int>((blockDim.x + 31) / 32);
    v = lane < n_warps ? red[lane] : 0.0;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    if (lane == 0) red[kTeamMaxWarps - 1] = v;
  }
  __syncthreads();
  return red[kTeamMaxWarps - 1];
}

// out[g] = <unary, X> + sum_{p,q} quad[p,q] X[i_p,a_q] X[j_p,b_q], accumulated in float64, one block per graph.
template <typename T>
__global__ void __launch_bounds__(256)
    edge_objective_kernel(const T* __restrict__ X, QAPInputs<T> in, T* __restrict__ out, QAPShape s) {
  LVMMED_SHARED(double, red, [kTeamMaxWarps]);
  for (index_t g = blockIdx.x; g < s.G; g += gridDim.x) {
    const auto gr = detail::graph_of(in, s, g);
    const T* x = X + g * s.N * s.M;
    double acc = 0;
    for (index_t k = threadIdx.x; k < s.N * s.M; k += blockDim.x)
      acc += static_cast<double>(gr.unary[k]) * static_cast<double>(x[k]);
    for (index_t p = threadIdx.x; p < gr.Es; p += blockDim.x) {
      const T* xi = x + gr.es[2 * p] * s.M;
      const T* xj = x + gr.es[2 * p + 1] * s.M;
      const T* qp = gr.quad + p * gr.Et;
      for (int q = 0; q < gr.Et; ++q)
        acc += static_cast<double>(qp[q]) * static_cast<double>(xi[gr.et[2 * q]]) *
               static_cast<double>(xj[gr.et[2 * q + 1]]);
    }
    acc = block_sum(acc, red);
    if (threadIdx.x == 0) out[g] = static_cast<T>(acc);
  }
}

template <typename T>
__global__ void quad_grad_kernel(const T* __restrict__ grad, const T* __restrict__ X, QAPInputs<T> in,
                                 T* __restrict__ out, QAPShape s) {
  const index_t total = s.G * s.Es * s.Et;
  for (index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t g = k / (s.Es * s.Et), p = (k / s.Et) % s.Es, q = k % s.Et;
    const T* x = X + g * s.N * s.M;
    const std::int64_t* es = in.edges_s + (g * s.Es + p) * 2;
    const std::int64_t* et = in.edges_t + (g * s.Et + q) * 2;
    out[k] = grad[g] * x[es[0] * s.M + et[0]] * x[es[1] * s.M + et[1]];
  }
}

template <typename T>
cudaError_t launch_product(const void* X, const QAPInputs<void>& in, void* out, QAPShape s, EdgeMode mode,
                           cudaStream_t stream, void* workspace) {
  if (s.G == 0 || s.N * s.M == 0) return cudaSuccess;
  const TeamLaunch l = edges_launch(s);
  LVMMED_CUDA_TRY(prepare_team_kernel(edge_product_kernel<T>, l));
  LVMMED_LAUNCH(l.blocks, l.threads, l.use_smem ? l.bytes : 0, stream, edge_product_kernel<T>)
  (static_cast<const T*>(X), typed_inputs<T>(in), static_cast<T*>(out), s, mode, static_cast<unsigned char*>(workspace),
   l.bytes, l.use_smem);
  return cudaGetLastError();
}

template <typename Fn>
cudaError_t by_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::Float32:
      return fn(float{});
    case DType::Float64:
      return fn(double{});
    default:
      return cudaErrorInvalidValue;  // the glue computes float16/bfloat16 in float32
  }
}

}  // namespace

index_t qap_edge_workspace_bytes(QAPShape s) {
  return edges_launch(s).workspace_bytes;
}

cudaError_t qap_edge_objective(DType dtype, const void* X, QAPInputs<void> in, void* out, QAPShape s,
                               cudaStream_t stream) {
  if (s.G == 0) return cudaSuccess;
  return by_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    LVMMED_LAUNCH(grid_stride_blocks(s.G), 256, 0, stream, edge_objective_kernel<T>)
    (static_cast<const T*>(X), typed_inputs<T>(in), static_cast<T*>(out), s);
    return cudaGetLastError();
  });
}

cudaError_t qap_edge_gradient(DType dtype, const void* X, QAPInputs<void> in, void* out, QAPShape s, void* workspace,
                              cudaStream_t stream) {
  return by_dtype(dtype, [&](auto tag) {
    return launch_product<decltype(tag)>(X, in, out, s, EdgeMode::Gradient, stream, workspace);
  });
}

cudaError_t qap_lawler_product(DType dtype, const void* X, QAPInputs<void> in, void* out, bool transpose, QAPShape s,
                               void* workspace, cudaStream_t stream) {
  return by_dtype(dtype, [&](auto tag) {
    return launch_product<decltype(tag)>(X, in, out, s, transpose ? EdgeMode::Transpose : EdgeMode::Forward, stream,
                                         workspace);
  });
}

cudaError_t qap_quad_grad(DType dtype, const void* grad, const void* X, QAPInputs<void> in, void* out, QAPShape s,
                          cudaStream_t stream) {
  const index_t total = s.G * s.Es * s.Et;
  if (total == 0) return cudaSuccess;
  return by_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    LVMMED_LAUNCH(grid_stride_blocks(ceil_div(total, 256)), 256, 0, stream, quad_grad_kernel<T>)
    (static_cast<const T*>(grad), static_cast<const T*>(X), typed_inputs<T>(in), static_cast<T*>(out), s);
    return cudaGetLastError();
  });
}

}  // namespace lvmmed::cuda
