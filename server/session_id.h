// Session ids: their syntax, and where a request names one (its field and/or `x-session-id` metadata).
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace trams::server {

// Session ids are 1-128 characters from [A-Za-z0-9._:-]; the error quotes a bad one safely.
bool IsValidSessionId(const std::string& id);
absl::Status InvalidSessionId(const std::string& id);

// A server-chosen id: "s-" + 32 hex digits of 128 bits from the kernel's CSPRNG (getrandom), so that no
// id can be predicted from earlier ones.
std::string RandomSessionId();

// The `x-session-id` metadata of a call ("" when absent).
std::string SessionIdHeader(const grpc::CallbackServerContext* ctx);
// The session a request names: `field` and/or the metadata (they must agree), checked.
absl::StatusOr<std::string> SessionIdOf(const grpc::CallbackServerContext* ctx, const std::string& field);

}  // namespace trams::server
