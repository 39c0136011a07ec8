// The forward of the CUDA backend, step by step as TransformerXL::Forward (engine/transformer_xl.cc):
// check, plan (rows, pools, selections, output rows; all on the host), size the workspace, upload one
// block of metadata, then embedding -> per layer (attention with TRAMS selection, pool append,
// feed-forward) -> adaptive log-softmax (output.cc). Nothing changes a stream before the plan fits;
// cursors move only once everything has run.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <unordered_set>

#include "engine/cuda/log_softmax.cuh"
#include "engine/cuda/workspace.h"
#include "engine/forward_plan.h"
#include "engine/settings_rules.h"

namespace trams::cuda {

// Every buffer a call may use, sized from the plan (zero-sized buffers cost nothing). With a null base the
// carver only measures.
void Context::CarveWorkspace(Carver& cv, const Plan& p, Workspace* ws) const {
  const int d = c_.d_model, w = c_.width(), d_inner = c_.d_inner, n_head = c_.n_head, d_head = c_.d_head;
  const int n_layer = c_.n_layer;
  const bool convert = dtype_ != DType::kF32;
  const int max_k = std::max({d, w, d_inner, max_dim_, p.max_emb_dim});
  const int64_t head_size = head_size_, max_dim = max_dim_, max_tail = max_tail_, vocab = c_.vocab;
  const bool pre_lnorm = c_.pre_lnorm;
  const int64_t rows = p.rows, hb = static_cast<int64_t>(n_head) * p.batch;
  ws->x = cv.Take<float>(rows * d);
  ws->x2 = cv.Take<float>(rows * d);
  ws->tmp = cv.Take<float>(rows * d);
  ws->normed = cv.Take<float>(pre_lnorm ? rows * d : 0);
  ws->qkv = cv.Take<float>(rows * 3 * w);
  ws->attn_vec = cv.Take<float>(rows * w);
  ws->inner = cv.Take<float>(rows * d_inner);
  ws->emb_gathered = cv.Take<float>(rows * p.max_emb_dim);
  ws->emb_projected = cv.Take<float>(p.max_emb_dim > 0 ? rows * d : 0);
  ws->q_w = cv.Take<float>(hb * p.n_max * d_head);
  ws->q_r = cv.Take<float>(hb * p.n_max * d_head);
  ws->k = cv.Take<float>(hb * p.klen_max * d_head);
  ws->v = cv.Take<float>(hb * p.klen_max * d_head);
  ws->ac = cv.Take<float>(hb * p.n_max * p.klen_max);
  ws->bd = cv.Take<float>(hb * p.n_max * p.klen_max);
  ws->o = cv.Take<float>(hb * p.n_max * d_head);
  ws->att_rows = cv.Take<int32_t>(hb * std::max(1, p.a_max));
  ws->selected = cv.Take<int32_t>(p.selections ? n_layer * hb * p.topk_max : 0);
  ws->counts = cv.Take<int32_t>(p.selections ? n_layer * hb : 0);
  ws->selected_scores = cv.Take<float>(p.selections ? n_layer * hb * p.topk_max : 0);
  ws->pred = cv.Take<float>(static_cast<int64_t>(p.n_pred) * d);
  ws->lp = cv.Take<float>(p.n_pred);
  const int64_t out_rows = std::max(p.tchunk, p.fchunk);
  ws->head = cv.Take<float>(out_rows * head_size);
  ws->proj = cv.Take<float>(out_rows * max_dim);
  ws->tail_hidden = cv.Take<float>(static_cast<int64_t>(p.tchunk) * d);
  ws->tail_logits = cv.Take<float>(out_rows * max_tail);
  ws->full_hidden = cv.Take<float>(static_cast<int64_t>(p.fchunk) * d);
  ws->full = cv.Take<float>(static_cast<int64_t>(p.fchunk) * vocab);
  ws->zero_row = cv.Take<float>(p.fill_rows * d);
  ws->zero_normed = cv.Take<float>(p.fill_rows * d);
  ws->zero_qkv = cv.Take<float>(p.fill_rows * 3 * w);
  if (convert) {
    const int64_t conv_rows = std::max<int64_t>({rows, out_rows, p.fill_rows, 1});
    ws->convert = cv.Take<uint16_t>(conv_rows * max_k);
  }
}

int64_t Context::OutputChunkFloats() const {
  return options_.output_chunk_floats > 0 ? options_.output_chunk_floats : int64_t{32} << 20;
}

Status Context::PrepareWorkspace(const Plan& p, Workspace* ws) {
  Carver sizing(nullptr);
  CarveWorkspace(sizing, p, ws);
  TRAMS_CUDA_RETURN_IF_ERROR(EnsureWorkspace(sizing.size()));
  Carver real(static_cast<char*>(workspace_));
  CarveWorkspace(real, p, ws);
  return Status::Ok();
}

Status Context::Forward(const trams_cuda_segment* segs, int n_segments) {
  std::lock_guard<std::mutex> lock(mu_);
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->Activate());
  if (segs == nullptr || n_segments <= 0) return InvalidArgument(engine::kEmptyBatchMessage);

