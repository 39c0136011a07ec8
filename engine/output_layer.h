// Projected adaptive log-softmax (HF ProjectedAdaptiveLogSoftmax) and plain log-softmax.
// The head scores the first cluster's tokens plus one logit per tail cluster; a tail token's
// log-prob is head[cluster] + the tail's own log-softmax. Scoring a target therefore only needs the
// head and the target's tail cluster; the full distribution (entropy, alternatives, sampling) needs all.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/host_ops.h"
#include "engine/model_weights.h"

namespace trams::engine {

class OutputLayer {
 public:
  explicit OutputLayer(const ModelWeights& weights);

  int64_t vocab_size() const { return vocab_size_; }

  // out[r] = log p(targets[r] | hidden row r), for rows [0, rows). Targets must be valid ids.
  void TargetLogProbs(ThreadPool* pool, const float* hidden, int64_t rows, const int32_t* targets,
                      float* out) const;
  // out[r * vocab + v] = log p(v | hidden row r) for all ids.
  void FullLogProbs(ThreadPool* pool, const float* hidden, int64_t rows, float* out) const;

 private:
  // [rows, cluster_dim] = hidden [rows, d_model] projected for cluster i (identity when no projection).
  const float* Project(ThreadPool* pool, int cluster, const float* hidden, int64_t rows,
                       std::vector<float>* scratch) const;
  // Head log-probs [rows, head_size_].
  void HeadLogProbs(ThreadPool* pool, const float* hidden, int64_t rows, std::vector<float>* head) const;

  const ModelWeights& w_;
  int d_model_;
  int64_t vocab_size_;
  std::vector<int64_t> ends_;
  int64_t head_size_;
  std::vector<float> head_weight_;  // [head_size, d_embed]: first-cluster rows then cluster rows
  std::vector<float> head_bias_;    // [head_size]
};

}  // namespace trams::engine
