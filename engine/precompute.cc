#include "engine/precompute.h"

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace trams::engine {

void SinusoidEmbedding(double position, int d_model, float* out) {
  const int half = d_model / 2;
  for (int k = 0; k < half; ++k) {
    // Same float32 rounding as PyTorch: inv_freq is a float32 tensor, the product is float32.
    const float inv_freq = static_cast<float>(1.0 / std::pow(10000.0, (2.0 * k) / d_model));
    const float angle = static_cast<float>(position) * inv_freq;
    out[k] = std::sin(angle);
    out[half + k] = std::cos(angle);
  }
}

void RelPositionSinusoids(int first, int rows, int d_model, int clamp_len, float* out) {
  for (int i = 0; i < rows; ++i) {
    const int d = first + i;
    const int p = clamp_len > 0 ? std::min(d, clamp_len) : d;
    SinusoidEmbedding(p, d_model, out + static_cast<size_t>(i) * d_model);
  }
}

void TramsGram(const float* q_weight, int n_head, int d_head, int d_model, float* gram, float* row_sum) {
  for (int h = 0; h < n_head; ++h) {
    const float* w = q_weight + static_cast<size_t>(h) * d_head * d_model;  // [Dh, d] slice of the q rows
    for (int a = 0; a < d_head; ++a) {
      double s = 0;
      for (int c = 0; c < d_model; ++c) s += w[static_cast<size_t>(a) * d_model + c];
      row_sum[static_cast<size_t>(h) * d_head + a] = static_cast<float>(s);
      for (int b = 0; b <= a; ++b) {
        double g = 0;
        for (int c = 0; c < d_model; ++c) {
          g += static_cast<double>(w[static_cast<size_t>(a) * d_model + c]) * w[static_cast<size_t>(b) * d_model + c];
        }
        gram[(static_cast<size_t>(h) * d_head + a) * d_head + b] = static_cast<float>(g);
        gram[(static_cast<size_t>(h) * d_head + b) * d_head + a] = static_cast<float>(g);
      }
    }
  }
}

}  // namespace trams::engine
