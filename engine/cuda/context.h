// The CUDA backend's engine: weights on the device, the session arena, streams (pools on the device) and
// the forward, written against DeviceOps so the same code runs on CUDA and in the host emulation.
// Semantics are those of TransformerXL (engine/transformer_xl.cc) and StreamState
// (engine/stream_state.cc); DESIGN.md is the contract. Behind the C ABI (api_table.cc).
// Thread safety: every public method takes the context's mutex.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "engine/cuda/cuda_backend_api.h"
#include "engine/cuda/device_arena.h"
#include "engine/cuda/device_ops.h"

namespace trams::cuda {

// A weight matrix on the device (row-major), possibly a row range of a shared upload.
struct DeviceMatrix {
  const void* data = nullptr;
  DType type = DType::kF32;
  int64_t rows = 0, cols = 0;
  bool empty() const { return data == nullptr; }
  const float* f32() const { return static_cast<const float*>(data); }
};

struct StreamSettings {
  int mode = TRAMS_CUDA_MODE_TRAMS;
  int mem_len = 0, topk = 0, remain = 0, metric = TRAMS_CUDA_METRIC_CODE;
  std::vector<bool> selects_on_layer;  // TramsSettings::SelectsOnLayer per layer
  int attend_len() const;
};

// One stream's pools in the arena and its ring cursor (StreamState without the host arrays).
class Stream {
 public:
  const StreamSettings& settings() const { return settings_; }
  int capacity() const { return settings_.mem_len; }
  int size() const { return size_; }
  int64_t position() const { return position_; }
  int64_t bytes() const { return bytes_; }
  int RingRow(int index) const { return (start_ + index) % settings_.mem_len; }
  int AppendRow(int i) const { return (start_ + size_ + i) % settings_.mem_len; }
  // StreamState::CommitAppend without the hidden state (the device copy is made by the forward).
  void CommitAppend(int n);
  bool in_transaction() const { return in_transaction_; }
  int64_t undo_bytes() const;

 private:
  friend class Context;
  const void* owner_ = nullptr;
  StreamSettings settings_;
  int start_ = 0, size_ = 0;
  int64_t position_ = 0;
  int64_t arena_offset_ = 0, bytes_ = 0;
  // Per layer; scores_ null where the layer never selects. keys_/values_ hold the context's pool dtype
  // (f32, or f16/bf16 bits) whatever their pointer type.
  std::vector<float*> keys_, values_, scores_;
  float* last_hidden_ = nullptr;                // [d_model]

  // Transaction (StreamState's undo log, kept in host memory): the cursor and hidden state at begin, and
  // per layer the overwritten rows in overwrite order.
  bool in_transaction_ = false;
  int saved_start_ = 0, saved_size_ = 0;
  int64_t saved_position_ = 0;
  std::vector<float> saved_hidden_;
  int64_t appended_ = 0;  // tokens appended since begin
  int saved_rows_ = 0;    // overwrite indices [0, saved_rows_) are handled (saved or never live)
  std::vector<std::vector<uint8_t>> undo_keys_, undo_values_;  // the stored bytes (pool dtype)
  std::vector<std::vector<float>> undo_scores_;
};

class Context {
 public:
  static Status Create(const trams_cuda_model& model, const trams_cuda_options& options,
                       std::unique_ptr<DeviceOps> ops, std::unique_ptr<Context>* out);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  Status StreamBytes(const trams_cuda_stream_settings& settings, int64_t* bytes);
  Status CreateStream(const trams_cuda_stream_settings& settings, Stream** out);
  void DestroyStream(Stream* stream);
  Status FillZero(Stream* stream);
  Status GetStreamInfo(const Stream* stream, trams_cuda_stream_info* out);
  Status Forward(const trams_cuda_segment* segments, int n_segments);
  Status NextLogProbs(const Stream* stream, float* out);
  Status GetDeviceInfo(trams_cuda_device_info* out);
  Status BeginTransaction(Stream* stream);
  Status CommitTransaction(Stream* stream);
  Status RollbackTransaction(Stream* stream);
  Status ReadStream(const Stream* stream, const trams_cuda_stream_image& image);
  Status WriteStream(Stream* stream, const trams_cuda_stream_image& image);

