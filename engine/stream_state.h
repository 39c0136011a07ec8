// The memory of one stream: per layer, the keys, values and TRAMS scores of up to M past tokens.
// Keys/values/scores depend only on a token's layer input and the weights, so they are computed once,
// when the token enters the pool (the reference code recomputes the whole pool every segment).
// All layers hold the same tokens, so one ring-buffer cursor serves them all.
// The state is plain arrays so it serializes cleanly (snapshots, migration between replicas).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/engine.h"
#include "engine/model_config.h"
#include "engine/stream_image.h"
#include "engine/trams_settings.h"

namespace trams::engine {

// Keys and values live in `keys`/`values` (f32 pool) or, rounded, in `keys_half`/`values_half` (f16 or
// bf16 bits); the other pair is empty. Read them with StreamState::LoadRow.
struct LayerPool {
  std::vector<float> keys;    // [M, H * Dh], ring buffer (f32 pool)
  std::vector<float> values;  // [M, H * Dh]
  std::vector<uint16_t> keys_half;    // [M, H * Dh] f16/bf16 bits (f16/bf16 pool)
  std::vector<uint16_t> values_half;  // [M, H * Dh]
  std::vector<float> scores;  // [M, H]; empty when this layer never selects
};

class StreamState final : public EngineStream {
 public:
  StreamState(const ModelConfig& config, const TramsSettings& settings, PoolDType pool_dtype = PoolDType::kF32);

  // Exact bytes of pool + prediction state for a stream with these settings (what StreamState allocates):
  // keys and values at PoolDTypeBytes(pool_dtype) per element, scores and the hidden state at 4.
  static int64_t BytesFor(const ModelConfig& config, const TramsSettings& settings,
                          PoolDType pool_dtype = PoolDType::kF32);
  // `v` as the pool stores it (f32: unchanged; f16/bf16: rounded to nearest even, hd_common.cuh).
  static float RoundToPool(PoolDType pool_dtype, float v);

  PoolDType pool_dtype() const { return pool_dtype_; }
  int width() const { return width_; }  // H * Dh
  // Writes ring row `row` of layer l: key k and value v (width() floats each), rounded to the pool dtype.
  void StoreKeyValue(int l, int row, const float* k, const float* v);
  // dst[0, count) = elements [row * width() + col, + count) of layer l's keys (or values), as f32.
  void LoadRow(int l, bool value, int row, int col, int count, float* dst) const;
  // Direct pointer to that f32 row (f32 pools only; null for f16/bf16).
  const float* F32Row(int l, bool value, int row, int col) const;

  const TramsSettings& settings() const override { return settings_; }
  int size() const override { return size_; }          // tokens in the pool (<= capacity)
  int64_t position() const override { return position_; }  // tokens consumed since the stream started
  int64_t bytes() const override;

  // Row of the `index`-th oldest pool token (0 = oldest) in the ring buffers.
  int RingRow(int index) const { return (start_ + index) % settings_.mem_len; }
  const LayerPool& layer(int l) const { return layers_[l]; }
  LayerPool& mutable_layer(int l) { return layers_[l]; }

  // Final hidden state of the last consumed token: it predicts the next token. Empty before the first.
  const std::vector<float>& last_hidden() const { return last_hidden_; }

  // Ring rows where the next `n` tokens go (the oldest rows once full), then commit them.
  int AppendRow(int i) const;  // row for the i-th of the tokens being appended
  void CommitAppend(int n, const float* last_hidden, int d_model);
  // Marks the pool as holding `n` tokens already written at rows [0, n) (used for the zero-filled pool).
  void SetFilled(int n);

  // The state in pool order (stream_image.h); FAILED_PRECONDITION inside a transaction.
  absl::StatusOr<StreamImage> Export(const ModelConfig& config) const;
  // Loads an image that passed CheckStreamImage into this new, empty stream of the same settings and
  // pool dtype: rows [0, size) in pool order, the cursor and the hidden state.
  void Load(const ModelConfig& config, const StreamImage& image);

  // Transactions make a multi-segment request all-or-nothing: after BeginTransaction(), each forward
  // first saves the live pool rows it is about to overwrite (at most the pool's size per layer over
  // the whole transaction), and Rollback() restores them and the cursor. Commit() drops the log.
  absl::Status BeginTransaction() override;
  absl::Status Rollback() override;
  absl::Status Commit() override;
  bool in_transaction() const override { return in_transaction_; }
  int64_t undo_bytes() const override;  // saved data; never more than bytes()
  // Called by the forward, before it writes the rows of `n` new tokens.
  void SaveRowsBeforeAppend(int n);

 private:
  struct Cursor {
    int start = 0;
    int size = 0;
    int64_t position = 0;
    std::vector<float> last_hidden;
  };
  TramsSettings settings_;
  PoolDType pool_dtype_ = PoolDType::kF32;
  int width_ = 0;
  std::vector<LayerPool> layers_;
  std::vector<float> last_hidden_;
  int start_ = 0;
  int size_ = 0;
  int64_t position_ = 0;

  bool in_transaction_ = false;
  Cursor saved_cursor_;
  int64_t appended_ = 0;  // tokens appended since BeginTransaction
  int saved_rows_ = 0;    // overwrite indices [0, saved_rows_) are handled (saved or never live)
  std::vector<LayerPool> undo_;  // saved rows, in overwrite order
};

}  // namespace trams::engine
