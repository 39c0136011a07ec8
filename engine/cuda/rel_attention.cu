// Relative attention kernels around the cuBLAS products (context: forward.cc, AttentionLayer):
// gather (queries with both biases, attended pool rows + segment rows as keys/values, zero padding),
// the masked softmax with rel-shift by indexing, and the scatter of head outputs back to packed rows.
// Per-element math: rel_attention.cuh. Grid: x = query/key row, y = head * B + stream.
#include "engine/cuda/block_reduce.cuh"
#include "engine/cuda/kernels.h"
#include "engine/cuda/rel_attention.cuh"

namespace trams::cuda {
namespace {

constexpr int kMaxGridY = 65535;

__global__ void AttnGatherKernel(AttnArgs g) {
  const int hb = blockIdx.y, h = hb / g.batch, b = hb % g.batch, row = blockIdx.x;
  if (row < g.n_max) {
    const int64_t o = HeadBatchOffset(h, b, row, g.batch, g.n_max, g.d_head);
    for (int c = threadIdx.x; c < g.d_head; c += blockDim.x) {
      g.q_w[o + c] = AttnQuery(g, b, h, row, c, false);
      g.q_r[o + c] = AttnQuery(g, b, h, row, c, true);
    }
  }
  if (row < g.klen_max) {
    const int64_t o = HeadBatchOffset(h, b, row, g.batch, g.klen_max, g.d_head);
    for (int c = threadIdx.x; c < g.d_head; c += blockDim.x) {
      g.k[o + c] = AttnKeyValue(g, b, h, row, c, false);
      g.v[o + c] = AttnKeyValue(g, b, h, row, c, true);
    }
  }
}

// One block per (query, head, stream) row: logits over the visible keys, max, exp, sum, normalize;
// probabilities replace the content term in place and masked keys get 0.
__global__ void AttnSoftmaxKernel(AttnArgs g) {
  __shared__ float scratch[32];
  const int hb = blockIdx.y, h = hb / g.batch, b = hb % g.batch, i = blockIdx.x;
  const StreamLayerMeta& s = g.streams[b];
  if (i >= s.n) return;  // padding rows: uniform per block
  const int64_t o = HeadBatchOffset(h, b, i, g.batch, g.n_max, g.klen_max);
  float* row = g.ac + o;
  const float* pos = g.bd + o;
  const VisibleRange vis = AttnVisible(s.a, i, g.same_length, s.window);
  float mx = -INFINITY;
  for (int j = vis.lo + threadIdx.x; j <= vis.hi; j += blockDim.x) {
    mx = fmaxf(mx, AttnLogit(row[j], pos[RelDistance(s.a, i, j)], g.scale));
  }
  mx = BlockMax(mx, scratch);
  float sum = 0.0f;
  for (int j = vis.lo + threadIdx.x; j <= vis.hi; j += blockDim.x) {
    sum += expf(AttnLogit(row[j], pos[RelDistance(s.a, i, j)], g.scale) - mx);
  }
  const float inv = 1.0f / BlockSum(sum, scratch);
  for (int j = threadIdx.x; j < g.klen_max; j += blockDim.x) {
    float p = 0.0f;
    if (j >= vis.lo && j <= vis.hi) p = expf(AttnLogit(row[j], pos[RelDistance(s.a, i, j)], g.scale) - mx) * inv;
    row[j] = p;
  }
}

__global__ void AttnScatterKernel(AttnArgs g) {
  const int hb = blockIdx.y, h = hb / g.batch, b = hb % g.batch, i = blockIdx.x;
  const StreamLayerMeta& s = g.streams[b];
  if (i >= s.n) return;
  const int w = g.n_head * g.d_head;
  const float* src = g.o + HeadBatchOffset(h, b, i, g.batch, g.n_max, g.d_head);
  float* dst = g.attn_vec + (static_cast<int64_t>(s.offset) + i) * w + h * g.d_head;
  for (int c = threadIdx.x; c < g.d_head; c += blockDim.x) dst[c] = src[c];
}

cudaError_t CheckAttn(const AttnArgs& g) {
  if (g.streams == nullptr || g.batch <= 0 || g.n_head <= 0 || g.d_head <= 0 || g.n_max <= 0 || g.klen_max <= 0) {
    return cudaErrorInvalidValue;
  }
  if (static_cast<long long>(g.n_head) * g.batch > kMaxGridY) return cudaErrorInvalidConfiguration;
  return cudaSuccess;
}

}  // namespace

cudaError_t LaunchAttnGather(const AttnArgs& g, cudaStream_t stream) {
  if (cudaError_t e = CheckAttn(g); e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>(g.n_max > g.klen_max ? g.n_max : g.klen_max),
                  static_cast<unsigned>(g.n_head * g.batch));
  AttnGatherKernel<<<grid, ThreadsFor(g.d_head, 128), 0, stream>>>(g);
  return cudaGetLastError();
}

cudaError_t LaunchAttnSoftmax(const AttnArgs& g, cudaStream_t stream) {
  if (cudaError_t e = CheckAttn(g); e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>(g.n_max), static_cast<unsigned>(g.n_head * g.batch));
  AttnSoftmaxKernel<<<grid, ThreadsFor(g.klen_max, 256), 0, stream>>>(g);
  return cudaGetLastError();
}

cudaError_t LaunchAttnScatter(const AttnArgs& g, cudaStream_t stream) {
  if (cudaError_t e = CheckAttn(g); e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>(g.n_max), static_cast<unsigned>(g.n_head * g.batch));
  AttnScatterKernel<<<grid, ThreadsFor(g.d_head, 128), 0, stream>>>(g);
  return cudaGetLastError();
}

}  // namespace trams::cuda
