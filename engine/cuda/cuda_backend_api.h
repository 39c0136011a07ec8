/* The CUDA backend's C ABI: what libtrams_cuda.so exports and what the host side (cuda_loader.h) resolves.
 * Owns the types and the one entry point, trams_cuda_get_api(); the engine semantics are those of
 * engine/DESIGN.md and engine/transformer_xl.h. Plain C (C99) so that the module can be loaded with
 * dlopen() by any program; no CUDA header is needed to include it.
 *
 * Contract:
 *  - Every function that can fail returns a trams_cuda_code; on failure, api->last_error() returns a
 *    message for the calling thread (valid until that thread's next call into the module).
 *  - Pointers named "host" are ordinary host memory owned by the caller. Weights are copied (converted
 *    to the chosen dtype) during create(); the caller may free them afterwards.
 *  - One context per device and model. Calls on one context are serialized by the context (a mutex);
 *    streams belong to the context that created them and must be destroyed before it.
 *  - Running out of the session arena (or of device memory for the per-forward workspace) returns
 *    TRAMS_CUDA_RESOURCE_EXHAUSTED and changes nothing. Bad arguments return TRAMS_CUDA_INVALID_ARGUMENT
 *    before any stream changes. TRAMS_CUDA_INTERNAL (a CUDA or cuBLAS failure in the middle of a forward)
 *    leaves the streams of that forward undefined: destroy them.
 */
#ifndef TRAMS_ENGINE_CUDA_CUDA_BACKEND_API_H_
#define TRAMS_ENGINE_CUDA_CUDA_BACKEND_API_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TRAMS_CUDA_API_VERSION 3
/* The only symbol the loader resolves (see trams_cuda_get_api_fn). */
#define TRAMS_CUDA_GET_API_SYMBOL "trams_cuda_get_api"
/* Test and diagnostics only: `trams::cuda::DeviceOps* (int32_t device, char* error, size_t error_size)`,
 * a C++ object (same compiler and standard library as the caller). */
#define TRAMS_CUDA_CREATE_OPS_SYMBOL "trams_cuda_create_device_ops"

typedef enum trams_cuda_code {
  TRAMS_CUDA_OK = 0,
  TRAMS_CUDA_INVALID_ARGUMENT = 1,
  TRAMS_CUDA_RESOURCE_EXHAUSTED = 2, /* session arena, workspace or device memory */
  TRAMS_CUDA_UNAVAILABLE = 3,        /* no device, no driver, or a driver too old */
  TRAMS_CUDA_FAILED_PRECONDITION = 4,
  TRAMS_CUDA_INTERNAL = 5 /* CUDA or cuBLAS error; the message names the call, file and line */
} trams_cuda_code;

typedef enum trams_cuda_dtype { TRAMS_CUDA_F32 = 0, TRAMS_CUDA_F16 = 1, TRAMS_CUDA_BF16 = 2 } trams_cuda_dtype;

/* A row-major f32 matrix in host memory; data == NULL means absent (an identity projection, ...).
 * 1-D tensors are [1, n]. */
typedef struct trams_cuda_matrix {
  const float* data;
  int64_t rows;
  int64_t cols;
} trams_cuda_matrix;

/* engine/model_config.h, without the fields that only matter when loading (tie_*, untie_r). */
typedef struct trams_cuda_model_config {
  int32_t n_layer;
  int32_t d_model;
  int32_t d_embed;
  int32_t n_head;
  int32_t d_head;
  int32_t d_inner;
  int64_t vocab_size;
  int32_t n_clusters;      /* number of cutoffs; 0 = plain softmax */
  const int64_t* cutoffs;  /* n_clusters entries, ascending, each in (0, vocab_size) */
  int32_t div_val;
  int32_t pre_lnorm;       /* bool */
  int32_t same_length;     /* bool */
  int32_t clamp_len;       /* distances clamped to this when > 0 */
  float layer_norm_epsilon;
} trams_cuda_model_config;

/* engine/model_weights.h LayerWeights; shapes as there (W = n_head * d_head). */
typedef struct trams_cuda_layer_weights {
  trams_cuda_matrix qkv;                  /* [3W, d_model] */
  trams_cuda_matrix r_net;                /* [W, d_model] */
  trams_cuda_matrix o_net;                /* [d_model, W] */
  trams_cuda_matrix attn_ln_g, attn_ln_b; /* [1, d_model] */
  trams_cuda_matrix ff1_w, ff1_b;         /* [d_inner, d_model], [1, d_inner] */
  trams_cuda_matrix ff2_w, ff2_b;         /* [d_model, d_inner], [1, d_model] */
  trams_cuda_matrix ff_ln_g, ff_ln_b;     /* [1, d_model] */
  trams_cuda_matrix r_w_bias, r_r_bias;   /* [n_head, d_head] */
} trams_cuda_layer_weights;

