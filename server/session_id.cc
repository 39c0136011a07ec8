#include "server/session_id.h"

#include <sys/random.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "engine/echo.h"

namespace trams::server {

std::string RandomSessionId() {
  unsigned char bytes[16];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    const ssize_t n = ::getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) std::abort();  // the kernel's CSPRNG failing is not a state to serve in
    got += static_cast<size_t>(n);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = "s-";
  for (unsigned char b : bytes) {
    id += kHex[b >> 4];
    id += kHex[b & 15];
  }
  return id;
}
namespace {
constexpr char kSessionHeader[] = "x-session-id";
}  // namespace

std::string SessionIdHeader(const grpc::CallbackServerContext* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find(kSessionHeader);
  return it == md.end() ? std::string() : std::string(it->second.data(), it->second.size());
}

absl::StatusOr<std::string> SessionIdOf(const grpc::CallbackServerContext* ctx, const std::string& field,
                                        absl::string_view tenant) {
  const std::string header = SessionIdHeader(ctx);
  if (!field.empty() && !header.empty() && field != header) {
    return absl::InvalidArgumentError(absl::StrCat("session_id '", engine::EchoForError(field),
                                                   "' and x-session-id metadata '", engine::EchoForError(header),
                                                   "' disagree"));
  }
  if (field.empty() && header.empty()) {
    return absl::InvalidArgumentError("no session: set session_id or the x-session-id metadata");
  }
  std::string id = field.empty() ? header : field;
  if (!IsValidSessionId(id)) return InvalidSessionId(id);  // later messages may quote it whole
  return ScopedSessionId(tenant, id);
}

}  // namespace trams::server
