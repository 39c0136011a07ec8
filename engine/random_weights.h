// Random weights of realistic scale for any config: benchmarks and tests that need no checkpoint.
#pragma once

#include <cstdint>

#include "engine/model_weights.h"

namespace trams::engine {

ModelWeights RandomModelWeights(const ModelConfig& config, uint64_t seed);

// The paper's two model shapes (Dai et al. 2019 base configs, as used by TRAMS).
ModelConfig WikiText103Config();  // 16 layers, d 410, adaptive softmax over 267,735 words
ModelConfig Enwik8Config();       // 12 layers, d 512, 204 characters

}  // namespace trams::engine
