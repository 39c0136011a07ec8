// End-to-end tests of the CUDA backend through its C ABI (CudaEngine), on the "emulated" backend (host,
// always) and the "cuda" backend (skipped without a device):
//  - the golden files of tests/golden (PyTorch reference): log-probs and entropies within 1e-4, top-5 ids
//    and TRAMS-selected pool indices identical (f32 weights);
//  - the host engine (TransformerXL) on ragged batches that mix XL, TRAMS and no-memory streams,
//    segments longer than the pool, selection on some layers, the next-token distribution;
//  - the contract: bad input changes nothing, a full arena is ResourceExhausted, f16/bf16 stay close.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/cuda/cuda_engine.h"
#include "engine/random_weights.h"
#include "engine/transformer_xl.h"
#include "tests/testing/golden_cases.h"
#include "tests/testing/golden_compare.h"
#include "tests/cuda/backends.h"
#include "tests/testing/status_matchers.h"

namespace trams::cuda {
namespace {

using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

// The module's own view of a stream's cursor (a CudaStream's).
absl::StatusOr<trams_cuda_stream_info> StreamInfo(const engine::EngineStream& stream) {
  return dynamic_cast<const CudaStream&>(stream).Info();
}


namespace fs = std::filesystem;
using nlohmann::json;

using golden::CaseNames;
using golden::GoldenDir;
using golden::kLogProbTolerance;
using golden::ReadCase;
using golden::SettingsOf;

// The engine of `backend` on `weights`, or a skip reason.
std::unique_ptr<CudaEngine> MakeEngine(const std::string& backend, const engine::ModelWeights& weights, std::string* skip,
                                       CudaEngineOptions options = {}) {
  const trams_cuda_api* api = testing::ApiFor(backend, skip);
  if (api == nullptr) return nullptr;
  options.arena_bytes = std::min<int64_t>(options.arena_bytes, int64_t{64} << 20);
  auto engine = CudaEngine::Create(api, weights, options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

class CudaGoldenTest : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(CudaGoldenTest, MatchesReference) {
  const auto& [backend, name] = GetParam();
  const absl::StatusOr<json> read = ReadCase(name);
  ASSERT_TRUE(read.ok()) << read.status();
  const json& c = *read;
  auto weights = engine::LoadModelDirectory(GoldenDir() + "/models/" + c["model"].get<std::string>());
  ASSERT_TRUE(weights.ok()) << weights.status();
  std::string skip;
  auto engine = MakeEngine(backend, *weights, &skip);
  if (engine == nullptr && !skip.empty()) TRAMS_SKIP_WITHOUT_GPU(skip);
  ASSERT_NE(engine, nullptr);

  golden::Comparison compared;
  ASSERT_NO_FATAL_FAILURE(golden::CompareWithGolden(*engine, c, &compared));
  EXPECT_GT(compared.logprobs, 0);
  std::printf("[ %s ] %s: %lld log-probs, max |err| %.3g; %lld non-empty selections identical\n", backend.c_str(),
              name.c_str(), static_cast<long long>(compared.logprobs), compared.max_logprob_error,
              static_cast<long long>(compared.selections));
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaGoldenTest,
                         ::testing::Combine(::testing::ValuesIn(testing::BackendNames()),
                                            ::testing::ValuesIn(CaseNames())),
                         [](const auto& param_info) { return std::get<0>(param_info.param) + "_" + std::get<1>(param_info.param); });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(CudaGoldenTest);

// ---------------------------------------------------------------------------------------------------
// Against the host engine.

class CudaVsHostTest : public ::testing::TestWithParam<std::string> {};

// The golden model `model` and an engine for it on `backend`. `engine` stays null when the test is over:
// skipped (the backend has no device) or failed; the caller returns then.
void OpenGolden(const std::string& backend, const std::string& model, absl::StatusOr<engine::ModelWeights>* weights,
                std::unique_ptr<CudaEngine>* engine) {
  *weights = engine::LoadModelDirectory(GoldenDir() + "/models/" + model);
  ASSERT_TRUE(weights->ok()) << weights->status();
  std::string skip;
  *engine = MakeEngine(backend, **weights, &skip);
  if (*engine == nullptr && !skip.empty()) TRAMS_SKIP_WITHOUT_GPU(skip);
  ASSERT_NE(*engine, nullptr);
}

std::vector<int32_t> RandomTokens(std::mt19937& rng, int n, int64_t vocab) {
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(n);
  for (auto& t : ids) t = dist(rng);
  return ids;
}

void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(got[i])) << what << " [" << i << "]";
      continue;
    }
    ASSERT_NEAR(got[i], want[i], tol) << what << " [" << i << "]";
  }
}

