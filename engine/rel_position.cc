#include "engine/rel_position.h"

#include <algorithm>
#include <cmath>

#include "engine/host_ops.h"

namespace trams {

void SinusoidEmbedding(double position, int d_model, float* out) {
  const int half = d_model / 2;
  for (int k = 0; k < half; ++k) {
    // Same float32 rounding as PyTorch: inv_freq is a float32 tensor, the product is float32.
    const float inv_freq = static_cast<float>(1.0 / std::pow(10000.0, (2.0 * k) / d_model));
    const float angle = static_cast<float>(position) * inv_freq;
    out[k] = std::sin(angle);
    out[half + k] = std::cos(angle);
  }
}

void RelPositionTable::Reserve(int n) {
  if (n <= size_) return;
  const ModelConfig& c = weights_->config;
  width_ = c.attn_width();
  n = std::max(n, size_ * 2);  // geometric growth: few recomputations
  std::vector<float> pos(static_cast<size_t>(n) * c.d_model);
  for (int d = 0; d < n; ++d) {
    const int p = c.clamp_len > 0 ? std::min(d, c.clamp_len) : d;
    SinusoidEmbedding(p, c.d_model, pos.data() + static_cast<size_t>(d) * c.d_model);
  }
  table_.resize(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) {
    table_[l].assign(static_cast<size_t>(n) * width_, 0.0f);
    const Matrix& r = weights_->layers[l].r_net;
    MatMulNT(pos.data(), c.d_model, r.data, c.d_model, table_[l].data(), width_, n, width_, c.d_model);
  }
  size_ = n;
}

}  // namespace trams
