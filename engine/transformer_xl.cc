#include "engine/transformer_xl.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "engine/forward_plan.h"
#include "engine/model_fingerprint.h"
#include "engine/safetensors.h"
#include "engine/status_macros.h"

namespace trams::engine {

// Activations of one Forward(): rows of all streams' segments, concatenated.
struct TransformerXL::Batch {
  std::vector<StreamState*> streams;
  std::vector<absl::Span<const int32_t>> tokens;
  std::vector<OutputOptions> options;
  std::vector<bool> commit;     // false: provisional, the stream stays as it was
  // Rows, attended memory, selecting layers, pool appends, scored tokens (engine/forward_plan.h, shared with
  // the CUDA backend).
  ForwardPlan plan;
  int64_t rows = 0;
  std::vector<float> x;         // [rows, d_model] layer input, then output
  std::vector<float> normed;    // [rows, d_model] pre-LN input
  std::vector<float> qkv;       // [rows, 3W]
  std::vector<float> attn_vec;  // [rows, W]
  std::vector<float> tmp;       // [rows, d_model]
  std::vector<float> inner;     // [rows, d_inner]
};

namespace {
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
}  // namespace

TransformerXL::TransformerXL(ModelWeights weights, const EngineOptions& options)
    : weights_(std::move(weights)),
      pool_(options.threads),
      output_(weights_),
      rel_(&weights_),
      pool_dtype_(options.pool_dtype),
      fingerprint_(ModelFingerprint(weights_)) {
  const ModelConfig& c = weights_.config;
  for (int l = 0; l < c.n_layer; ++l) {
    scorers_.emplace_back(weights_.layers[l].qkv.data, c.n_head, c.d_head, c.d_model);
  }
}

absl::StatusOr<std::unique_ptr<TransformerXL>> TransformerXL::Load(const std::string& model_dir,
                                                                   const EngineOptions& options) {
  ASSIGN_OR_RETURN(ModelWeights weights, LoadModelDirectory(model_dir));
  return FromWeights(std::move(weights), options);
}

std::unique_ptr<TransformerXL> TransformerXL::FromWeights(ModelWeights weights, const EngineOptions& options) {
  return std::unique_ptr<TransformerXL>(new TransformerXL(std::move(weights), options));
}

absl::StatusOr<std::unique_ptr<StreamState>> TransformerXL::NewHostStream(const TramsSettings& settings) const {
  RETURN_IF_ERROR(settings.Validate(config()));
  return std::make_unique<StreamState>(config(), settings, pool_dtype_);
}

absl::StatusOr<std::unique_ptr<EngineStream>> TransformerXL::NewStream(const TramsSettings& settings) {
  ASSIGN_OR_RETURN(std::unique_ptr<StreamState> stream, NewHostStream(settings));
  return std::unique_ptr<EngineStream>(std::move(stream));
}

absl::StatusOr<int64_t> TransformerXL::StreamBytes(const TramsSettings& settings) {
  RETURN_IF_ERROR(settings.Validate(config()));
  return StreamState::BytesFor(config(), settings, pool_dtype_);
}

absl::StatusOr<EngineMemory> TransformerXL::Memory() {
  EngineMemory m;
  m.device = device();
  m.weights_bytes = static_cast<int64_t>(sizeof(float)) * weights_.config.ParameterCount();
  m.streams = -1;
  return m;
}

absl::StatusOr<StreamImage> TransformerXL::ExportStream(const EngineStream& stream) {
  const StreamState* host = HostStream(const_cast<EngineStream*>(&stream));
  if (host == nullptr) return absl::InvalidArgumentError("the stream belongs to another engine");
  return host->Export(config());
}

absl::StatusOr<std::unique_ptr<EngineStream>> TransformerXL::ImportStream(const StreamImage& image) {
  RETURN_IF_ERROR(CheckStreamImage(config(), image));
  RETURN_IF_ERROR(CheckImageDType(pool_dtype_, image.pool_dtype));
  ASSIGN_OR_RETURN(std::unique_ptr<StreamState> stream, NewHostStream(image.settings));
  stream->Load(config(), image);
  return std::unique_ptr<EngineStream>(std::move(stream));
}

StreamState* TransformerXL::HostStream(EngineStream* stream) const {
  auto* host = dynamic_cast<StreamState*>(stream);
  if (host == nullptr) return nullptr;
  if (host->width() != config().attn_width() || host->pool_dtype() != pool_dtype_) return nullptr;
  return host;
}

absl::Status TransformerXL::FillPoolWithZeroStates(EngineStream* engine_stream) {
  StreamState* stream = HostStream(engine_stream);
  if (stream == nullptr) return absl::InvalidArgumentError("the stream belongs to another engine");
  const ModelConfig& c = config();
  const int m = stream->capacity();
  if (m == 0) return absl::OkStatus();
  const int w = c.attn_width();
  std::vector<float> zero(c.d_model, 0.0f), kv(2 * w);
  for (int l = 0; l < c.n_layer; ++l) {
    const LayerWeights& lw = weights_.layers[l];
    std::vector<float> in = zero;
    if (c.pre_lnorm) {
      LayerNormRows(zero.data(), in.data(), 1, c.d_model, lw.attn_ln_g.data, lw.attn_ln_b.data, c.layer_norm_epsilon);
    }
    // k and v rows of qkv_net applied to the (normalized) zero state.
    MatMulNT(in.data(), c.d_model, lw.qkv.data + static_cast<size_t>(w) * c.d_model, c.d_model, kv.data(), 2 * w, 1,
             2 * w, c.d_model);
    LayerPool& pool = stream->mutable_layer(l);
    std::vector<float> scores(c.n_head);
    const bool selects = !pool.scores.empty();
    if (selects) scorers_[l].Score(kv.data(), 2 * w, 1, stream->settings().metric, scores.data());
    for (int r = 0; r < m; ++r) {
      stream->StoreKeyValue(l, r, kv.data(), kv.data() + w);  // rounded to the pool dtype
      if (selects) std::memcpy(pool.scores.data() + static_cast<size_t>(r) * c.n_head, scores.data(),
                               sizeof(float) * c.n_head);
    }
  }
  stream->SetFilled(m);
  return absl::OkStatus();
}

absl::Status TransformerXL::Check(absl::Span<const SegmentInput> batch, std::vector<StreamState*>* streams) const {
  RETURN_IF_ERROR(CheckBatch(config(), batch));
  streams->clear();
  for (size_t b = 0; b < batch.size(); ++b) {
    StreamState* host = HostStream(batch[b].stream);
    if (host == nullptr) return absl::InvalidArgumentError(absl::StrCat("batch entry ", b, " belongs to another model"));
    streams->push_back(host);
  }
  return absl::OkStatus();
}

void TransformerXL::Embed(Batch& b) const {
  const ModelConfig& c = config();
  const int d = c.d_model;
  const std::vector<int64_t> ends = c.cutoff_ends();
  const float scale = std::sqrt(static_cast<float>(d));
  std::vector<int64_t> rows;
  std::vector<int32_t> ids;
  std::vector<float> gathered;
  const int n_tables = static_cast<int>(weights_.embedding.size());
  for (int i = 0; i < n_tables; ++i) {
    const EmbeddingCluster& e = weights_.embedding[i];
    const int64_t lo = n_tables == 1 ? 0 : ends[i], hi = n_tables == 1 ? c.vocab_size : ends[i + 1];
    rows.clear();
    ids.clear();
    for (size_t s = 0; s < b.streams.size(); ++s) {
      for (size_t t = 0; t < b.tokens[s].size(); ++t) {
        const int32_t id = b.tokens[s][t];
        if (id >= lo && id < hi) {
          rows.push_back(b.plan.offset[s] + static_cast<int64_t>(t));
          ids.push_back(static_cast<int32_t>(id - lo));
        }
      }
    }
    if (rows.empty()) continue;
    const int64_t dim = e.table.cols;
    if (e.proj.empty()) {
      for (size_t r = 0; r < rows.size(); ++r) {
        const float* src = e.table.data + ids[r] * dim;
        float* dst = b.x.data() + rows[r] * d;
        for (int k = 0; k < d; ++k) dst[k] = src[k] * scale;
      }
      continue;
    }
    gathered.resize(rows.size() * dim);
    for (size_t r = 0; r < rows.size(); ++r) {
      std::memcpy(gathered.data() + r * dim, e.table.data + ids[r] * dim, sizeof(float) * dim);
    }
    std::vector<float> projected(rows.size() * d);
    // proj is [d_model, dim]: x = proj . e
    MatMulNT(gathered.data(), static_cast<int>(dim), e.proj.data, static_cast<int>(dim), projected.data(), d,
             static_cast<int64_t>(rows.size()), d, dim);
    for (size_t r = 0; r < rows.size(); ++r) {
      float* dst = b.x.data() + rows[r] * d;
      for (int k = 0; k < d; ++k) dst[k] = projected[r * d + k] * scale;
    }
  }
}

// Segments of at most this many tokens (decoding) attend with plain loops straight from the pool rows:
// a BLAS call per head costs more than the work, and gathering the keys would copy the whole window.
constexpr int kDirectRows = 4;

// Dot product with a fixed order (8 lanes, then a fixed tree): the compiler vectorizes it, and the result
// does not depend on anything but the two rows.
static inline float Dot(const float* x, const float* y, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int k = 0;
  for (; k + 8 <= n; k += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += x[k + l] * y[k + l];
  }
  float tail = 0;
  for (; k < n; ++k) tail += x[k] * y[k];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

// Attention probabilities [n, klen] of one (stream, head) over the pool tokens `chosen` (pool order,
// treated as contiguous) plus the segment; `value_rows` (when given) gets each key's value row.
void TransformerXL::AttentionProbs(int layer, int s, int h, const Batch& b, const std::vector<int>& chosen,
                                   std::vector<float>* probs, std::vector<const float*>* value_rows) const {
  const ModelConfig& c = config();
  const int dh = c.d_head, w = c.attn_width();
  const StreamState& stream = *b.streams[s];
  const LayerPool& pool = stream.layer(layer);
  const int n = static_cast<int>(b.tokens[s].size());
  const int a = static_cast<int>(chosen.size());
  const int klen = a + n;

  thread_local std::vector<const float*> key_rows;
  // f16/bf16 pools: the attended rows of this head read back as f32 (values only when asked for: the
  // caller keeps using them after a second call without value rows).
  thread_local std::vector<float> mem_keys, mem_values;
  const bool half = stream.pool_dtype() != PoolDType::kF32;
  if (half) {
    mem_keys.resize(static_cast<size_t>(a) * dh);
    if (value_rows != nullptr) mem_values.resize(static_cast<size_t>(a) * dh);
  }
  key_rows.resize(klen);
  if (value_rows != nullptr) value_rows->resize(klen);
  for (int j = 0; j < a; ++j) {
    const int ring = stream.RingRow(chosen[j]);
    if (half) {
      stream.LoadRow(layer, false, ring, h * dh, dh, mem_keys.data() + static_cast<size_t>(j) * dh);
      key_rows[j] = mem_keys.data() + static_cast<size_t>(j) * dh;
      if (value_rows != nullptr) {
        stream.LoadRow(layer, true, ring, h * dh, dh, mem_values.data() + static_cast<size_t>(j) * dh);
        (*value_rows)[j] = mem_values.data() + static_cast<size_t>(j) * dh;
      }
      continue;
    }
    const size_t row = static_cast<size_t>(ring) * w + h * dh;
    key_rows[j] = pool.keys.data() + row;
    if (value_rows != nullptr) (*value_rows)[j] = pool.values.data() + row;
  }
  const float* qkv = b.qkv.data() + b.plan.offset[s] * 3 * w;
  for (int i = 0; i < n; ++i) {
    key_rows[a + i] = qkv + i * 3 * w + w + h * dh;
    if (value_rows != nullptr) (*value_rows)[a + i] = qkv + i * 3 * w + 2 * w + h * dh;
  }
  const LayerWeights& lw = weights_.layers[layer];
  const float* rw = lw.r_w_bias.data + h * dh;
  const float* rr = lw.r_r_bias.data + h * dh;
  thread_local std::vector<float> keys, q_w, q_r, pos;
  q_w.resize(static_cast<size_t>(n) * dh);
  q_r.resize(static_cast<size_t>(n) * dh);
  for (int i = 0; i < n; ++i) {
    const float* q = qkv + i * 3 * w + h * dh;
    for (int k = 0; k < dh; ++k) {
      q_w[i * dh + k] = q[k] + rw[k];
      q_r[i * dh + k] = q[k] + rr[k];
    }
  }
  std::vector<float>& ac = *probs;
  ac.resize(static_cast<size_t>(n) * klen);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  const int window = stream.settings().attend_len();
  auto visible = [&](int i) {  // [lo, hi]: keys query i may see
    const int hi = a + i;
    return std::pair<int, int>((c.same_length && window > 0) ? std::max(0, hi - window + 1) : 0, hi);
  };
  if (n <= kDirectRows) {
    for (int i = 0; i < n; ++i) {
      float* row = ac.data() + static_cast<size_t>(i) * klen;
      const auto [lo, hi] = visible(i);
      for (int j = lo; j <= hi; ++j) {
        row[j] = (Dot(q_w.data() + i * dh, key_rows[j], dh) +
                  Dot(q_r.data() + i * dh, rel_.Row(layer, hi - j) + h * dh, dh)) * scale;
      }
    }
  } else {
    // Content term against the gathered keys; position term against r for distances 0..klen-1.
    keys.resize(static_cast<size_t>(klen) * dh);
    for (int j = 0; j < klen; ++j) std::memcpy(keys.data() + j * dh, key_rows[j], sizeof(float) * dh);
    pos.resize(static_cast<size_t>(n) * klen);
    MatMulNT(q_w.data(), dh, keys.data(), dh, ac.data(), klen, n, klen, dh);
    MatMulNT(q_r.data(), dh, rel_.Row(layer, 0) + h * dh, w, pos.data(), klen, n, klen, dh);
    for (int i = 0; i < n; ++i) {
      float* row = ac.data() + static_cast<size_t>(i) * klen;
      const float* p = pos.data() + static_cast<size_t>(i) * klen;
      const auto [lo, hi] = visible(i);
      for (int j = lo; j <= hi; ++j) row[j] = (row[j] + p[hi - j]) * scale;
    }
  }
  for (int i = 0; i < n; ++i) {
    float* row = ac.data() + static_cast<size_t>(i) * klen;
    const auto [lo, hi] = visible(i);
    // Softmax over [lo, hi]; everything else gets probability 0.
    float mx = -std::numeric_limits<float>::infinity();
    for (int j = lo; j <= hi; ++j) mx = std::max(mx, row[j]);
    float sum = 0;
    for (int j = lo; j <= hi; ++j) {
      row[j] = std::exp(row[j] - mx);
      sum += row[j];
    }
    const float inv = 1.0f / sum;
    for (int j = 0; j < lo; ++j) row[j] = 0.0f;
    for (int j = lo; j <= hi; ++j) row[j] *= inv;
    for (int j = hi + 1; j < klen; ++j) row[j] = 0.0f;
  }
}

// Mean over queries of the probability on the first `a` (memory) keys.
static double MemoryShare(const std::vector<float>& probs, int n, int a) {
  const int klen = static_cast<int>(probs.size()) / n;
  double total = 0;
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < a; ++j) total += probs[static_cast<size_t>(i) * klen + j];
  }
  return total / n;
}

