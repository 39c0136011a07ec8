// A stream's whole state, independent of where its pool lives: what a session snapshot stores, what moves a
// session between replicas and what ForkSession copies. Engine::ExportStream makes one, ImportStream makes a
// stream from one on any backend with the same model and pool dtype; the continuation is bit-identical.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/engine.h"
#include "engine/model_config.h"
#include "engine/trams_settings.h"

namespace trams::engine {

// The furthest a stream can be (2^62 tokens): positions and counts read from a snapshot stay below it, so
// their sums and differences cannot overflow int64.
inline constexpr int64_t kMaxStreamPosition = int64_t{1} << 62;

struct StreamImage {
  TramsSettings settings;
  PoolDType pool_dtype = PoolDType::kF32;
  int size = 0;          // tokens in the pool
  int64_t position = 0;  // tokens consumed, at most kMaxStreamPosition
  // The last consumed token's final hidden state (d_model floats); empty before the first token.
  std::vector<float> last_hidden;
  // Every layer's rows in pool order (0 = oldest), layer after layer: [n_layer][size][H * Dh] elements as the
  // pool stores them (PoolDTypeBytes each, little-endian bits).
  std::string keys, values;
  // TRAMS scores of the layers that select, in layer order: [selecting layers][size][H].
  std::vector<float> scores;
};

// Bytes of one layer's keys (or values) in an image of `size` tokens.
int64_t ImageLayerBytes(const ModelConfig& config, PoolDType pool_dtype, int size);
// Layers of `settings` that keep TRAMS scores.
int ScoringLayers(const ModelConfig& config, const TramsSettings& settings);

// The image fits `config`: valid settings, size within the pool, hidden state iff a token was consumed,
// every array of exactly its size. INVALID_ARGUMENT naming what does not fit.
absl::Status CheckStreamImage(const ModelConfig& config, const StreamImage& image);
// FAILED_PRECONDITION unless an image of `image_dtype` can go into an engine whose pools store `engine_dtype`.
absl::Status CheckImageDType(PoolDType engine_dtype, PoolDType image_dtype);

}  // namespace trams::engine
