// Token sampling from a log-probability vector: temperature, top-k, top-p, seeded.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/status.h"

namespace trams::engine {

struct SamplingParams {
  float temperature = 1.0f;  // 0: greedy (argmax)
  int top_k = 0;             // 0: off
  float top_p = 1.0f;        // 1 (or 0): off
  uint64_t seed = 0;

  absl::Status Validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}
  // Draws one id from `logprobs` (natural log-probabilities over the whole vocabulary).
  int32_t Sample(const std::vector<float>& logprobs);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<int32_t> order_;
  std::vector<double> weights_;
};

}  // namespace trams::engine
