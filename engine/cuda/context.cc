// Context set-up: checking and uploading the weights, the TRAMS Gram matrices, the relative-position
// table, the session arena and the streams carved from it. The forward itself is in forward.cc.
#include "engine/cuda/context.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "engine/cuda/hd_common.cuh"
#include "engine/precompute.h"
#include "engine/ring_cursor.h"
#include "engine/settings_rules.h"

namespace trams::cuda {
namespace {

std::string Shape(int64_t rows, int64_t cols) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "[%lld, %lld]", static_cast<long long>(rows), static_cast<long long>(cols));
  return buf;
}

// `m` must be present with exactly this shape (or may be absent when `optional`).
Status Expect(const trams_cuda_matrix& m, int64_t rows, int64_t cols, const std::string& name, bool optional = false) {
  if (m.data == nullptr) {
    return optional ? Status::Ok() : InvalidArgument("weight " + name + " is missing; expected " + Shape(rows, cols));
  }
  if (m.rows != rows || m.cols != cols) {
    return InvalidArgument("weight " + name + " has shape " + Shape(m.rows, m.cols) + ", expected " + Shape(rows, cols));
  }
  return Status::Ok();
}

constexpr int64_t kAlign = 256;
int64_t AlignUp(int64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

}  // namespace

int StreamSettings::attend_len() const { return engine::AttendLen(static_cast<engine::MemoryMode>(mode), mem_len, topk, remain); }

void Stream::CommitAppend(int n) {
  engine::AdvanceRing(settings_.mem_len, n, &start_, &size_);
  position_ += n;
  if (in_transaction_) appended_ += n;
}

Context::Context(std::unique_ptr<DeviceOps> ops, const trams_cuda_options& options)
    : ops_(std::move(ops)), options_(options), arena_alloc_(std::max<int64_t>(0, options.arena_bytes)) {}

Context::~Context() {
  ops_->Activate();
  ops_->Synchronize();
  for (void* p : weight_allocs_) ops_->Free(p);
  ops_->Free(rel_);
  ops_->Free(arena_);
  ops_->Free(workspace_);
  ops_->Free(meta_);
}

Status Context::Create(const trams_cuda_model& model, const trams_cuda_options& options,
                       std::unique_ptr<DeviceOps> ops, std::unique_ptr<Context>* out) {
  if (ops == nullptr) return Internal("no device ops");
  if (options.weight_dtype < TRAMS_CUDA_F32 || options.weight_dtype > TRAMS_CUDA_BF16) {
    return InvalidArgument("weight_dtype must be TRAMS_CUDA_F32, TRAMS_CUDA_F16 or TRAMS_CUDA_BF16");
  }
  if (options.pool_dtype < TRAMS_CUDA_F32 || options.pool_dtype > TRAMS_CUDA_BF16) {
    return InvalidArgument("pool_dtype must be TRAMS_CUDA_F32, TRAMS_CUDA_F16 or TRAMS_CUDA_BF16");
  }
  if (options.arena_bytes < 0 || options.rel_table_rows < 0 || options.output_chunk_floats < 0) {
    return InvalidArgument("arena_bytes, rel_table_rows and output_chunk_floats must not be negative");
  }
  if (!(options.arena_fraction >= 0.0 && options.arena_fraction <= 0.95)) {
    return InvalidArgument("arena_fraction must be in [0, 0.95], got " + std::to_string(options.arena_fraction));
  }
  TRAMS_CUDA_RETURN_IF_ERROR(ops->Activate());
  ops->Configure(options);
  std::unique_ptr<Context> ctx(new Context(std::move(ops), options));
  TRAMS_CUDA_RETURN_IF_ERROR(ctx->Init(model));
  *out = std::move(ctx);
  return Status::Ok();
}

Status Context::AllocWeights(size_t bytes, void** out) {
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Malloc(bytes, out).Annotate("uploading the weights"));
  weight_allocs_.push_back(*out);
  weights_bytes_ += static_cast<int64_t>(bytes);
  return Status::Ok();
}

