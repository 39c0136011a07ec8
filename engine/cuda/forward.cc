// The forward of the CUDA backend, step by step as TransformerXL::Forward (engine/transformer_xl.cc):
// check, plan (rows, pools, selections, output rows; all on the host), size the workspace, upload one
// block of metadata, then embedding -> per layer (attention with TRAMS selection, pool append,
// feed-forward) -> adaptive log-softmax. Nothing changes a stream before the plan fits; cursors move only
// once everything has run.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <unordered_set>

#include "engine/cuda/context.h"
#include "engine/cuda/log_softmax.cuh"

namespace trams::cuda {
namespace {

constexpr int64_t kAlign = 256;
constexpr int64_t kDefaultOutputChunkFloats = int64_t{32} << 20;
int64_t AlignUp(int64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

// Bump allocation over the workspace; with a null base it only measures.
class Carver {
 public:
  explicit Carver(char* base) : base_(base) {}
  template <class T>
  T* Take(int64_t count) {
    off_ = AlignUp(off_);
    T* p = base_ == nullptr ? nullptr : reinterpret_cast<T*>(base_ + off_);
    off_ += std::max<int64_t>(count, 0) * static_cast<int64_t>(sizeof(T));
    return p;
  }
  int64_t size() const { return AlignUp(off_); }

 private:
  char* base_;
  int64_t off_ = 0;
};

// Host arrays bound for the device in one upload; Ptr() is valid once the base is known.
class MetaBlob {
 public:
  template <class T>
  int64_t Add(const std::vector<T>& v) {
    const int64_t at = AlignUp(static_cast<int64_t>(bytes_.size()));
    bytes_.resize(static_cast<size_t>(at) + v.size() * sizeof(T));
    if (!v.empty()) std::memcpy(bytes_.data() + at, v.data(), v.size() * sizeof(T));
    return at;
  }
  int64_t size() const { return std::max<int64_t>(kAlign, static_cast<int64_t>(bytes_.size())); }
  const char* data() const { return bytes_.data(); }
  template <class T>
  static T* Ptr(void* base, int64_t offset) {
    return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
  }

 private:
  std::vector<char> bytes_;
};

}  // namespace

// Sizes of one call and the host-side plan of the forward.
struct Context::Plan {
  int batch = 0;
  int64_t rows = 0;
  int n_max = 0, klen_max = 0, a_max = 0, topk_max = 1;
  std::vector<Stream*> streams;
  std::vector<int> offset;
  std::vector<std::vector<StreamLayerMeta>> metas;  // [L][B]
  std::vector<AppendItem> append;
  std::vector<std::vector<int32_t>> emb_ids, emb_rows;  // per embedding table
  bool selections = false;
  int max_emb_dim = 0;

  // Scoring: pred row r predicts targets[r], for token where[r].second of segment where[r].first. Its hidden
  // state is the stream's last state (pred_stream[r] >= 0) or packed row pred_row[r] of the final x.
  int n_pred = 0;
  std::vector<int32_t> targets;
  std::vector<std::pair<int, int>> where;
  std::vector<int> pred_stream;
  std::vector<int64_t> pred_row;
  int tchunk = 0;  // pred rows per output chunk
  std::vector<TargetItem> head_items;                  // sorted by pred row
  std::vector<std::vector<int32_t>> tail_rows;         // [cluster] pred rows, ascending
  std::vector<std::vector<TargetItem>> tail_items;     // [cluster], parallel to tail_rows

  // Full distributions: hidden state like pred rows (stream >= 0: last state, else packed row), host target.
  int n_full = 0;
  int fchunk = 0;
  std::vector<int> full_stream;
  std::vector<int64_t> full_row;
  std::vector<float*> full_dst;

  // FillZero only.
  int fill_rows = 0;
};

struct Context::Workspace {
  float *x = nullptr, *x2 = nullptr, *tmp = nullptr, *normed = nullptr, *qkv = nullptr, *attn_vec = nullptr,
        *inner = nullptr;
  void* convert = nullptr;
  float *emb_gathered = nullptr, *emb_projected = nullptr;
  float *q_w = nullptr, *q_r = nullptr, *k = nullptr, *v = nullptr, *ac = nullptr, *bd = nullptr, *o = nullptr;
  int32_t *att_rows = nullptr, *selected = nullptr, *counts = nullptr;
  float *pred = nullptr, *lp = nullptr;
  float *head = nullptr, *proj = nullptr, *tail_hidden = nullptr, *tail_logits = nullptr, *full_hidden = nullptr,
        *full = nullptr;
  float *zero_row = nullptr, *zero_normed = nullptr, *zero_qkv = nullptr;

