// SelectTopK (engine/trams_selector.h): the highest scores in pool order, near ties to the older token.
#include <gtest/gtest.h>

#include <vector>

#include "engine/trams_selector.h"

namespace trams::engine {
namespace {

TEST(SelectTopKTest, HighestScoresInPoolOrderWithNearTiesGoingToTheOlder) {
  std::vector<int> out;
  const std::vector<float> scores = {1.0f, 5.0f, 3.0f, 4.0f, 2.0f};
  SelectTopK(scores.data(), 1, 5, 2, &out);
  EXPECT_EQ(out, (std::vector<int>{1, 3}));
  // 3.0 and 3.0 * (1 + 2e-6) are the same score up to rounding: the older one wins, whichever is larger.
  const std::vector<float> near = {3.0f * (1 + 2e-6f), 9.0f, 3.0f, 1.0f};
  SelectTopK(near.data(), 1, 4, 2, &out);
  EXPECT_EQ(out, (std::vector<int>{0, 1}));
  const std::vector<float> near_swapped = {3.0f, 9.0f, 3.0f * (1 + 2e-6f), 1.0f};
  SelectTopK(near_swapped.data(), 1, 4, 2, &out);
  EXPECT_EQ(out, (std::vector<int>{0, 1}));
  // A real difference (1e-3) is not a tie.
  const std::vector<float> apart = {3.0f, 9.0f, 3.003f, 1.0f};
  SelectTopK(apart.data(), 1, 4, 2, &out);
  EXPECT_EQ(out, (std::vector<int>{1, 2}));
  // Strided scores (one column of a [token, head] table).
  const std::vector<float> table = {0, 7, 0, 1, 0, 9, 0, 8};
  SelectTopK(table.data() + 1, 2, 4, 2, &out);
  EXPECT_EQ(out, (std::vector<int>{2, 3}));
}

}  // namespace
}  // namespace trams::engine
