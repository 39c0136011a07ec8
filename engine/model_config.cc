#include "engine/model_config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace trams {
namespace {

using nlohmann::json;

// Reads an integer field; `required` fields must be present.
absl::Status ReadInt(const json& j, const char* key, bool required, int64_t* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return absl::InvalidArgumentError(absl::StrCat("config.json: missing required field '", key, "'"));
    return absl::OkStatus();
  }
  if (!it->is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: field '", key, "' must be an integer, got ", it->dump()));
  }
  *out = it->get<int64_t>();
  return absl::OkStatus();
}

absl::Status ReadInt32(const json& j, const char* key, bool required, int* out) {
  int64_t v = *out;
  RETURN_IF_ERROR(ReadInt(j, key, required, &v));
  if (v < INT32_MIN || v > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: field '", key, "' is out of range: ", v));
  }
  *out = static_cast<int>(v);
  return absl::OkStatus();
}

absl::Status ReadBool(const json& j, const char* key, bool* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: field '", key, "' must be true or false, got ", it->dump()));
  }
  *out = it->get<bool>();
  return absl::OkStatus();
}

}  // namespace

std::vector<int64_t> ModelConfig::cutoff_ends() const {
  std::vector<int64_t> ends = {0};
  ends.insert(ends.end(), cutoffs.begin(), cutoffs.end());
  ends.push_back(vocab_size);
  return ends;
}

int ModelConfig::cluster_dim(int cluster) const {
  int dim = d_embed;
  for (int i = 0; i < cluster; ++i) dim /= div_val;
  return dim;
}

absl::Status ModelConfig::Validate() const {
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v <= 0) return absl::InvalidArgumentError(absl::StrCat("config.json: '", name, "' must be positive, got ", v));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(positive("n_layer", n_layer));
  RETURN_IF_ERROR(positive("d_model", d_model));
  RETURN_IF_ERROR(positive("d_embed", d_embed));
  RETURN_IF_ERROR(positive("n_head", n_head));
  RETURN_IF_ERROR(positive("d_head", d_head));
  RETURN_IF_ERROR(positive("d_inner", d_inner));
  RETURN_IF_ERROR(positive("vocab_size", vocab_size));
  RETURN_IF_ERROR(positive("div_val", div_val));
  if (d_model % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: d_model must be even (sinusoid position "
                                                   "embedding of width d_model), got ", d_model));
  }
  if (vocab_size > INT32_MAX) return absl::InvalidArgumentError("config.json: vocab_size does not fit 32-bit ids");
  int64_t prev = 0;
  for (int64_t c : cutoffs) {
    if (c <= prev || c >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config.json: 'cutoffs' must be strictly increasing, positive and below vocab_size (", vocab_size,
          "); offending value ", c));
    }
    prev = c;
  }
  for (int i = 0; i <= n_clusters(); ++i) {
    if (cluster_dim(i) <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: d_embed ", d_embed, " / div_val ", div_val,
                                                     "^", i, " leaves cluster ", i, " with no width"));
    }
  }
  if (tie_projs.size() != cutoffs.size() + 1) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: 'tie_projs' has ", tie_projs.size(),
                                                   " entries; it needs one per cluster (", cutoffs.size() + 1, ")"));
  }
  if (!(layer_norm_epsilon > 0)) return absl::InvalidArgumentError("config.json: 'layer_norm_epsilon' must be positive");
  return absl::OkStatus();
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text) {
  json j = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("config.json: not a JSON object");
  ModelConfig c;
  RETURN_IF_ERROR(ReadInt32(j, "n_layer", true, &c.n_layer));
  RETURN_IF_ERROR(ReadInt32(j, "d_model", true, &c.d_model));
  c.d_embed = c.d_model;
  RETURN_IF_ERROR(ReadInt32(j, "d_embed", false, &c.d_embed));
  RETURN_IF_ERROR(ReadInt32(j, "n_head", true, &c.n_head));
  RETURN_IF_ERROR(ReadInt32(j, "d_head", true, &c.d_head));
  RETURN_IF_ERROR(ReadInt32(j, "d_inner", true, &c.d_inner));
  const bool has_vocab = j.contains("vocab_size");
  RETURN_IF_ERROR(ReadInt(j, has_vocab ? "vocab_size" : "n_token", true, &c.vocab_size));
  RETURN_IF_ERROR(ReadInt32(j, "div_val", false, &c.div_val));
  RETURN_IF_ERROR(ReadInt32(j, "clamp_len", false, &c.clamp_len));
  RETURN_IF_ERROR(ReadBool(j, "tie_word_embeddings", &c.tie_word_embeddings));
  RETURN_IF_ERROR(ReadBool(j, "untie_r", &c.untie_r));
  RETURN_IF_ERROR(ReadBool(j, "pre_lnorm", &c.pre_lnorm));
  RETURN_IF_ERROR(ReadBool(j, "same_length", &c.same_length));
  if (auto it = j.find("cutoffs"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) return absl::InvalidArgumentError("config.json: 'cutoffs' must be a list of integers");
    for (const auto& v : *it) {
      if (!v.is_number_integer()) return absl::InvalidArgumentError("config.json: 'cutoffs' must be a list of integers");
      c.cutoffs.push_back(v.get<int64_t>());
    }
  } else if (!j.contains("cutoffs")) {
    c.cutoffs = {20000, 40000, 200000};  // HF default
  }
  if (auto it = j.find("tie_projs"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) return absl::InvalidArgumentError("config.json: 'tie_projs' must be a list of booleans");
    for (const auto& v : *it) {
      if (!v.is_boolean()) return absl::InvalidArgumentError("config.json: 'tie_projs' must be a list of booleans");
      c.tie_projs.push_back(v.get<bool>());
    }
  } else {
    // HF derives it from proj_share_all_but_first (default true): [False] + [True] * len(cutoffs).
    bool share = true;
    RETURN_IF_ERROR(ReadBool(j, "proj_share_all_but_first", &share));
    c.tie_projs.assign(c.cutoffs.size() + 1, share);
    c.tie_projs[0] = false;
  }
  if (auto it = j.find("layer_norm_epsilon"); it != j.end() && !it->is_null()) {
    if (!it->is_number()) return absl::InvalidArgumentError("config.json: 'layer_norm_epsilon' must be a number");
    c.layer_norm_epsilon = it->get<float>();
  }
  RETURN_IF_ERROR(c.Validate());
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open model config ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  auto config = ParseModelConfig(ss.str());
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

}  // namespace trams
