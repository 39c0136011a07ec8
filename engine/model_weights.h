// The weights of a Transformer-XL LM, converted to f32 on the host, with HF's weight tying resolved.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"

namespace trams::engine {

class SafetensorsFile;

// A row-major f32 matrix. Storage is shared so that tied weights (HF ties output layers to the
// embedding) are held once; `data` may point into the middle of it (a row range of a cluster).
struct Matrix {
  std::shared_ptr<const std::vector<float>> storage;
  const float* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;

  bool empty() const { return data == nullptr; }
  Matrix RowRange(int64_t begin, int64_t end) const;
};

struct LayerWeights {
  Matrix qkv;        // [3 * H * Dh, d_model]: q rows, k rows, v rows, head-major inside each
  Matrix r_net;      // [H * Dh, d_model]
  Matrix o_net;      // [d_model, H * Dh]
  Matrix attn_ln_g, attn_ln_b;  // [1, d_model]
  Matrix ff1_w, ff1_b;          // [d_inner, d_model], [1, d_inner]
  Matrix ff2_w, ff2_b;          // [d_model, d_inner], [1, d_model]
  Matrix ff_ln_g, ff_ln_b;      // [1, d_model]
  Matrix r_w_bias, r_r_bias;    // [H, Dh] (shared across layers unless untie_r)
};

struct EmbeddingCluster {
  Matrix table;  // [ids in cluster, cluster_dim]
  Matrix proj;   // [d_model, cluster_dim], empty = identity
};

struct OutputCluster {
  Matrix weight;  // [ids in cluster, cluster_dim]
  Matrix bias;    // [1, ids in cluster]
  Matrix proj;    // [d_model, cluster_dim], empty = identity (hidden used as is)
};

struct ModelWeights {
  ModelConfig config;
  std::vector<EmbeddingCluster> embedding;  // one per cluster
  std::vector<LayerWeights> layers;
  std::vector<OutputCluster> output;        // one per cluster
  Matrix cluster_weight;                    // [n_clusters, d_embed] (adaptive only)
  Matrix cluster_bias;                      // [1, n_clusters]
};

// Reads and checks every tensor the config calls for; errors name the tensor and the expected shape.
absl::StatusOr<ModelWeights> LoadModelWeights(const ModelConfig& config, const SafetensorsFile& file);
// config.json + model.safetensors from a model directory.
absl::StatusOr<ModelWeights> LoadModelDirectory(const std::string& model_dir);

}  // namespace trams::engine
