// Per-element math of relative attention (rel_attention.cu). Host twin: TransformerXL::AttendOne in
// engine/transformer_xl.cc. The content term (q + r_w_bias) . k_j and the position term
// (q + r_r_bias) . r_d are cuBLAS strided-batched GEMMs; the "rel-shift" of Transformer-XL is done by
// indexing: the position term of key j for query i is column d = a + i - j of the distance-ordered product.
#pragma once

#include "engine/cuda/hd_common.cuh"

namespace trams::cuda {

// Keys query i of a stream may see: [lo, hi], hi = a + i (distance 0); with same_length and a window W,
// distances >= W are masked too.
struct VisibleRange {
  int lo;
  int hi;
};

TRAMS_HD VisibleRange AttnVisible(int a, int i, int same_length, int window) {
  VisibleRange r;
  r.hi = a + i;
  r.lo = 0;
  if (same_length && window > 0) {
    const int lo = r.hi - window + 1;
    r.lo = lo > 0 ? lo : 0;
  }
  return r;
}

// Relative distance of key j from query i (rel-shift by indexing).
TRAMS_HD int RelDistance(int a, int i, int j) { return a + i - j; }

TRAMS_HD float AttnLogit(float content, float position, float scale) { return (content + position) * scale; }

// Value of the gathered key (or value) row j of stream b, head h, column c: an attended pool row for
// j < a, a segment row for j < a + n, zero padding after (so padded keys stay finite and padded values
// contribute 0 * finite).
TRAMS_HD float AttnKeyValue(const AttnArgs& g, int b, int h, int j, int c, bool value) {
  const StreamLayerMeta& s = g.streams[b];
  const int w = g.n_head * g.d_head;
  if (j < s.a) {
    const int64_t ring = g.att_rows[(static_cast<int64_t>(b) * g.n_head + h) * g.a_max + j];
    const float* pool = value ? s.values : s.keys;
    return LoadF32(pool, s.pool_dtype, ring * w + h * g.d_head + c);  // f16/bf16 pools: read back as f32
  }
  if (j < s.a + s.n) {
    const int64_t row = s.offset + (j - s.a);
    return g.qkv[row * 3 * w + (value ? 2 : 1) * w + h * g.d_head + c];
  }
  return 0.0f;
}

// q + bias (r_w_bias for the content term, r_r_bias for the position term) for query i, 0 for padding.
TRAMS_HD float AttnQuery(const AttnArgs& g, int b, int h, int i, int c, bool position_term) {
  const StreamLayerMeta& s = g.streams[b];
  if (i >= s.n) return 0.0f;
  const int w = g.n_head * g.d_head;
  const float q = g.qkv[(static_cast<int64_t>(s.offset) + i) * 3 * w + h * g.d_head + c];
  const float* bias = position_term ? g.r_r_bias : g.r_w_bias;
  return q + bias[h * g.d_head + c];
}

}  // namespace trams::cuda