Status Context::UploadMatrix(const trams_cuda_matrix& m, DType type, DeviceMatrix* out) {
  *out = DeviceMatrix{};
  if (m.data == nullptr) return Status::Ok();
  const uintptr_t p = reinterpret_cast<uintptr_t>(m.data);
  const int64_t count = m.rows * m.cols;
  out->type = type;
  out->rows = m.rows;
  out->cols = m.cols;
  // Tied weights: a range of rows of something already on the device is not uploaded again.
  for (const Upload& u : uploads_) {
    if (u.type != type || u.cols != m.cols) continue;
    const uintptr_t end = u.host + static_cast<uintptr_t>(u.count) * sizeof(float);
    if (p >= u.host && p + static_cast<uintptr_t>(count) * sizeof(float) <= end &&
        (p - u.host) % (static_cast<uintptr_t>(m.cols) * sizeof(float)) == 0) {
      out->data = static_cast<const char*>(u.device) + (p - u.host) / sizeof(float) * DTypeBytes(type);
      return Status::Ok();
    }
  }
  void* dev = nullptr;
  const size_t bytes = static_cast<size_t>(count) * DTypeBytes(type);
  TRAMS_CUDA_RETURN_IF_ERROR(AllocWeights(bytes, &dev));
  if (type == DType::kF32) {
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->Upload(dev, m.data, bytes));
  } else {
    std::vector<uint16_t> converted(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
      converted[i] = type == DType::kF16 ? F32ToF16Bits(m.data[i]) : F32ToBf16Bits(m.data[i]);
    }
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->Upload(dev, converted.data(), bytes));
    // The staging copy must outlive an asynchronous upload.
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->Synchronize());
  }
  uploads_.push_back({p, count, m.cols, type, dev});
  out->data = dev;
  return Status::Ok();
}

Status Context::UploadF32(const trams_cuda_matrix& m, const float** out) {
  DeviceMatrix d;
  TRAMS_CUDA_RETURN_IF_ERROR(UploadMatrix(m, DType::kF32, &d));
  *out = d.f32();
  return Status::Ok();
}

// TramsScorer's tables (engine/precompute.h's TramsGram, computed on the host as the host engine does), uploaded.
Status Context::ComputeGram(const trams_cuda_matrix& qkv, Layer* layer) {
  const int h_count = c_.n_head, dh = c_.d_head, d = c_.d_model;
  std::vector<float> gram(static_cast<size_t>(h_count) * dh * dh), row_sum(static_cast<size_t>(h_count) * dh);
  engine::TramsGram(qkv.data, h_count, dh, d, gram.data(), row_sum.data());
  void* g = nullptr;
  void* u = nullptr;
  TRAMS_CUDA_RETURN_IF_ERROR(AllocWeights(gram.size() * sizeof(float), &g));
  TRAMS_CUDA_RETURN_IF_ERROR(AllocWeights(row_sum.size() * sizeof(float), &u));
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Upload(g, gram.data(), gram.size() * sizeof(float)));
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Upload(u, row_sum.data(), row_sum.size() * sizeof(float)));
  layer->gram = static_cast<float*>(g);
  layer->row_sum = static_cast<float*>(u);
  return ops_->Synchronize();
}

