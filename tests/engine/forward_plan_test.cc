// The plain planning both backends share (engine/forward_plan.h, engine/undo_plan.h,
// engine/settings_rules.h), checked without any math.
#include "engine/forward_plan.h"

#include <gtest/gtest.h>

#include <vector>

#include "engine/settings_rules.h"
#include "engine/undo_plan.h"

namespace trams::engine {
namespace {

PlanStream Stream(int start, int size, int capacity, int64_t position, int attend_len, int topk, int remain, int n,
                  std::vector<bool> selects = {}, bool commit = true) {
  PlanStream s;
  s.start = start;
  s.size = size;
  s.capacity = capacity;
  s.position = position;
  s.attend_len = attend_len;
  s.topk = topk;
  s.remain = remain;
  s.n = n;
  s.selects_on_layer = std::move(selects);
  s.commit = commit;
  return s;
}

TEST(ForwardPlanTest, RowsOffsetsAttendedAndMaxima) {
  const ForwardPlan p = PlanForward({Stream(0, 0, 8, 0, 6, 2, 4, 3), Stream(2, 8, 8, 40, 6, 2, 4, 5),
                                     Stream(0, 0, 0, 7, 0, 0, 0, 1)},
                                    2);
  EXPECT_EQ(p.batch, 3);
  EXPECT_EQ(p.rows, 9);
  EXPECT_EQ(p.offset, (std::vector<int64_t>{0, 3, 8}));
  EXPECT_EQ(p.attended, (std::vector<int>{0, 6, 0}));  // min(size, m)
  EXPECT_EQ(p.n_max, 5);
  EXPECT_EQ(p.a_max, 6);
  EXPECT_EQ(p.klen_max, 11);
  EXPECT_EQ(p.topk_max, 2);
}

TEST(ForwardPlanTest, SelectsOnlyOnSelectingLayersOncePoolExceedsTheAttendedMemory) {
  const std::vector<bool> layer1_only = {false, true};
  const ForwardPlan p = PlanForward({Stream(0, 6, 8, 6, 6, 2, 4, 1, {true, true}),    // size == m: no
                                     Stream(0, 7, 8, 7, 6, 2, 4, 1, {true, true}),    // size > m: yes
                                     Stream(0, 8, 8, 9, 6, 2, 4, 1, layer1_only),     // layer 1 only
                                     Stream(0, 8, 8, 9, 8, 0, 8, 1, {})},             // xl: never
                                    2);
  for (int l = 0; l < 2; ++l) {
    EXPECT_FALSE(p.Selects(l, 0));
    EXPECT_TRUE(p.Selects(l, 1));
    EXPECT_EQ(p.Selects(l, 2), l == 1);
    EXPECT_FALSE(p.Selects(l, 3));
  }
}

TEST(ForwardPlanTest, AppendsWrapTheRingAndKeepOnlyTheLastCapacityTokens) {
  const ForwardPlan p = PlanForward({Stream(5, 3, 8, 3, 8, 0, 8, 4),    // rows 0..3 -> ring 0, 1, 2, 3
                                     Stream(1, 2, 4, 2, 4, 0, 4, 6),    // 6 > 4: tokens 2..5 -> ring 1, 2, 3, 0
                                     Stream(0, 0, 0, 0, 0, 0, 0, 2)},   // no memory: nothing
                                    1);
  ASSERT_EQ(p.append.size(), 8u);
  const std::vector<std::vector<int64_t>> want = {{0, 0, 0}, {0, 1, 1}, {0, 2, 2}, {0, 3, 3},
                                                  {1, 6, 1}, {1, 7, 2}, {1, 8, 3}, {1, 9, 0}};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(p.append[i].stream, want[i][0]) << i;
    EXPECT_EQ(p.append[i].src_row, want[i][1]) << i;
    EXPECT_EQ(p.append[i].ring_row, want[i][2]) << i;
  }
  EXPECT_EQ(p.append_begin, (std::vector<int>{0, 4, 8, 8}));
  EXPECT_EQ(p.new_start, (std::vector<int>{5, 1, 0}));  // stream 1: oldest survivor is token 2, at ring row 1
  EXPECT_EQ(p.new_size, (std::vector<int>{7, 4, 0}));
  EXPECT_EQ(p.new_position, (std::vector<int64_t>{7, 8, 2}));
}

TEST(ForwardPlanTest, ProvisionalSegmentsAppendNothingAndKeepTheCursor) {
  const ForwardPlan p = PlanForward({Stream(3, 8, 8, 30, 6, 2, 4, 5, {true}, /*commit=*/false),
                                     Stream(0, 1, 8, 1, 6, 2, 4, 2, {true})},
                                    1);
  EXPECT_EQ(p.append_begin, (std::vector<int>{0, 0, 2}));
  ASSERT_EQ(p.append.size(), 2u);
  EXPECT_EQ(p.append[0].stream, 1);
  EXPECT_EQ(p.append[0].src_row, 5);
  EXPECT_EQ(p.append[0].ring_row, 1);
  EXPECT_EQ(p.new_start[0], 3);
  EXPECT_EQ(p.new_size[0], 8);
  EXPECT_EQ(p.new_position[0], 30);
  // A provisional segment is attended and scored as usual.
  EXPECT_EQ(p.attended[0], 6);
  EXPECT_TRUE(p.Selects(0, 0));
  EXPECT_EQ(p.tokens_scored[0], 5);
}

TEST(ForwardPlanTest, ScoresEveryTokenButAStreamsFirst) {
  const ForwardPlan p = PlanForward({Stream(0, 0, 4, 0, 4, 0, 4, 3), Stream(0, 2, 4, 2, 4, 0, 4, 2)}, 1);
  ASSERT_EQ(p.scored.size(), 4u);
  // Stream 0 at position 0: tokens 1, 2 from rows 0, 1. Stream 1: token 0 from its last hidden state, token 1
  // from row 3.
  const std::vector<std::vector<int64_t>> want = {{0, 1, 0}, {0, 2, 1}, {1, 0, -1}, {1, 1, 3}};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(p.scored[i].stream, want[i][0]) << i;
    EXPECT_EQ(p.scored[i].token, want[i][1]) << i;
    EXPECT_EQ(p.scored[i].pred_row, want[i][2]) << i;
  }
  EXPECT_EQ(p.tokens_scored, (std::vector<int64_t>{2, 2}));
}

