// Stream state on the device beyond the forward: the reference code's zero-filled pool
// (TransformerXL::FillPoolWithZeroStates) and transactions, StreamState's undo log (engine/stream_state.cc)
// with the saved rows in host memory, copied in at most two contiguous ring runs per layer and array (which
// rows, in what order: engine/undo_plan.h, shared with the host).
#include <algorithm>
#include <cmath>

#include "engine/cuda/workspace.h"
#include "engine/undo_plan.h"

namespace trams::cuda {
int64_t Stream::undo_bytes() const {
  int64_t floats = static_cast<int64_t>(saved_hidden_.size());
  for (const auto& v : undo_scores_) floats += static_cast<int64_t>(v.size());
  int64_t bytes = floats * static_cast<int64_t>(sizeof(float));
  for (const auto& v : undo_keys_) bytes += static_cast<int64_t>(v.size());
  for (const auto& v : undo_values_) bytes += static_cast<int64_t>(v.size());
  return bytes;
}

Status Context::BeginTransaction(Stream* stream) {
  std::lock_guard<std::mutex> lock(mu_);
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Activate());
  TRAMS_CUDA_RETURN_IF_ERROR(CheckStream(stream));
  Stream& s = *stream;
  std::vector<float> hidden(static_cast<size_t>(c_.d_model));
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Download(hidden.data(), s.last_hidden_, hidden.size() * sizeof(float)));
  s.in_transaction_ = true;
  s.saved_start_ = s.start_;
  s.saved_size_ = s.size_;
  s.saved_position_ = s.position_;
  s.saved_hidden_ = std::move(hidden);
  s.appended_ = 0;
  s.saved_rows_ = 0;
  s.undo_keys_.assign(c_.n_layer, {});
  s.undo_values_.assign(c_.n_layer, {});
  s.undo_scores_.assign(c_.n_layer, {});
  return Status::Ok();
}

// Which rows, in what order, and where they go in the log: engine/undo_plan.h (shared with the host engine).
Status Context::SaveRowsBeforeAppend(Stream& s, int n) {
  const int m = s.capacity();
  if (!s.in_transaction_ || m == 0) return Status::Ok();
  std::vector<engine::UndoRun> runs;
  const int saved_rows = engine::UndoRowsToSave(m, s.saved_start_, s.saved_size_, s.appended_, s.saved_rows_, n, &runs);
  if (!runs.empty()) {
    int total = 0;
    for (const engine::UndoRun& run : runs) total += run.count;
    const int h = c_.n_head;
    const size_t row_bytes = static_cast<size_t>(c_.width()) * DTypeBytes(pool_dtype_);  // stored bytes
    const int log0 = runs.front().log_row;  // rows already in the log
    std::vector<size_t> old_k(c_.n_layer), old_v(c_.n_layer), old_s(c_.n_layer);
    Status st;
    for (int l = 0; l < c_.n_layer && st.ok(); ++l) {
      std::vector<uint8_t>& uk = s.undo_keys_[l];
      std::vector<uint8_t>& uv = s.undo_values_[l];
      std::vector<float>& us = s.undo_scores_[l];
      old_k[l] = uk.size();
      old_v[l] = uv.size();
      old_s[l] = us.size();
      uk.resize(old_k[l] + static_cast<size_t>(total) * row_bytes);
      uv.resize(old_v[l] + static_cast<size_t>(total) * row_bytes);
      if (s.scores_[l] != nullptr) us.resize(old_s[l] + static_cast<size_t>(total) * h);
      for (const engine::UndoRun& run : runs) {
        const size_t j = static_cast<size_t>(run.log_row - log0);
        const size_t bytes = static_cast<size_t>(run.count) * row_bytes;
        const size_t at = static_cast<size_t>(run.ring_row) * row_bytes;
        const int64_t row = run.ring_row;
        st = ops_->Download(uk.data() + old_k[l] + j * row_bytes, reinterpret_cast<const char*>(s.keys_[l]) + at, bytes);
        if (st.ok()) {
          st = ops_->Download(uv.data() + old_v[l] + j * row_bytes, reinterpret_cast<const char*>(s.values_[l]) + at,
                              bytes);
        }
        if (st.ok() && s.scores_[l] != nullptr) {
          st = ops_->Download(us.data() + old_s[l] + j * h, s.scores_[l] + row * h,
                              static_cast<size_t>(run.count) * h * sizeof(float));
        }
        if (!st.ok()) break;
      }
    }
    if (!st.ok()) {  // leave the log as it was
      for (int l = 0; l < c_.n_layer; ++l) {
        if (s.undo_keys_[l].size() > old_k[l]) s.undo_keys_[l].resize(old_k[l]);
        if (s.undo_values_[l].size() > old_v[l]) s.undo_values_[l].resize(old_v[l]);
        if (s.undo_scores_[l].size() > old_s[l]) s.undo_scores_[l].resize(old_s[l]);
      }
      return st.Annotate("saving pool rows for the transaction");
    }
  }
  s.saved_rows_ = saved_rows;
  return Status::Ok();
}

