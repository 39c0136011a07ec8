#include "engine/trams_selector.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/host_ops.h"
#include "engine/precompute.h"

namespace trams::engine {

TramsScorer::TramsScorer(const float* q_weight, int n_head, int d_head, int d_model)
    : n_head_(n_head), d_head_(d_head), d_model_(d_model) {
  gram_.assign(static_cast<size_t>(n_head) * d_head * d_head, 0.0f);
  row_sum_.assign(static_cast<size_t>(n_head) * d_head, 0.0f);
  TramsGram(q_weight, n_head, d_head, d_model, gram_.data(), row_sum_.data());
}

void TramsScorer::Score(const float* k, int ld_k, int64_t rows, SelectionMetric metric, float* scores) const {
  thread_local std::vector<float> projected;  // k_h G_h, [rows, Dh]
  projected.resize(static_cast<size_t>(rows) * d_head_);
  const double inv_sqrt_d = 1.0 / std::sqrt(static_cast<double>(d_model_));
  for (int h = 0; h < n_head_; ++h) {
    const float* kh = k + h * d_head_;
    MatMulNN(kh, ld_k, gram_.data() + static_cast<size_t>(h) * d_head_ * d_head_, d_head_, projected.data(), d_head_,
             rows, d_head_, d_head_);
    const float* u = row_sum_.data() + h * d_head_;
    for (int64_t r = 0; r < rows; ++r) {
      const float* kr = kh + r * ld_k;
      const float* y = projected.data() + r * d_head_;
      double sum = 0, sq = 0;
      for (int a = 0; a < d_head_; ++a) {
        sum += kr[a] * u[a];
        sq += kr[a] * y[a];
      }
      scores[r * n_head_ + h] = metric == SelectionMetric::kCode
                                    ? static_cast<float>(std::sqrt(std::max(0.0, sq)) * std::fabs(sum))
                                    : static_cast<float>(sum * inv_sqrt_d);
    }
  }
}

namespace {

// What a score ranks by: NaN (a broken weight, an overflow) counts as -inf, +inf ranks highest. Never NaN,
// so `better` below is a strict total order whatever the scores (as trams::cuda::TramsRankKey).
float RankKey(float score) { return std::isnan(score) ? -std::numeric_limits<float>::infinity() : score; }

}  // namespace

void SelectTopK(const float* scores, int64_t stride, int candidates, int topk, std::vector<int>* out) {
  if (topk <= 0 || candidates <= 0) {
    out->clear();
    return;
  }
  out->resize(candidates);
  for (int i = 0; i < candidates; ++i) (*out)[i] = i;
  if (topk >= candidates) return;
  auto score = [&](int i) { return RankKey(scores[i * stride]); };
  auto better = [&](int a, int b) { return score(a) > score(b) || (score(a) == score(b) && a < b); };
  std::nth_element(out->begin(), out->begin() + (topk - 1), out->end(), better);
  // Scores within a relative kTieTolerance of the k-th best count as tied, and ties go to the older
  // tokens. Equal keys (a token repeated in the pool) have equal true scores, but the float rounding of
  // their keys depends on how the matrix products were batched; without the tolerance, that noise,
  // not the data, would pick among them (and a session's results would depend on its batch).
  // The band's ends stay finite for a finite k-th best (so +inf is always above it, -inf and NaN below);
  // an infinite k-th best ties exactly. Either way exactly topk candidates are kept: the topk - 1 better
  // ones are above the band or in it, and so is the k-th best.
  const float kth = score((*out)[topk - 1]);
  float hi = kth, lo = kth;
  if (std::isfinite(kth)) {
    const float tol = kTieTolerance * std::max(std::fabs(kth), 1e-30f);
    hi = std::min(kth + tol, std::numeric_limits<float>::max());
    lo = std::max(kth - tol, -std::numeric_limits<float>::max());
  }
  std::vector<int> chosen, tied;
  for (int i = 0; i < candidates; ++i) {
    if (score(i) > hi) {
      chosen.push_back(i);
    } else if (score(i) >= lo) {
      tied.push_back(i);  // ascending index = older first
    }
  }
  for (size_t t = 0; chosen.size() < static_cast<size_t>(topk) && t < tied.size(); ++t) chosen.push_back(tied[t]);
  std::sort(chosen.begin(), chosen.end());
  *out = std::move(chosen);
}

}  // namespace trams::engine
