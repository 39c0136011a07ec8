// TRAMS memory selection (Yu et al., EMNLP 2023 Findings): which pool tokens a layer attends to.
// Mirrors lwaekfjlk/TRAMS utils/modeling_transfo_xl.py, RelPartialLearnableMultiHeadAttn.trams(),
// except that a token's score is computed once, when it enters the pool (see engine/DESIGN.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/model_config.h"
#include "engine/settings_rules.h"

namespace trams {

// MemoryMode and kMaxMemLen: engine/settings_rules.h (shared with the CUDA backend).
enum class SelectionMetric {
  kCode,   // ||K'|| * |sum K'|: what the authors' code ranks by (and what produced the paper's numbers)
  kPaper,  // cos(K', 1) * ||K'|| = sum K' / sqrt(d_model): the metric as the paper writes it
};

std::string_view MemoryModeName(MemoryMode mode);
std::string_view SelectionMetricName(SelectionMetric metric);

// Per-stream memory settings. Pool capacity is `mem_len` (M); attended memory is topk + remain (m).
struct TramsSettings {
  MemoryMode mode = MemoryMode::kTrams;
  int mem_len = 400;  // M: tokens kept per layer (XL: also the tokens attended)
  int topk = 50;      // selected by score from the older part of the pool (TRAMS only)
  int remain = 150;   // newest pool tokens always attended (TRAMS only)
  std::vector<int> layers;  // layers that select (TRAMS only); empty = every layer
  SelectionMetric metric = SelectionMetric::kCode;

  // Memory tokens attended at most (m); same_length's window.
  int attend_len() const;
  bool SelectsOnLayer(int layer) const;
  // engine/settings_rules.h's SettingsError (the rules and messages every backend shares).
  absl::Status Validate(const ModelConfig& config) const;
  SettingsView view() const;
  static TramsSettings Xl(int mem_len);
  static TramsSettings NoMemory();
  static TramsSettings Trams(int mem_len, int topk, int remain);
};

// Settings from user-facing knobs (CLI flags, RPC fields), validated against the model.
// mode: "xl" | "trams" | "none"; metric: "code" | "paper"; attend (m) < 0 means topk + remain,
// otherwise it must equal topk + remain (TRAMS) or mem_len (XL).
absl::StatusOr<TramsSettings> MakeTramsSettings(absl::string_view mode, int mem_len, int attend, int topk, int remain,
                                                std::vector<int> layers, absl::string_view metric,
                                                const ModelConfig& config);

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

}  // namespace trams
