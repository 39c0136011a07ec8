// Tenant quotas (--auth_keys QUOTA=N fields, issue 11): the limiter on its own (deterministic clock), then
// over real gRPC: sessions and pool bytes per tenant, the global budget never evicting another tenant's
// sessions, concurrent calls, tokens per second (throttled, never wrong), and a flood from one tenant
// that the quotas hold while the other tenant is served.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "server/auth_keys.h"
#include "server/tenant_limiter.h"
#include "tests/server/keyed_channel.h"
#include "tests/server/server_fixture.h"

namespace trams::server::test {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

const std::string kAliceKey = "alice-0123456789abcdef", kBobKey = "bob-fedcba9876543210";

TEST(TenantLimiterTest, CallsBeyondTheQuotaAreRefusedUntilOneEnds) {
  TenantLimiter limiter({{"bob", {.max_concurrent_calls = 2}}, {"alice", {}}}, nullptr);
  EXPECT_TRUE(limiter.StartCall("bob").ok());
  EXPECT_TRUE(limiter.StartCall("bob").ok());
  const absl::Status third = limiter.StartCall("bob");
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Contains(std::string(third.message()), "max_concurrent_calls=2")) << third;
  limiter.EndCall("bob");
  EXPECT_TRUE(limiter.StartCall("bob").ok());
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(limiter.StartCall("alice").ok()) << "alice has no call quota";
  EXPECT_TRUE(limiter.StartCall("").ok()) << "no tenant: no quota";
}

TEST(TenantLimiterTest, TheRateIsATokenBucketOfOneSecondThatDelaysWhatItCannotPay) {
  TenantLimiter limiter({{"bob", {.tokens_per_second = 100}}}, nullptr);
  const Clock::time_point t0 = Clock::now();
  auto wait_ms = [&](int64_t tokens, Clock::time_point at) {
    return std::chrono::duration_cast<milliseconds>(limiter.Reserve("bob", tokens, at)).count();
  };
  EXPECT_EQ(wait_ms(60, t0), 0) << "the bucket starts full (100)";
  EXPECT_EQ(wait_ms(60, t0), 200) << "20 tokens owed at 100/s";
  EXPECT_EQ(wait_ms(0, t0 + milliseconds(200)), 0) << "repaid after 200 ms";
  EXPECT_EQ(wait_ms(100, t0 + milliseconds(5200)), 0) << "refilled, but never past one second's worth";
  EXPECT_EQ(wait_ms(50, t0 + milliseconds(5200)), 500);
  EXPECT_EQ(wait_ms(0, t0), 500) << "a clock going back refills nothing";
  EXPECT_EQ(std::chrono::duration_cast<milliseconds>(limiter.Reserve("alice", 1 << 30, t0)).count(), 0);
}

class QuotaTest : public ::testing::Test {
 protected:
  void TearDown() override {
    server_.reset();
    fs::remove(keys_);
  }
  // A server whose keys give bob `bob_quotas` (alice has none), with `options` tweaked by the test.
  void Start(const std::string& bob_quotas, ServerOptions options = TestOptions(kModel)) {
    keys_ = (fs::temp_directory_path() / ("trams-quota-keys-" + std::to_string(::getpid()))).string();
    std::ofstream(keys_) << "alice sha256:" << AuthKeys::Sha256Hex(kAliceKey) << "\n"
                         << "bob sha256:" << AuthKeys::Sha256Hex(kBobKey) << " " << bob_quotas << "\n";
    options.auth_keys = keys_;
    options.requests.max_generate_tokens = 1 << 30;
    server_ = StartServer(options);
    ASSERT_NE(server_, nullptr);
    alice_ = KeyedStub(server_->address(), kAliceKey);
    bob_ = KeyedStub(server_->address(), kBobKey);
  }
  static grpc::Status Make(v1::TramsService::Stub* stub, const std::string& id) {
    return CreateSession(stub, id, Trams(kM, kTopk, kRemain), kN);
  }
  static bool Exists(v1::TramsService::Stub* stub, const std::string& id) {
    v1::Session s;
    return GetSession(stub, id, &s).ok();
  }
  // Whether a call holds `id` now.
  static bool IsBusy(v1::TramsService::Stub* stub, const std::string& id) {
    v1::Session s;
    return GetSession(stub, id, &s).ok() && s.busy();
  }
  static int64_t PoolBytes() {
    static const int64_t bytes = ReportedPoolBytes(TestOptions(kModel), Trams(kM, kTopk, kRemain), kN);
    return bytes;
  }
  std::string keys_;
  std::unique_ptr<TestServer> server_;
  std::unique_ptr<v1::TramsService::Stub> alice_, bob_;
};

