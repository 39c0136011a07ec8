// The adaptive log-softmax on the device (OutputLayer in engine/output_layer.cc): head log-probs, the
// log-prob of each scored token (head, or head + its tail cluster), and full distributions in row chunks
// so that the logits held at once stay under options.output_chunk_floats.
#include <algorithm>
#include <cstring>

#include "engine/cuda/log_softmax.cuh"
#include "engine/cuda/workspace.h"

namespace trams::cuda {

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
    const int64_t cap = OutputChunkFloats();
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
  p.fchunk = 1;
  Workspace ws;
  TRAMS_CUDA_RETURN_IF_ERROR(PrepareWorkspace(p, &ws));
  const std::vector<const float*> src = {stream->last_hidden_};
  MetaBlob blob;
  const int64_t o_full = blob.Add(src);
  TRAMS_CUDA_RETURN_IF_ERROR(EnsureMeta(blob.size()));
  ws.full_src = MetaBlob::Ptr<const float* const>(meta_, o_full);
  Status s = ops_->Upload(meta_, blob.data(), static_cast<size_t>(blob.size()));
  if (s.ok()) s = FullLogProbs(src, {out}, ws);
  return s.Annotate("next-token distribution");
}

}  // namespace trams::cuda
