// Transformer-XL with a per-stream memory pool and TRAMS selection, on the host.
// Semantics: engine/DESIGN.md. One Forward() runs a batch of independent streams, each with its
// own segment (lengths may differ) and its own TramsSettings.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/host_ops.h"
#include "engine/memory_pool.h"
#include "engine/model_weights.h"
#include "engine/output_layer.h"
#include "engine/rel_position.h"
#include "engine/trams_selector.h"

namespace trams {

struct EngineOptions {
  int threads = 0;  // <= 0: one per hardware core
};

struct OutputOptions {
  int alternatives = 0;       // top-k alternatives per scored token (0 = none)
  bool entropy = false;       // entropy of each scoring distribution (needs the full vocabulary)
  bool selections = false;    // record TRAMS-selected pool indices
  bool next_distribution = false;  // log p(v | segment) for every v after the segment's last token
  // TRAMS statistic (costs an extra attention pass per selecting head): attention mass on the memory
  // tokens TRAMS attends vs on the newest m tokens plain XL would attend, same queries.
  bool memory_share = false;
};

struct SegmentInput {
  StreamState* stream = nullptr;
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
  std::vector<float> next_logprobs;  // vocab_size floats, when requested
  // Sums over selecting (layer, head) pairs of the mean memory share; divide by the sample count.
  double memory_share_selected = 0;
  double memory_share_recent = 0;
  int memory_share_samples = 0;
  int64_t tokens_scored = 0;
};

class TransformerXL {
 public:
  static absl::StatusOr<std::unique_ptr<TransformerXL>> Load(const std::string& model_dir,
                                                             const EngineOptions& options = {});
  static std::unique_ptr<TransformerXL> FromWeights(ModelWeights weights, const EngineOptions& options = {});

  const ModelConfig& config() const { return weights_.config; }

  // A new stream with an empty pool; settings are validated against the model.
  absl::StatusOr<std::unique_ptr<StreamState>> NewStream(const TramsSettings& settings) const;
  // The reference code's start: every layer's pool holds M zero hidden states.
  void FillPoolWithZeroStates(StreamState* stream) const;

  // Runs one segment per stream. All arguments are checked before any stream changes; once checked,
  // the forward cannot fail, so a stream either advances by its whole segment or not at all.
  // Streams must be distinct. Calls are serialized internally.
  absl::Status Forward(absl::Span<const SegmentInput> batch, std::vector<SegmentOutput>* outputs);

  // log p(v | stream so far) for every id v (vocab_size floats); the stream must have consumed a token.
  absl::Status NextTokenLogProbs(const StreamState& stream, std::vector<float>* out);

 private:
  TransformerXL(ModelWeights weights, const EngineOptions& options);

  struct Batch;
  struct MemoryShareSample {
    double selected = 0, recent = 0;
    bool valid = false;
  };
  absl::Status Check(absl::Span<const SegmentInput> batch) const;
  void AttentionProbs(int layer, int stream, int head, const Batch& b, const std::vector<int>& chosen,
                      std::vector<float>* probs, std::vector<const float*>* value_rows) const;
  void Embed(Batch& b) const;
  void AttentionLayer(int layer, Batch& b, std::vector<SegmentOutput>* outputs);
  void AttendOne(int layer, int stream, int head, Batch& b, std::vector<int>* selected,
                 std::vector<float>* selected_scores, MemoryShareSample* share);
  void FeedForwardLayer(int layer, Batch& b);
  void Score(Batch& b, std::vector<SegmentOutput>* outputs);

  ModelWeights weights_;
  ThreadPool pool_;
  OutputLayer output_;
  RelPositionTable rel_;
  std::vector<TramsScorer> scorers_;  // per layer
  std::mutex forward_mu_;
};

}  // namespace trams