typedef struct trams_cuda_embedding_cluster {
  trams_cuda_matrix table; /* [ids in cluster (all ids when div_val == 1), cluster_dim] */
  trams_cuda_matrix proj;  /* [d_model, cluster_dim], or absent (identity) */
} trams_cuda_embedding_cluster;

typedef struct trams_cuda_output_cluster {
  trams_cuda_matrix weight; /* [ids in cluster, cluster_dim] */
  trams_cuda_matrix bias;   /* [1, ids in cluster] */
  trams_cuda_matrix proj;   /* [d_model, cluster_dim], or absent (identity) */
} trams_cuda_output_cluster;

/* Tied weights may share host memory (also as row ranges of one table): the device keeps one copy. */
typedef struct trams_cuda_model {
  trams_cuda_model_config config;
  int32_t n_embedding; /* 1 when div_val == 1, else n_clusters + 1 */
  const trams_cuda_embedding_cluster* embedding;
  const trams_cuda_layer_weights* layers; /* n_layer */
  int32_t n_output;                       /* n_clusters + 1 */
  const trams_cuda_output_cluster* output;
  trams_cuda_matrix cluster_weight; /* [n_clusters, d_embed] (adaptive only) */
  trams_cuda_matrix cluster_bias;   /* [1, n_clusters] */
} trams_cuda_model;

typedef struct trams_cuda_options {
  int32_t device;               /* CUDA device ordinal */
  trams_cuda_dtype weight_dtype; /* matrices on the device; biases, norms and pools stay f32 (pools: pool_dtype) */
  int64_t arena_bytes;          /* allocated once at create(); session pools are carved from it */
  int32_t allow_tf32;           /* f32 GEMMs may use TF32 tensor cores (faster, ~1e-3 relative) */
  int32_t rel_table_rows;       /* relative distances precomputed at create (grows on demand); 0 = 1024 */
  int64_t output_chunk_floats;  /* logits held at once by the output layer; 0 = 32M floats */
  double arena_fraction;        /* arena_bytes == 0: this share (0, 0.95] of the device memory free once the
                                 * weights are uploaded; 0 = no arena */
  int32_t pool_dtype;           /* trams_cuda_dtype: how session pools store keys and values (rounded to nearest
                                 * even, read back as f32); scores and the hidden state stay f32. 0 = f32 */
} trams_cuda_options;

typedef enum trams_cuda_memory_mode {
  TRAMS_CUDA_MODE_NONE = 0,
  TRAMS_CUDA_MODE_XL = 1,
  TRAMS_CUDA_MODE_TRAMS = 2
} trams_cuda_memory_mode;

typedef enum trams_cuda_metric { TRAMS_CUDA_METRIC_CODE = 0, TRAMS_CUDA_METRIC_PAPER = 1 } trams_cuda_metric;

/* engine/trams_settings.h TramsSettings (validated the same way). */
typedef struct trams_cuda_stream_settings {
  int32_t mode;   /* trams_cuda_memory_mode */
  int32_t mem_len; /* M */
  int32_t topk;
  int32_t remain;
  int32_t n_select_layers;        /* 0 = every layer selects (TRAMS only) */
  const int32_t* select_layers;
  int32_t metric; /* trams_cuda_metric */
} trams_cuda_stream_settings;

typedef struct trams_cuda_context trams_cuda_context;
typedef struct trams_cuda_stream trams_cuda_stream;

/* One stream's segment and where its results go (host memory owned by the caller; NULL = not wanted). */
typedef struct trams_cuda_segment {
  trams_cuda_stream* stream;
  const int32_t* tokens; /* n_tokens >= 1 ids in [0, vocab_size) */
  int32_t n_tokens;
  float* logprob;        /* [n_tokens]: log p(tokens[i] | everything before); NaN for a stream's first token */
  float* token_logprobs; /* [n_tokens * vocab_size]: the distribution that scored token i (NaN row if unscored) */
  float* next_logprobs;  /* [vocab_size]: log p(v | segment) after the last token */
  int32_t* selections;   /* [n_layer * n_head * topk]: TRAMS-selected pool indices (0 = oldest), ascending */
  float* selection_scores; /* [n_layer * n_head * topk]: their TRAMS scores, same layout */
  int32_t* selection_counts; /* [n_layer * n_head]: entries used in each row of `selections` (0 = none) */
  int32_t provisional;   /* nonzero: outputs as usual, but the stream does not change (nothing enters the pool) */
} trams_cuda_segment;

typedef struct trams_cuda_stream_info {
  int32_t mem_len;  /* capacity M */
  int32_t size;     /* tokens in the pool */
  int64_t position; /* tokens consumed */
  int64_t bytes;    /* arena bytes held */
  int32_t in_transaction;
  int64_t undo_bytes; /* host memory of the transaction's undo log */
} trams_cuda_stream_info;

/* A stream's state in host memory, in pool order (0 = oldest): engine/stream_image.h. Buffers are the
 * caller's: `keys` and `values` [n_layer][size][n_head * d_head] elements of the pool dtype, `scores`
 * [layers that select][size][n_head] floats (NULL when no layer selects), `last_hidden` d_model floats
 * (NULL before the first token). */
