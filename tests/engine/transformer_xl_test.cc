// TransformerXL (engine/transformer_xl.h) contract tests: bad input gets a clear error and changes nothing;
// memory semantics that must hold whatever the weights (segmentation invariance while nothing is evicted,
// exact pool bytes); the next-token distribution; the memory-share statistic.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/transformer_xl.h"
#include "tests/engine/plain_model.h"
#include "tests/testing/status_matchers.h"

namespace trams::engine {
namespace {

using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

using test::LoadModel;
using test::Score;
using test::Tokens;

TEST(EngineTest, SegmentationDoesNotMatterWhileNothingIsEvicted) {
  auto model = LoadModel();
  const auto ids = Tokens(60, 1);
  for (const TramsSettings& settings : {TramsSettings::Xl(64), TramsSettings::Trams(64, 20, 44)}) {
    auto whole = *model->NewHostStream(settings);
    auto pieces = *model->NewHostStream(settings);
    auto single = *model->NewHostStream(settings);
    const auto a = Score(*model, whole.get(), ids, 60);
    const auto b = Score(*model, pieces.get(), ids, 7);
    const auto one = Score(*model, single.get(), ids, 1);  // decoding: the direct attention path
    ASSERT_EQ(a.size(), b.size());
    ASSERT_EQ(a.size(), one.size());
    EXPECT_TRUE(std::isnan(a[0]) && std::isnan(b[0]) && std::isnan(one[0])) << "the first token has no context";
    for (size_t i = 1; i < a.size(); ++i) {
      EXPECT_NEAR(a[i], b[i], 2e-5) << "token " << i;
      EXPECT_NEAR(a[i], one[i], 2e-5) << "token " << i;
    }
  }
}

TEST(EngineTest, NextTokenDistributionPredictsTheNextToken) {
  auto model = LoadModel();
  auto stream = *model->NewHostStream(TramsSettings::Trams(24, 4, 8));
  Score(*model, stream.get(), Tokens(40, 2), 8);
  std::vector<float> dist;
  ASSERT_TRUE(model->NextTokenLogProbs(*stream, &dist).ok());
  ASSERT_EQ(dist.size(), 97u);
  double total = 0;
  for (float lp : dist) total += std::exp(lp);
  EXPECT_NEAR(total, 1.0, 1e-5);
  const std::vector<int32_t> next = {42};
  std::vector<SegmentOutput> out;
  OutputOptions options;
  options.next_distribution = true;
  ASSERT_TRUE(model->Forward({{stream.get(), next, options}}, &out).ok());
  EXPECT_NEAR(out[0].logprob[0], dist[42], 1e-5);
  // The distribution after the segment, computed in the same forward, is what NextTokenLogProbs says.
  std::vector<float> after;
  ASSERT_TRUE(model->NextTokenLogProbs(*stream, &after).ok());
  ASSERT_EQ(out[0].next_logprobs.size(), after.size());
  for (size_t v = 0; v < after.size(); ++v) EXPECT_NEAR(out[0].next_logprobs[v], after[v], 1e-6);
}

TEST(EngineTest, PoolBytesAreExactAndFixed) {
  auto model = LoadModel();
  const TramsSettings settings = TramsSettings::Trams(24, 4, 8);
  auto stream = *model->NewHostStream(settings);
  // 3 layers x 24 tokens x (keys + values: 2 x 32 floats + 4 scores) + 32 floats of prediction state.
  EXPECT_EQ(StreamState::BytesFor(model->config(), settings), (3 * 24 * (2 * 32 + 4) + 32) * 4);
  EXPECT_EQ(stream->bytes(), StreamState::BytesFor(model->config(), settings));
  Score(*model, stream.get(), Tokens(100, 3), 8);
  EXPECT_EQ(stream->size(), 24);
  EXPECT_EQ(stream->position(), 100);
  EXPECT_EQ(stream->bytes(), StreamState::BytesFor(model->config(), settings));
}

TEST(EngineTest, BadTokensAreRejectedAndLeaveTheStreamAsItWas) {
  auto model = LoadModel();
  auto stream = *model->NewHostStream(TramsSettings::Trams(24, 4, 8));
  Score(*model, stream.get(), Tokens(30, 4), 8);
  const auto keys_before = stream->layer(0).keys;
  const int64_t position = stream->position();
  std::vector<SegmentOutput> out;
  for (const std::vector<int32_t>& bad : {std::vector<int32_t>{1, 2, 97}, std::vector<int32_t>{-1}}) {
    absl::Status s = model->Forward({{stream.get(), bad, {}}}, &out);
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("outside the vocabulary")));
  }
  absl::Status empty = model->Forward({{stream.get(), {}, {}}}, &out);
  EXPECT_THAT(empty, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no tokens")));
  const std::vector<int32_t> ok = {1, 2};
  absl::Status twice = model->Forward({{stream.get(), ok, {}}, {stream.get(), ok, {}}}, &out);
  EXPECT_NE(twice.message().find("repeats a stream"), absl::string_view::npos) << twice;
  EXPECT_EQ(stream->position(), position);
  EXPECT_EQ(stream->layer(0).keys, keys_before);
}

TEST(EngineTest, EmptyStreamHasNoNextTokenDistribution) {
  auto model = LoadModel();
  auto stream = *model->NewHostStream(TramsSettings::Xl(8));
  std::vector<float> dist;
  EXPECT_EQ(model->NextTokenLogProbs(*stream, &dist).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(MemoryShareTest, MeasuredOnlyWhereTramsSelects) {
  auto model = LoadModel();
  auto stream = *model->NewHostStream(TramsSettings::Trams(24, 4, 8));
  auto xl = *model->NewHostStream(TramsSettings::Xl(12));
  const auto ids = Tokens(48, 10);
  OutputOptions options;
  options.memory_share = true;
  int samples = 0;
  for (size_t pos = 0; pos < ids.size(); pos += 8) {
    auto seg = absl::MakeConstSpan(ids).subspan(pos, 8);
    std::vector<SegmentOutput> out;
    ASSERT_TRUE(model->Forward({{stream.get(), seg, options}, {xl.get(), seg, options}}, &out).ok());
    EXPECT_EQ(out[1].memory_share_samples, 0) << "XL never selects";
    if (stream->size() > 12 + 8) {  // the pool held more than m before this segment
      EXPECT_EQ(out[0].memory_share_samples, 3 * 4) << "every layer and head selects";
    }
    if (out[0].memory_share_samples > 0) {
      const double sel = out[0].memory_share_selected / out[0].memory_share_samples;
      const double rec = out[0].memory_share_recent / out[0].memory_share_samples;
      EXPECT_GT(sel, 0.0);
      EXPECT_LT(sel, 1.0);
      EXPECT_GT(rec, 0.0);
      EXPECT_LT(rec, 1.0);
      EXPECT_NE(sel, rec);
      samples += out[0].memory_share_samples;
    }
  }
  EXPECT_GT(samples, 0);
}

}  // namespace
}  // namespace trams::engine
