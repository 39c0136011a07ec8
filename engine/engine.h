// The one engine interface: what the server, the evaluator and the benchmarks use, whatever holds the
// session pools (host memory: TransformerXL; a CUDA device or its host emulation: cuda::CudaEngine).
// Semantics: engine/DESIGN.md. A backend differs only in where the pools live and how the math runs.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model_config.h"
#include "engine/trams_settings.h"

namespace trams::engine {

struct StreamImage;  // engine/stream_image.h

// How a stream's pool stores each token's key and value rows (server-wide, both backends): f32, or rounded
// to f16/bf16 (round to nearest even, engine/cuda/hd_common.cuh) and read back as f32. Scores, the last
// hidden state and all accumulation stay f32. Values are trams_cuda_dtype's.
enum class PoolDType : int32_t { kF32 = 0, kF16 = 1, kBF16 = 2 };
inline int PoolDTypeBytes(PoolDType t) { return t == PoolDType::kF32 ? 4 : 2; }
inline const char* PoolDTypeName(PoolDType t) {
  return t == PoolDType::kF32 ? "f32" : t == PoolDType::kF16 ? "f16" : "bf16";
}
// "f32" | "f16" | "bf16"; INVALID_ARGUMENT otherwise (the message names the flag's values).
absl::StatusOr<PoolDType> ParsePoolDType(const std::string& name);

struct OutputOptions {
  int alternatives = 0;       // top-k alternatives per scored token (0 = none)
  bool entropy = false;       // entropy of each scoring distribution (needs the full vocabulary)
  bool selections = false;    // record TRAMS-selected pool indices
  bool next_distribution = false;  // log p(v | segment) for every v after the segment's last token
  // TRAMS statistic (costs an extra attention pass per selecting head): attention mass on the memory
  // tokens TRAMS attends vs on the newest m tokens plain XL would attend, same queries. Host only: on
  // other backends its samples stay 0.
  bool memory_share = false;
};

// One session's memory pool and cursor, owned by the engine that made it (and destroyed before it).
// Used by one call at a time.
class EngineStream {
 public:
  virtual ~EngineStream() = default;
  virtual const TramsSettings& settings() const = 0;
  int capacity() const { return settings().mem_len; }
  virtual int size() const = 0;          // tokens in the pool (<= capacity)
  virtual int64_t position() const = 0;  // tokens consumed since the stream started
  virtual int64_t bytes() const = 0;     // pool + prediction state, where the pools live

  // Transactions make a multi-segment request all-or-nothing: after BeginTransaction(), each forward first
  // saves the live pool rows it is about to overwrite, Rollback() restores them and the cursor, Commit()
  // drops the log. Begin inside a transaction restarts it; Commit/Rollback outside one do nothing.
  virtual absl::Status BeginTransaction() = 0;
  virtual absl::Status Commit() = 0;
  virtual absl::Status Rollback() = 0;
  virtual bool in_transaction() const = 0;
  virtual int64_t undo_bytes() const = 0;  // the transaction's saved rows (host memory)
};

struct SegmentInput {
  EngineStream* stream = nullptr;
  absl::Span<const int32_t> tokens;  // at least one token
  OutputOptions options;
  // false: a provisional segment. The outputs are computed as usual, but the stream does not change
  // (nothing enters the pool): the server runs an incomplete last segment this way, so that segment
  // boundaries stay at fixed multiples of the segment length from a stream's start.
  bool commit = true;
};

struct TokenAlternative {
  int32_t id;
  float logprob;
};

struct SegmentOutput {
  // logprob[i] = log p(tokens[i] | everything before); NaN for the first token of a stream.
  std::vector<float> logprob;
  std::vector<float> entropy;                               // same indexing, when requested
  std::vector<std::vector<TokenAlternative>> alternatives;  // same indexing, when requested
  // selections[layer][head] = selected pool indices (0 = oldest), empty where nothing was selected.
  std::vector<std::vector<std::vector<int>>> selections;
  std::vector<std::vector<std::vector<float>>> selection_scores;  // their TRAMS scores, same shape
  // With selections, in stream positions: pool index i held position selection_base + i, and the memory
  // attended whole (the newest `remain` where TRAMS selected, else all attended) starts at recent_from.
  int64_t selection_base = 0;
  int64_t recent_from = 0;
  std::vector<float> next_logprobs;  // vocab_size floats, when requested
  // Sums over selecting (layer, head) pairs of the mean memory share; divide by the sample count.
  double memory_share_selected = 0;
  double memory_share_recent = 0;
  int memory_share_samples = 0;
  int64_t tokens_scored = 0;
};

// Where the pools live and how full it is. Device figures are absent (has_device_memory false) on the
// host; the arena is absent where pools are allocated one by one (the host).
struct EngineMemory {
  std::string device;  // "cpu", "cuda:0", "emulated:0"
  bool has_device_memory = false;
  int64_t device_used_bytes = 0;   // whole device (cudaMemGetInfo), every process
  int64_t device_total_bytes = 0;
  bool has_arena = false;
  int64_t arena_used_bytes = 0;    // session pools carved from the arena
  int64_t arena_capacity_bytes = 0;
  int64_t arena_largest_free_bytes = 0;
  int64_t weights_bytes = 0;       // model weights and precomputed tables where the math runs
  int streams = 0;                 // live streams of this engine (-1: not counted)
};

class Engine {
 public:
  virtual ~Engine() = default;

