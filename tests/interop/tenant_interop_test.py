#!/usr/bin/python3
"""API keys, tenants and quotas from clients we did not write: the real trams-server binary with --auth_keys,
Python's grpcio (keys as 'authorization: Bearer' metadata) and the C++ CLI (trams-client --api_key_file).
A call without a valid key is UNAUTHENTICATED; another tenant's session is NOT_FOUND with the message of an
id that never existed; two tenants may use one id; a tenant's quota is RESOURCE_EXHAUSTED naming it.

Exits 77 (ctest SKIP_RETURN_CODE) saying what is missing (python3-grpcio, protoc, the binaries).
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import python_interop_test as base  # noqa: E402

TIMEOUT = 30
KEYS = {"alice": "alice-0123456789", "bob": "bob-9876543210"}


class TenantInteropTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="trams-tenants-py-")
        cls.grpc, cls.pb, pb_grpc = base.load_stubs(cls.dir)
        with open(f"{cls.dir}/keys", "w") as f:
            f.write("# tenants of the test\n")
            f.write(f"alice sha256:{hashlib.sha256(KEYS['alice'].encode()).hexdigest()}\n")
            f.write(f"bob sha256:{hashlib.sha256(KEYS['bob'].encode()).hexdigest()} max_sessions=1\n")
        for tenant, key in KEYS.items():
            with open(f"{cls.dir}/{tenant}.key", "w") as f:
                f.write(key + "\n")
        base.SERVER_FLAGS.extend(["--auth_keys", f"{cls.dir}/keys", "--evict", "refuse"])
        cls.server = base.ServerProcess(cls.dir, "tenants")
        cls.channel = cls.grpc.insecure_channel(cls.server.target)
        cls.stub = pb_grpc.TramsServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        code = cls.server.terminate()
        shutil.rmtree(cls.dir, ignore_errors=True)
        assert code == 0, f"trams-server exited {code}"

    def call(self, method, request, tenant=None, key=None):
        md = []
        if tenant or key:
            md.append(("authorization", "Bearer " + (key or KEYS[tenant])))
        return getattr(self.stub, method)(request, metadata=md, timeout=TIMEOUT)

    def refused(self, code, method, request, tenant=None, key=None):
        with self.assertRaises(self.grpc.RpcError) as e:
            self.call(method, request, tenant, key)
        self.assertEqual(e.exception.code(), code, e.exception.details())
        # Every error message ends in the call's request id; what comes before it is the same each time.
        message, _, request_id = e.exception.details().rpartition(" [request ")
        self.assertTrue(message and request_id.endswith("]"), e.exception.details())
        return message

    def test_calls_without_a_valid_key_are_unauthenticated(self):
        unauth = self.grpc.StatusCode.UNAUTHENTICATED
        no_key = self.refused(unauth, "GetModelInfo", self.pb.GetModelInfoRequest())
        wrong = self.refused(unauth, "ListSessions", self.pb.ListSessionsRequest(), key="not-a-key")
        self.assertEqual(no_key, wrong, "one message for a missing and an unknown key")

    def test_tenants_see_only_their_own_sessions(self):
        self.call("CreateSession", self.pb.CreateSessionRequest(session_id="shared-name"), "alice")
        answers = list(self.stub.Score(iter([self.pb.ScoreRequest(session_id="shared-name", text=b"alice's secret")]),
                                       metadata=[("authorization", "Bearer " + KEYS["alice"])], timeout=TIMEOUT))
        self.assertEqual(answers[-1].position, 14)
        details = self.refused(self.grpc.StatusCode.NOT_FOUND, "GetSession",
                               self.pb.GetSessionRequest(session_id="shared-name"), "bob")
        self.assertEqual(details, "session 'shared-name' does not exist")
        self.refused(self.grpc.StatusCode.NOT_FOUND, "ExplainSelection",
                     self.pb.ExplainSelectionRequest(session_id="shared-name"), "bob")
        self.assertNotIn("shared-name", [s.session_id for s in self.call("ListSessions", self.pb.ListSessionsRequest(),
                                                                          "bob").sessions])
        mine = self.call("CreateSession", self.pb.CreateSessionRequest(session_id="shared-name"), "bob")
        self.assertEqual(mine.session_id, "shared-name")
        self.assertEqual(mine.position, 0, "bob's own session of that name, not alice's")
        details = self.refused(self.grpc.StatusCode.RESOURCE_EXHAUSTED, "CreateSession",
                               self.pb.CreateSessionRequest(session_id="second"), "bob")
        self.assertIn("max_sessions=1", details)
        alices = self.call("GetSession", self.pb.GetSessionRequest(session_id="shared-name"), "alice")
        self.assertEqual(alices.position, 14)

    def test_the_cli_sends_its_key_from_a_file(self):
        if not base.CLI or not os.access(base.CLI, os.X_OK):
            self.skipTest("TRAMS_CLIENT not set")
        self.call("CreateSession", self.pb.CreateSessionRequest(session_id="cli-visible"), "alice")
        ok = subprocess.run([base.CLI, "--server", self.server.target, "--api_key_file", f"{self.dir}/alice.key",
                             "list"], capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        self.assertIn("cli-visible", ok.stdout)
        other = subprocess.run([base.CLI, "--server", self.server.target, "--api_key_file", f"{self.dir}/bob.key",
                                "get", "--session", "cli-visible"], capture_output=True, text=True, timeout=TIMEOUT)
        self.assertEqual(other.returncode, 1, other.stderr)
        self.assertIn("NOT_FOUND", other.stderr)
        none = subprocess.run([base.CLI, "--server", self.server.target, "list"], capture_output=True, text=True,
                              timeout=TIMEOUT)
        self.assertEqual(none.returncode, 1)
        self.assertIn("UNAUTHENTICATED", none.stderr)


if __name__ == "__main__":
    base.check_runtime()
    unittest.main(verbosity=2)
