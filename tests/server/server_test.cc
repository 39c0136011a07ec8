// End-to-end tests of trams-server: a real ServerApp in-process on a loopback port, driven through the
// generated gRPC stub. They check the API contract of proto/trams/v1/trams.proto and the transaction
// contract of server/lm_service.h (every failed, cancelled or timed-out call leaves its session exactly
// as it was), against the in-process engine where numbers are involved.
//
// Determinism: no assertion depends on timing. Where a test needs a call to be "in the middle", it waits
// for that call's first answer (proof that the call holds its session) rather than sleeping; races the
// server must handle (a cancel arriving as a failed read, concurrent batching) are provoked repeatedly,
// and a correct server passes every round.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <future>
#include <latch>
#include <set>

#include "engine/tokenizer.h"
#include "engine/transformer_xl.h"
#include "tests/server/server_test_util.h"
#include "tests/testing/status_matchers.h"

namespace trams::server::test {
namespace {

using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

constexpr int kM = 24, kTopk = 4, kRemain = 8, kN = 8;
const char kModel[] = "adaptive_samelen";  // byte tokenizer, vocab 260, 3 layers, 3 heads

// Same unset (NaN) entries, and values within `tol` (0: bit-identical). One summary on failure.
void ExpectSameLogProbs(const std::vector<float>& a, const std::vector<float>& b, float tol) {
  ASSERT_EQ(a.size(), b.size());
  int differ = 0, first = -1;
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(std::isnan(a[i]), std::isnan(b[i])) << "token " << i << ": only one side has a log-prob";
    if (std::isnan(a[i])) continue;
    const double d = std::abs(static_cast<double>(a[i]) - b[i]);
    if (tol == 0 ? a[i] != b[i] : d > tol) {
      if (first < 0) first = static_cast<int>(i);
      ++differ;
    }
    worst = std::max(worst, d);
  }
  EXPECT_EQ(differ, 0) << differ << " of " << a.size() << " log-probs differ by more than " << tol
                       << "; the first at token " << first << " (" << (first >= 0 ? a[first] : 0.0f) << " vs "
                       << (first >= 0 ? b[first] : 0.0f) << "), the largest difference " << worst;
}

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ServerOptions options = TestOptions(kModel);
    options.requests.max_generate_tokens = 1 << 30;  // so a Generate can outlive a short deadline
    server_ = StartServer(options).release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(server_, nullptr) << "the server did not start"; }

  static v1::TramsService::Stub* stub() { return server_->stub.get(); }

  // A TRAMS session (M = 24, topk 4, remain 8) with segments of `n`.
  static v1::Session NewSession(const std::string& id, int n = kN) {
    v1::Session s;
    grpc::Status st = CreateSession(stub(), id, Trams(kM, kTopk, kRemain), n, &s);
    EXPECT_TRUE(st.ok()) << "CreateSession(" << id << "): " << Describe(st);
    return s;
  }

  static TestServer* server_;
};

TestServer* ServerTest::server_ = nullptr;