  // Metadata (device).
  const StreamLayerMeta* metas = nullptr;
  const AppendItem* append = nullptr;
  std::vector<const int32_t*> emb_ids, emb_rows;
  const float* const* pred_src = nullptr;
  const TargetItem* head_items = nullptr;
  std::vector<const int32_t*> tail_rows;
  std::vector<const TargetItem*> tail_items;
  const float* const* full_src = nullptr;
  const int32_t* zeros = nullptr;
};

namespace {

// Every buffer a call may use; sizes from the plan (zero-sized buffers cost nothing).
template <class W, class P>
void CarveBuffers(Carver& cv, const P& p, int n_layer, int d, int w, int d_inner, int n_head, int d_head,
                  bool pre_lnorm, bool convert, int max_k, int64_t head_size, int max_dim, int64_t max_tail,
                  int64_t vocab, W* ws) {
  const int64_t rows = p.rows, hb = static_cast<int64_t>(n_head) * p.batch;
  ws->x = cv.template Take<float>(rows * d);
  ws->x2 = cv.template Take<float>(rows * d);
  ws->tmp = cv.template Take<float>(rows * d);
  ws->normed = cv.template Take<float>(pre_lnorm ? rows * d : 0);
  ws->qkv = cv.template Take<float>(rows * 3 * w);
  ws->attn_vec = cv.template Take<float>(rows * w);
  ws->inner = cv.template Take<float>(rows * d_inner);
  ws->emb_gathered = cv.template Take<float>(rows * p.max_emb_dim);
  ws->emb_projected = cv.template Take<float>(p.max_emb_dim > 0 ? rows * d : 0);
  ws->q_w = cv.template Take<float>(hb * p.n_max * d_head);
  ws->q_r = cv.template Take<float>(hb * p.n_max * d_head);
  ws->k = cv.template Take<float>(hb * p.klen_max * d_head);
  ws->v = cv.template Take<float>(hb * p.klen_max * d_head);
  ws->ac = cv.template Take<float>(hb * p.n_max * p.klen_max);
  ws->bd = cv.template Take<float>(hb * p.n_max * p.klen_max);
  ws->o = cv.template Take<float>(hb * p.n_max * d_head);
  ws->att_rows = cv.template Take<int32_t>(hb * std::max(1, p.a_max));
  ws->selected = cv.template Take<int32_t>(p.selections ? n_layer * hb * p.topk_max : 0);
  ws->counts = cv.template Take<int32_t>(p.selections ? n_layer * hb : 0);
  ws->pred = cv.template Take<float>(static_cast<int64_t>(p.n_pred) * d);
  ws->lp = cv.template Take<float>(p.n_pred);
  const int64_t out_rows = std::max(p.tchunk, p.fchunk);
  ws->head = cv.template Take<float>(out_rows * head_size);
  ws->proj = cv.template Take<float>(out_rows * max_dim);
  ws->tail_hidden = cv.template Take<float>(static_cast<int64_t>(p.tchunk) * d);
  ws->tail_logits = cv.template Take<float>(out_rows * max_tail);
  ws->full_hidden = cv.template Take<float>(static_cast<int64_t>(p.fchunk) * d);
  ws->full = cv.template Take<float>(static_cast<int64_t>(p.fchunk) * vocab);
  ws->zero_row = cv.template Take<float>(p.fill_rows * d);
  ws->zero_normed = cv.template Take<float>(p.fill_rows * d);
  ws->zero_qkv = cv.template Take<float>(p.fill_rows * 3 * w);
  if (convert) {
    const int64_t conv_rows = std::max<int64_t>({rows, out_rows, p.fill_rows, 1});
    ws->convert = cv.template Take<uint16_t>(conv_rows * max_k);
  }
}

}  // namespace

Status Context::Forward(const trams_cuda_segment* segs, int n_segments) {
  std::lock_guard<std::mutex> lock(mu_);
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Activate());
  if (segs == nullptr || n_segments <= 0) return InvalidArgument("empty batch: nothing to run");

  // 1. Check everything before anything changes (TransformerXL::Check).
  std::unordered_set<const Stream*> seen;
  for (int b = 0; b < n_segments; ++b) {
    const trams_cuda_segment& in = segs[b];
    const std::string entry = "batch entry " + std::to_string(b);
    if (in.stream == nullptr) return InvalidArgument(entry + " has no stream");
    const Stream* s = reinterpret_cast<const Stream*>(in.stream);
    if (s->owner_ != this) return InvalidArgument(entry + " belongs to another context");
    if (!seen.insert(s).second) return InvalidArgument(entry + " repeats a stream: one segment per stream");
    if (in.n_tokens <= 0 || in.tokens == nullptr) return InvalidArgument(entry + " has no tokens");
    for (int i = 0; i < in.n_tokens; ++i) {
      if (in.tokens[i] < 0 || in.tokens[i] >= c_.vocab) {
        return InvalidArgument("token id " + std::to_string(in.tokens[i]) + " at position " + std::to_string(i) +
                               " of " + entry + " is outside the vocabulary [0, " + std::to_string(c_.vocab) + ")");
      }
    }
  }

