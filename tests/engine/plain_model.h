// The golden plain_postln model (tests/golden/models: V 97, 3 layers, d_model 32, 4 heads, f32) and the
// token streams the engine unit tests feed it. Test-only.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/transformer_xl.h"

namespace trams::engine::test {

inline const std::string kPlainModel = std::string(TRAMS_TEST_DATA_DIR) + "/golden/models/plain_postln";

inline std::unique_ptr<TransformerXL> LoadModel() {
  auto model = TransformerXL::Load(kPlainModel);
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(*model);
}

// `n` ids below the vocabulary size, a different stream for each seed.
inline std::vector<int32_t> Tokens(int n, int seed) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = (i * 37 + seed * 11 + (i * i) % 13) % 97;
  return ids;
}

// Feeds `ids` in segments of `seg` tokens; returns every token's log-prob.
inline std::vector<float> Score(TransformerXL& model, StreamState* stream, const std::vector<int32_t>& ids,
                                int seg) {
  std::vector<float> lp;
  for (size_t pos = 0; pos < ids.size(); pos += seg) {
    const size_t n = std::min<size_t>(seg, ids.size() - pos);
    std::vector<SegmentOutput> out;
    SegmentInput in{stream, absl::MakeConstSpan(ids).subspan(pos, n), {}};
    EXPECT_TRUE(model.Forward({in}, &out).ok());
    lp.insert(lp.end(), out[0].logprob.begin(), out[0].logprob.end());
  }
  return lp;
}

}  // namespace trams::engine::test