// One (stream, head) of relative attention over the attended memory plus the segment.
void TransformerXL::AttendOne(int layer, int s, int h, Batch& b, std::vector<int>* selected,
                              std::vector<float>* selected_scores, MemoryShareSample* share) {
  const ModelConfig& c = config();
  const int dh = c.d_head, w = c.attn_width();
  const StreamState& stream = *b.streams[s];
  const TramsSettings& settings = stream.settings();
  const LayerPool& pool = stream.layer(layer);
  const int n = static_cast<int>(b.tokens[s].size());
  const int pool_size = stream.size();
  const int a = b.plan.attended[s];
  const int klen = a + n;

  // Which pool tokens (0 = oldest) this head attends: TRAMS top-k of the older part + the newest `remain`,
  // or simply the newest `a`.
  thread_local std::vector<int> chosen;
  chosen.clear();
  const bool selecting = b.plan.Selects(layer, s);
  if (selecting) {
    const int candidates = pool_size - settings.remain;
    // Scores of candidates in pool order: ring rows are not contiguous, so copy them out.
    thread_local std::vector<float> cand_scores;
    cand_scores.resize(candidates);
    for (int j = 0; j < candidates; ++j) cand_scores[j] = pool.scores[stream.RingRow(j) * c.n_head + h];
    SelectTopK(cand_scores.data(), 1, candidates, settings.topk, &chosen);
    if (selected != nullptr) *selected = chosen;
    if (selected_scores != nullptr) {
      selected_scores->clear();
      for (int j : chosen) selected_scores->push_back(cand_scores[j]);
    }
    for (int j = candidates; j < pool_size; ++j) chosen.push_back(j);
  } else {
    for (int j = pool_size - a; j < pool_size; ++j) chosen.push_back(j);
  }
  thread_local std::vector<float> probs, values;
  thread_local std::vector<const float*> value_rows;
  AttentionProbs(layer, s, h, b, chosen, &probs, &value_rows);
  float* out = b.attn_vec.data() + b.plan.offset[s] * w + h * dh;
  if (n <= kDirectRows) {
    for (int i = 0; i < n; ++i) {
      float* o = out + static_cast<size_t>(i) * w;
      std::fill(o, o + dh, 0.0f);
      const float* p = probs.data() + static_cast<size_t>(i) * klen;
      for (int j = 0; j < klen; ++j) {
        if (p[j] == 0.0f) continue;
        const float* v = value_rows[j];
        for (int k = 0; k < dh; ++k) o[k] += p[j] * v[k];
      }
    }
  } else {
    values.resize(static_cast<size_t>(klen) * dh);
    for (int j = 0; j < klen; ++j) std::memcpy(values.data() + j * dh, value_rows[j], sizeof(float) * dh);
    MatMulNN(probs.data(), klen, values.data(), dh, out, w, n, dh, klen);
  }

  if (share != nullptr && selecting) {
    // The paper's statistic: attention mass on the m memory tokens TRAMS attends, against the mass
    // plain XL's newest m tokens would get for the same queries (an extra attention pass).
    share->selected = MemoryShare(probs, n, a);
    thread_local std::vector<int> recent;
    recent.clear();
    for (int j = pool_size - a; j < pool_size; ++j) recent.push_back(j);
    thread_local std::vector<float> xl_probs;
    AttentionProbs(layer, s, h, b, recent, &xl_probs, nullptr);
    share->recent = MemoryShare(xl_probs, n, a);
    share->valid = true;
  }
}

