#include "engine/cuda/cuda_loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "absl/strings/str_cat.h"

namespace trams::cuda {

std::string DefaultModulePath() {
  // $TRAMS_CUDA_MODULE, else next to the executable or one folder up (build/engine/trams-eval and
  // build/server/trams-server find build/libtrams_cuda.so), else where the package and the images install
  // it (PREFIX/bin/trams-server -> PREFIX/lib/<multiarch>/trams-serve/), else a copy beside it.
  if (const char* env = std::getenv("TRAMS_CUDA_MODULE"); env != nullptr && *env != '\0') return env;
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "";
  for (const auto& dir : {exe.parent_path(), exe.parent_path().parent_path(),
                          exe.parent_path().parent_path() / TRAMS_CUDA_MODULE_SUBDIR}) {
    const auto candidate = dir / kModuleFileName;
    if (std::filesystem::exists(candidate, ec)) return candidate.string();
  }
  return (exe.parent_path() / kModuleFileName).string();
}

absl::StatusOr<std::unique_ptr<CudaModule>> CudaModule::Open(const std::string& path_in) {
  const std::string path = path_in.empty() ? DefaultModulePath() : path_in;
  if (path.empty()) return absl::NotFoundError("cannot locate the CUDA module: /proc/self/exe is unreadable");
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat("CUDA module not found at ", path, " (built without -DTRAMS_WITH_CUDA=ON?",
                                            path_in.empty() ? " $TRAMS_CUDA_MODULE names another path" : "", ")"));
  }
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  if (handle == nullptr) {
    // dlerror() names the cause: a missing libcudart/libcublas (no CUDA runtime installed or not on the
    // loader path), an unresolved symbol, a wrong architecture, a file that is no shared library.
    const char* err = dlerror();
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load ", path, ": dlopen: ", err != nullptr ? err : "(no dlerror message)"));
  }
  dlerror();  // clear, so that a failed dlsym's message is its own
  auto get_api = reinterpret_cast<trams_cuda_get_api_fn>(dlsym(handle, TRAMS_CUDA_GET_API_SYMBOL));
  if (get_api == nullptr) {
    const char* err = dlerror();
    const std::string why = err != nullptr ? err : "symbol is null";  // copied: dlclose() reuses the buffer
    dlclose(handle);
    return absl::FailedPreconditionError(absl::StrCat(path, " is not a trams CUDA module: it does not export ",
                                                      TRAMS_CUDA_GET_API_SYMBOL, " (dlsym: ", why, ")"));
  }
  const trams_cuda_api* api = get_api(TRAMS_CUDA_API_VERSION);
  std::string mismatch;
  if (api == nullptr) {
    mismatch = "it returned no table";
  } else if (api->version != TRAMS_CUDA_API_VERSION) {
    mismatch = absl::StrCat("it serves version ", api->version);
  } else if (api->struct_size < static_cast<int32_t>(sizeof(trams_cuda_api))) {
    mismatch = absl::StrCat("its table is ", api->struct_size, " bytes, this binary needs ", sizeof(trams_cuda_api));
  }
  if (!mismatch.empty()) {
    dlclose(handle);
    return absl::FailedPreconditionError(absl::StrCat(path, " does not serve CUDA backend API version ",
                                                      TRAMS_CUDA_API_VERSION, ": ", mismatch,
                                                      " (module and binary from different builds? rebuild both)"));
  }
  std::unique_ptr<CudaModule> m(new CudaModule());
  m->handle_ = handle;
  m->api_ = api;
  m->create_ops_ = dlsym(handle, TRAMS_CUDA_CREATE_OPS_SYMBOL);
  m->path_ = path;
  return m;
}

int CudaModule::DeviceCount(std::string* why) const {
  int32_t count = 0;
  const trams_cuda_code code = api_->device_count(&count);
  if (code != TRAMS_CUDA_OK || count <= 0) {
    if (why != nullptr) {
      // The module says which: no driver, a driver too old for the runtime, or no device.
      const char* err = api_->last_error != nullptr ? api_->last_error() : nullptr;
      std::string reason = err != nullptr && *err != '\0' ? err : "the module reports no CUDA device";
      if (code != TRAMS_CUDA_OK) {
        reason = absl::StrCat("device_count failed (code ", static_cast<int>(code), "): ", reason);
      }
      *why = absl::StrCat(reason, "; module ", path_);
    }
    return 0;
  }
  return count;
}

CudaAvailability ProbeCuda(const std::string& path) {
  CudaAvailability out;
  auto module = CudaModule::Open(path);
  if (!module.ok()) {
    out.message = absl::StrCat("no CUDA device: running on the host (", module.status().message(), ")");
    return out;
  }
  std::string why;
  out.devices = (*module)->DeviceCount(&why);
  out.message = out.devices > 0 ? absl::StrCat("CUDA: ", out.devices, " device(s) via ", (*module)->path())
                                : absl::StrCat("no CUDA device: running on the host (", why, ")");
  out.module = std::move(*module);
  return out;
}

absl::Status FromCudaCode(trams_cuda_code code, const char* message) {
  const std::string m = message != nullptr ? message : "";
  switch (code) {
    case TRAMS_CUDA_OK: return absl::OkStatus();
    case TRAMS_CUDA_INVALID_ARGUMENT: return absl::InvalidArgumentError(m);
    case TRAMS_CUDA_RESOURCE_EXHAUSTED: return absl::ResourceExhaustedError(m);
    case TRAMS_CUDA_UNAVAILABLE: return absl::UnavailableError(m);
    case TRAMS_CUDA_FAILED_PRECONDITION: return absl::FailedPreconditionError(m);
    case TRAMS_CUDA_INTERNAL: return absl::InternalError(m);
  }
  return absl::InternalError(absl::StrCat("unknown CUDA backend code ", static_cast<int>(code), ": ", m));
}

}  // namespace trams::cuda
