// Warp and block reductions for the kernels (device code only). Blocks are a multiple of 32 threads and
// at most 1024; every thread of the block must call a Block* function (they synchronize).
#pragma once

#if !defined(__CUDACC__)
#error "block_reduce.cuh is for nvcc only"
#endif

#include <math.h>

namespace trams::cuda {

template <class T>
__device__ __forceinline__ T WarpSum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread gets it. `scratch` is __shared__ T[32].
template <class T>
__device__ __forceinline__ T BlockSum(T v, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = WarpSum(v);
  __syncthreads();  // an earlier reduction may still be reading scratch
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return WarpSum(lane < warps ? scratch[lane] : T(0));
}

__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = WarpMax(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return WarpMax(lane < warps ? scratch[lane] : -INFINITY);
}

// Threads per block for rows of `n` elements: a multiple of 32 in [32, max_threads].
inline unsigned ThreadsFor(long long n, unsigned max_threads) {
  unsigned t = 32;
  while (t < max_threads && static_cast<long long>(t) < n) t <<= 1;
  return t;
}

}  // namespace trams::cuda
