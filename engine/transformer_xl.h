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
#include "engine/engine.h"
#include "engine/host_ops.h"
#include "engine/stream_state.h"
#include "engine/model_weights.h"
#include "engine/output_layer.h"
#include "engine/rel_position.h"
#include "engine/trams_selector.h"

namespace trams::engine {

struct EngineOptions {
  int threads = 0;  // <= 0: one per hardware core
  // How every stream's pool stores keys and values (DESIGN.md, "Pool storage dtype").
  PoolDType pool_dtype = PoolDType::kF32;
};

class TransformerXL final : public Engine {
 public:
  static absl::StatusOr<std::unique_ptr<TransformerXL>> Load(const std::string& model_dir,
                                                             const EngineOptions& options = {});
  static std::unique_ptr<TransformerXL> FromWeights(ModelWeights weights, const EngineOptions& options = {});

  // Engine. Streams are StreamStates in host memory; once checked, a forward cannot fail, so a stream
  // either advances by its whole segment or not at all.
  const ModelConfig& config() const override { return weights_.config; }
  std::string device() const override { return "cpu"; }
  absl::StatusOr<int64_t> StreamBytes(const TramsSettings& settings) override;
  absl::StatusOr<std::unique_ptr<EngineStream>> NewStream(const TramsSettings& settings) override;
  absl::Status FillPoolWithZeroStates(EngineStream* stream) override;
  absl::Status Forward(absl::Span<const SegmentInput> batch, std::vector<SegmentOutput>* outputs) override;
  absl::Status NextTokenLogProbs(const EngineStream& stream, std::vector<float>* out) override;
  absl::StatusOr<EngineMemory> Memory() override;
  absl::StatusOr<StreamImage> ExportStream(const EngineStream& stream) override;
  absl::StatusOr<std::unique_ptr<EngineStream>> ImportStream(const StreamImage& image) override;
  const std::string& model_fingerprint() const override { return fingerprint_; }

  // The same stream with its host arrays visible (tests, tools that inspect pools).
  absl::StatusOr<std::unique_ptr<StreamState>> NewHostStream(const TramsSettings& settings) const;

 private:
  TransformerXL(ModelWeights weights, const EngineOptions& options);

  struct Batch;
  struct MemoryShareSample {
    double selected = 0, recent = 0;
    bool valid = false;
  };
  // CheckBatch, plus: every stream is one of this model's StreamStates (returned in `streams`).
  absl::Status Check(absl::Span<const SegmentInput> batch, std::vector<StreamState*>* streams) const;
  StreamState* HostStream(EngineStream* stream) const;  // null if not this model's
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
  PoolDType pool_dtype_ = PoolDType::kF32;
  std::string fingerprint_;
  std::mutex forward_mu_;
};

}  // namespace trams::engine
