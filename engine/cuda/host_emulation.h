// EmulatedOps: the DeviceOps of the CUDA backend run on the host, one loop per kernel, with the same
// per-element math (the *.cuh headers) and the same argument blocks. "Device" memory is host memory.
// It exists so that the backend's orchestration (context.cc) and the op-parity tests run on machines
// without a GPU; it is a reference, not a fast path. Not thread-safe (one context uses it at a time).
#pragma once

#include <memory>

#include "engine/cuda/device_ops.h"

namespace trams::cuda {

std::unique_ptr<DeviceOps> MakeEmulatedOps();

// The C ABI served in-process by EmulatedOps (backend "emulated"; device_count() reports 1 device).
const trams_cuda_api* EmulatedApi();

// Tests only: the first matrix product after `after_pool_appends` more pool appends (of any emulated
// context in the process) fails as a device error would (TRAMS_CUDA_INTERNAL), once (negative: disarm). A forward then stops
// half way, with some pool rows already overwritten: what the callers do next is under test.
void InjectEmulatedFault(int after_pool_appends);

}  // namespace trams::cuda
