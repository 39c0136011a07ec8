// Device memory metrics of an in-process server (Metrics::Text(), what /metrics serves): on the emulated
// backend (the CUDA code path run on the host, with a real session-pool arena) the gpu and arena gauges
// carry the engine's figures, labelled device="emulated:0", and follow CreateSession/DeleteSession; on the
// host backend those series are absent, not zero. tests/prometheus checks the same through a real scrape.
#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <string>
#include <thread>

#include "server/server_app.h"
#include "tests/server/server_test_util.h"

namespace trams::server::test {
namespace {

constexpr char kModel[] = "adaptive_samelen";
constexpr int64_t kPoolBytes = int64_t{8} << 20;  // a multiple of the arena's 256-byte alignment

// The value of the sample `series` (name with its labels, as exposed), or nothing when absent.
std::optional<double> Sample(const std::string& text, const std::string& series) {
  const std::string key = "\n" + series + " ";
  const size_t at = text.find(key);
  if (at == std::string::npos) return std::nullopt;
  return std::stod(text.substr(at + key.size()));
}

// True when the exposition has any sample (not just # HELP/# TYPE) of metric `name`.
bool HasSeries(const std::string& text, const std::string& name) {
  return text.find("\n" + name + "{") != std::string::npos || text.find("\n" + name + " ") != std::string::npos ||
         text.rfind(name + "{", 0) == 0 || text.rfind(name + " ", 0) == 0;
}

std::string Dev(const std::string& name, const std::string& device) { return name + "{device=\"" + device + "\"}"; }

ServerOptions EmulatedOptions() {
  ServerOptions o = TestOptions(kModel);
  o.device.device = "emulated";
  o.device.gpu_pool_bytes = kPoolBytes;
  return o;
}

v1::MemorySettings Memory() { return Trams(24, 4, 8); }

TEST(ServerMetrics, EmulatedArenaAndDeviceGauges) {
  auto server = StartServer(EmulatedOptions());
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(server->app->engine().device(), "emulated:0");
  const std::string d = "emulated:0";

  std::string text = server->app->metrics().Text();
  EXPECT_EQ(Sample(text, Dev("trams_pool_arena_capacity_bytes", d)), kPoolBytes) << text;
  EXPECT_EQ(Sample(text, Dev("trams_pool_arena_used_bytes", d)), 0);
  EXPECT_EQ(Sample(text, Dev("trams_pool_arena_largest_free_bytes", d)), kPoolBytes);
  EXPECT_EQ(Sample(text, Dev("trams_gpu_memory_total_bytes", d)), double(int64_t{1} << 40));  // the emulation's
  const std::optional<double> gpu_used = Sample(text, Dev("trams_gpu_memory_used_bytes", d));
  ASSERT_TRUE(gpu_used.has_value());
  EXPECT_GE(*gpu_used, kPoolBytes);  // the emulation counts what it allocated: the arena at least
  EXPECT_GT(Sample(text, Dev("trams_model_weights_bytes", d)).value_or(0), 0);
  EXPECT_EQ(Sample(text, Dev("trams_pool_bytes", d)), 0);
  EXPECT_EQ(Sample(text, Dev("trams_sessions_resident", d)), 0);
  EXPECT_FALSE(HasSeries(text, "trams_pool_bytes{device=\"cpu\"}"));

  v1::Session a;
  grpc::Status st = CreateSession(server->stub.get(), "a", Memory(), 8, &a);
  ASSERT_TRUE(st.ok()) << Describe(st);
  const int64_t pool = a.pool_bytes();
  ASSERT_GT(pool, 0);
  server->app->RefreshEngineMemory();
  text = server->app->metrics().Text();
  EXPECT_EQ(Sample(text, Dev("trams_pool_arena_used_bytes", d)), pool) << text;
  EXPECT_EQ(Sample(text, Dev("trams_pool_arena_largest_free_bytes", d)), kPoolBytes - pool);
  EXPECT_EQ(Sample(text, Dev("trams_pool_arena_capacity_bytes", d)), kPoolBytes);
  EXPECT_EQ(Sample(text, Dev("trams_pool_bytes", d)), pool);
  EXPECT_EQ(Sample(text, Dev("trams_sessions_resident", d)), 1);
  EXPECT_EQ(Sample(text, "trams_sessions_active"), 1);

  st = CreateSession(server->stub.get(), "b", Memory(), 8);
  ASSERT_TRUE(st.ok()) << Describe(st);
  server->app->RefreshEngineMemory();
  text = server->app->metrics().Text();
  EXPECT_EQ(Sample(text, Dev("trams_pool_arena_used_bytes", d)), 2 * pool);
  EXPECT_EQ(Sample(text, Dev("trams_pool_bytes", d)), 2 * pool);
  EXPECT_EQ(Sample(text, Dev("trams_sessions_resident", d)), 2);

  // Work on a session does not change where its pool lives or how big it is.
  const ScoreResult scored = ScoreText(server->stub.get(), "a", Text(0, 100));
  ASSERT_TRUE(scored.status.ok()) << Describe(scored.status);
  server->app->RefreshEngineMemory();
  text = server->app->metrics().Text();
  EXPECT_EQ(Sample(text, Dev("trams_pool_arena_used_bytes", d)), 2 * pool);

  WaitIdle(server->stub.get(), "a");
  ASSERT_TRUE(DeleteSession(server->stub.get(), "a").ok());
  ASSERT_TRUE(DeleteSession(server->stub.get(), "b").ok());
  // The arena block goes back when the stream is destroyed, i.e. when the last holder of the session (a
  // finished call may hold it a moment longer) lets go: poll.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  do {
    server->app->RefreshEngineMemory();
    text = server->app->metrics().Text();
    if (Sample(text, Dev("trams_pool_arena_used_bytes", d)) == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  } while (std::chrono::steady_clock::now() < give_up);
  EXPECT_EQ(Sample(text, Dev("trams_pool_arena_used_bytes", d)), 0);
  EXPECT_EQ(Sample(text, Dev("trams_pool_arena_largest_free_bytes", d)), kPoolBytes);
  EXPECT_EQ(Sample(text, Dev("trams_pool_bytes", d)), 0);
  EXPECT_EQ(Sample(text, Dev("trams_sessions_resident", d)), 0);
}

// Nobody calls RefreshEngineMemory here: the refresher thread publishes the arena's growth by itself.
TEST(ServerMetrics, RefresherPublishesArenaUse) {
  auto server = StartServer(EmulatedOptions());
  ASSERT_NE(server, nullptr);
  v1::Session a;
  grpc::Status st = CreateSession(server->stub.get(), "a", Memory(), 8, &a);
  ASSERT_TRUE(st.ok()) << Describe(st);
  const std::string series = Dev("trams_pool_arena_used_bytes", "emulated:0");
  const auto give_up = std::chrono::steady_clock::now() + 10 * ServerApp::kHousekeeping;
  std::optional<double> used;
  while ((used = Sample(server->app->metrics().Text(), series)) != a.pool_bytes() &&
         std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(used, a.pool_bytes());
  // Shutdown stops the refresher (and returns promptly, not after a refresh period's wait).
  const auto start = std::chrono::steady_clock::now();
  server->app->Shutdown(std::chrono::milliseconds(0));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(ServerMetrics, HostHasNoDeviceOrArenaSeries) {
  ServerOptions o = TestOptions(kModel);
  o.device.device = "cpu";
  auto server = StartServer(o);
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(server->app->engine().device(), "cpu");
  grpc::Status st = CreateSession(server->stub.get(), "a", Memory(), 8);
  ASSERT_TRUE(st.ok()) << Describe(st);
  server->app->RefreshEngineMemory();
  const std::string text = server->app->metrics().Text();
  for (const char* name : {"trams_gpu_memory_used_bytes", "trams_gpu_memory_total_bytes", "trams_pool_arena_used_bytes",
                           "trams_pool_arena_capacity_bytes", "trams_pool_arena_largest_free_bytes"}) {
    EXPECT_FALSE(HasSeries(text, name)) << name << " on the host backend:\n" << text;
  }
  EXPECT_GT(Sample(text, Dev("trams_pool_bytes", "cpu")).value_or(0), 0);
  EXPECT_EQ(Sample(text, Dev("trams_sessions_resident", "cpu")), 1);
  EXPECT_GT(Sample(text, Dev("trams_model_weights_bytes", "cpu")).value_or(0), 0);
  // The existing names keep working.
  EXPECT_EQ(Sample(text, "trams_sessions_active"), 1);
  EXPECT_TRUE(Sample(text, "trams_memory_budget_used_bytes").has_value());
}

}  // namespace
}  // namespace trams::server::test