  // 2. Plan on the host.
  const int d = c_.d_model, w = c_.width(), H = c_.n_head, L = c_.n_layer;
  Plan p;
  p.batch = n_segments;
  for (int b = 0; b < n_segments; ++b) {
    const trams_cuda_segment& in = segs[b];
    Stream* s = reinterpret_cast<Stream*>(in.stream);
    p.streams.push_back(s);
    p.offset.push_back(static_cast<int>(p.rows));
    p.rows += in.n_tokens;
    const int a = std::min(s->size(), s->settings().attend_len());
    p.n_max = std::max(p.n_max, in.n_tokens);
    p.a_max = std::max(p.a_max, a);
    p.klen_max = std::max(p.klen_max, a + in.n_tokens);
    p.topk_max = std::max(p.topk_max, s->settings().topk);
    p.selections = p.selections || in.selections != nullptr || in.selection_counts != nullptr;
  }
  if (p.rows > INT32_MAX / 4) return InvalidArgument("batch too large");
  p.metas.assign(L, std::vector<StreamLayerMeta>(p.batch));
  for (int l = 0; l < L; ++l) {
    for (int b = 0; b < p.batch; ++b) {
      const Stream& s = *p.streams[b];
      const StreamSettings& st = s.settings();
      StreamLayerMeta& m = p.metas[l][b];
      m.keys = s.keys_[l];
      m.values = s.values_[l];
      m.scores = s.scores_[l];
      m.offset = p.offset[b];
      m.n = segs[b].n_tokens;
      m.a = std::min(s.size(), st.attend_len());
      m.window = st.attend_len();
      m.start = s.start_;
      m.size = s.size_;
      m.mem_len = st.mem_len;
      m.selects = st.selects_on_layer[l] && s.size() > st.topk + st.remain ? 1 : 0;
      m.topk = st.topk;
      m.remain = st.remain;
      m.metric = st.metric;
    }
  }
  for (int b = 0; b < p.batch; ++b) {
    const Stream& s = *p.streams[b];
    const int n = segs[b].n_tokens, cap = s.capacity();
    if (cap == 0) continue;
    for (int i = std::max(0, n - cap); i < n; ++i) {  // earlier ones would be dropped at once
      AppendItem it;
      it.stream = b;
      it.src_row = p.offset[b] + i;
      it.dst_row = s.AppendRow(i);
      p.append.push_back(it);
    }
  }
  // Embedding: rows per table (one table for div_val == 1).
  const int n_tables = static_cast<int>(emb_table_.size());
  p.emb_ids.assign(n_tables, {});
  p.emb_rows.assign(n_tables, {});
  for (int b = 0; b < p.batch; ++b) {
    for (int i = 0; i < segs[b].n_tokens; ++i) {
      const int32_t id = segs[b].tokens[i];
      const int t = n_tables == 1 ? 0 : ClusterOf(id, c_.ends.data(), c_.n_clusters);
      p.emb_ids[t].push_back(static_cast<int32_t>(id - (n_tables == 1 ? 0 : c_.ends[t])));
      p.emb_rows[t].push_back(p.offset[b] + i);
    }
  }
  for (int t = 0; t < n_tables; ++t) {
    if (!emb_proj_[t].empty()) p.max_emb_dim = std::max(p.max_emb_dim, static_cast<int>(emb_table_[t].cols));
  }
  // Scoring rows (TransformerXL::Score).
  for (int b = 0; b < p.batch; ++b) {
    const Stream& s = *p.streams[b];
    for (int i = 0; i < segs[b].n_tokens; ++i) {
      if (i == 0 && s.position() == 0) continue;  // the first token of a stream has no context
      p.targets.push_back(segs[b].tokens[i]);
      p.where.emplace_back(b, i);
      p.pred_stream.push_back(i == 0 ? b : -1);
      p.pred_row.push_back(i == 0 ? -1 : p.offset[b] + i - 1);
    }
  }
  p.n_pred = static_cast<int>(p.targets.size());
  const int64_t cap_floats = options_.output_chunk_floats > 0 ? options_.output_chunk_floats : kDefaultOutputChunkFloats;
  if (p.n_pred > 0) {
    p.tchunk = static_cast<int>(std::clamp<int64_t>(cap_floats / std::max(head_size_, max_tail_), 1, p.n_pred));
  }
  p.tail_rows.assign(c_.n_clusters + 1, {});
  p.tail_items.assign(c_.n_clusters + 1, {});
  for (int r = 0; r < p.n_pred; ++r) {
    const int32_t t = p.targets[r];
    const int cluster = ClusterOf(t, c_.ends.data(), c_.n_clusters);
    const int r0 = r / p.tchunk * p.tchunk;
    TargetItem it;
    it.out = r;
    if (cluster == 0) {
      it.logit_row = r - r0;
      it.col = t;
      p.head_items.push_back(it);
      continue;
    }
    std::vector<int32_t>& list = p.tail_rows[cluster];
    // Index among this chunk's rows of the cluster: rows before r0 belong to earlier chunks.
    const int before = static_cast<int>(std::lower_bound(list.begin(), list.end(), r0) - list.begin());
    it.logit_row = static_cast<int>(list.size()) - before;
    it.col = static_cast<int32_t>(t - c_.ends[cluster]);
    it.add_row = r - r0;
    list.push_back(r);
    p.tail_items[cluster].push_back(it);
  }
  for (int b = 0; b < p.batch; ++b) {
    const trams_cuda_segment& in = segs[b];
    if (in.token_logprobs != nullptr) {
      for (int r = 0; r < p.n_pred; ++r) {
        if (p.where[r].first != b) continue;
        p.full_stream.push_back(p.pred_stream[r]);
        p.full_row.push_back(p.pred_row[r]);
        p.full_dst.push_back(in.token_logprobs + static_cast<int64_t>(p.where[r].second) * c_.vocab);
      }
    }
    if (in.next_logprobs != nullptr) {
      p.full_stream.push_back(-1);
      p.full_row.push_back(p.offset[b] + in.n_tokens - 1);
      p.full_dst.push_back(in.next_logprobs);
    }
  }
  p.n_full = static_cast<int>(p.full_dst.size());
  if (p.n_full > 0) {
    p.fchunk = static_cast<int>(
        std::clamp<int64_t>(cap_floats / (c_.vocab + std::max(head_size_, max_tail_)), 1, p.n_full));
  }