Status Context::Init(const trams_cuda_model& model) {
  const trams_cuda_model_config& mc = model.config;
  if (mc.n_layer <= 0 || mc.d_model <= 0 || mc.d_embed <= 0 || mc.n_head <= 0 || mc.d_head <= 0 ||
      mc.d_inner <= 0 || mc.vocab_size <= 0 || mc.div_val <= 0 || mc.n_clusters < 0) {
    return InvalidArgument("model config: n_layer, d_model, d_embed, n_head, d_head, d_inner, vocab_size and div_val "
                           "must be positive");
  }
  if (mc.n_clusters > 0 && mc.cutoffs == nullptr) return InvalidArgument("model config: cutoffs missing");
  c_.n_layer = mc.n_layer;
  c_.d_model = mc.d_model;
  c_.d_embed = mc.d_embed;
  c_.n_head = mc.n_head;
  c_.d_head = mc.d_head;
  c_.d_inner = mc.d_inner;
  c_.vocab = mc.vocab_size;
  c_.n_clusters = mc.n_clusters;
  c_.div_val = mc.div_val;
  c_.pre_lnorm = mc.pre_lnorm != 0;
  c_.same_length = mc.same_length != 0;
  c_.clamp_len = mc.clamp_len;
  c_.eps = mc.layer_norm_epsilon;
  c_.ends = {0};
  for (int i = 0; i < mc.n_clusters; ++i) {
    if (mc.cutoffs[i] <= c_.ends.back() || mc.cutoffs[i] >= mc.vocab_size) {
      return InvalidArgument("model config: cutoffs must ascend strictly inside (0, vocab_size)");
    }
    c_.ends.push_back(mc.cutoffs[i]);
  }
  c_.ends.push_back(mc.vocab_size);
  if (c_.vocab > INT32_MAX) return InvalidArgument("vocab_size must fit in 32 bits");
  dtype_ = static_cast<DType>(options_.weight_dtype);
  pool_dtype_ = static_cast<DType>(options_.pool_dtype);
  auto cluster_dim = [&](int i) {
    int dim = c_.d_embed;
    for (int k = 0; k < i; ++k) dim /= c_.div_val;
    return dim;
  };
  const int d = c_.d_model, w = c_.width(), nc = c_.n_clusters;

  // Shapes first: nothing is uploaded for a model that does not fit its config.
  const int n_emb = c_.div_val == 1 ? 1 : nc + 1;
  if (model.n_embedding != n_emb || model.embedding == nullptr) {
    return InvalidArgument("the model needs " + std::to_string(n_emb) + " embedding tables");
  }
  for (int i = 0; i < n_emb; ++i) {
    const int64_t ids = c_.div_val == 1 ? c_.vocab : c_.ends[i + 1] - c_.ends[i];
    const int dim = cluster_dim(i);
    const std::string name = "embedding " + std::to_string(i);
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(model.embedding[i].table, ids, dim, name + " table"));
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(model.embedding[i].proj, d, dim, name + " projection", dim == d));
  }
  if (model.layers == nullptr) return InvalidArgument("the model has no layers");
  for (int l = 0; l < c_.n_layer; ++l) {
    const trams_cuda_layer_weights& lw = model.layers[l];
    const std::string p = "layer " + std::to_string(l) + " ";
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(lw.qkv, 3 * w, d, p + "qkv"));
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(lw.r_net, w, d, p + "r_net"));
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(lw.o_net, d, w, p + "o_net"));
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(lw.attn_ln_g, 1, d, p + "attn layer_norm weight"));
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(lw.attn_ln_b, 1, d, p + "attn layer_norm bias"));
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(lw.ff1_w, c_.d_inner, d, p + "ff1 weight"));
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(lw.ff1_b, 1, c_.d_inner, p + "ff1 bias"));
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(lw.ff2_w, d, c_.d_inner, p + "ff2 weight"));
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(lw.ff2_b, 1, d, p + "ff2 bias"));
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(lw.ff_ln_g, 1, d, p + "ff layer_norm weight"));
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(lw.ff_ln_b, 1, d, p + "ff layer_norm bias"));
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(lw.r_w_bias, c_.n_head, c_.d_head, p + "r_w_bias"));
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(lw.r_r_bias, c_.n_head, c_.d_head, p + "r_r_bias"));
  }
  if (model.n_output != nc + 1 || model.output == nullptr) {
    return InvalidArgument("the model needs " + std::to_string(nc + 1) + " output clusters");
  }
  for (int i = 0; i <= nc; ++i) {
    const trams_cuda_output_cluster& o = model.output[i];
    const int64_t ids = c_.ends[i + 1] - c_.ends[i];
    const int dim = cluster_dim(c_.div_val == 1 ? 0 : i);
    const std::string name = "output cluster " + std::to_string(i);
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(o.weight, ids, dim, name + " weight"));
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(o.bias, 1, ids, name + " bias"));
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(o.proj, d, dim, name + " projection", dim == d));
  }
  if (nc > 0) {
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(model.cluster_weight, nc, c_.d_embed, "cluster_weight"));
    TRAMS_CUDA_RETURN_IF_ERROR(Expect(model.cluster_bias, 1, nc, "cluster_bias"));
  }

  // Upload: matrices in the chosen dtype, vectors in f32.
  for (int i = 0; i < n_emb; ++i) {
    DeviceMatrix t, p;
    TRAMS_CUDA_RETURN_IF_ERROR(UploadMatrix(model.embedding[i].table, dtype_, &t));
    TRAMS_CUDA_RETURN_IF_ERROR(UploadMatrix(model.embedding[i].proj, dtype_, &p));
    emb_table_.push_back(t);
    emb_proj_.push_back(p);
  }
  layers_.resize(c_.n_layer);
  for (int l = 0; l < c_.n_layer; ++l) {
    const trams_cuda_layer_weights& lw = model.layers[l];
    Layer& L = layers_[l];
    TRAMS_CUDA_RETURN_IF_ERROR(UploadMatrix(lw.qkv, dtype_, &L.qkv));
    TRAMS_CUDA_RETURN_IF_ERROR(UploadMatrix(lw.r_net, dtype_, &L.r_net));
    TRAMS_CUDA_RETURN_IF_ERROR(UploadMatrix(lw.o_net, dtype_, &L.o_net));
    TRAMS_CUDA_RETURN_IF_ERROR(UploadMatrix(lw.ff1_w, dtype_, &L.ff1_w));
    TRAMS_CUDA_RETURN_IF_ERROR(UploadMatrix(lw.ff2_w, dtype_, &L.ff2_w));
    TRAMS_CUDA_RETURN_IF_ERROR(UploadF32(lw.attn_ln_g, &L.attn_ln_g));
    TRAMS_CUDA_RETURN_IF_ERROR(UploadF32(lw.attn_ln_b, &L.attn_ln_b));
    TRAMS_CUDA_RETURN_IF_ERROR(UploadF32(lw.ff1_b, &L.ff1_b));
    TRAMS_CUDA_RETURN_IF_ERROR(UploadF32(lw.ff2_b, &L.ff2_b));
    TRAMS_CUDA_RETURN_IF_ERROR(UploadF32(lw.ff_ln_g, &L.ff_ln_g));
    TRAMS_CUDA_RETURN_IF_ERROR(UploadF32(lw.ff_ln_b, &L.ff_ln_b));
    TRAMS_CUDA_RETURN_IF_ERROR(UploadF32(lw.r_w_bias, &L.r_w_bias));
    TRAMS_CUDA_RETURN_IF_ERROR(UploadF32(lw.r_r_bias, &L.r_r_bias));
    TRAMS_CUDA_RETURN_IF_ERROR(ComputeGram(lw.qkv, &L));
  }
  out_.resize(nc + 1);
  for (int i = 0; i <= nc; ++i) {
    const trams_cuda_output_cluster& o = model.output[i];
    OutCluster& oc = out_[i];
    TRAMS_CUDA_RETURN_IF_ERROR(UploadMatrix(o.weight, dtype_, &oc.weight));
    TRAMS_CUDA_RETURN_IF_ERROR(UploadMatrix(o.proj, dtype_, &oc.proj));
    TRAMS_CUDA_RETURN_IF_ERROR(UploadF32(o.bias, &oc.bias));
    oc.size = c_.ends[i + 1] - c_.ends[i];
    oc.dim = static_cast<int>(o.weight.cols);
    max_dim_ = std::max(max_dim_, oc.dim);
    if (i > 0) max_tail_ = std::max(max_tail_, oc.size);
  }
  // The head: the first cluster's rows, then one row per tail cluster (OutputLayer's head_weight_).
  const int dim0 = out_[0].dim;
  head_size_ = c_.ends[1] + nc;
  std::vector<float> hw(static_cast<size_t>(head_size_) * dim0), hb(static_cast<size_t>(head_size_));
  std::memcpy(hw.data(), model.output[0].weight.data, sizeof(float) * c_.ends[1] * dim0);
  std::memcpy(hb.data(), model.output[0].bias.data, sizeof(float) * c_.ends[1]);
  if (nc > 0) {
    std::memcpy(hw.data() + c_.ends[1] * dim0, model.cluster_weight.data, sizeof(float) * nc * dim0);
    std::memcpy(hb.data() + c_.ends[1], model.cluster_bias.data, sizeof(float) * nc);
  }
  TRAMS_CUDA_RETURN_IF_ERROR(UploadMatrix({hw.data(), head_size_, dim0}, dtype_, &head_weight_));
  TRAMS_CUDA_RETURN_IF_ERROR(UploadF32({hb.data(), 1, head_size_}, &head_bias_));
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Synchronize());
  // hw/hb die here: forget their host addresses so that no later upload matches them.
  uploads_.clear();

  TRAMS_CUDA_RETURN_IF_ERROR(EnsureRelTable(options_.rel_table_rows > 0 ? options_.rel_table_rows : 1024));
  if (options_.arena_bytes == 0 && options_.arena_fraction > 0) {
    DeviceDescription desc;
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->Describe(&desc));
    options_.arena_bytes =
        static_cast<int64_t>(options_.arena_fraction * static_cast<double>(desc.memory_free)) / 256 * 256;
    arena_alloc_ = ArenaAllocator(options_.arena_bytes);
  }
  if (options_.arena_bytes > 0) {
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->Malloc(static_cast<size_t>(arena_alloc_.capacity()), &arena_)
                                   .Annotate("allocating the session arena of " +
                                             std::to_string(options_.arena_bytes) + " bytes"));
  }
  return Status::Ok();
}

