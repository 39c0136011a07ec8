// proto_convert: unset fields take the server options' defaults (nothing hard-wired), and settings
// survive the trip to proto and back.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "engine/model_config.h"
#include "server/proto_convert.h"

namespace trams::server {
namespace {

engine::ModelConfig Config() {
  engine::ModelConfig c;
  c.n_layer = 3;
  c.d_model = 16;
  c.d_embed = 16;
  c.n_head = 2;
  c.d_head = 8;
  c.d_inner = 32;
  c.vocab_size = 260;
  return c;
}

TEST(ProtoConvertTest, XlWithoutASizeAttendsAsManyAsTheDefaultMode) {
  SessionDefaults d;
  d.memory = engine::TramsSettings::Trams(400, 50, 150);
  v1::MemorySettings m;
  m.set_mode(v1::MEMORY_MODE_XL);
  absl::StatusOr<engine::TramsSettings> s = MemorySettingsFrom(m, d, Config());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->mode, engine::MemoryMode::kXl);
  EXPECT_EQ(s->mem_len, 200) << "topk + remain of the default";
}

TEST(ProtoConvertTest, XlWithoutASizeAfterADefaultWithoutMemoryTakesTheOption) {
  SessionDefaults d;
  d.memory = engine::TramsSettings::NoMemory();
  for (int xl_mem_len : {200, 37}) {
    d.xl_mem_len = xl_mem_len;
    v1::MemorySettings m;
    m.set_mode(v1::MEMORY_MODE_XL);
    absl::StatusOr<engine::TramsSettings> s = MemorySettingsFrom(m, d, Config());
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->mem_len, xl_mem_len);
  }
}

TEST(ProtoConvertTest, UnsetFieldsOfTheDefaultModeTakeTheDefaults) {
  SessionDefaults d;
  d.memory = engine::TramsSettings::Trams(64, 8, 16);
  d.memory.layers = {1, 2};
  d.memory.metric = engine::SelectionMetric::kPaper;
  absl::StatusOr<engine::TramsSettings> s = MemorySettingsFrom(v1::MemorySettings(), d, Config());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->mem_len, 64);
  EXPECT_EQ(s->topk, 8);
  EXPECT_EQ(s->remain, 16);
  EXPECT_EQ(s->layers, (std::vector<int>{1, 2}));
  EXPECT_EQ(s->metric, engine::SelectionMetric::kPaper);
}

TEST(ProtoConvertTest, BadEnumsAndSizesAreInvalidArgument) {
  SessionDefaults d;
  v1::MemorySettings m;
  m.set_mode(static_cast<v1::MemoryMode>(7));
  EXPECT_THAT(std::string(MemorySettingsFrom(m, d, Config()).status().message()),
              ::testing::HasSubstr("unknown memory mode 7"));
  m.set_mode(v1::MEMORY_MODE_TRAMS);
  m.set_metric(static_cast<v1::SelectionMetric>(9));
  EXPECT_THAT(std::string(MemorySettingsFrom(m, d, Config()).status().message()),
              ::testing::HasSubstr("unknown selection metric 9"));
  m.set_metric(v1::SELECTION_METRIC_CODE);
  m.set_mem_len(-1);
  EXPECT_EQ(MemorySettingsFrom(m, d, Config()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ProtoConvertTest, SettingsRoundTrip) {
  SessionDefaults d;
  engine::TramsSettings original = engine::TramsSettings::Trams(48, 6, 10);
  original.layers = {0, 2};
  original.metric = engine::SelectionMetric::kPaper;
  v1::MemorySettings m;
  ToProto(original, &m);
  absl::StatusOr<engine::TramsSettings> back = MemorySettingsFrom(m, d, Config());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->mode, original.mode);
  EXPECT_EQ(back->mem_len, original.mem_len);
  EXPECT_EQ(back->topk, original.topk);
  EXPECT_EQ(back->remain, original.remain);
  EXPECT_EQ(back->layers, original.layers);
  EXPECT_EQ(back->metric, original.metric);
}

TEST(ProtoConvertTest, GenerateLengthDefaultsToTheOption) {
  RequestLimits limits;
  limits.default_generate_tokens = 7;
  absl::StatusOr<GenerateSpec> spec = GenerateSpecFrom(v1::GenerateRequest(), limits, 1);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->max_tokens, 7);
}

}  // namespace
}  // namespace trams::server
