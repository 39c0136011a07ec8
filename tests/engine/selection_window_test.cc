// SegmentOutput's selection_base and recent_from: where the selected pool indices sit in the stream and
// where the memory attended whole begins, on the host engine and on the CUDA path (emulated), so that a
// caller never re-derives TRAMS's rule (RecentAttended) to explain a selection.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/open_engine.h"
#include "engine/settings_rules.h"

namespace trams::engine {
namespace {

TEST(RecentAttendedTest, RemainOnceTramsSelectsElseAllAttended) {
  const TramsSettings trams = TramsSettings::Trams(32, 4, 6);
  EXPECT_EQ(RecentAttended(trams.view(), 0), 0);
  EXPECT_EQ(RecentAttended(trams.view(), 10), 10) << "pool <= topk + remain: all of it is attended";
  EXPECT_EQ(RecentAttended(trams.view(), 11), 6) << "selection runs: the newest `remain` are attended whole";
  EXPECT_EQ(RecentAttended(trams.view(), 32), 6);
  const TramsSettings xl = TramsSettings::Xl(12);
  EXPECT_EQ(RecentAttended(xl.view(), 5), 5);
  EXPECT_EQ(RecentAttended(xl.view(), 12), 12);
  EXPECT_EQ(RecentAttended(TramsSettings::NoMemory().view(), 0), 0);
}

class SelectionWindowTest : public ::testing::TestWithParam<std::string> {};

TEST_P(SelectionWindowTest, SelectionsComeWithTheirStreamPositions) {
  DeviceChoice choice;
  choice.device = GetParam();
  choice.threads = 1;
  absl::StatusOr<OpenedEngine> opened =
      OpenEngine(std::string(TRAMS_TEST_DATA_DIR) + "/golden/models/adaptive_samelen", choice);
  ASSERT_TRUE(opened.ok()) << opened.status();
  Engine& engine = *opened->engine;
  const TramsSettings settings = TramsSettings::Trams(24, 3, 5);
  absl::StatusOr<std::unique_ptr<EngineStream>> stream = engine.NewStream(settings);
  ASSERT_TRUE(stream.ok()) << stream.status();
  const int n = 6;
  int64_t selected_somewhere = 0;
  for (int segment = 0; segment < 8; ++segment) {
    const int64_t position = (*stream)->position();
    const int pool = (*stream)->size();
    std::vector<int32_t> tokens;
    for (int i = 0; i < n; ++i) tokens.push_back(static_cast<int32_t>((position + i) * 7 % 250));
    SegmentInput in;
    in.stream = stream->get();
    in.tokens = tokens;
    in.options.selections = true;
    std::vector<SegmentOutput> out;
    ASSERT_TRUE(engine.Forward({&in, 1}, &out).ok());
    const SegmentOutput& o = out[0];
    EXPECT_EQ(o.selection_base, position - pool) << "segment " << segment;
    EXPECT_EQ(o.recent_from, position - RecentAttended(settings.view(), pool)) << "segment " << segment;
    for (const auto& layer : o.selections) {
      for (const auto& head : layer) {
        for (int idx : head) {
          const int64_t at = o.selection_base + idx;
          EXPECT_GE(at, position - pool);
          EXPECT_LT(at, o.recent_from) << "selected from the older part of the pool";
          ++selected_somewhere;
        }
      }
    }
  }
  EXPECT_GT(selected_somewhere, 0) << "the pool never grew past topk + remain";
}

INSTANTIATE_TEST_SUITE_P(Backends, SelectionWindowTest, ::testing::Values("cpu", "emulated"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

}  // namespace
}  // namespace trams::engine