// r_l(d) = r_net_l(pos_emb(min(d, clamp_len))) for d < rows, every layer; grown geometrically. The
// sinusoids are RelPositionTable's (engine/precompute.h, host f32 rounding), the products run on the device.
Status Context::EnsureRelTable(int rows) {
  if (rows <= rel_rows_) return Status::Ok();
  rows = std::max(rows, rel_rows_ * 2);
  const int d = c_.d_model, w = c_.width();
  std::vector<float> pos(static_cast<size_t>(rows) * d, 0.0f);
  engine::RelPositionSinusoids(0, rows, d, c_.clamp_len, pos.data());
  const int64_t table_bytes = static_cast<int64_t>(c_.n_layer) * rows * w * static_cast<int64_t>(sizeof(float));
  void* table = nullptr;
  void* pos_dev = nullptr;
  void* scratch = nullptr;
  Status s = ops_->Malloc(static_cast<size_t>(table_bytes), &table);
  if (s.ok()) s = ops_->Malloc(pos.size() * sizeof(float), &pos_dev);
  if (s.ok() && dtype_ != DType::kF32) s = ops_->Malloc(pos.size() * 2, &scratch);
  if (s.ok()) s = ops_->Upload(pos_dev, pos.data(), pos.size() * sizeof(float));
  for (int l = 0; l < c_.n_layer && s.ok(); ++l) {
    float* dst = static_cast<float*>(table) + static_cast<int64_t>(l) * rows * w;
    s = Linear(static_cast<const float*>(pos_dev), rows, d, layers_[l].r_net, false, dst, w, scratch);
  }
  if (s.ok()) s = ops_->Synchronize();
  ops_->Free(pos_dev);
  ops_->Free(scratch);
  if (!s.ok()) {
    ops_->Free(table);
    return s.Annotate("relative-position table for " + std::to_string(rows) + " distances");
  }
  ops_->Free(rel_);
  rel_ = static_cast<float*>(table);
  rel_rows_ = rows;
  rel_bytes_ = table_bytes;
  return Status::Ok();
}

