// Per-element math of TRAMS (trams.cu): the score of a token entering the pool and the top-k rule.
// Host twin: TramsScorer and SelectTopK in engine/trams_selector.cc, the ring of StreamState in
// engine/stream_state.cc. The kernel finds the k-th best by counting, for each candidate, the better ones
// (O(C^2) per head, with C <= M a few hundred), then applies SelectTopK's near-tie band in pool order.
// NaN scores rank as -inf and +inf highest, so exactly topk candidates are kept whatever the scores
// (tests/engine/trams_selection_nan_test.cc checks host and emulation agree).
#pragma once

#include "engine/cuda/hd_common.cuh"

namespace trams::cuda {

// Ring row of the `index`-th oldest pool token (StreamState::RingRow).
TRAMS_HD int RingRow(int start, int index, int mem_len) { return (start + index) % mem_len; }
// Ring row of the i-th token being appended to a pool of `size` (StreamState::AppendRow).
TRAMS_HD int AppendRingRow(int start, int size, int i, int mem_len) { return (start + size + i) % mem_len; }

// Score of key k (one head, d_head floats) with K' = W_q,h^T k: via the Gram matrix G = W_q,h W_q,h^T
// (d_head x d_head, symmetric) and u = W_q,h 1, ||K'||^2 = k^T G k and sum K' = k . u.
// code metric: ||K'|| * |sum K'|; paper metric: sum K' / sqrt(d_model). Same rounding steps as
// TramsScorer::Score: y = k G in f32, products in f32, sums in double.
TRAMS_HD float TramsScore(const float* k, const float* gram, const float* u, int d_head, int metric,
                          double inv_sqrt_d_model) {
  double sum = 0.0, sq = 0.0;
  for (int a = 0; a < d_head; ++a) {
    float y = 0.0f;
    for (int b = 0; b < d_head; ++b) y += k[b] * gram[b * d_head + a];
    sum += k[a] * u[a];
    sq += k[a] * y;
  }
  if (metric == 0) return static_cast<float>(sqrt(sq > 0.0 ? sq : 0.0) * fabs(sum));
  return static_cast<float>(sum * inv_sqrt_d_model);
}

// Non-finite scores (a broken weight, an overflow) rank as SelectTopK ranks them: NaN counts as -inf, +inf
// highest. Tested on the bits, so that no fast-math flag of either compiler can fold the test away.
TRAMS_HD bool TramsIsNaN(float s) { return (FloatBits(s) & 0x7fffffffu) > 0x7f800000u; }
TRAMS_HD bool TramsIsFinite(float s) { return (FloatBits(s) & 0x7f800000u) != 0x7f800000u; }
constexpr uint32_t kTramsMinusInfBits = 0xff800000u;
constexpr uint32_t kTramsMaxFloatBits = 0x7f7fffffu;  // FLT_MAX
// The value a score ranks by: the score itself, -inf for NaN. Never NaN, so every comparison of two keys
// is meaningful and the order below is a strict total order whatever the scores.
TRAMS_HD float TramsRankKey(float s) { return TramsIsNaN(s) ? BitsToFloat(kTramsMinusInfBits) : s; }

// Candidate i ranks before candidate j: higher rank key, ties to the older (smaller pool index) token.
TRAMS_HD bool TramsBetter(float si, int i, float sj, int j) {
  const float ki = TramsRankKey(si), kj = TramsRankKey(sj);
  return ki > kj || (ki == kj && i < j);
}

// SelectTopK's near-tie rule (trams::kTieTolerance, engine/trams_selector.h; the host tests check the two
// agree): scores within this relative distance of the k-th best count as tied with it, and tied tokens are
// kept oldest first. Candidates above the band are always kept, those below never.
constexpr float kTramsTieTolerance = 1e-5f;

struct TieBand {
  float lo;
  float hi;
};

// `kth` is the k-th best candidate's score (NaN allowed: it ranks as -inf). A finite k-th best gets the
// relative band, its ends kept finite (an overflow to +-inf would pull +inf into the band, or -inf and NaN);
// an infinite one gets the band [kth, kth]: the tokens tied with it exactly.
TRAMS_HD TieBand TramsTieBand(float kth) {
  kth = TramsRankKey(kth);
  TieBand band;
  if (!TramsIsFinite(kth)) {
    band.hi = kth;
    band.lo = kth;
    return band;
  }
  const float magnitude = fabsf(kth) > 1e-30f ? fabsf(kth) : 1e-30f;
  const float tol = kTramsTieTolerance * magnitude;
  band.hi = kth + tol;
  band.lo = kth - tol;
  const float max_float = BitsToFloat(kTramsMaxFloatBits);
  if (band.hi > max_float) band.hi = max_float;
  if (band.lo < -max_float) band.lo = -max_float;
  return band;
}

// 2: above the band (kept), 1: in the band (kept while places remain, oldest first), 0: below. By rank
// key: NaN is below every band but that of a -inf k-th best, where it ties with -inf.
TRAMS_HD int TramsTieClass(float score, TieBand band) {
  const float key = TramsRankKey(score);
  return key > band.hi ? 2 : key >= band.lo ? 1 : 0;
}

// The attended pool index of slot `slot` when nothing is selected: the newest `a` tokens, oldest first.
TRAMS_HD int NewestPoolIndex(int size, int a, int slot) { return size - a + slot; }

}  // namespace trams::cuda
