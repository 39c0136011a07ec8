// A stream's memory settings: mode (none / Transformer-XL / TRAMS), pool size M, topk + remain, the layers
// that select and the selection metric, with their validation against a model and their names.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/model_config.h"
#include "engine/settings_rules.h"

namespace trams::engine {

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
// The same without a model yet (flags parsed before the model loads): everything but Validate(config).
absl::StatusOr<TramsSettings> ParseTramsSettings(absl::string_view mode, int mem_len, int attend, int topk, int remain,
                                                 std::vector<int> layers, absl::string_view metric);
// Sizes are in [0, kMaxMemLen], so that any arithmetic on them is safe (checked before anything else).
absl::Status CheckMemorySizes(int mem_len, int topk, int remain);

}  // namespace trams::engine
