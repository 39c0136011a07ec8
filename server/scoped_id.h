// Session ids and their tenants, as syntax (no gRPC): what a valid id is, and how ids are scoped.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace trams::server {

// Session ids are 1-128 characters from [A-Za-z0-9._:-]; the error quotes a bad one safely.
bool IsValidSessionId(const std::string& id);
absl::Status InvalidSessionId(const std::string& id);

// Sessions are namespaced per tenant (--auth_keys): the manager and the state stores key a session by
// its scoped id, "TENANT+ID" ('+' is in neither alphabet, so two tenants' ids never meet), which is the
// bare id without keys (tenant ""). Clients only ever see bare ids. A scoped id whose bare part is empty
// ("TENANT+", or "") asks the manager to choose a random id in that tenant.
std::string ScopedSessionId(absl::string_view tenant, absl::string_view id);
// The client's part of a scoped id; its tenant ("" without one); whether it is well-formed.
absl::string_view BareSessionId(absl::string_view scoped);
absl::string_view TenantOfSessionId(absl::string_view scoped);
bool IsValidScopedSessionId(absl::string_view scoped);
// `session 'ID'` with the bare id: how every message names a session.
std::string SessionRef(absl::string_view scoped);

}  // namespace trams::server