  // 1. Check everything before anything changes: CheckBatch's rules and messages (engine/settings_rules.h),
  // plus the ABI's own (the stream is this context's).
  std::unordered_set<const Stream*> seen;
  for (int b = 0; b < n_segments; ++b) {
    const trams_cuda_segment& in = segs[b];
    std::string error = engine::EntryStreamError(b, in.stream != nullptr, false);
    if (!error.empty()) return InvalidArgument(error);
    const Stream* s = reinterpret_cast<const Stream*>(in.stream);
    if (s->owner_ != this) return InvalidArgument("batch entry " + std::to_string(b) + " belongs to another context");
    error = engine::EntryStreamError(b, true, !seen.insert(s).second);
    if (error.empty()) error = engine::EntryTokensError(b, in.tokens, in.n_tokens, c_.vocab);
    if (!error.empty()) return InvalidArgument(error);
  }

  // 2. Plan on the host: rows, attended memory, selecting layers, pool appends, scored tokens
  // (engine/forward_plan.h, as TransformerXL::Forward), then what only the device needs.
  const int d = c_.d_model, H = c_.n_head, L = c_.n_layer;
  std::vector<engine::PlanStream> plan_in(n_segments);
  for (int b = 0; b < n_segments; ++b) {
    const Stream& s = *reinterpret_cast<const Stream*>(segs[b].stream);
    const StreamSettings& st = s.settings();
    engine::PlanStream& ps = plan_in[b];
    ps.start = s.start_;
    ps.size = s.size_;
    ps.capacity = st.mem_len;
    ps.position = s.position_;
    ps.attend_len = st.attend_len();
    ps.topk = st.topk;
    ps.remain = st.remain;
    ps.selects_on_layer = st.selects_on_layer;
    ps.n = segs[b].n_tokens;
    ps.commit = segs[b].provisional == 0;
  }
  const engine::ForwardPlan fp = engine::PlanForward(plan_in, L);
  if (fp.rows > INT32_MAX / 4) return InvalidArgument("batch too large");
  Plan p;
  p.batch = n_segments;
  p.rows = fp.rows;
  p.n_max = fp.n_max;
  p.a_max = fp.a_max;
  p.klen_max = fp.klen_max;
  p.topk_max = std::max(p.topk_max, fp.topk_max);
  for (int b = 0; b < n_segments; ++b) {
    const trams_cuda_segment& in = segs[b];
    p.streams.push_back(reinterpret_cast<Stream*>(in.stream));
    p.offset.push_back(static_cast<int>(fp.offset[b]));
    p.selections = p.selections || in.selections != nullptr || in.selection_scores != nullptr ||
                   in.selection_counts != nullptr;
  }
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
      m.a = fp.attended[b];
      m.window = st.attend_len();
      m.start = s.start_;
      m.size = s.size_;
      m.mem_len = st.mem_len;
      m.selects = fp.Selects(l, b) ? 1 : 0;
      m.topk = st.topk;
      m.remain = st.remain;
      m.metric = st.metric;
      m.pool_dtype = pool_dtype_;
    }
  }
  for (const engine::PlanAppend& a : fp.append) {
    AppendItem it;
    it.stream = a.stream;
    it.src_row = static_cast<int32_t>(a.src_row);
    it.dst_row = a.ring_row;
    p.append.push_back(it);
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
  // Scoring rows (every token but a stream's first, from the plan).
  for (const engine::PlanScore& sc : fp.scored) {
    p.targets.push_back(segs[sc.stream].tokens[sc.token]);
    p.where.emplace_back(sc.stream, sc.token);
    p.pred_stream.push_back(sc.pred_row < 0 ? sc.stream : -1);
    p.pred_row.push_back(sc.pred_row);
  }
  p.n_pred = static_cast<int>(p.targets.size());
  const int64_t cap_floats = OutputChunkFloats();
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
  Workspace ws;
  TRAMS_CUDA_RETURN_IF_ERROR(PrepareWorkspace(p, &ws));
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

  // Streams in a transaction save the live rows this forward overwrites (StreamState::SaveRowsBeforeAppend).
  for (int b = 0; b < p.batch; ++b) {
    if (segs[b].provisional) continue;
    TRAMS_CUDA_RETURN_IF_ERROR(SaveRowsBeforeAppend(*p.streams[b], segs[b].n_tokens));
  }

  // 4. Run. From here on a failure is a device error (INTERNAL); the streams' cursors have not moved.
  Status s = ops_->Upload(meta_, blob.data(), static_cast<size_t>(blob.size()));
  if (s.ok()) s = ops_->StartTimer();
  if (s.ok()) s = RunForward(p, ws);
  if (s.ok() && ws.x != x_final) s = Internal("forward: the final hidden states are not where the plan put them");
  if (s.ok() && p.n_full > 0) s = FullLogProbs(full_src, p.full_dst, ws);
  // The prediction state for the next segment: the last row of each stream (after scoring, which read
  // the previous one).
  for (int b = 0; b < p.batch && s.ok(); ++b) {
    if (segs[b].provisional) continue;
    s = ops_->CopyOnDevice(p.streams[b]->last_hidden_, x_final + (p.offset[b] + segs[b].n_tokens - 1) * int64_t{d},
                           sizeof(float) * d);
  }
  if (s.ok()) s = ops_->StopTimer();
  std::vector<float> lp(p.n_pred);
  std::vector<int32_t> selected, counts;
  std::vector<float> selected_scores;
  if (s.ok() && p.n_pred > 0) s = ops_->Download(lp.data(), ws.lp, sizeof(float) * p.n_pred);
  if (s.ok() && p.selections) {
    selected.resize(static_cast<size_t>(L) * p.batch * H * p.topk_max);
    counts.resize(static_cast<size_t>(L) * p.batch * H);
    selected_scores.resize(selected.size());
    s = ops_->Download(selected.data(), ws.selected, selected.size() * sizeof(int32_t));
    if (s.ok()) s = ops_->Download(selected_scores.data(), ws.selected_scores, selected_scores.size() * sizeof(float));
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
          for (int k = 0; k < count; ++k) {
            const int64_t at = (static_cast<int64_t>(l) * H + h) * topk + k;
            if (in.selections != nullptr) in.selections[at] = selected[bh * p.topk_max + k];
            if (in.selection_scores != nullptr) in.selection_scores[at] = selected_scores[bh * p.topk_max + k];
          }
        }
      }
    }
  }
  for (int b = 0; b < p.batch; ++b) {
    if (!segs[b].provisional) p.streams[b]->CommitAppend(segs[b].n_tokens);
  }
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

