#include "engine/host_ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace trams::engine {

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = std::max(1u, std::thread::hardware_concurrency());
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::RunTasks() {
  for (;;) {
    int64_t i;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (next_ >= n_) return;
      i = next_++;
    }
    (*fn_)(i);
  }
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      ++busy_;
    }
    RunTasks();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (--busy_ == 0) done_.notify_all();
    }
  }
}

void ThreadPool::ParallelFor(int64_t n, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  if (workers_.empty() || n == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = &fn;
    n_ = n;
    next_ = 0;
    ++generation_;
  }
  wake_.notify_all();
  RunTasks();
  std::unique_lock<std::mutex> lock(mu_);
  done_.wait(lock, [&] { return busy_ == 0 && next_ >= n_; });
  fn_ = nullptr;
}

// The BLAS computes a single row (m == 1) on a gemv-like path whose rounding differs from the gemm path
// of m >= 2. A session's results should not depend on what it is batched with, so a lone row runs as two.
// (Row results can still vary in the last bits with m on some shapes; TRAMS selection is made robust to
// that in SelectTopK.)
namespace {
template <class Fn>
void AsTwoRows(const float* a, int64_t k, float* c, int64_t n, float beta, Fn&& run) {
  thread_local std::vector<float> a2, c2;
  a2.assign(a, a + k);
  a2.insert(a2.end(), a, a + k);
  c2.assign(c, c + n);
  c2.insert(c2.end(), c, c + n);
  run(a2.data(), static_cast<int>(k), c2.data(), static_cast<int>(n));
  (void)beta;
  std::copy(c2.begin(), c2.begin() + n, c);
}
}  // namespace

void MatMulNT(const float* a, int lda, const float* b, int ldb, float* c, int ldc, int64_t m, int64_t n, int64_t k,
              float beta) {
  if (m == 0 || n == 0) return;
  if (m == 1) {
    return AsTwoRows(a, k, c, n, beta, [&](const float* a2, int lda2, float* c2, int ldc2) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 2, static_cast<int>(n), static_cast<int>(k), 1.0f, a2,
                  lda2, b, ldb, beta, c2, ldc2);
    });
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k),
              1.0f, a, lda, b, ldb, beta, c, ldc);
}

void MatMulNN(const float* a, int lda, const float* b, int ldb, float* c, int ldc, int64_t m, int64_t n, int64_t k) {
  if (m == 0 || n == 0) return;
  if (m == 1) {
    return AsTwoRows(a, k, c, n, 0.0f, [&](const float* a2, int lda2, float* c2, int ldc2) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, static_cast<int>(n), static_cast<int>(k), 1.0f, a2,
                  lda2, b, ldb, 0.0f, c2, ldc2);
    });
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

void LinearNT(ThreadPool* pool, const float* a, int lda, const float* b, int ldb, float* c, int ldc, int64_t m,
              int64_t n, int64_t k, float beta) {
  const int parts = pool == nullptr ? 1 : pool->size();
  // Split by rows only (>= 8 per part): splitting the output columns would change a row's rounding with
  // the split, and so with the batch it sits in.
  if (parts == 1 || m < 8 * parts) {
    MatMulNT(a, lda, b, ldb, c, ldc, m, n, k, beta);
    return;
  }
  const int64_t chunk = (m + parts - 1) / parts;
  pool->ParallelFor(parts, [&](int64_t p) {
    const int64_t begin = p * chunk, end = std::min(m, begin + chunk);
    if (begin < end) MatMulNT(a + begin * lda, lda, b, ldb, c + begin * ldc, ldc, end - begin, n, k, beta);
  });
}

void LayerNormRows(const float* x, float* out, int64_t rows, int d, const float* g, const float* b, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * d;
    float* o = out + r * d;
    double mean = 0;
    for (int i = 0; i < d; ++i) mean += xr[i];
    mean /= d;
    double var = 0;
    for (int i = 0; i < d; ++i) var += (xr[i] - mean) * (xr[i] - mean);
    var /= d;
    const float inv = static_cast<float>(1.0 / std::sqrt(var + eps));
    const float m = static_cast<float>(mean);
    for (int i = 0; i < d; ++i) o[i] = (xr[i] - m) * inv * g[i] + b[i];
  }
}

void AddBiasRows(float* x, int64_t rows, int d, const float* bias) {
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = x + r * d;
    for (int i = 0; i < d; ++i) xr[i] += bias[i];
  }
}

void AddBiasReluRows(float* x, int64_t rows, int d, const float* bias) {
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = x + r * d;
    for (int i = 0; i < d; ++i) xr[i] = std::max(0.0f, xr[i] + bias[i]);
  }
}

double LogSoftmaxRow(float* x, int64_t n) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0;  // float exp (1 ulp), double sum: vocabulary-sized rows would lose digits in float
  for (int64_t i = 0; i < n; ++i) sum += std::exp(x[i] - mx);
  const double lse = mx + std::log(sum);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(x[i] - lse);
  return lse;
}

void SoftmaxPrefix(float* x, int64_t n, int64_t valid) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < valid; ++i) mx = std::max(mx, x[i]);
  float sum = 0;
  for (int64_t i = 0; i < valid; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < valid; ++i) x[i] *= inv;
  for (int64_t i = valid; i < n; ++i) x[i] = 0.0f;
}

}  // namespace trams::engine
