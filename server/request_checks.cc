#include "server/request_checks.h"

#include "absl/strings/str_cat.h"

namespace trams::server {

namespace {
constexpr size_t kMaxStopBytes = 1024;  // a stop string is compared after every token
}  // namespace

absl::StatusOr<engine::TramsSettings> MemorySettingsFrom(const v1::MemorySettings& m, const engine::TramsSettings& defaults,
                                                 const engine::ModelConfig& config) {
  std::string mode;
  switch (m.mode()) {
    case v1::MEMORY_MODE_UNSPECIFIED: mode = std::string(engine::MemoryModeName(defaults.mode)); break;
    case v1::MEMORY_MODE_TRAMS: mode = "trams"; break;
    case v1::MEMORY_MODE_XL: mode = "xl"; break;
    case v1::MEMORY_MODE_NONE: mode = "none"; break;
    default: return absl::InvalidArgumentError(absl::StrCat("unknown memory mode ", m.mode()));
  }
  const bool same_mode = mode == engine::MemoryModeName(defaults.mode);
  int mem_len = m.has_mem_len() ? m.mem_len() : defaults.mem_len;
  if (!m.has_mem_len() && mode == "none") mem_len = 0;
  if (!m.has_mem_len() && mode == "xl" && !same_mode) mem_len = defaults.attend_len() > 0 ? defaults.attend_len() : 200;
  const int topk = m.has_topk() ? m.topk() : (mode == "trams" && same_mode ? defaults.topk : 0);
  const int remain = m.has_remain() ? m.remain() : (mode == "trams" && same_mode ? defaults.remain : 0);
  std::string metric = std::string(engine::SelectionMetricName(defaults.metric));
  if (m.metric() == v1::SELECTION_METRIC_CODE) metric = "code";
  if (m.metric() == v1::SELECTION_METRIC_PAPER) metric = "paper";
  if (m.metric() != v1::SELECTION_METRIC_UNSPECIFIED && m.metric() != v1::SELECTION_METRIC_CODE &&
      m.metric() != v1::SELECTION_METRIC_PAPER) {
    return absl::InvalidArgumentError(absl::StrCat("unknown selection metric ", m.metric()));
  }
  if (m.layers_size() > config.n_layer) {
    return absl::InvalidArgumentError(
        absl::StrCat(m.layers_size(), " selection layers given; the model has ", config.n_layer));
  }
  std::vector<int> layers(m.layers().begin(), m.layers().end());
  if (layers.empty() && mode == "trams" && same_mode) layers = defaults.layers;
  return engine::MakeTramsSettings(mode, mem_len, -1, topk, remain, std::move(layers), metric, config);
}

absl::StatusOr<SessionSpec> SessionSpecFrom(const v1::CreateSessionRequest& req, const ServerOptions& options,
                                            const engine::ModelConfig& config) {
  SessionSpec spec;
  absl::StatusOr<engine::TramsSettings> memory = MemorySettingsFrom(req.memory(), options.defaults.memory, config);
  if (!memory.ok()) return memory.status();
  spec.memory = *memory;
  if (spec.memory.mem_len > options.limits.max_mem_len) {
    return absl::InvalidArgumentError(absl::StrCat("mem_len ", spec.memory.mem_len,
                                                   " is above this server's limit of ", options.limits.max_mem_len));
  }
  spec.segment_len = req.has_segment_len() ? req.segment_len() : options.defaults.segment_len;
  if (spec.segment_len <= 0 || spec.segment_len > options.limits.max_segment_len) {
    return absl::InvalidArgumentError(absl::StrCat("segment_len must be in [1, ", options.limits.max_segment_len,
                                                   "], got ", spec.segment_len));
  }
  return spec;
}

absl::StatusOr<GenerateSpec> GenerateSpecFrom(const v1::GenerateRequest& req, const RequestLimits& limits,
                                              uint64_t fallback_seed) {
  GenerateSpec spec;
  spec.max_tokens = req.max_tokens() == 0 ? 64 : req.max_tokens();
  if (spec.max_tokens < 1 || spec.max_tokens > limits.max_generate_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be in [1, ", limits.max_generate_tokens, "], got ", req.max_tokens()));
  }
  spec.sampling.temperature = req.temperature();
  spec.sampling.top_k = req.top_k();
  spec.sampling.top_p = req.top_p() == 0.0f ? 1.0f : req.top_p();
  spec.sampling.seed = req.has_seed() ? req.seed() : fallback_seed;
  absl::Status valid = spec.sampling.Validate();
  if (!valid.ok()) return valid;
  if (req.stop_size() > limits.max_stop_strings) {
    return absl::InvalidArgumentError(absl::StrCat("at most ", limits.max_stop_strings, " stop strings"));
  }
  for (const std::string& stop : req.stop()) {
    if (stop.empty()) return absl::InvalidArgumentError("stop strings must not be empty");
    if (stop.size() > kMaxStopBytes) {
      return absl::InvalidArgumentError(absl::StrCat("stop strings are at most ", kMaxStopBytes, " bytes"));
    }
  }
  return spec;
}

}  // namespace trams::server
