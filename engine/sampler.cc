#include "engine/sampler.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace trams::engine {

absl::Status SamplingParams::Validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    return absl::InvalidArgumentError(absl::StrCat("temperature must be >= 0, got ", temperature));
  }
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", top_k));
  if (!(top_p >= 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in [0, 1], got ", top_p));
  }
  return absl::OkStatus();
}

int32_t Sampler::Sample(const std::vector<float>& logprobs) {
  const int32_t vocab = static_cast<int32_t>(logprobs.size());
  if (params_.temperature == 0.0f) {
    return static_cast<int32_t>(std::max_element(logprobs.begin(), logprobs.end()) - logprobs.begin());
  }
  if (params_.top_k == 0 && !(params_.top_p > 0.0f && params_.top_p < 1.0f)) {
    // Plain temperature sampling needs no ordering: O(vocab).
    weights_.resize(vocab);
    const double top = *std::max_element(logprobs.begin(), logprobs.end());
    double total = 0;
    for (int32_t v = 0; v < vocab; ++v) total += weights_[v] = std::exp((logprobs[v] - top) / params_.temperature);
    const double u = std::uniform_real_distribution<double>(0.0, total)(rng_);
    double acc = 0;
    for (int32_t v = 0; v < vocab; ++v) {
      acc += weights_[v];
      if (u < acc) return v;
    }
    return vocab - 1;
  }
  // Candidates by descending probability (ties: lower id first, so results are reproducible).
  order_.resize(vocab);
  for (int32_t v = 0; v < vocab; ++v) order_[v] = v;
  int32_t keep = params_.top_k > 0 ? std::min(params_.top_k, vocab) : vocab;
  auto by_prob = [&](int32_t a, int32_t b) { return logprobs[a] > logprobs[b] || (logprobs[a] == logprobs[b] && a < b); };
  std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(), by_prob);
  weights_.resize(keep);
  const double top = logprobs[order_[0]];
  double total = 0;
  for (int32_t i = 0; i < keep; ++i) {
    weights_[i] = std::exp((logprobs[order_[i]] - top) / params_.temperature);
    total += weights_[i];
  }
  if (params_.top_p > 0.0f && params_.top_p < 1.0f) {
    // Smallest prefix whose (tempered) mass reaches top_p.
    double mass = 0;
    int32_t cut = keep;
    for (int32_t i = 0; i < keep; ++i) {
      mass += weights_[i] / total;
      if (mass >= params_.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
    total = 0;
    for (int32_t i = 0; i < keep; ++i) total += weights_[i];
  }
  const double u = std::uniform_real_distribution<double>(0.0, total)(rng_);
  double acc = 0;
  for (int32_t i = 0; i < keep; ++i) {
    acc += weights_[i];
    if (u < acc) return order_[i];
  }
  return order_[keep - 1];
}

}  // namespace trams::engine