  // 3. Device buffers: relative positions, workspace, metadata. Failing here changes nothing.
  TRAMS_CUDA_RETURN_IF_ERROR(EnsureRelTable(p.klen_max));
  const bool convert = dtype_ != DType::kF32;
  const int max_k = std::max({d, w, c_.d_inner, max_dim_, p.max_emb_dim});
  Workspace ws;
  {
    Carver sizing(nullptr);
    CarveBuffers(sizing, p, L, d, w, c_.d_inner, H, c_.d_head, c_.pre_lnorm, convert, max_k, head_size_, max_dim_,
                 max_tail_, c_.vocab, &ws);
    TRAMS_CUDA_RETURN_IF_ERROR(EnsureWorkspace(sizing.size()));
    Carver real(static_cast<char*>(workspace_));
    CarveBuffers(real, p, L, d, w, c_.d_inner, H, c_.d_head, c_.pre_lnorm, convert, max_k, head_size_, max_dim_,
                 max_tail_, c_.vocab, &ws);
  }
  float* const x_final = ws.x;  // two swaps per layer: the final hidden states end in ws.x
  auto hidden_of = [&](int stream, int64_t row) -> const float* {
    return stream >= 0 ? p.streams[stream]->last_hidden_ : x_final + row * d;
  };
  MetaBlob blob;
  std::vector<StreamLayerMeta> flat_metas;
  for (const auto& layer : p.metas) flat_metas.insert(flat_metas.end(), layer.begin(), layer.end());
  const int64_t o_metas = blob.Add(flat_metas);
  const int64_t o_append = blob.Add(p.append);
  std::vector<int64_t> o_emb_ids(n_tables), o_emb_rows(n_tables);
  for (int t = 0; t < n_tables; ++t) {
    o_emb_ids[t] = blob.Add(p.emb_ids[t]);
    o_emb_rows[t] = blob.Add(p.emb_rows[t]);
  }
  std::vector<const float*> pred_src(p.n_pred), full_src(p.n_full);
  for (int r = 0; r < p.n_pred; ++r) pred_src[r] = hidden_of(p.pred_stream[r], p.pred_row[r]);
  for (int r = 0; r < p.n_full; ++r) full_src[r] = hidden_of(p.full_stream[r], p.full_row[r]);
  const int64_t o_pred = blob.Add(pred_src);
  const int64_t o_head_items = blob.Add(p.head_items);
  std::vector<int64_t> o_tail_rows(c_.n_clusters + 1), o_tail_items(c_.n_clusters + 1);
  for (int i = 1; i <= c_.n_clusters; ++i) {
    o_tail_rows[i] = blob.Add(p.tail_rows[i]);
    o_tail_items[i] = blob.Add(p.tail_items[i]);
  }
  const int64_t o_full = blob.Add(full_src);
  TRAMS_CUDA_RETURN_IF_ERROR(EnsureMeta(blob.size()));
  ws.metas = MetaBlob::Ptr<const StreamLayerMeta>(meta_, o_metas);
  ws.append = MetaBlob::Ptr<const AppendItem>(meta_, o_append);
  for (int t = 0; t < n_tables; ++t) {
    ws.emb_ids.push_back(MetaBlob::Ptr<const int32_t>(meta_, o_emb_ids[t]));
    ws.emb_rows.push_back(MetaBlob::Ptr<const int32_t>(meta_, o_emb_rows[t]));
  }
  ws.pred_src = MetaBlob::Ptr<const float* const>(meta_, o_pred);
  ws.head_items = MetaBlob::Ptr<const TargetItem>(meta_, o_head_items);
  ws.tail_rows.assign(c_.n_clusters + 1, nullptr);
  ws.tail_items.assign(c_.n_clusters + 1, nullptr);
  for (int i = 1; i <= c_.n_clusters; ++i) {
    ws.tail_rows[i] = MetaBlob::Ptr<const int32_t>(meta_, o_tail_rows[i]);
    ws.tail_items[i] = MetaBlob::Ptr<const TargetItem>(meta_, o_tail_items[i]);
  }
  ws.full_src = MetaBlob::Ptr<const float* const>(meta_, o_full);

  // 4. Run. From here on a failure is a device error (INTERNAL); the streams' cursors have not moved.
  Status s = ops_->Upload(meta_, blob.data(), static_cast<size_t>(blob.size()));
  if (s.ok()) s = ops_->StartTimer();
  if (s.ok()) s = RunForward(p, ws);
  if (s.ok() && ws.x != x_final) s = Internal("forward: the final hidden states are not where the plan put them");
  if (s.ok() && p.n_full > 0) s = FullLogProbs(full_src, p.full_dst, ws);
  // The prediction state for the next segment: the last row of each stream (after scoring, which read
  // the previous one).
  for (int b = 0; b < p.batch && s.ok(); ++b) {
    s = ops_->CopyOnDevice(p.streams[b]->last_hidden_, x_final + (p.offset[b] + segs[b].n_tokens - 1) * int64_t{d},
                           sizeof(float) * d);
  }
  if (s.ok()) s = ops_->StopTimer();
  std::vector<float> lp(p.n_pred);
  std::vector<int32_t> selected, counts;
  if (s.ok() && p.n_pred > 0) s = ops_->Download(lp.data(), ws.lp, sizeof(float) * p.n_pred);
  if (s.ok() && p.selections) {
    selected.resize(static_cast<size_t>(L) * p.batch * H * p.topk_max);
    counts.resize(static_cast<size_t>(L) * p.batch * H);
    s = ops_->Download(selected.data(), ws.selected, selected.size() * sizeof(int32_t));
    if (s.ok()) s = ops_->Download(counts.data(), ws.counts, counts.size() * sizeof(int32_t));
  }
  if (s.ok()) s = ops_->Synchronize();
  if (s.ok()) s = ops_->ElapsedMs(&last_forward_ms_);
  if (!s.ok()) return s.Annotate("forward");

  // 5. Results and cursors.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int b = 0; b < p.batch; ++b) {
    const trams_cuda_segment& in = segs[b];
    if (in.logprob != nullptr) std::fill(in.logprob, in.logprob + in.n_tokens, nan);
    if (in.token_logprobs != nullptr && p.streams[b]->position() == 0) {
      std::fill(in.token_logprobs, in.token_logprobs + c_.vocab, nan);  // token 0 is not scored
    }
  }
  for (int r = 0; r < p.n_pred; ++r) {
    const trams_cuda_segment& in = segs[p.where[r].first];
    if (in.logprob != nullptr) in.logprob[p.where[r].second] = lp[r];
  }
  if (p.selections) {
    for (int b = 0; b < p.batch; ++b) {
      const trams_cuda_segment& in = segs[b];
      const int topk = p.streams[b]->settings().topk;
      for (int l = 0; l < L; ++l) {
        for (int h = 0; h < H; ++h) {
          const int64_t bh = (static_cast<int64_t>(l) * p.batch + b) * H + h;
          const int count = counts[bh];
          if (in.selection_counts != nullptr) in.selection_counts[l * H + h] = count;
          if (in.selections == nullptr) continue;
          for (int k = 0; k < count; ++k) {
            in.selections[(static_cast<int64_t>(l) * H + h) * topk + k] = selected[bh * p.topk_max + k];
          }
        }
      }
    }
  }
  for (int b = 0; b < p.batch; ++b) p.streams[b]->CommitAppend(segs[b].n_tokens);
  return Status::Ok();
}