typedef struct trams_cuda_stream_image {
  int32_t size;     /* tokens in the pool */
  int64_t position; /* tokens consumed */
  void* keys;
  void* values;
  float* scores;
  float* last_hidden;
} trams_cuda_stream_image;

typedef struct trams_cuda_device_info {
  char name[256];
  int32_t device;
  int32_t cc_major, cc_minor;
  int64_t memory_total;    /* device memory (cudaMemGetInfo) */
  int64_t memory_free;
  int64_t arena_total;     /* session arena */
  int64_t arena_used;
  int64_t arena_largest_free;
  int64_t weights_bytes;   /* weights, relative-position table, TRAMS Gram matrices */
  int64_t workspace_bytes; /* per-forward activations (grown on demand, kept) */
  int64_t workspace_peak;  /* largest workspace any call needed */
  int32_t streams;
  float last_forward_ms;   /* device time of the last forward (cudaEvents) */
} trams_cuda_device_info;

typedef struct trams_cuda_api {
  int32_t version;     /* TRAMS_CUDA_API_VERSION */
  int32_t struct_size; /* sizeof(trams_cuda_api) of the module */
  const char* backend; /* "cuda" or "emulated" */

  const char* (*last_error)(void);
  /* Devices visible; 0 (and TRAMS_CUDA_OK) when there is no driver, a driver too old for the runtime,
   * or no device: last_error() then says which. */
  trams_cuda_code (*device_count)(int32_t* count);

  trams_cuda_code (*create)(const trams_cuda_model* model, const trams_cuda_options* options,
                            trams_cuda_context** out);
  void (*destroy)(trams_cuda_context* ctx);
  trams_cuda_code (*device_info)(trams_cuda_context* ctx, trams_cuda_device_info* out);

  /* Arena bytes a stream with these settings takes (pools of all layers + the last hidden state). */
  trams_cuda_code (*stream_bytes)(trams_cuda_context* ctx, const trams_cuda_stream_settings* settings,
                                  int64_t* bytes);
  trams_cuda_code (*stream_create)(trams_cuda_context* ctx, const trams_cuda_stream_settings* settings,
                                   trams_cuda_stream** out);
  void (*stream_destroy)(trams_cuda_context* ctx, trams_cuda_stream* stream);
  /* The reference code's start: every layer's pool holds M zero hidden states (see DESIGN.md). */
  trams_cuda_code (*stream_fill_zero)(trams_cuda_context* ctx, trams_cuda_stream* stream);
  trams_cuda_code (*stream_info)(trams_cuda_context* ctx, const trams_cuda_stream* stream,
                                 trams_cuda_stream_info* out);

  /* One segment per stream (distinct streams). Checked fully before any stream changes; on success
   * every stream advanced by its whole segment, except provisional ones, which are as they were. */
  trams_cuda_code (*forward)(trams_cuda_context* ctx, const trams_cuda_segment* segments, int32_t n_segments);
  /* log p(v | stream so far), vocab_size floats; the stream must have consumed a token. */
  trams_cuda_code (*next_logprobs)(trams_cuda_context* ctx, const trams_cuda_stream* stream, float* out);

  /* Transactions (StreamState::BeginTransaction / Commit / Rollback): after begin, each forward first copies
   * the live pool rows it is about to overwrite to host memory (at most the pool per layer over the whole
   * transaction); rollback puts them back with the cursor and the last hidden state, commit drops them.
   * Rollback also undoes a forward that failed with TRAMS_CUDA_INTERNAL. Begin on a stream already in a
   * transaction restarts it; commit and rollback outside one do nothing. */
  trams_cuda_code (*stream_begin_transaction)(trams_cuda_context* ctx, trams_cuda_stream* stream);
  trams_cuda_code (*stream_commit)(trams_cuda_context* ctx, trams_cuda_stream* stream);
  trams_cuda_code (*stream_rollback)(trams_cuda_context* ctx, trams_cuda_stream* stream);

  /* Version 3. stream_read copies the stream's state into `image` (whose size and position must be the
   * stream's: stream_info), FAILED_PRECONDITION inside a transaction. stream_write loads `image` into a
   * stream that has consumed nothing and holds nothing (just created), rows [0, size) with the ring at 0. */
  trams_cuda_code (*stream_read)(trams_cuda_context* ctx, const trams_cuda_stream* stream,
                                 const trams_cuda_stream_image* image);
  trams_cuda_code (*stream_write)(trams_cuda_context* ctx, trams_cuda_stream* stream,
                                  const trams_cuda_stream_image* image);
} trams_cuda_api;

/* Returns NULL when the module cannot serve `version`. */
typedef const trams_cuda_api* (*trams_cuda_get_api_fn)(int32_t version);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TRAMS_ENGINE_CUDA_CUDA_BACKEND_API_H_ */
