// The ops the CUDA backend's forward needs, as an interface with two implementations: CudaOps
// (cuda_ops.cc: one cudaStream, cuBLAS, the kernels of *.cu) and EmulatedOps (host_emulation.cc: the
// same argument blocks run on the host with the same per-element math), so the orchestration in
// context.cc is tested on machines without a GPU. Plain C++; no CUDA headers.
//
// Ordering: every op is stream-ordered (asynchronous on CUDA). Download() and Synchronize() wait.
// Pointers are device pointers except the host side of Upload/Download.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "engine/cuda/cuda_backend_api.h"
#include "engine/cuda/kernel_args.h"

namespace trams::cuda {

// An error code of the C ABI and a message; codes are trams_cuda_code.
class Status {
 public:
  Status() = default;
  Status(trams_cuda_code code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return Status(); }
  bool ok() const { return code_ == TRAMS_CUDA_OK; }
  trams_cuda_code code() const { return code_; }
  const std::string& message() const { return message_; }
  // Prefixes what the caller was doing: "forward, layer 3: <message>".
  Status Annotate(const std::string& what) const { return ok() ? *this : Status(code_, what + ": " + message_); }

 private:
  trams_cuda_code code_ = TRAMS_CUDA_OK;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return Status(TRAMS_CUDA_INVALID_ARGUMENT, std::move(m)); }
inline Status ResourceExhausted(std::string m) { return Status(TRAMS_CUDA_RESOURCE_EXHAUSTED, std::move(m)); }
inline Status Unavailable(std::string m) { return Status(TRAMS_CUDA_UNAVAILABLE, std::move(m)); }
inline Status FailedPrecondition(std::string m) { return Status(TRAMS_CUDA_FAILED_PRECONDITION, std::move(m)); }
inline Status Internal(std::string m) { return Status(TRAMS_CUDA_INTERNAL, std::move(m)); }

#define TRAMS_CUDA_RETURN_IF_ERROR(expr)      \
  do {                                        \
    ::trams::cuda::Status _tc_status = (expr); \
    if (!_tc_status.ok()) return _tc_status;  \
  } while (0)

struct DeviceDescription {
  std::string name;
  int device = 0;
  int cc_major = 0, cc_minor = 0;
  int64_t memory_total = 0, memory_free = 0;
};

class DeviceOps {
 public:
  virtual ~DeviceOps() = default;

  virtual const char* backend() const = 0;  // "cuda" or "emulated"
  // Options that change how ops run (allow_tf32); called once by the context before any op.
  virtual void Configure(const trams_cuda_options& /*options*/) {}
  // Makes this device current for the calling thread (cudaSetDevice); call at every API entry.
  virtual Status Activate() = 0;
  virtual Status Describe(DeviceDescription* out) = 0;

  // Memory. Malloc failure is ResourceExhausted.
  virtual Status Malloc(size_t bytes, void** ptr) = 0;
  virtual void Free(void* ptr) = 0;
  virtual Status Upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual Status Download(void* host_dst, const void* src, size_t bytes) = 0;  // waits for the stream
  virtual Status CopyOnDevice(void* dst, const void* src, size_t bytes) = 0;
  // rows x width bytes, device to device, with pitches (cudaMemcpy2DAsync).
  virtual Status Copy2D(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
                        size_t rows) = 0;
  virtual Status Zero(void* dst, size_t bytes) = 0;
  virtual Status Synchronize() = 0;

  // Device time between StartTimer() and StopTimer(); ElapsedMs() waits for the stop.
  virtual Status StartTimer() = 0;
  virtual Status StopTimer() = 0;
  virtual Status ElapsedMs(float* ms) = 0;

  // Math (see kernel_args.h for the exact semantics of each block).
  virtual Status Gemm(const GemmArgs& g) = 0;
  virtual Status Convert(const ConvertArgs& a) = 0;
  virtual Status Gather(const GatherArgs& a) = 0;
  virtual Status GatherPtrs(const GatherPtrArgs& a) = 0;
  virtual Status LayerNorm(const LayerNormArgs& a) = 0;
  virtual Status BiasRelu(const BiasReluArgs& a) = 0;
  virtual Status AttnGather(const AttnArgs& a) = 0;
  virtual Status AttnSoftmax(const AttnArgs& a) = 0;
  virtual Status AttnScatter(const AttnArgs& a) = 0;
  virtual Status TramsSelect(const SelectArgs& a) = 0;
  virtual Status PoolAppend(const AppendArgs& a) = 0;
  virtual Status LogSoftmax(const LogSoftmaxArgs& a) = 0;
  virtual Status Targets(const TargetArgs& a) = 0;
};

}  // namespace trams::cuda
