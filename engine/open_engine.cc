#include "engine/open_engine.h"

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/cuda/cuda_engine.h"
#include "engine/cuda/cuda_loader.h"
#include "engine/cuda/host_emulation.h"
#include "engine/model_weights.h"
#include "engine/status_macros.h"
#include "engine/transformer_xl.h"

namespace trams::engine {

OpenedEngine::OpenedEngine() = default;
OpenedEngine::OpenedEngine(OpenedEngine&&) noexcept = default;
OpenedEngine& OpenedEngine::operator=(OpenedEngine&&) noexcept = default;
OpenedEngine::~OpenedEngine() {
  engine.reset();  // before the module whose code it runs
  module.reset();
}

namespace {

absl::StatusOr<trams_cuda_dtype> ParseWeightDtype(const std::string& name) {
  if (name == "f32") return TRAMS_CUDA_F32;
  if (name == "f16") return TRAMS_CUDA_F16;
  if (name == "bf16") return TRAMS_CUDA_BF16;
  return absl::InvalidArgumentError(absl::StrCat("weight dtype must be f32, f16 or bf16, got '", name, "'"));
}

struct Parsed {
  enum Kind { kAuto, kCpu, kCuda, kEmulated } kind = kAuto;
  int ordinal = 0;
};

absl::StatusOr<Parsed> ParseDevice(const std::string& device) {
  Parsed p;
  if (device == "auto") return p;
  if (device == "cpu") {
    p.kind = Parsed::kCpu;
    return p;
  }
  if (device == "emulated") {
    p.kind = Parsed::kEmulated;
    return p;
  }
  if (device == "cuda") {
    p.kind = Parsed::kCuda;
    return p;
  }
  if (device.rfind("cuda:", 0) == 0 && absl::SimpleAtoi(device.substr(5), &p.ordinal) && p.ordinal >= 0 &&
      p.ordinal < 1024) {
    p.kind = Parsed::kCuda;
    return p;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("device must be auto, cpu, cuda, cuda:N or emulated, got '", device, "'"));
}

}  // namespace

absl::StatusOr<OpenedEngine> OpenEngine(const std::string& model_dir, const DeviceChoice& choice) {
  RETURN_IF_ERROR(ParseDevice(choice.device).status());  // a bad flag before a slow load
  RETURN_IF_ERROR(ParsePoolDType(choice.pool_dtype).status());
  ASSIGN_OR_RETURN(ModelWeights weights, LoadModelDirectory(model_dir));
  return OpenEngine(std::move(weights), choice);
}

absl::StatusOr<OpenedEngine> OpenEngine(ModelWeights weights, const DeviceChoice& choice) {
  ASSIGN_OR_RETURN(const Parsed device, ParseDevice(choice.device));
  ASSIGN_OR_RETURN(const trams_cuda_dtype dtype, ParseWeightDtype(choice.weight_dtype));
  ASSIGN_OR_RETURN(const PoolDType pool_dtype, ParsePoolDType(choice.pool_dtype));
  if (choice.gpu_pool_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat("gpu pool bytes must not be negative, got ", choice.gpu_pool_bytes));
  }
  if (!(choice.gpu_memory_fraction > 0 && choice.gpu_memory_fraction <= 0.95)) {
    return absl::InvalidArgumentError(
        absl::StrCat("gpu memory fraction must be in (0, 0.95], got ", choice.gpu_memory_fraction));
  }
  OpenedEngine opened;
  const trams_cuda_api* api = nullptr;
  if (device.kind == Parsed::kEmulated) {
    api = cuda::EmulatedApi();
    opened.reason = "--device emulated: the CUDA path emulated on the host (tests)";
  } else if (device.kind != Parsed::kCpu) {
    cuda::CudaAvailability probe = cuda::ProbeCuda(choice.module_path);
    if (probe.available() && device.ordinal < probe.devices) {
      opened.module = std::move(probe.module);
      api = &opened.module->api();
      opened.reason = probe.message;
    } else {
      std::string why = probe.message;
      if (probe.available()) {
        why = absl::StrCat("cuda:", device.ordinal, " does not exist (", probe.devices, " device(s))");
      }
      if (device.kind == Parsed::kCuda) return absl::FailedPreconditionError(absl::StrCat("--device ", choice.device, ": ", why));
      opened.reason = why;  // auto: the host, and why
    }
  } else {
    opened.reason = "--device cpu";
  }
  if (api == nullptr) {
    EngineOptions options;
    options.threads = choice.threads;
    options.pool_dtype = pool_dtype;
    opened.engine = TransformerXL::FromWeights(std::move(weights), options);
    return opened;
  }
  cuda::CudaEngineOptions options;
  options.device = device.ordinal;
  options.weight_dtype = dtype;
  options.pool_dtype = static_cast<trams_cuda_dtype>(static_cast<int32_t>(pool_dtype));
  options.allow_tf32 = choice.allow_tf32;
  options.arena_bytes = choice.gpu_pool_bytes;
  if (options.arena_bytes == 0 && device.kind == Parsed::kEmulated) options.arena_bytes = kEmulatedDefaultPoolBytes;
  options.arena_fraction = options.arena_bytes == 0 ? choice.gpu_memory_fraction : 0.0;
  ASSIGN_OR_RETURN(std::unique_ptr<cuda::CudaEngine> engine, cuda::CudaEngine::Create(api, weights, options));
  opened.engine = std::move(engine);
  return opened;
}

}  // namespace trams::engine