 private:
  struct Config {
    int n_layer = 0, d_model = 0, d_embed = 0, n_head = 0, d_head = 0, d_inner = 0;
    int64_t vocab = 0;
    std::vector<int64_t> ends;  // [0, cutoffs..., vocab]
    int n_clusters = 0, div_val = 1;
    bool pre_lnorm = false, same_length = false;
    int clamp_len = 0;
    float eps = 1e-5f;
    int width() const { return n_head * d_head; }
  };
  struct Layer {
    DeviceMatrix qkv, r_net, o_net, ff1_w, ff2_w;
    const float *attn_ln_g = nullptr, *attn_ln_b = nullptr, *ff1_b = nullptr, *ff2_b = nullptr;
    const float *ff_ln_g = nullptr, *ff_ln_b = nullptr, *r_w_bias = nullptr, *r_r_bias = nullptr;
    float* gram = nullptr;     // [H][Dh][Dh]
    float* row_sum = nullptr;  // [H][Dh]
  };
  struct OutCluster {
    DeviceMatrix weight, proj;  // proj empty: identity
    const float* bias = nullptr;
    int64_t size = 0;
    int dim = 0;
  };
  struct Upload {
    uintptr_t host = 0;
    int64_t count = 0, cols = 0;
    DType type = DType::kF32;
    void* device = nullptr;
  };
  struct Workspace;
  struct Plan;

  Context(std::unique_ptr<DeviceOps> ops, const trams_cuda_options& options);
  Status Init(const trams_cuda_model& model);
  Status UploadMatrix(const trams_cuda_matrix& m, DType type, DeviceMatrix* out);
  Status UploadF32(const trams_cuda_matrix& m, const float** out);
  Status AllocWeights(size_t bytes, void** out);
  Status ComputeGram(const trams_cuda_matrix& qkv, Layer* layer);
  Status EnsureRelTable(int rows);
  Status EnsureWorkspace(int64_t bytes);
  Status EnsureMeta(int64_t bytes);
  Status ParseSettings(const trams_cuda_stream_settings& in, StreamSettings* out) const;
  int64_t StreamBytesFor(const StreamSettings& s) const;
  Status CheckStream(const Stream* stream) const;
  // Copies the live rows the next `n` appended tokens overwrite into the stream's undo log (in a
  // transaction); StreamState::SaveRowsBeforeAppend.
  Status SaveRowsBeforeAppend(Stream& stream, int n);

  // y[m, n] = x[m, k] W^T (W [n, k]) or x W (W [k, n], `w_is_kn`), through a converted copy of x when W is
  // not f32. x is contiguous (ld k).
  Status Linear(const float* x, int m, int k, const DeviceMatrix& w, bool w_is_kn, float* y, int64_t ldy,
                void* convert_scratch);
  void CarveWorkspace(class Carver& cv, const Plan& plan, Workspace* ws) const;
  int64_t OutputChunkFloats() const;
  // Sizes the workspace for `plan` (growing it if needed) and carves `ws` from it.
  Status PrepareWorkspace(const Plan& plan, Workspace* ws);
  Status RunForward(Plan& plan, Workspace& ws);
  Status Embed(const Plan& plan, Workspace& ws);
  Status PreNorm(const float* gamma, const float* beta, int rows, Workspace& ws, const float** in);
  Status AttentionLayer(int layer, const Plan& plan, Workspace& ws);
  Status FeedForwardLayer(int layer, Workspace& ws, int64_t rows);
  // Head log-probs of `rows` hidden rows into ws.head ([rows, head_size]).
  Status HeadLogProbs(const float* hidden, int rows, Workspace& ws);
  Status TargetLogProbs(const Plan& plan, Workspace& ws);
  // Full distributions of rows whose hidden states are at `src` (device), written to `dst` (host).
  Status FullLogProbs(const std::vector<const float*>& src, const std::vector<float*>& dst, Workspace& ws);

  std::unique_ptr<DeviceOps> ops_;
  trams_cuda_options options_;
  DType dtype_ = DType::kF32;
  DType pool_dtype_ = DType::kF32;  // session pools' keys and values
  Config c_;
  std::vector<Upload> uploads_;
  std::vector<void*> weight_allocs_;
  int64_t weights_bytes_ = 0;

  std::vector<DeviceMatrix> emb_table_, emb_proj_;
  std::vector<Layer> layers_;
  std::vector<OutCluster> out_;
  DeviceMatrix head_weight_;  // [head_size, d_embed]: first-cluster rows, then one row per tail cluster
  const float* head_bias_ = nullptr;
  int64_t head_size_ = 0;
  int max_dim_ = 0;           // widest cluster projection
  int64_t max_tail_ = 0;      // largest tail cluster

  float* rel_ = nullptr;      // [L][rel_rows_][W]: r_net(pos_emb(min(d, clamp))) by distance d
  int rel_rows_ = 0;
  int64_t rel_bytes_ = 0;

  void* arena_ = nullptr;
  ArenaAllocator arena_alloc_;
  int streams_ = 0;

  void* workspace_ = nullptr;
  int64_t workspace_bytes_ = 0, workspace_peak_ = 0;
  void* meta_ = nullptr;
  int64_t meta_bytes_ = 0;
  float last_forward_ms_ = 0.0f;
  std::mutex mu_;
};

}  // namespace trams::cuda
