// Host math both backends precompute from the weights (plain C++, no absl: compiled into trams_engine and
// trams_cuda_core). The host engine uses the results in place, the CUDA backend uploads them, so the two
// start from bit-identical tables.
#pragma once

namespace trams::engine {

// pos_emb(p) = [sin(p * inv_freq), cos(p * inv_freq)], inv_freq_k = 1 / 10000^(2k / d_model), with
// PyTorch's float32 rounding (inv_freq is a float32 tensor, the product is float32). d_model floats.
void SinusoidEmbedding(double position, int d_model, float* out);
// `rows` sinusoid rows for distances first .. first + rows - 1, each clamped to clamp_len when > 0:
// out[r * d_model ...] = pos_emb(min(first + r, clamp_len)).
void RelPositionSinusoids(int first, int rows, int d_model, int clamp_len, float* out);

// TRAMS scorer tables per head h, from the q rows of qkv_net ([n_head * d_head, d_model], head-major):
// gram[h][a][b] = (W_q,h W_q,h^T)[a][b] and row_sum[h][a] = (W_q,h 1)[a], accumulated in double, rounded
// to float. gram has n_head * d_head * d_head floats, row_sum n_head * d_head.
void TramsGram(const float* q_weight, int n_head, int d_head, int d_model, float* gram, float* row_sum);

}  // namespace trams::engine