void TransformerXL::AttentionLayer(int layer, Batch& b, std::vector<SegmentOutput>* outputs) {
  const ModelConfig& c = config();
  const LayerWeights& lw = weights_.layers[layer];
  const int d = c.d_model, w = c.attn_width();
  const float* in = b.x.data();
  if (c.pre_lnorm) {
    LayerNormRows(b.x.data(), b.normed.data(), b.rows, d, lw.attn_ln_g.data, lw.attn_ln_b.data,
                  c.layer_norm_epsilon);
    in = b.normed.data();
  }
  LinearNT(&pool_, in, d, lw.qkv.data, d, b.qkv.data(), 3 * w, b.rows, 3 * w, d);

  const int n_streams = static_cast<int>(b.streams.size());
  std::vector<MemoryShareSample> shares(static_cast<size_t>(n_streams) * c.n_head);
  pool_.ParallelFor(static_cast<int64_t>(n_streams) * c.n_head, [&](int64_t task) {
    const int s = static_cast<int>(task / c.n_head), h = static_cast<int>(task % c.n_head);
    const bool record = b.options[s].selections;
    AttendOne(layer, s, h, b, record ? &(*outputs)[s].selections[layer][h] : nullptr,
              record ? &(*outputs)[s].selection_scores[layer][h] : nullptr,
              b.options[s].memory_share ? &shares[task] : nullptr);
  });
  for (size_t task = 0; task < shares.size(); ++task) {
    if (!shares[task].valid) continue;
    SegmentOutput& out = (*outputs)[task / c.n_head];
    out.memory_share_selected += shares[task].selected;
    out.memory_share_recent += shares[task].recent;
    ++out.memory_share_samples;
  }

  // The attention above has read the pools; now the segment's keys/values (and scores) enter them.
  // The plan lists each committing stream's appends (the last min(n, M) tokens) with consecutive rows.
  pool_.ParallelFor(n_streams, [&](int64_t s) {
    const int begin = b.plan.append_begin[s], count = b.plan.append_begin[s + 1] - begin;
    if (count == 0) return;
    StreamState& stream = *b.streams[s];
    LayerPool& pool = stream.mutable_layer(layer);
    const float* rows = b.qkv.data() + b.plan.append[begin].src_row * 3 * w;
    thread_local std::vector<float> scores;
    const bool selects = !pool.scores.empty();
    if (selects) {
      scores.resize(static_cast<size_t>(count) * c.n_head);
      scorers_[layer].Score(rows + w, 3 * w, count, stream.settings().metric, scores.data());
    }
    for (int i = 0; i < count; ++i) {
      const float* row = rows + static_cast<int64_t>(i) * 3 * w;
      const size_t dst = static_cast<size_t>(b.plan.append[begin + i].ring_row);
      // Scores above come from the f32 key; the pool keeps the rows rounded to its dtype.
      stream.StoreKeyValue(layer, static_cast<int>(dst), row + w, row + 2 * w);
      if (selects) {
        std::memcpy(pool.scores.data() + dst * c.n_head, scores.data() + static_cast<size_t>(i) * c.n_head,
                    sizeof(float) * c.n_head);
      }
    }
  });

  LinearNT(&pool_, b.attn_vec.data(), w, lw.o_net.data, w, b.tmp.data(), d, b.rows, d, w);
  for (int64_t i = 0; i < b.rows * d; ++i) b.tmp[i] += b.x[i];
  if (c.pre_lnorm) {
    b.x.swap(b.tmp);
  } else {
    LayerNormRows(b.tmp.data(), b.x.data(), b.rows, d, lw.attn_ln_g.data, lw.attn_ln_b.data, c.layer_norm_epsilon);
  }
}