Status Context::RunForward(Plan& p, Workspace& ws) {
  TRAMS_CUDA_RETURN_IF_ERROR(Embed(p, ws).Annotate("embedding"));
  for (int l = 0; l < c_.n_layer; ++l) {
    TRAMS_CUDA_RETURN_IF_ERROR(AttentionLayer(l, p, ws).Annotate("attention, layer " + std::to_string(l)));
    TRAMS_CUDA_RETURN_IF_ERROR(FeedForwardLayer(l, ws, p.rows).Annotate("feed-forward, layer " + std::to_string(l)));
  }
  return TargetLogProbs(p, ws).Annotate("output layer");
}

Status Context::Embed(const Plan& p, Workspace& ws) {
  const int d = c_.d_model;
  const float scale = std::sqrt(static_cast<float>(d));
  for (size_t t = 0; t < emb_table_.size(); ++t) {
    const int cnt = static_cast<int>(p.emb_ids[t].size());
    if (cnt == 0) continue;
    const DeviceMatrix& table = emb_table_[t];
    GatherArgs g;
    g.src = table.data;
    g.src_type = table.type;
    g.src_ld = table.cols;
    g.src_idx = ws.emb_ids[t];
    g.rows = cnt;
    if (emb_proj_[t].empty()) {
      g.dst = ws.x;
      g.dst_ld = d;
      g.dst_idx = ws.emb_rows[t];
      g.width = d;
      g.scale = scale;
      TRAMS_CUDA_RETURN_IF_ERROR(ops_->Gather(g));
      continue;
    }
    const int dim = static_cast<int>(table.cols);
    g.dst = ws.emb_gathered;
    g.dst_ld = dim;
    g.width = dim;
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->Gather(g));
    // proj is [d_model, dim]: x = e proj^T.
    TRAMS_CUDA_RETURN_IF_ERROR(Linear(ws.emb_gathered, cnt, dim, emb_proj_[t], false, ws.emb_projected, d, ws.convert));
    GatherArgs s;
    s.src = ws.emb_projected;
    s.src_ld = d;
    s.dst = ws.x;
    s.dst_ld = d;
    s.dst_idx = ws.emb_rows[t];
    s.rows = cnt;
    s.width = d;
    s.scale = scale;
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->Gather(s));
  }
  return Status::Ok();
}

