// Op parity: every DeviceOps op against the host engine's op (engine/host_ops.h, trams_selector.h) on
// random shapes, on the "emulated" backend (always) and the "cuda" backend (skipped without a device).
// Tolerances: 1e-5 (absolute + relative) for f32; 1e-2 of the output's largest magnitude for f16/bf16
// weights. Failures report the largest difference and the first bad index.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/cuda/hd_common.cuh"
#include "engine/host_ops.h"
#include "engine/trams_selector.h"
#include "tests/cuda/backends.h"

namespace trams::cuda {
namespace {

constexpr double kF32Tolerance = 1e-5;
constexpr double kHalfTolerance = 1e-2;

std::vector<float> Random(std::mt19937& rng, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// |got - want| <= atol + rtol * |want| everywhere; reports the worst and the first bad index.
void ExpectAllClose(const std::vector<float>& got, const std::vector<float>& want, double atol, double rtol,
                    const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double worst = 0;
  int64_t first_bad = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(got[i]) - want[i]);
    const bool bad = !(diff <= atol + rtol * std::fabs(want[i]));  // NaN is bad
    if (bad && first_bad < 0) first_bad = static_cast<int64_t>(i);
    if (std::isnan(diff) || diff > worst) worst = diff;
  }
  EXPECT_LT(first_bad, 0) << what << ": max |diff| " << worst << ", first bad index " << first_bad << " (got "
                          << got[first_bad < 0 ? 0 : first_bad] << ", want " << want[first_bad < 0 ? 0 : first_bad]
                          << ")";
}

// Relative to the output's scale: for reduced-precision weights.
void ExpectNormClose(const std::vector<float>& got, const std::vector<float>& want, double rel, const std::string& what) {
  double scale = 0;
  for (float v : want) scale = std::max(scale, static_cast<double>(std::fabs(v)));
  ExpectAllClose(got, want, rel * std::max(scale, 1e-6), 0.0, what);
}

std::vector<uint16_t> ToHalfBits(const std::vector<float>& v, DType type) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = type == DType::kF16 ? F32ToF16Bits(v[i]) : F32ToBf16Bits(v[i]);
  return out;
}

class DeviceOpsTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string why;
    ops_ = testing::OpsFor(GetParam(), &why);
    if (ops_ == nullptr) TRAMS_SKIP_WITHOUT_GPU(why);
  }
  void TearDown() override {
    if (ops_ == nullptr) return;
    ops_->Synchronize();
    for (void* p : allocs_) ops_->Free(p);
  }

  template <class T>
  T* Alloc(size_t n) {
    void* p = nullptr;
    const Status s = ops_->Malloc(std::max<size_t>(1, n) * sizeof(T), &p);
    EXPECT_TRUE(s.ok()) << s.message();
    allocs_.push_back(p);
    return static_cast<T*>(p);
  }
  template <class T>
  T* Put(const std::vector<T>& host) {
    T* p = Alloc<T>(host.size());
    const Status s = ops_->Upload(p, host.data(), host.size() * sizeof(T));
    EXPECT_TRUE(s.ok()) << s.message();
    return p;
  }
  template <class T>
  std::vector<T> Get(const T* dev, size_t n) {
    std::vector<T> host(n);
    const Status s = ops_->Download(host.data(), dev, n * sizeof(T));
    EXPECT_TRUE(s.ok()) << s.message();
    return host;
  }
  void Ok(const Status& s) { ASSERT_TRUE(s.ok()) << s.message(); }

  std::unique_ptr<DeviceOps> ops_;
  std::vector<void*> allocs_;
};

