// Hardening of the model loaders: what a model directory may make them do (sizes, non-finite
// weights, files outside the directory) and what their messages may quote from it.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/echo.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "engine/safetensors.h"
#include "tests/testing/status_matchers.h"

namespace trams::engine {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kModel = std::string(TRAMS_TEST_DATA_DIR) + "/golden/models/plain_postln";

json GoldenConfig() {
  std::ifstream in(kModel + "/config.json");
  return json::parse(in);
}

// ---------------------------------------------------------------------------------------------
// Config bounds: checked before anything is allocated from them.

TEST(ConfigBoundsTest, EachDimensionOverItsLimitIsNamed) {
  struct Case {
    const char* field;
    json value;
  };
  const std::vector<Case> cases = {
      {"n_layer", 2147483647},   {"n_layer", 4097},        {"d_model", 1 << 21},
      {"d_embed", (1 << 20) + 1}, {"n_head", 1 << 13},      {"d_head", 1 << 21},
      {"d_inner", 1 << 21},       {"vocab_size", 1 << 21},  {"div_val", 1 << 21},
      {"clamp_len", 2147483647},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.field);
    json config = GoldenConfig();
    config[c.field] = c.value;
    auto parsed = ParseModelConfig(config.dump());
    ASSERT_FALSE(parsed.ok());
    EXPECT_THAT(parsed.status(), StatusIs(absl::StatusCode::kInvalidArgument,
                                          AllOf(HasSubstr(absl::StrCat("'", c.field, "' is ", c.value.dump())),
                                                HasSubstr("above the limit"))));
  }
}

TEST(ConfigBoundsTest, ProductsAreBoundedToo) {
  json config = GoldenConfig();
  config["n_head"] = 1024;
  config["d_head"] = 2048;  // each within 2^20, but n_head * d_head is 2^21
  auto parsed = ParseModelConfig(config.dump());
  ASSERT_FALSE(parsed.ok());
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("n_head * d_head"));

  config = GoldenConfig();
  config["n_layer"] = 64;
  config["d_model"] = 1 << 20;
  config["d_embed"] = 1 << 20;
  config["d_inner"] = 1 << 20;  // 2^47 feed-forward parameters
  parsed = ParseModelConfig(config.dump());
  ASSERT_FALSE(parsed.ok());
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("parameters"));
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("above the limit 17179869184"));

  config = GoldenConfig();
  config["vocab_size"] = 1000;
  config["cutoffs"] = json::array();
  for (int i = 1; i <= 65; ++i) config["cutoffs"].push_back(i);
  config["tie_projs"] = std::vector<bool>(66, false);
  parsed = ParseModelConfig(config.dump());
  ASSERT_FALSE(parsed.ok());
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("'cutoffs' has 65 entries, above the limit 64"));
}

TEST(ConfigBoundsTest, LimitsLeaveRealModelsAlone) {
  json config = GoldenConfig();  // the WikiText-103 model of the paper: 16 x 410, 267,735 words
  config.update(json::parse(R"({"n_layer": 16, "d_model": 410, "d_embed": 410, "n_head": 10, "d_head": 41,
      "d_inner": 2100, "vocab_size": 267735, "cutoffs": [20000, 40000, 200000], "div_val": 1,
      "tie_projs": [false, true, true, true], "clamp_len": 1000})"));
  auto parsed = ParseModelConfig(config.dump());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_GT(parsed->ParameterCount(), 140000000);
  EXPECT_LT(parsed->ParameterCount(), 300000000);  // an upper bound (tied weights count twice)
}

// Before the bounds, n_layer 2^31-1 passed Validate and LoadModelWeights threw std::bad_alloc.
TEST(ConfigBoundsTest, AHugeConfigFailsToLoadInsteadOfThrowing) {
  auto file = SafetensorsFile::Open(kModel + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  auto config = ParseModelConfig(GoldenConfig().dump());
  ASSERT_TRUE(config.ok());
  config->n_layer = 2147483647;
  auto weights = LoadModelWeights(*config, **file);
  ASSERT_FALSE(weights.ok());
  EXPECT_THAT(std::string(weights.status().message()), HasSubstr("'n_layer' is 2147483647, above the limit 4096"));
}

// ---------------------------------------------------------------------------------------------
// Non-finite weights: refused at load, naming the tensor and the first bad element.

// A copy of a golden model directory in a fresh temp dir, whose tensors `edit` may change.
class ModelCopy {
 public:
  explicit ModelCopy(const std::string& model) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) / absl::StrCat("mlt_", info->test_suite_name(), "_", info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const std::string src = std::string(TRAMS_TEST_DATA_DIR) + "/golden/models/" + model;
    for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"}) fs::copy_file(src + "/" + f, dir_ / f);
  }
  ~ModelCopy() { fs::remove_all(dir_); }
  std::string dir() const { return dir_.string(); }

  // Rewrites model.safetensors with element `index` of tensor `name` set to the bits `value`
  // (of the tensor's own dtype: F32 or F16).
  void SetElement(const std::string& name, int64_t index, uint32_t value) {
    auto file = SafetensorsFile::Open((dir_ / "model.safetensors").string());
    ASSERT_TRUE(file.ok()) << file.status();
    std::vector<std::string> buffers;
    buffers.reserve((*file)->tensors().size());
    std::vector<TensorInfo> tensors;
    for (const TensorInfo& t : (*file)->tensors()) {
      buffers.emplace_back(reinterpret_cast<const char*>(t.data), t.nbytes);
      if (t.name == name) {
        const size_t size = DTypeSize(t.dtype);
        ASSERT_LT(static_cast<size_t>(index) * size, t.nbytes);
        std::memcpy(buffers.back().data() + index * size, &value, size);
      }
      TensorInfo copy = t;
      copy.data = reinterpret_cast<const uint8_t*>(buffers.back().data());
      tensors.push_back(copy);
    }
    const auto metadata = (*file)->metadata();
    file->reset();
    ASSERT_TRUE(WriteSafetensors((dir_ / "model.safetensors").string(), tensors, metadata).ok());
  }

 private:
  fs::path dir_;
};