Status Context::AttentionLayer(int l, const Plan& p, Workspace& ws) {
  const Layer& lw = layers_[l];
  const int d = c_.d_model, w = c_.width(), H = c_.n_head, dh = c_.d_head, B = p.batch;
  const int rows = static_cast<int>(p.rows);
  const float* in = ws.x;
  if (c_.pre_lnorm) {
    LayerNormArgs ln;
    ln.x = ws.x;
    ln.gamma = lw.attn_ln_g;
    ln.beta = lw.attn_ln_b;
    ln.out = ws.normed;
    ln.rows = rows;
    ln.d = d;
    ln.eps = c_.eps;
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->LayerNorm(ln));
    in = ws.normed;
  }
  TRAMS_CUDA_RETURN_IF_ERROR(Linear(in, rows, d, lw.qkv, false, ws.qkv, 3 * w, ws.convert));

  const StreamLayerMeta* metas = ws.metas + static_cast<int64_t>(l) * B;
  if (p.a_max > 0) {
    SelectArgs sel;
    sel.streams = metas;
    sel.batch = B;
    sel.n_head = H;
    sel.a_max = p.a_max;
    sel.topk_max = p.topk_max;
    sel.att_rows = ws.att_rows;
    if (p.selections) {
      sel.selected = ws.selected + static_cast<int64_t>(l) * B * H * p.topk_max;
      sel.counts = ws.counts + static_cast<int64_t>(l) * B * H;
    }
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->TramsSelect(sel));
  } else if (p.selections) {
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->Zero(ws.counts + static_cast<int64_t>(l) * B * H, sizeof(int32_t) * B * H));
  }

  AttnArgs at;
  at.streams = metas;
  at.batch = B;
  at.n_head = H;
  at.d_head = dh;
  at.n_max = p.n_max;
  at.klen_max = p.klen_max;
  at.a_max = p.a_max;
  at.qkv = ws.qkv;
  at.r_w_bias = lw.r_w_bias;
  at.r_r_bias = lw.r_r_bias;
  at.att_rows = ws.att_rows;
  at.q_w = ws.q_w;
  at.q_r = ws.q_r;
  at.k = ws.k;
  at.v = ws.v;
  at.ac = ws.ac;
  at.bd = ws.bd;
  at.o = ws.o;
  at.attn_vec = ws.attn_vec;
  at.scale = 1.0f / std::sqrt(static_cast<float>(dh));
  at.same_length = c_.same_length ? 1 : 0;
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->AttnGather(at));

  // Content term, per (head, stream): ac[i, j] = q_w[i] . k[j].
  GemmArgs g;
  g.a = ws.q_w;
  g.lda = dh;
  g.stride_a = static_cast<int64_t>(p.n_max) * dh;
  g.b = ws.k;
  g.ldb = dh;
  g.stride_b = static_cast<int64_t>(p.klen_max) * dh;
  g.trans_b = true;
  g.c = ws.ac;
  g.ldc = p.klen_max;
  g.stride_c = static_cast<int64_t>(p.n_max) * p.klen_max;
  g.m = p.n_max;
  g.n = p.klen_max;
  g.k = dh;
  g.batch = H * B;
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Gemm(g));
  // Position term, per head over all streams' queries: bd[i, dist] = q_r[i] . r_h(dist).
  GemmArgs gp;
  gp.a = ws.q_r;
  gp.lda = dh;
  gp.stride_a = static_cast<int64_t>(B) * p.n_max * dh;
  gp.b = rel_ + static_cast<int64_t>(l) * rel_rows_ * w;
  gp.ldb = w;
  gp.stride_b = dh;
  gp.trans_b = true;
  gp.c = ws.bd;
  gp.ldc = p.klen_max;
  gp.stride_c = static_cast<int64_t>(B) * p.n_max * p.klen_max;
  gp.m = B * p.n_max;
  gp.n = p.klen_max;
  gp.k = dh;
  gp.batch = H;
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Gemm(gp));
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->AttnSoftmax(at));
  // o[i] = sum_j prob[i, j] v[j].
  GemmArgs gv;
  gv.a = ws.ac;
  gv.lda = p.klen_max;
  gv.stride_a = static_cast<int64_t>(p.n_max) * p.klen_max;
  gv.b = ws.v;
  gv.ldb = dh;
  gv.stride_b = static_cast<int64_t>(p.klen_max) * dh;
  gv.trans_b = false;
  gv.c = ws.o;
  gv.ldc = dh;
  gv.stride_c = static_cast<int64_t>(p.n_max) * dh;
  gv.m = p.n_max;
  gv.n = dh;
  gv.k = p.klen_max;
  gv.batch = H * B;
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Gemm(gv));
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->AttnScatter(at));

  // The attention above has read the pools; now the segment's keys, values and scores enter them.
  if (!p.append.empty()) {
    AppendArgs ap;
    ap.streams = metas;
    ap.items = ws.append;
    ap.n_items = static_cast<int>(p.append.size());
    ap.qkv = ws.qkv;
    ap.n_head = H;
    ap.d_head = dh;
    ap.gram = lw.gram;
    ap.row_sum = lw.row_sum;
    ap.inv_sqrt_d_model = 1.0 / std::sqrt(static_cast<double>(d));
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->PoolAppend(ap));
  }

  TRAMS_CUDA_RETURN_IF_ERROR(Linear(ws.attn_vec, rows, w, lw.o_net, false, ws.tmp, d, ws.convert));
  LayerNormArgs ln;
  ln.x = ws.tmp;
  ln.residual = ws.x;
  ln.gamma = c_.pre_lnorm ? nullptr : lw.attn_ln_g;
  ln.beta = lw.attn_ln_b;
  ln.out = ws.x2;
  ln.rows = rows;
  ln.d = d;
  ln.eps = c_.eps;
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->LayerNorm(ln));
  std::swap(ws.x, ws.x2);
  return Status::Ok();
}

Status Context::FeedForwardLayer(int l, Workspace& ws, int64_t rows64) {
  const Layer& lw = layers_[l];
  const int d = c_.d_model, di = c_.d_inner, rows = static_cast<int>(rows64);
  const float* in = ws.x;
  if (c_.pre_lnorm) {
    LayerNormArgs ln;
    ln.x = ws.x;
    ln.gamma = lw.ff_ln_g;
    ln.beta = lw.ff_ln_b;
    ln.out = ws.normed;
    ln.rows = rows;
    ln.d = d;
    ln.eps = c_.eps;
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->LayerNorm(ln));
    in = ws.normed;
  }
  TRAMS_CUDA_RETURN_IF_ERROR(Linear(in, rows, d, lw.ff1_w, false, ws.inner, di, ws.convert));
  BiasReluArgs br;
  br.x = ws.inner;
  br.bias = lw.ff1_b;
  br.rows = rows;
  br.d = di;
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->BiasRelu(br));
  TRAMS_CUDA_RETURN_IF_ERROR(Linear(ws.inner, rows, di, lw.ff2_w, false, ws.tmp, d, ws.convert));
  LayerNormArgs ln;
  ln.x = ws.tmp;
  ln.bias = lw.ff2_b;
  ln.residual = ws.x;
  ln.gamma = c_.pre_lnorm ? nullptr : lw.ff_ln_g;
  ln.beta = lw.ff_ln_b;
  ln.out = ws.x2;
  ln.rows = rows;
  ln.d = d;
  ln.eps = c_.eps;
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->LayerNorm(ln));
  std::swap(ws.x, ws.x2);
  return Status::Ok();
}

Status Context::HeadLogProbs(const float* hidden, int rows, Workspace& ws) {
  const OutCluster& first = out_[0];
  const float* x = hidden;
  if (!first.proj.empty()) {
    TRAMS_CUDA_RETURN_IF_ERROR(Linear(hidden, rows, c_.d_model, first.proj, true, ws.proj, first.dim, ws.convert));
    x = ws.proj;
  }
  TRAMS_CUDA_RETURN_IF_ERROR(Linear(x, rows, first.dim, head_weight_, false, ws.head, head_size_, ws.convert));
  LogSoftmaxArgs ls;
  ls.x = ws.head;
  ls.ld = head_size_;
  ls.bias = head_bias_;
  ls.rows = rows;
  ls.n = static_cast<int>(head_size_);
  ls.n_out = static_cast<int>(head_size_);
  ls.out = ws.head;
  ls.out_ld = head_size_;
  return ops_->LogSoftmax(ls);
}