Status Context::RollbackTransaction(Stream* stream) {
  std::lock_guard<std::mutex> lock(mu_);
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Activate());
  TRAMS_CUDA_RETURN_IF_ERROR(CheckStream(stream));
  Stream& s = *stream;
  if (!s.in_transaction_) return Status::Ok();
  const int m = s.capacity();
  if (m > 0) {
    std::vector<engine::UndoRun> runs;
    engine::UndoRowsToRestore(m, s.saved_start_, s.saved_size_, s.saved_rows_, &runs);
    const int h = c_.n_head;
    const size_t row_bytes = static_cast<size_t>(c_.width()) * DTypeBytes(pool_dtype_);  // stored bytes
    for (int l = 0; l < c_.n_layer; ++l) {
      Status st;
      for (const engine::UndoRun& run : runs) {
        const size_t j = static_cast<size_t>(run.log_row);
        const size_t bytes = static_cast<size_t>(run.count) * row_bytes;
        const size_t at = static_cast<size_t>(run.ring_row) * row_bytes;
        const int64_t row = run.ring_row;
        st = ops_->Upload(reinterpret_cast<char*>(s.keys_[l]) + at, s.undo_keys_[l].data() + j * row_bytes, bytes);
        if (st.ok()) {
          st = ops_->Upload(reinterpret_cast<char*>(s.values_[l]) + at, s.undo_values_[l].data() + j * row_bytes,
                            bytes);
        }
        if (st.ok() && s.scores_[l] != nullptr) {
          st = ops_->Upload(s.scores_[l] + row * h, s.undo_scores_[l].data() + j * h,
                            static_cast<size_t>(run.count) * h * sizeof(float));
        }
        if (!st.ok()) break;
      }
      if (!st.ok()) return st.Annotate("rolling back layer " + std::to_string(l));
    }
  }
  TRAMS_CUDA_RETURN_IF_ERROR(
      ops_->Upload(s.last_hidden_, s.saved_hidden_.data(), s.saved_hidden_.size() * sizeof(float)));
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Synchronize());  // the log is freed below
  s.start_ = s.saved_start_;
  s.size_ = s.saved_size_;
  s.position_ = s.saved_position_;
  s.in_transaction_ = false;
  s.saved_hidden_.clear();
  s.undo_keys_.clear();
  s.undo_values_.clear();
  s.undo_scores_.clear();
  return Status::Ok();
}

Status Context::CommitTransaction(Stream* stream) {
  std::lock_guard<std::mutex> lock(mu_);
  TRAMS_CUDA_RETURN_IF_ERROR(CheckStream(stream));
  Stream& s = *stream;
  s.in_transaction_ = false;
  s.saved_hidden_.clear();
  s.undo_keys_.clear();
  s.undo_values_.clear();
  s.undo_scores_.clear();
  s.appended_ = 0;
  s.saved_rows_ = 0;
  return Status::Ok();
}

