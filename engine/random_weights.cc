#include "engine/random_weights.h"

#include <cmath>
#include <random>

namespace trams::engine {
namespace {

class Filler {
 public:
  explicit Filler(uint64_t seed) : rng_(seed) {}

  Matrix Normal(int64_t rows, int64_t cols, float stddev, float mean = 0.0f) {
    auto storage = std::make_shared<std::vector<float>>(static_cast<size_t>(rows * cols));
    std::normal_distribution<float> dist(mean, stddev);
    for (float& v : *storage) v = dist(rng_);
    Matrix m;
    m.data = storage->data();
    m.storage = std::move(storage);
    m.rows = rows;
    m.cols = cols;
    return m;
  }

 private:
  std::mt19937_64 rng_;
};

}  // namespace

ModelWeights RandomModelWeights(const ModelConfig& c, uint64_t seed) {
  Filler f(seed);
  ModelWeights w;
  w.config = c;
  const std::vector<int64_t> ends = c.cutoff_ends();
  const int n_clusters = c.n_clusters();
  const int64_t d = c.d_model, hd = c.attn_width();
  const int n_emb = c.div_val == 1 ? 1 : n_clusters + 1;
  for (int i = 0; i < n_emb; ++i) {
    const int64_t ids = c.div_val == 1 ? c.vocab_size : ends[i + 1] - ends[i];
    const int dim = c.cluster_dim(i);
    EmbeddingCluster e;
    e.table = f.Normal(ids, dim, 0.02f);
    if (c.div_val != 1 || dim != d) e.proj = f.Normal(d, dim, 1.0f / std::sqrt(static_cast<float>(dim)));
    w.embedding.push_back(std::move(e));
  }
  const float sd = 1.0f / std::sqrt(static_cast<float>(d));
  Matrix rw = f.Normal(c.n_head, c.d_head, 0.02f), rr = f.Normal(c.n_head, c.d_head, 0.02f);
  for (int l = 0; l < c.n_layer; ++l) {
    LayerWeights lw;
    lw.qkv = f.Normal(3 * hd, d, sd);
    lw.r_net = f.Normal(hd, d, sd);
    lw.o_net = f.Normal(d, hd, 1.0f / std::sqrt(static_cast<float>(hd)));
    lw.attn_ln_g = f.Normal(1, d, 0.02f, 1.0f);
    lw.attn_ln_b = f.Normal(1, d, 0.02f);
    lw.ff1_w = f.Normal(c.d_inner, d, sd);
    lw.ff1_b = f.Normal(1, c.d_inner, 0.02f);
    lw.ff2_w = f.Normal(d, c.d_inner, 1.0f / std::sqrt(static_cast<float>(c.d_inner)));
    lw.ff2_b = f.Normal(1, d, 0.02f);
    lw.ff_ln_g = f.Normal(1, d, 0.02f, 1.0f);
    lw.ff_ln_b = f.Normal(1, d, 0.02f);
    lw.r_w_bias = c.untie_r ? f.Normal(c.n_head, c.d_head, 0.02f) : rw;
    lw.r_r_bias = c.untie_r ? f.Normal(c.n_head, c.d_head, 0.02f) : rr;
    w.layers.push_back(std::move(lw));
  }
  Matrix full_bias = c.div_val == 1 ? f.Normal(1, c.vocab_size, 0.02f) : Matrix{};
  for (int i = 0; i <= n_clusters; ++i) {
    OutputCluster o;
    const EmbeddingCluster& e = w.embedding[c.div_val == 1 ? 0 : i];
    if (c.div_val == 1) {
      o.weight = e.table.RowRange(ends[i], ends[i + 1]);  // tied, as HF does by default
      o.bias = full_bias;
      o.bias.data = full_bias.data + ends[i];
      o.bias.cols = ends[i + 1] - ends[i];
    } else {
      o.weight = e.table;
      o.bias = f.Normal(1, ends[i + 1] - ends[i], 0.02f);
    }
    o.proj = e.proj;
    w.output.push_back(std::move(o));
  }
  if (n_clusters > 0) {
    w.cluster_weight = f.Normal(n_clusters, c.d_embed, 0.02f);
    w.cluster_bias = f.Normal(1, n_clusters, 0.02f);
  }
  return w;
}

ModelConfig WikiText103Config() {
  ModelConfig c;
  c.n_layer = 16;
  c.d_model = 410;
  c.d_embed = 410;
  c.n_head = 10;
  c.d_head = 41;
  c.d_inner = 2100;
  c.vocab_size = 267735;
  c.cutoffs = {20000, 40000, 200000};
  c.div_val = 1;
  c.tie_projs = {false, true, true, true};
  c.untie_r = false;
  c.same_length = false;
  c.clamp_len = -1;
  return c;
}

ModelConfig Enwik8Config() {
  ModelConfig c;
  c.n_layer = 12;
  c.d_model = 512;
  c.d_embed = 512;
  c.n_head = 8;
  c.d_head = 64;
  c.d_inner = 2048;
  c.vocab_size = 204;
  c.cutoffs = {};
  c.div_val = 1;
  c.tie_projs = {false};
  c.untie_r = false;
  c.same_length = false;
  c.clamp_len = -1;
  return c;
}

}  // namespace trams::engine