// Streams with different settings and segment lengths in one batch, several segments, so that padding,
// ring wrap-around, selection on some layers and segments longer than the pool are all exercised.
TEST_P(CudaVsHostTest, RaggedMixedBatchesMatchTheHostEngine) {
  for (const std::string model : {"plain_postln", "adaptive_preln", "adaptive_samelen"}) {
    SCOPED_TRACE(model);
    auto weights = engine::LoadModelDirectory(GoldenDir() + "/models/" + model);
    ASSERT_TRUE(weights.ok()) << weights.status();
    std::string skip;
    auto engine = MakeEngine(GetParam(), *weights, &skip);
    if (engine == nullptr && !skip.empty()) TRAMS_SKIP_WITHOUT_GPU(skip);
    ASSERT_NE(engine, nullptr);
    auto host = engine::TransformerXL::FromWeights(*weights, engine::EngineOptions{1});
    const int n_layer = weights->config.n_layer;

    engine::TramsSettings partial = engine::TramsSettings::Trams(20, 4, 6);
    partial.layers = {n_layer - 1};
    engine::TramsSettings paper = engine::TramsSettings::Trams(16, 5, 3);
    paper.metric = engine::SelectionMetric::kPaper;
    const std::vector<engine::TramsSettings> settings = {engine::TramsSettings::Trams(24, 4, 8), engine::TramsSettings::Xl(12),
                                                 engine::TramsSettings::NoMemory(), partial, paper,
                                                 engine::TramsSettings::Trams(6, 2, 2)};
    std::vector<std::unique_ptr<engine::EngineStream>> dev;
    std::vector<std::unique_ptr<engine::EngineStream>> ref;
    for (const engine::TramsSettings& s : settings) {
      auto d = engine->NewStream(s);
      ASSERT_TRUE(d.ok()) << d.status();
      dev.push_back(std::move(*d));
      ref.push_back(*host->NewStream(s));
    }
    std::mt19937 rng(17);
    const std::vector<std::vector<int>> lengths = {{5, 9, 3, 7, 1, 8}, {8, 1, 6, 2, 9, 11}, {3, 12, 7, 5, 4, 2},
                                                   {9, 4, 1, 8, 6, 7}, {2, 7, 9, 3, 8, 5}, {6, 6, 6, 6, 6, 6}};
    for (size_t seg = 0; seg < lengths.size(); ++seg) {
      std::vector<std::vector<int32_t>> ids;
      for (size_t b = 0; b < settings.size(); ++b) ids.push_back(RandomTokens(rng, lengths[seg][b], weights->config.vocab_size));
      engine::OutputOptions o;
      o.selections = true;
      o.next_distribution = seg % 2 == 1;
      o.entropy = seg == 3;
      std::vector<engine::SegmentInput> dbatch;
      std::vector<engine::SegmentInput> hbatch;
      for (size_t b = 0; b < settings.size(); ++b) {
        // Skip a stream now and then: batches need not hold every stream.
        if ((seg + b) % 5 == 4) continue;
        dbatch.push_back({dev[b].get(), ids[b], o});
        hbatch.push_back({ref[b].get(), ids[b], o});
      }
      std::vector<engine::SegmentOutput> dout, hout;
      ASSERT_TRUE(host->Forward(hbatch, &hout).ok());
      const absl::Status st = engine->Forward(dbatch, &dout);
      ASSERT_TRUE(st.ok()) << st;
      for (size_t k = 0; k < dbatch.size(); ++k) {
        const std::string what = "segment " + std::to_string(seg) + " entry " + std::to_string(k);
        ExpectClose(dout[k].logprob, hout[k].logprob, kLogProbTolerance, what + " logprob");
        ExpectClose(dout[k].next_logprobs, hout[k].next_logprobs, kLogProbTolerance, what + " next");
        ExpectClose(dout[k].entropy, hout[k].entropy, kLogProbTolerance, what + " entropy");
        EXPECT_EQ(dout[k].selections, hout[k].selections) << what;
        ASSERT_EQ(dout[k].selection_scores.size(), hout[k].selection_scores.size()) << what;
        for (size_t l = 0; l < hout[k].selection_scores.size(); ++l) {
          for (size_t h = 0; h < hout[k].selection_scores[l].size(); ++h) {
            ExpectClose(dout[k].selection_scores[l][h], hout[k].selection_scores[l][h], 1e-4, what + " scores");
          }
        }
        EXPECT_EQ(dout[k].tokens_scored, hout[k].tokens_scored) << what;
      }
    }
    for (size_t b = 0; b < settings.size(); ++b) {
      auto info = StreamInfo(*dev[b]);
      ASSERT_TRUE(info.ok());
      EXPECT_EQ(info->size, ref[b]->size()) << "stream " << b;
      EXPECT_EQ(info->position, ref[b]->position()) << "stream " << b;
      std::vector<float> dnext, hnext;
      ASSERT_TRUE(engine->NextTokenLogProbs(*dev[b], &dnext).ok());
      ASSERT_TRUE(host->NextTokenLogProbs(*ref[b], &hnext).ok());
      ExpectClose(dnext, hnext, kLogProbTolerance, "NextTokenLogProbs stream " + std::to_string(b));
    }
  }
}

