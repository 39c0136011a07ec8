// Engine contract tests: bad input gets a clear error and changes nothing; memory semantics that
// must hold whatever the weights (segmentation invariance while nothing is evicted, exact pool bytes).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "engine/evaluator.h"
#include "engine/model_weights.h"
#include "engine/safetensors.h"
#include "engine/transformer_xl.h"

namespace trams::engine {
namespace {

namespace fs = std::filesystem;

const std::string kModel = std::string(TRAMS_TEST_DATA_DIR) + "/golden/models/plain_postln";

std::unique_ptr<TransformerXL> LoadModel() {
  auto model = TransformerXL::Load(kModel);
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(*model);
}

std::vector<int32_t> Tokens(int n, int seed) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = (i * 37 + seed * 11 + (i * i) % 13) % 97;
  return ids;
}

// Feeds `ids` in segments of `seg` tokens; returns every token's log-prob.
std::vector<float> Score(TransformerXL& model, StreamState* stream, const std::vector<int32_t>& ids, int seg) {
  std::vector<float> lp;
  for (size_t pos = 0; pos < ids.size(); pos += seg) {
    const size_t n = std::min<size_t>(seg, ids.size() - pos);
    std::vector<SegmentOutput> out;
    SegmentInput in{stream, absl::MakeConstSpan(ids).subspan(pos, n), {}};
    EXPECT_TRUE(model.Forward({in}, &out).ok());
    lp.insert(lp.end(), out[0].logprob.begin(), out[0].logprob.end());
  }
  return lp;
}

TEST(EngineTest, SegmentationDoesNotMatterWhileNothingIsEvicted) {
  auto model = LoadModel();
  const auto ids = Tokens(60, 1);
  for (const TramsSettings& settings : {TramsSettings::Xl(64), TramsSettings::Trams(64, 20, 44)}) {
    auto whole = *model->NewHostStream(settings);
    auto pieces = *model->NewHostStream(settings);
    auto single = *model->NewHostStream(settings);
    const auto a = Score(*model, whole.get(), ids, 60);
    const auto b = Score(*model, pieces.get(), ids, 7);
    const auto one = Score(*model, single.get(), ids, 1);  // decoding: the direct attention path
    ASSERT_EQ(a.size(), b.size());
    ASSERT_EQ(a.size(), one.size());
    EXPECT_TRUE(std::isnan(a[0]) && std::isnan(b[0]) && std::isnan(one[0])) << "the first token has no context";
    for (size_t i = 1; i < a.size(); ++i) {
      EXPECT_NEAR(a[i], b[i], 2e-5) << "token " << i;
      EXPECT_NEAR(a[i], one[i], 2e-5) << "token " << i;
    }
  }
}

TEST(EngineTest, NextTokenDistributionPredictsTheNextToken) {
  auto model = LoadModel();
  auto stream = *model->NewHostStream(TramsSettings::Trams(24, 4, 8));
  Score(*model, stream.get(), Tokens(40, 2), 8);
  std::vector<float> dist;
  ASSERT_TRUE(model->NextTokenLogProbs(*stream, &dist).ok());
  ASSERT_EQ(dist.size(), 97u);
  double total = 0;
  for (float lp : dist) total += std::exp(lp);
  EXPECT_NEAR(total, 1.0, 1e-5);
  const std::vector<int32_t> next = {42};
  std::vector<SegmentOutput> out;
  OutputOptions options;
  options.next_distribution = true;
  ASSERT_TRUE(model->Forward({{stream.get(), next, options}}, &out).ok());
  EXPECT_NEAR(out[0].logprob[0], dist[42], 1e-5);
  // The distribution after the segment, computed in the same forward, is what NextTokenLogProbs says.
  std::vector<float> after;
  ASSERT_TRUE(model->NextTokenLogProbs(*stream, &after).ok());
  ASSERT_EQ(out[0].next_logprobs.size(), after.size());
  for (size_t v = 0; v < after.size(); ++v) EXPECT_NEAR(out[0].next_logprobs[v], after[v], 1e-6);
}

TEST(EngineTest, PoolBytesAreExactAndFixed) {
  auto model = LoadModel();
  const TramsSettings settings = TramsSettings::Trams(24, 4, 8);
  auto stream = *model->NewHostStream(settings);
  // 3 layers x 24 tokens x (keys + values: 2 x 32 floats + 4 scores) + 32 floats of prediction state.
  EXPECT_EQ(StreamState::BytesFor(model->config(), settings), (3 * 24 * (2 * 32 + 4) + 32) * 4);
  EXPECT_EQ(stream->bytes(), StreamState::BytesFor(model->config(), settings));
  Score(*model, stream.get(), Tokens(100, 3), 8);
  EXPECT_EQ(stream->size(), 24);
  EXPECT_EQ(stream->position(), 100);
  EXPECT_EQ(stream->bytes(), StreamState::BytesFor(model->config(), settings));
}

TEST(EngineTest, BadTokensAreRejectedAndLeaveTheStreamAsItWas) {
  auto model = LoadModel();
  auto stream = *model->NewHostStream(TramsSettings::Trams(24, 4, 8));
  Score(*model, stream.get(), Tokens(30, 4), 8);
  const auto keys_before = stream->layer(0).keys;
  const int64_t position = stream->position();
  std::vector<SegmentOutput> out;
  for (const std::vector<int32_t>& bad : {std::vector<int32_t>{1, 2, 97}, std::vector<int32_t>{-1}}) {
    absl::Status s = model->Forward({{stream.get(), bad, {}}}, &out);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.message().find("outside the vocabulary"), absl::string_view::npos) << s;
  }
  absl::Status empty = model->Forward({{stream.get(), {}, {}}}, &out);
  EXPECT_EQ(empty.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(empty.message().find("no tokens"), absl::string_view::npos) << empty;
  const std::vector<int32_t> ok = {1, 2};
  absl::Status twice = model->Forward({{stream.get(), ok, {}}, {stream.get(), ok, {}}}, &out);
  EXPECT_NE(twice.message().find("repeats a stream"), absl::string_view::npos) << twice;
  EXPECT_EQ(stream->position(), position);
  EXPECT_EQ(stream->layer(0).keys, keys_before);
}

TEST(EngineTest, EmptyStreamHasNoNextTokenDistribution) {
  auto model = LoadModel();
  auto stream = *model->NewHostStream(TramsSettings::Xl(8));
  std::vector<float> dist;
  EXPECT_EQ(model->NextTokenLogProbs(*stream, &dist).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(SettingsTest, BadMemorySettingsAreRejectedWithAReason) {
  auto model = LoadModel();
  const ModelConfig& c = model->config();
  struct Case {
    const char* mode;
    int mem_len, attend, topk, remain;
    std::vector<int> layers;
    const char* metric;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"trams", 100, -1, 50, 150, {}, "code", "more than the pool holds"},  // M < m
      {"trams", 400, 150, 50, 150, {}, "code", "topk + remain"},           // topk + remain != m
      {"trams", -4, -1, 1, 1, {}, "code", "must not be negative"},
      {"trams", 10, -1, -1, 1, {}, "code", "must not be negative"},
      {"xl", 200, 100, 0, 0, {}, "code", "must equal M"},
      {"xl", 0, -1, 0, 0, {}, "code", "mode 'none'"},
      {"trams", 24, -1, 4, 8, {3}, "code", "does not exist"},
      {"trams", 24, -1, 4, 8, {}, "cosine", "metric"},
      {"lstm", 24, -1, 4, 8, {}, "code", "must be xl, trams or none"},
  };
  for (const Case& k : cases) {
    auto s = MakeTramsSettings(k.mode, k.mem_len, k.attend, k.topk, k.remain, k.layers, k.metric, c);
    ASSERT_FALSE(s.ok()) << k.expect;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(s.status().message().find(k.expect), absl::string_view::npos) << s.status();
  }
  auto good = MakeTramsSettings("trams", 400, 200, 50, 150, {1, 2}, "paper", c);
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(good->attend_len(), 200);
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("ckpt_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    fs::copy_file(kModel + "/model.safetensors", dir_ / "model.safetensors", fs::copy_options::overwrite_existing);
    std::ifstream in(kModel + "/config.json");
    config_.assign(std::istreambuf_iterator<char>(in), {});
  }
  void TearDown() override { fs::remove_all(dir_); }
  void WriteConfig(const std::string& text) { std::ofstream(dir_ / "config.json") << text; }
  absl::Status Load() { return TransformerXL::Load(dir_.string()).status(); }
  std::string Replace(const std::string& from, const std::string& to) {
    std::string s = config_;
    const size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return s.replace(at, from.size(), to);
  }

  fs::path dir_;
  std::string config_;
};

TEST_F(CheckpointTest, TheCopyLoads) {
  WriteConfig(config_);
  EXPECT_TRUE(Load().ok()) << Load();
}

TEST_F(CheckpointTest, ConfigShapesThatDisagreeWithTheTensorsNameTheTensor) {
  WriteConfig(Replace("\"d_inner\": 64", "\"d_inner\": 65"));
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("transformer.layers.0.pos_ff.CoreNet.0.weight"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find("[64, 32]"), absl::string_view::npos) << s;

  WriteConfig(Replace("\"n_layer\": 3", "\"n_layer\": 4"));
  s = Load();
  EXPECT_NE(s.message().find("missing tensor 'transformer.layers.3."), absl::string_view::npos) << s;
}

TEST_F(CheckpointTest, InconsistentConfigsAreRejected) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {Replace("\"n_layer\": 3,", ""), "missing required field 'n_layer'"},
      {Replace("\"cutoffs\": []", "\"cutoffs\": [50, 40]"), "strictly increasing"},
      {Replace("\"d_model\": 32", "\"d_model\": -32"), "'d_model' must be positive"},
      {Replace("\"tie_projs\": [\n    false", "\"tie_projs\": [true, false"), "'tie_projs' has 2 entries"},
      {"{not json", "not a JSON object"},
  };
  for (const auto& [text, expect] : cases) {
    WriteConfig(text);
    absl::Status s = Load();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << expect;
    EXPECT_NE(s.message().find(expect), absl::string_view::npos) << s;
  }
}

