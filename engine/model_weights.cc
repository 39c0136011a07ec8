#include "engine/model_weights.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/model_files.h"
#include "engine/safetensors.h"
#include "engine/status_macros.h"

namespace trams::engine {

Matrix Matrix::RowRange(int64_t begin, int64_t end) const {
  Matrix m = *this;
  m.data = data + begin * cols;
  m.rows = end - begin;
  return m;
}

namespace {

// Index of the first NaN or infinity in `v`, or -1. The common all-finite case is one branch-free
// (vectorised) pass over the exponent bits, in blocks so that a bad value is found without a second
// pass over the whole tensor.
int64_t FirstNonFinite(const std::vector<float>& v) {
  constexpr uint32_t kExponent = 0x7f800000u;
  constexpr size_t kBlock = 4096;
  for (size_t start = 0; start < v.size(); start += kBlock) {
    const size_t end = std::min(v.size(), start + kBlock);
    uint32_t bad = 0;
    for (size_t i = start; i < end; ++i) bad |= (std::bit_cast<uint32_t>(v[i]) & kExponent) == kExponent;
    if (bad == 0) continue;
    for (size_t i = start; i < end; ++i) {
      if (!std::isfinite(v[i])) return static_cast<int64_t>(i);
    }
  }
  return -1;
}

// "element 70 ([2, 6] of shape [64, 32]) is nan".
std::string DescribeElement(int64_t index, const std::vector<int64_t>& shape, float value) {
  std::vector<int64_t> at(shape.size());
  int64_t rest = index;
  for (size_t k = shape.size(); k-- > 0;) {
    at[k] = rest % shape[k];
    rest /= shape[k];
  }
  return absl::StrCat("element ", index, " ([", absl::StrJoin(at, ", "), "] of shape [", absl::StrJoin(shape, ", "),
                      "]) is ", std::isnan(value) ? "nan" : (value > 0 ? "inf" : "-inf"));
}

class TensorReader {
 public:
  explicit TensorReader(const SafetensorsFile& file) : file_(file) {}

  bool Has(const std::string& name) const { return file_.Find(name) != nullptr; }

  // Reads `name`, which must have exactly `shape` (1-D shapes are returned as [1, n]).
  absl::StatusOr<Matrix> Read(const std::string& name, std::vector<int64_t> shape) const {
    const TensorInfo* t = file_.Find(name);
    if (t == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(file_.path(), ": missing tensor '", name, "' of shape [",
                                                     absl::StrJoin(shape, ", "), "]"));
    }
    if (t->shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(file_.path(), ": tensor '", name, "' has shape [",
                                                     absl::StrJoin(t->shape, ", "), "], the config calls for [",
                                                     absl::StrJoin(shape, ", "), "]"));
    }
    auto storage = std::make_shared<std::vector<float>>(static_cast<size_t>(t->numel()));
    absl::Status s = CopyToF32(*t, absl::MakeSpan(*storage));
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(file_.path(), ": tensor '", name, "': ", s.message()));
    // NaN or infinite weights load fine and then serve garbage: refuse them here, once.
    if (const int64_t bad = FirstNonFinite(*storage); bad >= 0) {
      return absl::InvalidArgumentError(absl::StrCat(file_.path(), ": tensor '", name, "': ",
                                                     DescribeElement(bad, t->shape, (*storage)[bad])));
    }
    Matrix m;
    m.data = storage->data();
    m.storage = std::move(storage);
    m.rows = shape.size() == 2 ? shape[0] : 1;
    m.cols = shape.back();
    return m;
  }

 private:
  const SafetensorsFile& file_;
};