Status Context::FillZero(Stream* stream) {
  std::lock_guard<std::mutex> lock(mu_);
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Activate());
  TRAMS_CUDA_RETURN_IF_ERROR(CheckStream(stream));
  const int m = stream->capacity();
  if (m == 0) return Status::Ok();
  const int d = c_.d_model, w = c_.width(), H = c_.n_head;
  Plan p;
  p.fill_rows = 1;
  Workspace ws;
  TRAMS_CUDA_RETURN_IF_ERROR(PrepareWorkspace(p, &ws));
  std::vector<StreamLayerMeta> metas(c_.n_layer);
  for (int l = 0; l < c_.n_layer; ++l) {
    metas[l].keys = stream->keys_[l];
    metas[l].values = stream->values_[l];
    metas[l].scores = stream->scores_[l];
    metas[l].metric = stream->settings().metric;
    metas[l].mem_len = m;
    metas[l].pool_dtype = pool_dtype_;
  }
  // Packed row 0 -> every ring row: each row is appended (rounded to the pool dtype, scored from the f32
  // key) exactly as one token would be.
  std::vector<AppendItem> items(static_cast<size_t>(m));
  for (int r = 0; r < m; ++r) items[r].dst_row = r;
  MetaBlob blob;
  const int64_t o_metas = blob.Add(metas), o_item = blob.Add(items);
  TRAMS_CUDA_RETURN_IF_ERROR(EnsureMeta(blob.size()));
  const StreamLayerMeta* dev_metas = MetaBlob::Ptr<const StreamLayerMeta>(meta_, o_metas);
  const AppendItem* dev_item = MetaBlob::Ptr<const AppendItem>(meta_, o_item);

  Status s = ops_->Upload(meta_, blob.data(), static_cast<size_t>(blob.size()));
  if (s.ok()) s = ops_->Zero(ws.zero_row, sizeof(float) * d);
  for (int l = 0; l < c_.n_layer && s.ok(); ++l) {
    const Layer& lw = layers_[l];
    const float* in = ws.zero_row;
    if (c_.pre_lnorm) {
      LayerNormArgs ln;
      ln.x = ws.zero_row;
      ln.gamma = lw.attn_ln_g;
      ln.beta = lw.attn_ln_b;
      ln.out = ws.zero_normed;
      ln.rows = 1;
      ln.d = d;
      ln.eps = c_.eps;
      s = ops_->LayerNorm(ln);
      in = ws.zero_normed;
    }
    if (s.ok()) s = Linear(in, 1, d, lw.qkv, false, ws.zero_qkv, 3 * w, ws.convert);
    AppendArgs ap;
    ap.streams = dev_metas + l;
    ap.items = dev_item;
    ap.n_items = m;
    ap.qkv = ws.zero_qkv;
    ap.n_head = H;
    ap.d_head = c_.d_head;
    ap.gram = lw.gram;
    ap.row_sum = lw.row_sum;
    ap.inv_sqrt_d_model = 1.0 / std::sqrt(static_cast<double>(d));
    if (s.ok()) s = ops_->PoolAppend(ap);
  }
  if (s.ok()) s = ops_->Synchronize();
  if (!s.ok()) return s.Annotate("filling the pool with zero states");
  stream->start_ = 0;
  stream->size_ = m;
  return Status::Ok();
}

}  // namespace trams::cuda

