// Per-element math of the adaptive log-softmax (log_softmax.cu). Host twin: OutputLayer in
// engine/output_layer.cc and LogSoftmaxRow in engine/host_ops.cc (max in f32, sum of exp in double,
// lse = max + log(sum)). Also the cluster of an id (HF ProjectedAdaptiveLogSoftmax).
#pragma once

#include "engine/cuda/hd_common.cuh"

namespace trams::cuda {

// Logit of column c of row `row`: x + bias.
TRAMS_HD float LogitAt(const float* x, int64_t ld, const float* bias, int64_t row, int c) {
  const float v = x[row * ld + c];
  return bias != nullptr ? v + bias[c] : v;
}

// One term of the softmax sum, exp(v - max), accumulated in double by the caller.
TRAMS_HD double SoftmaxTerm(float v, float max) { return static_cast<double>(expf(v - max)); }

TRAMS_HD double LogSumExp(float max, double sum) { return static_cast<double>(max) + log(sum); }

TRAMS_HD float LogProb(float v, double lse, float add) { return static_cast<float>(v - lse) + add; }

// Cluster of token `id` given ends = [0, cutoffs..., vocab]: 0 = head, i >= 1 = tail cluster i.
TRAMS_HD int ClusterOf(int64_t id, const int64_t* ends, int n_clusters) {
  int c = 0;
  while (c < n_clusters && id >= ends[c + 1]) ++c;
  return c;
}

// Column of tail cluster i's logit in the head: after the first cluster's tokens.
TRAMS_HD int64_t HeadClusterColumn(const int64_t* ends, int cluster) { return ends[1] + cluster - 1; }

}  // namespace trams::cuda
