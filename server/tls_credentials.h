// The gRPC port's credentials from --tls_cert / --tls_key / --tls_client_ca: plaintext without them, TLS
// with them (mutual TLS with a client CA), the files re-read every --tls_reload_seconds by gRPC's file
// watcher, so certificates rotate without a restart. Every file is checked at start: a missing, unreadable
// or non-PEM one is a failed start naming it, not a handshake failure later.
#pragma once

#include <grpcpp/security/server_credentials.h>

#include <memory>

#include "absl/status/statusor.h"
#include "server/server_options.h"

namespace trams::server {

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFor(const TlsOptions& tls);

}  // namespace trams::server
