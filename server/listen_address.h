// Checks a listen address before anything binds it, so that a typo fails the start with a clear
// message instead of serving somewhere unexpected (gRPC takes ":99999" and picks a random port).
#pragma once

#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace trams::server {

// `address` is HOST:PORT, [IPV6]:PORT or unix:PATH; PORT is 0 (pick one) to 65535. `flag` names the
// flag in the message.
absl::Status CheckListenAddress(absl::string_view flag, absl::string_view address);
// True for addresses only this machine reaches: 127.0.0.0/8, [::1], localhost, unix:PATH.
bool IsLoopbackAddress(absl::string_view address);

}  // namespace trams::server
