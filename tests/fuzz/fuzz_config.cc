// Any bytes as config.json: ParseModelConfig refuses them or returns a config within the documented
// limits, whose derived sizes are consistent.
#include <cstdint>
#include <string_view>

#include "engine/model_config.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace trams;
  auto config = engine::ParseModelConfig(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!config.ok()) return 0;
  const engine::ModelConfig& c = *config;
  FUZZ_CHECK(c.Validate().ok());
  FUZZ_CHECK(c.n_layer >= 1 && c.n_layer <= engine::kMaxLayers);
  FUZZ_CHECK(c.attn_width() >= 1 && c.attn_width() <= engine::kMaxModelDim);
  FUZZ_CHECK(c.vocab_size >= 1 && c.vocab_size <= engine::kMaxModelDim);
  FUZZ_CHECK(c.ParameterCount() > 0 && c.ParameterCount() <= engine::kMaxParameters);
  const auto ends = c.cutoff_ends();
  FUZZ_CHECK(static_cast<int>(ends.size()) == c.n_clusters() + 2);
  for (size_t i = 1; i < ends.size(); ++i) FUZZ_CHECK(ends[i - 1] < ends[i]);
  for (int i = 0; i <= c.n_clusters(); ++i) FUZZ_CHECK(c.cluster_dim(i) >= 1 && c.cluster_dim(i) <= c.d_embed);
  FUZZ_CHECK(c.tie_projs.size() == c.cutoffs.size() + 1);
  return 0;
}
