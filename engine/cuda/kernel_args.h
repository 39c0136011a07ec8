// Argument blocks of the backend's device ops: plain structs of device pointers and sizes, shared by the
// CUDA launchers (kernels.h) and the host emulation (host_emulation.h), so both run the same call.
// No CUDA headers here. Shapes follow the paper: B streams, H heads, Dh head width, W = H * Dh,
// n_max / klen_max the longest segment / key list of the batch (shorter ones are zero-padded).
#pragma once

#include <cstdint>

namespace trams::cuda {

enum class DType : int32_t { kF32 = 0, kF16 = 1, kBF16 = 2 };
inline int DTypeBytes(DType t) { return t == DType::kF32 ? 4 : 2; }
inline const char* DTypeName(DType t) { return t == DType::kF32 ? "f32" : t == DType::kF16 ? "f16" : "bf16"; }

// Row-major GEMM with f32 accumulation and f32 output: C[m, n] = alpha * A[m, k] * op(B) + beta * C,
// op(B) = B^T for B stored [n, k] (trans_b: a PyTorch Linear weight) or B for B stored [k, n].
// A and B share `type`. Batched: item i uses a + i * stride_a, b + i * stride_b, c + i * stride_c (elements).
struct GemmArgs {
  const void* a = nullptr;
  int64_t lda = 0, stride_a = 0;
  const void* b = nullptr;
  int64_t ldb = 0, stride_b = 0;
  bool trans_b = true;
  DType type = DType::kF32;
  float* c = nullptr;
  int64_t ldc = 0, stride_c = 0;
  int m = 0, n = 0, k = 0, batch = 1;
  float alpha = 1.0f, beta = 0.0f;
};

// dst[(dst_idx ? dst_idx[r] : r) * dst_ld + c] = scale * src[(src_idx ? src_idx[r] : r) * src_ld + c]
// for r < rows, c < width. src may be f32/f16/bf16 (weights); dst is f32.
struct GatherArgs {
  const void* src = nullptr;
  DType src_type = DType::kF32;
  int64_t src_ld = 0;
  const int32_t* src_idx = nullptr;
  float* dst = nullptr;
  int64_t dst_ld = 0;
  const int32_t* dst_idx = nullptr;
  int rows = 0, width = 0;
  float scale = 1.0f;
};

// dst row r = src_rows[r][0, width): rows scattered over the workspace and the streams' last states.
struct GatherPtrArgs {
  const float* const* src_rows = nullptr;
  float* dst = nullptr;
  int rows = 0, width = 0;
};

// out[r] = LayerNorm(x[r] + residual[r] + bias) * gamma + beta (biased variance, as PyTorch), or only the
// sum when gamma is null. residual and bias may be null. out must not alias x or residual.
struct LayerNormArgs {
  const float* x = nullptr;
  const float* residual = nullptr;
  const float* bias = nullptr;
  const float* gamma = nullptr;
  const float* beta = nullptr;
  float* out = nullptr;
  int64_t rows = 0;
  int d = 0;
  float eps = 1e-5f;
};

// x[r][c] = max(0, x[r][c] + bias[c]).
struct BiasReluArgs {
  float* x = nullptr;
  const float* bias = nullptr;
  int64_t rows = 0;
  int d = 0;
};

// dst = src rounded to `type` (round to nearest even), count elements.
struct ConvertArgs {
  const float* src = nullptr;
  void* dst = nullptr;
  DType type = DType::kF32;
  int64_t count = 0;
};

// One stream at one layer of one forward.
struct StreamLayerMeta {
  // Pool rings [M, W] stored as `pool_dtype` (f32, or f16/bf16 bits behind the float pointer): write with
  // StoreAs, read with LoadF32 (hd_common.cuh).
  float* keys = nullptr;
  float* values = nullptr;
  float* scores = nullptr;  // pool ring [M, H]; null when this layer never selects
  int32_t offset = 0;       // first packed row of the stream's segment
  int32_t n = 0;            // segment tokens
  int32_t a = 0;            // memory tokens attended (min(size, m))
  int32_t window = 0;       // same_length window (m = attend_len), 0 = none
  int32_t start = 0, size = 0, mem_len = 0;  // ring cursor before the segment
  int32_t selects = 0;      // 1: TRAMS top-k on this layer in this segment (size > topk + remain)
  int32_t topk = 0, remain = 0;
  int32_t metric = 0;       // 0 code, 1 paper
  DType pool_dtype = DType::kF32;  // how keys/values are stored
};

// Relative attention of one layer over all streams and heads (three kernels share it):
//  gather:  q_w = q + r_w_bias, q_r = q + r_r_bias, k/v = attended pool rows then the segment's rows;
//  softmax: ac[i, j] <- softmax_j((ac[i, j] + bd[i, a + i - j]) * scale) over the visible keys, 0 elsewhere;
//  scatter: attn_vec[offset + i, h * Dh + c] = o[h, b, i, c].
struct AttnArgs {
  const StreamLayerMeta* streams = nullptr;  // [B]
  int batch = 0, n_head = 0, d_head = 0, n_max = 0, klen_max = 0, a_max = 0;
  const float* qkv = nullptr;                // [rows, 3W]
  const float* r_w_bias = nullptr;           // [H, Dh]
  const float* r_r_bias = nullptr;           // [H, Dh]
  const int32_t* att_rows = nullptr;         // [B][H][a_max] ring rows attended, pool order
  float* q_w = nullptr;                      // [H][B][n_max][Dh]
  float* q_r = nullptr;                      // [H][B][n_max][Dh]
  float* k = nullptr;                        // [H][B][klen_max][Dh]
  float* v = nullptr;                        // [H][B][klen_max][Dh]
  float* ac = nullptr;                       // [H][B][n_max][klen_max]
  const float* bd = nullptr;                 // [H][B][n_max][klen_max], column = distance
  const float* o = nullptr;                  // [H][B][n_max][Dh]
  float* attn_vec = nullptr;                 // [rows, W]
  float scale = 1.0f;
  int same_length = 0;
};

// Which ring rows each (stream, head) attends: the TRAMS top-k of the older pool tokens (pool order;
// scores within the near-tie band of the k-th best go to the older tokens, as SelectTopK) then the newest
// `remain`, or simply the newest `a`. Writes att_rows and, where given, the selected pool indices and
// their scores ([B][H][topk_max]) and their counts ([B][H], 0 when nothing was selected).
struct SelectArgs {
  const StreamLayerMeta* streams = nullptr;
  int batch = 0, n_head = 0, a_max = 0, topk_max = 0;
  int32_t* att_rows = nullptr;
  int32_t* selected = nullptr;
  float* selected_scores = nullptr;
  int32_t* counts = nullptr;
};

// A segment token entering a stream's pool: packed row `src_row` of qkv goes to ring row `dst_row`.
struct AppendItem {
  int32_t stream = 0;
  int32_t src_row = 0;
  int32_t dst_row = 0;
  int32_t pad = 0;
};

// Copies k and v of each item into its stream's pool and, where the layer selects, the TRAMS score per head.
struct AppendArgs {
  const StreamLayerMeta* streams = nullptr;
  const AppendItem* items = nullptr;
  int n_items = 0;
  const float* qkv = nullptr;  // [rows, 3W]
  int n_head = 0, d_head = 0;
  const float* gram = nullptr;     // [H][Dh][Dh]: W_q,h W_q,h^T
  const float* row_sum = nullptr;  // [H][Dh]:     W_q,h 1
  double inv_sqrt_d_model = 0.0;
};

// out[r][c] = x[r][c] + bias[c] - lse_r + (add ? add[r * add_ld] : 0) for c < n_out, with
// lse_r = logsumexp_{c < n}(x[r][c] + bias[c]). In place (out == x, same ld) is allowed.
struct LogSoftmaxArgs {
  const float* x = nullptr;
  int64_t ld = 0;
  const float* bias = nullptr;  // [n] or null
  int rows = 0, n = 0, n_out = 0;
  const float* add = nullptr;
  int64_t add_ld = 0;
  float* out = nullptr;
  int64_t out_ld = 0;
};

// out[it.out] = x[it.logit_row][it.col] + bias[it.col] - (normalize ? lse(row) : 0)
//               + (add ? add[it.add_row * add_ld] : 0).
struct TargetItem {
  int32_t logit_row = 0;
  int32_t col = 0;
  int32_t out = 0;
  int32_t add_row = 0;
};
struct TargetArgs {
  const float* x = nullptr;
  int64_t ld = 0;
  const float* bias = nullptr;
  int n = 0;
  int normalize = 0;
  const TargetItem* items = nullptr;
  int n_items = 0;
  const float* add = nullptr;
  int64_t add_ld = 0;
  float* out = nullptr;
};

}  // namespace trams::cuda
