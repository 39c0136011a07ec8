#include "server/listen_address.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/echo.h"

namespace trams::server {
namespace {

absl::Status Bad(absl::string_view flag, absl::string_view address, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, " '", engine::EchoForError(address), "': ", why,
                                                 " (use HOST:PORT, [IPV6]:PORT or unix:PATH)"));
}

}  // namespace

absl::Status CheckListenAddress(absl::string_view flag, absl::string_view address) {
  if (absl::StartsWith(address, "unix:")) {
    if (address.size() == 5) return Bad(flag, address, "the unix socket path is empty");
    return absl::OkStatus();
  }
  absl::string_view host, port;
  if (absl::StartsWith(address, "[")) {
    const size_t close = address.find(']');
    if (close == absl::string_view::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      return Bad(flag, address, "an IPv6 host must be [ADDR]:PORT");
    }
    host = address.substr(1, close - 1);
    port = address.substr(close + 2);
  } else {
    const size_t colon = address.rfind(':');
    if (colon == absl::string_view::npos) return Bad(flag, address, "no port");
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
    if (host.find(':') != absl::string_view::npos) return Bad(flag, address, "an IPv6 host needs brackets");
  }
  if (host.empty()) return Bad(flag, address, "no host (0.0.0.0 for every interface, 127.0.0.1 for this machine)");
  if (port.empty() || port.size() > 5) return Bad(flag, address, "the port must be a number from 0 to 65535");
  int value = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return Bad(flag, address, "the port must be a number from 0 to 65535");
    value = value * 10 + (c - '0');
  }
  if (value > 65535) return Bad(flag, address, "the port must be a number from 0 to 65535");
  return absl::OkStatus();
}

bool IsLoopbackAddress(absl::string_view address) {
  return absl::StartsWith(address, "127.") || absl::StartsWith(address, "[::1]:") ||
         absl::StartsWith(address, "localhost:") || absl::StartsWith(address, "unix:");
}

}  // namespace trams::server
