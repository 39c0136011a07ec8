// TLS and mutual TLS on the gRPC port (--tls_cert, --tls_key, --tls_client_ca), with a CA and certificates
// the test makes with openssl at run time (skipped, saying so, without /usr/bin/openssl): a TLS client that
// trusts the CA is served; a plaintext client, one trusting another CA, and under mTLS one without a
// certificate or with another CA's certificate are refused; certificates replaced on disk are served
// after the reload interval, with the sessions still there; bad TLS flags are a failed start.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/server/server_fixture.h"

namespace trams::server::test {
namespace {

namespace fs = std::filesystem;

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A CA, and certificates it signs, in a scratch directory.
class Pki {
 public:
  explicit Pki(const std::string& name) : dir_(fs::temp_directory_path() / ("trams-tls-" + std::to_string(::getpid()) + "-" + name)) {
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  ~Pki() { fs::remove_all(dir_); }
  static bool available() { return ::access("/usr/bin/openssl", X_OK) == 0; }

  // A self-signed CA `ca` (ca.pem, ca.key).
  bool MakeCa(const std::string& ca) {
    return Run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj '/CN=" + ca +
               "' -keyout " + Path(ca + ".key") + " -out " + Path(ca + ".pem"));
  }
  // `name`.pem / `name`.key signed by `ca`, for 127.0.0.1 and localhost.
  bool MakeCert(const std::string& name, const std::string& ca) {
    std::ofstream(Path(name + ".ext")) << "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
    return Run("openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj '/CN=" + name + "' -keyout " +
               Path(name + ".key") + " -out " + Path(name + ".csr")) &&
           Run("openssl x509 -req -days 2 -in " + Path(name + ".csr") + " -CA " + Path(ca + ".pem") + " -CAkey " +
               Path(ca + ".key") + " -CAcreateserial -extfile " + Path(name + ".ext") + " -out " + Path(name + ".pem"));
  }
  std::string Path(const std::string& file) const { return (dir_ / file).string(); }

