// CudaOps: DeviceOps on one GPU (one non-blocking cudaStream, one cuBLAS handle, two cudaEvents for
// timing) and the module's exported entry points. CUDA and cuBLAS errors become Status here, with the
// call, the file and the line. Compiled only into libtrams_cuda.so.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "engine/cuda/api_table.h"
#include "engine/cuda/device_ops.h"
#include "engine/cuda/gemm_layout.h"
#include "engine/cuda/kernels.h"

#define TRAMS_CUDA_EXPORT extern "C" __attribute__((visibility("default")))

namespace trams::cuda {
namespace {

const char* BaseName(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash != nullptr ? slash + 1 : path;
}

Status FromCuda(cudaError_t e, const char* what, const char* file, int line) {
  if (e == cudaSuccess) return Status::Ok();
  trams_cuda_code code = TRAMS_CUDA_INTERNAL;
  if (e == cudaErrorMemoryAllocation) code = TRAMS_CUDA_RESOURCE_EXHAUSTED;
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver || e == cudaErrorInvalidDevice) {
    code = TRAMS_CUDA_UNAVAILABLE;
  }
  return Status(code, std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ") at " +
                          BaseName(file) + ":" + std::to_string(line));
}

Status FromCublas(cublasStatus_t e, const char* what, const char* file, int line) {
  if (e == CUBLAS_STATUS_SUCCESS) return Status::Ok();
  const trams_cuda_code code =
      e == CUBLAS_STATUS_ALLOC_FAILED ? TRAMS_CUDA_RESOURCE_EXHAUSTED : TRAMS_CUDA_INTERNAL;
  return Status(code, std::string(what) + ": " + cublasGetStatusName(e) + " (" + cublasGetStatusString(e) + ") at " +
                          BaseName(file) + ":" + std::to_string(line));
}

#define CUDA_TRY(expr)                                                               \
  do {                                                                               \
    const cudaError_t _e = (expr);                                                   \
    if (_e != cudaSuccess) return FromCuda(_e, #expr, __FILE__, __LINE__);           \
  } while (0)
#define CUBLAS_TRY(expr)                                                             \
  do {                                                                               \
    const cublasStatus_t _e = (expr);                                                \
    if (_e != CUBLAS_STATUS_SUCCESS) return FromCublas(_e, #expr, __FILE__, __LINE__); \
  } while (0)
#define LAUNCH(kernel, args) return FromCuda(Launch##kernel(args, stream_), "kernel " #kernel, __FILE__, __LINE__)

cudaDataType_t CudaType(DType t) {
  switch (t) {
    case DType::kF16: return CUDA_R_16F;
    case DType::kBF16: return CUDA_R_16BF;
    default: return CUDA_R_32F;
  }
}

class CudaOps final : public DeviceOps {
 public:
  static Status Create(int device, std::unique_ptr<DeviceOps>* out) {
    std::unique_ptr<CudaOps> ops(new CudaOps(device));
    TRAMS_CUDA_RETURN_IF_ERROR(ops->Init());
    *out = std::move(ops);
    return Status::Ok();
  }

  ~CudaOps() override {
    cudaSetDevice(device_);
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    if (start_ != nullptr) cudaEventDestroy(start_);
    if (stop_ != nullptr) cudaEventDestroy(stop_);
    if (cublas_ != nullptr) cublasDestroy(cublas_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  const char* backend() const override { return "cuda"; }
  void Configure(const trams_cuda_options& options) override { allow_tf32_ = options.allow_tf32 != 0; }
  Status Activate() override {
    CUDA_TRY(cudaSetDevice(device_));
    return Status::Ok();
  }

  Status Describe(DeviceDescription* out) override {
    cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, device_));
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_TRY(cudaMemGetInfo(&free_bytes, &total_bytes));
    out->name = prop.name;
    out->device = device_;
    out->cc_major = prop.major;
    out->cc_minor = prop.minor;
    out->memory_total = static_cast<int64_t>(total_bytes);
    out->memory_free = static_cast<int64_t>(free_bytes);
    return Status::Ok();
  }

  Status Malloc(size_t bytes, void** ptr) override {
    *ptr = nullptr;
    const cudaError_t e = cudaMalloc(ptr, bytes == 0 ? 256 : bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();  // not sticky: clear it so later launch checks do not see it
      *ptr = nullptr;
      Status s = FromCuda(e, "cudaMalloc", __FILE__, __LINE__);
      return Status(s.code(), "device memory: cannot allocate " + std::to_string(bytes) + " bytes (" + s.message() + ")");
    }
    return Status::Ok();
  }
  void Free(void* ptr) override {
    if (ptr != nullptr) cudaFree(ptr);
  }
  Status Upload(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return Status::Ok();
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
    return Status::Ok();
  }
  Status Download(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return Status::Ok();
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    CUDA_TRY(cudaStreamSynchronize(stream_));
    return Status::Ok();
  }
  Status CopyOnDevice(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0) return Status::Ok();
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
    return Status::Ok();
  }
  Status Copy2D(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width, size_t rows) override {
    if (width == 0 || rows == 0) return Status::Ok();
    CUDA_TRY(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows, cudaMemcpyDeviceToDevice, stream_));
    return Status::Ok();
  }
  Status Zero(void* dst, size_t bytes) override {
    if (bytes == 0) return Status::Ok();
    CUDA_TRY(cudaMemsetAsync(dst, 0, bytes, stream_));
    return Status::Ok();
  }
  Status Synchronize() override {
    CUDA_TRY(cudaStreamSynchronize(stream_));
    return Status::Ok();
  }
  Status StartTimer() override {
    CUDA_TRY(cudaEventRecord(start_, stream_));
    return Status::Ok();
  }
  Status StopTimer() override {
    CUDA_TRY(cudaEventRecord(stop_, stream_));
    return Status::Ok();
  }
  Status ElapsedMs(float* ms) override {
    CUDA_TRY(cudaEventSynchronize(stop_));
    CUDA_TRY(cudaEventElapsedTime(ms, start_, stop_));
    return Status::Ok();
  }

  Status Gemm(const GemmArgs& g) override {
    if (g.m == 0 || g.n == 0 || g.batch == 0) return Status::Ok();
    const ColumnMajorGemm c = ToColumnMajor(g);
    const cudaDataType_t t = CudaType(g.type);
    const cublasComputeType_t compute =
        g.type == DType::kF32 && allow_tf32_ ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    const cublasOperation_t ta = c.transa ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t tb = c.transb ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (c.batch == 1) {
      CUBLAS_TRY(cublasGemmEx(cublas_, ta, tb, c.m, c.n, c.k, &g.alpha, c.a, t, static_cast<int>(c.lda), c.b, t,
                              static_cast<int>(c.ldb), &g.beta, c.c, CUDA_R_32F, static_cast<int>(c.ldc), compute,
                              CUBLAS_GEMM_DEFAULT));
    } else {
      CUBLAS_TRY(cublasGemmStridedBatchedEx(cublas_, ta, tb, c.m, c.n, c.k, &g.alpha, c.a, t,
                                            static_cast<int>(c.lda), c.stride_a, c.b, t, static_cast<int>(c.ldb),
                                            c.stride_b, &g.beta, c.c, CUDA_R_32F, static_cast<int>(c.ldc),
                                            c.stride_c, c.batch, compute, CUBLAS_GEMM_DEFAULT));
    }
    return Status::Ok();
  }

  Status Convert(const ConvertArgs& a) override { LAUNCH(Convert, a); }
  Status Gather(const GatherArgs& a) override { LAUNCH(Gather, a); }
  Status GatherPtrs(const GatherPtrArgs& a) override { LAUNCH(GatherPtrs, a); }
  Status LayerNorm(const LayerNormArgs& a) override { LAUNCH(LayerNorm, a); }
  Status BiasRelu(const BiasReluArgs& a) override { LAUNCH(BiasRelu, a); }
  Status AttnGather(const AttnArgs& a) override { LAUNCH(AttnGather, a); }
  Status AttnSoftmax(const AttnArgs& a) override { LAUNCH(AttnSoftmax, a); }
  Status AttnScatter(const AttnArgs& a) override { LAUNCH(AttnScatter, a); }
  Status TramsSelect(const SelectArgs& a) override { LAUNCH(TramsSelect, a); }
  Status PoolAppend(const AppendArgs& a) override { LAUNCH(PoolAppend, a); }
  Status LogSoftmax(const LogSoftmaxArgs& a) override { LAUNCH(LogSoftmax, a); }
  Status Targets(const TargetArgs& a) override { LAUNCH(Targets, a); }

 private:
  explicit CudaOps(int device) : device_(device) {}

  Status Init() {
    CUDA_TRY(cudaSetDevice(device_));
    CUDA_TRY(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    CUDA_TRY(cudaEventCreate(&start_));
    CUDA_TRY(cudaEventCreate(&stop_));
    CUBLAS_TRY(cublasCreate(&cublas_));
    CUBLAS_TRY(cublasSetStream(cublas_, stream_));
    return Status::Ok();
  }

  int device_;
  bool allow_tf32_ = false;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
};

// cudaGetDeviceCount failing (no driver: cudaErrorInsufficientDriver / cudaErrorNoDevice) means 0 devices.
trams_cuda_code CudaDeviceCount(int32_t* count) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    *count = 0;
    return SetLastError(Status(TRAMS_CUDA_OK, std::string("cudaGetDeviceCount: ") + cudaGetErrorName(e) + " (" +
                                                  cudaGetErrorString(e) + ")"));
  }
  *count = n;
  return SetLastError(Status(TRAMS_CUDA_OK, n == 0 ? "no CUDA device found" : ""));
}

