// CudaEngine: the Engine (engine/engine.h) on a CUDA backend (or its host emulation), behind the C ABI
// of cuda_backend_api.h: ModelWeights in, TramsSettings per stream, SegmentInput / SegmentOutput per
// segment. Not computed on the device: OutputOptions::memory_share (its samples stay 0).
// Thread safety: the device context serializes calls; a CudaStream is used by one call at a time and must
// be destroyed before its engine.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/cuda/cuda_backend_api.h"
#include "engine/model_weights.h"
#include "engine/engine.h"
#include "engine/stream_image.h"

namespace trams::cuda {

struct CudaEngineOptions {
  int device = 0;
  trams_cuda_dtype weight_dtype = TRAMS_CUDA_F32;
  trams_cuda_dtype pool_dtype = TRAMS_CUDA_F32;  // session pools' keys and values (trams_cuda_options.pool_dtype)
  int64_t arena_bytes = int64_t{1} << 30;  // session pools; 0: arena_fraction of the free device memory
  double arena_fraction = 0;
  bool allow_tf32 = false;
  int64_t output_chunk_floats = 0;  // 0: the module's default
};

// `weights` as the C ABI's structs: pointers into `weights`, which must outlive the view.
class ModelView {
 public:
  explicit ModelView(const engine::ModelWeights& weights);
  const trams_cuda_model& get() const { return model_; }

 private:
  trams_cuda_model model_{};
  std::vector<int64_t> cutoffs_;
  std::vector<trams_cuda_embedding_cluster> embedding_;
  std::vector<trams_cuda_layer_weights> layers_;
  std::vector<trams_cuda_output_cluster> output_;
};

// TramsSettings as the C ABI's struct (`layers` must outlive the result).
trams_cuda_stream_settings ToCudaSettings(const engine::TramsSettings& settings);

class CudaStream final : public engine::EngineStream {
 public:
  ~CudaStream() override;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;

  const engine::TramsSettings& settings() const override { return settings_; }
  int size() const override { return size_; }
  int64_t position() const override { return position_; }
  int64_t bytes() const override { return bytes_; }
  absl::StatusOr<trams_cuda_stream_info> Info() const;

  // Rollback() restores the pools, cursor and prediction state of Begin() (C ABI: the undo log lives in
  // host memory).
  absl::Status BeginTransaction() override;
  absl::Status Commit() override;
  absl::Status Rollback() override;
  bool in_transaction() const override { return in_transaction_; }
  int64_t undo_bytes() const override;

 private:
  friend class CudaEngine;
  CudaStream() = default;
  const trams_cuda_api* api_ = nullptr;
  trams_cuda_context* ctx_ = nullptr;
  trams_cuda_stream* stream_ = nullptr;
  engine::TramsSettings settings_;
  // The cursor as the module keeps it, mirrored so that reading it never waits for a running forward.
  int size_ = 0;
  int64_t position_ = 0;
  int64_t bytes_ = 0;
  bool in_transaction_ = false;
  int saved_size_ = 0;
  int64_t saved_position_ = 0;
};

// The Engine on a CUDA backend: a real device ("cuda:N") or its host emulation ("emulated:N").
class CudaEngine final : public engine::Engine {
 public:
  // `api`: CudaModule::api() or EmulatedApi(). The weights are copied to the device.
  static absl::StatusOr<std::unique_ptr<CudaEngine>> Create(const trams_cuda_api* api, const engine::ModelWeights& weights,
                                                            const CudaEngineOptions& options = {});
  ~CudaEngine() override;
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  const engine::ModelConfig& config() const override { return config_; }
  std::string device() const override;
  const char* backend() const { return api_->backend; }

  absl::StatusOr<int64_t> StreamBytes(const engine::TramsSettings& settings) override;
  absl::StatusOr<std::unique_ptr<engine::EngineStream>> NewStream(const engine::TramsSettings& settings) override;
  absl::Status FillPoolWithZeroStates(engine::EngineStream* stream) override;
  // Entropy and alternatives are computed on the host from full distributions the device returns.
  absl::Status Forward(absl::Span<const engine::SegmentInput> batch, std::vector<engine::SegmentOutput>* outputs) override;
  absl::Status NextTokenLogProbs(const engine::EngineStream& stream, std::vector<float>* out) override;
  absl::StatusOr<engine::EngineMemory> Memory() override;
  absl::StatusOr<engine::StreamImage> ExportStream(const engine::EngineStream& stream) override;
  absl::StatusOr<std::unique_ptr<engine::EngineStream>> ImportStream(const engine::StreamImage& image) override;
  const std::string& model_fingerprint() const override { return fingerprint_; }
  absl::StatusOr<trams_cuda_device_info> DeviceInfo();

 private:
  CudaEngine() = default;
  absl::Status Check(trams_cuda_code code) const;
  CudaStream* Own(const engine::EngineStream* stream) const;  // null if not one of this engine's streams

  const trams_cuda_api* api_ = nullptr;
  trams_cuda_context* ctx_ = nullptr;
  engine::ModelConfig config_;
  int device_ = 0;
  engine::PoolDType pool_dtype_ = engine::PoolDType::kF32;
  std::string fingerprint_;
};

}  // namespace trams::cuda