TEST_P(DeviceOpsTest, GemmF32MatchesHost) {
  std::mt19937 rng(1);
  struct Shape {
    int m, n, k;
  };
  for (const Shape& s : {Shape{1, 1, 1}, Shape{7, 13, 5}, Shape{64, 410, 41}, Shape{33, 257, 130}}) {
    for (bool trans_b : {true, false}) {
      const auto a = Random(rng, static_cast<size_t>(s.m) * s.k), b = Random(rng, static_cast<size_t>(s.n) * s.k);
      std::vector<float> want(static_cast<size_t>(s.m) * s.n);
      if (trans_b) {
        engine::MatMulNT(a.data(), s.k, b.data(), s.k, want.data(), s.n, s.m, s.n, s.k);
      } else {
        engine::MatMulNN(a.data(), s.k, b.data(), s.n, want.data(), s.n, s.m, s.n, s.k);
      }
      GemmArgs g;
      g.a = Put(a);
      g.lda = s.k;
      g.b = Put(b);
      g.ldb = trans_b ? s.k : s.n;
      g.trans_b = trans_b;
      g.c = Alloc<float>(want.size());
      g.ldc = s.n;
      g.m = s.m;
      g.n = s.n;
      g.k = s.k;
      Ok(ops_->Gemm(g));
      ExpectAllClose(Get(g.c, want.size()), want, kF32Tolerance, kF32Tolerance,
                     "gemm " + std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k) +
                         (trans_b ? " NT" : " NN"));
    }
  }
}

TEST_P(DeviceOpsTest, StridedBatchedGemmMatchesHost) {
  std::mt19937 rng(2);
  const int m = 9, n = 11, k = 6, batch = 4, lda = 8, ldb = 40, ldc = 12;
  const int64_t sa = m * lda, sb = 6, sc = m * ldc;  // B items overlap: one matrix, columns per head
  const auto a = Random(rng, batch * sa), b = Random(rng, static_cast<size_t>(n) * ldb);
  std::vector<float> want(batch * sc, 0.0f);
  for (int t = 0; t < batch; ++t) {
    engine::MatMulNT(a.data() + t * sa, lda, b.data() + t * sb, ldb, want.data() + t * sc, ldc, m, n, k);
  }
  GemmArgs g;
  g.a = Put(a);
  g.lda = lda;
  g.stride_a = sa;
  g.b = Put(b);
  g.ldb = ldb;
  g.stride_b = sb;
  g.c = Put(std::vector<float>(want.size(), 0.0f));
  g.ldc = ldc;
  g.stride_c = sc;
  g.m = m;
  g.n = n;
  g.k = k;
  g.batch = batch;
  Ok(ops_->Gemm(g));
  ExpectAllClose(Get(g.c, want.size()), want, kF32Tolerance, kF32Tolerance, "strided batched gemm");
}

TEST_P(DeviceOpsTest, HalfWeightGemmAndConvert) {
  std::mt19937 rng(3);
  const int m = 17, n = 300, k = 410;
  const auto a = Random(rng, static_cast<size_t>(m) * k), w = Random(rng, static_cast<size_t>(n) * k, 0.05f);
  std::vector<float> want(static_cast<size_t>(m) * n);
  engine::MatMulNT(a.data(), k, w.data(), k, want.data(), n, m, n, k);
  for (DType type : {DType::kF16, DType::kBF16}) {
    // The device rounds activations exactly as the host conversion does.
    ConvertArgs cv;
    cv.src = Put(a);
    cv.dst = Alloc<uint16_t>(a.size());
    cv.type = type;
    cv.count = static_cast<int64_t>(a.size());
    Ok(ops_->Convert(cv));
    EXPECT_EQ(Get(static_cast<const uint16_t*>(cv.dst), a.size()), ToHalfBits(a, type)) << DTypeName(type);
    GemmArgs g;
    g.type = type;
    g.a = cv.dst;
    g.lda = k;
    g.b = Put(ToHalfBits(w, type));
    g.ldb = k;
    g.c = Alloc<float>(want.size());
    g.ldc = n;
    g.m = m;
    g.n = n;
    g.k = k;
    Ok(ops_->Gemm(g));
    ExpectNormClose(Get(g.c, want.size()), want, kHalfTolerance, std::string("gemm ") + DTypeName(type));
  }
}

