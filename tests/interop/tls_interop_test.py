#!/usr/bin/python3
"""TLS and mutual TLS from clients we did not write: the real trams-server binary with --tls_cert/--tls_key
(and --tls_client_ca), a CA and certificates made here with openssl, Python's grpcio and the C++ CLI
(trams-client --tls_ca/--tls_cert/--tls_key). A client that trusts the CA is served; plaintext, another CA,
and under mTLS a client without a certificate are refused.

Exits 77 (ctest SKIP_RETURN_CODE) saying what is missing (openssl, python3-grpcio, protoc, the binaries).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import python_interop_test as base  # noqa: E402

OPENSSL = "/usr/bin/openssl"
TIMEOUT = 30


def run(*args):
    subprocess.run(list(args), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_ca(d, name):
    run(OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.pem")


def make_cert(d, name, ca):
    with open(f"{d}/{name}.ext", "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run(OPENSSL, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={name}",
        "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr")
    run(OPENSSL, "x509", "-req", "-days", "2", "-in", f"{d}/{name}.csr", "-CA", f"{d}/{ca}.pem", "-CAkey",
        f"{d}/{ca}.key", "-CAcreateserial", "-extfile", f"{d}/{name}.ext", "-out", f"{d}/{name}.pem")


def read(path):
    with open(path, "rb") as f:
        return f.read()


class TlsInteropTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="trams-tls-py-")
        cls.grpc, cls.pb, cls.pb_grpc = base.load_stubs(cls.dir)
        d = cls.dir
        for ca in ("ca", "clients", "other"):
            make_ca(d, ca)
        make_cert(d, "server", "ca")
        make_cert(d, "alice", "clients")
        base.SERVER_FLAGS.extend(["--tls_cert", f"{d}/server.pem", "--tls_key", f"{d}/server.key"])
        cls.tls = base.ServerProcess(d, "tls")
        base.SERVER_FLAGS.extend(["--tls_client_ca", f"{d}/clients.pem"])
        cls.mtls = base.ServerProcess(d, "mtls")

    @classmethod
    def tearDownClass(cls):
        for s in (cls.tls, cls.mtls):
            s.terminate()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def creds(self, ca, cert=None):
        d = self.dir
        if cert is None:
            return self.grpc.ssl_channel_credentials(root_certificates=read(f"{d}/{ca}.pem"))
        return self.grpc.ssl_channel_credentials(root_certificates=read(f"{d}/{ca}.pem"),
                                                 private_key=read(f"{d}/{cert}.key"),
                                                 certificate_chain=read(f"{d}/{cert}.pem"))

    def info(self, target, creds):
        channel = self.grpc.secure_channel(target, creds) if creds else self.grpc.insecure_channel(target)
        try:
            return self.pb_grpc.TramsServiceStub(channel).GetModelInfo(self.pb.GetModelInfoRequest(), timeout=5)
        finally:
            channel.close()

    def refused(self, target, creds):
        with self.assertRaises(self.grpc.RpcError) as e:
            self.info(target, creds)
        self.assertEqual(e.exception.code(), self.grpc.StatusCode.UNAVAILABLE)

    def test_tls_serves_clients_that_trust_the_ca(self):
        self.assertEqual(self.info(self.tls.target, self.creds("ca")).tokenizer, "byte")
        self.refused(self.tls.target, None)
        self.refused(self.tls.target, self.creds("other"))
        # Score over TLS, the session in the metadata as always.
        channel = self.grpc.secure_channel(self.tls.target, self.creds("ca"))
        stub = self.pb_grpc.TramsServiceStub(channel)
        md = [("x-session-id", "tls-doc")]
        stub.CreateSession(self.pb.CreateSessionRequest(session_id="tls-doc"), metadata=md, timeout=TIMEOUT)
        answers = list(stub.Score(iter([self.pb.ScoreRequest(session_id="tls-doc", text=b"over TLS, as text")]),
                                  metadata=md, timeout=TIMEOUT))
        self.assertEqual(answers[-1].position, 17)
        channel.close()

    def test_mutual_tls_serves_only_certificates_of_the_client_ca(self):
        self.assertEqual(self.info(self.mtls.target, self.creds("ca", "alice")).tokenizer, "byte")
        self.refused(self.mtls.target, self.creds("ca"))
        self.refused(self.mtls.target, None)

    def test_the_cli_speaks_tls_and_mutual_tls(self):
        if not base.CLI or not os.access(base.CLI, os.X_OK):
            self.skipTest("TRAMS_CLIENT not set")
        d = self.dir
        ok = subprocess.run([base.CLI, "--server", self.tls.target, "--tls_ca", f"{d}/ca.pem", "info"],
                            capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        plain = subprocess.run([base.CLI, "--server", self.tls.target, "--timeout", "5s", "info"],
                               capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(plain.returncode, 1, plain.stderr)
        self.assertIn("UNAVAILABLE", plain.stderr)
        mutual = subprocess.run([base.CLI, "--server", self.mtls.target, "--tls_ca", f"{d}/ca.pem", "--tls_cert",
                                 f"{d}/alice.pem", "--tls_key", f"{d}/alice.key", "info"],
                                capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(mutual.returncode, 0, mutual.stderr)
        half = subprocess.run([base.CLI, "--server", self.mtls.target, "--tls_ca", f"{d}/ca.pem", "--tls_cert",
                               f"{d}/alice.pem", "info"], capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(half.returncode, 2, "a certificate without its key is a usage error")


if __name__ == "__main__":
    base.check_runtime()
    if not os.access(OPENSSL, os.X_OK):
        base.skip(f"{OPENSSL} missing (apt-get install openssl)")
    unittest.main(verbosity=2)