void TransformerXL::FeedForwardLayer(int layer, Batch& b) {
  const ModelConfig& c = config();
  const LayerWeights& lw = weights_.layers[layer];
  const int d = c.d_model, di = c.d_inner;
  const float* in = b.x.data();
  if (c.pre_lnorm) {
    LayerNormRows(b.x.data(), b.normed.data(), b.rows, d, lw.ff_ln_g.data, lw.ff_ln_b.data, c.layer_norm_epsilon);
    in = b.normed.data();
  }
  LinearNT(&pool_, in, d, lw.ff1_w.data, d, b.inner.data(), di, b.rows, di, d);
  AddBiasReluRows(b.inner.data(), b.rows, di, lw.ff1_b.data);
  LinearNT(&pool_, b.inner.data(), di, lw.ff2_w.data, di, b.tmp.data(), d, b.rows, d, di);
  AddBiasRows(b.tmp.data(), b.rows, d, lw.ff2_b.data);
  for (int64_t i = 0; i < b.rows * d; ++i) b.tmp[i] += b.x[i];
  if (c.pre_lnorm) {
    b.x.swap(b.tmp);
  } else {
    LayerNormRows(b.tmp.data(), b.x.data(), b.rows, d, lw.ff_ln_g.data, lw.ff_ln_b.data, c.layer_norm_epsilon);
  }
}

