#include "tests/testing/golden_compare.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "tests/testing/golden_cases.h"

namespace trams::golden {

using nlohmann::json;

void CompareWithGolden(engine::Engine& engine, const json& c, Comparison* result) {
  const engine::TramsSettings settings = SettingsOf(c);
  const bool compat = c.value("reference_compat", false);
  const auto inputs = c["inputs"].get<std::vector<std::vector<int32_t>>>();
  const int n = c["tgt_len"];
  const int streams = static_cast<int>(inputs.size());
  const int64_t length = static_cast<int64_t>(inputs[0].size());
  std::vector<std::unique_ptr<engine::EngineStream>> state;
  for (int b = 0; b < streams; ++b) {
    auto s = engine.NewStream(settings);
    ASSERT_TRUE(s.ok()) << s.status();
    if (compat) {
      const absl::Status filled = engine.FillPoolWithZeroStates(s->get());
      ASSERT_TRUE(filled.ok()) << filled;
    }
    state.push_back(std::move(*s));
  }
  engine::OutputOptions options;
  options.alternatives = 5;
  options.entropy = true;
  options.selections = true;
  int segment = 0;
  for (int64_t pos = 0; pos < length; pos += n, ++segment) {
    const int64_t len = std::min<int64_t>(n, length - pos);
    std::vector<engine::SegmentInput> batch;
    for (int b = 0; b < streams; ++b) {
      batch.push_back({state[b].get(), absl::MakeConstSpan(inputs[b]).subspan(pos, len), options});
    }
    std::vector<engine::SegmentOutput> out;
    const absl::Status st = engine.Forward(batch, &out);
    ASSERT_TRUE(st.ok()) << st;
    for (int b = 0; b < streams; ++b) {
      for (int64_t i = 0; i < len; ++i) {
        const json& want = c["logprobs"][b][pos + i];
        const float got = out[b].logprob[i];
        if (want.is_null()) {
          if (!compat) {
            EXPECT_TRUE(std::isnan(got)) << "stream " << b << " token " << pos + i << " should be unscored";
          }
          continue;
        }
        ASSERT_FALSE(std::isnan(got)) << "stream " << b << " token " << pos + i;
        result->max_logprob_error = std::max(result->max_logprob_error, std::fabs(got - want.get<double>()));
        EXPECT_NEAR(got, want.get<double>(), kLogProbTolerance) << "logprob, stream " << b << " token " << pos + i;
        const double want_ent = c["entropy"][b][pos + i];
        result->max_entropy_error = std::max(result->max_entropy_error, std::fabs(out[b].entropy[i] - want_ent));
        EXPECT_NEAR(out[b].entropy[i], want_ent, kLogProbTolerance) << "entropy, stream " << b << " token " << pos + i;
        const auto want_top = c["top_ids"][b][pos + i].get<std::vector<int32_t>>();
        std::vector<int32_t> got_top;
        for (const auto& alt : out[b].alternatives[i]) got_top.push_back(alt.id);
        EXPECT_EQ(got_top, want_top) << "top-5 ids, stream " << b << " token " << pos + i;
        ++result->logprobs;
      }
      const json& want_sel = c["selections"][segment];
      for (int l = 0; l < engine.config().n_layer; ++l) {
        for (int h = 0; h < engine.config().n_head; ++h) {
          const auto want = want_sel[l][b][h].get<std::vector<int>>();
          EXPECT_EQ(out[b].selections[l][h], want)
              << "selection, segment " << segment << " layer " << l << " stream " << b << " head " << h;
          if (!want.empty()) ++result->selections;
        }
      }
    }
  }
}

}  // namespace trams::golden