TEST_F(QuotaTest, ASessionQuotaEvictsOnlyTheTenantsOwnIdleSessions) {
  Start("max_sessions=2");
  ASSERT_TRUE(Make(alice_.get(), "a0").ok());  // the least recently used session of the server
  ASSERT_TRUE(Make(bob_.get(), "b1").ok());
  ASSERT_TRUE(Make(bob_.get(), "b2").ok());
  ASSERT_TRUE(Make(bob_.get(), "b3").ok());
  EXPECT_FALSE(Exists(bob_.get(), "b1")) << "bob's third session evicts bob's oldest";
  EXPECT_TRUE(Exists(alice_.get(), "a0")) << "never alice's";
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Make(alice_.get(), "a" + std::to_string(i + 1)).ok()) << "alice has no quota";
  EXPECT_TRUE(Exists(bob_.get(), "b2"));
}

TEST_F(QuotaTest, WithEvictionOffTheQuotaIsRefusedNamingIt) {
  ServerOptions o = TestOptions(kModel);
  o.limits.eviction = EvictionPolicy::kRefuse;
  Start("max_sessions=2 max_pool_bytes=" + std::to_string(3 * PoolBytes()), o);
  ASSERT_TRUE(Make(bob_.get(), "b1").ok());
  ASSERT_TRUE(Make(bob_.get(), "b2").ok());
  const grpc::Status third = Make(bob_.get(), "b3");
  EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(Contains(third.error_message(), "tenant 'bob' holds its quota of max_sessions=2")) << Describe(third);
  EXPECT_TRUE(Exists(bob_.get(), "b1") && Exists(bob_.get(), "b2")) << "a refused create changes nothing";
  ASSERT_TRUE(DeleteSession(bob_.get(), "b1").ok());
  EXPECT_TRUE(Make(bob_.get(), "b3").ok()) << "room again once one is deleted";
}

