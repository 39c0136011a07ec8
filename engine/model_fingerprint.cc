#include "engine/model_fingerprint.h"

#include <cstdint>
#include <cstdio>

#define XXH_INLINE_ALL
#include "xxhash.h"

namespace trams::engine {
namespace {

class Hasher {
 public:
  Hasher() : state_(XXH3_createState()) { XXH3_64bits_reset(state_); }
  ~Hasher() { XXH3_freeState(state_); }
  Hasher(const Hasher&) = delete;
  Hasher& operator=(const Hasher&) = delete;

  void Bytes(const void* data, size_t n) { XXH3_64bits_update(state_, data, n); }
  void Int(int64_t v) { Bytes(&v, sizeof(v)); }
  void Float(float v) { Bytes(&v, sizeof(v)); }
  void Matrix(const engine::Matrix& m) {
    Int(m.rows);
    Int(m.cols);
    if (!m.empty()) Bytes(m.data, static_cast<size_t>(m.rows * m.cols) * sizeof(float));
  }
  uint64_t Digest() const { return XXH3_64bits_digest(state_); }

 private:
  XXH3_state_t* state_;
};

}  // namespace

std::string ModelFingerprint(const ModelWeights& w) {
  const ModelConfig& c = w.config;
  Hasher h;
  for (int64_t v : {int64_t{c.n_layer}, int64_t{c.d_model}, int64_t{c.d_embed}, int64_t{c.n_head}, int64_t{c.d_head},
                    int64_t{c.d_inner}, c.vocab_size, int64_t{c.div_val}, int64_t{c.pre_lnorm},
                    int64_t{c.same_length}, int64_t{c.clamp_len}}) {
    h.Int(v);
  }
  h.Float(c.layer_norm_epsilon);
  h.Int(static_cast<int64_t>(c.cutoffs.size()));
  for (int64_t cut : c.cutoffs) h.Int(cut);
  for (const EmbeddingCluster& e : w.embedding) {
    h.Matrix(e.table);
    h.Matrix(e.proj);
  }
  for (const LayerWeights& l : w.layers) {
    for (const engine::Matrix* m : {&l.qkv, &l.r_net, &l.o_net, &l.attn_ln_g, &l.attn_ln_b, &l.ff1_w, &l.ff1_b,
                                    &l.ff2_w, &l.ff2_b, &l.ff_ln_g, &l.ff_ln_b, &l.r_w_bias, &l.r_r_bias}) {
      h.Matrix(*m);
    }
  }
  for (const OutputCluster& o : w.output) {
    h.Matrix(o.weight);
    h.Matrix(o.bias);
    h.Matrix(o.proj);
  }
  h.Matrix(w.cluster_weight);
  h.Matrix(w.cluster_bias);
  char hex[32];
  std::snprintf(hex, sizeof(hex), "xxh3:%016llx", static_cast<unsigned long long>(h.Digest()));
  return hex;
}

}  // namespace trams::engine
