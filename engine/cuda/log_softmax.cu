// Adaptive log-softmax kernels: row log-softmax (head rows in place, tail clusters into the full
// distribution with the cluster's head log-prob added) and per-target picks. Per-element math:
// log_softmax.cuh. Max in f32, sum of exponentials in double, as LogSoftmaxRow.
#include "engine/cuda/block_reduce.cuh"
#include "engine/cuda/kernels.h"
#include "engine/cuda/log_softmax.cuh"

namespace trams::cuda {
namespace {

constexpr int kMaxGrid = 65535;

// logsumexp of row `row` of x (+ bias) over n columns; every thread gets it.
__device__ double RowLse(const float* x, int64_t ld, const float* bias, int64_t row, int n, float* fscratch,
                         double* dscratch) {
  float mx = -INFINITY;
  for (int c = threadIdx.x; c < n; c += blockDim.x) mx = fmaxf(mx, LogitAt(x, ld, bias, row, c));
  mx = BlockMax(mx, fscratch);
  double sum = 0.0;
  for (int c = threadIdx.x; c < n; c += blockDim.x) sum += SoftmaxTerm(LogitAt(x, ld, bias, row, c), mx);
  return LogSumExp(mx, BlockSum(sum, dscratch));
}

__global__ void LogSoftmaxKernel(LogSoftmaxArgs a) {
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  for (int r = blockIdx.x; r < a.rows; r += gridDim.x) {
    const double lse = RowLse(a.x, a.ld, a.bias, r, a.n, fscratch, dscratch);
    const float add = a.add != nullptr ? a.add[r * a.add_ld] : 0.0f;
    // In place is safe: every read of this row happened before the reductions' barriers.
    for (int c = threadIdx.x; c < a.n_out; c += blockDim.x) {
      a.out[r * a.out_ld + c] = LogProb(LogitAt(a.x, a.ld, a.bias, r, c), lse, add);
    }
    __syncthreads();
  }
}

__global__ void TargetsKernel(TargetArgs a) {
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  for (int t = blockIdx.x; t < a.n_items; t += gridDim.x) {
    const TargetItem it = a.items[t];
    const double lse = a.normalize ? RowLse(a.x, a.ld, a.bias, it.logit_row, a.n, fscratch, dscratch) : 0.0;
    if (threadIdx.x == 0) {
      const float add = a.add != nullptr ? a.add[static_cast<int64_t>(it.add_row) * a.add_ld] : 0.0f;
      a.out[it.out] = LogProb(LogitAt(a.x, a.ld, a.bias, it.logit_row, it.col), lse, add);
    }
  }
}

unsigned RowGrid(int64_t rows) { return static_cast<unsigned>(rows > kMaxGrid ? kMaxGrid : rows); }

}  // namespace

cudaError_t LaunchLogSoftmax(const LogSoftmaxArgs& a, cudaStream_t stream) {
  if (a.rows <= 0) return cudaSuccess;
  if (a.x == nullptr || a.out == nullptr || a.n <= 0 || a.n_out > a.n) return cudaErrorInvalidValue;
  LogSoftmaxKernel<<<RowGrid(a.rows), ThreadsFor(a.n, 1024), 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t LaunchTargets(const TargetArgs& a, cudaStream_t stream) {
  if (a.n_items <= 0) return cudaSuccess;
  if (a.x == nullptr || a.items == nullptr || a.out == nullptr || a.n <= 0) return cudaErrorInvalidValue;
  TargetsKernel<<<RowGrid(a.n_items), a.normalize ? ThreadsFor(a.n, 1024) : 32u, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace trams::cuda
