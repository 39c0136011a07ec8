#include "engine/cuda/cuda_engine.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "engine/cuda/cuda_loader.h"
#include "engine/model_fingerprint.h"
#include "engine/status_macros.h"

namespace trams::cuda {
namespace {

constexpr int64_t kMaxGridY = 65535;  // CUDA's limit on gridDim.y (and z)

trams_cuda_matrix View(const engine::Matrix& m) {
  trams_cuda_matrix v;
  v.data = m.data;
  v.rows = m.rows;
  v.cols = m.cols;
  return v;
}

}  // namespace

ModelView::ModelView(const engine::ModelWeights& w) {
  const engine::ModelConfig& c = w.config;
  cutoffs_ = c.cutoffs;
  trams_cuda_model_config& mc = model_.config;
  mc.n_layer = c.n_layer;
  mc.d_model = c.d_model;
  mc.d_embed = c.d_embed;
  mc.n_head = c.n_head;
  mc.d_head = c.d_head;
  mc.d_inner = c.d_inner;
  mc.vocab_size = c.vocab_size;
  mc.n_clusters = c.n_clusters();
  mc.cutoffs = cutoffs_.data();
  mc.div_val = c.div_val;
  mc.pre_lnorm = c.pre_lnorm ? 1 : 0;
  mc.same_length = c.same_length ? 1 : 0;
  mc.clamp_len = c.clamp_len;
  mc.layer_norm_epsilon = c.layer_norm_epsilon;
  for (const engine::EmbeddingCluster& e : w.embedding) embedding_.push_back({View(e.table), View(e.proj)});
  for (const engine::LayerWeights& l : w.layers) {
    trams_cuda_layer_weights v;
    v.qkv = View(l.qkv);
    v.r_net = View(l.r_net);
    v.o_net = View(l.o_net);
    v.attn_ln_g = View(l.attn_ln_g);
    v.attn_ln_b = View(l.attn_ln_b);
    v.ff1_w = View(l.ff1_w);
    v.ff1_b = View(l.ff1_b);
    v.ff2_w = View(l.ff2_w);
    v.ff2_b = View(l.ff2_b);
    v.ff_ln_g = View(l.ff_ln_g);
    v.ff_ln_b = View(l.ff_ln_b);
    v.r_w_bias = View(l.r_w_bias);
    v.r_r_bias = View(l.r_r_bias);
    layers_.push_back(v);
  }
  for (const engine::OutputCluster& o : w.output) output_.push_back({View(o.weight), View(o.bias), View(o.proj)});
  model_.n_embedding = static_cast<int32_t>(embedding_.size());
  model_.embedding = embedding_.data();
  model_.layers = layers_.data();
  model_.n_output = static_cast<int32_t>(output_.size());
  model_.output = output_.data();
  model_.cluster_weight = View(w.cluster_weight);
  model_.cluster_bias = View(w.cluster_bias);
}

trams_cuda_stream_settings ToCudaSettings(const engine::TramsSettings& s) {
  trams_cuda_stream_settings c{};
  c.mode = s.mode == engine::MemoryMode::kNone ? TRAMS_CUDA_MODE_NONE
           : s.mode == engine::MemoryMode::kXl ? TRAMS_CUDA_MODE_XL
                                       : TRAMS_CUDA_MODE_TRAMS;
  c.mem_len = s.mem_len;
  c.topk = s.topk;
  c.remain = s.remain;
  c.n_select_layers = static_cast<int32_t>(s.layers.size());
  c.select_layers = s.layers.data();
  c.metric = s.metric == engine::SelectionMetric::kPaper ? TRAMS_CUDA_METRIC_PAPER : TRAMS_CUDA_METRIC_CODE;
  return c;
}

CudaStream::~CudaStream() {
  if (stream_ != nullptr) api_->stream_destroy(ctx_, stream_);
}

absl::StatusOr<trams_cuda_stream_info> CudaStream::Info() const {
  trams_cuda_stream_info info{};
  const trams_cuda_code code = api_->stream_info(ctx_, stream_, &info);
  if (code != TRAMS_CUDA_OK) return FromCudaCode(code, api_->last_error());
  return info;
}

int64_t CudaStream::undo_bytes() const {
  if (!in_transaction_) return 0;
  absl::StatusOr<trams_cuda_stream_info> info = Info();
  return info.ok() ? info->undo_bytes : 0;
}

absl::Status CudaStream::BeginTransaction() {
  absl::Status st = FromCudaCode(api_->stream_begin_transaction(ctx_, stream_), api_->last_error());
  if (st.ok()) {
    in_transaction_ = true;
    saved_size_ = size_;
    saved_position_ = position_;
  }
  return st;
}

absl::Status CudaStream::Commit() {
  absl::Status st = FromCudaCode(api_->stream_commit(ctx_, stream_), api_->last_error());
  if (st.ok()) in_transaction_ = false;
  return st;
}

absl::Status CudaStream::Rollback() {
  absl::Status st = FromCudaCode(api_->stream_rollback(ctx_, stream_), api_->last_error());
  if (st.ok() && in_transaction_) {
    size_ = saved_size_;
    position_ = saved_position_;
    in_transaction_ = false;
  }
  return st;
}

absl::StatusOr<std::unique_ptr<CudaEngine>> CudaEngine::Create(const trams_cuda_api* api, const engine::ModelWeights& weights,
                                                               const CudaEngineOptions& options) {
  if (api == nullptr) return absl::InvalidArgumentError("no CUDA backend API");
  const ModelView view(weights);
  trams_cuda_options o{};
  o.device = options.device;
  o.weight_dtype = options.weight_dtype;
  o.pool_dtype = options.pool_dtype;
  o.arena_bytes = options.arena_bytes;
  o.allow_tf32 = options.allow_tf32 ? 1 : 0;
  o.output_chunk_floats = options.output_chunk_floats;
  o.arena_fraction = options.arena_fraction;
  std::unique_ptr<CudaEngine> e(new CudaEngine());
  e->api_ = api;
  e->config_ = weights.config;
  e->device_ = options.device;
  e->pool_dtype_ = static_cast<engine::PoolDType>(options.pool_dtype);
  e->fingerprint_ = engine::ModelFingerprint(weights);
  const trams_cuda_code code = api->create(&view.get(), &o, &e->ctx_);
  if (code != TRAMS_CUDA_OK) {
    return FromCudaCode(code, absl::StrCat("creating the ", api->backend, " context: ", api->last_error()).c_str());
  }
  return e;
}

CudaEngine::~CudaEngine() {
  if (ctx_ != nullptr) api_->destroy(ctx_);
}

std::string CudaEngine::device() const { return absl::StrCat(api_->backend, ":", device_); }

absl::Status CudaEngine::Check(trams_cuda_code code) const { return FromCudaCode(code, api_->last_error()); }

CudaStream* CudaEngine::Own(const engine::EngineStream* stream) const {
  auto* s = dynamic_cast<CudaStream*>(const_cast<engine::EngineStream*>(stream));
  return s != nullptr && s->ctx_ == ctx_ ? s : nullptr;
}

absl::StatusOr<std::unique_ptr<engine::EngineStream>> CudaEngine::NewStream(const engine::TramsSettings& settings) {
  RETURN_IF_ERROR(settings.Validate(config_));  // the host's checks and messages, before the module's own
  const trams_cuda_stream_settings s = ToCudaSettings(settings);
  std::unique_ptr<CudaStream> stream(new CudaStream());
  stream->api_ = api_;
  stream->ctx_ = ctx_;
  stream->settings_ = settings;
  RETURN_IF_ERROR(Check(api_->stream_create(ctx_, &s, &stream->stream_)));
  ASSIGN_OR_RETURN(const trams_cuda_stream_info info, stream->Info());
  stream->bytes_ = info.bytes;
  return std::unique_ptr<engine::EngineStream>(std::move(stream));
}

absl::StatusOr<int64_t> CudaEngine::StreamBytes(const engine::TramsSettings& settings) {
  RETURN_IF_ERROR(settings.Validate(config_));
  const trams_cuda_stream_settings s = ToCudaSettings(settings);
  int64_t bytes = 0;
  RETURN_IF_ERROR(Check(api_->stream_bytes(ctx_, &s, &bytes)));
  return bytes;
}

absl::Status CudaEngine::FillPoolWithZeroStates(engine::EngineStream* engine_stream) {
  CudaStream* stream = Own(engine_stream);
  if (stream == nullptr) return absl::InvalidArgumentError("the stream belongs to another engine");
  RETURN_IF_ERROR(Check(api_->stream_fill_zero(ctx_, stream->stream_)));
  stream->size_ = stream->capacity();
  return absl::OkStatus();
}

absl::Status CudaEngine::Forward(absl::Span<const engine::SegmentInput> batch, std::vector<engine::SegmentOutput>* outputs) {
  RETURN_IF_ERROR(engine::CheckBatch(config_, batch));
  const engine::ModelConfig& c = config_;
  const int64_t vocab = c.vocab_size;
  const size_t n = batch.size();
  // The attention kernels launch one block row per (head, segment): CUDA's grid y limit bounds the batch.
  if (static_cast<int64_t>(c.n_head) * static_cast<int64_t>(n) > kMaxGridY) {
    return absl::InvalidArgumentError(absl::StrCat("a batch of ", n, " segments with ", c.n_head,
                                                   " heads exceeds the device's launch limit of ", kMaxGridY,
                                                   " (heads x segments): run at most ", kMaxGridY / c.n_head,
                                                   " segments per forward"));
  }
  std::vector<CudaStream*> streams(n);
  for (size_t b = 0; b < n; ++b) {
    streams[b] = Own(batch[b].stream);
    if (streams[b] == nullptr) return absl::InvalidArgumentError(absl::StrCat("batch entry ", b, " belongs to another model"));
  }
  outputs->assign(n, engine::SegmentOutput{});
  std::vector<trams_cuda_segment> segs(n);
  std::vector<std::vector<float>> full(n);
  std::vector<std::vector<int32_t>> sel(n), sel_counts(n);
  std::vector<std::vector<float>> sel_scores(n);
  for (size_t b = 0; b < n; ++b) {
    const engine::SegmentInput& in = batch[b];
    engine::SegmentOutput& out = (*outputs)[b];
    const size_t len = in.tokens.size();
    trams_cuda_segment& s = segs[b];
    s.stream = streams[b]->stream_;
    s.tokens = in.tokens.data();
    s.n_tokens = static_cast<int32_t>(len);
    s.provisional = in.commit ? 0 : 1;
    out.logprob.resize(len);
    s.logprob = out.logprob.data();
    if (in.options.entropy || in.options.alternatives > 0) {
      full[b].resize(len * static_cast<size_t>(vocab));
      s.token_logprobs = full[b].data();
    }
    if (in.options.next_distribution) {
      out.next_logprobs.resize(static_cast<size_t>(vocab));
      s.next_logprobs = out.next_logprobs.data();
    }
    if (in.options.selections) {
      const int topk = std::max(1, streams[b]->settings_.topk);
      sel[b].assign(static_cast<size_t>(c.n_layer) * c.n_head * topk, -1);
      sel_counts[b].assign(static_cast<size_t>(c.n_layer) * c.n_head, 0);
      sel_scores[b].assign(sel[b].size(), 0.0f);
      s.selections = sel[b].data();
      s.selection_scores = sel_scores[b].data();
      s.selection_counts = sel_counts[b].data();
      engine::DescribeSelectionWindow(*streams[b], &out);
    }
  }
  const absl::Status st = Check(api_->forward(ctx_, segs.data(), static_cast<int32_t>(n)));
  if (!st.ok()) {
    outputs->clear();
    return st;
  }
  std::vector<int32_t> order;
  for (size_t b = 0; b < n; ++b) {
    const engine::SegmentInput& in = batch[b];
    CudaStream& stream = *streams[b];
    engine::SegmentOutput& out = (*outputs)[b];
    const int64_t len = static_cast<int64_t>(in.tokens.size());
    const bool first = stream.position_ == 0;
    out.tokens_scored = len - (first ? 1 : 0);
    if (in.commit) {
      stream.position_ += len;
      stream.size_ = static_cast<int>(std::min<int64_t>(stream.capacity(), stream.size_ + len));
    }    if (in.options.entropy) out.entropy.assign(len, std::numeric_limits<float>::quiet_NaN());
    if (in.options.alternatives > 0) out.alternatives.assign(len, {});
    if (!full[b].empty()) {
      for (int64_t i = first ? 1 : 0; i < len; ++i) {
        const float* dist = full[b].data() + i * vocab;
        if (in.options.entropy) {
          double e = 0;
          for (int64_t v = 0; v < vocab; ++v) e -= std::exp(static_cast<double>(dist[v])) * dist[v];
          out.entropy[i] = static_cast<float>(e);
        }
        if (in.options.alternatives > 0) {
          const int k = static_cast<int>(std::min<int64_t>(in.options.alternatives, vocab));
          order.resize(vocab);
          for (int64_t v = 0; v < vocab; ++v) order[v] = static_cast<int32_t>(v);
          std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t x, int32_t y) {
            return dist[x] > dist[y] || (dist[x] == dist[y] && x < y);
          });
          for (int j = 0; j < k; ++j) out.alternatives[i].push_back({order[j], dist[order[j]]});
        }
      }
    }
    if (in.options.selections) {
      const int topk = std::max(1, stream.settings_.topk);
      out.selections.assign(c.n_layer, std::vector<std::vector<int>>(c.n_head));
      out.selection_scores.assign(c.n_layer, std::vector<std::vector<float>>(c.n_head));
      for (int l = 0; l < c.n_layer; ++l) {
        for (int h = 0; h < c.n_head; ++h) {
          const int count = sel_counts[b][l * c.n_head + h];
          const size_t at = (static_cast<size_t>(l) * c.n_head + h) * topk;
          out.selections[l][h].assign(sel[b].data() + at, sel[b].data() + at + count);
          out.selection_scores[l][h].assign(sel_scores[b].data() + at, sel_scores[b].data() + at + count);
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CudaEngine::NextTokenLogProbs(const engine::EngineStream& engine_stream, std::vector<float>* out) {
  const CudaStream* stream = Own(&engine_stream);
  if (stream == nullptr) return absl::InvalidArgumentError("the stream belongs to another engine");
  out->resize(static_cast<size_t>(config_.vocab_size));
  return Check(api_->next_logprobs(ctx_, stream->stream_, out->data()));
}

absl::StatusOr<engine::StreamImage> CudaEngine::ExportStream(const engine::EngineStream& engine_stream) {
  const CudaStream* stream = Own(&engine_stream);
  if (stream == nullptr) return absl::InvalidArgumentError("the stream belongs to another engine");
  if (stream->in_transaction()) {
    return absl::FailedPreconditionError("the stream is inside a transaction: export it after Commit or Rollback");
  }
  engine::StreamImage image;
  image.settings = stream->settings();
  image.pool_dtype = pool_dtype_;
  image.size = stream->size();
  image.position = stream->position();
  const size_t pool = static_cast<size_t>(engine::ImageLayerBytes(config_, pool_dtype_, image.size)) * config_.n_layer;
  image.keys.resize(pool);
  image.values.resize(pool);
  image.scores.resize(static_cast<size_t>(engine::ScoringLayers(config_, image.settings)) * image.size *
                      config_.n_head);
  if (image.position > 0) image.last_hidden.resize(static_cast<size_t>(config_.d_model));
  trams_cuda_stream_image raw{};
  raw.size = image.size;
  raw.position = image.position;
  raw.keys = image.keys.data();
  raw.values = image.values.data();
  raw.scores = image.scores.empty() ? nullptr : image.scores.data();
  raw.last_hidden = image.last_hidden.empty() ? nullptr : image.last_hidden.data();
  RETURN_IF_ERROR(Check(api_->stream_read(ctx_, stream->stream_, &raw)));
  return image;
}

absl::StatusOr<std::unique_ptr<engine::EngineStream>> CudaEngine::ImportStream(const engine::StreamImage& image) {
  RETURN_IF_ERROR(engine::CheckStreamImage(config_, image));
  RETURN_IF_ERROR(engine::CheckImageDType(pool_dtype_, image.pool_dtype));
  ASSIGN_OR_RETURN(std::unique_ptr<engine::EngineStream> created, NewStream(image.settings));
  auto* stream = static_cast<CudaStream*>(created.get());
  trams_cuda_stream_image raw{};
  raw.size = image.size;
  raw.position = image.position;
  // The module only reads through these (stream_write).
  raw.keys = const_cast<char*>(image.keys.data());
  raw.values = const_cast<char*>(image.values.data());
  raw.scores = image.scores.empty() ? nullptr : const_cast<float*>(image.scores.data());
  raw.last_hidden = image.last_hidden.empty() ? nullptr : const_cast<float*>(image.last_hidden.data());
  RETURN_IF_ERROR(Check(api_->stream_write(ctx_, stream->stream_, &raw)));
  stream->size_ = image.size;
  stream->position_ = image.position;
  return created;
}

absl::StatusOr<engine::EngineMemory> CudaEngine::Memory() {
  ASSIGN_OR_RETURN(const trams_cuda_device_info info, DeviceInfo());
  engine::EngineMemory m;
  m.device = device();
  m.has_device_memory = info.memory_total > 0;
  m.device_total_bytes = info.memory_total;
  m.device_used_bytes = info.memory_total - info.memory_free;
  m.has_arena = true;
  m.arena_used_bytes = info.arena_used;
  m.arena_capacity_bytes = info.arena_total;
  m.arena_largest_free_bytes = info.arena_largest_free;
  m.weights_bytes = info.weights_bytes;
  m.streams = info.streams;
  return m;
}

absl::StatusOr<trams_cuda_device_info> CudaEngine::DeviceInfo() {
  trams_cuda_device_info info{};
  absl::Status st = Check(api_->device_info(ctx_, &info));
  if (!st.ok()) return st;
  return info;
}

}  // namespace trams::cuda
