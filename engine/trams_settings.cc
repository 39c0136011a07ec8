#include "engine/trams_settings.h"

#include "absl/strings/str_cat.h"

namespace trams::engine {

std::string_view MemoryModeName(MemoryMode mode) {
  switch (mode) {
    case MemoryMode::kNone: return "none";
    case MemoryMode::kXl: return "xl";
    case MemoryMode::kTrams: return "trams";
  }
  return "?";
}

std::string_view SelectionMetricName(SelectionMetric metric) {
  return metric == SelectionMetric::kCode ? "code" : "paper";
}

SettingsView TramsSettings::view() const {
  SettingsView v;
  v.mode = mode;
  v.mem_len = mem_len;
  v.topk = topk;
  v.remain = remain;
  v.layers = layers.data();
  v.n_layers = static_cast<int>(layers.size());
  return v;
}

int TramsSettings::attend_len() const { return AttendLen(mode, mem_len, topk, remain); }

bool TramsSettings::SelectsOnLayer(int layer) const { return trams::engine::SelectsOnLayer(view(), layer); }

TramsSettings TramsSettings::Xl(int mem_len) {
  TramsSettings s;
  s.mode = MemoryMode::kXl;
  s.mem_len = mem_len;
  s.topk = 0;
  s.remain = mem_len;
  return s;
}

TramsSettings TramsSettings::NoMemory() {
  TramsSettings s = Xl(0);
  s.mode = MemoryMode::kNone;
  return s;
}

TramsSettings TramsSettings::Trams(int mem_len, int topk, int remain) {
  TramsSettings s;
  s.mem_len = mem_len;
  s.topk = topk;
  s.remain = remain;
  return s;
}

absl::Status TramsSettings::Validate(const ModelConfig& config) const {
  const std::string error = SettingsError(view(), config.n_layer);
  return error.empty() ? absl::OkStatus() : absl::InvalidArgumentError(error);
}

absl::Status CheckMemorySizes(int mem_len, int topk, int remain) {
  if (mem_len < 0 || topk < 0 || remain < 0) {
    return absl::InvalidArgumentError(absl::StrCat("memory sizes must not be negative (M ", mem_len, ", topk ", topk,
                                                   ", remain ", remain, ")"));
  }
  if (mem_len > kMaxMemLen || topk > kMaxMemLen || remain > kMaxMemLen) {
    return absl::InvalidArgumentError(absl::StrCat("memory sizes must be at most ", kMaxMemLen, " (M ", mem_len,
                                                   ", topk ", topk, ", remain ", remain, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<TramsSettings> ParseTramsSettings(absl::string_view mode, int mem_len, int attend, int topk, int remain,
                                                 std::vector<int> layers, absl::string_view metric) {
  if (absl::Status sizes = CheckMemorySizes(mem_len, topk, remain); !sizes.ok()) return sizes;
  TramsSettings s;
  if (mode == "xl") {
    s = TramsSettings::Xl(mem_len);
    if (attend >= 0 && attend != mem_len) {
      return absl::InvalidArgumentError(absl::StrCat("mode 'xl' attends its whole pool: m (", attend,
                                                     ") must equal M (", mem_len, ")"));
    }
  } else if (mode == "none") {
    s = TramsSettings::NoMemory();
  } else if (mode == "trams") {
    s = TramsSettings::Trams(mem_len, topk, remain);
    if (attend >= 0 && attend != topk + remain) {
      return absl::InvalidArgumentError(absl::StrCat("TRAMS attends m = topk + remain tokens: m is ", attend,
                                                     " but topk ", topk, " + remain ", remain, " = ", topk + remain));
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat("memory mode must be xl, trams or none, got '", mode, "'"));
  }
  s.layers = std::move(layers);
  if (metric == "paper") {
    s.metric = SelectionMetric::kPaper;
  } else if (metric != "code") {
    return absl::InvalidArgumentError(absl::StrCat("selection metric must be code or paper, got '", metric, "'"));
  }
  return s;
}

absl::StatusOr<TramsSettings> MakeTramsSettings(absl::string_view mode, int mem_len, int attend, int topk, int remain,
                                                std::vector<int> layers, absl::string_view metric,
                                                const ModelConfig& config) {
  absl::StatusOr<TramsSettings> s = ParseTramsSettings(mode, mem_len, attend, topk, remain, std::move(layers), metric);
  if (!s.ok()) return s.status();
  if (absl::Status valid = s->Validate(config); !valid.ok()) return valid;
  return s;
}

}  // namespace trams::engine
