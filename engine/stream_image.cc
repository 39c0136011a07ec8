#include "engine/stream_image.h"

#include "absl/strings/str_cat.h"

namespace trams::engine {

int64_t ImageLayerBytes(const ModelConfig& config, PoolDType pool_dtype, int size) {
  return static_cast<int64_t>(size) * config.attn_width() * PoolDTypeBytes(pool_dtype);
}

int ScoringLayers(const ModelConfig& config, const TramsSettings& settings) {
  int n = 0;
  for (int l = 0; l < config.n_layer; ++l) n += settings.SelectsOnLayer(l) ? 1 : 0;
  return n;
}

absl::Status CheckStreamImage(const ModelConfig& config, const StreamImage& image) {
  if (absl::Status s = image.settings.Validate(config); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("the stream's memory settings do not fit the model: ", s.message()));
  }
  if (image.pool_dtype != PoolDType::kF32 && image.pool_dtype != PoolDType::kF16 &&
      image.pool_dtype != PoolDType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("unknown pool dtype ", static_cast<int>(image.pool_dtype)));
  }
  if (image.size < 0 || image.size > image.settings.mem_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("the pool holds ", image.size, " tokens but its capacity is ", image.settings.mem_len));
  }
  if (image.position < 0 || image.position > kMaxStreamPosition) {
    return absl::InvalidArgumentError(absl::StrCat("position ", image.position, " is outside [0, 2^62]"));
  }
  const size_t hidden = image.position == 0 ? 0 : static_cast<size_t>(config.d_model);
  if (image.last_hidden.size() != hidden) {
    return absl::InvalidArgumentError(absl::StrCat("the hidden state has ", image.last_hidden.size(),
                                                   " floats; a stream at position ", image.position, " has ", hidden));
  }
  const int64_t pool = ImageLayerBytes(config, image.pool_dtype, image.size) * config.n_layer;
  if (static_cast<int64_t>(image.keys.size()) != pool || static_cast<int64_t>(image.values.size()) != pool) {
    return absl::InvalidArgumentError(absl::StrCat("the pool's keys and values have ", image.keys.size(), " and ",
                                                   image.values.size(), " bytes; ", image.size, " tokens of ",
                                                   PoolDTypeName(image.pool_dtype), " need ", pool));
  }
  const int64_t scores =
      static_cast<int64_t>(ScoringLayers(config, image.settings)) * image.size * config.n_head;
  if (static_cast<int64_t>(image.scores.size()) != scores) {
    return absl::InvalidArgumentError(
        absl::StrCat("the pool's TRAMS scores have ", image.scores.size(), " floats; the settings need ", scores));
  }
  return absl::OkStatus();
}

}  // namespace trams::engine
