// Golden tests: the engine against the independent PyTorch reference (tests/reference/), through the
// committed files in tests/golden/. Tolerances: 1e-4 absolute on log-probs and entropies; TRAMS-selected
// pool indices and the top-5 ids must be identical.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/evaluator.h"
#include "engine/transformer_xl.h"
#include "tests/testing/golden_cases.h"

namespace trams::engine {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr double kLogProbTolerance = 1e-4;

using golden::CaseNames;
using golden::GoldenDir;
using golden::ReadJson;
using golden::SettingsOf;

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, MatchesReference) {
  const json c = ReadJson(GoldenDir() + "/cases/" + GetParam() + ".json");
  auto model = TransformerXL::Load(GoldenDir() + "/models/" + c["model"].get<std::string>());
  ASSERT_TRUE(model.ok()) << model.status();
  const TramsSettings settings = SettingsOf(c);
  const bool compat = c.value("reference_compat", false);
  const auto inputs = c["inputs"].get<std::vector<std::vector<int32_t>>>();
  const int n = c["tgt_len"];
  const int streams = static_cast<int>(inputs.size());
  const int64_t length = static_cast<int64_t>(inputs[0].size());

  std::vector<std::unique_ptr<StreamState>> state;
  for (int b = 0; b < streams; ++b) {
    auto s = (*model)->NewHostStream(settings);
    ASSERT_TRUE(s.ok()) << s.status();
    if (compat) (*model)->FillPoolWithZeroStates(s->get());
    state.push_back(std::move(*s));
  }
  OutputOptions options;
  options.alternatives = 5;
  options.entropy = true;
  options.selections = true;
  double max_lp_err = 0, max_ent_err = 0;
  int64_t compared = 0, selections_compared = 0;
  int segment = 0;
  for (int64_t pos = 0; pos < length; pos += n, ++segment) {
    const int64_t len = std::min<int64_t>(n, length - pos);
    std::vector<SegmentInput> batch;
    for (int b = 0; b < streams; ++b) {
      batch.push_back({state[b].get(), absl::MakeConstSpan(inputs[b]).subspan(pos, len), options});
    }
    std::vector<SegmentOutput> out;
    ASSERT_TRUE((*model)->Forward(batch, &out).ok());
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
        max_lp_err = std::max(max_lp_err, std::fabs(got - want.get<double>()));
        EXPECT_NEAR(got, want.get<double>(), kLogProbTolerance) << "logprob, stream " << b << " token " << pos + i;
        const double want_ent = c["entropy"][b][pos + i];
        max_ent_err = std::max(max_ent_err, std::fabs(out[b].entropy[i] - want_ent));
        EXPECT_NEAR(out[b].entropy[i], want_ent, kLogProbTolerance) << "entropy, stream " << b << " token " << pos + i;
        const auto want_top = c["top_ids"][b][pos + i].get<std::vector<int32_t>>();
        std::vector<int32_t> got_top;
        for (const auto& alt : out[b].alternatives[i]) got_top.push_back(alt.id);
        EXPECT_EQ(got_top, want_top) << "top-5 ids, stream " << b << " token " << pos + i;
        ++compared;
      }
      const json& want_sel = c["selections"][segment];
      for (int l = 0; l < (*model)->config().n_layer; ++l) {
        for (int h = 0; h < (*model)->config().n_head; ++h) {
          const auto want = want_sel[l][b][h].get<std::vector<int>>();
          EXPECT_EQ(out[b].selections[l][h], want)
              << "selection, segment " << segment << " layer " << l << " stream " << b << " head " << h;
          if (!want.empty()) ++selections_compared;
        }
      }
    }
  }
  EXPECT_GT(compared, 0);
  std::printf("[ golden ] %s: %lld log-probs, max |err| %.3g (entropy %.3g); %lld non-empty selections identical\n",
              GetParam().c_str(), static_cast<long long>(compared), max_lp_err, max_ent_err,
              static_cast<long long>(selections_compared));
  if (settings.mode == MemoryMode::kTrams && settings.mem_len > settings.topk + settings.remain) {
    EXPECT_GT(selections_compared, 0) << "the pool never filled past m: the case does not exercise selection";
  }
}

// The evaluation protocol over the same streams gives the mean of the golden log-probs.
TEST_P(GoldenTest, EvaluatorLossMatchesReference) {
  const json c = ReadJson(GoldenDir() + "/cases/" + GetParam() + ".json");
  if (c.value("reference_compat", false)) GTEST_SKIP() << "the evaluator's compat mode also drops each stream's last token";
  auto model = TransformerXL::Load(GoldenDir() + "/models/" + c["model"].get<std::string>());
  ASSERT_TRUE(model.ok()) << model.status();
  const auto inputs = c["inputs"].get<std::vector<std::vector<int32_t>>>();
  std::vector<int32_t> flat;
  double nll = 0;
  int64_t scored = 0;
  for (size_t b = 0; b < inputs.size(); ++b) {
    flat.insert(flat.end(), inputs[b].begin(), inputs[b].end());
    for (const auto& v : c["logprobs"][b]) {
      if (!v.is_null()) {
        nll -= v.get<double>();
        ++scored;
      }
    }
  }
  EvalOptions options;
  options.settings = SettingsOf(c);
  options.tgt_len = c["tgt_len"];
  options.batch = static_cast<int>(inputs.size());
  auto result = Evaluate(**model, flat, options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->scored, scored);
  EXPECT_NEAR(result->loss, nll / scored, kLogProbTolerance);
}

INSTANTIATE_TEST_SUITE_P(Cases, GoldenTest, ::testing::ValuesIn(CaseNames()),
                         [](const auto& param_info) { return param_info.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GoldenTest);

TEST(GoldenFiles, Present) {
  EXPECT_GE(CaseNames().size(), 10u) << "tests/golden/cases is missing or incomplete: regenerate with "
                                        "/usr/bin/python3 tests/reference/make_goldens.py";
}

}  // namespace
}  // namespace trams::engine