TEST_P(DeviceOpsTest, GatherRowsFromTablesOfEveryDtype) {
  std::mt19937 rng(4);
  const int rows_in = 50, width = 37, ld = 40, count = 23;
  const auto table = Random(rng, static_cast<size_t>(rows_in) * ld);
  std::vector<int32_t> src_idx(count), dst_idx(count);
  for (int r = 0; r < count; ++r) {
    src_idx[r] = static_cast<int32_t>(rng() % rows_in);
    dst_idx[r] = count - 1 - r;
  }
  for (DType type : {DType::kF32, DType::kF16, DType::kBF16}) {
    std::vector<float> want(static_cast<size_t>(count) * width);
    for (int r = 0; r < count; ++r) {
      for (int c = 0; c < width; ++c) {
        const float v = table[src_idx[r] * ld + c];
        const float stored = type == DType::kF32   ? v
                             : type == DType::kF16 ? F16BitsToF32(F32ToF16Bits(v))
                                                   : Bf16BitsToF32(F32ToBf16Bits(v));
        want[dst_idx[r] * width + c] = 3.0f * stored;
      }
    }
    GatherArgs g;
    g.src = type == DType::kF32 ? static_cast<const void*>(Put(table)) : Put(ToHalfBits(table, type));
    g.src_type = type;
    g.src_ld = ld;
    g.src_idx = Put(src_idx);
    g.dst = Alloc<float>(want.size());
    g.dst_ld = width;
    g.dst_idx = Put(dst_idx);
    g.rows = count;
    g.width = width;
    g.scale = 3.0f;
    Ok(ops_->Gather(g));
    ExpectAllClose(Get(g.dst, want.size()), want, 0.0, 0.0, std::string("gather ") + DTypeName(type));
  }
  // Rows by pointer (the output layer's hidden states).
  const auto rows = Random(rng, 3 * width);
  float* dev_rows = Put(rows);
  const std::vector<const float*> ptrs = {dev_rows + 2 * width, dev_rows, dev_rows + 2 * width};
  GatherPtrArgs gp;
  gp.src_rows = Put(ptrs);
  gp.dst = Alloc<float>(3 * width);
  gp.rows = 3;
  gp.width = width;
  Ok(ops_->GatherPtrs(gp));
  std::vector<float> want(rows.begin() + 2 * width, rows.end());
  want.insert(want.end(), rows.begin(), rows.begin() + width);
  want.insert(want.end(), rows.begin() + 2 * width, rows.end());
  ExpectAllClose(Get(gp.dst, want.size()), want, 0.0, 0.0, "gather by pointer");
}

TEST_P(DeviceOpsTest, ResidualLayerNormMatchesHost) {
  std::mt19937 rng(5);
  for (int d : {32, 410, 2100}) {
    const int rows = 5;
    const auto x = Random(rng, rows * d, 3.0f), res = Random(rng, rows * d), bias = Random(rng, d, 0.1f);
    auto g = Random(rng, d, 0.1f);
    for (float& v : g) v += 1.0f;
    const auto b = Random(rng, d, 0.1f);
    std::vector<float> sum(rows * d), want(rows * d);
    for (int i = 0; i < rows * d; ++i) sum[i] = (x[i] + bias[i % d]) + res[i];
    engine::LayerNormRows(sum.data(), want.data(), rows, d, g.data(), b.data(), 1e-5f);
    LayerNormArgs a;
    a.x = Put(x);
    a.residual = Put(res);
    a.bias = Put(bias);
    a.gamma = Put(g);
    a.beta = Put(b);
    a.out = Alloc<float>(want.size());
    a.rows = rows;
    a.d = d;
    a.eps = 1e-5f;
    Ok(ops_->LayerNorm(a));
    ExpectAllClose(Get(a.out, want.size()), want, kF32Tolerance, kF32Tolerance, "layernorm d " + std::to_string(d));
    a.gamma = nullptr;  // pre-LN residual: the sum only
    Ok(ops_->LayerNorm(a));
    ExpectAllClose(Get(a.out, sum.size()), sum, 0.0, 0.0, "residual sum d " + std::to_string(d));
  }
}

TEST_P(DeviceOpsTest, BiasReluMatchesHost) {
  std::mt19937 rng(6);
  const int rows = 7, d = 2100;
  const auto x = Random(rng, rows * d), bias = Random(rng, d);
  std::vector<float> want = x;
  engine::AddBiasReluRows(want.data(), rows, d, bias.data());
  BiasReluArgs a;
  a.x = Put(x);
  a.bias = Put(bias);
  a.rows = rows;
  a.d = d;
  Ok(ops_->BiasRelu(a));
  ExpectAllClose(Get(a.x, want.size()), want, 0.0, 0.0, "bias relu");
}