TEST_P(CudaVsHostTest, ReferenceCompatZeroPoolMatchesTheHostEngine) {
  absl::StatusOr<engine::ModelWeights> weights;
  std::unique_ptr<CudaEngine> engine;
  OpenGolden(GetParam(), "adaptive_preln", &weights, &engine);
  if (engine == nullptr) return;  // skipped (no GPU) or failed
  auto host = engine::TransformerXL::FromWeights(*weights, engine::EngineOptions{1});
  const engine::TramsSettings s = engine::TramsSettings::Trams(10, 3, 4);
  auto dev = *engine->NewStream(s);
  auto ref = *host->NewStream(s);
  ASSERT_TRUE(engine->FillPoolWithZeroStates(dev.get()).ok());
  EXPECT_TRUE(host->FillPoolWithZeroStates(ref.get()).ok());
  std::mt19937 rng(3);
  for (int seg = 0; seg < 4; ++seg) {
    const auto ids = RandomTokens(rng, 5, weights->config.vocab_size);
    engine::OutputOptions o;
    o.selections = true;
    std::vector<engine::SegmentOutput> dout, hout;
    ASSERT_TRUE(host->Forward({engine::SegmentInput{ref.get(), ids, o}}, &hout).ok());
    ASSERT_TRUE(engine->Forward({engine::SegmentInput{dev.get(), ids, o}}, &dout).ok());
    ExpectClose(dout[0].logprob, hout[0].logprob, kLogProbTolerance, "logprob");
    EXPECT_EQ(dout[0].selections, hout[0].selections);
  }
}

