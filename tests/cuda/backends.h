// The backends the CUDA tests run on: "emulated" (EmulatedOps / EmulatedApi, always available) and "cuda"
// (libtrams_cuda.so from the build, when the machine has a device; otherwise its cases skip with the
// loader's message through TRAMS_SKIP_WITHOUT_GPU, which fails instead under TRAMS_REQUIRE_GPU=1).
// Test-only.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/cuda/cuda_loader.h"
#include "engine/cuda/device_ops.h"
#include "engine/cuda/host_emulation.h"

namespace trams::cuda::testing {

// True when TRAMS_REQUIRE_GPU=1: a GPU run (deploy/gpu-check.sh) must not pass by skipping its GPU cases.
inline bool RequireGpu() {
  const char* v = std::getenv("TRAMS_REQUIRE_GPU");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

// Every GPU skip in tests/cuda goes through here: GTEST_SKIP with `why`, or, under TRAMS_REQUIRE_GPU=1, a
// failure with `why`. Returns from the enclosing void function (test body or SetUp) either way.
#define TRAMS_SKIP_WITHOUT_GPU(why)                                                           \
  do {                                                                                        \
    if (::trams::cuda::testing::RequireGpu()) {                                               \
      FAIL() << "TRAMS_REQUIRE_GPU=1 but the cuda backend is unavailable: " << (why);         \
    }                                                                                         \
    GTEST_SKIP() << (why);                                                                    \
  } while (0)

inline const std::vector<std::string>& BackendNames() {
  static const std::vector<std::string> names = {"emulated", "cuda"};
  return names;
}

// The module under test, loaded once; `message` says why the cuda backend is unavailable.
struct LoadedModule {
  CudaAvailability probe;
};

inline const LoadedModule& Module() {
  static const LoadedModule* m = [] {
    auto* lm = new LoadedModule();
    const std::string path = TRAMS_CUDA_MODULE_PATH;
    lm->probe = ProbeCuda(path.empty() ? "/nonexistent/libtrams_cuda.so" : path);
    return lm;
  }();
  return *m;
}

// The C ABI of `backend`, or null with the reason in `why`.
inline const trams_cuda_api* ApiFor(const std::string& backend, std::string* why) {
  if (backend == "emulated") return EmulatedApi();
  const LoadedModule& m = Module();
  if (!m.probe.available()) {
    *why = m.probe.message;
    return nullptr;
  }
  return &m.probe.module->api();
}

// The DeviceOps of `backend` on device 0, or null with the reason in `why`.
inline std::unique_ptr<DeviceOps> OpsFor(const std::string& backend, std::string* why) {
  if (backend == "emulated") return MakeEmulatedOps();
  const LoadedModule& m = Module();
  if (!m.probe.available()) {
    *why = m.probe.message;
    return nullptr;
  }
  using CreateOps = DeviceOps* (*)(int32_t, char*, size_t);
  auto create = reinterpret_cast<CreateOps>(m.probe.module->create_ops_symbol());
  if (create == nullptr) {
    *why = "the module does not export " TRAMS_CUDA_CREATE_OPS_SYMBOL;
    return nullptr;
  }
  char error[512] = {0};
  DeviceOps* ops = create(0, error, sizeof error);
  if (ops == nullptr) *why = error;
  return std::unique_ptr<DeviceOps>(ops);
}

}  // namespace trams::cuda::testing
