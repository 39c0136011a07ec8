// Sessions that outlive their process or move between servers (issue 10), over real gRPC on loopback:
// ExportSession / ImportSession / ForkSession, the --state_dir store across a restart, spill instead of
// eviction, and what a crash loses with --snapshot_interval_seconds. Every continuation is compared bit
// for bit with one session that was never interrupted, fed by the same calls.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "tests/server/server_fixture.h"

namespace trams::server::test {
namespace {

namespace fs = std::filesystem;

// The text of the test, in calls of uneven lengths (each leaves a provisional tail: 8 does not divide them).
const std::vector<std::string>& Parts() {
  static const std::vector<std::string> parts = {Text(0, 203), Text(203, 77), Text(280, 141), Text(421, 95)};
  return parts;
}

std::string Temp(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("trams-persistence-" + std::to_string(::getpid()) + "-" + name);
  fs::remove_all(p);
  return p.string();
}

class PersistenceTest : public ServerTest {
 protected:
  // Scores Parts() [from, to) into `id` on `on`, one call each; returns every answered log-prob.
  static std::vector<float> ScoreParts(v1::TramsService::Stub* on, const std::string& id, size_t from, size_t to) {
    std::vector<float> lp;
    for (size_t i = from; i < to; ++i) {
      ScoreResult r = ScoreText(on, id, Parts()[i]);
      EXPECT_TRUE(r.status.ok()) << Describe(r.status);
      const std::vector<float> got = r.logprobs();
      lp.insert(lp.end(), got.begin(), got.end());
    }
    return lp;
  }
  // The uninterrupted reference: a fresh session fed parts [0, split) then [split, to), returning the latter.
  static std::vector<float> Reference(const std::string& id, size_t split, size_t to) {
    NewSession(id);
    ScoreParts(stub(), id, 0, split);
    return ScoreParts(stub(), id, split, to);
  }
};

TEST_F(PersistenceTest, ExportedSessionContinuesBitIdenticallyOnAnotherServer) {
  const std::vector<float> want = Reference("ref-export", 2, 4);
  NewSession("moving");
  ScoreParts(stub(), "moving", 0, 2);
  v1::ExplainSelectionResponse explain_before;
  ASSERT_TRUE(Explain(stub(), "moving", &explain_before).ok());
  const v1::Session before = WaitIdle(stub(), "moving");

  Exported e = Export(stub(), "moving");
  ASSERT_TRUE(e.status.ok()) << Describe(e.status);
  EXPECT_GT(e.blob.size(), 1000u);
  std::unique_ptr<TestServer> other = StartServer(TestOptions(kModel));
  ASSERT_NE(other, nullptr);
  v1::Session imported;
  grpc::Status st = Import(other->stub.get(), e.blob, "", false, &imported, 999);  // odd chunks
  ASSERT_TRUE(st.ok()) << Describe(st);
  EXPECT_EQ(imported.session_id(), "moving") << "an empty id keeps the snapshot's";
  EXPECT_EQ(imported.position(), before.position());
  EXPECT_EQ(imported.pool_tokens(), before.pool_tokens());
  EXPECT_EQ(imported.tokens_scored(), before.tokens_scored());
  EXPECT_EQ(imported.nll_sum(), before.nll_sum());
  EXPECT_EQ(imported.created_unix_ms(), before.created_unix_ms());
  v1::ExplainSelectionResponse explain_after;
  ASSERT_TRUE(Explain(other->stub.get(), "moving", &explain_after).ok());
  EXPECT_EQ(explain_after.SerializeAsString(), explain_before.SerializeAsString());

  ExpectSameLogProbs(ScoreParts(other->stub.get(), "moving", 2, 4), want, 0);
  const v1::Session end = WaitIdle(other->stub.get(), "moving");
  const v1::Session ref_end = WaitIdle(stub(), "ref-export");
  EXPECT_EQ(end.nll_sum(), ref_end.nll_sum());
  EXPECT_EQ(end.tokens_scored(), ref_end.tokens_scored());
  // The exported session itself is unchanged and still here.
  EXPECT_EQ(WaitIdle(stub(), "moving").position(), before.position());
}

TEST_F(PersistenceTest, ImportRefusesWhatItCannotRestoreAndChangesNothing) {
  NewSession("src-refuse");
  ScoreParts(stub(), "src-refuse", 0, 1);
  Exported e = Export(stub(), "src-refuse");
  ASSERT_TRUE(e.status.ok());

  EXPECT_EQ(Import(stub(), e.blob, "src-refuse").error_code(), grpc::StatusCode::ALREADY_EXISTS);
  v1::Session replaced;
  ASSERT_TRUE(Import(stub(), e.blob, "src-refuse", /*replace=*/true, &replaced).ok());
  EXPECT_EQ(replaced.position(), 203);

  std::string corrupt = e.blob;
  corrupt[corrupt.size() / 2] ^= 0x10;
  grpc::Status st = Import(stub(), corrupt, "corrupt");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DATA_LOSS) << Describe(st);
  st = Import(stub(), e.blob.substr(0, e.blob.size() - 9), "truncated");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DATA_LOSS) << Describe(st);
  st = Import(stub(), "", "empty");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(st);
  st = Import(stub(), e.blob, "bad/id");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << Describe(st);
  for (const char* id : {"corrupt", "truncated", "empty"}) {
    v1::Session s;
    EXPECT_EQ(GetSession(stub(), id, &s).error_code(), grpc::StatusCode::NOT_FOUND) << id;
  }

