// Picks and opens the engine a program runs on: the host, a CUDA device through the run-time loaded
// module, or the CUDA path's host emulation (tests). trams-server and trams-eval share it, so `--device`
// means the same everywhere and the reason for the choice is always stated.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "engine/model_weights.h"

namespace trams::cuda {
class CudaModule;
}

namespace trams::engine {

struct DeviceChoice {
  // auto (a usable CUDA device, else the host) | cpu | cuda | cuda:N | emulated (the CUDA orchestration on
  // the host: slow, for tests).
  std::string device = "auto";
  int threads = 0;                    // host engine threads (0: one per core)
  int64_t gpu_pool_bytes = 0;         // session arena; 0: gpu_memory_fraction of the free device memory
  double gpu_memory_fraction = 0.5;   // (0, 0.95]
  std::string weight_dtype = "f32";   // f32 | f16 | bf16 (device weights; pools and accumulation stay f32)
  // f32 | f16 | bf16: how every session's pool stores keys and values, on every device (DESIGN.md,
  // "Pool storage dtype"); f16/bf16 halve the pool's key/value bytes.
  std::string pool_dtype = "f32";
  bool allow_tf32 = false;
  std::string module_path;            // empty: libtrams_cuda.so next to the executable
};

// The emulated backend's arena when none is given: the emulation allocates (and touches) it on the host.
inline constexpr int64_t kEmulatedDefaultPoolBytes = int64_t{256} << 20;

struct OpenedEngine {
  std::unique_ptr<cuda::CudaModule> module;  // outlives the engine (declared first, destroyed last)
  std::unique_ptr<Engine> engine;
  std::string reason;  // why this device: "--device cpu", "CUDA: 1 device(s) via ...", "no CUDA device: ..."
  OpenedEngine();
  OpenedEngine(OpenedEngine&&) noexcept;
  OpenedEngine& operator=(OpenedEngine&&) noexcept;
  ~OpenedEngine();
};

// INVALID_ARGUMENT for a bad choice; FAILED_PRECONDITION when cuda was asked for and no device is usable
// (the message says why); the model's own load errors otherwise.
absl::StatusOr<OpenedEngine> OpenEngine(const std::string& model_dir, const DeviceChoice& choice);
// The same over weights already in memory (random weights of a benchmark).
absl::StatusOr<OpenedEngine> OpenEngine(ModelWeights weights, const DeviceChoice& choice);

}  // namespace trams::engine
