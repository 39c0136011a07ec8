// Golden tests: the engine against the independent PyTorch reference (tests/reference/), through the
// committed files in tests/golden/. Tolerances: 1e-4 absolute on log-probs and entropies; TRAMS-selected
// pool indices and the top-5 ids must be identical.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <unistd.h>

#include "engine/evaluator.h"
#include "engine/transformer_xl.h"
#include "tests/testing/golden_cases.h"
#include "tests/testing/golden_compare.h"
#include "tests/testing/status_matchers.h"

namespace trams::engine {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

namespace fs = std::filesystem;
using nlohmann::json;

using golden::CaseNames;
using golden::CompareWithGolden;
using golden::Comparison;
using golden::GoldenDir;
using golden::kLogProbTolerance;
using golden::ReadCase;
using golden::SettingsOf;

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, MatchesReference) {
  const absl::StatusOr<json> read = ReadCase(GetParam());
  ASSERT_TRUE(read.ok()) << read.status();
  const json& c = *read;
  auto model = TransformerXL::Load(GoldenDir() + "/models/" + c["model"].get<std::string>());
  ASSERT_TRUE(model.ok()) << model.status();
  Comparison compared;
  ASSERT_NO_FATAL_FAILURE(CompareWithGolden(**model, c, &compared));
  EXPECT_GT(compared.logprobs, 0);
  std::printf("[ golden ] %s: %lld log-probs, max |err| %.3g (entropy %.3g); %lld non-empty selections identical\n",
              GetParam().c_str(), static_cast<long long>(compared.logprobs), compared.max_logprob_error,
              compared.max_entropy_error, static_cast<long long>(compared.selections));
  const TramsSettings settings = SettingsOf(c);
  if (settings.mode == MemoryMode::kTrams && settings.mem_len > settings.topk + settings.remain) {
    EXPECT_GT(compared.selections, 0) << "the pool never filled past m: the case does not exercise selection";
  }
}

// The evaluation protocol over the same streams gives the mean of the golden log-probs.
TEST_P(GoldenTest, EvaluatorLossMatchesReference) {
  const absl::StatusOr<json> read = ReadCase(GetParam());
  ASSERT_TRUE(read.ok()) << read.status();
  const json& c = *read;
  if (c.value("reference_compat", false)) GTEST_SKIP() << "the evaluator's compat mode also drops each stream's last token";
  auto model = TransformerXL::Load(GoldenDir() + "/models/" + c["model"].get<std::string>());
  ASSERT_TRUE(model.ok()) << model.status();
  const auto inputs = c["inputs"].get<std::vector<std::vector<int32_t>>>();
  std::vector<int32_t> flat;
  double nll = 0;
  int64_t scored = 0;
  for (size_t b = 0; b < inputs.size(); ++b) {
    flat.insert(flat.end(), inputs[b].begin(), inputs[b].end());
    for (const auto& v : c["logprobs"][b]) {
      if (!v.is_null()) {
        nll -= v.get<double>();
        ++scored;
      }
    }
  }
  EvalOptions options;
  options.settings = SettingsOf(c);
  options.tgt_len = c["tgt_len"];
  options.batch = static_cast<int>(inputs.size());
  auto result = Evaluate(**model, flat, options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->scored, scored);
  EXPECT_NEAR(result->loss, nll / scored, kLogProbTolerance);
}

INSTANTIATE_TEST_SUITE_P(Cases, GoldenTest, ::testing::ValuesIn(CaseNames()),
                         [](const auto& param_info) { return param_info.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GoldenTest);

TEST(GoldenFiles, Present) {
  EXPECT_GE(CaseNames().size(), 10u) << "tests/golden/cases is missing or incomplete: regenerate with "
                                        "/usr/bin/python3 tests/reference/make_goldens.py";
}

// A case in another format than this build reads is refused, not misread, and the refusal says how to
// regenerate the files: with the case's own "regenerate" command, or the known one when it has none.
TEST(GoldenFiles, AStaleFormatVersionIsRefusedWithTheRegenerateHint) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("golden_format_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ifstream in(GoldenDir() + "/cases/plain_postln_xl.json");
  const std::string current((std::istreambuf_iterator<char>(in)), {});
  const std::string header = "{\n  \"format_version\": " + std::to_string(golden::kFormatVersion) +
                             ",\n  \"regenerate\": \"" + golden::kRegenerateCommand + "\",\n";
  ASSERT_EQ(current.rfind(header, 0), 0u) << "make_goldens.py writes these two keys first";
  // The case with its first two keys replaced by `keys`, written to dir/name.
  auto variant = [&](const std::string& name, const std::string& keys) {
    const std::string path = (dir / name).string();
    std::ofstream(path) << "{\n" << keys << current.substr(header.size());
    return path;
  };
  const std::string old_version = std::to_string(golden::kFormatVersion - 1);

  absl::StatusOr<json> read = golden::ReadCaseFile(
      variant("stale.json", "  \"format_version\": " + old_version + ",\n  \"regenerate\": \"make goldens-v0\",\n"));
  EXPECT_THAT(read, StatusIs(absl::StatusCode::kFailedPrecondition,
                             AllOf(HasSubstr("has format_version " + old_version),
                                   HasSubstr("regenerate the golden files with make goldens-v0"))));

  read = golden::ReadCaseFile(variant("unversioned.json", ""));
  EXPECT_THAT(read, StatusIs(absl::StatusCode::kFailedPrecondition,
                             AllOf(HasSubstr("has no format_version"),
                                   HasSubstr(std::string("regenerate the golden files with ") +
                                             golden::kRegenerateCommand))));

  EXPECT_TRUE(golden::ReadCaseFile(variant("current.json", header.substr(2))).ok());
  fs::remove_all(dir);
}

}  // namespace
}  // namespace trams::engine
