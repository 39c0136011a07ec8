// libFuzzer target: the API keys file (server/auth_keys.h) and the authorization metadata on arbitrary
// bytes never crash; a file that parses authenticates each of its own tenants' keys only through their
// hashes (an arbitrary header is refused unless its key hashes to a listed one), with one message; its
// quotas belong to valid tenant names and are never negative.
#include <cstddef>
#include <cstdint>
#include <string>

#include "server/auth_keys.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using trams::server::AuthKeys;
  const std::string input(reinterpret_cast<const char*>(data), size);
  // The first line is a header to try; the rest is the keys file.
  const size_t nl = input.find('\n');
  const std::string header = input.substr(0, nl == std::string::npos ? input.size() : nl);
  const std::string file = nl == std::string::npos ? std::string() : input.substr(nl + 1);
  absl::StatusOr<AuthKeys> keys = AuthKeys::Parse(file);
  if (!keys.ok()) {
    FUZZ_CHECK(keys.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  FUZZ_CHECK(keys->size() > 0);
  FUZZ_CHECK(!keys->quotas().empty() && keys->quotas().size() <= keys->size());
  for (const auto& [name, q] : keys->quotas()) {
    FUZZ_CHECK(trams::server::IsValidTenantName(name));
    FUZZ_CHECK(q.max_sessions >= 0 && q.max_pool_bytes >= 0 && q.tokens_per_second >= 0 && q.max_concurrent_calls >= 0);
  }
  absl::StatusOr<std::string> tenant = keys->Authenticate(header);
  FUZZ_CHECK(tenant.ok() || tenant.status().code() == absl::StatusCode::kUnauthenticated);
  if (tenant.ok()) FUZZ_CHECK(header.rfind("Bearer ", 0) == 0 && !tenant->empty());
  return 0;
}
