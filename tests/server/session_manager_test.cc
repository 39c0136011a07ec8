// SessionManager on its own (no gRPC): the session state through a call and a delete, and the idle
// reaper that every manager runs, whoever built it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <set>
#include <thread>

#include "engine/open_engine.h"
#include "server/session_manager.h"
#include "tests/server/test_engine.h"

namespace trams::server {
namespace {

using ::testing::HasSubstr;

class SessionManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(test::OpenTestEngine(&engine_));
  }
  std::unique_ptr<SessionManager> Manager(int idle_ttl_seconds) {
    SessionLimits limits;
    limits.idle_ttl_seconds = idle_ttl_seconds;
    return std::make_unique<SessionManager>(engine_.engine.get(), limits, int64_t{1} << 20, nullptr);
  }
  // Acquires `id` and returns the session (the callback runs at once for a free session).
  static std::shared_ptr<Session> Take(SessionManager& m, const std::string& id) {
    std::shared_ptr<Session> taken;
    m.Acquire(id, [&](absl::StatusOr<std::shared_ptr<Session>> s) {
      ASSERT_TRUE(s.ok()) << s.status();
      taken = *s;
    });
    return taken;
  }
  engine::OpenedEngine engine_;
};

TEST_F(SessionManagerTest, StateFollowsCallsAndDeletes) {
  auto m = Manager(0);
  ASSERT_TRUE(m->Create("a", engine::TramsSettings::Trams(16, 4, 4), 8).ok());
  EXPECT_EQ(m->Get("a")->state, SessionState::kIdle);
  EXPECT_FALSE(m->Get("a")->busy);

  std::shared_ptr<Session> held = Take(*m, "a");
  ASSERT_NE(held, nullptr);
  EXPECT_EQ(m->Get("a")->state, SessionState::kRunning);
  EXPECT_TRUE(m->Get("a")->busy);

  // A delete while a call holds the session waits for the call: the session drains.
  auto del = std::make_shared<SessionManager::DeleteRequest>();
  absl::Status deleted = absl::UnknownError("not answered");
  del->done = [&](absl::Status s) { deleted = s; };
  m->Delete("a", del);
  EXPECT_EQ(m->Get("a")->state, SessionState::kDraining);
  EXPECT_TRUE(m->Get("a")->busy);
  EXPECT_EQ(deleted.code(), absl::StatusCode::kUnknown) << "answered before the call let go";

  m->Release(held);
  EXPECT_TRUE(deleted.ok()) << deleted;
  EXPECT_EQ(held->state, SessionState::kRemoved);
  EXPECT_EQ(m->Get("a").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SessionManagerTest, EveryManagerReapsIdleSessions) {
  auto m = Manager(1);
  ASSERT_TRUE(m->Create("idle", engine::TramsSettings::Trams(16, 4, 4), 8).ok());
  ASSERT_TRUE(m->Create("held", engine::TramsSettings::Trams(16, 4, 4), 8).ok());
  std::shared_ptr<Session> held = Take(*m, "held");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (m->Get("idle").ok() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  absl::StatusOr<SessionSnapshot> gone = m->Get("idle");
  ASSERT_EQ(gone.status().code(), absl::StatusCode::kNotFound) << "the reaper never ran";
  EXPECT_THAT(std::string(gone.status().message()), HasSubstr("expired after 1 s idle"));
  EXPECT_EQ(m->Get("held")->state, SessionState::kRunning) << "a session a call holds is never reaped";
  m->Release(held);
}

TEST_F(SessionManagerTest, NoReaperWithoutATtl) {
  auto m = Manager(0);
  ASSERT_TRUE(m->Create("kept", engine::TramsSettings::Trams(16, 4, 4), 8).ok());
  std::this_thread::sleep_for(SessionManager::kReapEvery + std::chrono::milliseconds(300));
  EXPECT_TRUE(m->Get("kept").ok());
}

// Server-chosen ids: 128 bits from the kernel's CSPRNG, never repeated, not a seeded sequence (two
// managers built alike start with different ids; a seeded PRNG would give both the same).
TEST_F(SessionManagerTest, ServerChosenIdsAre128RandomBitsThatNeverRepeat) {
  SessionLimits limits;
  limits.idle_ttl_seconds = 0;
  limits.max_sessions = 10001;
  limits.memory_budget_bytes = int64_t{1} << 40;
  auto m = std::make_unique<SessionManager>(engine_.engine.get(), limits, int64_t{1} << 20, nullptr);
  std::set<std::string> ids;
  for (int i = 0; i < 10000; ++i) {
    absl::StatusOr<SessionSnapshot> s = m->Create("", engine::TramsSettings::NoMemory(), 8);
    ASSERT_TRUE(s.ok()) << s.status();
    ASSERT_THAT(s->id, ::testing::MatchesRegex("s-[0-9a-f]{32}"));
    ids.insert(s->id);
  }
  EXPECT_EQ(ids.size(), 10000u);
  auto a = Manager(0), b = Manager(0);
  EXPECT_NE(a->Create("", engine::TramsSettings::NoMemory(), 8)->id, b->Create("", engine::TramsSettings::NoMemory(), 8)->id);
}

}  // namespace
}  // namespace trams::server
