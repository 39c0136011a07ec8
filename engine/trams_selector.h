// TRAMS memory selection (Yu et al., EMNLP 2023 Findings): which pool tokens a layer attends to.
// Mirrors lwaekfjlk/TRAMS utils/modeling_transfo_xl.py, RelPartialLearnableMultiHeadAttn.trams(),
// except that a token's score is computed once, when it enters the pool (see engine/DESIGN.md).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/trams_settings.h"

namespace trams::engine {

// Precomputed per layer and head so a key's score costs O(d_head^2), not O(d_head * d_model):
// with K' = W_q,h^T k, ||K'||^2 = k^T (W_q,h W_q,h^T) k and sum K' = k . (W_q,h 1) (engine/precompute.h's
// TramsGram, the tables the CUDA backend uploads too).
class TramsScorer {
 public:
  TramsScorer(const float* q_weight, int n_head, int d_head, int d_model);
  // scores[r * H + h] for `rows` key rows k[r * ld_k + h * Dh + i] (one small sgemm per head).
  void Score(const float* k, int ld_k, int64_t rows, SelectionMetric metric, float* scores) const;

 private:
  int n_head_, d_head_, d_model_;
  std::vector<float> gram_;     // [H, Dh, Dh], W_q,h W_q,h^T (accumulated in double)
  std::vector<float> row_sum_;  // [H, Dh], W_q,h 1
};

// Scores closer than this (relative) to the k-th best are treated as tied (see SelectTopK).
constexpr float kTieTolerance = 1e-5f;

// Pool indices [0, candidates) of the `topk` highest scores, ascending (pool order).
// `scores` has stride `stride` (one float per head per token). Ties, including scores within
// kTieTolerance of the k-th best, keep the older tokens. A NaN score ranks as -inf and +inf ranks highest,
// so exactly min(topk, candidates) indices come back whatever the scores (as the device's TramsSelect).
void SelectTopK(const float* scores, int64_t stride, int candidates, int topk, std::vector<int>* out);

}  // namespace trams::engine
