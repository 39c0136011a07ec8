// The session budget over gRPC (server/session_manager.cc): LRU eviction, refusal, a byte-exact memory
// budget (set-up: server_fixture.h).
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

}  // namespace
}  // namespace trams::server::test