TEST_F(QuotaTest, APoolBytesQuotaCountsTheTenantsPools) {
  ServerOptions o = TestOptions(kModel);
  o.limits.eviction = EvictionPolicy::kRefuse;
  Start("max_pool_bytes=" + std::to_string(PoolBytes() * 3 / 2), o);
  ASSERT_TRUE(Make(bob_.get(), "b1").ok());
  const grpc::Status second = Make(bob_.get(), "b2");
  EXPECT_EQ(second.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(Contains(second.error_message(), "max_pool_bytes=" + std::to_string(PoolBytes() * 3 / 2)))
      << Describe(second);
  ASSERT_TRUE(Make(alice_.get(), "a1").ok());
  ASSERT_TRUE(Make(alice_.get(), "a2").ok()) << "alice's pools do not count against bob's quota";
  // A forked or imported session counts like a created one.
  v1::Session twin;
  EXPECT_EQ(Fork(bob_.get(), "b1", "b1-twin", &twin).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(QuotaTest, TheServersBudgetNeverEvictsAnotherTenantsSession) {
  ServerOptions o = TestOptions(kModel);
  o.limits.memory_budget_bytes = 3 * PoolBytes();
  Start("", o);
  ASSERT_TRUE(Make(alice_.get(), "a1").ok());
  ASSERT_TRUE(Make(alice_.get(), "a2").ok());
  ASSERT_TRUE(Make(bob_.get(), "b1").ok());  // the budget is full
  ASSERT_TRUE(Make(bob_.get(), "b2").ok());
  EXPECT_FALSE(Exists(bob_.get(), "b1")) << "bob made room with his own idle session";
  EXPECT_TRUE(Exists(alice_.get(), "a1") && Exists(alice_.get(), "a2")) << "though alice's are older";
  ASSERT_TRUE(DeleteSession(bob_.get(), "b2").ok());
  ASSERT_TRUE(Make(alice_.get(), "a3").ok());  // full again, all alice's
  const grpc::Status refused = Make(bob_.get(), "b3");
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(Contains(refused.error_message(), "only the caller's own idle sessions are evicted")) << Describe(refused);
  EXPECT_TRUE(Exists(alice_.get(), "a1") && Exists(alice_.get(), "a2") && Exists(alice_.get(), "a3"));
}

TEST_F(QuotaTest, CallsPastTheConcurrentQuotaAreRefusedWhileOthersAreServed) {
  Start("max_concurrent_calls=1");
  ASSERT_TRUE(Make(bob_.get(), "long").ok());
  ASSERT_TRUE(Make(bob_.get(), "other").ok());
  ASSERT_TRUE(Make(alice_.get(), "hers").ok());
  ASSERT_TRUE(ScoreText(bob_.get(), "long", Text(0, 40)).status.ok());
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::GenerateRequest endless = MakeGenerate("long", 1 << 30, 0.0f);
  auto reader = bob_->Generate(&ctx, endless);
  v1::GenerateResponse first;
  ASSERT_TRUE(reader->Read(&first)) << "the generate runs (and holds bob's only slot)";
  const ScoreResult refused = ScoreText(bob_.get(), "other", Text(100, 30));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << Describe(refused.status);
  EXPECT_TRUE(Contains(refused.status.error_message(), "max_concurrent_calls=1"));
  EXPECT_TRUE(ScoreText(alice_.get(), "hers", Text(100, 30)).status.ok()) << "alice is not bob";
  ctx.TryCancel();
  while (reader->Read(&first)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  // The slot comes back when the call is gone (its reactor may end a moment after the client saw it).
  ScoreResult again;
  for (int i = 0; i < 200; ++i) {
    again = ScoreText(bob_.get(), "other", Text(100, 30));
    if (again.status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) break;
    std::this_thread::sleep_for(milliseconds(10));
  }
  EXPECT_TRUE(again.status.ok()) << Describe(again.status);
}

TEST_F(QuotaTest, TokensPerSecondSlowsTheTenantDownAndChangesNoResult) {
  Start("tokens_per_second=400");
  const std::string text = Text(0, 1200);
  ASSERT_TRUE(Make(alice_.get(), "doc").ok());
  ASSERT_TRUE(Make(bob_.get(), "doc").ok());
  const ScoreResult free = ScoreText(alice_.get(), "doc", text);
  ASSERT_TRUE(free.status.ok());
  const Clock::time_point start = Clock::now();
  const ScoreResult paced = ScoreText(bob_.get(), "doc", text);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  ASSERT_TRUE(paced.status.ok()) << Describe(paced.status);
  // 1200 tokens (and more: each call's provisional tail runs again) against a full bucket of 400 at 400/s.
  EXPECT_GE(seconds, 1.9) << "the bucket did not slow bob down";
  ExpectSameLogProbs(paced.logprobs(), free.logprobs(), 0);
}

TEST_F(QuotaTest, ACancelledOrDrainedCallDoesNotWaitForItsTenantsRate) {
  Start("tokens_per_second=10");
  // One 64-token segment owes 54 tokens at 10/s: 5.4 s of waiting.
  ASSERT_TRUE(CreateSession(bob_.get(), "doc", Trams(kM, kTopk, kRemain), 64).ok());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + milliseconds(800));
  const ScoreResult cut = RunScore(bob_.get(), TextRequests("doc", Text(0, 200)), &ctx);
  EXPECT_EQ(cut.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << Describe(cut.status);
  const Clock::time_point after = Clock::now();
  const v1::Session s = WaitIdle(bob_.get(), "doc");
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - after).count(), 3.0)
      << "the waiting segment outwaited its call's deadline";
  EXPECT_EQ(s.position(), 0) << "the cancelled call rolled back";

  // A drain runs waiting segments at once: the call completes instead of holding the shutdown.
  ScoreResult drained;
  std::thread call([&] { drained = ScoreText(bob_.get(), "doc", Text(0, 300)); });
  for (int i = 0; i < 2000 && !IsBusy(bob_.get(), "doc"); ++i) std::this_thread::sleep_for(milliseconds(1));
  const Clock::time_point drain = Clock::now();
  server_->app->Shutdown(std::chrono::seconds(30), milliseconds(0));
  call.join();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - drain).count(), 10.0) << "the drain waited on the rate";
  EXPECT_TRUE(drained.status.ok()) << Describe(drained.status);
  EXPECT_EQ(drained.tokens.size(), 300u);
}

