// Score over gRPC (server/score_call.cc): scores as the engine computes them, memory across calls,
// concurrent sessions, cancels, call order (set-up: server_fixture.h).
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

// 1. One Score call over gRPC gives the in-process engine's log-probs.
TEST_F(ServerTest, ScoreOverGrpcMatchesInProcessEngine) {
  const int n = 16;
  const std::string text = Text(0, 600);  // has multi-byte characters (curly quotes)
  const v1::Session created = NewSession("match-engine", n);
  EXPECT_EQ(created.segment_len(), n);
  EXPECT_EQ(created.memory().mode(), v1::MEMORY_MODE_TRAMS);
  EXPECT_EQ(created.memory().mem_len(), kM);
  EXPECT_EQ(created.memory().topk(), kTopk);
  EXPECT_EQ(created.memory().remain(), kRemain);

  const ScoreResult r = ScoreText(stub(), "match-engine", text);
  ASSERT_TRUE(r.status.ok()) << Describe(r.status);

  // The reference: the engine on the same ids, in segments of n.
  engine::EngineOptions engine_options;
  engine_options.threads = 1;
  auto model = engine::TransformerXL::Load(ModelDir(kModel), engine_options);
  ASSERT_TRUE(model.ok()) << model.status();
  auto tokenizer = engine::Tokenizer::Load(ModelDir(kModel), (*model)->config().vocab_size);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto ids = (*tokenizer)->Encode(text);
  ASSERT_TRUE(ids.ok()) << ids.status();
  ASSERT_EQ(*ids, Bytes(text));
  auto stream = (*model)->NewStream(engine::TramsSettings::Trams(kM, kTopk, kRemain));
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::vector<float> expected;
  for (size_t at = 0; at < ids->size(); at += n) {
    const size_t len = std::min<size_t>(n, ids->size() - at);
    std::vector<engine::SegmentOutput> out;
    engine::SegmentInput in{stream->get(), absl::MakeConstSpan(*ids).subspan(at, len), {}};
    ASSERT_TRUE((*model)->Forward({in}, &out).ok());
    expected.insert(expected.end(), out[0].logprob.begin(), out[0].logprob.end());
  }

  ASSERT_EQ(r.tokens.size(), ids->size());
  EXPECT_EQ(r.ids(), *ids);
  EXPECT_FALSE(r.tokens[0].has_logprob()) << "the first token of a session has no context";
  double nll = 0;
  for (size_t i = 0; i < r.tokens.size(); ++i) {
    EXPECT_EQ(r.tokens[i].position(), static_cast<int64_t>(i));
    EXPECT_EQ(r.tokens[i].text(), text.substr(i, 1));
    if (i == 0) continue;
    ASSERT_TRUE(r.tokens[i].has_logprob()) << "token " << i;
    EXPECT_NEAR(r.tokens[i].logprob(), expected[i], 1e-5) << "token " << i;
    nll -= expected[i];
  }
  // One message per segment of n, each reporting the position after it.
  ASSERT_EQ(r.responses.size(), (text.size() + n - 1) / n);
  for (size_t k = 0; k < r.responses.size(); ++k) {
    EXPECT_EQ(r.responses[k].position(), std::min<int64_t>(static_cast<int64_t>((k + 1) * n), text.size()));
  }
  EXPECT_EQ(r.responses.back().tokens_scored(), static_cast<int64_t>(text.size()) - 1);
  EXPECT_NEAR(r.responses.back().nll_sum(), nll, 1e-3);

  const v1::Session after = WaitIdle(stub(), "match-engine");
  EXPECT_EQ(after.position(), static_cast<int64_t>(text.size()));
  EXPECT_EQ(after.tokens_scored(), static_cast<int64_t>(text.size()) - 1);
  EXPECT_NEAR(after.nll_sum(), nll, 1e-3);
  EXPECT_EQ(after.pool_tokens(), kM);
}

// 2. How the client chunks its input does not matter; nor does text vs ids.
TEST_F(ServerTest, ChunkingAndTextVersusIdsDoNotChangeScores) {
  const std::string text = Text(300, 400);  // starts in ASCII, has 3-byte characters split by small chunks
  for (const char* id : {"chunk-1", "chunk-7", "chunk-all", "chunk-ids"}) NewSession(id);
  const ScoreResult one = ScoreText(stub(), "chunk-1", text, 1);
  const ScoreResult seven = ScoreText(stub(), "chunk-7", text, 7);
  const ScoreResult whole = ScoreText(stub(), "chunk-all", text);
  const ScoreResult ids = ScoreIds(stub(), "chunk-ids", Bytes(text), 5);
  for (const ScoreResult* r : {&one, &seven, &whole, &ids}) {
    ASSERT_TRUE(r->status.ok()) << Describe(r->status);
    ASSERT_EQ(r->tokens.size(), text.size());
  }
  EXPECT_EQ(whole.ids(), Bytes(text));
  for (const ScoreResult* r : {&one, &seven, &ids}) {
    EXPECT_EQ(r->ids(), whole.ids());
    ExpectSameLogProbs(r->logprobs(), whole.logprobs(), 0);
    // The server cuts segments of n whatever the chunks: the same messages, the same positions.
    ASSERT_EQ(r->responses.size(), whole.responses.size());
    for (size_t k = 0; k < r->responses.size(); ++k) {
      EXPECT_EQ(r->responses[k].tokens_size(), whole.responses[k].tokens_size()) << "message " << k;
      EXPECT_EQ(r->responses[k].position(), whole.responses[k].position()) << "message " << k;
    }
    std::string joined;
    for (const auto& t : r->tokens) joined += t.text();
    EXPECT_EQ(joined, text);
  }
  EXPECT_FALSE(whole.tokens[0].has_logprob());
  for (const char* id : {"chunk-1", "chunk-7", "chunk-ids"}) {
    EXPECT_EQ(StateOf(stub(), id), StateOf(stub(), "chunk-all")) << id;
  }
}

