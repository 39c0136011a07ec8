// Finds and loads the CUDA backend module (libtrams_cuda.so) at run time, so that one binary runs with
// or without a GPU and cuBLAS never sits in the static TLS of a process that runs the metrics exposer
// (the shared build notes, pitfall 1: static TLS and the metrics exposer). Plain C++: no CUDA headers, no CUDA libraries.
// The module is opened RTLD_LOCAL | RTLD_NODELETE (the CUDA runtime does not survive being unloaded).
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/cuda/cuda_backend_api.h"

namespace trams::cuda {

inline constexpr char kModuleFileName[] = "libtrams_cuda.so";

// <directory of /proc/self/exe>/libtrams_cuda.so (empty if /proc/self/exe cannot be read).
std::string DefaultModulePath();

class CudaModule {
 public:
  // dlopen()s `path` (empty: DefaultModulePath()) and resolves trams_cuda_get_api. NotFound when the file
  // does not exist, FailedPrecondition when it cannot be loaded (the message carries dlerror()), lacks the
  // entry point or serves another API version (the message says which version it serves).
  static absl::StatusOr<std::unique_ptr<CudaModule>> Open(const std::string& path = "");

  const trams_cuda_api& api() const { return *api_; }
  const std::string& path() const { return path_; }
  // Devices the module sees; 0 with the reason in `why` when there is no driver or device (the module's
  // message, e.g. "cudaGetDeviceCount: cudaErrorNoDevice (...)", and the module's path).
  int DeviceCount(std::string* why = nullptr) const;
  // The module's C++ test hook (TRAMS_CUDA_CREATE_OPS_SYMBOL), or null.
  void* create_ops_symbol() const { return create_ops_; }

 private:
  CudaModule() = default;
  void* handle_ = nullptr;
  const trams_cuda_api* api_ = nullptr;
  void* create_ops_ = nullptr;
  std::string path_;
};

// The answer to "can this process use a GPU?", with a one-line message for the logs:
// "CUDA: 1 device(s) via /path/libtrams_cuda.so" or "no CUDA device: running on the host (<why>)".
struct CudaAvailability {
  std::unique_ptr<CudaModule> module;  // kept when loaded, even with 0 devices
  int devices = 0;
  std::string message;
  bool available() const { return module != nullptr && devices > 0; }
};

CudaAvailability ProbeCuda(const std::string& path = "");

// A trams_cuda_code and message as an absl::Status (the one place the codes are mapped).
absl::Status FromCudaCode(trams_cuda_code code, const char* message);

}  // namespace trams::cuda