Status Context::EnsureWorkspace(int64_t bytes) {
  workspace_peak_ = std::max(workspace_peak_, bytes);
  if (bytes <= workspace_bytes_) return Status::Ok();
  // Grow by at least a quarter so that slowly growing batches do not reallocate every call.
  int64_t want = std::max(bytes, workspace_bytes_ + workspace_bytes_ / 4);
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Synchronize());
  ops_->Free(workspace_);
  workspace_ = nullptr;
  workspace_bytes_ = 0;
  Status s = ops_->Malloc(static_cast<size_t>(want), &workspace_);
  if (!s.ok() && want > bytes) {
    want = bytes;
    s = ops_->Malloc(static_cast<size_t>(want), &workspace_);
  }
  if (!s.ok()) {
    workspace_ = nullptr;
    return s.Annotate("workspace of " + std::to_string(bytes) + " bytes for this batch");
  }
  workspace_bytes_ = want;
  return Status::Ok();
}

Status Context::EnsureMeta(int64_t bytes) {
  if (bytes <= meta_bytes_) return Status::Ok();
  const int64_t want = std::max(bytes, meta_bytes_ * 2);
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Synchronize());
  ops_->Free(meta_);
  meta_ = nullptr;
  meta_bytes_ = 0;
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Malloc(static_cast<size_t>(want), &meta_).Annotate("batch metadata"));
  meta_bytes_ = want;
  return Status::Ok();
}