TEST_P(DeviceOpsTest, LogSoftmaxRowsMatchHost) {
  std::mt19937 rng(7);
  for (int n : {1, 5, 300, 20003}) {
    const int rows = 3, n_out = std::max(1, n - 2), out_ld = n + 4;
    const auto x = Random(rng, rows * n, 4.0f), bias = Random(rng, n), add = Random(rng, rows * 2);
    std::vector<float> want(static_cast<size_t>(rows) * out_ld, 0.0f);
    for (int r = 0; r < rows; ++r) {
      std::vector<float> row(n);
      for (int c = 0; c < n; ++c) row[c] = x[r * n + c] + bias[c];
      engine::LogSoftmaxRow(row.data(), n);
      for (int c = 0; c < n_out; ++c) want[r * out_ld + c] = row[c] + add[r * 2 + 1];
    }
    LogSoftmaxArgs a;
    a.x = Put(x);
    a.ld = n;
    a.bias = Put(bias);
    a.rows = rows;
    a.n = n;
    a.n_out = n_out;
    a.add = Put(add) + 1;
    a.add_ld = 2;
    a.out = Put(std::vector<float>(want.size(), 0.0f));
    a.out_ld = out_ld;
    Ok(ops_->LogSoftmax(a));
    ExpectAllClose(Get(a.out, want.size()), want, kF32Tolerance, kF32Tolerance, "log-softmax n " + std::to_string(n));
    // In place, without bias: the head.
    std::vector<float> inplace(x.begin(), x.end()), want2 = x;
    for (int r = 0; r < rows; ++r) engine::LogSoftmaxRow(want2.data() + r * n, n);
    LogSoftmaxArgs b;
    b.x = Put(inplace);
    b.ld = n;
    b.rows = rows;
    b.n = n;
    b.n_out = n;
    b.out = const_cast<float*>(b.x);
    b.out_ld = n;
    Ok(ops_->LogSoftmax(b));
    ExpectAllClose(Get(b.out, want2.size()), want2, kF32Tolerance, kF32Tolerance, "in place n " + std::to_string(n));
  }
}

TEST_P(DeviceOpsTest, TargetsPickAndNormalize) {
  std::mt19937 rng(8);
  const int rows = 4, n = 1000;
  const auto x = Random(rng, rows * n, 2.0f), bias = Random(rng, n), head = Random(rng, rows * 3);
  std::vector<TargetItem> items;
  std::vector<float> want(6, 0.0f);
  for (int t = 0; t < 6; ++t) {
    TargetItem it;
    it.logit_row = t % rows;
    it.col = static_cast<int32_t>(rng() % n);
    it.out = 5 - t;
    it.add_row = (t + 1) % rows;
    items.push_back(it);
    std::vector<float> row(n);
    for (int c = 0; c < n; ++c) row[c] = x[it.logit_row * n + c] + bias[c];
    engine::LogSoftmaxRow(row.data(), n);
    want[it.out] = head[it.add_row * 3 + 2] + row[it.col];
  }
  TargetArgs a;
  a.x = Put(x);
  a.ld = n;
  a.bias = Put(bias);
  a.n = n;
  a.normalize = 1;
  a.items = Put(items);
  a.n_items = 6;
  a.add = Put(head) + 2;
  a.add_ld = 3;
  a.out = Alloc<float>(6);
  Ok(ops_->Targets(a));
  ExpectAllClose(Get(a.out, 6), want, kF32Tolerance, kF32Tolerance, "tail targets");
  a.normalize = 0;
  a.bias = nullptr;
  a.add = nullptr;
  Ok(ops_->Targets(a));
  for (int t = 0; t < 6; ++t) want[items[t].out] = x[items[t].logit_row * n + items[t].col];
  ExpectAllClose(Get(a.out, 6), want, 0.0, 0.0, "head targets");
}

