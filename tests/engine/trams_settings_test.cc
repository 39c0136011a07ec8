// MakeTramsSettings (engine/trams_settings.h): memory settings the model cannot run are refused with the
// reason.
#include <gtest/gtest.h>

#include "engine/trams_settings.h"
#include "tests/engine/plain_model.h"
#include "tests/testing/status_matchers.h"

namespace trams::engine {
namespace {

using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

using test::LoadModel;

TEST(SettingsTest, BadMemorySettingsAreRejectedWithAReason) {
  auto model = LoadModel();
  const ModelConfig& c = model->config();
  struct Case {
    const char* mode;
    int mem_len, attend, topk, remain;
    std::vector<int> layers;
    const char* metric;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"trams", 100, -1, 50, 150, {}, "code", "more than the pool holds"},  // M < m
      {"trams", 400, 150, 50, 150, {}, "code", "topk + remain"},           // topk + remain != m
      {"trams", -4, -1, 1, 1, {}, "code", "must not be negative"},
      {"trams", 10, -1, -1, 1, {}, "code", "must not be negative"},
      {"xl", 200, 100, 0, 0, {}, "code", "must equal M"},
      {"xl", 0, -1, 0, 0, {}, "code", "mode 'none'"},
      {"trams", 24, -1, 4, 8, {3}, "code", "does not exist"},
      {"trams", 24, -1, 4, 8, {}, "cosine", "metric"},
      {"lstm", 24, -1, 4, 8, {}, "code", "must be xl, trams or none"},
  };
  for (const Case& k : cases) {
    auto s = MakeTramsSettings(k.mode, k.mem_len, k.attend, k.topk, k.remain, k.layers, k.metric, c);
    ASSERT_FALSE(s.ok()) << k.expect;
    EXPECT_THAT(s.status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(k.expect)));
  }
  auto good = MakeTramsSettings("trams", 400, 200, 50, 150, {1, 2}, "paper", c);
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(good->attend_len(), 200);
}

}  // namespace
}  // namespace trams::engine