Status Context::Linear(const float* x, int m, int k, const DeviceMatrix& w, bool w_is_kn, float* y, int64_t ldy,
                       void* convert_scratch) {
  if (m == 0) return Status::Ok();
  GemmArgs g;
  g.type = w.type;
  g.a = x;
  if (w.type != DType::kF32) {
    ConvertArgs cv;
    cv.src = x;
    cv.dst = convert_scratch;
    cv.type = w.type;
    cv.count = static_cast<int64_t>(m) * k;
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->Convert(cv));
    g.a = convert_scratch;
  }
  g.lda = k;
  g.b = w.data;
  g.ldb = w.cols;
  g.trans_b = !w_is_kn;
  g.c = y;
  g.ldc = ldy;
  g.m = m;
  g.n = static_cast<int>(w_is_kn ? w.cols : w.rows);
  g.k = k;
  return ops_->Gemm(g);
}

// The C struct's own validity (enums, pointers), then the rules and messages every backend shares
// (engine/settings_rules.h, as TramsSettings::Validate).
Status Context::ParseSettings(const trams_cuda_stream_settings& in, StreamSettings* out) const {
  static_assert(static_cast<int>(engine::MemoryMode::kNone) == TRAMS_CUDA_MODE_NONE &&
                    static_cast<int>(engine::MemoryMode::kXl) == TRAMS_CUDA_MODE_XL &&
                    static_cast<int>(engine::MemoryMode::kTrams) == TRAMS_CUDA_MODE_TRAMS,
                "MemoryMode numbers the C ABI's modes");
  if (in.n_select_layers < 0 || (in.n_select_layers > 0 && in.select_layers == nullptr)) {
    return InvalidArgument("select_layers is missing");
  }
  if (in.metric != TRAMS_CUDA_METRIC_CODE && in.metric != TRAMS_CUDA_METRIC_PAPER) {
    return InvalidArgument("unknown selection metric " + std::to_string(in.metric));
  }
  engine::SettingsView view;
  view.mode = static_cast<engine::MemoryMode>(in.mode);
  view.mem_len = in.mem_len;
  view.topk = in.topk;
  view.remain = in.remain;
  view.layers = in.select_layers;
  view.n_layers = in.n_select_layers;
  const std::string error = engine::SettingsError(view, c_.n_layer);
  if (!error.empty()) return InvalidArgument(error);
  StreamSettings s;
  s.mode = in.mode;
  s.mem_len = in.mem_len;
  s.topk = in.topk;
  s.remain = in.remain;
  s.metric = in.metric;
  if (in.mode == TRAMS_CUDA_MODE_NONE) s.topk = s.remain = 0;
  if (in.mode == TRAMS_CUDA_MODE_XL) {
    s.topk = 0;
    s.remain = in.mem_len;
  }
  s.selects_on_layer.assign(c_.n_layer, false);
  for (int l = 0; l < c_.n_layer; ++l) s.selects_on_layer[l] = engine::SelectsOnLayer(view, l);
  *out = std::move(s);
  return Status::Ok();
}

int64_t Context::StreamBytesFor(const StreamSettings& s) const {
  const int64_t m = s.mem_len, w = c_.width();
  int64_t bytes = AlignUp(c_.d_model * static_cast<int64_t>(sizeof(float)));
  if (m == 0) return bytes;
  for (int l = 0; l < c_.n_layer; ++l) {
    bytes += 2 * AlignUp(m * w * DTypeBytes(pool_dtype_));  // keys and values as pool_dtype
    if (s.selects_on_layer[l]) bytes += AlignUp(m * c_.n_head * static_cast<int64_t>(sizeof(float)));
  }
  return bytes;
}

Status Context::StreamBytes(const trams_cuda_stream_settings& settings, int64_t* bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  StreamSettings s;
  TRAMS_CUDA_RETURN_IF_ERROR(ParseSettings(settings, &s));
  *bytes = arena_alloc_.Rounded(StreamBytesFor(s));
  return Status::Ok();
}