  virtual const ModelConfig& config() const = 0;
  // "cpu", "cuda:N" (a GPU) or "emulated:N" (the CUDA path run on the host, for tests).
  virtual std::string device() const = 0;

  // Exact bytes a stream with these settings takes where the pools live (what NewStream allocates);
  // INVALID_ARGUMENT for settings the model cannot run.
  virtual absl::StatusOr<int64_t> StreamBytes(const TramsSettings& settings) = 0;
  // A new stream with an empty pool; settings are validated against the model. RESOURCE_EXHAUSTED when
  // the place the pools live is full.
  virtual absl::StatusOr<std::unique_ptr<EngineStream>> NewStream(const TramsSettings& settings) = 0;
  // The reference code's start: every layer's pool holds M zero hidden states.
  virtual absl::Status FillPoolWithZeroStates(EngineStream* stream) = 0;

  // Runs one segment per stream (distinct streams of this engine). Everything is checked before any stream
  // changes, so on an error every stream is as it was (but see the CUDA backend's INTERNAL); on success
  // each committing stream advanced by its whole segment. Calls are serialized by the engine.
  virtual absl::Status Forward(absl::Span<const SegmentInput> batch, std::vector<SegmentOutput>* outputs) = 0;
  // log p(v | stream so far) for every id v (vocab_size floats); the stream must have consumed a token.
  virtual absl::Status NextTokenLogProbs(const EngineStream& stream, std::vector<float>* out) = 0;

  virtual absl::StatusOr<EngineMemory> Memory() = 0;

  // Snapshots, migration and forks (engine/stream_image.h). ExportStream copies the stream's whole state
  // out (the stream is unchanged); inside a transaction it is FAILED_PRECONDITION (the state is not settled).
  virtual absl::StatusOr<StreamImage> ExportStream(const EngineStream& stream) = 0;
  // A new stream holding `image`: INVALID_ARGUMENT unless CheckStreamImage passes, FAILED_PRECONDITION for
  // an image of another pool dtype, RESOURCE_EXHAUSTED as NewStream. It continues bit-identically.
  virtual absl::StatusOr<std::unique_ptr<EngineStream>> ImportStream(const StreamImage& image) = 0;
  // A new stream that starts as an exact copy of `stream` (ExportStream, then ImportStream).
  virtual absl::StatusOr<std::unique_ptr<EngineStream>> ForkStream(const EngineStream& stream);
  // The model's identity (config and weights, ModelFingerprint): a stream image restores only onto the same.
  virtual const std::string& model_fingerprint() const = 0;
};

// The batch checks every backend makes before anything runs, with one set of messages: a non-empty batch,
// a stream per entry, no stream twice, tokens in every entry and in the vocabulary, sane options.
absl::Status CheckBatch(const ModelConfig& config, absl::Span<const SegmentInput> batch);

// Sets `out`'s selection_base and recent_from for the segment `stream` runs next (call before it runs).
void DescribeSelectionWindow(const EngineStream& stream, SegmentOutput* out);

}  // namespace trams::engine
