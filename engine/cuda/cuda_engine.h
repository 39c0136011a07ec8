// CudaEngine: the engine on a CUDA backend (or its host emulation), behind the C ABI of
// cuda_backend_api.h, with TransformerXL's types: ModelWeights in, TramsSettings per stream,
// OutputOptions / SegmentOutput per segment (engine/transformer_xl.h). Entropy and alternatives are
// computed on the host from the full distributions the device returns. Not computed on the device:
// OutputOptions::memory_share (its samples stay 0).
// Thread safety: the device context serializes calls; a CudaStream is used by one call at a time and must
// be destroyed before its engine.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/cuda/cuda_backend_api.h"
#include "engine/model_weights.h"
#include "engine/transformer_xl.h"

namespace trams::cuda {

struct CudaEngineOptions {
  int device = 0;
  trams_cuda_dtype weight_dtype = TRAMS_CUDA_F32;
  int64_t arena_bytes = int64_t{1} << 30;  // session pools
  bool allow_tf32 = false;
  int64_t output_chunk_floats = 0;  // 0: the module's default
};

// `weights` as the C ABI's structs: pointers into `weights`, which must outlive the view.
class ModelView {
 public:
  explicit ModelView(const ModelWeights& weights);
  const trams_cuda_model& get() const { return model_; }

 private:
  trams_cuda_model model_{};
  std::vector<int64_t> cutoffs_;
  std::vector<trams_cuda_embedding_cluster> embedding_;
  std::vector<trams_cuda_layer_weights> layers_;
  std::vector<trams_cuda_output_cluster> output_;
};

// TramsSettings as the C ABI's struct (`layers` must outlive the result).
trams_cuda_stream_settings ToCudaSettings(const TramsSettings& settings);

class CudaStream {
 public:
  ~CudaStream();
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;

  const TramsSettings& settings() const { return settings_; }
  int64_t position() const { return position_; }
  absl::StatusOr<trams_cuda_stream_info> Info() const;

  // StreamState's transactions: Rollback() restores the pools, cursor and prediction state of Begin().
  absl::Status BeginTransaction();
  absl::Status Commit();
  absl::Status Rollback();

 private:
  friend class CudaEngine;
  CudaStream() = default;
  const trams_cuda_api* api_ = nullptr;
  trams_cuda_context* ctx_ = nullptr;
  trams_cuda_stream* stream_ = nullptr;
  TramsSettings settings_;
  int64_t position_ = 0;
  int64_t saved_position_ = 0;
};

struct CudaSegmentInput {
  CudaStream* stream = nullptr;
  absl::Span<const int32_t> tokens;
  OutputOptions options;
};

class CudaEngine {
 public:
  // `api`: CudaModule::api() or EmulatedApi(). The weights are copied to the device.
  static absl::StatusOr<std::unique_ptr<CudaEngine>> Create(const trams_cuda_api* api, const ModelWeights& weights,
                                                            const CudaEngineOptions& options = {});
  ~CudaEngine();
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  const ModelConfig& config() const { return config_; }
  const char* backend() const { return api_->backend; }

  absl::StatusOr<std::unique_ptr<CudaStream>> NewStream(const TramsSettings& settings);
  absl::StatusOr<int64_t> StreamBytes(const TramsSettings& settings);
  absl::Status FillPoolWithZeroStates(CudaStream* stream);
  // As TransformerXL::Forward: all-or-nothing per batch (except device errors, see the C ABI).
  absl::Status Forward(absl::Span<const CudaSegmentInput> batch, std::vector<SegmentOutput>* outputs);
  absl::Status NextTokenLogProbs(const CudaStream& stream, std::vector<float>* out);
  absl::StatusOr<trams_cuda_device_info> DeviceInfo();

 private:
  CudaEngine() = default;
  absl::Status Check(trams_cuda_code code) const;

  const trams_cuda_api* api_ = nullptr;
  trams_cuda_context* ctx_ = nullptr;
  ModelConfig config_;
};

}  // namespace trams::cuda