TEST_P(DeviceOpsTest, PoolAppendScoresLikeTramsScorer) {
  std::mt19937 rng(9);
  for (int dh : {8, 41, 64}) {
    const int heads = 3, w = heads * dh, d = 96, m = 7, rows = 5;
    const auto q = Random(rng, static_cast<size_t>(w) * d, 0.1f);
    const engine::TramsScorer scorer(q.data(), heads, dh, d);
    std::vector<float> gram(static_cast<size_t>(heads) * dh * dh), u(static_cast<size_t>(heads) * dh);
    for (int h = 0; h < heads; ++h) {
      const float* wq = q.data() + static_cast<size_t>(h) * dh * d;
      for (int a = 0; a < dh; ++a) {
        double s = 0;
        for (int c = 0; c < d; ++c) s += wq[a * d + c];
        u[h * dh + a] = static_cast<float>(s);
        for (int b = 0; b < dh; ++b) {
          double g = 0;
          for (int c = 0; c < d; ++c) g += static_cast<double>(wq[a * d + c]) * wq[b * d + c];
          gram[(static_cast<size_t>(h) * dh + a) * dh + b] = static_cast<float>(g);
        }
      }
    }
    const auto qkv = Random(rng, static_cast<size_t>(rows) * 3 * w);
    for (int metric : {0, 1}) {
      StreamLayerMeta meta;
      meta.keys = Put(std::vector<float>(static_cast<size_t>(m) * w, 0.0f));
      meta.values = Put(std::vector<float>(static_cast<size_t>(m) * w, 0.0f));
      meta.scores = Put(std::vector<float>(static_cast<size_t>(m) * heads, 0.0f));
      meta.metric = metric;
      std::vector<AppendItem> items;
      for (int r = 0; r < rows; ++r) {
        AppendItem it;
        it.src_row = r;
        it.dst_row = (r * 3 + 2) % m;
        items.push_back(it);
      }
      AppendArgs a;
      a.streams = Put(std::vector<StreamLayerMeta>{meta});
      a.items = Put(items);
      a.n_items = rows;
      a.qkv = Put(qkv);
      a.n_head = heads;
      a.d_head = dh;
      a.gram = Put(gram);
      a.row_sum = Put(u);
      a.inv_sqrt_d_model = 1.0 / std::sqrt(static_cast<double>(d));
      Ok(ops_->PoolAppend(a));
      std::vector<float> scores(static_cast<size_t>(rows) * heads);
      scorer.Score(qkv.data() + w, 3 * w, rows, metric == 0 ? engine::SelectionMetric::kCode : engine::SelectionMetric::kPaper,
                   scores.data());
      std::vector<float> want_scores(static_cast<size_t>(m) * heads, 0.0f), want_keys(static_cast<size_t>(m) * w, 0.0f);
      std::vector<float> want_values = want_keys;
      for (const AppendItem& it : items) {
        std::copy_n(scores.begin() + it.src_row * heads, heads, want_scores.begin() + it.dst_row * heads);
        std::copy_n(qkv.begin() + it.src_row * 3 * w + w, w, want_keys.begin() + it.dst_row * w);
        std::copy_n(qkv.begin() + it.src_row * 3 * w + 2 * w, w, want_values.begin() + it.dst_row * w);
      }
      const std::string what = "d_head " + std::to_string(dh) + " metric " + std::to_string(metric);
      ExpectAllClose(Get(meta.scores, want_scores.size()), want_scores, kF32Tolerance, kF32Tolerance, "scores " + what);
      ExpectAllClose(Get(meta.keys, want_keys.size()), want_keys, 0.0, 0.0, "keys " + what);
      ExpectAllClose(Get(meta.values, want_values.size()), want_values, 0.0, 0.0, "values " + what);
    }
  }
}

