// TRAMS selection with non-finite scores (a broken weight, an overflow): NaN ranks as -inf, +inf highest,
// ties go to the older token, exactly min(topk, candidates) tokens are kept, reported in pool order, and the
// host (SelectTopK) and the device rule (the trams.cuh math, run here through the emulated DeviceOps) agree.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/cuda/device_ops.h"
#include "engine/cuda/host_emulation.h"
#include "engine/cuda/trams.cuh"
#include "engine/trams_selector.h"

namespace trams::engine {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kMax = std::numeric_limits<float>::max();

std::vector<int> Host(const std::vector<float>& scores, int topk) {
  std::vector<int> out;
  SelectTopK(scores.data(), 1, static_cast<int>(scores.size()), topk, &out);
  return out;
}

// What an emulated TramsSelect reports for one stream whose older pool part holds `cand` (per head) and
// whose newest `remain` tokens follow; the pool sits in a ring that starts at `start`.
struct DeviceResult {
  std::vector<std::vector<int>> selected;        // per head
  std::vector<std::vector<float>> scores;        // per head, the selected tokens' scores
  std::vector<std::vector<int32_t>> rows;        // per head, the ring rows attended
};

DeviceResult Emulated(const std::vector<std::vector<float>>& cand_per_head, int topk, int remain, int start) {
  const int heads = static_cast<int>(cand_per_head.size());
  const int candidates = static_cast<int>(cand_per_head[0].size());
  const int size = candidates + remain, mem_len = size + 3;  // a ring with a few unused rows
  std::vector<float> ring(static_cast<size_t>(mem_len) * heads, 123.0f);
  for (int h = 0; h < heads; ++h) {
    for (int j = 0; j < candidates; ++j) ring[((start + j) % mem_len) * heads + h] = cand_per_head[h][j];
    for (int r = 0; r < remain; ++r) ring[((start + candidates + r) % mem_len) * heads + h] = -7.0f;
  }
  cuda::StreamLayerMeta meta;
  meta.scores = ring.data();  // emulated "device" memory is host memory
  meta.start = start;
  meta.size = size;
  meta.mem_len = mem_len;
  meta.topk = topk;
  meta.remain = remain;
  meta.a = std::min(size, topk + remain);
  meta.selects = size > topk + remain ? 1 : 0;
  const int a_max = meta.a, topk_max = std::max(1, topk);
  std::vector<int32_t> att_rows(static_cast<size_t>(heads) * a_max, -1);
  std::vector<int32_t> selected(static_cast<size_t>(heads) * topk_max, -1);
  std::vector<float> selected_scores(static_cast<size_t>(heads) * topk_max, 0.0f);
  std::vector<int32_t> counts(heads, -1);
  cuda::SelectArgs g;
  g.streams = &meta;
  g.batch = 1;
  g.n_head = heads;
  g.a_max = a_max;
  g.topk_max = topk_max;
  g.att_rows = att_rows.data();
  g.selected = selected.data();
  g.selected_scores = selected_scores.data();
  g.counts = counts.data();
  std::unique_ptr<cuda::DeviceOps> ops = cuda::MakeEmulatedOps();
  const cuda::Status st = ops->TramsSelect(g);
  EXPECT_TRUE(st.ok()) << st.message();
  DeviceResult r;
  for (int h = 0; h < heads; ++h) {
    const int n = counts[h];
    EXPECT_GE(n, 0);
    EXPECT_LE(n, topk_max);
    const int kept = std::clamp(n, 0, topk_max);
    r.selected.emplace_back(selected.begin() + h * topk_max, selected.begin() + h * topk_max + kept);
    r.scores.emplace_back(selected_scores.begin() + h * topk_max, selected_scores.begin() + h * topk_max + kept);
    r.rows.emplace_back(att_rows.begin() + h * a_max, att_rows.begin() + (h + 1) * a_max);
  }
  return r;
}

// The required rule written out directly: rank by (NaN -> -inf) descending, older first on ties, keep the
// first topk, report ascending. Exact for scores whose distinct finite values are far apart relative to
// kTieTolerance (then the near-tie band holds exact ties only).
std::vector<int> Oracle(const std::vector<float>& scores, int topk) {
  const int c = static_cast<int>(scores.size());
  auto key = [&](int i) { return std::isnan(scores[i]) ? -kInf : scores[i]; };
  std::vector<int> order(c);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return key(a) > key(b); });
  order.resize(std::min(topk, c));
  std::sort(order.begin(), order.end());
  return order;
}