Status Context::TargetLogProbs(const Plan& p, Workspace& ws) {
  if (p.n_pred == 0) return Status::Ok();
  const int d = c_.d_model;
  GatherPtrArgs gp;
  gp.src_rows = ws.pred_src;
  gp.dst = ws.pred;
  gp.rows = p.n_pred;
  gp.width = d;
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->GatherPtrs(gp));
  size_t head_begin = 0;
  std::vector<size_t> tail_begin(c_.n_clusters + 1, 0);
  for (int r0 = 0; r0 < p.n_pred; r0 += p.tchunk) {
    const int r1 = std::min(p.n_pred, r0 + p.tchunk);
    TRAMS_CUDA_RETURN_IF_ERROR(HeadLogProbs(ws.pred + static_cast<int64_t>(r0) * d, r1 - r0, ws));
    size_t head_end = head_begin;
    while (head_end < p.head_items.size() && p.head_items[head_end].out < r1) ++head_end;
    if (head_end > head_begin) {
      TargetArgs t;
      t.x = ws.head;
      t.ld = head_size_;
      t.n = static_cast<int>(head_size_);
      t.items = ws.head_items + head_begin;
      t.n_items = static_cast<int>(head_end - head_begin);
      t.out = ws.lp;
      TRAMS_CUDA_RETURN_IF_ERROR(ops_->Targets(t));
    }
    head_begin = head_end;
    for (int i = 1; i <= c_.n_clusters; ++i) {
      const std::vector<int32_t>& list = p.tail_rows[i];
      size_t end = tail_begin[i];
      while (end < list.size() && list[end] < r1) ++end;
      const int cnt = static_cast<int>(end - tail_begin[i]);
      if (cnt == 0) continue;
      const OutCluster& oc = out_[i];
      GatherArgs g;
      g.src = ws.pred;
      g.src_ld = d;
      g.src_idx = ws.tail_rows[i] + tail_begin[i];
      g.dst = ws.tail_hidden;
      g.dst_ld = d;
      g.rows = cnt;
      g.width = d;
      TRAMS_CUDA_RETURN_IF_ERROR(ops_->Gather(g));
      const float* x = ws.tail_hidden;
      if (!oc.proj.empty()) {
        TRAMS_CUDA_RETURN_IF_ERROR(Linear(ws.tail_hidden, cnt, d, oc.proj, true, ws.proj, oc.dim, ws.convert));
        x = ws.proj;
      }
      TRAMS_CUDA_RETURN_IF_ERROR(Linear(x, cnt, oc.dim, oc.weight, false, ws.tail_logits, oc.size, ws.convert));
      TargetArgs t;
      t.x = ws.tail_logits;
      t.ld = oc.size;
      t.bias = oc.bias;
      t.n = static_cast<int>(oc.size);
      t.normalize = 1;
      t.items = ws.tail_items[i] + tail_begin[i];
      t.n_items = cnt;
      t.add = ws.head + HeadClusterColumn(c_.ends.data(), i);
      t.add_ld = head_size_;
      t.out = ws.lp;
      TRAMS_CUDA_RETURN_IF_ERROR(ops_->Targets(t));
      tail_begin[i] = end;
    }
  }
  return Status::Ok();
}

Status Context::FullLogProbs(const std::vector<const float*>& src, const std::vector<float*>& dst, Workspace& ws) {
  const int d = c_.d_model;
  const int n = static_cast<int>(src.size());
  const int64_t vocab = c_.vocab;
  int chunk = 1;
  {
    const int64_t cap = options_.output_chunk_floats > 0 ? options_.output_chunk_floats : kDefaultOutputChunkFloats;
    chunk = static_cast<int>(std::clamp<int64_t>(cap / (vocab + std::max(head_size_, max_tail_)), 1, n));
  }
  std::vector<float> staging;
  for (int f0 = 0; f0 < n; f0 += chunk) {
    const int cnt = std::min(chunk, n - f0);
    GatherPtrArgs gp;
    gp.src_rows = ws.full_src + f0;
    gp.dst = ws.full_hidden;
    gp.rows = cnt;
    gp.width = d;
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->GatherPtrs(gp));
    TRAMS_CUDA_RETURN_IF_ERROR(HeadLogProbs(ws.full_hidden, cnt, ws));
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->Copy2D(ws.full, sizeof(float) * vocab, ws.head, sizeof(float) * head_size_,
                                            sizeof(float) * c_.ends[1], cnt));
    for (int i = 1; i <= c_.n_clusters; ++i) {
      const OutCluster& oc = out_[i];
      const float* x = ws.full_hidden;
      if (!oc.proj.empty()) {
        TRAMS_CUDA_RETURN_IF_ERROR(Linear(ws.full_hidden, cnt, d, oc.proj, true, ws.proj, oc.dim, ws.convert));
        x = ws.proj;
      }
      TRAMS_CUDA_RETURN_IF_ERROR(Linear(x, cnt, oc.dim, oc.weight, false, ws.tail_logits, oc.size, ws.convert));
      LogSoftmaxArgs ls;
      ls.x = ws.tail_logits;
      ls.ld = oc.size;
      ls.bias = oc.bias;
      ls.rows = cnt;
      ls.n = static_cast<int>(oc.size);
      ls.n_out = static_cast<int>(oc.size);
      ls.add = ws.head + HeadClusterColumn(c_.ends.data(), i);
      ls.add_ld = head_size_;
      ls.out = ws.full + c_.ends[i];
      ls.out_ld = vocab;
      TRAMS_CUDA_RETURN_IF_ERROR(ops_->LogSoftmax(ls));
    }
    staging.resize(static_cast<size_t>(cnt) * vocab);
    TRAMS_CUDA_RETURN_IF_ERROR(ops_->Download(staging.data(), ws.full, staging.size() * sizeof(float)));
    for (int r = 0; r < cnt; ++r) {
      std::memcpy(dst[f0 + r], staging.data() + static_cast<size_t>(r) * vocab, sizeof(float) * vocab);
    }
  }
  return Status::Ok();
}

