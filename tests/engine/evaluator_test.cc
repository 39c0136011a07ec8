// The evaluation protocol's loss aggregate in reference-compat mode: the authors' test() weights each
// segment's mean loss by the segment's length (accu_loss += seq_len * loss; loss = accu_loss / accu_lens),
// which differs from the mean over scored tokens when segments differ in length. The expected value is
// computed here from the PyTorch reference's log-probs (tests/golden), not from the engine.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "engine/evaluator.h"
#include "engine/transformer_xl.h"
#include "tests/engine/plain_model.h"
#include "tests/testing/golden_cases.h"

namespace trams::engine {
namespace {

using golden::GoldenDir;
using golden::ReadCase;
using golden::SettingsOf;
using test::LoadModel;
using test::Tokens;

class ReferenceCompatLossTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ReferenceCompatLossTest, EachSegmentMeanIsWeightedByTheSegmentLength) {
  const absl::StatusOr<nlohmann::json> read = ReadCase(GetParam());
  ASSERT_TRUE(read.ok()) << read.status();
  const nlohmann::json& c = *read;
  ASSERT_TRUE(c["reference_compat"].get<bool>());
  auto model = TransformerXL::Load(GoldenDir() + "/models/" + c["model"].get<std::string>());
  ASSERT_TRUE(model.ok()) << model.status();
  const auto inputs = c["inputs"].get<std::vector<std::vector<int32_t>>>();
  const int tgt_len = c["tgt_len"];
  const int streams = static_cast<int>(inputs.size());
  // 58 = 7 segments of 8 and one of 2 (one scored token): the two aggregates differ by ~0.03 here.
  const int len = 58;
  ASSERT_LT(len, static_cast<int>(inputs[0].size()));
  ASSERT_NE(len % tgt_len, 0);

  // Compat mode leaves each stream's last token out (the authors' iterator): feed one more.
  std::vector<int32_t> flat;
  for (const auto& stream : inputs) flat.insert(flat.end(), stream.begin(), stream.begin() + len + 1);

  // The authors' aggregate, and the per-token mean for contrast, from the reference log-probs.
  double weighted = 0, lengths = 0, nll = 0;
  int64_t scored = 0;
  for (int pos = 0; pos < len; pos += tgt_len) {
    const int n = std::min(tgt_len, len - pos);
    double seg_nll = 0;
    int seg_scored = 0;
    for (int b = 0; b < streams; ++b) {
      for (int t = pos; t < pos + n; ++t) {
        const auto& lp = c["logprobs"][b][t];
        if (lp.is_null()) continue;
        seg_nll -= lp.get<double>();
        ++seg_scored;
      }
    }
    ASSERT_GT(seg_scored, 0);
    weighted += n * (seg_nll / seg_scored);
    lengths += n;
    nll += seg_nll;
    scored += seg_scored;
  }
  const double expected = weighted / lengths;
  const double per_token = nll / static_cast<double>(scored);
  ASSERT_GT(std::abs(expected - per_token), 1e-3) << "the case must tell the two aggregates apart";

  EvalOptions options;
  options.settings = SettingsOf(c);
  options.tgt_len = tgt_len;
  options.batch = streams;
  options.reference_compat = true;
  auto result = Evaluate(**model, flat, options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->scored, scored);
  EXPECT_EQ(result->tokens, static_cast<int64_t>(len) * streams);
  EXPECT_NEAR(result->loss, expected, 1e-4) << "per-token mean would be " << per_token;
  EXPECT_NEAR(result->ppl, std::exp(result->loss), 1e-9 * result->ppl);

  // Outside compat mode the loss stays the mean over scored tokens.
  options.reference_compat = false;
  auto plain = Evaluate(**model, flat, options);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_GT(plain->scored, 0);
}

INSTANTIATE_TEST_SUITE_P(Cases, ReferenceCompatLossTest,
                         ::testing::Values("plain_postln_xl_compat", "plain_postln_trams_compat"));

TEST(EvaluatorTest, BadProtocolArgumentsAreRejected) {
  auto model = LoadModel();
  EvalOptions options;
  options.settings = TramsSettings::Xl(12);
  const auto ids = Tokens(50, 5);
  options.tgt_len = 0;
  EXPECT_NE(Evaluate(*model, ids, options).status().message().find("tgt_len"), absl::string_view::npos);
  options.tgt_len = 8;
  options.batch = 0;
  EXPECT_NE(Evaluate(*model, ids, options).status().message().find("batch"), absl::string_view::npos);
  options.batch = 30;
  EXPECT_NE(Evaluate(*model, ids, options).status().message().find("too short"), absl::string_view::npos);
  options.batch = 2;
  EXPECT_NE(Evaluate(*model, {}, options).status().message().find("too short"), absl::string_view::npos);
  auto r = Evaluate(*model, ids, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens, 50);
  EXPECT_EQ(r->scored, 48);  // the first token of each of the 2 streams has no context
}

}  // namespace
}  // namespace trams::engine