absl::Status LoadLayer(const ModelConfig& c, const TensorReader& r, int l, LayerWeights* w) {
  const std::string p = absl::StrCat("transformer.layers.", l, ".");
  const int64_t d = c.d_model, hd = c.attn_width();
  ASSIGN_OR_RETURN(w->qkv, r.Read(p + "dec_attn.qkv_net.weight", {3 * hd, d}));
  ASSIGN_OR_RETURN(w->r_net, r.Read(p + "dec_attn.r_net.weight", {hd, d}));
  ASSIGN_OR_RETURN(w->o_net, r.Read(p + "dec_attn.o_net.weight", {d, hd}));
  ASSIGN_OR_RETURN(w->attn_ln_g, r.Read(p + "dec_attn.layer_norm.weight", {d}));
  ASSIGN_OR_RETURN(w->attn_ln_b, r.Read(p + "dec_attn.layer_norm.bias", {d}));
  ASSIGN_OR_RETURN(w->ff1_w, r.Read(p + "pos_ff.CoreNet.0.weight", {c.d_inner, d}));
  ASSIGN_OR_RETURN(w->ff1_b, r.Read(p + "pos_ff.CoreNet.0.bias", {c.d_inner}));
  ASSIGN_OR_RETURN(w->ff2_w, r.Read(p + "pos_ff.CoreNet.3.weight", {d, c.d_inner}));
  ASSIGN_OR_RETURN(w->ff2_b, r.Read(p + "pos_ff.CoreNet.3.bias", {d}));
  ASSIGN_OR_RETURN(w->ff_ln_g, r.Read(p + "pos_ff.layer_norm.weight", {d}));
  ASSIGN_OR_RETURN(w->ff_ln_b, r.Read(p + "pos_ff.layer_norm.bias", {d}));
  if (c.untie_r) {
    ASSIGN_OR_RETURN(w->r_w_bias, r.Read(p + "dec_attn.r_w_bias", {c.n_head, c.d_head}));
    ASSIGN_OR_RETURN(w->r_r_bias, r.Read(p + "dec_attn.r_r_bias", {c.n_head, c.d_head}));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelWeights> LoadModelWeights(const ModelConfig& c, const SafetensorsFile& file) {
  RETURN_IF_ERROR(c.Validate());
  TensorReader r(file);
  ModelWeights w;
  w.config = c;
  const std::vector<int64_t> ends = c.cutoff_ends();
  const int n_clusters = c.n_clusters();
  const int64_t d = c.d_model;

  // Adaptive embedding: with div_val == 1 one table covers the whole vocabulary.
  const int n_emb = c.div_val == 1 ? 1 : n_clusters + 1;
  for (int i = 0; i < n_emb; ++i) {
    EmbeddingCluster e;
    const int64_t ids = c.div_val == 1 ? c.vocab_size : ends[i + 1] - ends[i];
    const int dim = c.cluster_dim(i);
    ASSIGN_OR_RETURN(e.table, r.Read(absl::StrCat("transformer.word_emb.emb_layers.", i, ".weight"), {ids, dim}));
    if (c.div_val != 1 || dim != d) {
      ASSIGN_OR_RETURN(e.proj, r.Read(absl::StrCat("transformer.word_emb.emb_projs.", i), {d, dim}));
    }
    w.embedding.push_back(std::move(e));
  }

  Matrix shared_rw, shared_rr;
  if (!c.untie_r) {
    ASSIGN_OR_RETURN(shared_rw, r.Read("transformer.r_w_bias", {c.n_head, c.d_head}));
    ASSIGN_OR_RETURN(shared_rr, r.Read("transformer.r_r_bias", {c.n_head, c.d_head}));
  }
  w.layers.resize(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) {
    RETURN_IF_ERROR(LoadLayer(c, r, l, &w.layers[l]));
    if (!c.untie_r) {
      w.layers[l].r_w_bias = shared_rw;
      w.layers[l].r_r_bias = shared_rr;
    }
  }

  // Output layer, mirroring HF ProjectedAdaptiveLogSoftmax and TransfoXLLMHeadModel.tie_weights.
  Matrix full_weight, full_bias;
  if (c.div_val == 1) {
    if (c.tie_word_embeddings) {
      full_weight = w.embedding[0].table;
    } else {
      ASSIGN_OR_RETURN(full_weight, r.Read("crit.out_layers.0.weight", {c.vocab_size, c.d_embed}));
    }
    ASSIGN_OR_RETURN(full_bias, r.Read("crit.out_layers.0.bias", {c.vocab_size}));
  }
  for (int i = 0; i <= n_clusters; ++i) {
    OutputCluster o;
    const int dim = c.cluster_dim(c.div_val == 1 ? 0 : i);
    if (c.div_val == 1) {
      o.weight = full_weight.RowRange(ends[i], ends[i + 1]);
      o.bias = full_bias;
      o.bias.data = full_bias.data + ends[i];
      o.bias.cols = ends[i + 1] - ends[i];
    } else {
      const int64_t ids = ends[i + 1] - ends[i];
      if (c.tie_word_embeddings) {
        o.weight = w.embedding[i].table;
      } else {
        ASSIGN_OR_RETURN(o.weight, r.Read(absl::StrCat("crit.out_layers.", i, ".weight"), {ids, dim}));
      }
      ASSIGN_OR_RETURN(o.bias, r.Read(absl::StrCat("crit.out_layers.", i, ".bias"), {ids}));
    }
    const bool tied = c.tie_projs[i] && (c.div_val != 1 || c.d_model != c.d_embed);
    const std::string proj_name = absl::StrCat("crit.out_projs.", i);
    if (tied) {
      o.proj = w.embedding[c.div_val == 1 ? 0 : i].proj;
    } else if (dim != d || c.div_val != 1 || r.Has(proj_name)) {
      ASSIGN_OR_RETURN(o.proj, r.Read(proj_name, {d, dim}));
    }
    w.output.push_back(std::move(o));
  }
  if (n_clusters > 0) {
    ASSIGN_OR_RETURN(w.cluster_weight, r.Read("crit.cluster_weight", {n_clusters, c.d_embed}));
    ASSIGN_OR_RETURN(w.cluster_bias, r.Read("crit.cluster_bias", {n_clusters}));
  }
  return w;
}

absl::StatusOr<ModelWeights> LoadModelDirectory(const std::string& model_dir) {
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(ModelFilePath(model_dir, "config.json")));
  ASSIGN_OR_RETURN(const std::string weights_path, ResolveModelFile(model_dir, "model.safetensors"));
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(weights_path));
  return LoadModelWeights(config, *file);
}

}  // namespace trams::engine
