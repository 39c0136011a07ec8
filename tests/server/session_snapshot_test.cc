// A session snapshot's "session" section (server/session_snapshot.h) read strictly: every count, time and
// position must be a JSON integer that fits its field. A float, an out-of-range integer or 8.5 is DATA_LOSS
// naming the field, never a cast (a fuzzer found segment_len 7.7e37 cast to int: undefined behaviour;
// an int64 like 2^32 + 8 used to be truncated to 8 and accepted).
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "engine/snapshot_file.h"
#include "nlohmann/json.hpp"
#include "server/session_snapshot.h"
#include "tests/engine/plain_model.h"
#include "tests/testing/status_matchers.h"

namespace trams::server {
namespace {

using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

class SessionSnapshotTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = engine::test::LoadModel();
    ASSERT_NE(model_, nullptr);
    identity_ = {model_->model_fingerprint(), "byte"};
    auto stream = *model_->NewHostStream(engine::TramsSettings::Trams(24, 4, 8));
    const std::vector<int32_t> ids = engine::test::Tokens(30, 3);
    engine::test::Score(*model_, stream.get(), ids, 6);
    SessionRecord record;
    record.id = "doc";
    record.segment_len = 6;
    record.tokens_scored = 30;
    record.nll_sum = 12.5;
    record.recent_ids.assign(ids.end() - 10, ids.end());
    record.recent_first = 20;
    record.recent_ids_kept = 10;
    record.last_selection = {24, 6, 0, {{{1, 2}, {3}}, {}}, {{{0.5f, 0.25f}, {0.125f}}, {}}};
    absl::StatusOr<std::string> blob = EncodeSessionSnapshot(std::move(record), *model_->ExportStream(*stream),
                                                             identity_, engine::SnapshotCompression::kNone);
    ASSERT_TRUE(blob.ok()) << blob.status();
    absl::StatusOr<std::vector<engine::SnapshotSection>> sections = engine::DecodeSnapshot(*blob, uint64_t{1} << 26);
    ASSERT_TRUE(sections.ok()) << sections.status();
    good_ = *std::move(sections);
  }
  // The good sections with the "session" (or "stream") JSON changed by `edit`.
  absl::Status ReadEdited(const std::string& section, void (*edit)(nlohmann::json&)) {
    std::vector<engine::SnapshotSection> sections = good_;
    for (engine::SnapshotSection& s : sections) {
      if (s.name != section) continue;
      nlohmann::json meta = nlohmann::json::parse(s.bytes);
      edit(meta);
      s.bytes = meta.dump();
    }
    return SessionImageFromSections(std::move(sections), model_->config(), identity_).status();
  }
  std::unique_ptr<engine::TransformerXL> model_;
  SnapshotIdentity identity_;
  std::vector<engine::SnapshotSection> good_;
};

TEST_F(SessionSnapshotTest, GoodSnapshotReads) {
  absl::StatusOr<SessionImage> image = SessionImageFromSections(good_, model_->config(), identity_);
  ASSERT_TRUE(image.ok()) << image.status();
  EXPECT_EQ(image->record.segment_len, 6);
  EXPECT_EQ(image->record.recent_first, 20);
  EXPECT_EQ(image->record.last_selection.selected[0][1], std::vector<int64_t>{3});
  EXPECT_EQ(image->image.position, 30);
}

TEST_F(SessionSnapshotTest, SegmentLenMustBeAnIntegerThatFits) {
  const auto malformed = StatusIs(absl::StatusCode::kDataLoss, HasSubstr("'segment_len' must be an integer"));
  EXPECT_THAT(ReadEdited("session", [](nlohmann::json& m) { m["segment_len"] = 6.0; }), malformed);
  EXPECT_THAT(ReadEdited("session", [](nlohmann::json& m) { m["segment_len"] = 6.5; }), malformed);
  EXPECT_THAT(ReadEdited("session", [](nlohmann::json& m) { m["segment_len"] = 7.7e37; }), malformed);
  EXPECT_THAT(ReadEdited("session", [](nlohmann::json& m) { m["segment_len"] = (int64_t{1} << 32) + 6; }), malformed);
  EXPECT_THAT(ReadEdited("session", [](nlohmann::json& m) { m["segment_len"] = "6"; }), malformed);
  EXPECT_THAT(ReadEdited("session", [](nlohmann::json& m) { m["segment_len"] = true; }), malformed);
}

TEST_F(SessionSnapshotTest, CountersAndSelectionMustBeIntegers) {
  EXPECT_THAT(ReadEdited("session", [](nlohmann::json& m) { m["created_ms"] = 1e300; }),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("'created_ms'")));
  EXPECT_THAT(ReadEdited("session", [](nlohmann::json& m) { m["tokens_scored"] = uint64_t{1} << 63; }),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("'tokens_scored'")));
  EXPECT_THAT(ReadEdited("session", [](nlohmann::json& m) { m["selection"]["segment_len"] = -1e20; }),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("'segment_len'")));
  EXPECT_THAT(ReadEdited("session", [](nlohmann::json& m) { m["selection"]["selected"][0][0][1] = 2.5; }),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("'selected'")));
  EXPECT_THAT(ReadEdited("session", [](nlohmann::json& m) { m["selection"]["selected"][0] = 3; }),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("'selected'")));
}

TEST_F(SessionSnapshotTest, StreamSizesMustBeIntegersThatFit) {
  // 2^32 + 24 used to read as 24, the pool's real size.
  EXPECT_THAT(ReadEdited("stream", [](nlohmann::json& m) { m["size"] = (int64_t{1} << 32) + 24; }),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("'size' must be an integer")));
  EXPECT_THAT(ReadEdited("stream", [](nlohmann::json& m) { m["position"] = 30.0; }),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("'position' must be an integer")));
  EXPECT_THAT(ReadEdited("stream", [](nlohmann::json& m) { m["settings"]["topk"] = 4e10; }),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("'topk' must be an integer")));
  EXPECT_THAT(ReadEdited("stream", [](nlohmann::json& m) { m["settings"]["layers"] = nlohmann::json::array({0.5}); }),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("'layers' must be an integer")));
}

TEST_F(SessionSnapshotTest, CountersAndPositionsPastTwoToTheSixtyTwoAreDataLoss) {
  // Each fits int64 but would overflow a sum or difference later (recent_first + ids, position - recent_first).
  const auto outside = StatusIs(absl::StatusCode::kDataLoss, HasSubstr("outside [0, 2^62]"));
  EXPECT_THAT(ReadEdited("session", [](nlohmann::json& m) { m["recent_first"] = INT64_MAX; }), outside);
  EXPECT_THAT(ReadEdited("session", [](nlohmann::json& m) { m["created_ms"] = -1; }), outside);
  EXPECT_THAT(ReadEdited("session", [](nlohmann::json& m) { m["last_used_ms"] = INT64_MIN; }), outside);
  EXPECT_THAT(ReadEdited("session", [](nlohmann::json& m) { m["selection"]["selected"][0][0][0] = INT64_MIN; }),
              outside);
  EXPECT_THAT(ReadEdited("stream", [](nlohmann::json& m) { m["position"] = (int64_t{1} << 62) + 1; }),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("outside [0, 2^62]")));
}

}  // namespace
}  // namespace trams::server
