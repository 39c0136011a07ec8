// ServerApp: what used to live in main.cc (the port file, checking the default memory settings against
// the model) happens for every server, in-process ones too; Shutdown rolls back what it cancels.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <future>
#include <latch>

#include "server/server_app.h"
#include "tests/server/server_fixture.h"

namespace trams::server::test {
namespace {

TEST(ServerAppTest, WritesThePortFileOnceServing) {
  ServerOptions options = TestOptions(kModel);
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("trams-app-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  options.port_file = (dir / "ports").string();
  absl::StatusOr<std::unique_ptr<ServerApp>> app = ServerApp::Start(options);
  ASSERT_TRUE(app.ok()) << app.status();
  std::ifstream in(options.port_file);
  int grpc_port = -1, metrics_port = -1;
  in >> grpc_port >> metrics_port;
  EXPECT_EQ(grpc_port, (*app)->grpc_port());
  EXPECT_EQ(metrics_port, (*app)->metrics_port());
  EXPECT_FALSE(std::filesystem::exists(options.port_file + ".tmp"));
  app->reset();
  std::filesystem::remove_all(dir);
}

TEST(ServerAppTest, DefaultSettingsThatDoNotFitTheModelAreAFailedStart) {
  ServerOptions options = TestOptions(kModel);
  options.defaults.memory = engine::TramsSettings::Trams(64, 8, 16);
  options.defaults.memory.layers = {5};  // the model has 3
  absl::StatusOr<std::unique_ptr<ServerApp>> app = ServerApp::Start(options);
  ASSERT_FALSE(app.ok());
  EXPECT_EQ(app.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(app.status().message()), ::testing::HasSubstr("default memory settings"));
  EXPECT_THAT(std::string(app.status().message()), ::testing::HasSubstr("--layers"));
}

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

}  // namespace
}  // namespace trams::server::test
