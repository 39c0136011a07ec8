// API keys (--auth_keys, server/auth_keys.h): the keys file's parser, the comparison, and every RPC over
// real gRPC: without a valid key each one is UNAUTHENTICATED with one and the same message (missing,
// malformed or unknown key), before it looks anything up; with a key it is served.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "server/auth_keys.h"
#include "tests/server/server_fixture.h"
#include "tests/testing/status_matchers.h"

namespace trams::server::test {
namespace {

using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

const std::string kAliceKey = "alice-0123456789abcdef", kBobKey = "bob-fedcba9876543210";

std::string KeysFile() {
  return "# tenants of the test\n"
         "alice   sha256:" + AuthKeys::Sha256Hex(kAliceKey) + "   # a comment\n"
         "\n"
         "bob\tsha256:" + AuthKeys::Sha256Hex(kBobKey) + "\n";
}

TEST(AuthKeysTest, ParsesTheFileAndAuthenticatesBearerKeys) {
  EXPECT_EQ(AuthKeys::Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  absl::StatusOr<AuthKeys> keys = AuthKeys::Parse(KeysFile());
  ASSERT_TRUE(keys.ok()) << keys.status();
  EXPECT_EQ(keys->size(), 2u);
  EXPECT_EQ(*keys->Authenticate("Bearer " + kAliceKey), "alice");
  EXPECT_EQ(*keys->Authenticate("Bearer " + kBobKey), "bob");
  const std::string message = std::string(keys->Authenticate("").status().message());
  for (const std::string& bad : {std::string(), std::string("Bearer "), "bearer " + kAliceKey, kAliceKey,
                                 "Bearer " + kAliceKey + "x", "Basic " + kAliceKey, std::string(1 << 16, 'B')}) {
    absl::StatusOr<std::string> r = keys->Authenticate(bad);
    EXPECT_THAT(r.status(), StatusIs(absl::StatusCode::kUnauthenticated)) << bad.substr(0, 40);
    EXPECT_EQ(std::string(r.status().message()), message) << "one message for every refusal";
  }
}

TEST(AuthKeysTest, QuotasFollowTheHashAndBelongToTheTenant) {
  const std::string text = "alice sha256:" + AuthKeys::Sha256Hex("a1") + " max_sessions=4 max_pool_bytes=1000000\n" +
                           "alice sha256:" + AuthKeys::Sha256Hex("a2") + " tokens_per_second=500 max_sessions=4\n" +
                           "bob sha256:" + AuthKeys::Sha256Hex("b1") + "\n" +
                           "carol sha256:" + AuthKeys::Sha256Hex("c1") + " max_concurrent_calls=2\n";
  absl::StatusOr<AuthKeys> keys = AuthKeys::Parse(text);
  ASSERT_TRUE(keys.ok()) << keys.status();
  ASSERT_EQ(keys->quotas().size(), 3u) << "every tenant is listed, also one without quotas";
  const TenantQuota& alice = keys->quotas().at("alice");
  EXPECT_EQ(alice.max_sessions, 4);
  EXPECT_EQ(alice.max_pool_bytes, 1000000);
  EXPECT_EQ(alice.tokens_per_second, 500) << "a tenant's quotas come from all its lines";
  EXPECT_EQ(alice.max_concurrent_calls, 0);
  const TenantQuota& bob = keys->quotas().at("bob");
  EXPECT_EQ(bob.max_sessions + bob.max_pool_bytes + bob.tokens_per_second + bob.max_concurrent_calls, 0);
  EXPECT_EQ(keys->quotas().at("carol").max_concurrent_calls, 2);
}

TEST(AuthKeysTest, BadFilesNameTheLine) {
  const std::string h = AuthKeys::Sha256Hex("k");
  const std::pair<std::string, std::string> cases[] = {
      {"alice\n", "line 1: 1 fields"},
      {"alice sha256:" + h + " extra\n", "line 1: 'extra' is not a quota"},
      {"alice sha256:" + h + " max_sessions=-1\n", "line 1: quota max_sessions must be a whole number"},
      {"alice sha256:" + h + " max_sessions=2.5\n", "must be a whole number"},
      {"alice sha256:" + h + " tokens_per_second=99999999999999999999\n", "must be a whole number"},
      {"alice sha256:" + h + " max_sessions=2\nalice sha256:" + AuthKeys::Sha256Hex("k2") + " max_sessions=3\n",
       "line 2: tenant alice's max_sessions was given as 2 already"},
      {"\n\nal/ice sha256:" + h + "\n", "line 3: a tenant name"},
      {"alice sha1:" + h + "\n", "not a sha256"},
      {"alice sha256:" + h.substr(1) + "\n", "not a sha256"},
      {"alice sha256:" + std::string(64, 'g') + "\n", "not hexadecimal"},
      {"alice sha256:" + h + "\nbob sha256:" + h + "\n", "line 2: the same key hash"},
      {"# nothing\n", "holds no keys"},
  };
  for (const auto& [text, why] : cases) {
    EXPECT_THAT(AuthKeys::Parse(text).status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(why))) << text;
  }
  EXPECT_THAT(AuthKeys::Load("/nonexistent/keys").status(), StatusIs(absl::StatusCode::kFailedPrecondition));
}

class AuthServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = (std::filesystem::temp_directory_path() / ("trams-keys-" + std::to_string(::getpid()))).string();
    std::ofstream(path_) << KeysFile();
    ServerOptions o = TestOptions(kModel);
    o.auth_keys = path_;
    server_ = StartServer(o);
    ASSERT_NE(server_, nullptr);
  }
  void TearDown() override { std::filesystem::remove(path_); }
  // A context with `key` (none when empty) and a deadline.
  static void Prepare(grpc::ClientContext* ctx, const std::string& key) {
    SetDeadline(ctx);
    if (!key.empty()) ctx->AddMetadata("authorization", "Bearer " + key);
  }
  // Every RPC once, with `key`: their codes in order.
  std::vector<grpc::StatusCode> EveryRpc(const std::string& key) {
    auto* stub = server_->stub.get();
    std::vector<grpc::StatusCode> codes;
    auto unary = [&](auto method, auto request, auto response) {
      grpc::ClientContext ctx;
      Prepare(&ctx, key);
      codes.push_back((stub->*method)(&ctx, request, &response).error_code());
    };
    v1::CreateSessionRequest create;
    create.set_session_id("doc-" + key.substr(0, 3));
    unary(&v1::TramsService::Stub::GetModelInfo, v1::GetModelInfoRequest(), v1::ModelInfo());
    unary(&v1::TramsService::Stub::CreateSession, create, v1::Session());
    v1::GetSessionRequest get;
    get.set_session_id(create.session_id());
    unary(&v1::TramsService::Stub::GetSession, get, v1::Session());
    unary(&v1::TramsService::Stub::ListSessions, v1::ListSessionsRequest(), v1::ListSessionsResponse());
    {
      grpc::ClientContext ctx;
      Prepare(&ctx, key);
      auto stream = stub->Score(&ctx);
      v1::ScoreRequest r = TextChunk("some text");
      r.set_session_id(create.session_id());
      stream->Write(r);
      stream->WritesDone();
      v1::ScoreResponse resp;
      while (stream->Read(&resp)) {
      }
      codes.push_back(stream->Finish().error_code());
    }
    {
      grpc::ClientContext ctx;
      Prepare(&ctx, key);
      auto reader = stub->Generate(&ctx, MakeGenerate(create.session_id(), 2, 0.0f));
      v1::GenerateResponse resp;
      while (reader->Read(&resp)) {
      }
      codes.push_back(reader->Finish().error_code());
    }
    v1::ExplainSelectionRequest explain;
    explain.set_session_id(create.session_id());
    unary(&v1::TramsService::Stub::ExplainSelection, explain, v1::ExplainSelectionResponse());
    std::string blob;
    {
      grpc::ClientContext ctx;
      Prepare(&ctx, key);
      v1::ExportSessionRequest req;
      req.set_session_id(create.session_id());
      auto reader = stub->ExportSession(&ctx, req);
      v1::SessionChunk chunk;
      while (reader->Read(&chunk)) blob += chunk.data();
      codes.push_back(reader->Finish().error_code());
    }
    {
      grpc::ClientContext ctx;
      Prepare(&ctx, key);
      v1::Session resp;
      auto writer = stub->ImportSession(&ctx, &resp);
      v1::ImportSessionRequest req;
      req.set_session_id(create.session_id() + "-copy");
      req.set_data(blob.empty() ? std::string("x") : blob);
      writer->Write(req);
      writer->WritesDone();
      codes.push_back(writer->Finish().error_code());
    }
    v1::ForkSessionRequest fork;
    fork.set_session_id(create.session_id());
    fork.set_new_session_id(create.session_id() + "-fork");
    unary(&v1::TramsService::Stub::ForkSession, fork, v1::Session());
    v1::DeleteSessionRequest del;
    del.set_session_id(create.session_id());
    unary(&v1::TramsService::Stub::DeleteSession, del, v1::DeleteSessionResponse());
    return codes;
  }
  std::string path_;
  std::unique_ptr<TestServer> server_;
};