Status Context::NextLogProbs(const Stream* stream, float* out) {
  std::lock_guard<std::mutex> lock(mu_);
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Activate());
  TRAMS_CUDA_RETURN_IF_ERROR(CheckStream(stream));
  if (out == nullptr) return InvalidArgument("no output buffer");
  if (stream->position() == 0) {
    return FailedPrecondition("the stream is empty: give it at least one token before asking what follows");
  }
  Plan p;
  p.n_full = 1;
  const int64_t cap = options_.output_chunk_floats > 0 ? options_.output_chunk_floats : kDefaultOutputChunkFloats;
  p.fchunk = static_cast<int>(std::clamp<int64_t>(cap / (c_.vocab + std::max(head_size_, max_tail_)), 1, 1));
  const bool convert = dtype_ != DType::kF32;
  const int max_k = std::max({c_.d_model, c_.width(), c_.d_inner, max_dim_});
  Workspace ws;
  Carver sizing(nullptr);
  CarveBuffers(sizing, p, c_.n_layer, c_.d_model, c_.width(), c_.d_inner, c_.n_head, c_.d_head, c_.pre_lnorm,
               convert, max_k, head_size_, max_dim_, max_tail_, c_.vocab, &ws);
  TRAMS_CUDA_RETURN_IF_ERROR(EnsureWorkspace(sizing.size()));
  Carver real(static_cast<char*>(workspace_));
  CarveBuffers(real, p, c_.n_layer, c_.d_model, c_.width(), c_.d_inner, c_.n_head, c_.d_head, c_.pre_lnorm, convert,
               max_k, head_size_, max_dim_, max_tail_, c_.vocab, &ws);
  const std::vector<const float*> src = {stream->last_hidden_};
  MetaBlob blob;
  const int64_t o_full = blob.Add(src);
  TRAMS_CUDA_RETURN_IF_ERROR(EnsureMeta(blob.size()));
  ws.full_src = MetaBlob::Ptr<const float* const>(meta_, o_full);
  Status s = ops_->Upload(meta_, blob.data(), static_cast<size_t>(blob.size()));
  if (s.ok()) s = FullLogProbs(src, {out}, ws);
  return s.Annotate("next-token distribution");
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
  const bool convert = dtype_ != DType::kF32;
  const int max_k = std::max({d, w, c_.d_inner, max_dim_});
  Workspace ws;
  Carver sizing(nullptr);
  CarveBuffers(sizing, p, c_.n_layer, d, w, c_.d_inner, H, c_.d_head, c_.pre_lnorm, convert, max_k, head_size_,
               max_dim_, max_tail_, c_.vocab, &ws);
  TRAMS_CUDA_RETURN_IF_ERROR(EnsureWorkspace(sizing.size()));
  Carver real(static_cast<char*>(workspace_));
  CarveBuffers(real, p, c_.n_layer, d, w, c_.d_inner, H, c_.d_head, c_.pre_lnorm, convert, max_k, head_size_,
               max_dim_, max_tail_, c_.vocab, &ws);
  std::vector<StreamLayerMeta> metas(c_.n_layer);
  for (int l = 0; l < c_.n_layer; ++l) {
    metas[l].keys = stream->keys_[l];
    metas[l].values = stream->values_[l];
    metas[l].scores = stream->scores_[l];
    metas[l].metric = stream->settings().metric;
    metas[l].mem_len = m;
  }
  const std::vector<AppendItem> item(1);  // packed row 0 -> ring row 0
  const std::vector<int32_t> zeros(static_cast<size_t>(m), 0);
  MetaBlob blob;
  const int64_t o_metas = blob.Add(metas), o_item = blob.Add(item), o_zeros = blob.Add(zeros);
  TRAMS_CUDA_RETURN_IF_ERROR(EnsureMeta(blob.size()));
  const StreamLayerMeta* dev_metas = MetaBlob::Ptr<const StreamLayerMeta>(meta_, o_metas);
  const AppendItem* dev_item = MetaBlob::Ptr<const AppendItem>(meta_, o_item);
  const int32_t* dev_zeros = MetaBlob::Ptr<const int32_t>(meta_, o_zeros);

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
    ap.n_items = 1;
    ap.qkv = ws.zero_qkv;
    ap.n_head = H;
    ap.d_head = c_.d_head;
    ap.gram = lw.gram;
    ap.row_sum = lw.row_sum;
    ap.inv_sqrt_d_model = 1.0 / std::sqrt(static_cast<double>(d));
    if (s.ok()) s = ops_->PoolAppend(ap);
    if (m == 1) continue;
    // Ring row 0 to rows 1..M-1.
    GatherArgs g;
    g.src_idx = dev_zeros;
    g.rows = m - 1;
    for (int part = 0; part < 3 && s.ok(); ++part) {
      float* base = part == 0 ? stream->keys_[l] : part == 1 ? stream->values_[l] : stream->scores_[l];
      if (base == nullptr) continue;
      const int width = part == 2 ? H : w;
      g.src = base;
      g.src_ld = width;
      g.dst = base + width;
      g.dst_ld = width;
      g.width = width;
      s = ops_->Gather(g);
    }
  }
  if (s.ok()) s = ops_->Synchronize();
  if (!s.ok()) return s.Annotate("filling the pool with zero states");
  stream->start_ = 0;
  stream->size_ = m;
  return Status::Ok();
}

}  // namespace trams::cuda
