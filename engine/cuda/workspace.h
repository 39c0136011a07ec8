// Internal to the context's .cc files (forward.cc, output.cc, stream_state.cc): the host-side plan of one
// call, the workspace pointers carved for it, and the two helpers that lay out device memory (a bump
// carver over the workspace and one metadata block uploaded per call).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "engine/cuda/context.h"

namespace trams::cuda {

inline constexpr int64_t kWorkspaceAlign = 256;
inline int64_t WorkspaceAlignUp(int64_t v) { return (v + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

class Carver {
 public:
  explicit Carver(char* base) : base_(base) {}
  template <class T>
  T* Take(int64_t count) {
    off_ = WorkspaceAlignUp(off_);
    T* p = base_ == nullptr ? nullptr : reinterpret_cast<T*>(base_ + off_);
    off_ += std::max<int64_t>(count, 0) * static_cast<int64_t>(sizeof(T));
    return p;
  }
  int64_t size() const { return WorkspaceAlignUp(off_); }

 private:
  char* base_;
  int64_t off_ = 0;
};

// Host arrays bound for the device in one upload; Ptr() is valid once the base is known.
class MetaBlob {
 public:
  template <class T>
  int64_t Add(const std::vector<T>& v) {
    const int64_t at = WorkspaceAlignUp(used_);
    used_ = at + static_cast<int64_t>(v.size() * sizeof(T));
    bytes_.resize(static_cast<size_t>(std::max(used_, kWorkspaceAlign)));
    if (!v.empty()) std::memcpy(bytes_.data() + at, v.data(), v.size() * sizeof(T));
    return at;
  }
  // Never less than one alignment unit, and data() always holds size() bytes (the upload reads them all).
  int64_t size() const { return static_cast<int64_t>(bytes_.size()); }
  const char* data() const { return bytes_.data(); }
  template <class T>
  static T* Ptr(void* base, int64_t offset) {
    return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
  }

 private:
  int64_t used_ = 0;
  std::vector<char> bytes_ = std::vector<char>(static_cast<size_t>(kWorkspaceAlign));
};

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
  float* selected_scores = nullptr;
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

}  // namespace trams::cuda
