// Host unit tests of the CUDA kernels' per-element math (the __host__ __device__ functions of
// engine/cuda/*.cuh, compiled here by g++) against the host engine's ops, plus the pure host pieces of
// the backend: the cuBLAS argument mapping and the session arena allocator. These run everywhere.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "engine/cuda/device_arena.h"
#include "engine/cuda/elementwise.cuh"
#include "engine/cuda/gemm_layout.h"
#include "engine/cuda/log_softmax.cuh"
#include "engine/cuda/rel_attention.cuh"
#include "engine/cuda/trams.cuh"
#include "engine/host_ops.h"
#include "engine/stream_state.h"
#include "engine/trams_selector.h"

namespace trams::cuda {
namespace {

std::vector<float> Random(std::mt19937& rng, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

float F32(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// bf16 by the definition: the nearer of the two bf16 neighbours, ties to the even one.
uint16_t ReferenceBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;
  // Past the largest finite bf16 the next step up is 2^128 (rounding as if the exponent were unbounded).
  const double up = (hi & 0x7fffffffu) == 0x7f800000u ? std::copysign(std::ldexp(1.0, 128), f) : F32(hi);
  const double dlo = std::fabs(static_cast<double>(F32(lo)) - f), dhi = std::fabs(up - f);
  if (dlo < dhi || (dlo == dhi && ((lo >> 16) & 1u) == 0)) return static_cast<uint16_t>(lo >> 16);
  return static_cast<uint16_t>(hi >> 16);
}

TEST(HalfConversion, KnownValues) {
  EXPECT_EQ(F32ToF16Bits(1.0f), 0x3c00);
  EXPECT_EQ(F32ToF16Bits(-2.0f), 0xc000);
  EXPECT_EQ(F32ToF16Bits(65504.0f), 0x7bff);
  EXPECT_EQ(F32ToF16Bits(65519.0f), 0x7bff);
  EXPECT_EQ(F32ToF16Bits(65520.0f), 0x7c00);  // the midpoint to 65536 rounds to even: infinity
  EXPECT_EQ(F32ToF16Bits(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(F32ToF16Bits(std::ldexp(1.0f, -25)), 0x0000);         // tie to even (zero)
  EXPECT_EQ(F32ToF16Bits(std::ldexp(3.0f, -25)), 0x0002);         // 1.5 units: tie to even (2)
  EXPECT_EQ(F32ToF16Bits(std::ldexp(1.0f, -14)), 0x0400);         // smallest normal
  EXPECT_EQ(F32ToF16Bits(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie to even
  EXPECT_EQ(F32ToF16Bits(1.0f + std::ldexp(3.0f, -11)), 0x3c02);  // tie to even
  EXPECT_EQ(F32ToF16Bits(-0.0f), 0x8000);
  EXPECT_EQ(F32ToF16Bits(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_TRUE(std::isnan(F16BitsToF32(F32ToF16Bits(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(F16BitsToF32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(F16BitsToF32(0x3555), 0.333251953125f);
  EXPECT_EQ(F32ToBf16Bits(1.0f), 0x3f80);
  EXPECT_EQ(F32ToBf16Bits(1.0f + std::ldexp(1.0f, -8)), 0x3f80);  // tie to even
  EXPECT_TRUE(std::isnan(Bf16BitsToF32(F32ToBf16Bits(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(HalfConversion, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float f = F16BitsToF32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(F32ToF16Bits(f), h) << std::hex << h;
    const float b = Bf16BitsToF32(static_cast<uint16_t>(h));
    if (!std::isnan(b)) {
      ASSERT_EQ(F32ToBf16Bits(b), h) << std::hex << h;
    }
  }
}

TEST(HalfConversion, RandomFloatsRoundToNearestEven) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 2000000; ++i) {
    const float f = F32(bits(rng));
    if (std::isnan(f)) continue;
    ASSERT_EQ(F32ToBf16Bits(f), ReferenceBf16(f)) << f;
#if defined(__FLT16_MAX__)
    const _Float16 h = static_cast<_Float16>(f);  // the compiler's conversion rounds to nearest even
    uint16_t want;
    std::memcpy(&want, &h, sizeof want);
    ASSERT_EQ(F32ToF16Bits(f), want) << f;
#endif
  }
}

TEST(ElementwiseMath, LayerNormMatchesHost) {
  std::mt19937 rng(2);
  for (int d : {1, 7, 32, 410, 2100}) {
    const int rows = 3;
    auto x = Random(rng, rows * d, 2.0f), res = Random(rng, rows * d), bias = Random(rng, d, 0.1f);
    auto g = Random(rng, d, 0.02f), b = Random(rng, d, 0.02f);
    for (float& v : g) v += 1.0f;
    for (bool with_res : {false, true}) {
      std::vector<float> sum(rows * d), want(rows * d);
      for (int i = 0; i < rows * d; ++i) sum[i] = with_res ? (x[i] + bias[i % d]) + res[i] : x[i];
      engine::LayerNormRows(sum.data(), want.data(), rows, d, g.data(), b.data(), 1e-5f);
      LayerNormArgs a;
      a.x = x.data();
      a.residual = with_res ? res.data() : nullptr;
      a.bias = with_res ? bias.data() : nullptr;
      a.d = d;
      for (int r = 0; r < rows; ++r) {
        // The kernel's decomposition: sums in double, then the per-element map.
        double s = 0;
        for (int c = 0; c < d; ++c) s += ResidualSum(a, r, c);
        const double mean = s / d;
        double var = 0;
        for (int c = 0; c < d; ++c) var += (ResidualSum(a, r, c) - mean) * (ResidualSum(a, r, c) - mean);
        const float rstd = LayerNormRstd(var / d, 1e-5f);
        for (int c = 0; c < d; ++c) {
          const float got = LayerNormValue(ResidualSum(a, r, c), static_cast<float>(mean), rstd, g[c], b[c]);
          ASSERT_NEAR(got, want[r * d + c], 1e-5 * (1 + std::fabs(want[r * d + c]))) << "d " << d << " row " << r;
          if (!with_res) {
            ASSERT_EQ(ResidualSum(a, r, c), x[r * d + c]);
          }
        }
      }
    }
  }
}

TEST(ElementwiseMath, BiasReluAndGatherMatchHost) {
  std::mt19937 rng(3);
  auto x = Random(rng, 4 * 9), bias = Random(rng, 9);
  std::vector<float> want = x;
  engine::AddBiasReluRows(want.data(), 4, 9, bias.data());
  for (int i = 0; i < 36; ++i) EXPECT_EQ(BiasRelu(x[i], bias[i % 9]), want[i]);

  // A gather from an f16 table with row indices, scaled: the embedding lookup.
  auto table = Random(rng, 5 * 3);
  std::vector<uint16_t> half(table.size());
  for (size_t i = 0; i < table.size(); ++i) half[i] = F32ToF16Bits(table[i]);
  const int32_t idx[] = {4, 0, 4};
  GatherArgs g;
  g.src = half.data();
  g.src_type = DType::kF16;
  g.src_ld = 3;
  g.src_idx = idx;
  g.scale = 2.0f;
  for (int r = 0; r < 3; ++r) {
    for (int c = 0; c < 3; ++c) {
      EXPECT_NEAR(GatherValue(g, r, c), 2.0f * table[idx[r] * 3 + c], 2e-3 * std::fabs(table[idx[r] * 3 + c]) + 1e-6);
    }
  }
}

TEST(LogSoftmaxMath, MatchesLogSoftmaxRow) {
  std::mt19937 rng(4);
  for (int n : {1, 2, 300, 20003}) {
    auto x = Random(rng, n, 3.0f), bias = Random(rng, n, 0.5f);
    std::vector<float> want(n);
    for (int c = 0; c < n; ++c) want[c] = x[c] + bias[c];
    const double host_lse = engine::LogSoftmaxRow(want.data(), n);
    float mx = -std::numeric_limits<float>::infinity();
    for (int c = 0; c < n; ++c) mx = std::max(mx, LogitAt(x.data(), n, bias.data(), 0, c));
    double sum = 0;
    for (int c = 0; c < n; ++c) sum += SoftmaxTerm(LogitAt(x.data(), n, bias.data(), 0, c), mx);
    const double lse = LogSumExp(mx, sum);
    EXPECT_NEAR(lse, host_lse, 1e-6 * std::fabs(host_lse) + 1e-6);
    for (int c = 0; c < n; ++c) {
      ASSERT_NEAR(LogProb(LogitAt(x.data(), n, bias.data(), 0, c), lse, 0.0f), want[c], 1e-5) << "n " << n;
    }
    // A tail cluster's log-probs carry the cluster's head log-prob (OutputLayer::FullLogProbs).
    EXPECT_EQ(LogProb(x[0], 0.0, -1.5f), static_cast<float>(x[0] - 0.0) + -1.5f);
  }
}

TEST(LogSoftmaxMath, ClusterOfIds) {
  const int64_t ends[] = {0, 20000, 40000, 200000, 267735};
  EXPECT_EQ(ClusterOf(0, ends, 3), 0);
  EXPECT_EQ(ClusterOf(19999, ends, 3), 0);
  EXPECT_EQ(ClusterOf(20000, ends, 3), 1);
  EXPECT_EQ(ClusterOf(199999, ends, 3), 2);
  EXPECT_EQ(ClusterOf(200000, ends, 3), 3);
  EXPECT_EQ(ClusterOf(267734, ends, 3), 3);
  const int64_t plain[] = {0, 204};
  EXPECT_EQ(ClusterOf(203, plain, 0), 0);
  EXPECT_EQ(HeadClusterColumn(ends, 1), 20000);
  EXPECT_EQ(HeadClusterColumn(ends, 3), 20002);
}

TEST(TramsMath, ScoreMatchesTramsScorer) {
  std::mt19937 rng(5);
  for (int dh : {8, 41, 64}) {
    const int heads = 3, d = 2 * dh + 5, rows = 17;
    const auto q = Random(rng, static_cast<size_t>(heads) * dh * d, 0.1f);
    const engine::TramsScorer scorer(q.data(), heads, dh, d);
    std::vector<float> gram(static_cast<size_t>(heads) * dh * dh), u(static_cast<size_t>(heads) * dh);
    for (int h = 0; h < heads; ++h) {
      const float* w = q.data() + static_cast<size_t>(h) * dh * d;
      for (int a = 0; a < dh; ++a) {
        double s = 0;
        for (int c = 0; c < d; ++c) s += w[a * d + c];
        u[h * dh + a] = static_cast<float>(s);
        for (int b = 0; b < dh; ++b) {
          double g = 0;
          for (int c = 0; c < d; ++c) g += static_cast<double>(w[a * d + c]) * w[b * d + c];
          gram[(static_cast<size_t>(h) * dh + a) * dh + b] = static_cast<float>(g);
        }
      }
    }
    const int ld = heads * dh + 3;
    const auto k = Random(rng, static_cast<size_t>(rows) * ld);
    for (engine::SelectionMetric metric : {engine::SelectionMetric::kCode, engine::SelectionMetric::kPaper}) {
      std::vector<float> want(static_cast<size_t>(rows) * heads);
      scorer.Score(k.data(), ld, rows, metric, want.data());
      for (int r = 0; r < rows; ++r) {
        for (int h = 0; h < heads; ++h) {
          const float got = TramsScore(k.data() + r * ld + h * dh, gram.data() + static_cast<size_t>(h) * dh * dh,
                                       u.data() + h * dh, dh, metric == engine::SelectionMetric::kCode ? 0 : 1,
                                       1.0 / std::sqrt(static_cast<double>(d)));
          ASSERT_NEAR(got, want[r * heads + h], 1e-5 * (1 + std::fabs(want[r * heads + h])))
              << "d_head " << dh << " row " << r << " head " << h;
        }
      }
    }
  }
}

// The kernel's rule step by step (find the k-th best by counting better candidates, keep everything above
// its near-tie band, fill the band oldest first) against SelectTopK, with exact and near ties.
TEST(TramsMath, SelectionRuleMatchesSelectTopK) {
  EXPECT_EQ(kTramsTieTolerance, engine::kTieTolerance) << "the device mirrors the host's near-tie tolerance";
  std::mt19937 rng(6);
  for (int trial = 0; trial < 600; ++trial) {
    const int candidates = 1 + static_cast<int>(rng() % 300);
    const int topk = 1 + static_cast<int>(rng() % candidates);
    std::vector<float> scores(candidates);
    for (float& s : scores) {
      s = static_cast<float>(rng() % 7) * (trial % 3 == 0 ? -1.0f : 1.0f);  // exact ties (and negatives)
      if (trial % 2 == 1) s *= 1.0f + static_cast<float>(rng() % 5) * 2e-6f;  // near ties inside the band
    }
    std::vector<int> want;
    engine::SelectTopK(scores.data(), 1, candidates, topk, &want);
    float kth = 0;
    for (int j = 0; j < candidates; ++j) {
      int rank = 0;
      for (int i = 0; i < candidates; ++i) rank += TramsBetter(scores[i], i, scores[j], j) ? 1 : 0;
      if (rank == topk - 1) kth = scores[j];
    }
    const TieBand band = TramsTieBand(kth);
    int above = 0;
    for (float s : scores) above += TramsTieClass(s, band) == 2 ? 1 : 0;
    std::vector<int> got;
    int tied = 0;
    for (int j = 0; j < candidates; ++j) {
      const int cls = TramsTieClass(scores[j], band);
      if (cls == 2 || (cls == 1 && tied < topk - above)) got.push_back(j);
      if (cls == 1) ++tied;
    }
    ASSERT_EQ(got, want) << "candidates " << candidates << " topk " << topk << " trial " << trial;
  }
}

TEST(TramsMath, RingRowsFollowStreamState) {
  engine::ModelConfig c;
  c.n_layer = 1;
  c.d_model = 4;
  c.n_head = 1;
  c.d_head = 4;
  std::mt19937 rng(7);
  for (int m : {1, 5, 24}) {
    engine::StreamState state(c, engine::TramsSettings::Trams(m, 0, m));
    const std::vector<float> hidden(4, 0.0f);
    for (int step = 0; step < 40; ++step) {
      const int n = 1 + static_cast<int>(rng() % (2 * m + 2));
      const int start = state.RingRow(0), size = state.size();
      for (int j = 0; j < size; ++j) ASSERT_EQ(RingRow(start, j, m), state.RingRow(j));
      for (int i = 0; i < n; ++i) ASSERT_EQ(AppendRingRow(start, size, i, m), state.AppendRow(i));
      for (int slot = 0; slot < size; ++slot) ASSERT_EQ(NewestPoolIndex(size, size, slot), slot);
      state.CommitAppend(n, hidden.data(), 4);
    }
  }
}

// Rel-shift by indexing: key j of query i is visible per DESIGN.md, and column RelDistance of the
// distance-ordered position term is the term for that key.
TEST(RelAttentionMath, VisibilityAndDistances) {
  for (int a : {0, 1, 5}) {
    for (int n : {1, 4}) {
      for (int same_length : {0, 1}) {
        for (int window : {0, 3, 6}) {
          for (int i = 0; i < n; ++i) {
            const VisibleRange v = AttnVisible(a, i, same_length, window);
            for (int j = 0; j < a + n; ++j) {
              const int distance = a + i - j;
              const bool visible = distance >= 0 && !(same_length && window > 0 && distance >= window);
              ASSERT_EQ(j >= v.lo && j <= v.hi, visible) << a << " " << n << " " << same_length << " " << window;
              if (visible) {
                ASSERT_EQ(RelDistance(a, i, j), distance);
              }
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(AttnLogit(1.0f, 2.0f, 0.5f), 1.5f);
}

TEST(RelAttentionMath, GatherReadsPoolThenSegmentThenZeros) {
  // One stream, two heads of width 2, a pool of 3 ring rows of which rows 2, 0 are attended.
  const int heads = 2, dh = 2, w = heads * dh;
  std::vector<float> keys(3 * w), values(3 * w), qkv(2 * 3 * w), rw(w, 0.5f), rr(w, -0.5f);
  for (size_t i = 0; i < keys.size(); ++i) {
    keys[i] = 100.0f + i;
    values[i] = 200.0f + i;
  }
  for (size_t i = 0; i < qkv.size(); ++i) qkv[i] = static_cast<float>(i);
  StreamLayerMeta s;
  s.keys = keys.data();
  s.values = values.data();
  s.offset = 0;
  s.n = 2;
  s.a = 2;
  const int32_t att_rows[] = {2, 0, 1, 1};  // head 0: rows 2, 0; head 1: rows 1, 1
  AttnArgs g;
  g.streams = &s;
  g.batch = 1;
  g.n_head = heads;
  g.d_head = dh;
  g.n_max = 3;
  g.klen_max = 5;
  g.a_max = 2;
  g.qkv = qkv.data();
  g.r_w_bias = rw.data();
  g.r_r_bias = rr.data();
  g.att_rows = att_rows;
  EXPECT_EQ(AttnKeyValue(g, 0, 0, 0, 1, false), keys[2 * w + 1]);
  EXPECT_EQ(AttnKeyValue(g, 0, 0, 1, 0, true), values[0]);
  EXPECT_EQ(AttnKeyValue(g, 0, 1, 0, 0, false), keys[1 * w + dh]);
  EXPECT_EQ(AttnKeyValue(g, 0, 1, 2, 1, false), qkv[0 * 3 * w + w + dh + 1]);  // segment token 0, head 1
  EXPECT_EQ(AttnKeyValue(g, 0, 0, 3, 0, true), qkv[1 * 3 * w + 2 * w]);        // segment token 1's value
  EXPECT_EQ(AttnKeyValue(g, 0, 0, 4, 0, false), 0.0f);                         // padding
  EXPECT_EQ(AttnQuery(g, 0, 1, 1, 0, false), qkv[1 * 3 * w + dh] + 0.5f);
  EXPECT_EQ(AttnQuery(g, 0, 1, 1, 0, true), qkv[1 * 3 * w + dh] - 0.5f);
  EXPECT_EQ(AttnQuery(g, 0, 0, 2, 0, false), 0.0f);  // padding query
  EXPECT_EQ(HeadBatchOffset(1, 0, 2, 1, 3, dh), (1 * 3 + 2) * dh);
}

// The column-major call cuBLAS gets computes the row-major product asked for.
TEST(GemmLayout, ColumnMajorCallComputesTheRowMajorProduct) {
  std::mt19937 rng(8);
  for (bool trans_b : {true, false}) {
    const int m = 5, n = 7, k = 3, batch = 2, lda = k + 1, ldb = trans_b ? k + 2 : n + 2, ldc = n + 3;
    const int64_t sa = m * lda + 4, sb = (trans_b ? n : k) * ldb + 1, sc = m * ldc + 2;
    auto a = Random(rng, batch * sa), b = Random(rng, batch * sb);
    std::vector<float> want(batch * sc, 0.0f), got(batch * sc, 0.0f);
    for (int t = 0; t < batch; ++t) {
      for (int i = 0; i < m; ++i) {
        for (int j = 0; j < n; ++j) {
          double s = 0;
          for (int p = 0; p < k; ++p) {
            s += a[t * sa + i * lda + p] * (trans_b ? b[t * sb + j * ldb + p] : b[t * sb + p * ldb + j]);
          }
          want[t * sc + i * ldc + j] = static_cast<float>(s);
        }
      }
    }
    GemmArgs g;
    g.a = a.data();
    g.lda = lda;
    g.stride_a = sa;
    g.b = b.data();
    g.ldb = ldb;
    g.stride_b = sb;
    g.trans_b = trans_b;
    g.c = got.data();
    g.ldc = ldc;
    g.stride_c = sc;
    g.m = m;
    g.n = n;
    g.k = k;
    g.batch = batch;
    const ColumnMajorGemm c = ToColumnMajor(g);
    // Column-major reference: C(i, j) at c[i + j * ldc], op(X)(i, p) = trans ? X(p, i) : X(i, p).
    auto at = [](const float* x, int64_t ld, bool trans, int i, int p) { return trans ? x[p + i * ld] : x[i + p * ld]; };
    for (int t = 0; t < c.batch; ++t) {
      const float* ca = static_cast<const float*>(c.a) + t * c.stride_a;
      const float* cb = static_cast<const float*>(c.b) + t * c.stride_b;
      for (int i = 0; i < c.m; ++i) {
        for (int j = 0; j < c.n; ++j) {
          double s = 0;
          for (int p = 0; p < c.k; ++p) s += at(ca, c.lda, c.transa, i, p) * at(cb, c.ldb, c.transb, p, j);
          c.c[t * c.stride_c + i + j * c.ldc] = static_cast<float>(s);
        }
      }
    }
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5) << "trans_b " << trans_b << " at " << i;
  }
}

TEST(ArenaAllocator, BestFitCoalescesAndRunsOut) {
  ArenaAllocator arena(10 * 256);
  int64_t a, b, c, d;
  ASSERT_TRUE(arena.Allocate(300, &a));  // rounds to 512
  ASSERT_TRUE(arena.Allocate(256, &b));
  ASSERT_TRUE(arena.Allocate(1, &c));
  EXPECT_EQ(arena.used(), 4 * 256);
  EXPECT_EQ(b, a + 512);
  EXPECT_FALSE(arena.Allocate(7 * 256, &d)) << "only 6 blocks are left";
  ASSERT_TRUE(arena.Allocate(6 * 256, &d));
  EXPECT_EQ(arena.free_bytes(), 0);
  EXPECT_FALSE(arena.Allocate(1, &d));
  arena.Release(b);
  arena.Release(a);  // merges with b's block
  EXPECT_EQ(arena.largest_free(), 3 * 256);
  int64_t e;
  ASSERT_TRUE(arena.Allocate(3 * 256, &e));
  EXPECT_EQ(e, a);
  arena.Release(e);
  arena.Release(c);
  arena.Release(d);
  arena.Release(12345);  // unknown: ignored
  EXPECT_EQ(arena.used(), 0);
  EXPECT_EQ(arena.largest_free(), 10 * 256);
  EXPECT_EQ(arena.blocks(), 0);
}

TEST(ArenaAllocator, RandomTrafficKeepsTheBooks) {
  std::mt19937 rng(9);
  ArenaAllocator arena(1 << 20);
  std::vector<std::pair<int64_t, int64_t>> live;  // offset, size
  for (int step = 0; step < 5000; ++step) {
    if (live.empty() || rng() % 3 != 0) {
      const int64_t size = 1 + rng() % 40000;
      int64_t off;
      if (arena.Allocate(size, &off)) {
        for (const auto& [o, s] : live) ASSERT_TRUE(off + size <= o || o + s <= off) << "overlap";
        live.emplace_back(off, arena.Rounded(size));
      }
    } else {
      const size_t i = rng() % live.size();
      arena.Release(live[i].first);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
    }
    int64_t used = 0;
    for (const auto& [o, s] : live) used += s;
    ASSERT_EQ(arena.used(), used);
  }
}

}  // namespace
}  // namespace trams::cuda
