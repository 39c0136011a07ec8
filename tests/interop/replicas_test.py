#!/usr/bin/python3
"""Several replicas behind one address (issue 10), all real and on loopback, started here: redis-server,
three trams-server processes sharing it (--state_store), and nginx routing by x-session-id
(deploy/nginx-replicas.conf). A Python grpcio client scores a long text through nginx:

  * SIGTERM the replica that owns the session half way: the rest, scored through nginx (another replica
    restores the session from Redis), gives per-token log-probs bit-identical to one uninterrupted run;
  * SIGKILL the owner: once its lease runs out another replica restores the last interval snapshot, and a
    client that says where it stands (expected_position) is told the restored position
    (FAILED_PRECONDITION) instead of being given another history; it resends from there, and what it then
    gets is again bit-identical to the uninterrupted run. What was lost is at most what came after the
    last snapshot.

Exits 77 (ctest SKIP_RETURN_CODE) saying what is missing: redis-server, nginx, python3-grpcio, protoc and
its grpc plugin, or the server binary (deploy/deps.sh --tests installs them).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import python_interop_test as base  # noqa: E402  (stub generation, server binary and model paths)

REDIS = "/usr/bin/redis-server"
NGINX = "/usr/sbin/nginx"
LEASE_S = 2
INTERVAL_S = 1
FLAGS = ["--mode", "trams", "--mem_len", "24", "--topk", "4", "--remain", "8", "--segment_len", "8",
         "--threads", "1", "--metrics_listen", "", "--idle_ttl_seconds", "0", "--drain_seconds", "5",
         "--drain_grace_seconds", "0"]
TIMEOUT = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


class Replica:
    def __init__(self, workdir, name, port, redis_url):
        self.name, self.port = name, port
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [base.SERVER, "--model", base.MODEL, "--listen", f"127.0.0.1:{port}", "--state_store", redis_url,
             "--state_lease_seconds", str(LEASE_S), "--snapshot_interval_seconds", str(INTERVAL_S),
             "--replica_id", name] + FLAGS, stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(port, self.proc, f"trams-server {name}")

    def log_tail(self, n=3000):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read()[-n:].decode("utf-8", "replace")

    def stop(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)
        return self.proc.returncode


class ReplicasTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.workdir = tempfile.mkdtemp(prefix="trams-replicas-")
        cls.grpc, cls.pb, cls.pb_grpc = base.load_stubs(cls.workdir)
        cls.procs = []
        redis_port = free_port()
        cls.redis = subprocess.Popen([REDIS, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(redis_port, cls.redis, "redis-server")
        cls.redis_url = f"redis://127.0.0.1:{redis_port}"
        ports = [free_port() for _ in range(3)]
        cls.replicas = [Replica(cls.workdir, f"r{i + 1}", p, cls.redis_url) for i, p in enumerate(ports)]
        cls.listen = free_port()
        with open(os.path.join(os.path.dirname(HERE), "..", "deploy", "nginx-replicas.conf")) as f:
            conf = f.read()
        for key, value in (("@PREFIX@", cls.workdir), ("@LISTEN@", cls.listen), ("@PORT1@", ports[0]),
                           ("@PORT2@", ports[1]), ("@PORT3@", ports[2])):
            conf = conf.replace(key, str(value))
        conf_path = os.path.join(cls.workdir, "nginx.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        cls.nginx = subprocess.Popen([NGINX, "-p", cls.workdir, "-e", os.path.join(cls.workdir, "error.log"),
                                      "-c", conf_path],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(cls.listen, cls.nginx, "nginx")
        # The uninterrupted reference: one plain server, the same calls.
        ref_port = free_port()
        cls.ref_log = open(os.path.join(cls.workdir, "reference.log"), "wb")
        cls.ref_proc = subprocess.Popen([base.SERVER, "--model", base.MODEL, "--listen", f"127.0.0.1:{ref_port}"]
                                         + FLAGS, stdout=cls.ref_log, stderr=subprocess.STDOUT)
        wait_port(ref_port, cls.ref_proc, "reference trams-server")
        cls.ref_channel = cls.grpc.insecure_channel(f"127.0.0.1:{ref_port}")
        cls.ref_stub = cls.pb_grpc.TramsServiceStub(cls.ref_channel)
        cls.channel = cls.grpc.insecure_channel(f"127.0.0.1:{cls.listen}")
        cls.stub = cls.pb_grpc.TramsServiceStub(cls.channel)
        with open(base.SAMPLE, "rb") as f:
            cls.text = f.read()

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.ref_channel.close()
        for p in [cls.nginx, cls.ref_proc, cls.redis] + [r.proc for r in cls.replicas]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------------------

    def md(self, sid):
        return [("x-session-id", sid)]

    def create(self, stub, sid):
        stub.CreateSession(self.pb.CreateSessionRequest(session_id=sid), metadata=self.md(sid), timeout=TIMEOUT)

    def score(self, stub, sid, data, expected=None):
        """(log-prob bit patterns by position, end position) of one Score call of `data`."""
        def requests():
            first = self.pb.ScoreRequest(session_id=sid, text=data)
            if expected is not None:
                first.expected_position = expected
            yield first
        out, end = {}, None
        for r in stub.Score(requests(), metadata=self.md(sid), timeout=TIMEOUT):
            for t in r.tokens:
                out[t.position] = base.f32(t.logprob) if t.HasField("logprob") else None
            end = r.position
        return out, end

    def owner(self, sid):
        for r in self.replicas:
            if r.proc.poll() is not None:
                continue
            ch = self.grpc.insecure_channel(f"127.0.0.1:{r.port}")
            try:
                ids = [s.session_id for s in self.pb_grpc.TramsServiceStub(ch).ListSessions(
                    self.pb.ListSessionsRequest(), timeout=TIMEOUT).sessions]
            finally:
                ch.close()
            if sid in ids:
                return r
        self.fail(f"no live replica holds {sid}")

    def reference(self, sid, cuts):
        """Log-probs by position of the uninterrupted run fed text[cuts[i]:cuts[i+1]] call by call."""
        self.create(self.ref_stub, sid)
        want = {}
        for a, b in zip(cuts, cuts[1:]):
            want.update(self.score(self.ref_stub, sid, self.text[a:b])[0])
        return want

    # -- tests ---------------------------------------------------------------------------------------

    def test_sigterm_of_the_owner_loses_nothing(self):
        sid = "doc-sigterm"
        cuts = [0, 700, 1400, 2203, 3000]
        want = self.reference(sid, cuts)
        self.create(self.stub, sid)
        got = {}
        for a, b in zip(cuts[:3], cuts[1:3]):
            got.update(self.score(self.stub, sid, self.text[a:b])[0])
        owner = self.owner(sid)
        self.assertEqual(owner.stop(signal.SIGTERM), 0, owner.log_tail())
        for a, b in zip(cuts[2:], cuts[3:]):
            got.update(self.score(self.stub, sid, self.text[a:b])[0])
        self.assertEqual(sorted(got), sorted(want))
        differ = [p for p in want if got[p] != want[p]]
        self.assertEqual(differ, [], f"{len(differ)} log-probs differ from the uninterrupted run")
        self.assertIsNot(self.owner(sid), owner)

    def test_sigkill_of_the_owner_loses_at_most_the_interval_and_says_so(self):
        sid = "doc-sigkill"
        cuts = [0, 900, 1500, 3000]
        want = self.reference(sid, [0, 900, 1500, 3000])
        self.create(self.stub, sid)
        got, end = self.score(self.stub, sid, self.text[0:900])
        time.sleep(INTERVAL_S * 2.5)  # the interval snapshot of position 900 is written
        more, end = self.score(self.stub, sid, self.text[900:1500])
        got.update(more)
        owner = self.owner(sid)
        owner.stop(signal.SIGKILL)  # at once: position 1500 was most likely not snapshotted
        # Another replica answers once the dead owner's lease ran out; a client that says where it stands is
        # told where the restored session is.
        deadline = time.monotonic() + LEASE_S + 20
        restored = None
        while time.monotonic() < deadline:
            try:
                more, end2 = self.score(self.stub, sid, self.text[1500:3000], expected=end)
                restored = end  # it had the whole history: nothing was lost
                got.update(more)
                break
            except self.grpc.RpcError as e:
                if e.code() == self.grpc.StatusCode.UNAVAILABLE:
                    time.sleep(0.2)
                    continue
                self.assertEqual(e.code(), self.grpc.StatusCode.FAILED_PRECONDITION, e.details())
                m = re.search(r"is at position (\d+)", e.details())
                self.assertIsNotNone(m, e.details())
                restored = int(m.group(1))
                break
        self.assertIsNotNone(restored, "no replica took the session over")
        print(f"\nSIGKILL at position {end}: restored at {restored} after "
              f"{time.monotonic() - (deadline - LEASE_S - 20):.2f} s (lease {LEASE_S} s, interval {INTERVAL_S} s)",
              file=sys.stderr)
        self.assertGreaterEqual(restored, 900, "lost more than what came after the last interval snapshot")
        self.assertLessEqual(restored, 1500)
        if restored < 1500:
            # Resend from the restored position: the answers are the uninterrupted run's again.
            more, _ = self.score(self.stub, sid, self.text[restored:3000], expected=restored)
            got.update(more)
        late = {p: v for p, v in got.items() if p >= restored}
        differ = [p for p in late if late[p] != want[p]]
        self.assertEqual(differ, [], f"{len(differ)} log-probs after the restore differ from the uninterrupted run")
        self.assertEqual(max(got) + 1, 3000)


def check_runtime():
    base.check_runtime()
    for path, package in ((REDIS, "redis-server"), (NGINX, "nginx")):
        if not os.access(path, os.X_OK):
            base.skip(f"{path} missing (apt-get install {package}; deploy/deps.sh --tests installs it)")


if __name__ == "__main__":
    check_runtime()
    unittest.main(verbosity=2)