// 3. The memory carries across calls: A then B equals A+B when A ends on a segment boundary.
TEST_F(ServerTest, MemoryCarriesAcrossCalls) {
  const std::string a = Text(0, 20 * kN), b = Text(20 * kN, 203);
  NewSession("carry-split");
  NewSession("carry-whole");
  const ScoreResult ra = ScoreText(stub(), "carry-split", a);
  const ScoreResult rb = ScoreText(stub(), "carry-split", b);
  const ScoreResult rab = ScoreText(stub(), "carry-whole", a + b);
  ASSERT_TRUE(ra.status.ok()) << Describe(ra.status);
  ASSERT_TRUE(rb.status.ok()) << Describe(rb.status);
  ASSERT_TRUE(rab.status.ok()) << Describe(rab.status);

  ASSERT_EQ(rb.tokens.size(), b.size());
  EXPECT_EQ(rb.tokens[0].position(), static_cast<int64_t>(a.size()));
  EXPECT_TRUE(rb.tokens[0].has_logprob()) << "the second call's first token has the first call as context";
  std::vector<float> split = ra.logprobs();
  const std::vector<float> second = rb.logprobs();
  split.insert(split.end(), second.begin(), second.end());
  ExpectSameLogProbs(split, rab.logprobs(), 0);

  const v1::Session s1 = WaitIdle(stub(), "carry-split"), s2 = WaitIdle(stub(), "carry-whole");
  EXPECT_EQ(s1.position(), static_cast<int64_t>(a.size() + b.size()));
  EXPECT_EQ(s1.position(), s2.position());
  EXPECT_EQ(s1.tokens_scored(), s2.tokens_scored());
  EXPECT_NEAR(s1.nll_sum(), s2.nll_sum(), 1e-9 * std::abs(s2.nll_sum()));
  EXPECT_EQ(s1.pool_tokens(), s2.pool_tokens());
}

// 5. Concurrent sessions (batched together by the scheduler) stay independent.
TEST_F(ServerTest, ConcurrentSessionsStayIndependent) {
  constexpr int kThreads = 8;
  std::vector<std::string> texts;
  for (int i = 0; i < kThreads; ++i) texts.push_back(Text(static_cast<size_t>(i) * 500, 300));

  std::vector<ScoreResult> alone(kThreads), together(kThreads);
  for (int i = 0; i < kThreads; ++i) {
    const std::string id = "alone-" + std::to_string(i);
    NewSession(id);
    alone[i] = ScoreText(stub(), id, texts[i], 16);
    ASSERT_TRUE(alone[i].status.ok()) << Describe(alone[i].status);
  }
  for (int i = 0; i < kThreads; ++i) NewSession("together-" + std::to_string(i));
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      together[i] = ScoreText(stub(), "together-" + std::to_string(i), texts[i], 16);
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) {
    SCOPED_TRACE("session " + std::to_string(i));
    ASSERT_TRUE(together[i].status.ok()) << Describe(together[i].status);
    EXPECT_EQ(together[i].ids(), alone[i].ids());
    // OpenBLAS rounds a row differently depending on the product's row count, so batched numbers drift
    // by ~1e-6. What must not happen is a different TRAMS selection: a repeated token's layer-0 scores tie
    // exactly, and if rounding noise broke those ties, later log-probs would move by whole nats.
    // SelectTopK's tie tolerance prevents that; 1e-4 would catch any flip.
    ExpectSameLogProbs(together[i].logprobs(), alone[i].logprobs(), 1e-4f);
    const v1::Session s = WaitIdle(stub(), "together-" + std::to_string(i));
    EXPECT_EQ(s.position(), 300);
    EXPECT_EQ(s.tokens_scored(), 299);
  }
}

