// The backends the CUDA tests run on: "emulated" (EmulatedOps / EmulatedApi, always available) and "cuda"
// (libtrams_cuda.so from the build, when the machine has a device; otherwise its cases GTEST_SKIP with the
// loader's message). Test-only.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/cuda/cuda_loader.h"
#include "engine/cuda/device_ops.h"
#include "engine/cuda/host_emulation.h"

namespace trams::cuda::testing {

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
