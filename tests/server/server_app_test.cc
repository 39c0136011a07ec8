// ServerApp::Start: what used to live in main.cc (the port file, checking the default memory settings
// against the model) now happens for every server, in-process ones too.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "server/server_app.h"
#include "server_test_util.h"

namespace trams::server::test {
namespace {

const char kModel[] = "adaptive_samelen";  // 3 layers

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

}  // namespace
}  // namespace trams::server::test
