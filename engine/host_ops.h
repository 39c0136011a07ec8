// Host (CPU) kernels: BLIS sgemm (serial, thread-safe) for the matrix products, plain loops for the rest.
// A small thread pool splits work across cores (the serial BLAS runs one core per call).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace trams::engine {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);  // threads <= 0: one per hardware core
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  // Calls fn(i) for i in [0, n), spread over the pool; the caller works too. Not reentrant.
  void ParallelFor(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  void WorkerLoop();
  void RunTasks();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t next_ = 0;
  int busy_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

// C[M, N] = A[M, K] * B[N, K]^T + beta * C  (B laid out like a PyTorch Linear weight).
// Split over the pool by rows of A when M is large enough to pay for it.
void LinearNT(ThreadPool* pool, const float* a, int lda, const float* b, int ldb, float* c, int ldc, int64_t m,
              int64_t n, int64_t k, float beta = 0.0f);
// C[M, N] = A[M, K] * B[K, N] (single thread).
void MatMulNN(const float* a, int lda, const float* b, int ldb, float* c, int ldc, int64_t m, int64_t n, int64_t k);
// Same as LinearNT on the calling thread only.
void MatMulNT(const float* a, int lda, const float* b, int ldb, float* c, int ldc, int64_t m, int64_t n, int64_t k,
              float beta = 0.0f);

// out = LayerNorm(x) * g + b, per row of width d (PyTorch semantics: biased variance).
void LayerNormRows(const float* x, float* out, int64_t rows, int d, const float* g, const float* b, float eps);
void AddBiasRows(float* x, int64_t rows, int d, const float* bias);
void AddBiasReluRows(float* x, int64_t rows, int d, const float* bias);
// In-place log-softmax of one row; returns logsumexp.
double LogSoftmaxRow(float* x, int64_t n);
// In-place softmax of one row over its first `valid` entries; entries past `valid` become 0.
void SoftmaxPrefix(float* x, int64_t n, int64_t valid);

}  // namespace trams::engine