TEST_P(CudaVsHostTest, BadInputChangesNothing) {
  absl::StatusOr<engine::ModelWeights> weights;
  std::unique_ptr<CudaEngine> engine;
  OpenGolden(GetParam(), "plain_postln", &weights, &engine);
  if (engine == nullptr) return;  // skipped (no GPU) or failed
  auto a = *engine->NewStream(engine::TramsSettings::Trams(24, 4, 8));
  auto b = *engine->NewStream(engine::TramsSettings::Xl(8));
  const std::vector<int32_t> good = {1, 2, 3}, bad = {4, 97, 5}, empty;
  std::vector<engine::SegmentOutput> out;
  absl::Status st = engine->Forward({engine::SegmentInput{a.get(), good, {}}, engine::SegmentInput{b.get(), bad, {}}}, &out);
  EXPECT_THAT(st, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("outside the vocabulary")));
  st = engine->Forward({engine::SegmentInput{a.get(), good, {}}, engine::SegmentInput{a.get(), good, {}}}, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  st = engine->Forward({engine::SegmentInput{a.get(), empty, {}}}, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_EQ(StreamInfo(*a)->position, 0);
  EXPECT_EQ(StreamInfo(*b)->position, 0);
  std::vector<float> next;
  EXPECT_EQ(engine->NextTokenLogProbs(*a, &next).code(), absl::StatusCode::kFailedPrecondition);
  auto bad_settings = engine->NewStream(engine::TramsSettings::Trams(8, 6, 6));
  EXPECT_EQ(bad_settings.status().code(), absl::StatusCode::kInvalidArgument);
}

// A provisional segment (SegmentInput::commit false) scores as the host's does and leaves the stream exactly
// as it was: the next committed segment matches the host's, which never saw the provisional one.
TEST_P(CudaVsHostTest, ProvisionalSegmentsLeaveTheStreamAsItWas) {
  absl::StatusOr<engine::ModelWeights> weights;
  std::unique_ptr<CudaEngine> engine;
  OpenGolden(GetParam(), "plain_postln", &weights, &engine);
  if (engine == nullptr) return;  // skipped (no GPU) or failed
  auto host = engine::TransformerXL::FromWeights(*weights);
  const engine::TramsSettings s = engine::TramsSettings::Trams(10, 2, 3);
  auto dev = std::move(*engine->NewStream(s));
  auto ref = std::move(*host->NewStream(s));
  std::mt19937 rng(5);
  engine::OutputOptions o;
  o.selections = true;
  o.next_distribution = true;
  for (int seg = 0; seg < 5; ++seg) {
    const auto ids = RandomTokens(rng, 4, weights->config.vocab_size);
    const auto tail = RandomTokens(rng, 3, weights->config.vocab_size);
    std::vector<engine::SegmentOutput> dout, hout;
    // The provisional tail first, then the committed segment (the server's order across calls).
    ASSERT_TRUE(host->Forward({engine::SegmentInput{ref.get(), tail, o, false}}, &hout).ok());
    ASSERT_TRUE(engine->Forward({engine::SegmentInput{dev.get(), tail, o, false}}, &dout).ok());
    ExpectClose(dout[0].logprob, hout[0].logprob, kLogProbTolerance, "provisional logprob");
    ExpectClose(dout[0].next_logprobs, hout[0].next_logprobs, kLogProbTolerance, "provisional next");
    EXPECT_EQ(dout[0].selections, hout[0].selections);
    EXPECT_EQ(dev->position(), ref->position());
    EXPECT_EQ(StreamInfo(*dev)->position, ref->position());
    EXPECT_EQ(StreamInfo(*dev)->size, ref->size());
    ASSERT_TRUE(host->Forward({engine::SegmentInput{ref.get(), ids, o}}, &hout).ok());
    ASSERT_TRUE(engine->Forward({engine::SegmentInput{dev.get(), ids, o}}, &dout).ok());
    ExpectClose(dout[0].logprob, hout[0].logprob, kLogProbTolerance, "logprob");
    EXPECT_EQ(dout[0].selections, hout[0].selections);
    EXPECT_EQ(dev->size(), ref->size());
    EXPECT_EQ(StreamInfo(*dev)->size, ref->size());
  }
}

// The attention kernels' grid has one row per (head, segment): a batch past CUDA's launch limit is refused
// up front, before any stream changes.
TEST_P(CudaVsHostTest, BatchesPastTheLaunchLimitAreRefusedUpFront) {
  absl::StatusOr<engine::ModelWeights> weights;
  std::unique_ptr<CudaEngine> engine;
  OpenGolden(GetParam(), "plain_postln", &weights, &engine);
  if (engine == nullptr) return;  // skipped (no GPU) or failed
  const int n = 65535 / weights->config.n_head + 1;
  std::vector<std::unique_ptr<engine::EngineStream>> streams;
  std::vector<engine::SegmentInput> batch;
  const std::vector<int32_t> ids = {1, 2};
  for (int i = 0; i < n; ++i) {
    auto st = engine->NewStream(engine::TramsSettings::NoMemory());
    ASSERT_TRUE(st.ok()) << st.status();
    streams.push_back(std::move(*st));
    batch.push_back({streams.back().get(), ids, {}});
  }
  std::vector<engine::SegmentOutput> out;
  const absl::Status st = engine->Forward(batch, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(std::string(st.message()).find("launch limit"), std::string::npos) << st;
  EXPECT_EQ(streams[0]->position(), 0);
  EXPECT_EQ(StreamInfo(*streams[0])->position, 0);
}

TEST_P(CudaVsHostTest, FullArenaIsResourceExhaustedNotACrash) {
  absl::StatusOr<engine::ModelWeights> weights;
  std::unique_ptr<CudaEngine> probe;
  OpenGolden(GetParam(), "plain_postln", &weights, &probe);
  if (probe == nullptr) return;  // skipped (no GPU) or failed
  const engine::TramsSettings s = engine::TramsSettings::Trams(400, 50, 150);
  const int64_t bytes = *probe->StreamBytes(s);
  EXPECT_GE(bytes, engine::StreamState::BytesFor(weights->config, s));
  probe.reset();
  CudaEngineOptions options;
  options.arena_bytes = 3 * bytes + bytes / 2;
  std::string skip;
  auto engine = MakeEngine(GetParam(), *weights, &skip, options);
  ASSERT_NE(engine, nullptr);
  std::vector<std::unique_ptr<engine::EngineStream>> streams;
  for (int i = 0; i < 3; ++i) {
    auto st = engine->NewStream(s);
    ASSERT_TRUE(st.ok()) << st.status();
    streams.push_back(std::move(*st));
  }
  auto full = engine->NewStream(s);
  EXPECT_EQ(full.status().code(), absl::StatusCode::kResourceExhausted) << full.status();
  EXPECT_NE(std::string(full.status().message()).find("arena"), std::string::npos) << full.status();
  auto info = engine->DeviceInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->streams, 3);
  EXPECT_EQ(info->arena_used, 3 * bytes);
  streams.pop_back();  // a freed block is reused
  EXPECT_TRUE(engine->NewStream(s).ok());
}

TEST_P(CudaVsHostTest, HalfPrecisionWeightsStayClose) {
  auto weights = engine::LoadModelDirectory(GoldenDir() + "/models/adaptive_samelen");
  ASSERT_TRUE(weights.ok());
  auto host = engine::TransformerXL::FromWeights(*weights, engine::EngineOptions{1});
  for (trams_cuda_dtype dtype : {TRAMS_CUDA_F16, TRAMS_CUDA_BF16}) {
    CudaEngineOptions options;
    options.weight_dtype = dtype;
    std::string skip;
    auto engine = MakeEngine(GetParam(), *weights, &skip, options);
    if (engine == nullptr && !skip.empty()) TRAMS_SKIP_WITHOUT_GPU(skip);
    ASSERT_NE(engine, nullptr);
    const engine::TramsSettings s = engine::TramsSettings::Trams(12, 3, 5);
    auto dev = *engine->NewStream(s);
    auto ref = *host->NewStream(s);
    std::mt19937 rng(5);
    double worst = 0;
    for (int seg = 0; seg < 3; ++seg) {
      const auto ids = RandomTokens(rng, 8, weights->config.vocab_size);
      std::vector<engine::SegmentOutput> dout, hout;
      ASSERT_TRUE(host->Forward({engine::SegmentInput{ref.get(), ids, {}}}, &hout).ok());
      ASSERT_TRUE(engine->Forward({engine::SegmentInput{dev.get(), ids, {}}}, &dout).ok());
      for (size_t i = 0; i < ids.size(); ++i) {
        if (std::isnan(hout[0].logprob[i])) continue;
        const double rel = std::fabs(dout[0].logprob[i] - hout[0].logprob[i]) / std::max(1.0f, std::fabs(hout[0].logprob[i]));
        worst = std::max(worst, rel);
      }
    }
    EXPECT_LT(worst, 1e-2) << (dtype == TRAMS_CUDA_F16 ? "f16" : "bf16");
  }
}

TEST_P(CudaVsHostTest, RandomWeightsWithLargerShapes) {
  // A wider model than the golden ones (d_head 64, cutoffs with projections, two selecting layers).
  engine::ModelConfig c;
  c.n_layer = 2;
  c.d_model = 64;
  c.d_embed = 64;
  c.n_head = 2;
  c.d_head = 32;
  c.d_inner = 128;
  c.vocab_size = 500;
  c.cutoffs = {100, 300};
  c.div_val = 2;
  c.tie_projs = {false, true, true};
  c.same_length = true;
  c.clamp_len = 20;
  ASSERT_TRUE(c.Validate().ok());
  const engine::ModelWeights weights = engine::RandomModelWeights(c, 11);
  std::string skip;
  auto engine = MakeEngine(GetParam(), weights, &skip);
  if (engine == nullptr && !skip.empty()) TRAMS_SKIP_WITHOUT_GPU(skip);
  ASSERT_NE(engine, nullptr);
  auto host = engine::TransformerXL::FromWeights(weights, engine::EngineOptions{1});
  const engine::TramsSettings s = engine::TramsSettings::Trams(40, 10, 12);
  std::vector<std::unique_ptr<engine::EngineStream>> dev;
  std::vector<std::unique_ptr<engine::EngineStream>> ref;
  for (int b = 0; b < 3; ++b) {
    dev.push_back(*engine->NewStream(s));
    ref.push_back(*host->NewStream(s));
  }
  std::mt19937 rng(23);
  for (int seg = 0; seg < 5; ++seg) {
    std::vector<std::vector<int32_t>> ids;
    std::vector<engine::SegmentInput> dbatch;
    std::vector<engine::SegmentInput> hbatch;
    engine::OutputOptions o;
    o.selections = true;
    o.alternatives = 3;
    for (int b = 0; b < 3; ++b) ids.push_back(RandomTokens(rng, 12 + 3 * b, c.vocab_size));
    for (int b = 0; b < 3; ++b) {
      dbatch.push_back({dev[b].get(), ids[b], o});
      hbatch.push_back({ref[b].get(), ids[b], o});
    }
    std::vector<engine::SegmentOutput> dout, hout;
    ASSERT_TRUE(host->Forward(hbatch, &hout).ok());
    ASSERT_TRUE(engine->Forward(dbatch, &dout).ok());
    for (int b = 0; b < 3; ++b) {
      ExpectClose(dout[b].logprob, hout[b].logprob, kLogProbTolerance, "logprob");
      EXPECT_EQ(dout[b].selections, hout[b].selections) << "segment " << seg << " stream " << b;
      ASSERT_EQ(dout[b].alternatives.size(), hout[b].alternatives.size());
      for (size_t i = 0; i < hout[b].alternatives.size(); ++i) {
        ASSERT_EQ(dout[b].alternatives[i].size(), hout[b].alternatives[i].size());
        for (size_t k = 0; k < hout[b].alternatives[i].size(); ++k) {
          EXPECT_EQ(dout[b].alternatives[i][k].id, hout[b].alternatives[i][k].id);
        }
      }
    }
  }
}

// A transaction over several segments rolls back to the exact state (pools, cursor, prediction state):
// what follows matches the host engine that went through the same begin / forward / rollback.
TEST_P(CudaVsHostTest, RollbackRestoresTheStreamExactly) {
  absl::StatusOr<engine::ModelWeights> weights;
  std::unique_ptr<CudaEngine> engine;
  OpenGolden(GetParam(), "plain_postln", &weights, &engine);
  if (engine == nullptr) return;  // skipped (no GPU) or failed
  auto host = engine::TransformerXL::FromWeights(*weights, engine::EngineOptions{1});
  std::mt19937 rng(29);
  for (const engine::TramsSettings& s : {engine::TramsSettings::Trams(10, 3, 4), engine::TramsSettings::Xl(7), engine::TramsSettings::NoMemory()}) {
    auto dev = *engine->NewStream(s);
    auto ref = *host->NewStream(s);
    engine::OutputOptions o;
    o.selections = true;
    auto run = [&](int n, bool compare) {
      const auto ids = RandomTokens(rng, n, weights->config.vocab_size);
      std::vector<engine::SegmentOutput> dout, hout;
      ASSERT_TRUE(host->Forward({engine::SegmentInput{ref.get(), ids, o}}, &hout).ok());
      ASSERT_TRUE(engine->Forward({engine::SegmentInput{dev.get(), ids, o}}, &dout).ok());
      if (!compare) return;
      ExpectClose(dout[0].logprob, hout[0].logprob, kLogProbTolerance, "logprob");
      EXPECT_EQ(dout[0].selections, hout[0].selections);
    };
    run(6, true);
    for (int round = 0; round < 3; ++round) {
      ASSERT_TRUE(dev->BeginTransaction().ok());
      EXPECT_TRUE(ref->BeginTransaction().ok());
      for (int seg = 0; seg < round + 1; ++seg) run(3 + 5 * seg, true);
      const auto info = StreamInfo(*dev);
      ASSERT_TRUE(info.ok());
      EXPECT_EQ(info->in_transaction, 1);
      EXPECT_EQ(info->undo_bytes > 0, ref->undo_bytes() > 0);
      if (round == 1) {
        ASSERT_TRUE(dev->Commit().ok());
        EXPECT_TRUE(ref->Commit().ok());
      } else {
        ASSERT_TRUE(dev->Rollback().ok());
        EXPECT_TRUE(ref->Rollback().ok());
      }
      EXPECT_EQ(StreamInfo(*dev)->position, ref->position());
      EXPECT_EQ(dev->position(), ref->position());
      EXPECT_EQ(StreamInfo(*dev)->size, ref->size());
      run(4, true);
    }
    std::vector<float> dnext, hnext;
    ASSERT_TRUE(engine->NextTokenLogProbs(*dev, &dnext).ok());
    ASSERT_TRUE(host->NextTokenLogProbs(*ref, &hnext).ok());
    ExpectClose(dnext, hnext, kLogProbTolerance, "next after transactions");
  }
}

// f16/bf16 pools (--pool_dtype): the device rounds the rows entering its pools as the host does (hd_common.cuh),
// so both agree within the f32 tolerance over ragged multi-segment batches, zero-filled pools and
// transactions; a rollback restores the stored rows exactly (the next segment scores bit for bit as on a twin
// stream that never saw the transaction); stream bytes are the host's, key/value bytes halved.
TEST_P(CudaVsHostTest, HalfPrecisionPoolsMatchTheHostEngine) {
  for (const trams_cuda_dtype dtype : {TRAMS_CUDA_F16, TRAMS_CUDA_BF16}) {
    for (const std::string model : {"plain_postln", "adaptive_samelen"}) {
      SCOPED_TRACE(std::string(model) + (dtype == TRAMS_CUDA_F16 ? " f16" : " bf16"));
      auto weights = engine::LoadModelDirectory(GoldenDir() + "/models/" + model);
      ASSERT_TRUE(weights.ok()) << weights.status();
      std::string skip;
      CudaEngineOptions options;
      options.pool_dtype = dtype;
      auto engine = MakeEngine(GetParam(), *weights, &skip, options);
      if (engine == nullptr && !skip.empty()) TRAMS_SKIP_WITHOUT_GPU(skip);
      ASSERT_NE(engine, nullptr);
      auto f32_engine = MakeEngine(GetParam(), *weights, &skip);
      ASSERT_NE(f32_engine, nullptr);
      engine::EngineOptions host_options{1};
      host_options.pool_dtype = static_cast<engine::PoolDType>(dtype);
      auto host = engine::TransformerXL::FromWeights(*weights, host_options);
      const engine::ModelConfig& c = weights->config;
      engine::TramsSettings partial = engine::TramsSettings::Trams(20, 4, 6);
      partial.layers = {c.n_layer - 1};
      const std::vector<engine::TramsSettings> settings = {engine::TramsSettings::Trams(24, 4, 8), engine::TramsSettings::Xl(12), partial,
                                                   engine::TramsSettings::Trams(6, 2, 2), engine::TramsSettings::Trams(10, 3, 4)};
      std::vector<std::unique_ptr<engine::EngineStream>> dev, ref, twin;
      for (const engine::TramsSettings& s : settings) {
        // Device bytes: the f32 stream's minus half its key/value bytes (rounded up to the arena's alignment).
        const int64_t kv = int64_t{2} * c.n_layer * s.mem_len * c.attn_width() * 4;
        EXPECT_EQ(*host->StreamBytes(s), engine::StreamState::BytesFor(c, s) - kv / 2);
        EXPECT_GE(*engine->StreamBytes(s), *host->StreamBytes(s));
        EXPECT_LT(*engine->StreamBytes(s), *f32_engine->StreamBytes(s));
        dev.push_back(*engine->NewStream(s));
        ref.push_back(*host->NewStream(s));
        twin.push_back(*engine->NewStream(s));
        EXPECT_EQ(dev.back()->bytes(), *engine->StreamBytes(s));
      }
      ASSERT_TRUE(engine->FillPoolWithZeroStates(dev.back().get()).ok());
      ASSERT_TRUE(engine->FillPoolWithZeroStates(twin.back().get()).ok());
      ASSERT_TRUE(host->FillPoolWithZeroStates(ref.back().get()).ok());
      std::mt19937 rng(41);
      const std::vector<std::vector<int>> lengths = {{5, 9, 3, 7, 4}, {8, 1, 6, 2, 9}, {3, 12, 7, 5, 1},
                                                     {9, 4, 1, 8, 6}, {6, 6, 6, 6, 6}};
      engine::OutputOptions o;
      o.selections = true;
      auto step = [&](const std::vector<int>& lens, bool twins) {
        std::vector<std::vector<int32_t>> ids;
        for (int n : lens) ids.push_back(RandomTokens(rng, n, c.vocab_size));
        std::vector<engine::SegmentInput> dbatch, hbatch, tbatch;
        for (size_t b = 0; b < settings.size(); ++b) {
          dbatch.push_back({dev[b].get(), ids[b], o});
          hbatch.push_back({ref[b].get(), ids[b], o});
          tbatch.push_back({twin[b].get(), ids[b], o});
        }
        std::vector<engine::SegmentOutput> dout, hout, tout;
        ASSERT_TRUE(host->Forward(hbatch, &hout).ok());
        ASSERT_TRUE(engine->Forward(dbatch, &dout).ok());
        if (twins) {
          ASSERT_TRUE(engine->Forward(tbatch, &tout).ok());
          for (size_t k = 0; k < dout.size(); ++k) {
            ASSERT_EQ(dout[k].logprob.size(), tout[k].logprob.size());
            for (size_t i = 0; i < dout[k].logprob.size(); ++i) {
              if (std::isnan(tout[k].logprob[i])) continue;
              ASSERT_EQ(dout[k].logprob[i], tout[k].logprob[i]) << "after rollback, entry " << k << " token " << i;
            }
            EXPECT_EQ(dout[k].selections, tout[k].selections);
          }
        }
        for (size_t k = 0; k < dout.size(); ++k) {
          ExpectClose(dout[k].logprob, hout[k].logprob, kLogProbTolerance, "logprob entry " + std::to_string(k));
          EXPECT_EQ(dout[k].selections, hout[k].selections) << "entry " << k;
        }
      };
      for (size_t seg = 0; seg < 3; ++seg) step(lengths[seg], true);
      // A transaction of two segments, rolled back on both: the twins never saw it.
      for (size_t b = 0; b < settings.size(); ++b) {
        ASSERT_TRUE(dev[b]->BeginTransaction().ok());
        ASSERT_TRUE(ref[b]->BeginTransaction().ok());
      }
      step(lengths[3], false);
      step(lengths[4], false);
      for (size_t b = 0; b < settings.size(); ++b) {
        EXPECT_GT(dev[b]->undo_bytes(), 0);
        ASSERT_TRUE(dev[b]->Rollback().ok());
        ASSERT_TRUE(ref[b]->Rollback().ok());
      }
      for (size_t seg = 3; seg < lengths.size(); ++seg) step(lengths[seg], true);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, CudaVsHostTest, ::testing::ValuesIn(testing::BackendNames()),
                         [](const auto& param_info) { return param_info.param; });

}  // namespace
}  // namespace trams::cuda