TEST_P(DeviceOpsTest, TramsSelectMatchesSelectTopK) {
  std::mt19937 rng(10);
  const int heads = 3;
  struct Pool {
    int mem_len, size, start, topk, remain;
    bool selects;
  };
  const std::vector<Pool> pools = {{400, 400, 137, 50, 150, true}, {24, 24, 5, 4, 8, true},  {24, 13, 0, 4, 8, true},
                                   {600, 600, 599, 300, 50, true}, {10, 7, 9, 0, 7, false}, {1, 1, 0, 0, 1, false}};
  const int batch = static_cast<int>(pools.size());
  int a_max = 0, topk_max = 1;
  std::vector<StreamLayerMeta> metas(batch);
  std::vector<std::vector<float>> host_scores(batch);
  for (int b = 0; b < batch; ++b) {
    const Pool& p = pools[b];
    StreamLayerMeta& m = metas[b];
    host_scores[b].resize(static_cast<size_t>(p.mem_len) * heads);
    for (float& s : host_scores[b]) {
      s = static_cast<float>(rng() % 50) * 0.25f;              // exact ties
      if (b % 2 == 0) s *= 1.0f + static_cast<float>(rng() % 4) * 3e-6f;  // near ties (SelectTopK's band)
    }
    m.scores = Put(host_scores[b]);
    m.start = p.start;
    m.size = p.size;
    m.mem_len = p.mem_len;
    m.topk = p.topk;
    m.remain = p.remain;
    m.a = std::min(p.size, p.topk + p.remain);
    m.selects = p.selects && p.size > p.topk + p.remain ? 1 : 0;
    a_max = std::max(a_max, m.a);
    topk_max = std::max(topk_max, p.topk);
  }
  SelectArgs a;
  a.streams = Put(metas);
  a.batch = batch;
  a.n_head = heads;
  a.a_max = a_max;
  a.topk_max = topk_max;
  a.att_rows = Alloc<int32_t>(static_cast<size_t>(batch) * heads * a_max);
  a.selected = Alloc<int32_t>(static_cast<size_t>(batch) * heads * topk_max);
  a.selected_scores = Alloc<float>(static_cast<size_t>(batch) * heads * topk_max);
  a.counts = Alloc<int32_t>(static_cast<size_t>(batch) * heads);
  Ok(ops_->TramsSelect(a));
  const auto rows = Get(a.att_rows, static_cast<size_t>(batch) * heads * a_max);
  const auto selected = Get(a.selected, static_cast<size_t>(batch) * heads * topk_max);
  const auto counts = Get(a.counts, static_cast<size_t>(batch) * heads);
  const auto selected_scores = Get(a.selected_scores, static_cast<size_t>(batch) * heads * topk_max);
  for (int b = 0; b < batch; ++b) {
    const Pool& p = pools[b];
    const StreamLayerMeta& m = metas[b];
    for (int h = 0; h < heads; ++h) {
      const int bh = b * heads + h;
      std::vector<int> want_pool;  // pool indices attended, as AttendOne picks them
      std::vector<int> want_sel;
      if (m.selects) {
        const int candidates = p.size - p.remain;
        std::vector<float> cand(candidates);
        for (int j = 0; j < candidates; ++j) cand[j] = host_scores[b][((p.start + j) % p.mem_len) * heads + h];
        engine::SelectTopK(cand.data(), 1, candidates, p.topk, &want_sel);
        want_pool = want_sel;
        for (int j = candidates; j < p.size; ++j) want_pool.push_back(j);
      } else {
        for (int j = p.size - m.a; j < p.size; ++j) want_pool.push_back(j);
      }
      ASSERT_EQ(counts[bh], static_cast<int>(want_sel.size())) << "stream " << b << " head " << h;
      for (size_t k = 0; k < want_sel.size(); ++k) {
        ASSERT_EQ(selected[bh * topk_max + k], want_sel[k]) << b << " " << h;
        const int ring = (p.start + want_sel[k]) % p.mem_len;
        ASSERT_EQ(selected_scores[bh * topk_max + k], host_scores[b][ring * heads + h]) << b << " " << h;
      }
      for (int slot = 0; slot < m.a; ++slot) {
        ASSERT_EQ(rows[bh * a_max + slot], (p.start + want_pool[slot]) % p.mem_len) << b << " " << h << " " << slot;
      }
    }
  }
}

