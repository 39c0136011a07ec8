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
#include "engine/trams_selector.h"

namespace trams {

struct LayerPool {
  std::vector<float> keys;    // [M, H * Dh], ring buffer
  std::vector<float> values;  // [M, H * Dh]
  std::vector<float> scores;  // [M, H]; empty when this layer never selects
};

class StreamState final : public EngineStream {
 public:
  StreamState(const ModelConfig& config, const TramsSettings& settings);

  // Exact bytes of pool + prediction state for a stream with these settings (what StreamState allocates).
  static int64_t BytesFor(const ModelConfig& config, const TramsSettings& settings);

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

}  // namespace trams