// Pre-LN layers read LayerNorm(x) (into ws.normed); post-LN layers read x itself.
Status Context::PreNorm(const float* gamma, const float* beta, int rows, Workspace& ws, const float** in) {
  if (!c_.pre_lnorm) return Status::Ok();
  LayerNormArgs ln;
  ln.x = ws.x;
  ln.gamma = gamma;
  ln.beta = beta;
  ln.out = ws.normed;
  ln.rows = rows;
  ln.d = c_.d_model;
  ln.eps = c_.eps;
  TRAMS_CUDA_RETURN_IF_ERROR(ops_->LayerNorm(ln));
  *in = ws.normed;
  return Status::Ok();
}

Status Context::AttentionLayer(int l, const Plan& p, Workspace& ws) {
  const Layer& lw = layers_[l];
  const int d = c_.d_model, w = c_.width(), H = c_.n_head, dh = c_.d_head, B = p.batch;
  const int rows = static_cast<int>(p.rows);
  const float* in = ws.x;
  TRAMS_CUDA_RETURN_IF_ERROR(PreNorm(lw.attn_ln_g, lw.attn_ln_b, rows, ws, &in));
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
      sel.selected_scores = ws.selected_scores + static_cast<int64_t>(l) * B * H * p.topk_max;
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
  TRAMS_CUDA_RETURN_IF_ERROR(PreNorm(lw.ff_ln_g, lw.ff_ln_b, rows, ws, &in));
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

}  // namespace trams::cuda
