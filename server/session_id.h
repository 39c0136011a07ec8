// Where a request names a session (its field and/or `x-session-id` metadata), and server-chosen ids.
// The ids' syntax and tenant scoping: server/scoped_id.h.
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/scoped_id.h"

namespace trams::server {

// A server-chosen id: "s-" + 32 hex digits of 128 bits from the kernel's CSPRNG (getrandom), so that no
// id can be predicted from earlier ones.
std::string RandomSessionId();

// The `x-session-id` metadata of a call ("" when absent).
std::string SessionIdHeader(const grpc::CallbackServerContext* ctx);
// The session a request names: `field` and/or the metadata (they must agree), checked, scoped in `tenant`.
absl::StatusOr<std::string> SessionIdOf(const grpc::CallbackServerContext* ctx, const std::string& field,
                                        absl::string_view tenant);

}  // namespace trams::server
