// The snapshot container: round trips (raw and zstd), and every truncation and every flipped bit of a
// real snapshot is an error saying what failed, never a crash and never a silently different snapshot.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "engine/snapshot_file.h"
#include "tests/testing/status_matchers.h"

namespace trams::engine {
namespace {

using ::testing::HasSubstr;
using ::trams::status_matchers::StatusIs;

std::vector<SnapshotSection> Sections() {
  std::string pool(4096, '\0');
  std::mt19937 rng(7);
  for (size_t i = 0; i < pool.size(); i += 4) pool[i] = static_cast<char>(rng() % 8);  // compressible floats-ish
  std::string binary;
  for (int i = 0; i < 256; ++i) binary.push_back(static_cast<char>(i));
  return {{"settings", "{\"mode\":\"trams\",\"mem_len\":24}"}, {"empty", ""}, {"pool.0", pool}, {"bytes", binary}};
}

class SnapshotFileTest : public ::testing::TestWithParam<SnapshotCompression> {};

TEST_P(SnapshotFileTest, RoundTrips) {
  absl::StatusOr<std::string> blob = EncodeSnapshot(Sections(), GetParam());
  ASSERT_TRUE(blob.ok()) << blob.status();
  absl::StatusOr<std::vector<SnapshotSection>> back = DecodeSnapshot(*blob);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, Sections());
  ASSERT_NE(FindSnapshotSection(*back, "pool.0"), nullptr);
  EXPECT_EQ(FindSnapshotSection(*back, "missing"), nullptr);
}

TEST_P(SnapshotFileTest, EveryTruncationIsDataLoss) {
  const std::string blob = *EncodeSnapshot(Sections(), GetParam());
  for (size_t n = 0; n < blob.size(); ++n) {
    absl::StatusOr<std::vector<SnapshotSection>> r = DecodeSnapshot(absl::string_view(blob).substr(0, n));
    ASSERT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << "prefix of " << n << " bytes: " << r.status();
  }
}

TEST_P(SnapshotFileTest, EveryFlippedBitIsAnError) {
  const std::string blob = *EncodeSnapshot(Sections(), GetParam());
  for (size_t i = 0; i < blob.size(); ++i) {
    std::string bad = blob;
    bad[i] = static_cast<char>(bad[i] ^ (1 << (i % 8)));
    absl::StatusOr<std::vector<SnapshotSection>> r = DecodeSnapshot(bad);
    ASSERT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << "byte " << i << ": " << r.status();
  }
}

INSTANTIATE_TEST_SUITE_P(Codecs, SnapshotFileTest,
                         ::testing::Values(SnapshotCompression::kNone, SnapshotCompression::kZstd),
                         [](const ::testing::TestParamInfo<SnapshotCompression>& p) {
                           return p.param == SnapshotCompression::kNone ? std::string("raw") : std::string("zstd");
                         });

TEST(SnapshotFileFormatTest, CompressionShrinksRepetitivePools) {
  const size_t raw = EncodeSnapshot(Sections(), SnapshotCompression::kNone)->size();
  const size_t zstd = EncodeSnapshot(Sections(), SnapshotCompression::kZstd)->size();
  EXPECT_LT(zstd, raw / 2) << raw << " raw bytes, " << zstd << " compressed";
}

// Rewrites the version field and the trailing checksum, as a newer writer would.
std::string WithVersion(std::string blob, uint32_t version);

TEST(SnapshotFileFormatTest, NewerVersionsAreFailedPreconditionNotDataLoss) {
  const std::string blob = WithVersion(*EncodeSnapshot(Sections(), SnapshotCompression::kNone), 2);
  EXPECT_THAT(DecodeSnapshot(blob), StatusIs(absl::StatusCode::kFailedPrecondition,
                                             HasSubstr("format version 2; this server reads 1")));
  EXPECT_THAT(DecodeSnapshot(WithVersion(blob, 0)),
              StatusIs(absl::StatusCode::kDataLoss, HasSubstr("unknown format version 0")));
}

TEST(SnapshotFileFormatTest, DecompressionPastTheCallersBoundIsRefusedFirst) {
  const std::vector<SnapshotSection> zeros = {{"pool.0", std::string(1 << 20, '\0')}};
  const std::string blob = *EncodeSnapshot(zeros, SnapshotCompression::kZstd);
  ASSERT_LT(blob.size(), size_t{1} << 12) << "a MiB of zeros compresses to a few bytes";
  EXPECT_THAT(DecodeSnapshot(blob, 1 << 19),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("more than the 524288 allowed here")));
  absl::StatusOr<std::vector<SnapshotSection>> fits = DecodeSnapshot(blob, 1 << 20);
  ASSERT_TRUE(fits.ok()) << fits.status();
  EXPECT_EQ(*fits, zeros);
}

TEST(SnapshotFileFormatTest, NotASnapshotIsDataLoss) {
  EXPECT_THAT(DecodeSnapshot("{\"json\": true}"), StatusIs(absl::StatusCode::kDataLoss, HasSubstr("TRAMSNAP")));
  EXPECT_THAT(DecodeSnapshot(""), StatusIs(absl::StatusCode::kDataLoss, HasSubstr("TRAMSNAP")));
}

TEST(SnapshotFileFormatTest, BadSectionsAreRefusedWhenWriting) {
  EXPECT_THAT(EncodeSnapshot({{"", "x"}}, SnapshotCompression::kNone),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("names are 1-64 bytes")));
  EXPECT_THAT(EncodeSnapshot({{"a", "x"}, {"a", "y"}}, SnapshotCompression::kNone),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("'a' given twice")));
  EXPECT_THAT(EncodeSnapshot(std::vector<SnapshotSection>(kMaxSnapshotSections + 1), SnapshotCompression::kNone),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("at most 256 sections")));
}

}  // namespace
}  // namespace trams::engine

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace trams::engine {
namespace {
std::string WithVersion(std::string blob, uint32_t version) {
  for (int i = 0; i < 4; ++i) blob[8 + i] = static_cast<char>((version >> (8 * i)) & 0xff);
  const uint64_t h = XXH3_64bits(blob.data(), blob.size() - 8);
  for (int i = 0; i < 8; ++i) blob[blob.size() - 8 + i] = static_cast<char>((h >> (8 * i)) & 0xff);
  return blob;
}
}  // namespace
}  // namespace trams::engine
