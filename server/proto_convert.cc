#include "server/proto_convert.h"

#include "absl/strings/str_cat.h"
#include "server/scoped_id.h"

namespace trams::server {

namespace {
constexpr size_t kMaxStopBytes = 1024;  // a stop string is compared after every token
}  // namespace

namespace {

absl::StatusOr<engine::MemoryMode> ModeFrom(v1::MemoryMode mode, engine::MemoryMode fallback) {
  switch (mode) {
    case v1::MEMORY_MODE_UNSPECIFIED: return fallback;
    case v1::MEMORY_MODE_TRAMS: return engine::MemoryMode::kTrams;
    case v1::MEMORY_MODE_XL: return engine::MemoryMode::kXl;
    case v1::MEMORY_MODE_NONE: return engine::MemoryMode::kNone;
    default: return absl::InvalidArgumentError(absl::StrCat("unknown memory mode ", mode));
  }
}

absl::StatusOr<engine::SelectionMetric> MetricFrom(v1::SelectionMetric metric, engine::SelectionMetric fallback) {
  switch (metric) {
    case v1::SELECTION_METRIC_UNSPECIFIED: return fallback;
    case v1::SELECTION_METRIC_CODE: return engine::SelectionMetric::kCode;
    case v1::SELECTION_METRIC_PAPER: return engine::SelectionMetric::kPaper;
    default: return absl::InvalidArgumentError(absl::StrCat("unknown selection metric ", metric));
  }
}

}  // namespace

absl::StatusOr<engine::TramsSettings> MemorySettingsFrom(const v1::MemorySettings& m, const SessionDefaults& defaults,
                                                         const engine::ModelConfig& config) {
  const engine::TramsSettings& d = defaults.memory;
  absl::StatusOr<engine::MemoryMode> mode = ModeFrom(m.mode(), d.mode);
  if (!mode.ok()) return mode.status();
  absl::StatusOr<engine::SelectionMetric> metric = MetricFrom(m.metric(), d.metric);
  if (!metric.ok()) return metric.status();
  if (m.layers_size() > config.n_layer) {
    return absl::InvalidArgumentError(
        absl::StrCat(m.layers_size(), " selection layers given; the model has ", config.n_layer));
  }
  // Unset sizes: the defaults' where the mode is theirs; another mode starts from nothing, except that
  // XL attends as many tokens as the default mode does (or SessionDefaults::xl_mem_len).
  const bool same_mode = *mode == d.mode;
  int mem_len = d.mem_len;
  if (m.has_mem_len()) {
    mem_len = m.mem_len();
  } else if (*mode == engine::MemoryMode::kNone) {
    mem_len = 0;
  } else if (*mode == engine::MemoryMode::kXl && !same_mode) {
    mem_len = d.attend_len() > 0 ? d.attend_len() : defaults.xl_mem_len;
  }
  const bool trams_defaults = *mode == engine::MemoryMode::kTrams && same_mode;
  const int topk = m.has_topk() ? m.topk() : (trams_defaults ? d.topk : 0);
  const int remain = m.has_remain() ? m.remain() : (trams_defaults ? d.remain : 0);
  if (absl::Status sizes = engine::CheckMemorySizes(mem_len, topk, remain); !sizes.ok()) return sizes;
  engine::TramsSettings s;
  switch (*mode) {
    case engine::MemoryMode::kTrams: s = engine::TramsSettings::Trams(mem_len, topk, remain); break;
    case engine::MemoryMode::kXl: s = engine::TramsSettings::Xl(mem_len); break;
    case engine::MemoryMode::kNone: s = engine::TramsSettings::NoMemory(); break;
  }
  s.layers.assign(m.layers().begin(), m.layers().end());
  if (s.layers.empty() && trams_defaults) s.layers = d.layers;
  s.metric = *metric;
  if (absl::Status valid = s.Validate(config); !valid.ok()) return valid;
  return s;
}

absl::StatusOr<SessionSpec> SessionSpecFrom(const v1::CreateSessionRequest& req, const ServerOptions& options,
                                            const engine::ModelConfig& config) {
  SessionSpec spec;
  absl::StatusOr<engine::TramsSettings> memory = MemorySettingsFrom(req.memory(), options.defaults, config);
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
  spec.max_tokens = req.max_tokens() == 0 ? limits.default_generate_tokens : req.max_tokens();
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

void ToProto(const engine::TramsSettings& s, v1::MemorySettings* out) {
  switch (s.mode) {
    case engine::MemoryMode::kTrams: out->set_mode(v1::MEMORY_MODE_TRAMS); break;
    case engine::MemoryMode::kXl: out->set_mode(v1::MEMORY_MODE_XL); break;
    case engine::MemoryMode::kNone: out->set_mode(v1::MEMORY_MODE_NONE); break;
  }
  out->set_mem_len(s.mem_len);
  out->set_topk(s.topk);
  out->set_remain(s.remain);
  for (int l : s.layers) out->add_layers(l);
  out->set_metric(s.metric == engine::SelectionMetric::kCode ? v1::SELECTION_METRIC_CODE
                                                             : v1::SELECTION_METRIC_PAPER);
}

void ToProto(const SessionSnapshot& s, v1::Session* out) {
  out->set_session_id(std::string(BareSessionId(s.id)));
  ToProto(s.memory, out->mutable_memory());
  out->set_segment_len(s.segment_len);
  out->set_position(s.position);
  out->set_pool_tokens(s.pool_tokens);
  out->set_pool_bytes(s.pool_bytes);
  out->set_created_unix_ms(s.created_ms);
  out->set_last_used_unix_ms(s.last_used_ms);
  out->set_tokens_scored(s.tokens_scored);
  out->set_nll_sum(s.nll_sum);
  out->set_busy(s.busy);
}

void ToProto(const Session& s, const TextCodec& codec, v1::ExplainSelectionResponse* out) {
  const SelectionRecord& rec = s.last_selection;
  out->set_segment_start(rec.segment_start);
  out->set_segment_len(rec.segment_len);
  for (size_t l = 0; l < rec.selected.size(); ++l) {
    v1::LayerSelection* layer = out->add_layers();
    layer->set_layer(static_cast<int>(l));
    layer->set_recent_from(rec.recent_from);
    for (size_t h = 0; h < rec.selected[l].size(); ++h) {
      if (rec.selected[l][h].empty()) continue;
      v1::HeadSelection* head = layer->add_heads();
      head->set_head(static_cast<int>(h));
      for (size_t j = 0; j < rec.selected[l][h].size(); ++j) {
        const int64_t pos = rec.selected[l][h][j];
        v1::SelectedToken* t = head->add_selected();
        t->set_position(pos);
        if (std::optional<int32_t> id = s.IdAt(pos)) {
          t->set_id(*id);
          t->set_text(codec.TokenText(*id));
        }
        if (l < rec.scores.size() && h < rec.scores[l].size() && j < rec.scores[l][h].size()) {
          t->set_score(rec.scores[l][h][j]);
        }
      }
    }
  }
}

}  // namespace trams::server
