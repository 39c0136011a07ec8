#include "engine/stream_state.h"

#include <algorithm>
#include <cstring>

#include "engine/cuda/hd_common.cuh"  // the f16/bf16 conversions the device and its emulation use
#include "engine/ring_cursor.h"
#include "engine/undo_plan.h"

namespace trams::engine {

namespace {
cuda::DType DeviceType(PoolDType t) { return static_cast<cuda::DType>(static_cast<int32_t>(t)); }

int64_t LayerPoolBytes(const LayerPool& l) {
  return static_cast<int64_t>(sizeof(float)) * static_cast<int64_t>(l.keys.size() + l.values.size() + l.scores.size()) +
         static_cast<int64_t>(sizeof(uint16_t)) * static_cast<int64_t>(l.keys_half.size() + l.values_half.size());
}

template <typename T>
void AppendRows(const std::vector<T>& pool, size_t row, size_t count, size_t width, std::vector<T>* log) {
  log->insert(log->end(), pool.begin() + row * width, pool.begin() + (row + count) * width);
}

template <typename T>
void RestoreRows(const std::vector<T>& log, size_t j, size_t count, size_t width, size_t row, std::vector<T>* pool) {
  std::copy_n(log.begin() + j * width, count * width, pool->begin() + row * width);
}
}  // namespace

StreamState::StreamState(const ModelConfig& config, const TramsSettings& settings, PoolDType pool_dtype)
    : settings_(settings), pool_dtype_(pool_dtype), width_(config.attn_width()) {
  const size_t m = static_cast<size_t>(settings.mem_len);
  const size_t width = static_cast<size_t>(config.attn_width());
  layers_.resize(config.n_layer);
  for (int l = 0; l < config.n_layer; ++l) {
    if (pool_dtype == PoolDType::kF32) {
      layers_[l].keys.assign(m * width, 0.0f);
      layers_[l].values.assign(m * width, 0.0f);
    } else {
      layers_[l].keys_half.assign(m * width, 0);
      layers_[l].values_half.assign(m * width, 0);
    }
    if (settings.SelectsOnLayer(l)) layers_[l].scores.assign(m * config.n_head, 0.0f);
  }
  last_hidden_.reserve(config.d_model);
}

int64_t StreamState::BytesFor(const ModelConfig& config, const TramsSettings& settings, PoolDType pool_dtype) {
  const int64_t m = settings.mem_len;
  int64_t floats = config.d_model;  // last_hidden
  int64_t kv_elements = 0;
  for (int l = 0; l < config.n_layer; ++l) {
    kv_elements += 2 * m * config.attn_width();
    if (settings.SelectsOnLayer(l)) floats += m * config.n_head;
  }
  return floats * static_cast<int64_t>(sizeof(float)) + kv_elements * PoolDTypeBytes(pool_dtype);
}

int64_t StreamState::bytes() const {
  int64_t bytes = static_cast<int64_t>(last_hidden_.capacity() * sizeof(float));
  for (const auto& l : layers_) bytes += LayerPoolBytes(l);
  return bytes;
}

float StreamState::RoundToPool(PoolDType pool_dtype, float v) {
  if (pool_dtype == PoolDType::kF32) return v;
  uint16_t bits = 0;
  cuda::StoreAs(&bits, DeviceType(pool_dtype), 0, v);
  return cuda::LoadF32(&bits, DeviceType(pool_dtype), 0);
}

void StreamState::StoreKeyValue(int l, int row, const float* k, const float* v) {
  LayerPool& pool = layers_[l];
  const size_t o = static_cast<size_t>(row) * width_;
  if (pool_dtype_ == PoolDType::kF32) {
    std::copy_n(k, width_, pool.keys.data() + o);
    std::copy_n(v, width_, pool.values.data() + o);
    return;
  }
  const cuda::DType t = DeviceType(pool_dtype_);
  for (int c = 0; c < width_; ++c) {
    cuda::StoreAs(pool.keys_half.data(), t, static_cast<int64_t>(o) + c, k[c]);
    cuda::StoreAs(pool.values_half.data(), t, static_cast<int64_t>(o) + c, v[c]);
  }
}

void StreamState::LoadRow(int l, bool value, int row, int col, int count, float* dst) const {
  const LayerPool& pool = layers_[l];
  const size_t o = static_cast<size_t>(row) * width_ + col;
  if (pool_dtype_ == PoolDType::kF32) {
    std::copy_n((value ? pool.values : pool.keys).data() + o, count, dst);
    return;
  }
  const uint16_t* src = (value ? pool.values_half : pool.keys_half).data() + o;
  const cuda::DType t = DeviceType(pool_dtype_);
  for (int c = 0; c < count; ++c) dst[c] = cuda::LoadF32(src, t, c);
}

const float* StreamState::F32Row(int l, bool value, int row, int col) const {
  if (pool_dtype_ != PoolDType::kF32) return nullptr;
  const LayerPool& pool = layers_[l];
  return (value ? pool.values : pool.keys).data() + static_cast<size_t>(row) * width_ + col;
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
  const size_t width = static_cast<size_t>(width_);
  for (const UndoRun& run : runs) {
    const size_t row = static_cast<size_t>(run.ring_row), count = static_cast<size_t>(run.count);
    for (size_t l = 0; l < layers_.size(); ++l) {
      const LayerPool& pool = layers_[l];
      LayerPool& undo = undo_[l];
      // The stored bytes (rounded rows of an f16/bf16 pool) are saved as they are.
      if (pool_dtype_ == PoolDType::kF32) {
        AppendRows(pool.keys, row, count, width, &undo.keys);
        AppendRows(pool.values, row, count, width, &undo.values);
      } else {
        AppendRows(pool.keys_half, row, count, width, &undo.keys_half);
        AppendRows(pool.values_half, row, count, width, &undo.values_half);
      }
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
    const size_t width = static_cast<size_t>(width_);
    for (const UndoRun& run : runs) {
      const size_t row = static_cast<size_t>(run.ring_row), j = static_cast<size_t>(run.log_row);
      const size_t count = static_cast<size_t>(run.count);
      for (size_t l = 0; l < layers_.size(); ++l) {
        LayerPool& pool = layers_[l];
        const LayerPool& undo = undo_[l];
        if (pool_dtype_ == PoolDType::kF32) {
          RestoreRows(undo.keys, j, count, width, row, &pool.keys);
          RestoreRows(undo.values, j, count, width, row, &pool.values);
        } else {
          RestoreRows(undo.keys_half, j, count, width, row, &pool.keys_half);
          RestoreRows(undo.values_half, j, count, width, row, &pool.values_half);
        }
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
  int64_t bytes = static_cast<int64_t>(saved_cursor_.last_hidden.size() * sizeof(float));
  for (const auto& l : undo_) bytes += LayerPoolBytes(l);
  return bytes;
}

void StreamState::SetFilled(int n) {
  start_ = 0;
  size_ = n;
}

absl::StatusOr<StreamImage> StreamState::Export(const ModelConfig& config) const {
  if (in_transaction_) {
    return absl::FailedPreconditionError("the stream is inside a transaction: export it after Commit or Rollback");
  }
  StreamImage image;
  image.settings = settings_;
  image.pool_dtype = pool_dtype_;
  image.size = size_;
  image.position = position_;
  image.last_hidden = last_hidden_;
  const size_t row_bytes = static_cast<size_t>(width_) * PoolDTypeBytes(pool_dtype_);
  const size_t h = static_cast<size_t>(config.n_head);
  const size_t layer_bytes = row_bytes * static_cast<size_t>(size_);
  image.keys.resize(layer_bytes * layers_.size());
  image.values.resize(layer_bytes * layers_.size());
  image.scores.reserve(static_cast<size_t>(ScoringLayers(config, settings_)) * size_ * h);
  for (size_t l = 0; l < layers_.size(); ++l) {
    const LayerPool& p = layers_[l];
    const char* keys = pool_dtype_ == PoolDType::kF32 ? reinterpret_cast<const char*>(p.keys.data())
                                                      : reinterpret_cast<const char*>(p.keys_half.data());
    const char* values = pool_dtype_ == PoolDType::kF32 ? reinterpret_cast<const char*>(p.values.data())
                                                        : reinterpret_cast<const char*>(p.values_half.data());
    for (int i = 0; i < size_; ++i) {
      const size_t row = static_cast<size_t>(RingRow(i));
      std::memcpy(&image.keys[l * layer_bytes + i * row_bytes], keys + row * row_bytes, row_bytes);
      std::memcpy(&image.values[l * layer_bytes + i * row_bytes], values + row * row_bytes, row_bytes);
      if (!p.scores.empty()) {
        image.scores.insert(image.scores.end(), p.scores.begin() + row * h, p.scores.begin() + (row + 1) * h);
      }
    }
  }
  return image;
}

void StreamState::Load(const ModelConfig& config, const StreamImage& image) {
  const size_t row_bytes = static_cast<size_t>(width_) * PoolDTypeBytes(pool_dtype_);
  const size_t h = static_cast<size_t>(config.n_head);
  const size_t layer_bytes = row_bytes * static_cast<size_t>(image.size);
  const float* scores = image.scores.data();
  for (size_t l = 0; l < layers_.size(); ++l) {
    LayerPool& p = layers_[l];
    char* keys = pool_dtype_ == PoolDType::kF32 ? reinterpret_cast<char*>(p.keys.data())
                                                : reinterpret_cast<char*>(p.keys_half.data());
    char* values = pool_dtype_ == PoolDType::kF32 ? reinterpret_cast<char*>(p.values.data())
                                                  : reinterpret_cast<char*>(p.values_half.data());
    if (layer_bytes > 0) {  // rows [0, size): the ring starts at row 0
      std::memcpy(keys, &image.keys[l * layer_bytes], layer_bytes);
      std::memcpy(values, &image.values[l * layer_bytes], layer_bytes);
    }
    if (!p.scores.empty()) {
      std::copy(scores, scores + image.size * h, p.scores.begin());
      scores += image.size * h;
    }
  }
  start_ = 0;
  size_ = image.size;
  position_ = image.position;
  last_hidden_ = image.last_hidden;
}

}  // namespace trams::engine
