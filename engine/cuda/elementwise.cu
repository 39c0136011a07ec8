// Elementwise kernels: f32 -> f16/bf16 conversion (GEMM inputs), row gathers (embedding, output rows,
// pool broadcast), residual + LayerNorm, bias + ReLU. Per-element math: elementwise.cuh.
#include "engine/cuda/block_reduce.cuh"
#include "engine/cuda/elementwise.cuh"
#include "engine/cuda/kernels.h"

namespace trams::cuda {
namespace {

constexpr int kMaxGrid = 65535;

__global__ void ConvertKernel(ConvertArgs a) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < a.count; i += stride) {
    StoreAs(a.dst, a.type, i, a.src[i]);
  }
}

// One block per row (grid-stride over rows), threads over columns.
__global__ void GatherKernel(GatherArgs a) {
  for (int r = blockIdx.x; r < a.rows; r += gridDim.x) {
    float* dst = a.dst + GatherDstRow(a, r) * a.dst_ld;
    for (int c = threadIdx.x; c < a.width; c += blockDim.x) dst[c] = GatherValue(a, r, c);
  }
}

__global__ void GatherPtrsKernel(GatherPtrArgs a) {
  for (int r = blockIdx.x; r < a.rows; r += gridDim.x) {
    const float* src = a.src_rows[r];
    float* dst = a.dst + static_cast<int64_t>(r) * a.width;
    for (int c = threadIdx.x; c < a.width; c += blockDim.x) dst[c] = src[c];
  }
}

// One block per row: mean and biased variance in double (as LayerNormRows), then the affine map.
__global__ void LayerNormKernel(LayerNormArgs a) {
  __shared__ double scratch[32];
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    float* out = a.out + r * a.d;
    if (a.gamma == nullptr) {
      for (int c = threadIdx.x; c < a.d; c += blockDim.x) out[c] = ResidualSum(a, r, c);
      continue;
    }
    double sum = 0.0;
    for (int c = threadIdx.x; c < a.d; c += blockDim.x) sum += ResidualSum(a, r, c);
    const double mean = BlockSum(sum, scratch) / a.d;
    double var = 0.0;
    for (int c = threadIdx.x; c < a.d; c += blockDim.x) {
      const double dv = ResidualSum(a, r, c) - mean;
      var += dv * dv;
    }
    const float rstd = LayerNormRstd(BlockSum(var, scratch) / a.d, a.eps);
    const float m = static_cast<float>(mean);
    for (int c = threadIdx.x; c < a.d; c += blockDim.x) {
      out[c] = LayerNormValue(ResidualSum(a, r, c), m, rstd, a.gamma[c], a.beta[c]);
    }
  }
}

__global__ void BiasReluKernel(BiasReluArgs a) {
  const int64_t n = a.rows * a.d, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    a.x[i] = BiasRelu(a.x[i], a.bias[i % a.d]);
  }
}

unsigned GridFor(int64_t n, unsigned threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks > kMaxGrid ? kMaxGrid : blocks);
}

unsigned RowGrid(int64_t rows) { return static_cast<unsigned>(rows > kMaxGrid ? kMaxGrid : rows); }

}  // namespace

cudaError_t LaunchConvert(const ConvertArgs& a, cudaStream_t stream) {
  if (a.count <= 0) return cudaSuccess;
  if (a.src == nullptr || a.dst == nullptr) return cudaErrorInvalidValue;
  ConvertKernel<<<GridFor(a.count, 256), 256, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t LaunchGather(const GatherArgs& a, cudaStream_t stream) {
  if (a.rows <= 0 || a.width <= 0) return cudaSuccess;
  if (a.src == nullptr || a.dst == nullptr) return cudaErrorInvalidValue;
  GatherKernel<<<RowGrid(a.rows), ThreadsFor(a.width, 256), 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t LaunchGatherPtrs(const GatherPtrArgs& a, cudaStream_t stream) {
  if (a.rows <= 0 || a.width <= 0) return cudaSuccess;
  if (a.src_rows == nullptr || a.dst == nullptr) return cudaErrorInvalidValue;
  GatherPtrsKernel<<<RowGrid(a.rows), ThreadsFor(a.width, 256), 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t LaunchLayerNorm(const LayerNormArgs& a, cudaStream_t stream) {
  if (a.rows <= 0) return cudaSuccess;
  if (a.x == nullptr || a.out == nullptr || a.d <= 0 || (a.gamma != nullptr && a.beta == nullptr)) {
    return cudaErrorInvalidValue;
  }
  LayerNormKernel<<<RowGrid(a.rows), ThreadsFor(a.d, 256), 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t LaunchBiasRelu(const BiasReluArgs& a, cudaStream_t stream) {
  if (a.rows <= 0 || a.d <= 0) return cudaSuccess;
  if (a.x == nullptr || a.bias == nullptr) return cudaErrorInvalidValue;
  BiasReluKernel<<<GridFor(a.rows * a.d, 256), 256, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace trams::cuda
