// SessionManager with a store, on its own (no gRPC): spill and restore under concurrent calls, a store that
// fails for a while (the session is never lost: restores find it in the writer's queue, the write is
// retried), ids the store holds, and a corrupt stored session. The store is the real DiskStore; the
// failing one wraps it and fails its first writes, as a full or unplugged disk would.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "engine/open_engine.h"
#include "server/disk_store.h"
#include "server/session_manager.h"
#include "tests/server/test_engine.h"

namespace trams::server {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

class FailingStore final : public SessionStore {
 public:
  FailingStore(SessionStore* inner, int fail_puts) : inner_(inner), fail_puts_(fail_puts) {}
  std::string Describe() const override { return "failing " + inner_->Describe(); }
  absl::Status Put(const std::string& id, const std::string& blob) override {
    if (fail_puts_.fetch_sub(1) > 0) return absl::UnavailableError("disk unplugged");
    return inner_->Put(id, blob);
  }
  absl::StatusOr<std::string> Get(const std::string& id) override { return inner_->Get(id); }
  absl::Status Delete(const std::string& id) override { return inner_->Delete(id); }
  absl::StatusOr<bool> Contains(const std::string& id) override { return inner_->Contains(id); }

 private:
  SessionStore* inner_;
  std::atomic<int> fail_puts_;
};

class SessionPersistenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(test::OpenTestEngine(&engine_));
    dir_ = (fs::temp_directory_path() / ("trams-persist-" + std::to_string(::getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(dir_);
    disk_ = *DiskStore::Open(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<SessionManager> Manager(SessionStore* store, int fit_sessions) {
    SessionLimits limits;
    limits.idle_ttl_seconds = 0;
    limits.memory_budget_bytes = *engine_.engine->StreamBytes(Settings()) * fit_sessions;
    SessionPersistence p;
    p.identity = {engine_.engine->model_fingerprint(), "byte"};
    p.store = store;
    return std::make_unique<SessionManager>(engine_.engine.get(), limits, int64_t{1} << 20, nullptr, p);
  }
  static engine::TramsSettings Settings() { return engine::TramsSettings::Trams(24, 4, 8); }

  // One segment of `n` tokens on `id` through the engine, committed like a call (no undo reservation).
  absl::Status Feed(SessionManager& m, const std::string& id, int n, int seed, bool reserve_undo = false) {
    absl::Status result = absl::UnknownError("not run");
    m.Acquire(id, [&](absl::StatusOr<std::shared_ptr<Session>> s) {
      if (!s.ok()) {
        result = s.status();
        return;
      }
      std::vector<int32_t> tokens;
      for (int i = 0; i < n; ++i) tokens.push_back((seed * 31 + i * 7) % 250);
      engine::SegmentInput in{(*s)->stream.get(), tokens, {}};
      std::vector<engine::SegmentOutput> out;
      result = engine_.engine->Forward({&in, 1}, &out);
      CallLedger ledger;
      CallOrigin origin;
      origin.boundary = origin.call_start = (*s)->position();
      ledger.CountSegment(origin, origin.call_start, tokens, out[0].logprob, false);
      (*s)->Commit(std::move(ledger));
      m.Release(*s);
    }, reserve_undo);
    return result;
  }

  engine::OpenedEngine engine_;
  std::string dir_;
  std::unique_ptr<DiskStore> disk_;
};

TEST_F(SessionPersistenceTest, ConcurrentCallsOnMoreSessionsThanFitLoseNothing) {
  constexpr int kSessions = 24, kThreads = 4, kRounds = 5;
  // The running calls' sessions and their undo reservations fit, with one more; the others are spilled.
  auto m = Manager(disk_.get(), 2 * kThreads + 1);
  for (int i = 0; i < kSessions; ++i) ASSERT_TRUE(m->Create(absl::StrCat("s", i), Settings(), 8).ok());
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int r = 0; r < kRounds; ++r) {
        for (int i = t; i < kSessions; i += kThreads) {
          if (absl::Status st = Feed(*m, absl::StrCat("s", i), 8, r, /*reserve_undo=*/true); !st.ok()) {
            ++failures;
            ADD_FAILURE() << st;
          }
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  for (int i = 0; i < kSessions; ++i) {
    absl::StatusOr<SessionSnapshot> s = m->Get(absl::StrCat("s", i));
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->position, 8 * kRounds) << "s" << i << ": every committed segment is still there";
  }
}

TEST_F(SessionPersistenceTest, AFailingStoreLosesNothingAndIsRetried) {
  FailingStore failing(disk_.get(), 3);
  auto m = Manager(&failing, 1);
  ASSERT_TRUE(m->Create("a", Settings(), 8).ok());
  ASSERT_TRUE(Feed(*m, "a", 16, 1).ok());
  ASSERT_TRUE(m->Create("b", Settings(), 8).ok());  // spills a; its write fails 3 times
  EXPECT_EQ(m->Get("a")->position, 16) << "restored from the writer's queue while the store fails";
  bool flushed = false;
  m->SaveAll(std::chrono::seconds(20), &flushed);
  EXPECT_TRUE(flushed) << "retried until written";
  EXPECT_TRUE(*disk_->Contains("a") || *disk_->Contains("b"));
}

TEST_F(SessionPersistenceTest, IdsTheStoreHoldsAreTakenAndACorruptOneIsDataLoss) {
  {
    auto m = Manager(disk_.get(), 4);
    ASSERT_TRUE(m->Create("kept", Settings(), 8).ok());
    ASSERT_TRUE(Feed(*m, "kept", 8, 2).ok());
    ASSERT_TRUE(m->Create("broken", Settings(), 8).ok());
    bool flushed = false;
    m->SaveAll(std::chrono::seconds(20), &flushed);
    ASSERT_TRUE(flushed);
  }
  {
    std::fstream f(dir_ + "/broken.snap", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-3, std::ios::end);
    f.put('!');
  }
  auto m = Manager(disk_.get(), 4);
  EXPECT_EQ(m->Create("kept", Settings(), 8).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(m->Get("kept")->position, 8);
  absl::StatusOr<SessionSnapshot> broken = m->Get("broken");
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(broken.status().message()), HasSubstr("checksum"));
}

}  // namespace
}  // namespace trams::server