TEST_F(CheckpointTest, ATruncatedWeightsFileIsAnErrorNotACrash) {
  WriteConfig(config_);
  fs::resize_file(dir_ / "model.safetensors", fs::file_size(dir_ / "model.safetensors") / 2);
  absl::Status s = Load();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("model.safetensors"), absl::string_view::npos) << s;
}

TEST(EvaluatorTest, BadProtocolArgumentsAreRejected) {
  auto model = LoadModel();
  EvalOptions options;
  options.settings = TramsSettings::Xl(12);
  const auto ids = Tokens(50, 5);
  options.tgt_len = 0;
  EXPECT_NE(Evaluate(*model, ids, options).status().message().find("tgt_len"), absl::string_view::npos);
  options.tgt_len = 8;
  options.batch = 0;
  EXPECT_NE(Evaluate(*model, ids, options).status().message().find("batch"), absl::string_view::npos);
  options.batch = 30;
  EXPECT_NE(Evaluate(*model, ids, options).status().message().find("too short"), absl::string_view::npos);
  options.batch = 2;
  EXPECT_NE(Evaluate(*model, {}, options).status().message().find("too short"), absl::string_view::npos);
  auto r = Evaluate(*model, ids, options);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens, 50);
  EXPECT_EQ(r->scored, 48);  // the first token of each of the 2 streams has no context
}

}  // namespace
}  // namespace trams::engine

