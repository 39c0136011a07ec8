#include "engine/engine.h"

#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "engine/settings_rules.h"
#include "engine/stream_image.h"

namespace trams::engine {

absl::StatusOr<PoolDType> ParsePoolDType(const std::string& name) {
  if (name == "f32") return PoolDType::kF32;
  if (name == "f16") return PoolDType::kF16;
  if (name == "bf16") return PoolDType::kBF16;
  return absl::InvalidArgumentError("pool_dtype must be f32, f16 or bf16, got \"" + name + "\"");
}

absl::Status CheckBatch(const ModelConfig& config, absl::Span<const SegmentInput> batch) {
  if (batch.empty()) return absl::InvalidArgumentError(kEmptyBatchMessage);
  std::unordered_set<const EngineStream*> seen;
  for (size_t b = 0; b < batch.size(); ++b) {
    const SegmentInput& in = batch[b];
    const int64_t entry = static_cast<int64_t>(b);
    // The rules (and messages) the CUDA module also applies at its C ABI: settings_rules.h.
    std::string error = EntryStreamError(entry, in.stream != nullptr,
                                         in.stream != nullptr && !seen.insert(in.stream).second);
    if (error.empty()) {
      error = EntryTokensError(entry, in.tokens.data(), static_cast<int64_t>(in.tokens.size()), config.vocab_size,
                               in.options.alternatives);
    }
    if (!error.empty()) return absl::InvalidArgumentError(error);
  }
  return absl::OkStatus();
}

void DescribeSelectionWindow(const EngineStream& stream, SegmentOutput* out) {
  out->selection_base = stream.position() - stream.size();
  out->recent_from = stream.position() - RecentAttended(stream.settings().view(), stream.size());
}

absl::StatusOr<std::unique_ptr<EngineStream>> Engine::ForkStream(const EngineStream& stream) {
  absl::StatusOr<StreamImage> image = ExportStream(stream);
  if (!image.ok()) return image.status();
  return ImportStream(*image);
}

absl::Status CheckImageDType(PoolDType engine_dtype, PoolDType image_dtype) {
  if (engine_dtype == image_dtype) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("the stream's pool stores ", PoolDTypeName(image_dtype),
                                                    " but this engine's pools store ", PoolDTypeName(engine_dtype),
                                                    " (--pool_dtype): converting would change its results"));
}

}  // namespace trams::engine
