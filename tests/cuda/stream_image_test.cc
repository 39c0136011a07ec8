// Stream images (engine/stream_image.h) on every backend: the host engine, the CUDA path's host emulation
// and a real device (skipped without one). A stream exported, written into a snapshot blob, read back and
// imported continues bit-identically to the stream that was never interrupted (log-probs, selections and
// the next-token distribution, compared bit for bit), whatever its settings, pool dtype and ring position.
// Forks are exact copies that then go their own way; what cannot be exported or imported says why.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "engine/cuda/cuda_engine.h"
#include "engine/model_weights.h"
#include "engine/stream_image.h"
#include "engine/stream_snapshot.h"
#include "engine/transformer_xl.h"
#include "tests/cuda/backends.h"
#include "tests/testing/status_matchers.h"

namespace trams::cuda {
namespace {

using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

const std::string kModelDir = std::string(TRAMS_TEST_DATA_DIR) + "/golden/models/adaptive_samelen";

const engine::ModelWeights& Weights() {
  static const engine::ModelWeights* w = [] {
    absl::StatusOr<engine::ModelWeights> loaded = engine::LoadModelDirectory(kModelDir);
    EXPECT_TRUE(loaded.ok()) << loaded.status();
    return new engine::ModelWeights(loaded.ok() ? *std::move(loaded) : engine::ModelWeights{});
  }();
  return *w;
}

// The engine of `backend` ("cpu", "emulated", "cuda") storing pools in `dtype`, or null with a skip reason.
std::unique_ptr<engine::Engine> MakeEngine(const std::string& backend, engine::PoolDType dtype, std::string* skip) {
  if (backend == "cpu") {
    engine::EngineOptions options;
    options.threads = 1;
    options.pool_dtype = dtype;
    return engine::TransformerXL::FromWeights(Weights(), options);
  }
  const trams_cuda_api* api = testing::ApiFor(backend, skip);
  if (api == nullptr) return nullptr;
  CudaEngineOptions options;
  options.arena_bytes = int64_t{32} << 20;
  options.pool_dtype = static_cast<trams_cuda_dtype>(dtype);
  absl::StatusOr<std::unique_ptr<CudaEngine>> engine = CudaEngine::Create(api, Weights(), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

std::vector<int32_t> Tokens(int64_t from, int n) {
  std::vector<int32_t> ids;
  for (int64_t i = from; i < from + n; ++i) ids.push_back(static_cast<int32_t>((i * 37 + (i * i) % 11) % 250));
  return ids;
}

// Everything a segment reports, as bytes, so that equality is bit-for-bit (NaN included).
std::string Outcome(engine::Engine& engine, engine::EngineStream* stream, const std::vector<int32_t>& tokens) {
  engine::SegmentInput in;
  in.stream = stream;
  in.tokens = tokens;
  in.options.selections = true;
  std::vector<engine::SegmentOutput> out;
  const absl::Status st = engine.Forward({&in, 1}, &out);
  EXPECT_TRUE(st.ok()) << st;
  if (!st.ok()) return "";
  std::string bytes(reinterpret_cast<const char*>(out[0].logprob.data()), out[0].logprob.size() * sizeof(float));
  for (const auto& layer : out[0].selections) {
    for (const auto& head : layer) {
      bytes.append(reinterpret_cast<const char*>(head.data()), head.size() * sizeof(int));
      bytes += '|';
    }
  }
  std::vector<float> next;
  EXPECT_TRUE(engine.NextTokenLogProbs(*stream, &next).ok());
  bytes.append(reinterpret_cast<const char*>(next.data()), next.size() * sizeof(float));
  return bytes;
}

// Runs `n` tokens from the stream's position in segments of `seg`.
void Feed(engine::Engine& engine, engine::EngineStream* stream, int n, int seg) {
  for (int done = 0; done < n; done += seg) Outcome(engine, stream, Tokens(stream->position(), std::min(seg, n - done)));
}

// Through the whole snapshot path: image -> sections -> blob (zstd) -> sections -> image.
absl::StatusOr<engine::StreamImage> ThroughBlob(engine::StreamImage image, const std::string& fingerprint,
                                                const engine::ModelConfig& config) {
  std::vector<engine::SnapshotSection> sections;
  engine::AppendStreamSections(std::move(image), fingerprint, &sections);
  absl::StatusOr<std::string> blob = engine::EncodeSnapshot(sections, engine::SnapshotCompression::kZstd);
  if (!blob.ok()) return blob.status();
  absl::StatusOr<std::vector<engine::SnapshotSection>> back = engine::DecodeSnapshot(*blob);
  if (!back.ok()) return back.status();
  return engine::StreamImageFromSections(&*back, config, fingerprint);
}

struct Case {
  const char* name;
  engine::TramsSettings settings;
  int tokens_before;  // fed before the export
  bool zero_fill;     // the reference code's zero-filled start
};

std::vector<Case> Cases() {
  engine::TramsSettings some_layers = engine::TramsSettings::Trams(24, 3, 5);
  some_layers.layers = {1};
  engine::TramsSettings paper = engine::TramsSettings::Trams(20, 4, 6);
  paper.metric = engine::SelectionMetric::kPaper;
  return {
      {"fresh", engine::TramsSettings::Trams(24, 3, 5), 0, false},
      {"pool_not_full", engine::TramsSettings::Trams(24, 3, 5), 13, false},
      {"ring_wrapped", engine::TramsSettings::Trams(24, 3, 5), 61, false},
      {"some_layers_select", some_layers, 47, false},
      {"paper_metric", paper, 33, false},
      {"xl", engine::TramsSettings::Xl(16), 29, false},
      {"no_memory", engine::TramsSettings::NoMemory(), 9, false},
      {"zero_filled", engine::TramsSettings::Trams(24, 3, 5), 0, true},
      {"zero_filled_then_fed", engine::TramsSettings::Trams(24, 3, 5), 11, true},
  };
}

class StreamImageTest : public ::testing::TestWithParam<std::tuple<std::string, engine::PoolDType>> {
 protected:
  void SetUp() override {
    std::string skip;
    engine_ = MakeEngine(std::get<0>(GetParam()), std::get<1>(GetParam()), &skip);
    if (engine_ == nullptr && !skip.empty()) TRAMS_SKIP_WITHOUT_GPU(skip);
    ASSERT_NE(engine_, nullptr);
  }
  std::unique_ptr<engine::Engine> engine_;
};

TEST_P(StreamImageTest, RestoredStreamContinuesBitIdentically) {
  engine::Engine& e = *engine_;
  for (const Case& c : Cases()) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<std::unique_ptr<engine::EngineStream>> original = e.NewStream(c.settings);
    ASSERT_TRUE(original.ok()) << original.status();
    if (c.zero_fill) {
      ASSERT_TRUE(e.FillPoolWithZeroStates(original->get()).ok());
    }
    Feed(e, original->get(), c.tokens_before, 7);

    absl::StatusOr<engine::StreamImage> image = e.ExportStream(**original);
    ASSERT_TRUE(image.ok()) << image.status();
    EXPECT_EQ(image->position, (*original)->position());
    EXPECT_EQ(image->size, (*original)->size());
    absl::StatusOr<engine::StreamImage> back = ThroughBlob(*std::move(image), e.model_fingerprint(), e.config());
    ASSERT_TRUE(back.ok()) << back.status();
    absl::StatusOr<std::unique_ptr<engine::EngineStream>> restored = e.ImportStream(*back);
    ASSERT_TRUE(restored.ok()) << restored.status();
    EXPECT_EQ((*restored)->position(), (*original)->position());
    EXPECT_EQ((*restored)->size(), (*original)->size());
    EXPECT_EQ((*restored)->bytes(), (*original)->bytes());

    // Segments of two lengths, past the pool's capacity, so both rings wrap again.
    for (int seg = 0; seg < 7; ++seg) {
      const std::vector<int32_t> tokens = Tokens((*original)->position(), seg % 2 == 0 ? 8 : 5);
      ASSERT_EQ(Outcome(e, original->get(), tokens), Outcome(e, restored->get(), tokens)) << "segment " << seg;
    }
  }
}

TEST_P(StreamImageTest, ForkIsAnExactCopyThatGoesItsOwnWay) {
  engine::Engine& e = *engine_;
  auto original = *e.NewStream(engine::TramsSettings::Trams(24, 3, 5));
  auto twin = *e.NewStream(engine::TramsSettings::Trams(24, 3, 5));
  Feed(e, original.get(), 40, 8);
  Feed(e, twin.get(), 40, 8);
  absl::StatusOr<std::unique_ptr<engine::EngineStream>> fork = e.ForkStream(*original);
  ASSERT_TRUE(fork.ok()) << fork.status();
  // The fork takes another branch; the original is untouched by it and continues as its twin.
  Outcome(e, fork->get(), Tokens(1000, 8));
  const std::vector<int32_t> next = Tokens(40, 8);
  EXPECT_EQ(Outcome(e, original.get(), next), Outcome(e, twin.get(), next));
  // A second fork from the same point continues exactly as the original.
  auto fork2 = *e.ForkStream(*twin);
  const std::vector<int32_t> more = Tokens(48, 6);
  EXPECT_EQ(Outcome(e, fork2.get(), more), Outcome(e, twin.get(), more));
}

TEST_P(StreamImageTest, InsideATransactionNothingIsExported) {
  engine::Engine& e = *engine_;
  auto stream = *e.NewStream(engine::TramsSettings::Trams(24, 3, 5));
  Feed(e, stream.get(), 10, 5);
  ASSERT_TRUE(stream->BeginTransaction().ok());
  Feed(e, stream.get(), 5, 5);
  EXPECT_THAT(e.ExportStream(*stream).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("inside a transaction")));
  ASSERT_TRUE(stream->Rollback().ok());
  absl::StatusOr<engine::StreamImage> image = e.ExportStream(*stream);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->position, 10);
}

TEST_P(StreamImageTest, ImagesThatDoNotFitAreRefusedAndNothingIsAllocated) {
  engine::Engine& e = *engine_;
  auto stream = *e.NewStream(engine::TramsSettings::Trams(24, 3, 5));
  Feed(e, stream.get(), 30, 6);
  const engine::StreamImage good = *e.ExportStream(*stream);
  absl::StatusOr<engine::EngineMemory> before = e.Memory();
  ASSERT_TRUE(before.ok());

  engine::StreamImage bad = good;
  bad.keys.pop_back();
  EXPECT_THAT(e.ImportStream(bad).status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("keys and values")));
  bad = good;
  bad.size = 25;
  EXPECT_THAT(e.ImportStream(bad).status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("capacity is 24")));
  bad = good;
  bad.last_hidden.clear();
  EXPECT_THAT(e.ImportStream(bad).status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("hidden state")));
  bad = good;
  bad.scores.resize(3);
  EXPECT_THAT(e.ImportStream(bad).status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("TRAMS scores")));
  bad = good;
  bad.settings.mem_len = 1 << 30;
  EXPECT_THAT(e.ImportStream(bad).status(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("memory settings")));
  bad = good;
  bad.pool_dtype = good.pool_dtype == engine::PoolDType::kF32 ? engine::PoolDType::kF16 : engine::PoolDType::kF32;
  bad.keys.resize(engine::ImageLayerBytes(e.config(), bad.pool_dtype, bad.size) * e.config().n_layer);
  bad.values.resize(bad.keys.size());
  EXPECT_THAT(e.ImportStream(bad).status(), StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("--pool_dtype")));

  absl::StatusOr<engine::EngineMemory> after = e.Memory();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->arena_used_bytes, before->arena_used_bytes) << "a refused import holds nothing";
  EXPECT_EQ(after->streams, before->streams);
}

