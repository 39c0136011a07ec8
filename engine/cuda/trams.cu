// TRAMS kernels: selection of the attended pool rows per (stream, head) and the pool append with the
// score of each entering token. Per-element math: trams.cuh.
//
// Selection ranks each candidate j by counting the candidates that beat it (higher score, ties to the
// older token): j is kept iff rank < topk, exactly the set SelectTopK's nth_element keeps, and a block
// prefix count over the flags puts the kept ones in pool order. Candidates come in tiles of blockDim
// scores through shared memory, so any pool size works.
#include "engine/cuda/block_reduce.cuh"
#include "engine/cuda/kernels.h"
#include "engine/cuda/trams.cuh"

namespace trams::cuda {
namespace {

constexpr int kSelectThreads = 256;

__device__ __forceinline__ float CandidateScore(const StreamLayerMeta& s, int n_head, int h, int j) {
  return s.scores[static_cast<int64_t>(RingRow(s.start, j, s.mem_len)) * n_head + h];
}

__global__ void TramsSelectKernel(SelectArgs g) {
  __shared__ float tile[kSelectThreads];
  __shared__ int warp_counts[kSelectThreads / 32];
  const int h = blockIdx.x, b = blockIdx.y, tid = threadIdx.x;
  const StreamLayerMeta& s = g.streams[b];
  const int64_t bh = static_cast<int64_t>(b) * g.n_head + h;
  int32_t* rows = g.att_rows + bh * g.a_max;
  if (!s.selects) {
    for (int slot = tid; slot < s.a; slot += blockDim.x) {
      rows[slot] = RingRow(s.start, NewestPoolIndex(s.size, s.a, slot), s.mem_len);
    }
    if (tid == 0 && g.counts != nullptr) g.counts[bh] = 0;
    return;
  }
  const int candidates = s.size - s.remain;
  const int lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
  int taken = 0;  // same value in every thread
  for (int base = 0; base < candidates; base += blockDim.x) {
    const int j = base + tid;
    const float sj = j < candidates ? CandidateScore(s, g.n_head, h, j) : 0.0f;
    int rank = 0;
    for (int ibase = 0; ibase < candidates; ibase += blockDim.x) {
      __syncthreads();
      if (ibase + tid < candidates) tile[tid] = CandidateScore(s, g.n_head, h, ibase + tid);
      __syncthreads();
      const int limit = min(static_cast<int>(blockDim.x), candidates - ibase);
      if (j < candidates) {
        for (int t = 0; t < limit; ++t) rank += TramsBetter(tile[t], ibase + t, sj, j) ? 1 : 0;
      }
    }
    const bool keep = j < candidates && rank < s.topk;
    const unsigned ballot = __ballot_sync(0xffffffffu, keep);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = __popc(ballot & ((1u << lane) - 1u)), total = 0;
    for (int w = 0; w < warps; ++w) {
      if (w < warp) before += warp_counts[w];
      total += warp_counts[w];
    }
    if (keep) {
      rows[taken + before] = RingRow(s.start, j, s.mem_len);
      if (g.selected != nullptr) g.selected[bh * g.topk_max + taken + before] = j;
    }
    taken += total;
    __syncthreads();  // warp_counts is rewritten by the next tile
  }
  for (int r = tid; r < s.remain; r += blockDim.x) rows[taken + r] = RingRow(s.start, candidates + r, s.mem_len);
  if (tid == 0 && g.counts != nullptr) g.counts[bh] = taken;
}

// One block per entering token: k and v rows into the ring, then one thread per head scores it.
__global__ void PoolAppendKernel(AppendArgs g) {
  const AppendItem it = g.items[blockIdx.x];
  const StreamLayerMeta& s = g.streams[it.stream];
  const int w = g.n_head * g.d_head;
  const float* row = g.qkv + static_cast<int64_t>(it.src_row) * 3 * w;
  float* k = s.keys + static_cast<int64_t>(it.dst_row) * w;
  float* v = s.values + static_cast<int64_t>(it.dst_row) * w;
  for (int c = threadIdx.x; c < w; c += blockDim.x) {
    k[c] = row[w + c];
    v[c] = row[2 * w + c];
  }
  if (s.scores == nullptr) return;
  for (int h = threadIdx.x; h < g.n_head; h += blockDim.x) {
    s.scores[static_cast<int64_t>(it.dst_row) * g.n_head + h] =
        TramsScore(row + w + h * g.d_head, g.gram + static_cast<int64_t>(h) * g.d_head * g.d_head,
                   g.row_sum + h * g.d_head, g.d_head, s.metric, g.inv_sqrt_d_model);
  }
}

}  // namespace

cudaError_t LaunchTramsSelect(const SelectArgs& g, cudaStream_t stream) {
  if (g.batch <= 0 || g.a_max <= 0) return cudaSuccess;
  if (g.streams == nullptr || g.att_rows == nullptr || g.n_head <= 0) return cudaErrorInvalidValue;
  if (g.batch > 65535) return cudaErrorInvalidConfiguration;
  TramsSelectKernel<<<dim3(static_cast<unsigned>(g.n_head), static_cast<unsigned>(g.batch)), kSelectThreads, 0,
                      stream>>>(g);
  return cudaGetLastError();
}

cudaError_t LaunchPoolAppend(const AppendArgs& g, cudaStream_t stream) {
  if (g.n_items <= 0) return cudaSuccess;
  if (g.streams == nullptr || g.items == nullptr || g.qkv == nullptr) return cudaErrorInvalidValue;
  PoolAppendKernel<<<static_cast<unsigned>(g.n_items), ThreadsFor(g.n_head * g.d_head, 256), 0, stream>>>(g);
  return cudaGetLastError();
}

}  // namespace trams::cuda
