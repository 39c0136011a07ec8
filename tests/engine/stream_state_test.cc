// StreamState transactions (engine/stream_state.h): a rollback restores the pool exactly, a commit keeps
// what was appended and frees the undo log.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "engine/stream_state.h"
#include "tests/engine/plain_model.h"

namespace trams::engine {
namespace {

using test::LoadModel;
using test::Score;
using test::Tokens;

// A rolled-back transaction leaves the pool bit-for-bit as it was, whatever was appended meanwhile
// (less than the pool, more than the pool, empty pool, full pool), and the stream then continues exactly
// as a stream that never saw the transaction.
TEST(TransactionTest, RollbackRestoresThePoolExactly) {
  auto model = LoadModel();
  for (int before : {0, 10, 30}) {
    for (int during : {3, 17, 40}) {
      const TramsSettings settings = TramsSettings::Trams(24, 4, 8);
      auto stream = *model->NewHostStream(settings);
      auto twin = *model->NewHostStream(settings);
      if (before > 0) {
        Score(*model, stream.get(), Tokens(before, 6), 8);
        Score(*model, twin.get(), Tokens(before, 6), 8);
      }
      std::vector<std::vector<float>> keys, scores;
      for (int l = 0; l < 3; ++l) {
        keys.push_back(stream->layer(l).keys);
        scores.push_back(stream->layer(l).scores);
      }
      EXPECT_TRUE(stream->BeginTransaction().ok());
      Score(*model, stream.get(), Tokens(during, 7), 5);
      EXPECT_EQ(stream->position(), before + during);
      EXPECT_TRUE(stream->Rollback().ok());
      EXPECT_EQ(stream->position(), before);
      EXPECT_EQ(stream->size(), std::min(before, 24));
      for (int l = 0; l < 3; ++l) {
        // Rows outside the live window may differ; compare the live tokens in pool order.
        for (int j = 0; j < stream->size(); ++j) {
          const int row = stream->RingRow(j), twin_row = twin->RingRow(j);
          for (int k = 0; k < 32; ++k) {
            ASSERT_EQ(stream->layer(l).keys[row * 32 + k], twin->layer(l).keys[twin_row * 32 + k]);
          }
        }
      }
      const auto after = Score(*model, stream.get(), Tokens(20, 8), 8);
      const auto want = Score(*model, twin.get(), Tokens(20, 8), 8);
      for (size_t i = 0; i < after.size(); ++i) {
        if (std::isnan(want[i])) {
          EXPECT_TRUE(std::isnan(after[i]));
        } else {
          EXPECT_EQ(after[i], want[i]) << "before " << before << " during " << during << " token " << i;
        }
      }
    }
  }
}

TEST(TransactionTest, CommitKeepsTheAppendedTokens) {
  auto model = LoadModel();
  auto stream = *model->NewHostStream(TramsSettings::Xl(12));
  EXPECT_TRUE(stream->BeginTransaction().ok());
  Score(*model, stream.get(), Tokens(5, 9), 8);
  EXPECT_EQ(stream->undo_bytes(), 0) << "an empty pool has nothing to save";
  EXPECT_TRUE(stream->Commit().ok());
  EXPECT_TRUE(stream->BeginTransaction().ok());
  Score(*model, stream.get(), Tokens(30, 9), 8);
  // 5 live tokens were overwritten in each of 3 layers: keys + values of 32 floats, plus the old prediction state.
  EXPECT_EQ(stream->undo_bytes(), (3 * 5 * 2 * 32 + 32) * 4);
  EXPECT_TRUE(stream->Commit().ok());
  EXPECT_EQ(stream->position(), 35);
  EXPECT_EQ(stream->undo_bytes(), 0);
}

}  // namespace
}  // namespace trams::engine
