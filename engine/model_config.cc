#include "engine/model_config.h"

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "engine/echo.h"
#include "engine/model_files.h"
#include "engine/status_macros.h"

namespace trams::engine {
namespace {

using nlohmann::json;

// A value from the file, for a message: capped and escaped.
std::string Dump(const json& j) { return EchoForError(j.dump(-1, ' ', false, json::error_handler_t::replace)); }

// Reads an integer field; `required` fields must be present.
absl::Status ReadInt(const json& j, const char* key, bool required, int64_t* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return absl::InvalidArgumentError(absl::StrCat("config.json: missing required field '", key, "'"));
    return absl::OkStatus();
  }
  if (!it->is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: field '", key, "' must be an integer, got ", Dump(*it)));
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
    return absl::InvalidArgumentError(absl::StrCat("config.json: field '", key, "' must be true or false, got ", Dump(*it)));
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

int64_t ModelConfig::ParameterCount() const {
  const int64_t d = d_model, hd = attn_width(), di = d_inner;
  const std::vector<int64_t> ends = cutoff_ends();
  int64_t n = 0;
  // Embedding and output clusters: table (x2 for an untied output layer), projections, bias.
  for (int i = 0; i <= n_clusters(); ++i) {
    const int64_t ids = div_val == 1 ? vocab_size : ends[i + 1] - ends[i];
    const int64_t dim = cluster_dim(div_val == 1 ? 0 : i);
    n += 2 * ids * dim + 2 * d * dim;
    if (div_val == 1) break;
  }
  n += vocab_size + n_clusters() * (d_embed + int64_t{1});  // output bias, cluster weight and bias
  // Per layer: qkv (3 hd x d), r_net, o_net, feed-forward, layer norms, r biases.
  const int64_t layer = 5 * hd * d + 2 * d * di + di + 5 * d + 2 * hd;
  return n + n_layer * layer + 2 * hd;
}

absl::Status ModelConfig::Validate() const {
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v <= 0) return absl::InvalidArgumentError(absl::StrCat("config.json: '", name, "' must be positive, got ", v));
    return absl::OkStatus();
  };
  auto at_most = [](const char* name, int64_t v, int64_t limit) -> absl::Status {
    if (v > limit) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: '", name, "' is ", v, ", above the limit ", limit));
    }
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
  // Bounds first, so that every product below (and in the loaders) fits int64.
  RETURN_IF_ERROR(at_most("n_layer", n_layer, kMaxLayers));
  RETURN_IF_ERROR(at_most("d_model", d_model, kMaxModelDim));
  RETURN_IF_ERROR(at_most("d_embed", d_embed, kMaxModelDim));
  RETURN_IF_ERROR(at_most("n_head", n_head, kMaxHeads));
  RETURN_IF_ERROR(at_most("d_head", d_head, kMaxModelDim));
  RETURN_IF_ERROR(at_most("d_inner", d_inner, kMaxModelDim));
  RETURN_IF_ERROR(at_most("vocab_size", vocab_size, kMaxModelDim));
  RETURN_IF_ERROR(at_most("div_val", div_val, kMaxModelDim));
  RETURN_IF_ERROR(at_most("clamp_len", clamp_len, kMaxModelDim));  // <= 0: no clamping
  RETURN_IF_ERROR(at_most("n_head * d_head", int64_t{n_head} * d_head, kMaxModelDim));
  if (static_cast<int64_t>(cutoffs.size()) > kMaxCutoffs) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: 'cutoffs' has ", cutoffs.size(),
                                                   " entries, above the limit ", kMaxCutoffs));
  }
  if (d_model % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: d_model must be even (sinusoid position "
                                                   "embedding of width d_model), got ", d_model));
  }
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
  if (!(layer_norm_epsilon > 0) || !std::isfinite(layer_norm_epsilon)) {
    return absl::InvalidArgumentError("config.json: 'layer_norm_epsilon' must be positive and finite");
  }
  const int64_t params = ParameterCount();
  if (params > kMaxParameters) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: the model would have ", params,
                                                   " parameters, above the limit ", kMaxParameters));
  }
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
  // Read as a file of its directory, so a config.json symlinked out of a model directory is refused.
  const std::filesystem::path p(path);
  ASSIGN_OR_RETURN(const std::string text,
                   ReadModelFile(p.parent_path().string(), p.filename().string(), kMaxJsonFileBytes, "model config"));
  auto config = ParseModelConfig(text);
  if (!config.ok()) {
    return absl::Status(config.status().code(), absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

}  // namespace trams::engine
