// The protocol layer (server/lm_service.cc): bad input gets its status and changes nothing, a model
// without a tokenizer refuses text, ExplainSelection (set-up: server_fixture.h).
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
    v1::ModelInfo info;
    ASSERT_TRUE(GetModelInfo(stub, &info).ok());
    EXPECT_EQ(info.tokenizer(), "none");
    EXPECT_EQ(info.vocab_size(), 97);
    EXPECT_EQ(info.model_dir(), "plain_postln") << "the model's name, never the host's path to it";
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

}  // namespace
}  // namespace trams::server::test
