// RedisStore (server/redis_store.h) against a real redis-server started by the test on a loopback port
// (skipped, saying so, where redis-server is absent: deploy/deps.sh --tests installs it): blobs, ownership
// leases and their fencing, and two in-process servers sharing one Redis, where a drained replica's
// session continues bit-identically on the other.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "server/redis_store.h"
#include "tests/server/server_fixture.h"

namespace trams::server::test {
namespace {

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// redis-server on 127.0.0.1:<free port>, no persistence of its own (with `password`: --requirepass);
// stopped with the object.
class RedisProcess {
 public:
  explicit RedisProcess(const std::string& password = "") : port_(FreePort()) {
    if (::access("/usr/bin/redis-server", X_OK) != 0) return;
    pid_ = ::fork();
    if (pid_ == 0) {
      const std::string port = std::to_string(port_);
      const char* pass_flag = password.empty() ? static_cast<char*>(nullptr) : "--requirepass";
      ::execl("/usr/bin/redis-server", "redis-server", "--port", port.c_str(), "--bind", "127.0.0.1", "--save", "",
              "--appendonly", "no", "--loglevel", "warning", pass_flag, password.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    // Up once it answers.
    for (int i = 0; i < 200; ++i) {
      if (RedisStore::Open(url(), "probe", std::chrono::seconds(1), password).ok()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
  }
  ~RedisProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  bool running() const { return pid_ > 0; }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_); }

 private:
  int port_;
  pid_t pid_ = -1;
};

#define SKIP_WITHOUT_REDIS(redis)                                                                  \
  if (!(redis).running()) GTEST_SKIP() << "redis-server not installed (deploy/deps.sh --tests installs it)"

TEST(RedisUrlTest, ParsesWhatItDocumentsAndSaysWhatIsWrong) {
  absl::StatusOr<RedisAddress> a = ParseRedisUrl("redis://cache.internal:6380/2");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->host, "cache.internal");
  EXPECT_EQ(a->port, 6380);
  EXPECT_EQ(a->db, 2);
  EXPECT_EQ(ParseRedisUrl("redis://h")->port, 6379);
  for (const char* bad : {"http://h:1", "redis://", "redis://h:0", "redis://h:99999", "redis://h:1/x", "redis://:5"}) {
    EXPECT_EQ(ParseRedisUrl(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(RedisStoreTest, BlobsLeasesAndFencing) {
  RedisProcess redis;
  SKIP_WITHOUT_REDIS(redis);
  auto a = *RedisStore::Open(redis.url(), "replica-a", std::chrono::milliseconds(600));
  auto b = *RedisStore::Open(redis.url(), "replica-b", std::chrono::milliseconds(600));
  std::string blob(3 << 20, '\0');
  for (size_t i = 0; i < blob.size(); ++i) blob[i] = static_cast<char>(i * 131);
  ASSERT_TRUE(a->Claim("doc").ok());
  ASSERT_TRUE(a->Put("doc", blob).ok());
  EXPECT_EQ(*b->Get("doc"), blob) << "binary-safe, whole";
  EXPECT_TRUE(*b->Contains("doc"));
  EXPECT_EQ(b->Get("other").status().code(), absl::StatusCode::kNotFound);

  absl::Status held = b->Claim("doc");
  EXPECT_EQ(held.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(Contains(std::string(held.message()), "replica-a")) << held;
  EXPECT_EQ(b->Put("doc", "stale").code(), absl::StatusCode::kFailedPrecondition) << "only the owner writes";
  EXPECT_TRUE(a->Renew({"doc"}).empty());

  // a stops renewing (a crash): after the lease b takes over, and a can no longer write or renew.
  std::this_thread::sleep_for(std::chrono::milliseconds(900));
  ASSERT_TRUE(b->Claim("doc").ok());
  EXPECT_EQ(a->Put("doc", "stale").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(a->Renew({"doc"}), std::vector<std::string>{"doc"});
  EXPECT_EQ(*b->Get("doc"), blob);
  // Releasing: only the holder's release counts.
  a->Release("doc");
  EXPECT_EQ(a->Claim("doc").code(), absl::StatusCode::kUnavailable);
  b->Release("doc");
  EXPECT_TRUE(a->Claim("doc").ok());
  ASSERT_TRUE(a->Delete("doc").ok());
  EXPECT_EQ(a->Delete("doc").code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(b->Claim("doc").ok()) << "Delete released the lease";
}

// Renewal is pipelined in batches: many leases at once, and exactly the ones taken over come back as lost.
TEST(RedisStoreTest, RenewingManyLeasesReturnsExactlyTheLostOnes) {
  RedisProcess redis;
  SKIP_WITHOUT_REDIS(redis);
  auto a = *RedisStore::Open(redis.url(), "replica-a", std::chrono::milliseconds(400));
  auto b = *RedisStore::Open(redis.url(), "replica-b", std::chrono::milliseconds(60000));
  std::vector<std::string> ids;
  for (int i = 0; i < 600; ++i) ids.push_back(absl::StrCat("s", i));
  for (const std::string& id : ids) ASSERT_TRUE(a->Claim(id).ok());
  EXPECT_TRUE(a->Renew(ids).empty());
  std::this_thread::sleep_for(std::chrono::milliseconds(600));  // a's leases lapse; b takes three
  for (const char* id : {"s7", "s300", "s599"}) ASSERT_TRUE(b->Claim(id).ok());
  EXPECT_EQ(a->Renew(ids), (std::vector<std::string>{"s7", "s300", "s599"}));
  EXPECT_EQ(b->Claim("s8").code(), absl::StatusCode::kUnavailable) << "a took its lapsed leases back";
}

TEST(RedisStoreTest, AStoreThatIsDownIsAFailedStartAndSaysWhere) {
  ServerOptions o = TestOptions(kModel);
  o.persistence.state_store = "redis://127.0.0.1:" + std::to_string(FreePort());
  absl::StatusOr<std::unique_ptr<ServerApp>> app = ServerApp::Start(o);
  EXPECT_EQ(app.status().code(), absl::StatusCode::kUnavailable) << app.status();
  EXPECT_TRUE(Contains(std::string(app.status().message()), o.persistence.state_store));
  o.persistence.state_dir = "/tmp/x";
  EXPECT_EQ(ServerApp::Start(o).status().code(), absl::StatusCode::kInvalidArgument) << "both stores";
}

TEST(RedisStoreTest, APasswordProtectedStoreWantsItsPasswordAndSaysSo) {
  RedisProcess redis("s3cret-pass");
  SKIP_WITHOUT_REDIS(redis);
  absl::StatusOr<std::unique_ptr<RedisStore>> none = RedisStore::Open(redis.url(), "r", std::chrono::seconds(5));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kPermissionDenied) << none.status();
  EXPECT_TRUE(Contains(std::string(none.status().message()), "--state_store_password_file")) << none.status();
  absl::StatusOr<std::unique_ptr<RedisStore>> wrong = RedisStore::Open(redis.url(), "r", std::chrono::seconds(5), "nope");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kPermissionDenied) << wrong.status();
  EXPECT_EQ(std::string(wrong.status().message()).find("nope"), std::string::npos) << "the message shows no password";
  absl::StatusOr<std::unique_ptr<RedisStore>> store =
      RedisStore::Open(redis.url(), "r", std::chrono::seconds(5), "s3cret-pass");
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->Put("doc", "blob").ok());
  EXPECT_EQ(*(*store)->Get("doc"), "blob");
  // The server reads the password from a file.
  const std::string file = "/tmp/trams-redis-pass-" + std::to_string(::getpid());
  std::ofstream(file) << "s3cret-pass\n";
  ServerOptions o = TestOptions(kModel);
  o.persistence.state_store = redis.url();
  o.persistence.state_store_password_file = file;
  absl::StatusOr<std::unique_ptr<ServerApp>> app = ServerApp::Start(o);
  EXPECT_TRUE(app.ok()) << app.status();
  app = absl::UnknownError("");  // stop it before the next start
  o.persistence.state_store_password_file = file + ".missing";
  const absl::Status missing = ServerApp::Start(o).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(std::string(missing.message()), "--state_store_password_file")) << missing;
  ::unlink(file.c_str());
}

std::vector<float> ScoreAll(v1::TramsService::Stub* stub, const std::string& id, const std::vector<std::string>& parts) {
  std::vector<float> lp;
  for (const std::string& p : parts) {
    ScoreResult r = ScoreText(stub, id, p);
    EXPECT_TRUE(r.status.ok()) << Describe(r.status);
    const std::vector<float> got = r.logprobs();
    lp.insert(lp.end(), got.begin(), got.end());
  }
  return lp;
}

TEST(RedisReplicasTest, ADrainedReplicasSessionContinuesBitIdenticallyOnAnother) {
  RedisProcess redis;
  SKIP_WITHOUT_REDIS(redis);
  const std::vector<std::string> first = {Text(0, 203), Text(203, 77)}, second = {Text(280, 141), Text(421, 95)};
  std::unique_ptr<TestServer> reference = StartServer(TestOptions(kModel));
  ASSERT_TRUE(CreateSession(reference->stub.get(), "doc", Trams(kM, kTopk, kRemain), kN).ok());
  ScoreAll(reference->stub.get(), "doc", first);
  const std::vector<float> want = ScoreAll(reference->stub.get(), "doc", second);

  ServerOptions o = TestOptions(kModel);
  o.persistence.state_store = redis.url();
  o.persistence.lease_seconds = 30;  // a drain releases at once: the lease never has to run out here
  o.persistence.replica_id = "r1";
  std::unique_ptr<TestServer> r1 = StartServer(o);
  o.persistence.replica_id = "r2";
  std::unique_ptr<TestServer> r2 = StartServer(o);
  ASSERT_NE(r1, nullptr);
  ASSERT_NE(r2, nullptr);
  ASSERT_TRUE(CreateSession(r1->stub.get(), "doc", Trams(kM, kTopk, kRemain), kN).ok());
  ScoreAll(r1->stub.get(), "doc", first);
  // r2 may not take a session r1 holds; nor may anyone create it again.
  v1::Session s;
  grpc::Status st = GetSession(r2->stub.get(), "doc", &s);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << Describe(st);
  EXPECT_TRUE(Contains(st.error_message(), "r1")) << Describe(st);

  r1->app->Shutdown(std::chrono::milliseconds(2000));  // SIGTERM: writes the session, gives its lease up
  ExpectSameLogProbs(ScoreAll(r2->stub.get(), "doc", second), want, 0);
  ASSERT_TRUE(GetSession(r2->stub.get(), "doc", &s).ok());
  EXPECT_EQ(s.nll_sum(), WaitIdle(reference->stub.get(), "doc").nll_sum());
  EXPECT_EQ(CreateSession(r2->stub.get(), "doc", Trams(kM, kTopk, kRemain), kN).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  r2->app->Shutdown(std::chrono::milliseconds(2000));
}

}  // namespace
}  // namespace trams::server::test
