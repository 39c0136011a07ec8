// Any config.json + .safetensors pair (the input split at its first NUL byte; JSON text has none):
// LoadModelWeights refuses them or gives weights of exactly the shapes the config calls for.
#include <cstdint>
#include <string>
#include <string_view>

#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/safetensors.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace trams;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  if (nul == std::string_view::npos) return 0;
  auto config = engine::ParseModelConfig(input.substr(0, nul));
  if (!config.ok()) return 0;
  auto file = engine::SafetensorsFile::FromBytes(std::string(input.substr(nul + 1)), "fuzz");
  if (!file.ok()) return 0;
  auto weights = engine::LoadModelWeights(*config, **file);
  if (!weights.ok()) return 0;
  const engine::ModelConfig& c = weights->config;
  FUZZ_CHECK(static_cast<int>(weights->layers.size()) == c.n_layer);
  FUZZ_CHECK(static_cast<int>(weights->output.size()) == c.n_clusters() + 1);
  const int64_t d = c.d_model, hd = c.attn_width();
  for (const engine::LayerWeights& l : weights->layers) {
    FUZZ_CHECK(l.qkv.rows == 3 * hd && l.qkv.cols == d);
    FUZZ_CHECK(l.ff1_w.rows == c.d_inner && l.ff2_w.rows == d);
    FUZZ_CHECK(l.r_w_bias.rows == c.n_head && l.r_w_bias.cols == c.d_head);
  }
  const auto ends = c.cutoff_ends();
  for (int i = 0; i <= c.n_clusters(); ++i) {
    const engine::OutputCluster& o = weights->output[i];
    FUZZ_CHECK(o.weight.rows == ends[i + 1] - ends[i]);
    FUZZ_CHECK(o.bias.cols == ends[i + 1] - ends[i]);
    FUZZ_CHECK(o.proj.empty() || o.proj.rows == d);
  }
  return 0;
}
