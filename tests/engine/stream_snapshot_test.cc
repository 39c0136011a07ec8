// A stream image as snapshot sections (engine/stream_snapshot.h): what the reader refuses, and how. Every
// section missing, malformed or not fitting the model is DATA_LOSS saying what; another model's snapshot
// is FAILED_PRECONDITION naming both fingerprints. (Round trips on every backend: tests/cuda/stream_image_test.)
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/stream_snapshot.h"
#include "engine/transformer_xl.h"
#include "tests/engine/plain_model.h"
#include "tests/testing/status_matchers.h"

namespace trams::engine {
namespace {

using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

class StreamSnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = test::LoadModel();
    ASSERT_NE(model_, nullptr);
    auto stream = *model_->NewHostStream(TramsSettings::Trams(24, 4, 8));
    test::Score(*model_, stream.get(), test::Tokens(30, 3), 8);
    AppendStreamSections(*model_->ExportStream(*stream), model_->model_fingerprint(), &good_);
  }
  absl::Status Read(std::vector<SnapshotSection> sections) {
    return StreamImageFromSections(&sections, model_->config(), model_->model_fingerprint()).status();
  }
  SnapshotSection& Named(std::vector<SnapshotSection>& sections, const std::string& name) {
    for (SnapshotSection& s : sections) {
      if (s.name == name) return s;
    }
    ADD_FAILURE() << "no section " << name;
    return sections[0];
  }
  std::unique_ptr<TransformerXL> model_;
  std::vector<SnapshotSection> good_;
};

TEST_F(StreamSnapshotTest, GoodSectionsRead) {
  std::vector<SnapshotSection> sections = good_;
  absl::StatusOr<StreamImage> image = StreamImageFromSections(&sections, model_->config(), model_->model_fingerprint());
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->position, 30);
  EXPECT_EQ(image->size, 24);
  EXPECT_EQ(image->settings.topk, 4);
}

TEST_F(StreamSnapshotTest, EverySectionMissingIsDataLoss) {
  for (size_t drop = 0; drop < good_.size(); ++drop) {
    std::vector<SnapshotSection> sections = good_;
    sections.erase(sections.begin() + static_cast<std::ptrdiff_t>(drop));
    EXPECT_THAT(Read(sections), StatusIs(absl::StatusCode::kDataLoss)) << "without " << good_[drop].name;
  }
}

TEST_F(StreamSnapshotTest, MalformedMetadataIsDataLoss) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"not json", "malformed"},
      {R"({"model": 7})", "malformed"},
      {"{}", "malformed"},
  };
  for (const auto& [meta, why] : cases) {
    std::vector<SnapshotSection> sections = good_;
    Named(sections, "stream").bytes = meta;
    EXPECT_THAT(Read(sections), StatusIs(absl::StatusCode::kDataLoss, HasSubstr(why))) << meta;
  }
  std::vector<SnapshotSection> sections = good_;
  std::string& meta = Named(sections, "stream").bytes;
  meta.replace(meta.find("\"trams\""), 7, "\"bogus\"");
  EXPECT_THAT(Read(sections), StatusIs(absl::StatusCode::kDataLoss, HasSubstr("memory settings are invalid")));
  sections = good_;
  std::string& dtype = Named(sections, "stream").bytes;
  dtype.replace(dtype.find("\"f32\""), 5, "\"f64\"");
  EXPECT_THAT(Read(sections), StatusIs(absl::StatusCode::kDataLoss, HasSubstr("unknown pool dtype")));
}

TEST_F(StreamSnapshotTest, ArraysThatDoNotFitAreDataLoss) {
  for (const char* name : {"pool.keys", "pool.values", "pool.scores", "stream.hidden"}) {
    std::vector<SnapshotSection> sections = good_;
    Named(sections, name).bytes.resize(Named(sections, name).bytes.size() - 4);
    EXPECT_THAT(Read(sections), StatusIs(absl::StatusCode::kDataLoss, HasSubstr("does not fit"))) << name;
    sections = good_;
    Named(sections, name).bytes.push_back('x');  // not even whole floats
    EXPECT_THAT(Read(sections), StatusIs(absl::StatusCode::kDataLoss)) << name;
  }
  std::vector<SnapshotSection> sections = good_;
  std::string& meta = Named(sections, "stream").bytes;
  meta.replace(meta.find("\"size\":24"), 9, "\"size\":25");
  EXPECT_THAT(Read(sections), StatusIs(absl::StatusCode::kDataLoss, HasSubstr("capacity is 24")));
}

TEST_F(StreamSnapshotTest, AnotherModelIsFailedPreconditionNamingBoth) {
  std::vector<SnapshotSection> sections = good_;
  EXPECT_THAT(StreamImageFromSections(&sections, model_->config(), "xxh3:00000000000000ff").status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       ::testing::AllOf(HasSubstr(model_->model_fingerprint()), HasSubstr("xxh3:00000000000000ff"))));
}

}  // namespace
}  // namespace trams::engine