// Relative attention as the forward runs it (gather, content and position GEMMs, masked softmax with
// rel-shift by indexing, probabilities times values, scatter) against a direct per-(stream, head) loop.
TEST_P(DeviceOpsTest, RelativeAttentionMatchesDirectLoops) {
  std::mt19937 rng(11);
  for (int dh : {8, 41}) {
    for (int same_length : {0, 1}) {
      const int heads = 2, w = heads * dh, mem = 30;
      struct S {
        int n, a, window;
      };
      const std::vector<S> ss = {{5, 12, 12}, {9, 0, 6}, {1, 30, 40}};
      const int batch = static_cast<int>(ss.size());
      int rows = 0, n_max = 0, a_max = 0, klen_max = 0;
      std::vector<StreamLayerMeta> metas(batch);
      std::vector<std::vector<float>> keys(batch), values(batch);
      for (int b = 0; b < batch; ++b) {
        keys[b] = Random(rng, static_cast<size_t>(mem) * w);
        values[b] = Random(rng, static_cast<size_t>(mem) * w);
        metas[b].keys = Put(keys[b]);
        metas[b].values = Put(values[b]);
        metas[b].offset = rows;
        metas[b].n = ss[b].n;
        metas[b].a = ss[b].a;
        metas[b].window = ss[b].window;
        rows += ss[b].n;
        n_max = std::max(n_max, ss[b].n);
        a_max = std::max(a_max, ss[b].a);
        klen_max = std::max(klen_max, ss[b].a + ss[b].n);
      }
      std::vector<int32_t> att_rows(static_cast<size_t>(batch) * heads * a_max, 0);
      for (int b = 0; b < batch; ++b) {
        for (int h = 0; h < heads; ++h) {
          std::vector<int32_t> perm(mem);
          for (int j = 0; j < mem; ++j) perm[j] = j;
          std::shuffle(perm.begin(), perm.end(), rng);
          std::copy_n(perm.begin(), ss[b].a, att_rows.begin() + (b * heads + h) * a_max);
        }
      }
      const auto qkv = Random(rng, static_cast<size_t>(rows) * 3 * w);
      const auto rw = Random(rng, w, 0.1f), rr = Random(rng, w, 0.1f);
      const auto rel = Random(rng, static_cast<size_t>(klen_max) * w);  // r(distance), [klen, W]
      const float scale = 1.0f / std::sqrt(static_cast<float>(dh));

      std::vector<float> want(static_cast<size_t>(rows) * w, 0.0f);
      for (int b = 0; b < batch; ++b) {
        const S& s = ss[b];
        for (int h = 0; h < heads; ++h) {
          auto key = [&](int j, bool value) -> const float* {
            if (j < s.a) {
              const int ring = att_rows[(b * heads + h) * a_max + j];
              return (value ? values[b] : keys[b]).data() + ring * w + h * dh;
            }
            return qkv.data() + (metas[b].offset + j - s.a) * 3 * w + (value ? 2 : 1) * w + h * dh;
          };
          for (int i = 0; i < s.n; ++i) {
            const float* q = qkv.data() + (metas[b].offset + i) * 3 * w + h * dh;
            std::vector<float> logit(s.a + s.n, -std::numeric_limits<float>::infinity());
            for (int j = 0; j < s.a + s.n; ++j) {
              const int dist = s.a + i - j;
              if (dist < 0 || (same_length && s.window > 0 && dist >= s.window)) continue;
              double content = 0, position = 0;
              for (int c = 0; c < dh; ++c) {
                content += (q[c] + rw[h * dh + c]) * key(j, false)[c];
                position += (q[c] + rr[h * dh + c]) * rel[dist * w + h * dh + c];
              }
              logit[j] = static_cast<float>((content + position) * scale);
            }
            engine::SoftmaxPrefix(logit.data(), static_cast<int64_t>(logit.size()), static_cast<int64_t>(logit.size()));
            for (int c = 0; c < dh; ++c) {
              double o = 0;
              for (int j = 0; j < s.a + s.n; ++j) o += logit[j] * key(j, true)[c];
              want[(metas[b].offset + i) * w + h * dh + c] = static_cast<float>(o);
            }
          }
        }
      }

      AttnArgs at;
      at.streams = Put(metas);
      at.batch = batch;
      at.n_head = heads;
      at.d_head = dh;
      at.n_max = n_max;
      at.klen_max = klen_max;
      at.a_max = a_max;
      at.qkv = Put(qkv);
      at.r_w_bias = Put(rw);
      at.r_r_bias = Put(rr);
      at.att_rows = Put(att_rows);
      const size_t hb = static_cast<size_t>(heads) * batch;
      at.q_w = Alloc<float>(hb * n_max * dh);
      at.q_r = Alloc<float>(hb * n_max * dh);
      at.k = Alloc<float>(hb * klen_max * dh);
      at.v = Alloc<float>(hb * klen_max * dh);
      at.ac = Alloc<float>(hb * n_max * klen_max);
      float* bd = Alloc<float>(hb * n_max * klen_max);
      at.bd = bd;
      float* o = Alloc<float>(hb * n_max * dh);
      at.o = o;
      at.attn_vec = Alloc<float>(want.size());
      at.scale = scale;
      at.same_length = same_length;
      Ok(ops_->AttnGather(at));
      GemmArgs g;  // content: per (head, stream)
      g.a = at.q_w;
      g.lda = dh;
      g.stride_a = static_cast<int64_t>(n_max) * dh;
      g.b = at.k;
      g.ldb = dh;
      g.stride_b = static_cast<int64_t>(klen_max) * dh;
      g.c = at.ac;
      g.ldc = klen_max;
      g.stride_c = static_cast<int64_t>(n_max) * klen_max;
      g.m = n_max;
      g.n = klen_max;
      g.k = dh;
      g.batch = static_cast<int>(hb);
      Ok(ops_->Gemm(g));
      GemmArgs gp;  // position: per head over every stream's queries, against r by distance
      gp.a = at.q_r;
      gp.lda = dh;
      gp.stride_a = static_cast<int64_t>(batch) * n_max * dh;
      gp.b = Put(rel);
      gp.ldb = w;
      gp.stride_b = dh;
      gp.c = bd;
      gp.ldc = klen_max;
      gp.stride_c = static_cast<int64_t>(batch) * n_max * klen_max;
      gp.m = batch * n_max;
      gp.n = klen_max;
      gp.k = dh;
      gp.batch = heads;
      Ok(ops_->Gemm(gp));
      Ok(ops_->AttnSoftmax(at));
      GemmArgs gv;
      gv.a = at.ac;
      gv.lda = klen_max;
      gv.stride_a = static_cast<int64_t>(n_max) * klen_max;
      gv.b = at.v;
      gv.ldb = dh;
      gv.stride_b = static_cast<int64_t>(klen_max) * dh;
      gv.trans_b = false;
      gv.c = o;
      gv.ldc = dh;
      gv.stride_c = static_cast<int64_t>(n_max) * dh;
      gv.m = n_max;
      gv.n = dh;
      gv.k = klen_max;
      gv.batch = static_cast<int>(hb);
      Ok(ops_->Gemm(gv));
      Ok(ops_->AttnScatter(at));
      ExpectAllClose(Get(at.attn_vec, want.size()), want, kF32Tolerance, kF32Tolerance,
                     "attention d_head " + std::to_string(dh) + " same_length " + std::to_string(same_length));
    }
  }
}