  // A server with another model: FAILED_PRECONDITION naming both models.
  std::unique_ptr<TestServer> other = StartServer(TestOptions("adaptive_preln"));
  ASSERT_NE(other, nullptr);
  st = Import(other->stub.get(), e.blob, "");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << Describe(st);
  EXPECT_TRUE(Contains(st.error_message(), "xxh3:")) << Describe(st);
  EXPECT_EQ(ListCount(other->stub.get()), 0);

  Exported missing = Export(stub(), "never-was");
  EXPECT_EQ(missing.status.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(PersistenceTest, ForkIsAnExactCopyThatBranchesOnItsOwn) {
  const std::vector<float> want = Reference("ref-fork", 2, 4);
  NewSession("trunk");
  ScoreParts(stub(), "trunk", 0, 2);
  v1::Session branch;
  grpc::Status st = Fork(stub(), "trunk", "branch", &branch);
  ASSERT_TRUE(st.ok()) << Describe(st);
  EXPECT_EQ(branch.session_id(), "branch");
  EXPECT_EQ(branch.position(), 280);
  // The branch takes other text; the trunk continues as if the fork never happened, and so does a second
  // fork taken at the same point.
  ScoreText(stub(), "branch", Text(600, 300));
  v1::Session twin;
  ASSERT_TRUE(Fork(stub(), "trunk", "", &twin).ok());
  EXPECT_FALSE(twin.session_id().empty());
  ExpectSameLogProbs(ScoreParts(stub(), "trunk", 2, 4), want, 0);
  ExpectSameLogProbs(ScoreParts(stub(), twin.session_id(), 2, 4), want, 0);
  EXPECT_EQ(WaitIdle(stub(), "branch").position(), 580);

  EXPECT_EQ(Fork(stub(), "trunk", "branch", &twin).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(Fork(stub(), "nope", "x", &twin).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Fork(stub(), "trunk", "bad id", &twin).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

ServerOptions StoreOptions(const std::string& dir) {
  ServerOptions o = TestOptions(kModel);
  o.persistence.state_dir = dir;
  return o;
}

TEST_F(PersistenceTest, SessionsSurviveARestartThroughTheStateDir) {
  const std::vector<float> want = Reference("ref-restart", 2, 4);
  const std::string dir = Temp("restart");
  {
    ServerOptions o = StoreOptions(dir);
    o.persistence.snapshot_compression = "zstd";  // read back by a server that writes raw ones
    std::unique_ptr<TestServer> first = StartServer(o);
    ASSERT_NE(first, nullptr);
    ASSERT_TRUE(CreateSession(first->stub.get(), "doc", Trams(kM, kTopk, kRemain), kN).ok());
    ScoreParts(first->stub.get(), "doc", 0, 2);
    ASSERT_TRUE(CreateSession(first->stub.get(), "gone", Trams(kM, kTopk, kRemain), kN).ok());
    ScoreParts(first->stub.get(), "gone", 0, 1);
    ASSERT_TRUE(DeleteSession(first->stub.get(), "gone").ok());
    first->app->Shutdown(std::chrono::milliseconds(2000));  // the drain writes every session
  }
  EXPECT_TRUE(fs::exists(dir + "/doc.snap"));
  std::unique_ptr<TestServer> second = StartServer(StoreOptions(dir));
  ASSERT_NE(second, nullptr);
  v1::Session s;
  ASSERT_TRUE(GetSession(second->stub.get(), "doc", &s).ok()) << "restored on first use";
  EXPECT_EQ(s.position(), 280);
  ExpectSameLogProbs(ScoreParts(second->stub.get(), "doc", 2, 4), want, 0);
  EXPECT_EQ(GetSession(second->stub.get(), "gone", &s).error_code(), grpc::StatusCode::NOT_FOUND)
      << "a deleted session stays deleted";
  // Deleting a session that is only in the store.
  second->app->Shutdown(std::chrono::milliseconds(2000));
  second = StartServer(StoreOptions(dir));
  ASSERT_TRUE(DeleteSession(second->stub.get(), "doc").ok());
  EXPECT_EQ(DeleteSession(second->stub.get(), "doc").error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_FALSE(fs::exists(dir + "/doc.snap"));
  fs::remove_all(dir);
}

TEST_F(PersistenceTest, ACorruptStoredSessionIsDataLossNeverADifferentSession) {
  const std::string dir = Temp("corrupt");
  {
    std::unique_ptr<TestServer> first = StartServer(StoreOptions(dir));
    ASSERT_TRUE(CreateSession(first->stub.get(), "doc", Trams(kM, kTopk, kRemain), kN).ok());
    ScoreParts(first->stub.get(), "doc", 0, 1);
    first->app->Shutdown(std::chrono::milliseconds(2000));
  }
  {
    std::fstream f(dir + "/doc.snap", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    f.put('\x7f');
  }
  std::unique_ptr<TestServer> second = StartServer(StoreOptions(dir));
  v1::Session s;
  grpc::Status st = GetSession(second->stub.get(), "doc", &s);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DATA_LOSS) << Describe(st);
  EXPECT_TRUE(Contains(st.error_message(), "cannot be restored")) << Describe(st);
  ScoreResult r = ScoreText(second->stub.get(), "doc", "more");
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::DATA_LOSS);
  fs::remove_all(dir);
}

// A budget that holds one session: the others are spilled to the store, not evicted, and each comes back
// on its next call exactly where it was.
TEST_F(PersistenceTest, AFullBudgetSpillsIdleSessionsInsteadOfEvictingThem) {
  const std::vector<float> want = Reference("ref-spill", 1, 4);
  const std::string dir = Temp("spill");
  ServerOptions o = StoreOptions(dir);
  o.limits.memory_budget_bytes = ReportedPoolBytes(o, Trams(kM, kTopk, kRemain), kN) * 2;  // one + its undo log
  std::unique_ptr<TestServer> server = StartServer(o);
  ASSERT_NE(server, nullptr);
  std::vector<std::vector<float>> got(3);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(CreateSession(server->stub.get(), "s" + std::to_string(i), Trams(kM, kTopk, kRemain), kN).ok());
  }
  for (size_t part = 0; part < 4; ++part) {
    for (int i = 0; i < 3; ++i) {
      const std::vector<float> lp = ScoreParts(server->stub.get(), "s" + std::to_string(i), part, part + 1);
      if (part >= 1) got[i].insert(got[i].end(), lp.begin(), lp.end());
    }
  }
  for (int i = 0; i < 3; ++i) ExpectSameLogProbs(got[i], want, 0);
  const std::string metrics = server->app->metrics().Text();
  EXPECT_TRUE(Contains(metrics, "trams_sessions_spilled_total")) << metrics;
  EXPECT_FALSE(Contains(metrics, "trams_sessions_spilled_total 0\n"));
  EXPECT_TRUE(Contains(metrics, "trams_sessions_restored_total{source=\"store\"}") ||
              Contains(metrics, "trams_sessions_restored_total{source=\"pending\"}"));
  server->app->Shutdown(std::chrono::milliseconds(2000));
  fs::remove_all(dir);
}

// What a crash (SIGKILL) leaves: the store as it was at that moment. With an interval, the committed work
// of at most the last interval is missing, and a client that says where it stands (expected_position) is
// told where the restored session is instead of being given another history.
TEST_F(PersistenceTest, AfterACrashTheStoreHoldsTheLastIntervalAndTheClientIsTold) {
  const std::string dir = Temp("crash"), crashed = Temp("crash-copy");
  ServerOptions o = StoreOptions(dir);
  o.persistence.snapshot_interval_seconds = 1;
  std::unique_ptr<TestServer> server = StartServer(o);
  ASSERT_TRUE(CreateSession(server->stub.get(), "doc", Trams(kM, kTopk, kRemain), kN).ok());
  ScoreParts(server->stub.get(), "doc", 0, 1);
  // Wait (bounded) until the interval snapshot of position 203 is on disk, then score more and "crash".
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!fs::exists(dir + "/doc.snap") && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(fs::exists(dir + "/doc.snap")) << "no interval snapshot within 10 s";
  ScoreParts(server->stub.get(), "doc", 1, 2);  // position 280, maybe not yet written
  fs::copy(dir, crashed);                       // the disk as a SIGKILL now would leave it
  std::unique_ptr<TestServer> restarted = StartServer(StoreOptions(crashed));
  v1::Session s;
  ASSERT_TRUE(GetSession(restarted->stub.get(), "doc", &s).ok());
  EXPECT_TRUE(s.position() == 203 || s.position() == 280) << s.position();
  std::vector<v1::ScoreRequest> reqs = TextRequests("doc", Parts()[2]);
  reqs.front().set_expected_position(280);
  ScoreResult r = RunScore(restarted->stub.get(), reqs);
  if (s.position() == 203) {
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
    EXPECT_TRUE(Contains(r.status.error_message(), "203")) << Describe(r.status);
  } else {
    EXPECT_TRUE(r.status.ok()) << Describe(r.status);
  }
  server->app->Shutdown(std::chrono::milliseconds(2000));
  fs::remove_all(dir);
  fs::remove_all(crashed);
}

TEST_F(PersistenceTest, BadPersistenceFlagsAreAFailedStart) {
  ServerOptions o = TestOptions(kModel);
  o.persistence.snapshot_interval_seconds = 5;
  absl::StatusOr<std::unique_ptr<ServerApp>> app = ServerApp::Start(o);
  EXPECT_EQ(app.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(app.status().message()), "--state_dir"));
  o = StoreOptions("/proc/trams-cannot-write-here");
  app = ServerApp::Start(o);
  EXPECT_EQ(app.status().code(), absl::StatusCode::kFailedPrecondition) << app.status();
  o = StoreOptions(Temp("flags"));
  o.persistence.snapshot_compression = "lz4";
  app = ServerApp::Start(o);
  EXPECT_EQ(app.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace trams::server::test
