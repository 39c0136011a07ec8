// The same session inputs give bit-identical results whatever the engine ran before (the hardening
// issue, item 14: fresh sessions differed by up to 4e-6 until the relative-position table had grown,
// because its rows were recomputed, with other rounding, at every growth).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "engine/transformer_xl.h"

namespace trams::engine {
namespace {

// The bundled model: its widths (d_model 256) are where the host BLAS picks different kernels for
// different row counts.
const std::string kModel = std::string(TRAMS_TEST_DATA_DIR) + "/../models/trams-byte-books";

std::vector<int32_t> Tokens(int n, int seed) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = (i * 37 + seed * 11 + (i * i) % 13) % 250;
  return ids;
}

std::vector<float> RunStream(TransformerXL& model, const TramsSettings& settings, const std::vector<int32_t>& ids, int seg) {
  auto stream = *model.NewHostStream(settings);
  std::vector<float> lp;
  for (size_t pos = 0; pos < ids.size(); pos += seg) {
    const size_t n = std::min<size_t>(seg, ids.size() - pos);
    std::vector<SegmentOutput> out;
    SegmentInput in{stream.get(), absl::MakeConstSpan(ids).subspan(pos, n), {}};
    EXPECT_TRUE(model.Forward({in}, &out).ok());
    lp.insert(lp.end(), out[0].logprob.begin(), out[0].logprob.end());
  }
  return lp;
}

TEST(DeterminismTest, ResultsDoNotDependOnWhatTheEngineRanBefore) {
  const TramsSettings settings = TramsSettings::Trams(400, 50, 150);
  const auto ids = Tokens(256, 3);
  auto fresh = TransformerXL::Load(kModel);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  const std::vector<float> first = RunStream(**fresh, settings, ids, 64);

  // A second engine first serves a stream with long segments and a large pool (the table grows far),
  // then the same input as above.
  auto used = TransformerXL::Load(kModel);
  ASSERT_TRUE(used.ok()) << used.status();
  RunStream(**used, TramsSettings::Xl(800), Tokens(1200, 5), 300);
  const std::vector<float> later = RunStream(**used, settings, ids, 64);

  ASSERT_EQ(first.size(), later.size());
  int differ = 0;
  for (size_t i = 0; i < first.size(); ++i) {
    if (std::memcmp(&first[i], &later[i], sizeof(float)) != 0) ++differ;
  }
  EXPECT_EQ(differ, 0) << differ << " of " << first.size() << " log-probs are not bit-identical";
}

// A provisional segment (commit = false) reports what a committed one would and leaves the stream as it
// was: what follows is bit-identical to a stream that never ran it.
TEST(DeterminismTest, AProvisionalSegmentLeavesTheStreamAsItWas) {
  auto model = TransformerXL::Load(kModel);
  ASSERT_TRUE(model.ok()) << model.status();
  const TramsSettings settings = TramsSettings::Trams(40, 8, 16);
  const auto ids = Tokens(160, 4);
  auto plain = *(*model)->NewHostStream(settings);
  auto tried = *(*model)->NewHostStream(settings);
  auto forward = [&](StreamState* stream, size_t from, size_t n, bool commit) {
    std::vector<SegmentOutput> out;
    SegmentInput in{stream, absl::MakeConstSpan(ids).subspan(from, n), {}, commit};
    EXPECT_TRUE((*model)->Forward({in}, &out).ok());
    return out[0].logprob;
  };
  for (size_t at = 0; at + 16 <= ids.size(); at += 16) {
    const auto provisional = forward(tried.get(), at, 5, /*commit=*/false);
    EXPECT_EQ(tried->position(), static_cast<int64_t>(at));
    EXPECT_EQ(tried->size(), plain->size());
    const auto a = forward(plain.get(), at, 16, true);
    const auto b = forward(tried.get(), at, 16, true);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << "segment at " << at;
    ASSERT_EQ(provisional.size(), 5u);
    for (size_t i = 0; i < 5; ++i) {
      if (std::isnan(a[i])) continue;
      EXPECT_NEAR(provisional[i], a[i], 1e-4) << "causal: the first 5 tokens see the same context";
    }
  }
}

}  // namespace
}  // namespace trams::engine