TEST(UndoPlanTest, SavesLiveRowsOnceInOverwriteOrderAndRestoresThemAll) {
  // Ring of 5 rows holding 3 tokens from row 3 (rows 3, 4, 0); free rows 1, 2 come first.
  std::vector<UndoRun> runs;
  int saved = UndoRowsToSave(5, 3, 3, 0, 0, 2, &runs);  // overwrites rows 1, 2: never live
  EXPECT_TRUE(runs.empty());
  EXPECT_EQ(saved, 2);
  saved = UndoRowsToSave(5, 3, 3, 2, saved, 2, &runs);  // rows 3, 4: live, log rows 0, 1
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].ring_row, 3);
  EXPECT_EQ(runs[0].count, 2);
  EXPECT_EQ(runs[0].log_row, 0);
  EXPECT_EQ(saved, 4);
  saved = UndoRowsToSave(5, 3, 3, 4, saved, 7, &runs);  // row 0, then indices past the ring repeat saved rows
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].ring_row, 0);
  EXPECT_EQ(runs[0].count, 1);
  EXPECT_EQ(runs[0].log_row, 2);
  EXPECT_EQ(saved, 5);
  saved = UndoRowsToSave(5, 3, 3, 11, saved, 3, &runs);
  EXPECT_TRUE(runs.empty());
  EXPECT_EQ(saved, 5);
  UndoRowsToRestore(5, 3, 3, saved, &runs);
  ASSERT_EQ(runs.size(), 2u);  // split where the ring wraps
  EXPECT_EQ(runs[0].ring_row, 3);
  EXPECT_EQ(runs[0].count, 2);
  EXPECT_EQ(runs[0].log_row, 0);
  EXPECT_EQ(runs[1].ring_row, 0);
  EXPECT_EQ(runs[1].count, 1);
  EXPECT_EQ(runs[1].log_row, 2);
}

TEST(UndoPlanTest, AFullPoolSavesFromTheOldestAndNoMemorySavesNothing) {
  std::vector<UndoRun> runs;
  EXPECT_EQ(UndoRowsToSave(4, 2, 4, 0, 0, 3, &runs), 3);  // oldest rows 2, 3, 0
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].ring_row, 2);
  EXPECT_EQ(runs[0].count, 2);
  EXPECT_EQ(runs[1].ring_row, 0);
  EXPECT_EQ(runs[1].log_row, 2);
  EXPECT_EQ(UndoRowsToSave(0, 0, 0, 0, 0, 3, &runs), 0);
  EXPECT_TRUE(runs.empty());
  UndoRowsToRestore(4, 2, 4, 0, &runs);  // nothing saved yet
  EXPECT_TRUE(runs.empty());
}

TEST(SettingsRulesTest, OneSetOfMessages) {
  SettingsView s;
  s.mode = MemoryMode::kTrams;
  s.mem_len = 100;
  s.topk = 50;
  s.remain = 150;
  EXPECT_EQ(SettingsError(s, 4),
            "TRAMS attends topk + remain = 200 tokens, more than the pool holds (mem_len M = 100); need m <= M");
  s.remain = 10;
  EXPECT_EQ(SettingsError(s, 4), "");
  const int layers[] = {1, 4};
  s.layers = layers;
  s.n_layers = 2;
  EXPECT_EQ(SettingsError(s, 4), "selection layer 4 does not exist (the model has 4 layers, numbered from 0)");
  s.n_layers = 1;
  EXPECT_TRUE(SelectsOnLayer(s, 1));
  EXPECT_FALSE(SelectsOnLayer(s, 0));
  s.mode = MemoryMode::kXl;
  EXPECT_EQ(SettingsError(s, 4), "selection layers only apply to mode 'trams'");
  EXPECT_EQ(AttendLen(MemoryMode::kXl, 100, 50, 10), 100);
  EXPECT_EQ(AttendLen(MemoryMode::kTrams, 100, 50, 10), 60);
  EXPECT_EQ(AttendLen(MemoryMode::kNone, 0, 0, 0), 0);
  const int32_t tokens[] = {1, 2, 99};
  EXPECT_EQ(EntryTokensError(3, tokens, 3, 99),
            "token id 99 at position 2 of batch entry 3 is outside the vocabulary [0, 99)");
  EXPECT_EQ(EntryTokensError(0, tokens, 0, 99), "batch entry 0 has no tokens");
  EXPECT_EQ(EntryStreamError(2, true, true), "batch entry 2 repeats a stream: one segment per stream");
  EXPECT_EQ(EntryStreamError(2, true, false), "");
}

}  // namespace
}  // namespace trams::engine