// 7. A client cancel mid-stream rolls the session back.
TEST_F(ServerTest, CancelledScoreLeavesSessionUnchanged) {
  NewSession("cancel");
  NewSession("cancel-twin");
  for (const char* id : {"cancel", "cancel-twin"}) ASSERT_TRUE(ScoreText(stub(), id, Text(0, 40)).status.ok());
  const SessionState before = StateOf(stub(), "cancel");
  ASSERT_EQ(before.position, 40);
  ASSERT_EQ(before.pool_tokens, kM) << "a full pool: the cancelled call overwrote live rows";

  // The cancel reaches the server as a failed read as well as a cancellation, in either order; a
  // correct server rolls back whichever comes first, so the rounds only make a race visible.
  constexpr int kRounds = 20;
  for (int round = 0; round < kRounds && !HasFailure(); ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    ScoreStream call(stub());
    const std::vector<int32_t> ids = Bytes(Text(40, 5 * kN));
    for (int k = 0; k < 5; ++k) {
      v1::ScoreRequest r = IdChunk(std::vector<int32_t>(ids.begin() + k * kN, ids.begin() + (k + 1) * kN));
      if (k == 0) r.set_session_id("cancel");
      ASSERT_TRUE(call.Write(r));
    }
    ASSERT_TRUE(call.ReadOne()) << "at least one segment was scored before the cancel";
    call.context().TryCancel();  // no WritesDone: the input is not complete
    const ScoreResult r = call.Finish(/*half_close=*/false);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::CANCELLED) << Describe(r.status);
    EXPECT_EQ(StateOf(stub(), "cancel"), before) << "a cancelled call committed its segments";
  }

  const ScoreResult after = ScoreText(stub(), "cancel", Text(80, 100));
  const ScoreResult twin = ScoreText(stub(), "cancel-twin", Text(80, 100));
  ASSERT_TRUE(after.status.ok()) << Describe(after.status);
  ASSERT_TRUE(twin.status.ok()) << Describe(twin.status);
  EXPECT_EQ(after.tokens.front().position(), 40);
  ExpectSameLogProbs(after.logprobs(), twin.logprobs(), 0);
}

// 9. Calls on one session run one after the other, in order.
TEST_F(ServerTest, CallsOnOneSessionRunInOrder) {
  NewSession("order");
  const std::vector<int32_t> ids = Bytes(Text(0, 33));
  ScoreStream first(stub());
  v1::ScoreRequest head = IdChunk(std::vector<int32_t>(ids.begin(), ids.begin() + kN));
  head.set_session_id("order");
  ASSERT_TRUE(first.Write(head));
  ASSERT_TRUE(first.ReadOne()) << "the first call holds the session from here on";

  // The second call arrives while the first holds the session: it waits its turn.
  std::promise<ScoreResult> second_done;
  std::thread second([&] { second_done.set_value(ScoreIds(stub(), "order", {ids.begin() + 13, ids.end()})); });
  v1::Session mid;
  ASSERT_TRUE(GetSession(stub(), "order", &mid).ok());
  EXPECT_TRUE(mid.busy());

  ASSERT_TRUE(first.Write(IdChunk({ids.begin() + kN, ids.begin() + 13})));
  const ScoreResult r1 = first.Finish();
  second.join();
  const ScoreResult r2 = second_done.get_future().get();
  ASSERT_TRUE(r1.status.ok()) << Describe(r1.status);
  ASSERT_TRUE(r2.status.ok()) << Describe(r2.status);
  EXPECT_EQ(r1.end_position(), 13);
  // r1 left 13 - 8 = 5 tokens in an incomplete segment: r2 answers them again, then its own 20.
  ASSERT_EQ(r2.tokens.size(), 25u);
  EXPECT_EQ(r2.tokens.front().position(), kN);
  EXPECT_EQ(r2.tokens[5].position(), r1.end_position()) << "the second call's tokens start where the first ended";
  EXPECT_TRUE(r2.tokens[5].has_logprob());
  EXPECT_EQ(r2.end_position(), 33);
  const v1::Session s = WaitIdle(stub(), "order");
  EXPECT_EQ(s.position(), 33);
  EXPECT_EQ(s.tokens_scored(), 32);
}

// A Score call that half-closes without sending any message names no session: it must end at once
// (INVALID_ARGUMENT), not wait for its deadline.
TEST_F(ServerTest, ScoreWithoutAnyMessageEndsAtOnce) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  const ScoreResult r = RunScore(stub(), {}, &ctx);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(r.status);
}

// The ids-only model scores token ids over Score (the control for the test above).
TEST(ServerIdsOnlyModelTest, ScoreTakesIds) {
  auto server = StartServer(TestOptions("plain_postln"));
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  ASSERT_TRUE(CreateSession(stub, "ids", Trams(kM, kTopk, kRemain), kN).ok());
  std::vector<int32_t> ids;
  for (int i = 0; i < 30; ++i) ids.push_back((i * 37 + 5) % 97);
  const ScoreResult r = ScoreIds(stub, "ids", ids, 7);
  ASSERT_TRUE(r.status.ok()) << Describe(r.status);
  ASSERT_EQ(r.tokens.size(), ids.size());
  EXPECT_EQ(r.ids(), ids);
  EXPECT_FALSE(r.tokens[0].has_logprob());
  for (size_t i = 1; i < r.tokens.size(); ++i) EXPECT_TRUE(r.tokens[i].has_logprob()) << "token " << i;
  const v1::Session s = WaitIdle(stub, "ids");
  EXPECT_EQ(s.position(), 30);
  EXPECT_EQ(s.tokens_scored(), 29);
}

}  // namespace
}  // namespace trams::server::test
