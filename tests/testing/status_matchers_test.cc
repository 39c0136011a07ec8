// StatusIs itself: a wrong code or a wrong message must fail to match, for each status type, or the
// tests converted to it would check less than before.
#include "tests/testing/status_matchers.h"

#include <grpcpp/support/status.h>
#include <gtest/gtest.h>

namespace trams::status_matchers {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(StatusIsTest, MatchesAbslStatusByCodeAndMessage) {
  const absl::Status s = absl::InvalidArgumentError("tgt_len must be positive");
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tgt_len")));
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(s, Not(StatusIs(absl::StatusCode::kNotFound, HasSubstr("tgt_len"))));
  EXPECT_THAT(s, Not(StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("batch"))));
}

TEST(StatusIsTest, MatchesAbslStatusOrThroughItsStatus) {
  const absl::StatusOr<int> failed = absl::NotFoundError("no session 'a'");
  EXPECT_THAT(failed, StatusIs(absl::StatusCode::kNotFound, HasSubstr("'a'")));
  EXPECT_THAT(failed, Not(StatusIs(absl::StatusCode::kNotFound, HasSubstr("'b'"))));
  EXPECT_THAT(absl::StatusOr<int>(3), Not(StatusIs(absl::StatusCode::kNotFound)));
}

TEST(StatusIsTest, MatchesGrpcStatusWithGrpcCodes) {
  const grpc::Status s(grpc::StatusCode::RESOURCE_EXHAUSTED, "more than the whole memory budget");
  EXPECT_THAT(s, StatusIs(grpc::StatusCode::RESOURCE_EXHAUSTED, HasSubstr("memory budget")));
  EXPECT_THAT(s, Not(StatusIs(grpc::StatusCode::NOT_FOUND, HasSubstr("memory budget"))));
  EXPECT_THAT(s, Not(StatusIs(grpc::StatusCode::RESOURCE_EXHAUSTED, HasSubstr("queue"))));
}

}  // namespace
}  // namespace trams::status_matchers
