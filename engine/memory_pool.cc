#include "engine/memory_pool.h"

#include <algorithm>

#include "engine/ring_cursor.h"
#include "engine/undo_plan.h"

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
  AdvanceRing(settings_.mem_len, n, &start_, &size_);
  position_ += n;
  if (in_transaction_) appended_ += n;
  last_hidden_.assign(last_hidden, last_hidden + d_model);
}

absl::Status StreamState::BeginTransaction() {
  in_transaction_ = true;
  saved_cursor_ = Cursor{start_, size_, position_, last_hidden_};
  appended_ = 0;
  saved_rows_ = 0;
  undo_.assign(layers_.size(), LayerPool{});
  return absl::OkStatus();
}

// Which rows, in what order, and where they go in the log: engine/undo_plan.h (shared with the CUDA backend).
void StreamState::SaveRowsBeforeAppend(int n) {
  const int m = settings_.mem_len;
  if (!in_transaction_ || m == 0) return;
  thread_local std::vector<UndoRun> runs;
  saved_rows_ = UndoRowsToSave(m, saved_cursor_.start, saved_cursor_.size, appended_, saved_rows_, n, &runs);
  const size_t width = layers_[0].keys.size() / m;
  for (const UndoRun& run : runs) {
    const size_t row = static_cast<size_t>(run.ring_row), count = static_cast<size_t>(run.count);
    for (size_t l = 0; l < layers_.size(); ++l) {
      const LayerPool& pool = layers_[l];
      LayerPool& undo = undo_[l];
      undo.keys.insert(undo.keys.end(), pool.keys.begin() + row * width, pool.keys.begin() + (row + count) * width);
      undo.values.insert(undo.values.end(), pool.values.begin() + row * width,
                         pool.values.begin() + (row + count) * width);
      if (!pool.scores.empty()) {
        const size_t heads = pool.scores.size() / m;
        undo.scores.insert(undo.scores.end(), pool.scores.begin() + row * heads,
                           pool.scores.begin() + (row + count) * heads);
      }
    }
  }
}

absl::Status StreamState::Rollback() {
  if (!in_transaction_) return absl::OkStatus();
  const int m = settings_.mem_len;
  if (m > 0) {
    std::vector<UndoRun> runs;
    UndoRowsToRestore(m, saved_cursor_.start, saved_cursor_.size, saved_rows_, &runs);
    const size_t width = layers_[0].keys.size() / m;
    for (const UndoRun& run : runs) {
      const size_t row = static_cast<size_t>(run.ring_row), j = static_cast<size_t>(run.log_row);
      const size_t count = static_cast<size_t>(run.count);
      for (size_t l = 0; l < layers_.size(); ++l) {
        LayerPool& pool = layers_[l];
        const LayerPool& undo = undo_[l];
        std::copy_n(undo.keys.begin() + j * width, count * width, pool.keys.begin() + row * width);
        std::copy_n(undo.values.begin() + j * width, count * width, pool.values.begin() + row * width);
        if (!pool.scores.empty()) {
          const size_t heads = pool.scores.size() / m;
          std::copy_n(undo.scores.begin() + j * heads, count * heads, pool.scores.begin() + row * heads);
        }
      }
    }
  }
  start_ = saved_cursor_.start;
  size_ = saved_cursor_.size;
  position_ = saved_cursor_.position;
  last_hidden_ = saved_cursor_.last_hidden;
  return Commit();
}

absl::Status StreamState::Commit() {
  in_transaction_ = false;
  undo_.clear();
  undo_.shrink_to_fit();
  saved_cursor_ = Cursor{};
  appended_ = 0;
  saved_rows_ = 0;
  return absl::OkStatus();
}

int64_t StreamState::undo_bytes() const {
  int64_t floats = static_cast<int64_t>(saved_cursor_.last_hidden.size());
  for (const auto& l : undo_) floats += l.keys.size() + l.values.size() + l.scores.size();
  return floats * static_cast<int64_t>(sizeof(float));
}

void StreamState::SetFilled(int n) {
  start_ = 0;
  size_ = n;
}

}  // namespace trams
