// Loading a checkpoint (config.json + model.safetensors, engine/model_weights.h) through TransformerXL::Load:
// configs that disagree with the tensors or with themselves, and truncated weights, are errors that say
// what is wrong.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <utility>
#include <vector>

#include "engine/transformer_xl.h"
#include "tests/testing/status_matchers.h"

namespace trams::engine {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

namespace fs = std::filesystem;

const std::string kModel = std::string(TRAMS_TEST_DATA_DIR) + "/golden/models/plain_postln";

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
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument,
                          AllOf(HasSubstr("transformer.layers.0.pos_ff.CoreNet.0.weight"), HasSubstr("[64, 32]"))));

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
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(expect))) << expect;
  }
}

TEST_F(CheckpointTest, ATruncatedWeightsFileIsAnErrorNotACrash) {
  WriteConfig(config_);
  fs::resize_file(dir_ / "model.safetensors", fs::file_size(dir_ / "model.safetensors") / 2);
  absl::Status s = Load();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("model.safetensors"), absl::string_view::npos) << s;
}

}  // namespace
}  // namespace trams::engine
