// Model hyper-parameters, read from a Hugging Face TransfoXLConfig `config.json`.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace trams::engine {

// Limits Validate enforces before anything is sized from a config (a config.json is input: n_layer
// 2^31-1 used to reach std::bad_alloc). Generous for real models (the paper's WikiText-103 model is
// 16 x 410 with 267,735 words and ~150M parameters; the largest public Transformer-XL has 18 x 1024),
// and small enough that every size product below fits int64 without checks:
//   d_model, d_embed, d_inner, d_head, n_head * d_head, vocab_size, div_val, clamp_len <= 2^20;
//   n_layer, n_head <= 4096; cutoffs <= 64 entries;
//   ParameterCount() <= 2^34 (64 GiB of f32 weights).
// mem_len and tgt_len are not model fields here (a stream's TramsSettings bound those).
constexpr int64_t kMaxModelDim = int64_t{1} << 20;
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxHeads = 4096;
constexpr int64_t kMaxCutoffs = 64;
constexpr int64_t kMaxParameters = int64_t{1} << 34;

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
  // Parameters the weights hold, an upper bound (tied weights are counted twice). Meaningful for a
  // config that passed Validate (its sizes cannot overflow then).
  int64_t ParameterCount() const;

  // Every field in range and consistent, the limits above included; errors name the field.
  absl::Status Validate() const;
};

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);

}  // namespace trams::engine
