// Tenants (issue 11) over real gRPC: with --auth_keys every session belongs to the tenant that made it.
// Another tenant's id is NOT_FOUND with the message an id that never existed gets (existence does not
// leak), for every RPC that names a session; ListSessions lists the caller's own; two tenants may use the
// same id; the state store keeps them apart across a restart. Ids are scoped as "TENANT+ID" inside the
// server (server/scoped_id.h) and never shown so to clients.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "server/auth_keys.h"
#include "server/scoped_id.h"
#include "tests/server/keyed_channel.h"
#include "tests/server/server_fixture.h"

namespace trams::server::test {
namespace {

namespace fs = std::filesystem;

const std::string kAliceKey = "alice-0123456789abcdef", kBobKey = "bob-fedcba9876543210";
const std::string kSecret = "Alice's PIN is 4711 and her password is swordfish. ";

TEST(ScopedIdTest, ScopesStripsAndChecks) {
  EXPECT_EQ(ScopedSessionId("alice", "doc"), "alice+doc");
  EXPECT_EQ(ScopedSessionId("", "doc"), "doc");
  EXPECT_EQ(BareSessionId("alice+doc"), "doc");
  EXPECT_EQ(BareSessionId("doc"), "doc");
  EXPECT_EQ(TenantOfSessionId("alice+doc"), "alice");
  EXPECT_EQ(TenantOfSessionId("doc"), "");
  EXPECT_EQ(SessionRef("alice+doc"), "session 'doc'");
  EXPECT_TRUE(IsValidScopedSessionId("alice+doc"));
  EXPECT_TRUE(IsValidScopedSessionId("doc"));
  for (const char* bad : {"+doc", "alice+", "al/ice+doc", "alice+do+c", "alice+bad id", ""}) {
    EXPECT_FALSE(IsValidScopedSessionId(bad)) << bad;
  }
}

class TenantTest : public ::testing::Test {
 protected:
  void SetUp() override {
    keys_ = (fs::temp_directory_path() / ("trams-tenants-" + std::to_string(::getpid()))).string();
    std::ofstream(keys_) << "alice sha256:" << AuthKeys::Sha256Hex(kAliceKey) << "\n"
                         << "bob sha256:" << AuthKeys::Sha256Hex(kBobKey) << "\n";
  }
  void TearDown() override { fs::remove(keys_); }
  ServerOptions Options() const {
    ServerOptions o = TestOptions(kModel);
    o.auth_keys = keys_;
    return o;
  }
  void Connect(const TestServer& server) {
    alice_ = KeyedStub(server.address(), kAliceKey);
    bob_ = KeyedStub(server.address(), kBobKey);
  }
  static std::vector<std::string> Listed(v1::TramsService::Stub* stub) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    v1::ListSessionsResponse resp;
    EXPECT_TRUE(stub->ListSessions(&ctx, v1::ListSessionsRequest(), &resp).ok());
    std::vector<std::string> ids;
    for (const auto& s : resp.sessions()) ids.push_back(s.session_id());
    return ids;
  }
  std::string keys_;
  v1::Session s_;  // answers the test does not look at
  std::unique_ptr<v1::TramsService::Stub> alice_, bob_;
};

TEST_F(TenantTest, AnotherTenantsSessionIsNotFoundForEveryRpc) {
  std::unique_ptr<TestServer> server = StartServer(Options());
  ASSERT_NE(server, nullptr);
  Connect(*server);
  ASSERT_TRUE(CreateSession(alice_.get(), "doc", Trams(kM, kTopk, kRemain), kN).ok());
  ScoreResult scored = ScoreText(alice_.get(), "doc", kSecret + Text(0, 100));
  ASSERT_TRUE(scored.status.ok()) << Describe(scored.status);
  v1::Session before;
  ASSERT_TRUE(GetSession(alice_.get(), "doc", &before).ok());
  v1::ExplainSelectionResponse explained;
  ASSERT_TRUE(Explain(alice_.get(), "doc", &explained).ok()) << "alice reads her own selection";

  // What an id that never existed gets: the reference for every refusal below.
  v1::Session s;
  const grpc::Status never = GetSession(bob_.get(), "never-made", &s);
  ASSERT_EQ(never.error_code(), grpc::StatusCode::NOT_FOUND);
  auto expect_unseen = [&](const grpc::Status& st, const char* rpc) {
    EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << rpc << ": " << Describe(st);
    EXPECT_EQ(WithoutRequestId(st.error_message()), "session 'doc' does not exist") << rpc;
    EXPECT_EQ(st.error_message().find("alice"), std::string::npos) << rpc << " names the other tenant";
  };
  expect_unseen(GetSession(bob_.get(), "doc", &s), "GetSession");
  expect_unseen(Explain(bob_.get(), "doc", &explained), "ExplainSelection");
  expect_unseen(ScoreText(bob_.get(), "doc", "more text").status, "Score");
  expect_unseen(RunGenerate(bob_.get(), MakeGenerate("doc", 4, 0.0f)).status, "Generate");
  expect_unseen(Export(bob_.get(), "doc").status, "ExportSession");
  expect_unseen(Fork(bob_.get(), "doc", "stolen", &s), "ForkSession");
  expect_unseen(DeleteSession(bob_.get(), "doc"), "DeleteSession");
  EXPECT_TRUE(Listed(bob_.get()).empty()) << "bob lists none of alice's sessions";
  EXPECT_EQ(Listed(alice_.get()), std::vector<std::string>{"doc"}) << "bare ids, never 'alice+doc'";

  // None of that touched alice's session.
  v1::Session after;
  ASSERT_TRUE(GetSession(alice_.get(), "doc", &after).ok());
  EXPECT_EQ(after.position(), before.position());
  EXPECT_EQ(after.tokens_scored(), before.tokens_scored());
  EXPECT_EQ(after.session_id(), "doc");
}

TEST_F(TenantTest, TwoTenantsMayUseOneIdAndStayApart) {
  std::unique_ptr<TestServer> server = StartServer(Options());
  ASSERT_NE(server, nullptr);
  Connect(*server);
  ASSERT_TRUE(CreateSession(alice_.get(), "doc", Trams(kM, kTopk, kRemain), kN).ok());
  ASSERT_TRUE(CreateSession(bob_.get(), "doc", Trams(kM, kTopk, kRemain), kN).ok()) << "the same id, bob's own";
  ASSERT_TRUE(ScoreText(alice_.get(), "doc", Text(0, 120)).status.ok());
  ASSERT_TRUE(ScoreText(bob_.get(), "doc", Text(500, 40)).status.ok());
  v1::Session a, b;
  ASSERT_TRUE(GetSession(alice_.get(), "doc", &a).ok());
  ASSERT_TRUE(GetSession(bob_.get(), "doc", &b).ok());
  EXPECT_EQ(a.position(), 120);
  EXPECT_EQ(b.position(), 40);

  // Server-chosen ids and forks are the caller's, and bare.
  v1::CreateSessionRequest anonymous;
  v1::Session made;
  ASSERT_TRUE(CreateSession(alice_.get(), anonymous, &made).ok());
  EXPECT_EQ(made.session_id().rfind("s-", 0), 0u) << made.session_id();
  v1::Session twin;
  ASSERT_TRUE(Fork(alice_.get(), "doc", "", &twin).ok());
  EXPECT_EQ(twin.session_id().find('+'), std::string::npos) << twin.session_id();
  EXPECT_EQ(twin.position(), 120);
  EXPECT_EQ(GetSession(bob_.get(), twin.session_id(), &s_).error_code(), grpc::StatusCode::NOT_FOUND);

  // A snapshot carries no tenant: bob may import what alice gave him, as his own.
  Exported blob = Export(alice_.get(), "doc");
  ASSERT_TRUE(blob.status.ok()) << Describe(blob.status);
  EXPECT_EQ(blob.blob.find("alice"), std::string::npos) << "the exported snapshot names alice";
  v1::Session imported;
  EXPECT_EQ(Import(bob_.get(), blob.blob, "", false, &imported).error_code(), grpc::StatusCode::ALREADY_EXISTS)
      << "the snapshot's own id, 'doc', is bob's already";
  ASSERT_TRUE(Import(bob_.get(), blob.blob, "copy", false, &imported).ok());
  EXPECT_EQ(imported.session_id(), "copy");
  EXPECT_EQ(imported.position(), 120);
  EXPECT_EQ(GetSession(alice_.get(), "copy", &s_).error_code(), grpc::StatusCode::NOT_FOUND);

  ASSERT_TRUE(DeleteSession(bob_.get(), "doc").ok());
  ASSERT_TRUE(GetSession(alice_.get(), "doc", &a).ok()) << "deleting bob's doc left alice's";
  EXPECT_EQ(a.position(), 120);
  std::vector<std::string> alices = Listed(alice_.get());
  EXPECT_EQ(alices.size(), 3u);
  EXPECT_EQ(Listed(bob_.get()), std::vector<std::string>{"copy"});
}

TEST_F(TenantTest, TheStateStoreKeepsTenantsApartAcrossARestart) {
  const fs::path dir = fs::temp_directory_path() / ("trams-tenant-store-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  ServerOptions o = Options();
  o.persistence.state_dir = dir.string();
  {
    std::unique_ptr<TestServer> first = StartServer(o);
    ASSERT_NE(first, nullptr);
    Connect(*first);
    ASSERT_TRUE(CreateSession(alice_.get(), "doc", Trams(kM, kTopk, kRemain), kN).ok());
    ASSERT_TRUE(CreateSession(bob_.get(), "doc", Trams(kM, kTopk, kRemain), kN).ok());
    ASSERT_TRUE(ScoreText(alice_.get(), "doc", Text(0, 64)).status.ok());
    ASSERT_TRUE(ScoreText(bob_.get(), "doc", Text(64, 16)).status.ok());
    first->app->Shutdown(std::chrono::milliseconds(2000));
  }
  EXPECT_TRUE(fs::exists(dir / "alice+doc.snap"));
  EXPECT_TRUE(fs::exists(dir / "bob+doc.snap"));
  std::unique_ptr<TestServer> second = StartServer(o);
  ASSERT_NE(second, nullptr);
  Connect(*second);
  v1::Session a, b;
  ASSERT_TRUE(GetSession(alice_.get(), "doc", &a).ok());
  ASSERT_TRUE(GetSession(bob_.get(), "doc", &b).ok());
  EXPECT_EQ(a.position(), 64);
  EXPECT_EQ(b.position(), 16);
  EXPECT_EQ(a.session_id(), "doc");
  second.reset();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace trams::server::test