TEST_P(StreamImageTest, AnotherModelsSnapshotIsRefusedNamingBothModels) {
  engine::Engine& e = *engine_;
  auto stream = *e.NewStream(engine::TramsSettings::Trams(24, 3, 5));
  Feed(e, stream.get(), 12, 6);
  std::vector<engine::SnapshotSection> sections;
  engine::AppendStreamSections(*e.ExportStream(*stream), "xxh3:0123456789abcdef", &sections);
  EXPECT_THAT(engine::StreamImageFromSections(&sections, e.config(), e.model_fingerprint()).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       ::testing::AllOf(HasSubstr("xxh3:0123456789abcdef"), HasSubstr(e.model_fingerprint()))));
}

INSTANTIATE_TEST_SUITE_P(
    Backends, StreamImageTest,
    ::testing::Combine(::testing::Values("cpu", "emulated", "cuda"),
                       ::testing::Values(engine::PoolDType::kF32, engine::PoolDType::kBF16)),
    [](const ::testing::TestParamInfo<std::tuple<std::string, engine::PoolDType>>& p) {
      return std::get<0>(p.param) + "_" + engine::PoolDTypeName(std::get<1>(p.param));
    });

// The fingerprint is the weights': the same on every backend, changed by any weight.
TEST(ModelFingerprintTest, SameWeightsSameFingerprintOnEveryBackendAnyChangeAnother) {
  std::string skip;
  auto host = MakeEngine("cpu", engine::PoolDType::kF32, &skip);
  auto emulated = MakeEngine("emulated", engine::PoolDType::kF32, &skip);
  ASSERT_NE(host, nullptr);
  ASSERT_NE(emulated, nullptr);
  EXPECT_EQ(host->model_fingerprint(), emulated->model_fingerprint());
  EXPECT_THAT(host->model_fingerprint(), ::testing::MatchesRegex("xxh3:[0-9a-f]{16}"));

  engine::ModelWeights changed = Weights();
  auto storage = std::make_shared<std::vector<float>>(changed.layers[1].ff2_b.data,
                                                      changed.layers[1].ff2_b.data + changed.layers[1].ff2_b.cols);
  (*storage)[3] = std::nextafter((*storage)[3], 1.0f);  // one ulp of one bias
  changed.layers[1].ff2_b.storage = storage;
  changed.layers[1].ff2_b.data = storage->data();
  EXPECT_NE(engine::TransformerXL::FromWeights(changed)->model_fingerprint(), host->model_fingerprint());
}

// A host image restores on the CUDA path (and back): the image is the same format everywhere.
TEST(StreamImageAcrossBackendsTest, HostImageRestoresOnTheEmulatedPath) {
  std::string skip;
  auto host = MakeEngine("cpu", engine::PoolDType::kF32, &skip);
  auto emulated = MakeEngine("emulated", engine::PoolDType::kF32, &skip);
  auto stream = *host->NewStream(engine::TramsSettings::Trams(24, 3, 5));
  Feed(*host, stream.get(), 37, 8);
  absl::StatusOr<std::unique_ptr<engine::EngineStream>> moved = emulated->ImportStream(*host->ExportStream(*stream));
  ASSERT_TRUE(moved.ok()) << moved.status();
  const engine::StreamImage there = *emulated->ExportStream(**moved);
  const engine::StreamImage here = *host->ExportStream(*stream);
  EXPECT_EQ(there.keys, here.keys);
  EXPECT_EQ(there.values, here.values);
  EXPECT_EQ(there.scores, here.scores);
  EXPECT_EQ(there.last_hidden, here.last_hidden);
}

}  // namespace
}  // namespace trams::cuda