Status Context::CreateStream(const trams_cuda_stream_settings& settings, Stream** out) {
  std::lock_guard<std::mutex> lock(mu_);
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Activate());
  auto stream = std::make_unique<Stream>();
  TRAMS_CUDA_RETURN_IF_ERROR(ParseSettings(settings, &stream->settings_));
  const int64_t bytes = StreamBytesFor(stream->settings_);
  int64_t offset = 0;
  if (arena_ == nullptr || !arena_alloc_.Allocate(bytes, &offset)) {
    return ResourceExhausted("session arena full: a stream with mem_len " + std::to_string(settings.mem_len) +
                             " needs " + std::to_string(arena_alloc_.Rounded(bytes)) + " bytes; " +
                             std::to_string(arena_alloc_.free_bytes()) + " of " +
                             std::to_string(arena_alloc_.capacity()) + " bytes are free (largest block " +
                             std::to_string(arena_alloc_.largest_free()) + ", " + std::to_string(streams_) +
                             " streams open)");
  }
  char* base = static_cast<char*>(arena_) + offset;
  int64_t at = 0;
  // elements of elem_bytes each (keys and values: pool_dtype_; the pointers stay float*, the bytes are the
  // pool dtype's: StreamLayerMeta::pool_dtype says how to read them).
  auto take = [&](int64_t elements, int elem_bytes = static_cast<int>(sizeof(float))) {
    float* p = reinterpret_cast<float*>(base + at);
    at += AlignUp(elements * elem_bytes);
    return p;
  };
  Stream& s = *stream;
  s.owner_ = this;
  s.arena_offset_ = offset;
  s.bytes_ = arena_alloc_.Rounded(bytes);
  s.last_hidden_ = take(c_.d_model);
  const int64_t m = s.settings_.mem_len, w = c_.width();
  s.keys_.assign(c_.n_layer, nullptr);
  s.values_.assign(c_.n_layer, nullptr);
  s.scores_.assign(c_.n_layer, nullptr);
  if (m > 0) {
    for (int l = 0; l < c_.n_layer; ++l) {
      s.keys_[l] = take(m * w, DTypeBytes(pool_dtype_));
      s.values_[l] = take(m * w, DTypeBytes(pool_dtype_));
      if (s.settings_.selects_on_layer[l]) s.scores_[l] = take(m * c_.n_head);
    }
  }
  Status z = ops_->Zero(base, static_cast<size_t>(bytes));
  if (!z.ok()) {
    arena_alloc_.Release(offset);
    return z;
  }
  ++streams_;
  *out = stream.release();
  return Status::Ok();
}

Status Context::CheckStream(const Stream* stream) const {
  if (stream == nullptr) return InvalidArgument("no stream");
  if (stream->owner_ != this) return InvalidArgument("the stream belongs to another context");
  return Status::Ok();
}

void Context::DestroyStream(Stream* stream) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stream == nullptr || stream->owner_ != this) return;
  // A forward in flight may still write the pools: wait before the arena block can be reused.
  ops_->Activate();
  ops_->Synchronize();
  arena_alloc_.Release(stream->arena_offset_);
  --streams_;
  delete stream;
}

Status Context::GetStreamInfo(const Stream* stream, trams_cuda_stream_info* out) {
  std::lock_guard<std::mutex> lock(mu_);
  TRAMS_CUDA_RETURN_IF_ERROR(CheckStream(stream));
  out->mem_len = stream->capacity();
  out->size = stream->size();
  out->position = stream->position();
  out->bytes = stream->bytes();
  out->in_transaction = stream->in_transaction() ? 1 : 0;
  out->undo_bytes = stream->undo_bytes();
  return Status::Ok();
}

Status Context::GetDeviceInfo(trams_cuda_device_info* out) {
  std::lock_guard<std::mutex> lock(mu_);
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Activate());
  DeviceDescription d;
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Describe(&d));
  *out = trams_cuda_device_info{};
  std::snprintf(out->name, sizeof(out->name), "%s", d.name.c_str());
  out->device = d.device;
  out->cc_major = d.cc_major;
  out->cc_minor = d.cc_minor;
  out->memory_total = d.memory_total;
  out->memory_free = d.memory_free;
  out->arena_total = arena_ == nullptr ? 0 : arena_alloc_.capacity();
  out->arena_used = arena_alloc_.used();
  out->arena_largest_free = arena_ == nullptr ? 0 : arena_alloc_.largest_free();
  out->weights_bytes = weights_bytes_ + rel_bytes_;
  out->workspace_bytes = workspace_bytes_ + meta_bytes_;
  out->workspace_peak = workspace_peak_;
  out->streams = streams_;
  out->last_forward_ms = last_forward_ms_;
  return Status::Ok();
}

}  // namespace trams::cuda