void TransformerXL::Score(Batch& b, std::vector<SegmentOutput>* outputs) {
  const int d = config().d_model;
  // Row r of `pred` predicts target r: the previous position's final hidden state.
  std::vector<float> pred;
  std::vector<int32_t> targets;
  std::vector<std::pair<int, int>> where;  // (stream, token index) of each target
  pred.reserve(static_cast<size_t>(b.rows) * d);
  for (size_t s = 0; s < b.streams.size(); ++s) {
    SegmentOutput& out = (*outputs)[s];
    const OutputOptions& options = b.options[s];
    const size_t n = b.tokens[s].size();
    out.logprob.assign(n, kNaN);
    if (options.entropy) out.entropy.assign(n, kNaN);
    if (options.alternatives > 0) out.alternatives.assign(n, {});
    out.tokens_scored = b.plan.tokens_scored[s];
  }
  for (const PlanScore& sc : b.plan.scored) {  // every token but a stream's first
    const float* h = sc.pred_row < 0 ? b.streams[sc.stream]->last_hidden().data() : b.x.data() + sc.pred_row * d;
    pred.insert(pred.end(), h, h + d);
    targets.push_back(b.tokens[sc.stream][sc.token]);
    where.emplace_back(sc.stream, sc.token);
  }
  const int64_t n_pred = static_cast<int64_t>(targets.size());
  if (n_pred > 0) {
    std::vector<float> lp(n_pred);
    output_.TargetLogProbs(&pool_, pred.data(), n_pred, targets.data(), lp.data());
    for (int64_t r = 0; r < n_pred; ++r) (*outputs)[where[r].first].logprob[where[r].second] = lp[r];
  }
  // Rows that need the full distribution: scored tokens with entropy/alternatives, and the position
  // after each segment when the next-token distribution is asked for (row index -1 marks it).
  std::vector<float> full_rows;
  std::vector<std::pair<int, int>> full_where;
  for (int64_t r = 0; r < n_pred; ++r) {
    const OutputOptions& o = b.options[where[r].first];
    if (o.entropy || o.alternatives > 0) {
      full_rows.insert(full_rows.end(), pred.begin() + r * d, pred.begin() + (r + 1) * d);
      full_where.push_back(where[r]);
    }
  }
  for (size_t s = 0; s < b.streams.size(); ++s) {
    if (!b.options[s].next_distribution) continue;
    const float* h = b.x.data() + (b.plan.offset[s] + static_cast<int64_t>(b.tokens[s].size()) - 1) * d;
    full_rows.insert(full_rows.end(), h, h + d);
    full_where.emplace_back(static_cast<int>(s), -1);
  }
  const int64_t n_full = static_cast<int64_t>(full_where.size());
  if (n_full == 0) return;

  // The full distribution is large (vocab floats per row): do it a few rows at a time.
  const int64_t vocab = config().vocab_size;
  const int64_t chunk = std::max<int64_t>(1, (int64_t{1} << 24) / vocab);
  std::vector<float> full;
  std::vector<int32_t> order;
  for (int64_t begin = 0; begin < n_full; begin += chunk) {
    const int64_t rows = std::min(chunk, n_full - begin);
    full.resize(static_cast<size_t>(rows * vocab));
    output_.FullLogProbs(&pool_, full_rows.data() + begin * d, rows, full.data());
    for (int64_t r = 0; r < rows; ++r) {
      const float* dist = full.data() + r * vocab;
      SegmentOutput& out = (*outputs)[full_where[begin + r].first];
      const OutputOptions& options = b.options[full_where[begin + r].first];
      const int i = full_where[begin + r].second;
      if (i < 0) {
        out.next_logprobs.assign(dist, dist + vocab);
        continue;
      }
      if (options.entropy) {
        double e = 0;
        for (int64_t v = 0; v < vocab; ++v) e -= std::exp(static_cast<double>(dist[v])) * dist[v];
        out.entropy[i] = static_cast<float>(e);
      }
      if (options.alternatives > 0) {
        const int k = static_cast<int>(std::min<int64_t>(options.alternatives, vocab));
        order.resize(vocab);
        for (int64_t v = 0; v < vocab; ++v) order[v] = static_cast<int32_t>(v);
        std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t x, int32_t y) {
          return dist[x] > dist[y] || (dist[x] == dist[y] && x < y);
        });
        for (int j = 0; j < k; ++j) out.alternatives[i].push_back({order[j], dist[order[j]]});
      }
    }
  }
}

