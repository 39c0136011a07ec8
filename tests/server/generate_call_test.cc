// Generate over gRPC (server/generate_call.cc): reproducible sampling that continues across calls, and a
// deadline that leaves the session as it was (set-up: server_fixture.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <future>
#include <latch>
#include <set>

#include "engine/tokenizer.h"
#include "engine/transformer_xl.h"
#include "tests/server/server_fixture.h"
#include "tests/testing/status_matchers.h"

namespace trams::server::test {
namespace {

using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

// 4. Generation: seeded sampling reproduces, greedy is deterministic, max_tokens / stop end it, the
// generated tokens join the session, and a later call continues from there.
TEST_F(ServerTest, GenerateIsReproducibleAndContinuesAcrossCalls) {
  const std::string prompt = Text(0, 40);
  const int64_t p = static_cast<int64_t>(prompt.size());

  // Seeded sampling, twice on fresh sessions.
  v1::GenerateRequest sampled = MakeGenerate("", 16, 0.8f);
  sampled.set_top_k(20);
  sampled.set_top_p(0.9f);
  sampled.set_seed(1234);
  sampled.set_prompt_text(prompt);
  std::vector<GenerateResult> seeded;
  for (const char* id : {"gen-seed-1", "gen-seed-2"}) {
    NewSession(id);
    sampled.set_session_id(id);
    seeded.push_back(RunGenerate(stub(), sampled));
    const GenerateResult& g = seeded.back();
    ASSERT_TRUE(g.status.ok()) << Describe(g.status);
    EXPECT_EQ(g.finish, v1::FINISH_REASON_LENGTH);
    ASSERT_EQ(g.ids.size(), 16u) << "max_tokens tokens exactly";
    for (size_t i = 0; i < g.positions.size(); ++i) EXPECT_EQ(g.positions[i], p + static_cast<int64_t>(i));
    EXPECT_EQ(g.last_position, p + 16);
    const v1::Session s = WaitIdle(stub(), id);
    EXPECT_EQ(s.position(), p + 16) << "prompt + generated tokens";
    EXPECT_EQ(s.tokens_scored(), p + 16 - 1);
  }
  EXPECT_EQ(seeded[0].ids, seeded[1].ids) << "same seed, same state: same tokens";
  EXPECT_EQ(seeded[0].text, seeded[1].text);

  // Greedy, twice.
  v1::GenerateRequest greedy = MakeGenerate("", 12, 0.0f);
  greedy.set_prompt_text(prompt);
  std::vector<GenerateResult> greedy_runs;
  for (const char* id : {"gen-greedy-1", "gen-greedy-2"}) {
    NewSession(id);
    greedy.set_session_id(id);
    greedy_runs.push_back(RunGenerate(stub(), greedy));
    ASSERT_TRUE(greedy_runs.back().status.ok()) << Describe(greedy_runs.back().status);
    ASSERT_EQ(greedy_runs.back().ids.size(), 12u);
    EXPECT_EQ(greedy_runs.back().finish, v1::FINISH_REASON_LENGTH);
  }
  const std::vector<int32_t>& g12 = greedy_runs[0].ids;
  EXPECT_EQ(g12, greedy_runs[1].ids);

  // A stop string: the first three generated tokens' text; generation stops where it first appears.
  std::vector<std::string> texts;
  {
    auto tokenizer = engine::Tokenizer::Load(ModelDir(kModel), 260);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    for (int32_t id : g12) texts.push_back((*tokenizer)->TokenText(id));
  }
  const std::string stop = texts[0] + texts[1] + texts[2];
  size_t expect_stop_after = 0;
  {
    std::string so_far;
    for (size_t i = 0; i < texts.size(); ++i) {
      so_far += texts[i];
      if (so_far.size() >= stop.size() && so_far.compare(so_far.size() - stop.size(), stop.size(), stop) == 0) {
        expect_stop_after = i + 1;
        break;
      }
    }
  }
  ASSERT_GE(expect_stop_after, 1u);
  NewSession("gen-stop");
  v1::GenerateRequest stopping = greedy;
  stopping.set_session_id("gen-stop");
  stopping.add_stop(stop);
  const GenerateResult stopped = RunGenerate(stub(), stopping);
  ASSERT_TRUE(stopped.status.ok()) << Describe(stopped.status);
  EXPECT_EQ(stopped.finish, v1::FINISH_REASON_STOP);
  EXPECT_EQ(stopped.ids, std::vector<int32_t>(g12.begin(), g12.begin() + expect_stop_after));
  EXPECT_EQ(WaitIdle(stub(), "gen-stop").position(), p + static_cast<int64_t>(expect_stop_after));

  // Continuing: a second call without a prompt picks up where the first stopped.
  const GenerateResult more = RunGenerate(stub(), MakeGenerate("gen-greedy-1", 5, 0.0f));
  ASSERT_TRUE(more.status.ok()) << Describe(more.status);
  ASSERT_EQ(more.ids.size(), 5u);
  EXPECT_EQ(more.finish, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(more.positions.front(), p + 12);
  EXPECT_EQ(more.last_position, p + 17);
  EXPECT_EQ(WaitIdle(stub(), "gen-greedy-1").position(), p + 17);

  // Split over two calls, greedy generation continues exactly as one call would.
  NewSession("gen-split");
  v1::GenerateRequest first = greedy;
  first.set_session_id("gen-split");
  first.set_max_tokens(7);
  const GenerateResult part1 = RunGenerate(stub(), first);
  const GenerateResult part2 = RunGenerate(stub(), MakeGenerate("gen-split", 5, 0.0f));
  ASSERT_TRUE(part1.status.ok()) << Describe(part1.status);
  ASSERT_TRUE(part2.status.ok()) << Describe(part2.status);
  std::vector<int32_t> joined = part1.ids;
  joined.insert(joined.end(), part2.ids.begin(), part2.ids.end());
  EXPECT_EQ(joined, g12);

  // An empty session without a prompt has nothing to continue from.
  NewSession("gen-empty");
  const GenerateResult empty = RunGenerate(stub(), MakeGenerate("gen-empty", 5, 0.0f));
  EXPECT_EQ(empty.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Describe(empty.status);
  EXPECT_TRUE(empty.ids.empty());
  const v1::Session e = WaitIdle(stub(), "gen-empty");
  EXPECT_EQ(e.position(), 0);
  EXPECT_EQ(e.tokens_scored(), 0);
}

// 7 (continued). A Generate that runs past its deadline rolls the session back.
TEST_F(ServerTest, GeneratePastItsDeadlineLeavesSessionUnchanged) {
  NewSession("deadline");
  NewSession("deadline-twin");
  for (const char* id : {"deadline", "deadline-twin"}) ASSERT_TRUE(ScoreText(stub(), id, Text(0, 40)).status.ok());
  const SessionState before = StateOf(stub(), "deadline");

  v1::GenerateRequest g = MakeGenerate("deadline", 1 << 29, 0.8f);  // far more than fits in the deadline
  g.set_seed(7);
  g.set_prompt_text("The ");
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(1000));
  const GenerateResult r = RunGenerate(stub(), g, &ctx);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << Describe(r.status);
  EXPECT_GE(r.ids.size(), 1u) << "tokens were generated (and streamed) before the deadline";
  EXPECT_EQ(StateOf(stub(), "deadline"), before);

  const ScoreResult after = ScoreText(stub(), "deadline", Text(80, 100));
  const ScoreResult twin = ScoreText(stub(), "deadline-twin", Text(80, 100));
  ASSERT_TRUE(after.status.ok()) << Describe(after.status);
  ASSERT_TRUE(twin.status.ok()) << Describe(twin.status);
  ExpectSameLogProbs(after.logprobs(), twin.logprobs(), 0);
}

}  // namespace
}  // namespace trams::server::test
