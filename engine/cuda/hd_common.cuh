// Shared by every kernel family: the TRAMS_HD marker and the f16/bf16 conversions.
// Compiles with nvcc (functions become __host__ __device__) and with plain g++ (TRAMS_HD is `inline`), so
// the host tests run exactly this code. Conversions are written out bit by bit (round to nearest even,
// as __float2half_rn / __float2bfloat16_rn) so that host and device agree without cuda_fp16.h.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "engine/cuda/kernel_args.h"

#if defined(__CUDACC__)
#define TRAMS_HD __host__ __device__ __forceinline__
#else
#define TRAMS_HD inline
#endif

namespace trams::cuda {

TRAMS_HD uint32_t FloatBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
#endif
}

TRAMS_HD float BitsToFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
#endif
}

TRAMS_HD uint16_t F32ToBf16Bits(float f) {
  uint32_t u = FloatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

TRAMS_HD float Bf16BitsToF32(uint16_t h) { return BitsToFloat(static_cast<uint32_t>(h) << 16); }

TRAMS_HD uint16_t F32ToF16Bits(float f) {
  const uint32_t x = FloatBits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t mag = x & 0x7fffffffu;
  if (mag > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (mag >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (mag < 0x38800000u) {  // below 2^-14: a subnormal half (or zero)
    const uint32_t e = mag >> 23;
    if (e < 102) return static_cast<uint16_t>(sign);  // below 2^-25: rounds to zero
    const uint32_t m = (mag & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24: units of 2^-24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = (mag - 0x38000000u) >> 13;  // exponent bias 127 -> 15
  const uint32_t rem = mag & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
  return static_cast<uint16_t>(sign | r);
}

TRAMS_HD float F16BitsToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    if (m == 0) return BitsToFloat(sign);
    e = 113;
    while ((m & 0x400u) == 0) {
      m <<= 1;
      --e;
    }
    return BitsToFloat(sign | (e << 23) | ((m & 0x3ffu) << 13));
  }
  if (e == 31) return BitsToFloat(sign | 0x7f800000u | (m << 13));
  return BitsToFloat(sign | ((e + 112) << 23) | (m << 13));
}

// Element i of a weight array stored as `type`, as f32.
TRAMS_HD float LoadF32(const void* p, DType type, int64_t i) {
  if (type == DType::kF32) return static_cast<const float*>(p)[i];
  const uint16_t bits = static_cast<const uint16_t*>(p)[i];
  return type == DType::kF16 ? F16BitsToF32(bits) : Bf16BitsToF32(bits);
}

// Stores f32 `v` as element i of an array of `type`.
TRAMS_HD void StoreAs(void* p, DType type, int64_t i, float v) {
  if (type == DType::kF32) {
    static_cast<float*>(p)[i] = v;
  } else {
    static_cast<uint16_t*>(p)[i] = type == DType::kF16 ? F32ToF16Bits(v) : F32ToBf16Bits(v);
  }
}

// Offset of row `row` of item (h, b) in a [H][B][rows_per][width] buffer.
TRAMS_HD int64_t HeadBatchOffset(int h, int b, int row, int batch, int rows_per, int width) {
  return ((static_cast<int64_t>(h) * batch + b) * rows_per + row) * width;
}

}  // namespace trams::cuda
