// API keys (--auth_keys FILE): who may call the server. One line per key, the key itself never stored:
//
//   # tenant   key hash                                 quotas (optional, each 0 or more; absent: none)
//   alice      sha256:<64 hex digits of SHA-256(key)>  max_sessions=16 max_pool_bytes=1073741824
//   bob        sha256:<...>                            tokens_per_second=5000 max_concurrent_calls=2
//
// A tenant may have several keys (lines); its quotas are what its lines give, and two lines may not give
// one quota different values.
// A call presents its key as `authorization: Bearer <key>` metadata. Authenticate hashes it and compares
// the hash with every entry in constant time (no early exit, no timing that depends on where it matched),
// and answers the same UNAUTHENTICATED message for a missing, malformed or unknown key.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace trams::server {

// Tenant names: 1-64 characters from [A-Za-z0-9_.-].
bool IsValidTenantName(absl::string_view tenant);

// What one tenant may hold and use; 0 is no quota. Sessions and pool bytes count the sessions in memory
// (SessionManager), calls and tokens the running Score, Generate, Export and Import calls (TenantLimiter).
struct TenantQuota {
  int64_t max_sessions = 0;
  int64_t max_pool_bytes = 0;
  int64_t tokens_per_second = 0;  // tokens run through the model (scored, generated, prompts)
  int64_t max_concurrent_calls = 0;
};

class AuthKeys {
 public:
  // INVALID_ARGUMENT naming the line for anything that is not `TENANT sha256:HEX` (tenant names:
  // [A-Za-z0-9_.-]{1,64}), a repeated hash, or a file without keys.
  static absl::StatusOr<AuthKeys> Parse(absl::string_view text);
  static absl::StatusOr<AuthKeys> Load(const std::string& path);

  // The tenant whose key `authorization` (the metadata's value, "Bearer <key>") carries.
  absl::StatusOr<std::string> Authenticate(absl::string_view authorization) const;
  size_t size() const { return entries_.size(); }
  // Every tenant that has a key, with its quotas (all 0 for a tenant without any).
  const std::map<std::string, TenantQuota>& quotas() const { return quotas_; }

  // SHA-256 of `data` as 64 lowercase hex digits (for the keys file: `sha256:` + this).
  static std::string Sha256Hex(absl::string_view data);

 private:
  struct Entry {
    std::string tenant;
    unsigned char hash[32];
  };
  std::vector<Entry> entries_;
  std::map<std::string, TenantQuota> quotas_;
};

}  // namespace trams::server
