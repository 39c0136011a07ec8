#include "engine/memory_pool.h"

#include <algorithm>

namespace trams {

StreamState::StreamState(const ModelConfig& config, const TramsSettings& settings) : settings_(settings) {
  const size_t m = static_cast<size_t>(settings.mem_len);
  const size_t width = static_cast<size_t>(config.attn_width());
  layers_.resize(config.n_layer);
  for (int l = 0; l < config.n_layer; ++l) {
    layers_[l].keys.assign(m * width, 0.0f);
    layers_[l].values.assign(m * width, 0.0f);
    if (settings.SelectsOnLayer(l)) layers_[l].scores.assign(m * config.n_head, 0.0f);
  }
  last_hidden_.reserve(config.d_model);
}

int64_t StreamState::BytesFor(const ModelConfig& config, const TramsSettings& settings) {
  const int64_t m = settings.mem_len;
  int64_t floats = config.d_model;  // last_hidden
  for (int l = 0; l < config.n_layer; ++l) {
    floats += 2 * m * config.attn_width();
    if (settings.SelectsOnLayer(l)) floats += m * config.n_head;
  }
  return floats * static_cast<int64_t>(sizeof(float));
}

int64_t StreamState::bytes() const {
  int64_t floats = static_cast<int64_t>(last_hidden_.capacity());
  for (const auto& l : layers_) floats += l.keys.size() + l.values.size() + l.scores.size();
  return floats * static_cast<int64_t>(sizeof(float));
}

int StreamState::AppendRow(int i) const {
  const int m = settings_.mem_len;
  // Appending n tokens to a pool of `size_`: token i lands after the current newest, wrapping.
  return (start_ + size_ + i) % m;
}

void StreamState::CommitAppend(int n, const float* last_hidden, int d_model) {
  const int m = settings_.mem_len;
  if (m > 0) {
    const int total = size_ + std::min(n, m);
    if (n >= m) {
      // Only the last m of the appended tokens survive; they were written at rows AppendRow(n - m + j).
      start_ = (start_ + size_ + n - m) % m;
      size_ = m;
    } else if (total > m) {
      start_ = (start_ + total - m) % m;
      size_ = m;
    } else {
      size_ = total;
    }
  }
  position_ += n;
  last_hidden_.assign(last_hidden, last_hidden + d_model);
}

void StreamState::SetFilled(int n) {
  start_ = 0;
  size_ = n;
}

}  // namespace trams
