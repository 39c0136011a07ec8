// The loader: a missing module and a machine without a GPU are reported cleanly ("no CUDA device:
// running on the host ..."), the module exports one versioned table, and creating a context without a
// device is an error code, not a crash. Runs everywhere.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "engine/cuda/cuda_engine.h"
#include "engine/cuda/cuda_loader.h"
#include "engine/cuda/host_emulation.h"
#include "engine/model_weights.h"
#include "tests/cuda/backends.h"

namespace trams::cuda {
namespace {

const std::string kModulePath = TRAMS_CUDA_MODULE_PATH;

TEST(CudaLoader, MissingModuleMeansHost) {
  const CudaAvailability probe = ProbeCuda("/nonexistent/dir/libtrams_cuda.so");
  EXPECT_FALSE(probe.available());
  EXPECT_EQ(probe.module, nullptr);
  EXPECT_EQ(probe.message.rfind("no CUDA device: running on the host (", 0), 0u) << probe.message;
  EXPECT_NE(probe.message.find("not found"), std::string::npos) << probe.message;
  auto m = CudaModule::Open("/nonexistent/dir/libtrams_cuda.so");
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
}

TEST(CudaLoader, NotAModuleIsAnError) {
  auto m = CudaModule::Open("/proc/self/exe");  // exists, but is no shared library with our symbol
  EXPECT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition) << m.status();
}

TEST(CudaLoader, DefaultPathIsNextToTheExecutable) {
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe");
  EXPECT_EQ(DefaultModulePath(), (exe.parent_path() / kModuleFileName).string());
}

TEST(CudaLoader, BuiltModuleLoadsAndReportsDevices) {
  if (kModulePath.empty()) TRAMS_SKIP_WITHOUT_GPU("built without the CUDA module");
  const CudaAvailability probe = ProbeCuda(kModulePath);
  ASSERT_NE(probe.module, nullptr) << probe.message;
  EXPECT_EQ(probe.module->api().version, TRAMS_CUDA_API_VERSION);
  EXPECT_STREQ(probe.module->api().backend, "cuda");
  EXPECT_NE(probe.module->create_ops_symbol(), nullptr);
  std::printf("[ probe ] %s\n", probe.message.c_str());
  if (probe.devices > 0) {
    EXPECT_EQ(probe.message.rfind("CUDA: ", 0), 0u) << probe.message;
    return;
  }
  // No GPU here: cudaGetDeviceCount failed (no or old driver) or found none; both mean "host".
  EXPECT_EQ(probe.message.rfind("no CUDA device: running on the host (", 0), 0u) << probe.message;
  // Creating a context must fail with a code and a message, not crash.
  auto weights = engine::LoadModelDirectory(std::string(TRAMS_TEST_DATA_DIR) + "/golden/models/plain_postln");
  ASSERT_TRUE(weights.ok());
  auto engine = CudaEngine::Create(&probe.module->api(), *weights);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kUnavailable) << engine.status();
  EXPECT_NE(std::string(engine.status().message()).find("no CUDA device"), std::string::npos) << engine.status();
}

TEST(CudaLoader, EmulatedApiServesTheSameTable) {
  const trams_cuda_api* api = EmulatedApi();
  EXPECT_EQ(api->version, TRAMS_CUDA_API_VERSION);
  EXPECT_STREQ(api->backend, "emulated");
  int32_t count = 0;
  EXPECT_EQ(api->device_count(&count), TRAMS_CUDA_OK);
  EXPECT_EQ(count, 1);
  trams_cuda_context* ctx = nullptr;
  EXPECT_EQ(api->create(nullptr, nullptr, &ctx), TRAMS_CUDA_INVALID_ARGUMENT);
  EXPECT_NE(std::string(api->last_error()).find("null"), std::string::npos);
}

TEST(CudaLoader, ShapeMismatchesAreNamed) {
  auto weights = engine::LoadModelDirectory(std::string(TRAMS_TEST_DATA_DIR) + "/golden/models/plain_postln");
  ASSERT_TRUE(weights.ok());
  weights->layers[1].o_net.cols -= 1;
  auto engine = CudaEngine::Create(EmulatedApi(), *weights);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(engine.status().message()).find("layer 1 o_net"), std::string::npos) << engine.status();
}

}  // namespace
}  // namespace trams::cuda
