// Model hyper-parameters, read from a Hugging Face TransfoXLConfig `config.json`.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace trams {

struct ModelConfig {
  int n_layer = 0;
  int d_model = 0;   // hidden width between layers
  int d_embed = 0;   // width of the first embedding cluster (before projection to d_model)
  int n_head = 0;
  int d_head = 0;    // n_head * d_head need not equal d_model
  int d_inner = 0;   // feed-forward width
  int64_t vocab_size = 0;
  std::vector<int64_t> cutoffs;  // adaptive softmax boundaries, without vocab_size; empty = plain softmax
  int div_val = 1;               // cluster i has width d_embed / div_val^i
  std::vector<bool> tie_projs;   // one per cluster (cutoffs.size() + 1)
  bool tie_word_embeddings = true;
  bool untie_r = true;           // per-layer r_w_bias / r_r_bias
  bool pre_lnorm = false;
  bool same_length = true;      // defaults are HF TransfoXLConfig's
  int clamp_len = 1000;          // relative distances are clamped to this when > 0
  float layer_norm_epsilon = 1e-5f;

  int n_clusters() const { return static_cast<int>(cutoffs.size()); }
  // [0, cutoffs..., vocab_size]: cluster i holds ids [ends[i], ends[i+1]).
  std::vector<int64_t> cutoff_ends() const;
  // Width of cluster i's embedding (d_embed / div_val^i).
  int cluster_dim(int cluster) const;
  int attn_width() const { return n_head * d_head; }

  absl::Status Validate() const;
};

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

}  // namespace trams