TEST_F(AuthServerTest, EveryRpcWithoutAValidKeyIsUnauthenticatedAndChangesNothing) {
  for (const std::string& key : {std::string(), std::string("wrong-key")}) {
    const std::vector<grpc::StatusCode> codes = EveryRpc(key);
    ASSERT_EQ(codes.size(), 11u);
    for (size_t i = 0; i < codes.size(); ++i) {
      EXPECT_EQ(codes[i], grpc::StatusCode::UNAUTHENTICATED) << "RPC " << i << " with key '" << key << "'";
    }
  }
  // Nothing was created by the refused calls.
  grpc::ClientContext ctx;
  Prepare(&ctx, kAliceKey);
  v1::ListSessionsResponse list;
  ASSERT_TRUE(server_->stub->ListSessions(&ctx, v1::ListSessionsRequest(), &list).ok());
  EXPECT_EQ(list.sessions_size(), 0);
}

TEST_F(AuthServerTest, EveryRpcWithAKeyIsServed) {
  const std::vector<grpc::StatusCode> codes = EveryRpc(kAliceKey);
  const std::vector<grpc::StatusCode> want(11, grpc::StatusCode::OK);
  EXPECT_EQ(codes, want);
}

TEST(AuthStartTest, AnUnreadableOrBadKeysFileIsAFailedStart) {
  ServerOptions o = TestOptions(kModel);
  o.auth_keys = "/nonexistent/keys";
  EXPECT_EQ(ServerApp::Start(o).status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string path = std::filesystem::temp_directory_path() / ("trams-badkeys-" + std::to_string(::getpid()));
  std::ofstream(path) << "alice nothing\n";
  o.auth_keys = path;
  absl::Status st = ServerApp::Start(o).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(st.message()), "line 1")) << st;
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace trams::server::test
