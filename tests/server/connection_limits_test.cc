// Connection limits (--max_connection_idle_seconds, --max_connection_age_seconds, --keepalive_seconds)
// and the limits GetModelInfo reports: an idle connection is closed by the server, so it holds nothing.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "tests/server/server_fixture.h"

namespace trams::server::test {
namespace {

TEST(ConnectionLimitsTest, ModelInfoReportsTheLimits) {
  ServerOptions o = TestOptions(kModel);
  o.connections.max_idle_seconds = 77;
  o.connections.max_age_seconds = 88;
  o.connections.keepalive_seconds = 99;
  o.requests.max_generate_tokens = 123;
  o.limits.max_sessions = 45;
  std::unique_ptr<TestServer> server = StartServer(o);
  ASSERT_NE(server, nullptr);
  v1::ModelInfo info;
  ASSERT_TRUE(GetModelInfo(server->stub.get(), &info).ok());
  EXPECT_EQ(info.max_connection_idle_seconds(), 77);
  EXPECT_EQ(info.max_connection_age_seconds(), 88);
  EXPECT_EQ(info.keepalive_seconds(), 99);
  EXPECT_EQ(info.max_generate_tokens(), 123);
  EXPECT_EQ(info.max_sessions(), 45);
  EXPECT_EQ(info.max_message_bytes(), o.requests.max_chunk_bytes + (1 << 20));
  EXPECT_EQ(info.memory_budget_bytes(), o.limits.memory_budget_bytes);
  EXPECT_EQ(info.max_alternatives(), o.requests.max_alternatives);
}

// The server closes a connection that has had no call for the idle limit: the client's channel leaves READY.
TEST(ConnectionLimitsTest, AnIdleConnectionIsClosedByTheServer) {
  ServerOptions o = TestOptions(kModel);
  o.connections.max_idle_seconds = 1;
  std::unique_ptr<TestServer> server = StartServer(o);
  ASSERT_NE(server, nullptr);
  v1::ModelInfo info;
  ASSERT_TRUE(GetModelInfo(server->stub.get(), &info).ok());
  EXPECT_EQ(server->channel->GetState(false), GRPC_CHANNEL_READY);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (server->channel->GetState(false) == GRPC_CHANNEL_READY && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_NE(server->channel->GetState(false), GRPC_CHANNEL_READY) << "the idle connection was never closed";
  // A new call simply reconnects.
  grpc::ClientContext again;
  SetDeadline(&again);
  EXPECT_TRUE(server->stub->GetModelInfo(&again, v1::GetModelInfoRequest(), &info).ok());
}

}  // namespace
}  // namespace trams::server::test