Status CudaFactory(int32_t device, std::unique_ptr<DeviceOps>* ops) {
  int32_t count = 0;
  CudaDeviceCount(&count);
  if (count <= 0) return Unavailable(std::string("no CUDA device: ") + LastErrorMessage());
  if (device < 0 || device >= count) {
    return InvalidArgument("CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) +
                           " visible)");
  }
  return CudaOps::Create(device, ops);
}

trams_cuda_code CudaCreate(const trams_cuda_model* model, const trams_cuda_options* options,
                           trams_cuda_context** out) {
  return CreateContextWithOps(model, options, &CudaFactory, out);
}

}  // namespace
}  // namespace trams::cuda

TRAMS_CUDA_EXPORT const trams_cuda_api* trams_cuda_get_api(int32_t version) {
  if (version != TRAMS_CUDA_API_VERSION) return nullptr;
  static const trams_cuda_api api =
      trams::cuda::MakeApiTable("cuda", &trams::cuda::CudaDeviceCount, &trams::cuda::CudaCreate);
  return &api;
}

// Test and diagnostics hook (TRAMS_CUDA_CREATE_OPS_SYMBOL): the DeviceOps of `device`, owned by the caller.
TRAMS_CUDA_EXPORT trams::cuda::DeviceOps* trams_cuda_create_device_ops(int32_t device, char* error,
                                                                       size_t error_size) {
  std::unique_ptr<trams::cuda::DeviceOps> ops;
  const trams::cuda::Status s = trams::cuda::CudaFactory(device, &ops);
  if (!s.ok()) {
    if (error != nullptr && error_size > 0) std::snprintf(error, error_size, "%s", s.message().c_str());
    return nullptr;
  }
  return ops.release();
}
