// gmock matchers for statuses in tests: StatusIs(code, message_matcher) on absl::Status,
// absl::StatusOr<T> (an absl::StatusCode) and grpc::Status (a grpc::StatusCode), e.g.
//   EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("outside the vocabulary")));
// The code's type must be the status's own, so an absl code never silently matches a gRPC status. Needs no
// gRPC header: a grpc::Status is recognised by its error_code()/error_message(). Test-only.
#pragma once

#include <gmock/gmock.h>

#include <ostream>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace trams::status_matchers {
namespace internal {

// The code and message of an absl::Status, an absl::StatusOr<T> or a grpc::Status.
template <typename S>
auto CodeAndMessage(const S& s) {
  if constexpr (requires { s.error_code(); s.error_message(); }) {
    return std::make_pair(s.error_code(), std::string(s.error_message()));
  } else if constexpr (requires { s.status(); }) {
    return CodeAndMessage(s.status());
  } else {
    return std::make_pair(s.code(), std::string(s.message()));
  }
}

inline std::string CodeName(absl::StatusCode code) { return absl::StatusCodeToString(code); }
// grpc::StatusCode uses the canonical numbering, so absl's names name it too.
template <typename Code>
std::string CodeName(Code code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(static_cast<int>(code)));
}

template <typename Code>
class StatusIsMatcher {
 public:
  StatusIsMatcher(Code code, ::testing::Matcher<const std::string&> message)
      : code_(code), message_(std::move(message)) {}

  template <typename S>
  bool MatchAndExplain(const S& status, ::testing::MatchResultListener* listener) const {
    const auto [code, message] = CodeAndMessage(status);
    static_assert(std::is_same_v<std::remove_cv_t<decltype(code)>, Code>,
                  "StatusIs: absl::StatusCode for absl::Status(Or), grpc::StatusCode for grpc::Status");
    *listener << "whose code is " << CodeName(code) << " and message is \"" << message << "\"";
    if (code != code_) return false;
    ::testing::StringMatchResultListener message_listener;
    const bool matched = message_.MatchAndExplain(message, &message_listener);
    if (!message_listener.str().empty()) *listener << ", " << message_listener.str();
    return matched;
  }
  void DescribeTo(std::ostream* os) const {
    *os << "has code " << CodeName(code_) << " and a message that ";
    message_.DescribeTo(os);
  }
  void DescribeNegationTo(std::ostream* os) const {
    *os << "does not have code " << CodeName(code_) << " or has a message that ";
    message_.DescribeNegationTo(os);
  }

 private:
  Code code_;
  ::testing::Matcher<const std::string&> message_;
};

}  // namespace internal

// Matches a status with code `code` whose message matches `message` (any message by default).
template <typename Code>
::testing::PolymorphicMatcher<internal::StatusIsMatcher<Code>> StatusIs(
    Code code, ::testing::Matcher<const std::string&> message = ::testing::_) {
  return ::testing::MakePolymorphicMatcher(internal::StatusIsMatcher<Code>(code, std::move(message)));
}

}  // namespace trams::status_matchers