TEST(NonFiniteWeightsTest, F32NanAndInfAreRefusedWithTensorAndIndex) {
  const struct {
    const char* tensor;
    int64_t index;
    uint32_t bits;
    const char* value;
    const char* where;
  } cases[] = {
      {"transformer.layers.1.pos_ff.CoreNet.0.weight", 70, 0x7fc00000u, "nan", "element 70 ([2, 6] of shape [64, 32])"},
      {"crit.out_layers.0.bias", 96, 0xff800000u, "-inf", "element 96 ([96] of shape [97])"},
      {"transformer.r_w_bias", 0, 0x7f800000u, "inf", "element 0 ([0, 0] of shape [4, 8])"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.tensor);
    ModelCopy model("plain_postln");
    model.SetElement(c.tensor, c.index, c.bits);
    auto weights = LoadModelDirectory(model.dir());
    ASSERT_FALSE(weights.ok());
    EXPECT_THAT(weights.status(), StatusIs(absl::StatusCode::kInvalidArgument,
                                           AllOf(HasSubstr(absl::StrCat("tensor '", c.tensor, "'")),
                                                 HasSubstr(absl::StrCat(c.where, " is ", c.value)))));
  }
}

TEST(NonFiniteWeightsTest, F16InfIsRefusedAfterConversion) {
  ModelCopy model("adaptive_preln");
  model.SetElement("crit.cluster_weight", 33, 0x7c00u);  // f16 +inf
  auto weights = LoadModelDirectory(model.dir());
  ASSERT_FALSE(weights.ok());
  EXPECT_THAT(std::string(weights.status().message()), HasSubstr("tensor 'crit.cluster_weight'"));
  EXPECT_THAT(std::string(weights.status().message()), HasSubstr("element 33 ([1, 1] of shape [2, 32]) is inf"));
}

TEST(NonFiniteWeightsTest, FiniteExtremesLoad) {
  ModelCopy model("plain_postln");
  model.SetElement("crit.out_layers.0.bias", 5, 0x7f7fffffu);  // FLT_MAX is finite
  model.SetElement("crit.out_layers.0.bias", 6, 0x00000001u);  // the smallest subnormal too
  EXPECT_TRUE(LoadModelDirectory(model.dir()).ok());
}

// ---------------------------------------------------------------------------------------------
// Model directory confinement for config.json and model.safetensors.

TEST(ModelDirectoryTest, FilesSymlinkedOutsideAreRefused) {
  for (const char* file : {"config.json", "model.safetensors"}) {
    SCOPED_TRACE(file);
    ModelCopy model("plain_postln");
    const fs::path outside = fs::path(::testing::TempDir()) / absl::StrCat("mlt_outside_", file);
    fs::remove(outside);
    fs::rename(fs::path(model.dir()) / file, outside);
    fs::create_symlink(outside, fs::path(model.dir()) / file);
    auto weights = LoadModelDirectory(model.dir());
    ASSERT_FALSE(weights.ok());
    EXPECT_THAT(weights.status(), StatusIs(absl::StatusCode::kInvalidArgument,
                                           AllOf(HasSubstr("resolves outside the model directory"),
                                                 HasSubstr(file))));
  }
}

TEST(ModelDirectoryTest, OversizedConfigIsRefused) {
  ModelCopy model("plain_postln");
  std::ofstream(fs::path(model.dir()) / "config.json") << std::string(2 << 20, ' ') << GoldenConfig().dump();
  auto weights = LoadModelDirectory(model.dir());
  ASSERT_FALSE(weights.ok());
  EXPECT_THAT(std::string(weights.status().message()), HasSubstr("larger than the 1048576-byte limit"));
}

TEST(EchoForErrorTest, KeepsPrintableTextAndEscapesTheRest) {
  EXPECT_EQ(EchoForError("model.safetensors"), "model.safetensors");
  EXPECT_EQ(EchoForError(""), "");
  EXPECT_EQ(EchoForError(std::string("a\nb\x1b[0m\\\x7f\0z", 11)), "a\\x0ab\\x1b[0m\\\\\\x7f\\x00z");
  EXPECT_EQ(EchoForError("caf\xc3\xa9"), "caf\\xc3\\xa9");  // UTF-8 bytes are escaped too
}

TEST(EchoForErrorTest, CapsTheOutputAndSaysHowLongTheInputWas) {
  const std::string long_line(1000, 'x');
  EXPECT_EQ(EchoForError(long_line), std::string(64, 'x') + "\xE2\x80\xA6(1000 bytes)");
  EXPECT_EQ(EchoForError(long_line, 3), "xxx\xE2\x80\xA6(1000 bytes)");
  EXPECT_EQ(EchoForError(std::string(64, 'y')), std::string(64, 'y'));  // exactly max: not cut
  // An escape is never split: 63 'a' + "\x01" (4 characters) does not fit 64.
  EXPECT_EQ(EchoForError(std::string(63, 'a') + "\x01"), std::string(63, 'a') + "\xE2\x80\xA6(64 bytes)");
}

}  // namespace
}  // namespace trams::engine
