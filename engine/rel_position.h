// Relative-position keys r_net(pos_emb(distance)) per layer. They depend only on the distance, so
// they are computed once per distance (grown on demand) instead of every segment.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/model_weights.h"
#include "engine/precompute.h"  // SinusoidEmbedding, RelPositionSinusoids (shared with the CUDA backend)

namespace trams::engine {

class RelPositionTable {
 public:
  explicit RelPositionTable(const ModelWeights* weights) : weights_(weights) {}

  // Makes distances [0, n) available. Call before Row() from the thread that runs the forward.
  void Reserve(int n);
  int size() const { return size_; }
  // r for `distance` at `layer`: H * Dh floats, head-major.
  const float* Row(int layer, int distance) const {
    return table_[layer].data() + static_cast<size_t>(distance) * width_;
  }

 private:
  const ModelWeights* weights_;
  std::vector<std::vector<float>> table_;  // [layer][distance * H * Dh]
  int size_ = 0;
  int width_ = 0;
};

}  // namespace trams::engine