// ---------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------
// 6. Every bad input gets its status and leaves the session as it was.
TEST_F(ServerTest, BadInputsGetTheirStatusAndChangeNothing) {
  NewSession("bad");
  NewSession("bad-twin");
  NewSession("metadata-only");
  const std::string history = Text(0, 50);
  ASSERT_TRUE(ScoreText(stub(), "bad", history).status.ok());
  ASSERT_TRUE(ScoreText(stub(), "bad-twin", history).status.ok());
  const SessionState before = StateOf(stub(), "bad");
  ASSERT_EQ(before.position, 50);
  const int sessions_before = ListCount(stub());
  auto expect_unchanged = [&](const std::string& what) {
    EXPECT_EQ(StateOf(stub(), "bad"), before) << "after " << what;
  };
  auto expect_code = [](const grpc::Status& s, grpc::StatusCode code, const std::string& what) {
    EXPECT_EQ(s.error_code(), code) << what << ": " << Describe(s);
  };

  // Unknown session.
  expect_code(ScoreText(stub(), "no-such-session", "abc").status, grpc::StatusCode::NOT_FOUND, "Score unknown");
  {
    v1::Session s;
    expect_code(GetSession(stub(), "no-such-session", &s), grpc::StatusCode::NOT_FOUND, "GetSession unknown");
    v1::GenerateRequest g = MakeGenerate("no-such-session", 3, 0.0f);
    g.set_prompt_text("abc");
    expect_code(RunGenerate(stub(), g).status, grpc::StatusCode::NOT_FOUND, "Generate unknown");
  }

  // No session id at all.
  expect_code(RunScore(stub(), {TextChunk("abc")}).status, grpc::StatusCode::INVALID_ARGUMENT, "Score without id");
  {
    v1::Session s;
    expect_code(GetSession(stub(), "", &s), grpc::StatusCode::INVALID_ARGUMENT, "GetSession without id");
    v1::GenerateRequest g = MakeGenerate("", 3, 0.0f);
    g.set_prompt_text("abc");
    expect_code(RunGenerate(stub(), g).status, grpc::StatusCode::INVALID_ARGUMENT, "Generate without id");
  }
  expect_unchanged("calls without a session id");

  // session_id and x-session-id metadata disagree; agreeing or metadata-only is fine.
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    ctx.AddMetadata("x-session-id", "bad-twin");
    expect_code(RunScore(stub(), TextRequests("bad", "abc"), &ctx).status, grpc::StatusCode::INVALID_ARGUMENT,
                "Score with disagreeing metadata");
  }
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    ctx.AddMetadata("x-session-id", "bad-twin");
    v1::GenerateRequest g = MakeGenerate("bad", 3, 0.0f);
    expect_code(RunGenerate(stub(), g, &ctx).status, grpc::StatusCode::INVALID_ARGUMENT,
                "Generate with disagreeing metadata");
  }
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    ctx.AddMetadata("x-session-id", "bad-twin");
    v1::GetSessionRequest req;
    req.set_session_id("bad");
    v1::Session s;
    expect_code(stub()->GetSession(&ctx, req, &s), grpc::StatusCode::INVALID_ARGUMENT,
                "GetSession with disagreeing metadata");
  }
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    ctx.AddMetadata("x-session-id", "bad");
    v1::Session s;
    const grpc::Status st = stub()->GetSession(&ctx, v1::GetSessionRequest(), &s);
    EXPECT_TRUE(st.ok()) << "metadata only: " << Describe(st);
    EXPECT_EQ(s.session_id(), "bad");
  }
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    ctx.AddMetadata("x-session-id", "metadata-only");
    const ScoreResult r = RunScore(stub(), {TextChunk("abc")}, &ctx);
    EXPECT_TRUE(r.status.ok()) << "Score named by metadata only: " << Describe(r.status);
    EXPECT_EQ(StateOf(stub(), "metadata-only").position, 3);
  }
  expect_unchanged("disagreeing ids");

  // An out-of-vocabulary id in the middle of a stream, after valid segments were scored and answered.
  {
    ScoreStream call(stub());
    v1::ScoreRequest first = IdChunk(Bytes(Text(100, 2 * kN)));
    first.set_session_id("bad");
    ASSERT_TRUE(call.Write(first));
    ASSERT_TRUE(call.ReadOne()) << "the first segment is answered";
    call.Write(IdChunk({65, 260, 66}));  // vocab is 260
    const ScoreResult r = call.Finish();
    expect_code(r.status, grpc::StatusCode::INVALID_ARGUMENT, "out-of-vocabulary id mid-stream");
    EXPECT_TRUE(Contains(r.status.error_message(), "260"));
    EXPECT_GE(r.responses.size(), 1u);
    expect_unchanged("an out-of-vocabulary id mid-stream");
  }
  expect_code(ScoreIds(stub(), "bad", {1, 2, -1}).status, grpc::StatusCode::INVALID_ARGUMENT, "negative id");
  expect_unchanged("a negative id");

  // Options out of range.
  {
    std::vector<v1::ScoreRequest> reqs = TextRequests("bad", "abc");
    reqs[0].mutable_options()->set_alternatives(99);
    expect_code(RunScore(stub(), reqs).status, grpc::StatusCode::INVALID_ARGUMENT, "alternatives 99");
    reqs[0].mutable_options()->set_alternatives(-1);
    expect_code(RunScore(stub(), reqs).status, grpc::StatusCode::INVALID_ARGUMENT, "alternatives -1");
  }
  expect_unchanged("bad alternatives");

  // The wrong expected position names the actual one.
  {
    std::vector<v1::ScoreRequest> reqs = TextRequests("bad", "abc");
    reqs[0].set_expected_position(7);
    const ScoreResult r = RunScore(stub(), reqs);
    expect_code(r.status, grpc::StatusCode::FAILED_PRECONDITION, "Score expected_position 7");
    EXPECT_TRUE(Contains(r.status.error_message(), "position 50"));
    v1::GenerateRequest g = MakeGenerate("bad", 3, 0.0f);
    g.set_expected_position(7);
    const GenerateResult gr = RunGenerate(stub(), g);
    expect_code(gr.status, grpc::StatusCode::FAILED_PRECONDITION, "Generate expected_position 7");
    EXPECT_TRUE(Contains(gr.status.error_message(), "position 50"));
  }
  expect_unchanged("a wrong expected position");

  // CreateSession with bad settings or ids creates nothing.
  {
    auto create = [&](const std::string& id, const v1::MemorySettings& m, int n) {
      return CreateSession(stub(), id, m, n);
    };
    const grpc::StatusCode invalid = grpc::StatusCode::INVALID_ARGUMENT;
    expect_code(create("c-over", Trams(24, 20, 8), kN), invalid, "topk + remain > mem_len");
    expect_code(create("c-neg-m", Trams(-1, 4, 8), kN), invalid, "mem_len -1");
    expect_code(create("c-neg-k", Trams(24, -1, 8), kN), invalid, "topk -1");
    expect_code(create("c-neg-r", Trams(24, 4, -2), kN), invalid, "remain -2");
    expect_code(create("c-seg0", Trams(kM, kTopk, kRemain), 0), invalid, "segment_len 0");
    expect_code(create("c-segneg", Trams(kM, kTopk, kRemain), -4), invalid, "segment_len -4");
    expect_code(create("bad", Trams(kM, kTopk, kRemain), kN), grpc::StatusCode::ALREADY_EXISTS, "duplicate id");
    for (const std::string& id :
         std::vector<std::string>{"has space", "a/b", "semi;colon", "caf\xc3\xa9", std::string(129, 'x')}) {
      expect_code(create(id, Trams(kM, kTopk, kRemain), kN), invalid, "session id '" + id + "'");
    }
    EXPECT_EQ(ListCount(stub()), sessions_before) << "no bad CreateSession may create a session";
    v1::Session s;
    EXPECT_EQ(GetSession(stub(), "c-over", &s).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  expect_unchanged("bad CreateSession calls (one reused its id)");

  // Generate with bad sampling settings.
  {
    v1::GenerateRequest g = MakeGenerate("bad", 3, -1.0f);
    expect_code(RunGenerate(stub(), g).status, grpc::StatusCode::INVALID_ARGUMENT, "temperature -1");
    g = MakeGenerate("bad", 3, 0.8f);
    g.set_top_p(2.0f);
    expect_code(RunGenerate(stub(), g).status, grpc::StatusCode::INVALID_ARGUMENT, "top_p 2");
    g = MakeGenerate("bad", -5, 0.8f);
    expect_code(RunGenerate(stub(), g).status, grpc::StatusCode::INVALID_ARGUMENT, "max_tokens -5");
  }
  expect_unchanged("bad Generate settings");

  // DeleteSession twice.
  NewSession("delete-twice");
  EXPECT_TRUE(DeleteSession(stub(), "delete-twice").ok());
  expect_code(DeleteSession(stub(), "delete-twice"), grpc::StatusCode::NOT_FOUND, "second DeleteSession");

  // After all that, "bad" behaves exactly like its twin that saw none of it.
  const ScoreResult next = ScoreText(stub(), "bad", Text(200, 60));
  const ScoreResult twin = ScoreText(stub(), "bad-twin", Text(200, 60));
  ASSERT_TRUE(next.status.ok()) << Describe(next.status);
  ASSERT_TRUE(twin.status.ok()) << Describe(twin.status);
  // 50 = 6 * 8 + 2: the two tokens of the incomplete segment are answered again, then the 60 new ones.
  EXPECT_EQ(next.tokens.front().position(), 48);
  EXPECT_EQ(next.end_position(), 110);
  ExpectSameLogProbs(next.logprobs(), twin.logprobs(), 0);
}

// 6 (continued). Text sent to a model without a tokenizer.
TEST(ServerIdsOnlyModelTest, TextIsFailedPreconditionAndChangesNothing) {
  auto server = StartServer(TestOptions("plain_postln"));
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::ModelInfo info;
    ASSERT_TRUE(stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
    EXPECT_EQ(info.tokenizer(), "none");
    EXPECT_EQ(info.vocab_size(), 97);
    // The device under test, as the engine names it (so the emulated run cannot silently be the host).
    const std::string asked = TestOptions("plain_postln").device.device;
    EXPECT_EQ(info.device(), asked == "emulated" ? "emulated:0" : asked == "cuda" ? "cuda:0" : "cpu");
  }
  ASSERT_TRUE(CreateSession(stub, "ids", Trams(kM, kTopk, kRemain), kN).ok());
  std::vector<int32_t> ids;
  for (int i = 0; i < 30; ++i) ids.push_back((i * 37 + 5) % 97);
  // History from ids (Generate takes prompt ids without touching the tokenizer).
  v1::GenerateRequest history = MakeGenerate("ids", 1, 0.0f);
  for (int32_t id : ids) history.mutable_prompt_ids()->add_ids(id);
  const GenerateResult h = RunGenerate(stub, history);
  ASSERT_TRUE(h.status.ok()) << Describe(h.status);
  const SessionState before = StateOf(stub, "ids");
  ASSERT_EQ(before.position, 31);

  const ScoreResult text = ScoreText(stub, "ids", "hello");
  EXPECT_EQ(text.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Describe(text.status);
  EXPECT_EQ(StateOf(stub, "ids"), before);

  // Text after scored ids in the same call: the call fails and its segments are undone.
  {
    ScoreStream call(stub);
    v1::ScoreRequest first = IdChunk(std::vector<int32_t>(ids.begin(), ids.begin() + kN));
    first.set_session_id("ids");
    ASSERT_TRUE(call.Write(first));
    ASSERT_TRUE(call.ReadOne());
    call.Write(TextChunk("hello"));
    const ScoreResult r = call.Finish();
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Describe(r.status);
    EXPECT_EQ(StateOf(stub, "ids"), before);
  }

  v1::GenerateRequest g = MakeGenerate("ids", 3, 0.0f);
  g.set_prompt_text("hello");
  const GenerateResult gen = RunGenerate(stub, g);
  EXPECT_EQ(gen.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Describe(gen.status);
  EXPECT_EQ(StateOf(stub, "ids"), before);
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

// ---------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------
// 8. Limits: max_sessions with LRU eviction or refusal, and the byte-exact memory budget.
TEST(ServerLimitsTest, LruEvictsTheLeastRecentlyUsedSession) {
  ServerOptions options = TestOptions(kModel);
  options.limits.max_sessions = 2;
  options.limits.eviction = EvictionPolicy::kLeastRecentlyUsed;
  auto server = StartServer(options);
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  ASSERT_TRUE(CreateSession(stub, "lru-a", Trams(kM, kTopk, kRemain), kN).ok());
  ASSERT_TRUE(CreateSession(stub, "lru-b", Trams(kM, kTopk, kRemain), kN).ok());
  ASSERT_TRUE(ScoreText(stub, "lru-a", "used last").status.ok());  // b is now the least recently used
  WaitIdle(stub, "lru-a");

  const grpc::Status third = CreateSession(stub, "lru-c", Trams(kM, kTopk, kRemain), kN);
  ASSERT_TRUE(third.ok()) << Describe(third);
  EXPECT_EQ(ListCount(stub), 2);

  const ScoreResult on_evicted = ScoreText(stub, "lru-b", "hello");
  EXPECT_THAT(on_evicted.status, StatusIs(grpc::StatusCode::NOT_FOUND,
                                          HasSubstr("evicted"))) << Describe(on_evicted.status);
  v1::Session s;
  const grpc::Status get = GetSession(stub, "lru-b", &s);
  EXPECT_THAT(get, StatusIs(grpc::StatusCode::NOT_FOUND, HasSubstr("evicted")));
  s = WaitIdle(stub, "lru-a");
  EXPECT_EQ(s.position(), 9) << "the recently used session survived untouched";
  EXPECT_TRUE(GetSession(stub, "lru-c", &s).ok());
}

TEST(ServerLimitsTest, RefusePolicyRefusesTheThirdSession) {
  ServerOptions options = TestOptions(kModel);
  options.limits.max_sessions = 2;
  options.limits.eviction = EvictionPolicy::kRefuse;
  auto server = StartServer(options);
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  ASSERT_TRUE(CreateSession(stub, "ref-a", Trams(kM, kTopk, kRemain), kN).ok());
  ASSERT_TRUE(CreateSession(stub, "ref-b", Trams(kM, kTopk, kRemain), kN).ok());
  ASSERT_TRUE(ScoreText(stub, "ref-a", "some text").status.ok());
  const grpc::Status third = CreateSession(stub, "ref-c", Trams(kM, kTopk, kRemain), kN);
  EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(third);
  EXPECT_EQ(ListCount(stub), 2);
  v1::Session s = WaitIdle(stub, "ref-a");
  EXPECT_EQ(s.position(), 9);
  EXPECT_TRUE(GetSession(stub, "ref-b", &s).ok());
  // Room again after a delete.
  ASSERT_TRUE(DeleteSession(stub, "ref-b").ok());
  EXPECT_TRUE(CreateSession(stub, "ref-c", Trams(kM, kTopk, kRemain), kN).ok());
}

// The budget counts pools plus, while a call runs, an undo reservation of that session's pool bytes.
TEST(ServerLimitsTest, MemoryBudgetIsByteExact) {
  // A session's pool bytes, as CreateSession reports them.
  const int64_t pool = ReportedPoolBytes(TestOptions(kModel), Trams(kM, kTopk, kRemain), kN);
  {
    // What the engine of the device under test allocates (the arena block, on a CUDA backend).
    auto opened = engine::OpenEngine(ModelDir(kModel), TestOptions(kModel).device);
    ASSERT_TRUE(opened.ok()) << opened.status();
    auto bytes = opened->engine->StreamBytes(engine::TramsSettings::Trams(kM, kTopk, kRemain));
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    EXPECT_EQ(pool, *bytes);
    if (opened->engine->device() == "cpu") {
      EXPECT_EQ(pool, engine::StreamState::BytesFor(opened->engine->config(), engine::TramsSettings::Trams(kM, kTopk, kRemain)));
    }
  }
  ASSERT_GT(pool, 0);
  const int64_t budget = 2 * pool + pool;  // two sessions + one running call's undo reservation
  const grpc::StatusCode exhausted = grpc::StatusCode::RESOURCE_EXHAUSTED;

  {  // Exactly at the budget, eviction off.
    SCOPED_TRACE("budget 3P, refuse");
    ServerOptions options = TestOptions(kModel);
    options.limits.memory_budget_bytes = budget;
    options.limits.eviction = EvictionPolicy::kRefuse;
    auto server = StartServer(options);
    ASSERT_NE(server, nullptr);
    auto* stub = server->stub.get();
    ASSERT_TRUE(CreateSession(stub, "a", Trams(kM, kTopk, kRemain), kN).ok());
    ASSERT_TRUE(CreateSession(stub, "b", Trams(kM, kTopk, kRemain), kN).ok());
    {
      // While a call runs on a, its undo reservation fills the budget: no third session fits.
      ScoreStream call(stub);
      v1::ScoreRequest first = TextChunk(Text(0, kN));
      first.set_session_id("a");
      ASSERT_TRUE(call.Write(first));
      ASSERT_TRUE(call.ReadOne());
      const grpc::Status during = CreateSession(stub, "c", Trams(kM, kTopk, kRemain), kN);
      EXPECT_EQ(during.error_code(), exhausted) << Describe(during);
      const ScoreResult r = call.Finish();
      EXPECT_TRUE(r.status.ok()) << "a call that needs exactly the rest of the budget runs: " << Describe(r.status);
    }
    // Idle again: three pools fit exactly.
    WaitIdle(stub, "a");
    const grpc::Status c = CreateSession(stub, "c", Trams(kM, kTopk, kRemain), kN);
    EXPECT_TRUE(c.ok()) << "three pools are exactly the budget: " << Describe(c);
    // Now a call needs one more pool's worth for its undo log: refused, and nothing changes.
    const SessionState a_before = StateOf(stub, "a");
    const ScoreResult refused = ScoreText(stub, "a", "more text");
    EXPECT_EQ(refused.status.error_code(), exhausted) << Describe(refused.status);
    EXPECT_EQ(StateOf(stub, "a"), a_before);
    EXPECT_EQ(ListCount(stub), 3) << "eviction is off";
    // ExplainSelection reads without an undo log, so it still runs.
    v1::ExplainSelectionResponse ex;
    const grpc::Status explain = Explain(stub, "a", &ex);
    EXPECT_NE(explain.error_code(), exhausted) << Describe(explain);
    // Freeing one pool makes room for the reservation again.
    ASSERT_TRUE(DeleteSession(stub, "c").ok());
    const ScoreResult ok = ScoreText(stub, "a", "more text");
    EXPECT_TRUE(ok.status.ok()) << Describe(ok.status);
  }
  {  // One byte short.
    SCOPED_TRACE("budget 3P - 1, refuse");
    ServerOptions options = TestOptions(kModel);
    options.limits.memory_budget_bytes = budget - 1;
    options.limits.eviction = EvictionPolicy::kRefuse;
    auto server = StartServer(options);
    ASSERT_NE(server, nullptr);
    auto* stub = server->stub.get();
    ASSERT_TRUE(CreateSession(stub, "a", Trams(kM, kTopk, kRemain), kN).ok());
    ASSERT_TRUE(CreateSession(stub, "b", Trams(kM, kTopk, kRemain), kN).ok());
    const SessionState a_before = StateOf(stub, "a");
    const ScoreResult refused = ScoreText(stub, "a", "text");
    EXPECT_EQ(refused.status.error_code(), exhausted) << Describe(refused.status);
    EXPECT_TRUE(Contains(refused.status.error_message(), "memory budget"));
    EXPECT_EQ(StateOf(stub, "a"), a_before);
    const grpc::Status c = CreateSession(stub, "c", Trams(kM, kTopk, kRemain), kN);
    EXPECT_EQ(c.error_code(), exhausted) << Describe(c);
  }
  {  // Exactly at the budget with LRU: a call's reservation evicts the least recently used idle session.
    SCOPED_TRACE("budget 3P, LRU");
    ServerOptions options = TestOptions(kModel);
    options.limits.memory_budget_bytes = budget;
    options.limits.eviction = EvictionPolicy::kLeastRecentlyUsed;
    auto server = StartServer(options);
    ASSERT_NE(server, nullptr);
    auto* stub = server->stub.get();
    for (const char* id : {"a", "b", "c"}) {
      const grpc::Status st = CreateSession(stub, id, Trams(kM, kTopk, kRemain), kN);
      EXPECT_TRUE(st.ok()) << id << ": " << Describe(st);
    }
    EXPECT_EQ(ListCount(stub), 3) << "three pools fit exactly: nothing evicted yet";
    const ScoreResult r = ScoreText(stub, "a", "text");
    EXPECT_TRUE(r.status.ok()) << Describe(r.status);
    v1::Session s;
    const grpc::Status b = GetSession(stub, "b", &s);
    EXPECT_THAT(b, StatusIs(grpc::StatusCode::NOT_FOUND, HasSubstr("evicted"))) << Describe(b);
    EXPECT_TRUE(GetSession(stub, "c", &s).ok());
    EXPECT_EQ(WaitIdle(stub, "a").position(), 4);
  }
}

// ---------------------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------------------
// 10. ExplainSelection reports, per layer and head, the topk pool tokens TRAMS selected.
TEST_F(ServerTest, ExplainSelectionReportsTopkPerHead) {
  NewSession("explain");
  v1::ExplainSelectionResponse fresh;
  const grpc::Status before = Explain(stub(), "explain", &fresh);
  EXPECT_EQ(before.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Describe(before);
  EXPECT_EQ(Explain(stub(), "no-such-session", &fresh).error_code(), grpc::StatusCode::NOT_FOUND);

  const std::string text = Text(0, 100);  // 12 full segments of 8, then 4 tokens
  ASSERT_TRUE(ScoreText(stub(), "explain", text).status.ok());
  v1::ExplainSelectionResponse ex;
  const grpc::Status st = Explain(stub(), "explain", &ex);
  ASSERT_TRUE(st.ok()) << Describe(st);
  EXPECT_EQ(ex.segment_start(), 96);
  EXPECT_EQ(ex.segment_len(), 4);
  const int64_t start = ex.segment_start();
  const int64_t pool_before = std::min<int64_t>(kM, start);
  ASSERT_EQ(ex.layers_size(), 3);
  for (const auto& layer : ex.layers()) {
    SCOPED_TRACE("layer " + std::to_string(layer.layer()));
    EXPECT_EQ(layer.recent_from(), start - kRemain);
    ASSERT_EQ(layer.heads_size(), 3);
    std::set<int> heads;
    for (const auto& head : layer.heads()) {
      SCOPED_TRACE("head " + std::to_string(head.head()));
      heads.insert(head.head());
      ASSERT_EQ(head.selected_size(), kTopk);
      for (int i = 0; i < head.selected_size(); ++i) {
        const v1::SelectedToken& t = head.selected(i);
        EXPECT_LT(t.position(), start);
        EXPECT_LT(t.position(), layer.recent_from()) << "selected from the older part of the pool";
        EXPECT_GE(t.position(), start - pool_before);
        if (i > 0) {
          EXPECT_GT(t.position(), head.selected(i - 1).position()) << "ascending";
        }
        if (t.position() >= 0 && t.position() < static_cast<int64_t>(text.size())) {
          EXPECT_EQ(t.id(), static_cast<unsigned char>(text[t.position()]));
          EXPECT_EQ(t.text(), text.substr(t.position(), 1));
        }
      }
    }
    EXPECT_EQ(heads, (std::set<int>{0, 1, 2}));
  }
}

// ---------------------------------------------------------------------------------------------
// 11. Shutdown with no drain time cancels a running Generate, which rolls its session back.
TEST(ServerShutdownTest, ShutdownCancelsRunningGenerateAndRollsBack) {
  ServerOptions options = TestOptions(kModel);
  options.requests.max_generate_tokens = 1 << 30;
  auto server = StartServer(options);
  ASSERT_NE(server, nullptr);
  auto* stub = server->stub.get();
  ASSERT_TRUE(CreateSession(stub, "sd", Trams(kM, kTopk, kRemain), kN).ok());
  ASSERT_TRUE(ScoreText(stub, "sd", Text(0, 30)).status.ok());
  const SessionState before = StateOf(stub, "sd");

  v1::GenerateRequest g = MakeGenerate("sd", 1 << 29, 0.8f);
  g.set_seed(3);
  g.set_prompt_text("abc");
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  auto reader = stub->Generate(&ctx, g);
  v1::GenerateResponse resp;
  int tokens = 0;
  ASSERT_TRUE(reader->Read(&resp)) << "Generate is running";
  tokens += resp.tokens_size();

  auto shutdown = std::async(std::launch::async, [&] { server->app->Shutdown(std::chrono::milliseconds(0)); });
  while (reader->Read(&resp)) tokens += resp.tokens_size();
  const grpc::Status status = reader->Finish();
  if (shutdown.wait_for(std::chrono::seconds(20)) != std::future_status::ready) {
    ADD_FAILURE() << "ServerApp::Shutdown(0 ms) did not return";
    std::_Exit(1);  // a hung shutdown would hang the test binary too
  }
  EXPECT_FALSE(status.ok()) << "a Generate of 2^29 tokens cannot have finished";

  absl::StatusOr<SessionSnapshot> after = server->app->sessions().Get("sd");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_FALSE(after->busy);
  if (status.ok()) {
    EXPECT_EQ(after->position, before.position + 3 + tokens);
  } else {
    EXPECT_EQ(after->position, before.position) << "rolled back: " << Describe(status);
    EXPECT_EQ(after->tokens_scored, before.tokens_scored);
    EXPECT_EQ(after->nll_sum, before.nll_sum);
    EXPECT_EQ(after->pool_tokens, before.pool_tokens);
  }

  // New calls fail, on the old channel and on a new one.
  v1::Session s;
  const grpc::Status get = GetSession(stub, "sd", &s);
  EXPECT_EQ(get.error_code(), grpc::StatusCode::UNAVAILABLE) << Describe(get);
  auto channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
  auto fresh = v1::TramsService::NewStub(channel);
  const ScoreResult score = ScoreText(fresh.get(), "sd", "abc");
  EXPECT_EQ(score.status.error_code(), grpc::StatusCode::UNAVAILABLE) << Describe(score.status);
}

// ---------------------------------------------------------------------------------------------
// A Score call that half-closes without sending any message names no session: it must end at once
// (INVALID_ARGUMENT), not wait for its deadline.
TEST_F(ServerTest, ScoreWithoutAnyMessageEndsAtOnce) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  const ScoreResult r = RunScore(stub(), {}, &ctx);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(r.status);
}

}  // namespace
}  // namespace trams::server::test
