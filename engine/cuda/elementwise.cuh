// Per-element math of the elementwise family (elementwise.cu): row gathers for the embedding and the
// output layer, residual + LayerNorm, bias + ReLU, dtype conversion. Host twin: engine/host_ops.cc.
// The kernels split each row over a block and reduce partial sums; the math per element is here.
#pragma once

#include "engine/cuda/hd_common.cuh"

namespace trams::cuda {

// The row a gather reads / writes for its r-th item.
TRAMS_HD int64_t GatherSrcRow(const GatherArgs& g, int r) { return g.src_idx != nullptr ? g.src_idx[r] : r; }
TRAMS_HD int64_t GatherDstRow(const GatherArgs& g, int r) { return g.dst_idx != nullptr ? g.dst_idx[r] : r; }

TRAMS_HD float GatherValue(const GatherArgs& g, int r, int c) {
  return g.scale * LoadF32(g.src, g.src_type, GatherSrcRow(g, r) * g.src_ld + c);
}

// x + residual + bias at (row, c): the LayerNorm input (and the pre-LN residual sum).
TRAMS_HD float ResidualSum(const LayerNormArgs& a, int64_t row, int c) {
  const int64_t i = row * a.d + c;
  float v = a.x[i];
  if (a.bias != nullptr) v += a.bias[c];  // (x + bias) + residual: the host's order of additions
  if (a.residual != nullptr) v += a.residual[i];
  return v;
}

// 1 / sqrt(var + eps) from the biased variance, as LayerNormRows computes it (in double).
TRAMS_HD float LayerNormRstd(double var, float eps) { return static_cast<float>(1.0 / sqrt(var + eps)); }

TRAMS_HD float LayerNormValue(float v, float mean, float rstd, float gamma, float beta) {
  return (v - mean) * rstd * gamma + beta;
}

TRAMS_HD float BiasRelu(float x, float bias) {
  const float v = x + bias;
  return v > 0.0f ? v : 0.0f;
}

}  // namespace trams::cuda
