#include "server/scoped_id.h"

#include <cctype>

#include "absl/strings/str_cat.h"
#include "engine/echo.h"
#include "server/auth_keys.h"

namespace trams::server {

bool IsValidSessionId(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == ':' || c == '-')) return false;
  }
  return true;
}

absl::Status InvalidSessionId(const std::string& id) {
  return absl::InvalidArgumentError(absl::StrCat("session id '", engine::EchoForError(id), "' is not valid: use 1-128 ",
                                                 "characters from [A-Za-z0-9._:-]"));
}

std::string ScopedSessionId(absl::string_view tenant, absl::string_view id) {
  if (tenant.empty()) return std::string(id);
  return absl::StrCat(tenant, "+", id);
}

absl::string_view BareSessionId(absl::string_view scoped) {
  const size_t plus = scoped.find('+');
  return plus == absl::string_view::npos ? scoped : scoped.substr(plus + 1);
}

absl::string_view TenantOfSessionId(absl::string_view scoped) {
  const size_t plus = scoped.find('+');
  return plus == absl::string_view::npos ? absl::string_view() : scoped.substr(0, plus);
}

bool IsValidScopedSessionId(absl::string_view scoped) {
  const size_t plus = scoped.find('+');
  if (plus != absl::string_view::npos && !IsValidTenantName(scoped.substr(0, plus))) return false;
  return IsValidSessionId(std::string(BareSessionId(scoped)));
}

std::string SessionRef(absl::string_view scoped) { return absl::StrCat("session '", BareSessionId(scoped), "'"); }

}  // namespace trams::server