 private:
  static bool Run(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0; }
  fs::path dir_;
};

// GetModelInfo over a channel with `creds`; its status.
grpc::Status Probe(const std::string& address, const std::shared_ptr<grpc::ChannelCredentials>& creds) {
  auto stub = v1::TramsService::NewStub(grpc::CreateChannel(address, creds));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ModelInfo info;
  return stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
}

std::shared_ptr<grpc::ChannelCredentials> Tls(const Pki& pki, const std::string& ca, const std::string& cert = "") {
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = Slurp(pki.Path(ca + ".pem"));
  if (!cert.empty()) {
    o.pem_cert_chain = Slurp(pki.Path(cert + ".pem"));
    o.pem_private_key = Slurp(pki.Path(cert + ".key"));
  }
  return grpc::SslCredentials(o);
}

#define SKIP_WITHOUT_OPENSSL() \
  if (!Pki::available()) GTEST_SKIP() << "openssl not installed (apt-get install openssl)"

TEST(TlsTest, OnlyClientsThatTrustTheServersCaAreServed) {
  SKIP_WITHOUT_OPENSSL();
  Pki pki("tls");
  ASSERT_TRUE(pki.MakeCa("ca") && pki.MakeCa("other") && pki.MakeCert("server", "ca"));
  ServerOptions o = TestOptions(kModel);
  o.tls.cert = pki.Path("server.pem");
  o.tls.key = pki.Path("server.key");
  std::unique_ptr<ServerApp> app = *ServerApp::Start(o);
  const std::string address = "127.0.0.1:" + std::to_string(app->grpc_port());
  grpc::Status st = Probe(address, Tls(pki, "ca"));
  EXPECT_TRUE(st.ok()) << Describe(st);
  EXPECT_EQ(Probe(address, grpc::InsecureChannelCredentials()).error_code(), grpc::StatusCode::UNAVAILABLE)
      << "plaintext refused";
  EXPECT_EQ(Probe(address, Tls(pki, "other")).error_code(), grpc::StatusCode::UNAVAILABLE) << "another CA refused";
}

TEST(TlsTest, MutualTlsServesOnlyClientsWithACertificateFromTheClientCa) {
  SKIP_WITHOUT_OPENSSL();
  Pki pki("mtls");
  ASSERT_TRUE(pki.MakeCa("ca") && pki.MakeCa("clients") && pki.MakeCa("other") && pki.MakeCert("server", "ca") &&
              pki.MakeCert("alice", "clients") && pki.MakeCert("mallory", "other"));
  ServerOptions o = TestOptions(kModel);
  o.tls.cert = pki.Path("server.pem");
  o.tls.key = pki.Path("server.key");
  o.tls.client_ca = pki.Path("clients.pem");
  std::unique_ptr<ServerApp> app = *ServerApp::Start(o);
  const std::string address = "127.0.0.1:" + std::to_string(app->grpc_port());
  grpc::Status st = Probe(address, Tls(pki, "ca", "alice"));
  EXPECT_TRUE(st.ok()) << Describe(st);
  EXPECT_NE(Probe(address, Tls(pki, "ca")).error_code(), grpc::StatusCode::OK) << "no client certificate";
  EXPECT_NE(Probe(address, Tls(pki, "ca", "mallory")).error_code(), grpc::StatusCode::OK) << "another CA's client";
  EXPECT_NE(Probe(address, grpc::InsecureChannelCredentials()).error_code(), grpc::StatusCode::OK);
}

TEST(TlsTest, WithClientTenantsACertificatesCommonNameIsItsTenant) {
  SKIP_WITHOUT_OPENSSL();
  const std::string kNotATenant = "mallory@example";  // a CN that is no tenant name (@)
  Pki pki("tenants");
  ASSERT_TRUE(pki.MakeCa("ca") && pki.MakeCa("clients") && pki.MakeCert("server", "ca") &&
              pki.MakeCert("alice", "clients") && pki.MakeCert("bob", "clients") &&
              pki.MakeCert(kNotATenant, "clients"));
  ServerOptions o = TestOptions(kModel);
  o.tls.cert = pki.Path("server.pem");
  o.tls.key = pki.Path("server.key");
  o.tls.client_ca = pki.Path("clients.pem");
  o.tls.client_tenants = true;
  std::unique_ptr<ServerApp> app = *ServerApp::Start(o);
  const std::string address = "127.0.0.1:" + std::to_string(app->grpc_port());
  auto alice = v1::TramsService::NewStub(grpc::CreateChannel(address, Tls(pki, "ca", "alice")));
  auto bob = v1::TramsService::NewStub(grpc::CreateChannel(address, Tls(pki, "ca", "bob")));
  ASSERT_TRUE(CreateSession(alice.get(), "doc", Trams(kM, kTopk, kRemain), kN).ok());
  ASSERT_TRUE(ScoreText(alice.get(), "doc", Text(0, 40)).status.ok());
  v1::Session s;
  EXPECT_TRUE(GetSession(alice.get(), "doc", &s).ok());
  EXPECT_EQ(s.position(), 40);
  const grpc::Status other = GetSession(bob.get(), "doc", &s);
  EXPECT_EQ(other.error_code(), grpc::StatusCode::NOT_FOUND) << "bob's certificate is another tenant";
  EXPECT_EQ(WithoutRequestId(other.error_message()), "session 'doc' does not exist");
  ASSERT_TRUE(CreateSession(bob.get(), "doc", Trams(kM, kTopk, kRemain), kN).ok()) << "his own doc";
  EXPECT_EQ(ListCount(bob.get()), 1);
  const grpc::Status unnamed = Probe(address, Tls(pki, "ca", kNotATenant));
  EXPECT_EQ(unnamed.error_code(), grpc::StatusCode::UNAUTHENTICATED) << Describe(unnamed);
  ServerOptions no_mtls = TestOptions(kModel);
  no_mtls.tls.client_tenants = true;
  EXPECT_EQ(ServerApp::Start(no_mtls).status().code(), absl::StatusCode::kInvalidArgument);
  no_mtls.tls.cert = pki.Path("server.pem");
  no_mtls.tls.key = pki.Path("server.key");
  EXPECT_EQ(ServerApp::Start(no_mtls).status().code(), absl::StatusCode::kInvalidArgument)
      << "tenants from certificates need a client CA";
}

TEST(TlsTest, ReplacedCertificatesAreServedAfterTheReloadAndSessionsStay) {
  SKIP_WITHOUT_OPENSSL();
  Pki pki("reload");
  ASSERT_TRUE(pki.MakeCa("ca") && pki.MakeCa("next") && pki.MakeCert("server", "ca") && pki.MakeCert("rotated", "next"));
  ServerOptions o = TestOptions(kModel);
  o.tls.cert = pki.Path("server.pem");
  o.tls.key = pki.Path("server.key");
  o.tls.reload_seconds = 1;
  std::unique_ptr<ServerApp> app = *ServerApp::Start(o);
  const std::string address = "127.0.0.1:" + std::to_string(app->grpc_port());
  auto stub = v1::TramsService::NewStub(grpc::CreateChannel(address, Tls(pki, "ca")));
  ASSERT_TRUE(CreateSession(stub.get(), "kept", Trams(kM, kTopk, kRemain), kN).ok());
  // Rotate: the new pair replaces the old one (rename: a reader never sees half a file).
  fs::copy_file(pki.Path("rotated.key"), pki.Path("server.key.new"));
  fs::copy_file(pki.Path("rotated.pem"), pki.Path("server.pem.new"));
  fs::rename(pki.Path("server.key.new"), pki.Path("server.key"));
  fs::rename(pki.Path("server.pem.new"), pki.Path("server.pem"));
  grpc::Status st;
  for (int i = 0; i < 100; ++i) {  // up to 10 s for the watcher's next look
    st = Probe(address, Tls(pki, "next"));
    if (st.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(st.ok()) << "the rotated certificate was never served: " << Describe(st);
  auto rotated = v1::TramsService::NewStub(grpc::CreateChannel(address, Tls(pki, "next")));
  v1::Session s;
  EXPECT_TRUE(GetSession(rotated.get(), "kept", &s).ok()) << "the session outlived the rotation";
}

TEST(TlsTest, BadTlsFlagsAreAFailedStartNamingTheFlag) {
  SKIP_WITHOUT_OPENSSL();
  Pki pki("flags");
  ASSERT_TRUE(pki.MakeCa("ca") && pki.MakeCert("server", "ca"));
  ServerOptions o = TestOptions(kModel);
  o.tls.cert = pki.Path("server.pem");
  absl::Status st = ServerApp::Start(o).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(std::string(st.message()), "--tls_key")) << st;
  o.tls.key = pki.Path("missing.key");
  st = ServerApp::Start(o).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(std::string(st.message()), "missing.key")) << st;
  o.tls.key = pki.Path("server.pem");  // a certificate where the key should be
  st = ServerApp::Start(o).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(std::string(st.message()), "PRIVATE KEY")) << st;
  ServerOptions ca_only = TestOptions(kModel);
  ca_only.tls.client_ca = pki.Path("ca.pem");
  EXPECT_EQ(ServerApp::Start(ca_only).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace trams::server::test