// Stream images (engine/stream_image.h): the pool's ring in pool order, at most two contiguous runs per
// layer and array.
namespace trams::cuda {
namespace {
struct RingRun {
  int64_t ring_row, count;
};
// Ring rows of pool indices [0, size) from `start`: one run, or two when they wrap.
std::vector<RingRun> PoolRuns(int start, int size, int m) {
  std::vector<RingRun> runs;
  if (size == 0) return runs;
  const int first = std::min(size, m - start);
  runs.push_back({start, first});
  if (first < size) runs.push_back({0, size - first});
  return runs;
}
}  // namespace

Status Context::ReadStream(const Stream* stream, const trams_cuda_stream_image& image) {
  std::lock_guard<std::mutex> lock(mu_);
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Activate());
  TRAMS_CUDA_RETURN_IF_ERROR(CheckStream(stream));
  const Stream& s = *stream;
  if (s.in_transaction_) {
    return FailedPrecondition("stream_read: the stream is inside a transaction: read it after commit or rollback");
  }
  if (image.size != s.size_ || image.position != s.position_) {
    return InvalidArgument("stream_read: the image's size and position must be the stream's (stream_info)");
  }
  const bool selects = std::any_of(s.scores_.begin(), s.scores_.end(), [](const float* p) { return p != nullptr; });
  if ((s.size_ > 0 && (image.keys == nullptr || image.values == nullptr || (selects && image.scores == nullptr))) ||
      (s.position_ > 0 && image.last_hidden == nullptr)) {
    return InvalidArgument("stream_read: null buffer");
  }
  const size_t row_bytes = static_cast<size_t>(c_.width()) * DTypeBytes(pool_dtype_);
  const size_t layer_bytes = row_bytes * static_cast<size_t>(s.size_);
  const size_t h = static_cast<size_t>(c_.n_head);
  const std::vector<RingRun> runs = PoolRuns(s.start_, s.size_, s.capacity());
  char* keys = static_cast<char*>(image.keys);
  char* values = static_cast<char*>(image.values);
  float* scores = image.scores;
  for (int l = 0; l < c_.n_layer; ++l) {
    size_t at = 0;  // pool index of the run's first row
    for (const RingRun& run : runs) {
      const size_t bytes = static_cast<size_t>(run.count) * row_bytes;
      const size_t from = static_cast<size_t>(run.ring_row) * row_bytes;
      TRAMS_CUDA_RETURN_IF_ERROR(ops_->Download(keys + l * layer_bytes + at * row_bytes,
                                                reinterpret_cast<const char*>(s.keys_[l]) + from, bytes));
      TRAMS_CUDA_RETURN_IF_ERROR(ops_->Download(values + l * layer_bytes + at * row_bytes,
                                                reinterpret_cast<const char*>(s.values_[l]) + from, bytes));
      if (s.scores_[l] != nullptr) {
        TRAMS_CUDA_RETURN_IF_ERROR(ops_->Download(scores + at * h, s.scores_[l] + run.ring_row * h,
                                                  static_cast<size_t>(run.count) * h * sizeof(float)));
      }
      at += static_cast<size_t>(run.count);
    }
    if (s.scores_[l] != nullptr) scores += static_cast<size_t>(s.size_) * h;
  }
  if (s.position_ > 0) {
    TRAMS_CUDA_RETURN_IF_ERROR(
        ops_->Download(image.last_hidden, s.last_hidden_, static_cast<size_t>(c_.d_model) * sizeof(float)));
  }
  return ops_->Synchronize();
}

Status Context::WriteStream(Stream* stream, const trams_cuda_stream_image& image) {
  std::lock_guard<std::mutex> lock(mu_);
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Activate());
  TRAMS_CUDA_RETURN_IF_ERROR(CheckStream(stream));
  Stream& s = *stream;
  if (s.in_transaction_ || s.size_ != 0 || s.position_ != 0) {
    return FailedPrecondition("stream_write: only a stream that was just created can be written");
  }
  if (image.size < 0 || image.size > s.capacity() || image.position < 0) {
    return InvalidArgument("stream_write: the image holds " + std::to_string(image.size) +
                           " tokens for a pool of " + std::to_string(s.capacity()));
  }
  const bool selects = std::any_of(s.scores_.begin(), s.scores_.end(), [](const float* p) { return p != nullptr; });
  if ((image.size > 0 && (image.keys == nullptr || image.values == nullptr || (selects && image.scores == nullptr))) ||
      (image.position > 0 && image.last_hidden == nullptr)) {
    return InvalidArgument("stream_write: null buffer");
  }
  const size_t row_bytes = static_cast<size_t>(c_.width()) * DTypeBytes(pool_dtype_);
  const size_t layer_bytes = row_bytes * static_cast<size_t>(image.size);
  const size_t h = static_cast<size_t>(c_.n_head);
  const char* keys = static_cast<const char*>(image.keys);
  const char* values = static_cast<const char*>(image.values);
  const float* scores = image.scores;
  for (int l = 0; l < c_.n_layer && image.size > 0; ++l) {
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->Upload(s.keys_[l], keys + l * layer_bytes, layer_bytes));
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->Upload(s.values_[l], values + l * layer_bytes, layer_bytes));
    if (s.scores_[l] != nullptr) {
      TRAMS_CUDA_RETURN_IF_ERROR(
          ops_->Upload(s.scores_[l], scores, static_cast<size_t>(image.size) * h * sizeof(float)));
      scores += static_cast<size_t>(image.size) * h;
    }
  }
  if (image.position > 0) {
    TRAMS_CUDA_RETURN_IF_ERROR(
        ops_->Upload(s.last_hidden_, image.last_hidden, static_cast<size_t>(c_.d_model) * sizeof(float)));
  }
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Synchronize());  // the caller's buffers may go once this returns
  s.start_ = 0;
  s.size_ = image.size;
  s.position_ = image.position;
  return Status::Ok();
}

}  // namespace trams::cuda