namespace trams::engine {
namespace {

// A rolled-back transaction leaves the pool bit-for-bit as it was, whatever was appended meanwhile
// (less than the pool, more than the pool, empty pool, full pool), and the stream then continues exactly
// as a stream that never saw the transaction.
TEST(TransactionTest, RollbackRestoresThePoolExactly) {
  auto model = LoadModel();
  for (int before : {0, 10, 30}) {
    for (int during : {3, 17, 40}) {
      const TramsSettings settings = TramsSettings::Trams(24, 4, 8);
      auto stream = *model->NewHostStream(settings);
      auto twin = *model->NewHostStream(settings);
      if (before > 0) {
        Score(*model, stream.get(), Tokens(before, 6), 8);
        Score(*model, twin.get(), Tokens(before, 6), 8);
      }
      std::vector<std::vector<float>> keys, scores;
      for (int l = 0; l < 3; ++l) {
        keys.push_back(stream->layer(l).keys);
        scores.push_back(stream->layer(l).scores);
      }
      stream->BeginTransaction();
      Score(*model, stream.get(), Tokens(during, 7), 5);
      EXPECT_EQ(stream->position(), before + during);
      stream->Rollback();
      EXPECT_EQ(stream->position(), before);
      EXPECT_EQ(stream->size(), std::min(before, 24));
      for (int l = 0; l < 3; ++l) {
        // Rows outside the live window may differ; compare the live tokens in pool order.
        for (int j = 0; j < stream->size(); ++j) {
          const int row = stream->RingRow(j), twin_row = twin->RingRow(j);
          for (int k = 0; k < 32; ++k) {
            ASSERT_EQ(stream->layer(l).keys[row * 32 + k], twin->layer(l).keys[twin_row * 32 + k]);
          }
        }
      }
      const auto after = Score(*model, stream.get(), Tokens(20, 8), 8);
      const auto want = Score(*model, twin.get(), Tokens(20, 8), 8);
      for (size_t i = 0; i < after.size(); ++i) {
        if (std::isnan(want[i])) {
          EXPECT_TRUE(std::isnan(after[i]));
        } else {
          EXPECT_EQ(after[i], want[i]) << "before " << before << " during " << during << " token " << i;
        }
      }
    }
  }
}

TEST(TransactionTest, CommitKeepsTheAppendedTokens) {
  auto model = LoadModel();
  auto stream = *model->NewHostStream(TramsSettings::Xl(12));
  stream->BeginTransaction();
  Score(*model, stream.get(), Tokens(5, 9), 8);
  EXPECT_EQ(stream->undo_bytes(), 0) << "an empty pool has nothing to save";
  stream->Commit();
  stream->BeginTransaction();
  Score(*model, stream.get(), Tokens(30, 9), 8);
  // 5 live tokens were overwritten in each of 3 layers: keys + values of 32 floats, plus the old prediction state.
  EXPECT_EQ(stream->undo_bytes(), (3 * 5 * 2 * 32 + 32) * 4);
  stream->Commit();
  EXPECT_EQ(stream->position(), 35);
  EXPECT_EQ(stream->undo_bytes(), 0);
}

}  // namespace
}  // namespace trams::engine

