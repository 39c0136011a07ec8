// Row-major GemmArgs (kernel_args.h) as the column-major call cuBLAS takes. Plain C++ so that the host
// tests check the mapping against a column-major reference; cuda_ops.cc passes the result to
// cublasGemmStridedBatchedEx.
//
// Row-major C[m, n] = A[m, k] op(B) is column-major C^T[n, m] = op(B)^T A^T: the operands swap places,
// A (row-major, ld lda) read column-major is A^T untransposed, and B stored [n, k] (trans_b) read
// column-major is B^T, so it goes in transposed.
#pragma once

#include <cstdint>

#include "engine/cuda/kernel_args.h"

namespace trams::cuda {

struct ColumnMajorGemm {
  bool transa = false, transb = false;
  int m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int64_t lda = 0, stride_a = 0;
  const void* b = nullptr;
  int64_t ldb = 0, stride_b = 0;
  float* c = nullptr;
  int64_t ldc = 0, stride_c = 0;
  int batch = 1;
};

inline ColumnMajorGemm ToColumnMajor(const GemmArgs& g) {
  ColumnMajorGemm r;
  r.transa = g.trans_b;
  r.transb = false;
  r.m = g.n;
  r.n = g.m;
  r.k = g.k;
  r.a = g.b;
  r.lda = g.ldb;
  r.stride_a = g.stride_b;
  r.b = g.a;
  r.ldb = g.lda;
  r.stride_b = g.stride_a;
  r.c = g.c;
  r.ldc = g.ldc;
  r.stride_c = g.stride_c;
  r.batch = g.batch;
  return r;
}

}  // namespace trams::cuda
