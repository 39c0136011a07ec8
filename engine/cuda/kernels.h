// Launchers of the CUDA kernels (*.cu), one per DeviceOps math op. Each checks its launch configuration,
// launches on `stream` and returns the launch error (cudaGetLastError); cuda_ops.cc turns codes into
// Status with the op's name. Host-side header for cuda_ops.cc; needs the CUDA runtime headers.
#pragma once

#include <cuda_runtime_api.h>

#include "engine/cuda/kernel_args.h"

namespace trams::cuda {

// elementwise.cu
cudaError_t LaunchConvert(const ConvertArgs& a, cudaStream_t stream);
cudaError_t LaunchGather(const GatherArgs& a, cudaStream_t stream);
cudaError_t LaunchGatherPtrs(const GatherPtrArgs& a, cudaStream_t stream);
cudaError_t LaunchLayerNorm(const LayerNormArgs& a, cudaStream_t stream);
cudaError_t LaunchBiasRelu(const BiasReluArgs& a, cudaStream_t stream);
// rel_attention.cu
cudaError_t LaunchAttnGather(const AttnArgs& a, cudaStream_t stream);
cudaError_t LaunchAttnSoftmax(const AttnArgs& a, cudaStream_t stream);
cudaError_t LaunchAttnScatter(const AttnArgs& a, cudaStream_t stream);
// trams.cu
cudaError_t LaunchTramsSelect(const SelectArgs& a, cudaStream_t stream);
cudaError_t LaunchPoolAppend(const AppendArgs& a, cudaStream_t stream);
// log_softmax.cu
cudaError_t LaunchLogSoftmax(const LogSoftmaxArgs& a, cudaStream_t stream);
cudaError_t LaunchTargets(const TargetArgs& a, cudaStream_t stream);

}  // namespace trams::cuda