bool SameFloat(float a, float b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

// Host and emulated device on one candidate list (two heads: as given and reversed, ring not at row 0),
// both against `want`; checks the count, the indices, the reported scores and the attended ring rows.
void ExpectSelection(const std::vector<float>& scores, int topk, const std::vector<int>& want,
                     const std::string& what) {
  SCOPED_TRACE(what);
  const int c = static_cast<int>(scores.size());
  ASSERT_EQ(want.size(), static_cast<size_t>(std::min(topk, c)));
  EXPECT_EQ(Host(scores, topk), want) << "host";
  if (topk >= c) return;  // the device selects only when there is something to drop
  std::vector<float> reversed(scores.rbegin(), scores.rend());
  const std::vector<int> want_reversed = Host(reversed, topk);
  const int remain = 2, start = 5;
  const DeviceResult r = Emulated({scores, reversed}, topk, remain, start);
  const std::vector<const std::vector<float>*> per_head = {&scores, &reversed};
  const std::vector<std::vector<int>> wants = {want, want_reversed};
  const int size = c + remain, mem_len = size + 3;
  for (int h = 0; h < 2; ++h) {
    SCOPED_TRACE("head " + std::to_string(h));
    ASSERT_EQ(r.selected[h].size(), static_cast<size_t>(topk)) << "emulated count";
    EXPECT_EQ(r.selected[h], wants[h]) << "emulated indices";
    for (size_t k = 0; k < r.selected[h].size(); ++k) {
      EXPECT_TRUE(SameFloat(r.scores[h][k], (*per_head[h])[wants[h][k]])) << "score of slot " << k;
    }
    // Attended rows: the selected tokens, then the newest `remain`, all in pool order.
    std::vector<int32_t> want_rows;
    for (int j : wants[h]) want_rows.push_back((start + j) % mem_len);
    for (int q = 0; q < remain; ++q) want_rows.push_back((start + c + q) % mem_len);
    EXPECT_EQ(r.rows[h], want_rows) << "attended ring rows";
  }
}

TEST(TramsSelectionNaN, NaNRanksAsMinusInfinity) {
  // The best token is older than a NaN: NaN must not take its place (nor empty the selection).
  ExpectSelection({1.0f, 5.0f, kNaN, 2.0f}, 1, {1}, "topk 1, NaN after the best");
  ExpectSelection({kNaN, 1.0f, 5.0f, kNaN, 2.0f}, 1, {2}, "topk 1, NaN first");
  ExpectSelection({1.0f, kNaN, 3.0f, 2.0f, kNaN}, 2, {2, 3}, "topk 2");
  ExpectSelection({kNaN, 0.0f, kNaN, -1.0f, kNaN}, 2, {1, 3}, "finite beats NaN, even negative");
  ExpectSelection({-kNaN, 4.0f, kNaN, 3.0f}, 2, {1, 3}, "negative NaN too");
}

TEST(TramsSelectionNaN, AllNaNKeepsTheOldest) {
  const std::vector<float> all_nan(6, kNaN);
  ExpectSelection(all_nan, 3, {0, 1, 2}, "all NaN, topk 3");
  ExpectSelection(all_nan, 1, {0}, "all NaN, topk 1");
  ExpectSelection(all_nan, 5, {0, 1, 2, 3, 4}, "all NaN, topk 5");
  ExpectSelection(all_nan, 6, {0, 1, 2, 3, 4, 5}, "all NaN, topk = candidates (host only)");
  ExpectSelection(all_nan, 9, {0, 1, 2, 3, 4, 5}, "all NaN, topk > candidates (host only)");
}

TEST(TramsSelectionNaN, PlusInfinityRanksHighest) {
  ExpectSelection({1.0f, kInf, 2.0f, kInf, kInf, 3.0f}, 2, {1, 3}, "more +inf than topk: oldest +inf");
  ExpectSelection({1.0f, kInf, 2.0f, 3.0f}, 2, {1, 3}, "fewer +inf than topk");
  ExpectSelection({kInf, kInf, kInf, kInf}, 3, {0, 1, 2}, "all +inf");
  // Near the top of the float range the tie band around the k-th best reaches +inf; +inf is still above it.
  ExpectSelection({kMax, kMax, kMax, kInf}, 2, {0, 3}, "+inf newer than FLT_MAX ties");
  ExpectSelection({kNaN, kMax, kInf, kMax}, 2, {1, 2}, "+inf, FLT_MAX and NaN");
}

TEST(TramsSelectionNaN, MinusInfinityRanksLowest) {
  ExpectSelection({-kInf, -kInf, 1.0f, -kInf, 2.0f}, 3, {0, 2, 4}, "-inf fills after every finite score");
  ExpectSelection({-kInf, -kInf, -kInf, -kInf}, 2, {0, 1}, "all -inf");
  // Near the bottom of the float range the tie band reaches -inf; -inf is still below it.
  ExpectSelection({-kInf, -kMax, -kMax, -kMax}, 2, {1, 2}, "-inf older than -FLT_MAX ties");
  ExpectSelection({kNaN, -kMax, -kInf, -kMax, kNaN}, 2, {1, 3}, "-FLT_MAX beats -inf and NaN");
}

TEST(TramsSelectionNaN, NaNTiesWithMinusInfinityOldestFirst) {
  ExpectSelection({kNaN, -kInf, 5.0f, kNaN, -kInf}, 3, {0, 1, 2}, "NaN and -inf tie, older first");
  ExpectSelection({-kInf, kNaN, 5.0f, kNaN, -kInf}, 3, {0, 1, 2}, "same, swapped");
  ExpectSelection({kInf, kNaN, -kInf, 1.0f, kNaN, kInf}, 4, {0, 1, 3, 5}, "everything at once");
}

TEST(TramsSelectionNaN, ExactTiesStillGoToTheOlder) {
  ExpectSelection({2.0f, kNaN, 2.0f, 2.0f, kNaN, 1.0f}, 2, {0, 2}, "finite ties among NaN");
  ExpectSelection({kNaN, 2.0f, kNaN, 2.0f, 2.0f, kInf}, 3, {1, 3, 5}, "finite ties, NaN and +inf");
  // Near ties (within kTieTolerance of the k-th best) keep going to the older token.
  ExpectSelection({3.0f * (1 + 2e-6f), kNaN, 9.0f, 3.0f, kNaN}, 2, {0, 2}, "near tie, older wins");
  ExpectSelection({3.0f, kNaN, 9.0f, 3.0f * (1 + 2e-6f), kNaN}, 2, {0, 2}, "near tie swapped, older wins");
}

// Random mixes of exact ties, NaN, +inf and -inf, pool sizes from tiny to a few hundred: host, emulated
// device and the rule written out agree, and the count is always topk.
TEST(TramsSelectionNaN, RandomMixesAgreeEverywhere) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    const int c = 2 + static_cast<int>(rng() % (trial < 200 ? 40 : 400));
    const int topk = 1 + static_cast<int>(rng() % (c - 1));
    const int nan_pct = static_cast<int>(rng() % 101), inf_pct = static_cast<int>(rng() % 30);
    std::vector<float> s(c);
    for (float& x : s) {
      const int r = static_cast<int>(rng() % 100);
      if (r < nan_pct) {
        x = (rng() & 1) ? kNaN : -kNaN;
      } else if (r < nan_pct + inf_pct) {
        x = (rng() & 1) ? kInf : -kInf;
      } else {
        x = static_cast<float>(static_cast<int>(rng() % 21) - 10) * 0.5f;  // exact ties, far apart otherwise
      }
    }
    ExpectSelection(s, topk, Oracle(s, topk), "trial " + std::to_string(trial) + " c " + std::to_string(c) +
                                                  " topk " + std::to_string(topk));
    if (::testing::Test::HasFailure()) return;
  }
}

