#include "server/tls_credentials.h"

#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace trams::server {
namespace {

// FAILED_PRECONDITION unless `path` is a readable file holding a PEM block of `kind`.
absl::Status CheckPem(const char* flag, const std::string& path, const char* kind) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::FailedPreconditionError(absl::StrCat("--", flag, " ", path, ": cannot be read"));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  if (!absl::StrContains(text, "-----BEGIN ") || !absl::StrContains(text, kind)) {
    return absl::FailedPreconditionError(
        absl::StrCat("--", flag, " ", path, ": not a PEM file with a ", kind, " (-----BEGIN ... -----)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFor(const TlsOptions& tls) {
  if (!tls.enabled()) {
    if (!tls.client_ca.empty()) return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
    if (tls.client_tenants) return absl::InvalidArgumentError("--tls_client_tenants needs mutual TLS (--tls_client_ca)");
    return grpc::InsecureServerCredentials();
  }
  if (tls.cert.empty() || tls.key.empty()) {
    return absl::InvalidArgumentError("TLS needs both --tls_cert and --tls_key");
  }
  if (tls.reload_seconds < 1 || tls.reload_seconds > 86400) {
    return absl::InvalidArgumentError(absl::StrCat("--tls_reload_seconds must be in [1, 86400], got ", tls.reload_seconds));
  }
  if (tls.client_tenants && tls.client_ca.empty()) {
    return absl::InvalidArgumentError("--tls_client_tenants needs mutual TLS (--tls_client_ca)");
  }
  if (absl::Status s = CheckPem("tls_cert", tls.cert, "CERTIFICATE"); !s.ok()) return s;
  if (absl::Status s = CheckPem("tls_key", tls.key, "PRIVATE KEY"); !s.ok()) return s;
  if (!tls.client_ca.empty()) {
    if (absl::Status s = CheckPem("tls_client_ca", tls.client_ca, "CERTIFICATE"); !s.ok()) return s;
  }
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      tls.key, tls.cert, tls.client_ca, static_cast<unsigned int>(tls.reload_seconds));
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (!tls.client_ca.empty()) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

}  // namespace trams::server
