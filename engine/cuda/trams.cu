// TRAMS kernels: selection of the attended pool rows per (stream, head) and the pool append with the
// score of each entering token. Per-element math: trams.cuh.
//
// Selection finds the k-th best score by counting, for each candidate, the candidates that beat it (higher
// score, ties to the older token); then, as SelectTopK, every candidate above the near-tie band around it
// is kept and the band fills the remaining places oldest first. Block prefix counts keep pool order.
// Scores rank by TramsRankKey (NaN as -inf), so exactly topk candidates are kept whatever the scores.
// Candidates come in tiles of blockDim scores through shared memory, so any pool size works.
#include "engine/cuda/block_reduce.cuh"
#include "engine/cuda/kernels.h"
#include "engine/cuda/trams.cuh"

namespace trams::cuda {
namespace {

constexpr int kSelectThreads = 256;

__device__ __forceinline__ float CandidateScore(const StreamLayerMeta& s, int n_head, int h, int j) {
  return s.scores[static_cast<int64_t>(RingRow(s.start, j, s.mem_len)) * n_head + h];
}

// Exclusive prefix count of `flag` over the block's threads (in thread order) and the block's total.
// `counts` is __shared__ int[blockDim / 32]; every thread must call it.
__device__ __forceinline__ int BlockPrefixCount(bool flag, int* counts, int* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  __syncthreads();  // counts may still be read from the previous call
  if (lane == 0) counts[warp] = __popc(ballot);
  __syncthreads();
  int before = __popc(ballot & ((1u << lane) - 1u));
  *total = 0;
  for (int w = 0; w < warps; ++w) {
    if (w < warp) before += counts[w];
    *total += counts[w];
  }
  return before;
}

__global__ void TramsSelectKernel(SelectArgs g) {
  __shared__ float tile[kSelectThreads];
  __shared__ int warp_counts[kSelectThreads / 32];
  __shared__ float kth_shared;
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

  // 1. The k-th best score: the candidate with exactly topk - 1 better ones (TramsBetter is a strict total
  //    order, NaN included, so exactly one thread writes kth_shared).
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
    if (j < candidates && rank == s.topk - 1) kth_shared = sj;
  }
  __syncthreads();
  const TieBand band = TramsTieBand(kth_shared);

  // 2. Candidates above the band are kept; the band fills the remaining places oldest first.
  int above = 0;
  for (int j = tid; j < candidates; j += blockDim.x) {
    above += TramsTieClass(CandidateScore(s, g.n_head, h, j), band) == 2 ? 1 : 0;
  }
  __shared__ int reduce_scratch[32];
  const int needed = s.topk - BlockSum(above, reduce_scratch);

  // 3. In pool order: the tied ones seen so far decide, then a prefix count places the kept ones.
  int taken = 0, tied_so_far = 0;  // same values in every thread
  for (int base = 0; base < candidates; base += blockDim.x) {
    const int j = base + tid;
    const float sj = j < candidates ? CandidateScore(s, g.n_head, h, j) : 0.0f;
    const int cls = j < candidates ? TramsTieClass(sj, band) : 0;
    int tied_total = 0, kept_total = 0;
    const int tied_before = tied_so_far + BlockPrefixCount(cls == 1, warp_counts, &tied_total);
    const bool keep = cls == 2 || (cls == 1 && tied_before < needed);
    const int kept_before = BlockPrefixCount(keep, warp_counts, &kept_total);
    if (keep) {
      const int pos = taken + kept_before;
      rows[pos] = RingRow(s.start, j, s.mem_len);
      if (g.selected != nullptr) g.selected[bh * g.topk_max + pos] = j;
      if (g.selected_scores != nullptr) g.selected_scores[bh * g.topk_max + pos] = sj;
    }
    taken += kept_total;
    tied_so_far += tied_total;
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
  const int64_t o = static_cast<int64_t>(it.dst_row) * w;  // elements: the rows are pool_dtype
  for (int c = threadIdx.x; c < w; c += blockDim.x) {  // rounded to the pool dtype (round to nearest even)
    StoreAs(s.keys, s.pool_dtype, o + c, row[w + c]);
    StoreAs(s.values, s.pool_dtype, o + c, row[2 * w + c]);
  }
  if (s.scores == nullptr) return;  // the score below is the f32 key's
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