// Finite scores with near ties (the case the band exists for): host and emulated device still agree.
TEST(TramsSelectionNaN, FiniteNearTiesUnchanged) {
  std::mt19937 rng(3);
  for (int trial = 0; trial < 100; ++trial) {
    const int c = 2 + static_cast<int>(rng() % 200);
    const int topk = 1 + static_cast<int>(rng() % (c - 1));
    std::vector<float> s(c);
    for (float& x : s) x = static_cast<float>(rng() % 20) * (1.0f + static_cast<float>(rng() % 4) * 3e-6f);
    const std::vector<int> host = Host(s, topk);
    ASSERT_EQ(host.size(), static_cast<size_t>(topk));
    ASSERT_TRUE(std::is_sorted(host.begin(), host.end()));
    const DeviceResult r = Emulated({s}, topk, 1, 0);
    ASSERT_EQ(r.selected[0], host) << "trial " << trial;
  }
}

// The shared __host__ __device__ order is a strict total order with NaN in it, so the rank-counting rule of
// the kernel finds exactly one k-th best.
TEST(TramsSelectionNaN, DeviceOrderIsTotalWithNaN) {
  const std::vector<float> v = {kNaN, -kNaN, kInf, -kInf, 0.0f, -0.0f, 1.0f, kNaN, kMax, -kMax};
  const int n = static_cast<int>(v.size());
  std::vector<int> ranks;
  for (int j = 0; j < n; ++j) {
    int rank = 0;
    for (int i = 0; i < n; ++i) {
      EXPECT_FALSE(cuda::TramsBetter(v[i], i, v[i], i)) << i;  // irreflexive
      if (i != j) {
        EXPECT_NE(cuda::TramsBetter(v[i], i, v[j], j), cuda::TramsBetter(v[j], j, v[i], i)) << i << " " << j;
      }
      rank += cuda::TramsBetter(v[i], i, v[j], j) ? 1 : 0;
    }
    ranks.push_back(rank);
  }
  std::sort(ranks.begin(), ranks.end());
  for (int k = 0; k < n; ++k) EXPECT_EQ(ranks[k], k) << "every rank exactly once";
}

}  // namespace
}  // namespace trams::engine