TEST_F(QuotaTest, AFloodFromOneTenantIsHeldByItsQuotasWhileTheOtherIsServed) {
  Start("max_concurrent_calls=2 tokens_per_second=500 max_sessions=8");
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(Make(bob_.get(), "flood" + std::to_string(i)).ok());
  ASSERT_TRUE(Make(alice_.get(), "probe").ok());
  auto probe = [&](int calls) {
    std::vector<double> ms;
    for (int i = 0; i < calls; ++i) {
      const Clock::time_point t = Clock::now();
      const ScoreResult r = ScoreText(alice_.get(), "probe", Text(static_cast<size_t>(i % 50) * 64, 64));
      EXPECT_TRUE(r.status.ok()) << Describe(r.status);
      ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t).count());
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() * 99 / 100];
  };
  const double quiet_p99 = probe(100);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> served_tokens{0}, refused{0}, other{0};
  std::vector<std::thread> flood;
  const Clock::time_point flood_start = Clock::now();
  for (int t = 0; t < 8; ++t) {
    flood.emplace_back([&, t] {
      while (!stop) {
        const ScoreResult r = ScoreText(bob_.get(), "flood" + std::to_string(t), Text(0, 256));
        if (r.status.ok()) served_tokens += static_cast<int64_t>(r.tokens.size());
        else if (r.status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) ++refused;
        else ++other;
      }
    });
  }
  const double loaded_p99 = probe(100);
  stop = true;
  for (std::thread& t : flood) t.join();
  const double flood_seconds = std::chrono::duration<double>(Clock::now() - flood_start).count();
  EXPECT_GT(refused.load(), 0) << "8 flooding callers against max_concurrent_calls=2";
  EXPECT_EQ(other.load(), 0) << "the flood's calls are served or refused, nothing else";
  // Tokens scored, not run: each call's provisional tail runs again, so the model ran somewhat more.
  EXPECT_LE(served_tokens.load(), static_cast<int64_t>(500 * flood_seconds) + 500 + 2 * 256)
      << "bob was served past his tokens_per_second";
  std::printf("[ measure  ] alice's p99 latency: %.2f ms quiet, %.2f ms under bob's flood (%.2fx); bob: %lld "
              "tokens served, %lld calls refused in %.1f s\n",
              quiet_p99, loaded_p99, loaded_p99 / quiet_p99, static_cast<long long>(served_tokens.load()),
              static_cast<long long>(refused.load()), flood_seconds);
}

}  // namespace
}  // namespace trams::server::test
