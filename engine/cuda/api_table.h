// The C ABI's function table over Context (context.h). Each backend supplies device_count and create
// (which picks its DeviceOps); everything else is shared. Errors become a trams_cuda_code plus a
// thread-local message (last_error).
#pragma once

#include <memory>

#include "engine/cuda/cuda_backend_api.h"
#include "engine/cuda/device_ops.h"

namespace trams::cuda {

using OpsFactory = Status (*)(int32_t device, std::unique_ptr<DeviceOps>* ops);
using DeviceCountFn = trams_cuda_code (*)(int32_t* count);
using CreateFn = trams_cuda_code (*)(const trams_cuda_model*, const trams_cuda_options*, trams_cuda_context**);

trams_cuda_api MakeApiTable(const char* backend, DeviceCountFn device_count, CreateFn create);

// create() of a backend: checks the arguments, builds the ops for options->device, then the context.
trams_cuda_code CreateContextWithOps(const trams_cuda_model* model, const trams_cuda_options* options,
                                     OpsFactory factory, trams_cuda_context** out);

// Records `s` as the calling thread's last error and returns its code.
trams_cuda_code SetLastError(const Status& s);
const char* LastErrorMessage();

}  // namespace trams::cuda