absl::Status TransformerXL::Forward(absl::Span<const SegmentInput> batch, std::vector<SegmentOutput>* outputs) {
  Batch b;
  RETURN_IF_ERROR(Check(batch, &b.streams));
  std::lock_guard<std::mutex> lock(forward_mu_);
  const ModelConfig& c = config();
  std::vector<PlanStream> plan(batch.size());
  for (size_t s = 0; s < batch.size(); ++s) {
    const SegmentInput& in = batch[s];
    b.tokens.push_back(in.tokens);
    b.options.push_back(in.options);
    b.commit.push_back(in.commit);
    const StreamState& stream = *b.streams[s];
    const TramsSettings& settings = stream.settings();
    PlanStream& ps = plan[s];
    ps.start = stream.capacity() > 0 ? stream.RingRow(0) : 0;
    ps.size = stream.size();
    ps.capacity = stream.capacity();
    ps.position = stream.position();
    ps.attend_len = settings.attend_len();
    ps.topk = settings.topk;
    ps.remain = settings.remain;
    ps.selects_on_layer.resize(c.n_layer);
    for (int l = 0; l < c.n_layer; ++l) ps.selects_on_layer[l] = settings.SelectsOnLayer(l);
    ps.n = static_cast<int>(in.tokens.size());
    ps.commit = in.commit;
  }
  b.plan = PlanForward(plan, c.n_layer);
  b.rows = b.plan.rows;
  rel_.Reserve(b.plan.klen_max);
  const int64_t rows = b.rows;
  b.x.assign(static_cast<size_t>(rows) * c.d_model, 0.0f);
  b.normed.resize(c.pre_lnorm ? b.x.size() : 0);
  b.qkv.resize(static_cast<size_t>(rows) * 3 * c.attn_width());
  b.attn_vec.resize(static_cast<size_t>(rows) * c.attn_width());
  b.tmp.resize(b.x.size());
  b.inner.resize(static_cast<size_t>(rows) * c.d_inner);

  outputs->assign(batch.size(), SegmentOutput{});
  for (size_t s = 0; s < batch.size(); ++s) {
    if (b.options[s].selections) {
      (*outputs)[s].selections.assign(c.n_layer, std::vector<std::vector<int>>(c.n_head));
      (*outputs)[s].selection_scores.assign(c.n_layer, std::vector<std::vector<float>>(c.n_head));
      DescribeSelectionWindow(*b.streams[s], &(*outputs)[s]);
    }
  }
  for (size_t s = 0; s < b.streams.size(); ++s) {
    if (b.commit[s]) b.streams[s]->SaveRowsBeforeAppend(static_cast<int>(b.tokens[s].size()));
  }
  Embed(b);
  for (int l = 0; l < c.n_layer; ++l) {
    AttentionLayer(l, b, outputs);
    FeedForwardLayer(l, b);
  }
  Score(b, outputs);
  for (size_t s = 0; s < b.streams.size(); ++s) {
    if (!b.commit[s]) continue;
    const int64_t last = b.plan.offset[s] + static_cast<int64_t>(b.tokens[s].size()) - 1;
    b.streams[s]->CommitAppend(static_cast<int>(b.tokens[s].size()), b.x.data() + last * c.d_model, c.d_model);
  }
  return absl::OkStatus();
}

absl::Status TransformerXL::NextTokenLogProbs(const EngineStream& engine_stream, std::vector<float>* out) {
  const StreamState* host = HostStream(const_cast<EngineStream*>(&engine_stream));
  if (host == nullptr) return absl::InvalidArgumentError("the stream belongs to another engine");
  const StreamState& stream = *host;
  if (stream.position() == 0) {
    return absl::FailedPreconditionError("the stream is empty: give it at least one token before asking what follows");
  }
  std::lock_guard<std::mutex> lock(forward_mu_);
  out->resize(static_cast<size_t>(config().vocab_size));
  output_.FullLogProbs(&pool_, stream.last_hidden().data(), 1, out->data());
  return absl::OkStatus();
}

}  // namespace trams::engine