TEST_P(DeviceOpsTest, CopiesAndTimer) {
  std::mt19937 rng(12);
  const auto src = Random(rng, 6 * 10);
  float* s = Put(src);
  float* d = Put(std::vector<float>(6 * 4, -1.0f));
  Ok(ops_->Copy2D(d, 4 * sizeof(float), s + 1, 10 * sizeof(float), 3 * sizeof(float), 6));
  Ok(ops_->StartTimer());
  Ok(ops_->Zero(s, sizeof(float)));
  Ok(ops_->StopTimer());
  float ms = -1;
  Ok(ops_->ElapsedMs(&ms));
  EXPECT_GE(ms, 0.0f);
  const auto got = Get(d, 24);
  for (int r = 0; r < 6; ++r) {
    for (int c = 0; c < 4; ++c) EXPECT_EQ(got[r * 4 + c], c < 3 ? src[r * 10 + 1 + c] : -1.0f);
  }
  EXPECT_EQ(Get(s, 1)[0], 0.0f);
  DeviceDescription desc;
  Ok(ops_->Describe(&desc));
  EXPECT_FALSE(desc.name.empty());
  void* huge = nullptr;
  const Status oom = ops_->Malloc(size_t{1} << 60, &huge);
  EXPECT_EQ(oom.code(), TRAMS_CUDA_RESOURCE_EXHAUSTED) << oom.message();
  EXPECT_EQ(huge, nullptr);
  Ok(ops_->Synchronize());  // a failed allocation leaves the device usable
}

INSTANTIATE_TEST_SUITE_P(Backends, DeviceOpsTest, ::testing::ValuesIn(testing::BackendNames()),
                         [](const auto& param_info) { return param_info.param; });

}  // namespace
}  // namespace trams::cuda
