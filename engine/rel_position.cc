#include "engine/rel_position.h"

#include <algorithm>

#include "engine/host_ops.h"

namespace trams::engine {

void RelPositionTable::Reserve(int n) {
  if (n <= size_) return;
  const ModelConfig& c = weights_->config;
  width_ = c.attn_width();
  // Rows are computed in fixed blocks of kBlock distances and never recomputed: the matrix product
  // rounds a row differently depending on how many rows share it, so a row must come from the same
  // block whenever and however far the table has grown (results must not depend on server history).
  constexpr int kBlock = 64;
  n = std::max(n, size_ * 2);  // geometric growth: few products
  n = (n + kBlock - 1) / kBlock * kBlock;
  std::vector<float> pos(static_cast<size_t>(kBlock) * c.d_model);
  table_.resize(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) table_[l].resize(static_cast<size_t>(n) * width_, 0.0f);
  for (int first = size_; first < n; first += kBlock) {
    RelPositionSinusoids(first, kBlock, c.d_model, c.clamp_len, pos.data());
    for (int l = 0; l < c.n_layer; ++l) {
      const Matrix& r = weights_->layers[l].r_net;
      MatMulNT(pos.data(), c.d_model, r.data, c.d_model, table_[l].data() + static_cast<size_t>(first) * width_,
               width_, kBlock, width_, c.d_model);
    }
  }
  size_ = n;
}

}  // namespace trams::engine
