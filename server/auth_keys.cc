#include "server/auth_keys.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <cctype>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "engine/echo.h"

namespace trams::server {
namespace {

constexpr char kUnauthenticated[] =
    "missing or invalid API key: send the metadata 'authorization: Bearer <key>' with a key of --auth_keys";

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

bool IsValidTenantName(absl::string_view t) {
  if (t.empty() || t.size() > 64) return false;
  for (char c : t) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '.' && c != '-') return false;
  }
  return true;
}

std::string AuthKeys::Sha256Hex(absl::string_view data) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char b : digest) {
    out += kHex[b >> 4];
    out += kHex[b & 15];
  }
  return out;
}

absl::StatusOr<AuthKeys> AuthKeys::Parse(absl::string_view text) {
  AuthKeys keys;
  std::map<std::string, std::map<std::string, int64_t>> given;  // tenant -> quota -> value, as written
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (const size_t hash = line.find('#'); hash != absl::string_view::npos) line = line.substr(0, hash);
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    std::vector<absl::string_view> fields = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat("--auth_keys line ", line_no, ": ", why,
                                                     " (each line: TENANT sha256:<64 hex digits of the key's SHA-256>",
                                                     " [QUOTA=N ...])"));
    };
    if (fields.size() < 2) return bad(absl::StrCat(fields.size(), " fields"));
    if (!IsValidTenantName(fields[0])) return bad("a tenant name is 1-64 characters from [A-Za-z0-9_.-]");
    if (!absl::StartsWith(fields[1], "sha256:") || fields[1].size() != 7 + 64) return bad("not a sha256: hash");
    Entry e;
    e.tenant = std::string(fields[0]);
    for (int i = 0; i < 32; ++i) {
      const int hi = HexDigit(fields[1][7 + 2 * i]), lo = HexDigit(fields[1][8 + 2 * i]);
      if (hi < 0 || lo < 0) return bad("the hash is not hexadecimal");
      e.hash[i] = static_cast<unsigned char>(hi * 16 + lo);
    }
    for (const Entry& other : keys.entries_) {
      if (std::memcmp(other.hash, e.hash, sizeof(e.hash)) == 0) return bad("the same key hash is listed twice");
    }
    TenantQuota& quota = keys.quotas_[e.tenant];
    for (size_t f = 2; f < fields.size(); ++f) {
      const size_t eq = fields[f].find('=');
      const absl::string_view name = fields[f].substr(0, eq);
      int64_t* slot = name == "max_sessions"           ? &quota.max_sessions
                      : name == "max_pool_bytes"       ? &quota.max_pool_bytes
                      : name == "tokens_per_second"    ? &quota.tokens_per_second
                      : name == "max_concurrent_calls" ? &quota.max_concurrent_calls
                                                       : nullptr;
      if (slot == nullptr || eq == absl::string_view::npos) {
        return bad(absl::StrCat("'", engine::EchoForError(std::string_view(fields[f].data(), fields[f].size())), "' is not a quota (max_sessions, max_pool_bytes, ",
                                "tokens_per_second or max_concurrent_calls, as NAME=N)"));
      }
      const absl::string_view digits = fields[f].substr(eq + 1);
      int64_t value = 0;
      if (digits.empty() || digits.find_first_not_of("0123456789") != absl::string_view::npos ||
          !absl::SimpleAtoi(digits, &value)) {
        return bad(absl::StrCat("quota ", name, " must be a whole number from 0 up"));
      }
      auto [it, added] = given[e.tenant].emplace(std::string(name), value);
      if (!added && it->second != value) {
        return bad(absl::StrCat("tenant ", e.tenant, "'s ", name, " was given as ", it->second, " already"));
      }
      *slot = value;
    }
    keys.entries_.push_back(std::move(e));
  }
  if (keys.entries_.empty()) return absl::InvalidArgumentError("--auth_keys holds no keys");
  return keys;
}

absl::StatusOr<AuthKeys> AuthKeys::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::FailedPreconditionError(absl::StrCat("--auth_keys ", path, ": cannot be read"));
  std::stringstream ss;
  ss << in.rdbuf();
  return Parse(ss.str());
}

absl::StatusOr<std::string> AuthKeys::Authenticate(absl::string_view authorization) const {
  constexpr absl::string_view kBearer = "Bearer ";
  absl::string_view key;
  const bool well_formed = absl::StartsWith(authorization, kBearer) && authorization.size() > kBearer.size();
  if (well_formed) key = authorization.substr(kBearer.size());
  // Hash whatever came (also a malformed value), and compare with every entry, so that neither the time
  // nor the answer tells a malformed key from an unknown one, or where a key matched.
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(key.data()), key.size(), digest);
  const Entry* match = nullptr;
  for (const Entry& e : entries_) {
    const bool equal = CRYPTO_memcmp(e.hash, digest, sizeof(digest)) == 0;
    match = equal && well_formed ? &e : match;
  }
  if (match == nullptr) return absl::UnauthenticatedError(kUnauthenticated);
  return match->tenant;
}

}  // namespace trams::server