namespace trams::engine {
namespace {

TEST(MemoryShareTest, MeasuredOnlyWhereTramsSelects) {
  auto model = LoadModel();
  auto stream = *model->NewHostStream(TramsSettings::Trams(24, 4, 8));
  auto xl = *model->NewHostStream(TramsSettings::Xl(12));
  const auto ids = Tokens(48, 10);
  OutputOptions options;
  options.memory_share = true;
  int samples = 0;
  for (size_t pos = 0; pos < ids.size(); pos += 8) {
    auto seg = absl::MakeConstSpan(ids).subspan(pos, 8);
    std::vector<SegmentOutput> out;
    ASSERT_TRUE(model->Forward({{stream.get(), seg, options}, {xl.get(), seg, options}}, &out).ok());
    EXPECT_EQ(out[1].memory_share_samples, 0) << "XL never selects";
    if (stream->size() > 12 + 8) {  // the pool held more than m before this segment
      EXPECT_EQ(out[0].memory_share_samples, 3 * 4) << "every layer and head selects";
    }
    if (out[0].memory_share_samples > 0) {
      const double sel = out[0].memory_share_selected / out[0].memory_share_samples;
      const double rec = out[0].memory_share_recent / out[0].memory_share_samples;
      EXPECT_GT(sel, 0.0);
      EXPECT_LT(sel, 1.0);
      EXPECT_GT(rec, 0.0);
      EXPECT_LT(rec, 1.0);
      EXPECT_NE(sel, rec);
      samples += out[0].memory_share_samples;
    }
  }
  EXPECT_GT(samples, 0);
}

}  // namespace
}  // namespace trams::engine

namespace trams::engine {
namespace {

TEST(SelectTopKTest, HighestScoresInPoolOrderWithNearTiesGoingToTheOlder) {
  std::vector<int> out;
  const std::vector<float> scores = {1.0f, 5.0f, 3.0f, 4.0f, 2.0f};
  SelectTopK(scores.data(), 1, 5, 2, &out);
  EXPECT_EQ(out, (std::vector<int>{1, 3}));
  // 3.0 and 3.0 * (1 + 2e-6) are the same score up to rounding: the older one wins, whichever is larger.
  const std::vector<float> near = {3.0f * (1 + 2e-6f), 9.0f, 3.0f, 1.0f};
  SelectTopK(near.data(), 1, 4, 2, &out);
  EXPECT_EQ(out, (std::vector<int>{0, 1}));
  const std::vector<float> near_swapped = {3.0f, 9.0f, 3.0f * (1 + 2e-6f), 1.0f};
  SelectTopK(near_swapped.data(), 1, 4, 2, &out);
  EXPECT_EQ(out, (std::vector<int>{0, 1}));
  // A real difference (1e-3) is not a tie.
  const std::vector<float> apart = {3.0f, 9.0f, 3.003f, 1.0f};
  SelectTopK(apart.data(), 1, 4, 2, &out);
  EXPECT_EQ(out, (std::vector<int>{1, 2}));
  // Strided scores (one column of a [token, head] table).
  const std::vector<float> table = {0, 7, 0, 1, 0, 9, 0, 8};
  SelectTopK(table.data() + 1, 2, 4, 2, &out);
  EXPECT_EQ(out, (std::vector<int>{2, 3}));
}

}  // namespace
}  // namespace trams::engine
