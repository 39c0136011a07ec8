// Pool storage dtype (--pool_dtype) on the host engine: f16/bf16 pools store each token's key and value
// rows rounded to nearest even (the conversions of engine/cuda/hd_common.cuh) and read them back as f32;
// scores, the hidden state and accumulation stay f32.
//  - stream bytes: f32 bytes minus half of the keys + values, exact (BytesFor == bytes());
//  - a stored row is the f32 engine's row rounded, bit for bit; scores are the f32 key's;
//  - transactions' rollback restores the stored bytes exactly;
//  - bpc on a golden model stays within a stated tolerance of the f32 pool;
//  - a bad pool_dtype is a clear INVALID_ARGUMENT (ParsePoolDType, OpenEngine).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "engine/cuda/hd_common.cuh"
#include "engine/evaluator.h"
#include "engine/model_weights.h"
#include "engine/open_engine.h"
#include "engine/transformer_xl.h"
#include "tests/testing/status_matchers.h"

namespace trams::engine {
namespace {

using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

const std::string kModels = std::string(TRAMS_TEST_DATA_DIR) + "/golden/models/";

// bpc of an f16 (bf16) pool may differ from the f32 pool's by at most this much (absolute, bits per token)
// on the golden models' 300-token runs.
constexpr double kF16BpcTolerance = 2e-3;
constexpr double kBf16BpcTolerance = 2e-2;

std::unique_ptr<TransformerXL> Load(const std::string& model, PoolDType dtype) {
  auto weights = LoadModelDirectory(kModels + model);
  EXPECT_TRUE(weights.ok()) << weights.status();
  EngineOptions o;
  o.threads = 1;
  o.pool_dtype = dtype;
  return TransformerXL::FromWeights(std::move(*weights), o);
}

std::vector<int32_t> Tokens(std::mt19937& rng, int n, int64_t vocab) {
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(n);
  for (auto& t : ids) t = dist(rng);
  return ids;
}

std::vector<float> RowAsF32(const StreamState& s, int l, bool value, int row) {
  std::vector<float> out(static_cast<size_t>(s.width()));
  s.LoadRow(l, value, row, 0, s.width(), out.data());
  return out;
}

bool SameBits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

TEST(PoolDTypeTest, ParsesTheThreeNamesAndRejectsOthersClearly) {
  EXPECT_EQ(*ParsePoolDType("f32"), PoolDType::kF32);
  EXPECT_EQ(*ParsePoolDType("f16"), PoolDType::kF16);
  EXPECT_EQ(*ParsePoolDType("bf16"), PoolDType::kBF16);
  for (const char* bad : {"", "fp16", "F16", "int8", "f64"}) {
    const auto st = ParsePoolDType(bad).status();
    EXPECT_THAT(st, StatusIs(absl::StatusCode::kInvalidArgument,
                             HasSubstr("pool_dtype must be f32, f16 or bf16"))) << bad;
  }
  for (const char* device : {"cpu", "emulated"}) {
    DeviceChoice choice;
    choice.device = device;
    choice.pool_dtype = "half";
    const auto opened = OpenEngine(kModels + "plain_postln", choice);
    ASSERT_FALSE(opened.ok());
    EXPECT_THAT(opened.status(), StatusIs(absl::StatusCode::kInvalidArgument,
                                          HasSubstr("pool_dtype must be f32, f16 or bf16, got \"half\"")))
        << device;
  }
}

TEST(PoolDTypeTest, HalfPoolsTakeHalfTheKeyValueBytesExactly) {
  auto f32 = Load("plain_postln", PoolDType::kF32);
  const ModelConfig& c = f32->config();
  TramsSettings partial = TramsSettings::Trams(24, 4, 8);
  partial.layers = {1};
  for (const TramsSettings& s : {TramsSettings::Trams(24, 4, 8), TramsSettings::Xl(40), partial,
                                 TramsSettings::NoMemory(), TramsSettings::Trams(400, 50, 150)}) {
    const int64_t kv = int64_t{2} * c.n_layer * s.mem_len * c.attn_width() * 4;  // f32 keys + values
    const int64_t full = StreamState::BytesFor(c, s, PoolDType::kF32);
    for (PoolDType t : {PoolDType::kF16, PoolDType::kBF16}) {
      SCOPED_TRACE(PoolDTypeName(t));
      EXPECT_EQ(StreamState::BytesFor(c, s, t), full - kv / 2);
      auto engine = Load("plain_postln", t);
      EXPECT_EQ(*engine->StreamBytes(s), full - kv / 2);
      auto stream = *engine->NewHostStream(s);
      EXPECT_EQ(stream->bytes(), StreamState::BytesFor(c, s, t));
      EXPECT_EQ(stream->pool_dtype(), t);
    }
    EXPECT_EQ(*f32->StreamBytes(s), full);
  }
}

TEST(PoolDTypeTest, StoredRowsAreTheF32RowsRounded) {
  for (PoolDType t : {PoolDType::kF16, PoolDType::kBF16}) {
    SCOPED_TRACE(PoolDTypeName(t));
    auto f32 = Load("adaptive_preln", PoolDType::kF32);
    auto half = Load("adaptive_preln", t);
    const TramsSettings s = TramsSettings::Trams(24, 4, 8);
    auto a = *f32->NewHostStream(s);
    auto b = *half->NewHostStream(s);
    std::mt19937 rng(5);
    // One segment into empty pools: every layer's input is the same on both engines (nothing in the pool
    // is attended), so the half pool must hold exactly the f32 rows rounded, and the same f32 scores.
    const auto ids = Tokens(rng, 20, f32->config().vocab_size);
    std::vector<SegmentOutput> out;
    ASSERT_TRUE(f32->Forward({SegmentInput{a.get(), ids, {}}}, &out).ok());
    ASSERT_TRUE(half->Forward({SegmentInput{b.get(), ids, {}}}, &out).ok());
    EXPECT_TRUE(b->layer(0).keys.empty());
    EXPECT_EQ(b->layer(0).keys_half.size(), static_cast<size_t>(s.mem_len) * b->width());
    for (int l = 0; l < f32->config().n_layer; ++l) {
      for (int row = 0; row < 20; ++row) {
        for (bool value : {false, true}) {
          const auto want = RowAsF32(*a, l, value, row), got = RowAsF32(*b, l, value, row);
          for (int c = 0; c < b->width(); ++c) {
            ASSERT_TRUE(SameBits(got[c], StreamState::RoundToPool(t, want[c])))
                << "layer " << l << " row " << row << " col " << c << (value ? " value" : " key");
          }
          // The stored bits are those of hd_common.cuh's conversion of the f32 element.
          const auto& bits = value ? b->layer(l).values_half : b->layer(l).keys_half;
          const uint16_t expect = t == PoolDType::kF16 ? cuda::F32ToF16Bits(want[0]) : cuda::F32ToBf16Bits(want[0]);
          ASSERT_EQ(bits[static_cast<size_t>(row) * b->width()], expect);
        }
      }
      EXPECT_EQ(a->layer(l).scores, b->layer(l).scores) << "scores come from the f32 key, layer " << l;
    }
    // Zero-filled pools round the same way.
    auto za = *f32->NewHostStream(s);
    auto zb = *half->NewHostStream(s);
    ASSERT_TRUE(f32->FillPoolWithZeroStates(za.get()).ok());
    ASSERT_TRUE(half->FillPoolWithZeroStates(zb.get()).ok());
    for (int l = 0; l < f32->config().n_layer; ++l) {
      for (int row : {0, s.mem_len - 1}) {
        const auto want = RowAsF32(*za, l, false, row), got = RowAsF32(*zb, l, false, row);
        for (int c = 0; c < zb->width(); ++c) ASSERT_TRUE(SameBits(got[c], StreamState::RoundToPool(t, want[c])));
      }
      EXPECT_EQ(za->layer(l).scores, zb->layer(l).scores);
    }
  }
}

TEST(PoolDTypeTest, RollbackRestoresTheStoredBytesExactly) {
  for (PoolDType t : {PoolDType::kF16, PoolDType::kBF16}) {
    SCOPED_TRACE(PoolDTypeName(t));
    auto engine = Load("plain_postln", t);
    std::mt19937 rng(11);
    for (const TramsSettings& s : {TramsSettings::Trams(10, 3, 4), TramsSettings::Xl(7)}) {
      auto stream = *engine->NewHostStream(s);
      std::vector<SegmentOutput> out;
      auto run = [&](int n) {
        const auto ids = Tokens(rng, n, engine->config().vocab_size);
        ASSERT_TRUE(engine->Forward({SegmentInput{stream.get(), ids, {}}}, &out).ok());
      };
      run(8);
      std::vector<LayerPool> before;
      for (int l = 0; l < engine->config().n_layer; ++l) before.push_back(stream->layer(l));
      const int64_t position = stream->position();
      const std::vector<float> hidden = stream->last_hidden();
      ASSERT_TRUE(stream->BeginTransaction().ok());
      run(5);
      run(9);
      EXPECT_GT(stream->undo_bytes(), 0);
      EXPECT_LE(stream->undo_bytes(), stream->bytes());
      ASSERT_TRUE(stream->Rollback().ok());
      EXPECT_EQ(stream->position(), position);
      EXPECT_EQ(stream->last_hidden(), hidden);
      // The live rows (rows that held no token before the transaction are not restored: nothing reads them).
      const size_t w = static_cast<size_t>(stream->width()), heads = static_cast<size_t>(engine->config().n_head);
      for (int l = 0; l < engine->config().n_layer; ++l) {
        const LayerPool& now = stream->layer(l);
        for (int i = 0; i < stream->size(); ++i) {
          const size_t r = static_cast<size_t>(stream->RingRow(i));
          for (size_t c = 0; c < w; ++c) {
            ASSERT_EQ(now.keys_half[r * w + c], before[l].keys_half[r * w + c]) << "layer " << l << " row " << r;
            ASSERT_EQ(now.values_half[r * w + c], before[l].values_half[r * w + c]) << "layer " << l << " row " << r;
          }
          for (size_t h = 0; h < heads && !now.scores.empty(); ++h) {
            ASSERT_TRUE(SameBits(now.scores[r * heads + h], before[l].scores[r * heads + h]));
          }
        }
      }
      EXPECT_EQ(stream->size(), std::min(8, s.mem_len));
    }
  }
}

TEST(PoolDTypeTest, BpcStaysCloseToTheF32Pool) {
  for (const std::string model : {"plain_postln", "adaptive_preln", "adaptive_samelen"}) {
    SCOPED_TRACE(model);
    auto f32 = Load(model, PoolDType::kF32);
    std::mt19937 rng(3);
    const auto ids = Tokens(rng, 300, f32->config().vocab_size);
    EvalOptions o;
    o.settings = TramsSettings::Trams(24, 4, 8);
    o.tgt_len = 10;
    o.batch = 2;
    const auto want = Evaluate(*f32, ids, o);
    ASSERT_TRUE(want.ok()) << want.status();
    for (PoolDType t : {PoolDType::kF16, PoolDType::kBF16}) {
      auto half = Load(model, t);
      const auto got = Evaluate(*half, ids, o);
      ASSERT_TRUE(got.ok()) << got.status();
      const double tol = t == PoolDType::kF16 ? kF16BpcTolerance : kBf16BpcTolerance;
      EXPECT_NEAR(got->bpc, want->bpc, tol) << PoolDTypeName(t);
      EXPECT_NE(got->bpc, want->bpc) << "the rounding must change something";
      EXPECT_LT(got->pool_bytes_per_stream, want->pool_bytes_per_stream);
      std::printf("%s %s pool: bpc %.6f (f32 %.6f, change %+.2e)\n", model.c_str(), PoolDTypeName(t), got->bpc,
                  want->bpc, got->bpc - want->bpc);
    }
  }
}

}  // namespace
}  // namespace trams::engine
