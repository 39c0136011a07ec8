// The p-th quantile (p in [0, 1]) of samples, linearly interpolated between ranks; NaN when empty.
// Shared by trams-load and trams-soak so that their latency figures mean the same thing.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace trams::bench {

inline double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const double rank = p * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(rank);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

}  // namespace trams::bench
