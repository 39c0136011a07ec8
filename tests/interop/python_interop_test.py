#!/usr/bin/python3
"""Interop test: the real trams-server binary on loopback, driven by Python's gRPC stack.

Stubs are generated here with Debian's protoc + grpc_python_plugin (trams, and health/reflection
from /usr/share/grpc-proto, copied out of a folder named grpc/ so they cannot shadow the grpc
package). Exits 77 (ctest SKIP_RETURN_CODE) when python3-grpcio, protoc, the plugin, grpc-proto
or the server binary are missing.

Environment: TRAMS_SERVER (default build/server/trams-server), TRAMS_MODEL (default the tiny
byte model tests/golden/models/adaptive_samelen), TRAMS_SERVER_FLAGS (extra server flags, e.g.
"--threads 1"), TRAMS_CLIENT (the C++ CLI; its test is skipped without it).
"""

import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SKIP = 77
GRPC_PROTO = "/usr/share/grpc-proto"
PLUGIN = "/usr/bin/grpc_python_plugin"
SERVER = os.environ.get("TRAMS_SERVER", os.path.join(REPO, "build", "server", "trams-server"))
MODEL = os.environ.get("TRAMS_MODEL",
                       os.path.join(REPO, "tests", "golden", "models", "adaptive_samelen"))
CLI = os.environ.get("TRAMS_CLIENT", "")
SAMPLE = os.path.join(REPO, "tests", "data", "sample_excerpt.txt")
SERVER_FLAGS = ["--mode", "trams", "--mem_len", "24", "--topk", "4", "--remain", "8",
                "--segment_len", "8"] + os.environ.get("TRAMS_SERVER_FLAGS", "").split()
SEGMENT_LEN = 8
TIMEOUT = 60  # seconds, per call


def skip(message):
    print(f"SKIP: {message}", file=sys.stderr)
    sys.exit(SKIP)


def check_runtime():
    try:
        import grpc  # noqa: F401
    except ImportError:
        skip(f"no Python grpc module for {sys.executable} (apt-get install python3-grpcio; "
             "run with /usr/bin/python3)")
    if shutil.which("protoc") is None or not os.path.exists(PLUGIN):
        skip("protoc / grpc_python_plugin missing (apt-get install protobuf-compiler-grpc)")
    for p in ("grpc/health/v1/health.proto", "grpc/reflection/v1alpha/reflection.proto"):
        if not os.path.exists(os.path.join(GRPC_PROTO, p)):
            skip(f"{GRPC_PROTO}/{p} missing (apt-get install grpc-proto)")
    if not os.access(SERVER, os.X_OK):
        skip(f"server binary {SERVER} not built (set TRAMS_SERVER)")


def generate_stubs(out_dir):
    """trams.v1, grpc_health.v1 and grpc_reflection.v1alpha modules under out_dir."""
    protos = os.path.join(out_dir, "protos")
    for src, dst in (("grpc/health/v1/health.proto", "grpc_health/v1/health.proto"),
                     ("grpc/reflection/v1alpha/reflection.proto",
                      "grpc_reflection/v1alpha/reflection.proto")):
        os.makedirs(os.path.dirname(os.path.join(protos, dst)), exist_ok=True)
        shutil.copy(os.path.join(GRPC_PROTO, src), os.path.join(protos, dst))
    gen = os.path.join(out_dir, "gen")
    os.makedirs(gen)
    common = ["protoc", f"--python_out={gen}", f"--grpc_out={gen}",
              f"--plugin=protoc-gen-grpc={PLUGIN}"]
    subprocess.run(common + ["-I", os.path.join(REPO, "proto"), "trams/v1/trams.proto"], check=True)
    subprocess.run(common + ["-I", protos, "grpc_health/v1/health.proto",
                             "grpc_reflection/v1alpha/reflection.proto"], check=True)
    sys.path.insert(0, gen)


def load_stubs(out_dir):
    """generate_stubs, then (grpc, trams_pb2, trams_pb2_grpc) for a test class to keep."""
    generate_stubs(out_dir)
    import grpc
    from trams.v1 import trams_pb2, trams_pb2_grpc
    return grpc, trams_pb2, trams_pb2_grpc


class ServerProcess:
    """trams-server on 127.0.0.1:0; the ports come from --port_file."""

    def __init__(self, workdir, name):
        self.port_file = os.path.join(workdir, f"{name}.ports")
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [SERVER, "--model", MODEL, "--listen", "127.0.0.1:0", "--metrics_listen",
             "127.0.0.1:0", "--port_file", self.port_file] + SERVER_FLAGS,
            stdout=self.log, stderr=subprocess.STDOUT)
        self.grpc_port, self.metrics_port = self._wait_for_ports(60)
        self.target = f"127.0.0.1:{self.grpc_port}"

    def _wait_for_ports(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"trams-server exited with {self.proc.returncode} before "
                                   f"writing its ports:\n{self.log_tail()}")
            try:
                with open(self.port_file) as f:
                    fields = f.read().split()
                if len(fields) == 2:
                    return int(fields[0]), int(fields[1])
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError(f"trams-server wrote no {self.port_file} in {timeout} s:\n"
                           f"{self.log_tail()}")

    def log_tail(self, n=4000):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read()[-n:].decode("utf-8", "replace")

    def terminate(self, timeout=30):
        """SIGTERM; returns the exit code (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.log.close()
                return None
        self.log.close()
        return self.proc.returncode


def f32(x):
    """The float32 bit pattern of x (log-probs are floats on the wire; compare them exactly)."""
    return struct.unpack("<I", struct.pack("<f", x))[0]


WORKDIR = None
SERVER_PROC = None
pb = pb_grpc = health_pb2 = health_grpc = refl_pb2 = refl_grpc = grpc = None


def setUpModule():
    global WORKDIR, SERVER_PROC, pb, pb_grpc, health_pb2, health_grpc, refl_pb2, refl_grpc, grpc
    WORKDIR = tempfile.mkdtemp(prefix="trams-interop-py-")
    generate_stubs(WORKDIR)
    import grpc as grpc_module
    from trams.v1 import trams_pb2, trams_pb2_grpc
    from grpc_health.v1 import health_pb2 as h_pb2, health_pb2_grpc as h_grpc
    from grpc_reflection.v1alpha import reflection_pb2 as r_pb2, reflection_pb2_grpc as r_grpc
    grpc, pb, pb_grpc = grpc_module, trams_pb2, trams_pb2_grpc
    health_pb2, health_grpc, refl_pb2, refl_grpc = h_pb2, h_grpc, r_pb2, r_grpc
    SERVER_PROC = ServerProcess(WORKDIR, "main")


def tearDownModule():
    rc = SERVER_PROC.terminate() if SERVER_PROC else 0
    log = SERVER_PROC.log_tail() if SERVER_PROC else ""
    if rc == 0:
        shutil.rmtree(WORKDIR, ignore_errors=True)
    else:
        raise AssertionError(f"trams-server exit code after SIGTERM: {rc} (log kept in {WORKDIR}):"
                             f"\n{log}")


_counter = [0]


def fresh_id(prefix):
    _counter[0] += 1
    return f"py-{prefix}-{os.getpid()}-{_counter[0]}"


class InteropTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.channel = grpc.insecure_channel(SERVER_PROC.target)
        grpc.channel_ready_future(cls.channel).result(timeout=TIMEOUT)
        cls.stub = pb_grpc.TramsServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()

    # -- helpers ---------------------------------------------------------------------------

    def md(self, session_id):
        return [("x-session-id", session_id)]

    def create(self, prefix="s", **memory):
        sid = fresh_id(prefix)
        session = self.stub.CreateSession(
            pb.CreateSessionRequest(session_id=sid, memory=pb.MemorySettings(**memory)),
            metadata=self.md(sid), timeout=TIMEOUT)
        self.assertEqual(session.session_id, sid)
        self.addCleanup(self.delete_quietly, sid)
        return sid

    def delete_quietly(self, sid):
        try:
            self.stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid), metadata=self.md(sid),
                                    timeout=TIMEOUT)
        except grpc.RpcError:
            pass

    def score(self, sid, data, chunk, first_fields=None, metadata=True, options=None):
        """Streams data in chunks; returns the list of ScoreResponses."""
        def requests():
            first = pb.ScoreRequest(**(first_fields if first_fields is not None
                                       else {"session_id": sid}))
            if options is not None:
                first.options.CopyFrom(options)
            for offset in range(0, len(data), chunk):
                request = first if offset == 0 else pb.ScoreRequest()
                request.text = data[offset:offset + chunk]
                yield request
        return list(self.stub.Score(requests(), metadata=self.md(sid) if metadata else None,
                                    timeout=TIMEOUT))

    def generate(self, sid, **fields):
        responses = list(self.stub.Generate(pb.GenerateRequest(session_id=sid, **fields),
                                            metadata=self.md(sid), timeout=TIMEOUT))
        return responses, [t for r in responses for t in r.tokens]

    def assert_rpc_error(self, code, fn, *args, **kwargs):
        with self.assertRaises(grpc.RpcError) as ctx:
            result = fn(*args, **kwargs)
            if isinstance(result, grpc.Call) and hasattr(result, "__next__"):
                list(result)  # a response stream: its status comes at the end
        err = ctx.exception
        self.assertEqual(err.code(), code, f"details: {err.details()!r}")
        self.assertTrue(err.details(), f"{code.name} without a message")
        return err

    def sample(self, n=3000):
        with open(SAMPLE, "rb") as f:
            return f.read()[:n]

    # -- health, reflection, model info -------------------------------------------------------

    def test_health_serving(self):
        stub = health_grpc.HealthStub(self.channel)
        for service in ("", "trams.v1.TramsService"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            self.assertEqual(response.status, health_pb2.HealthCheckResponse.SERVING,
                             f"service {service!r}")
        with self.assertRaises(grpc.RpcError) as ctx:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=TIMEOUT)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_reflection_lists_and_describes_service(self):
        stub = refl_grpc.ServerReflectionStub(self.channel)
        requests = [refl_pb2.ServerReflectionRequest(list_services=""),
                    refl_pb2.ServerReflectionRequest(file_containing_symbol="trams.v1.TramsService")]
        responses = list(stub.ServerReflectionInfo(iter(requests), timeout=TIMEOUT))
        self.assertEqual(len(responses), 2)
        names = {s.name for s in responses[0].list_services_response.service}
        self.assertIn("trams.v1.TramsService", names)
        self.assertIn("grpc.health.v1.Health", names)
        from google.protobuf import descriptor_pb2
        files = [descriptor_pb2.FileDescriptorProto.FromString(b)
                 for b in responses[1].file_descriptor_response.file_descriptor_proto]
        services = {f"{f.package}.{s.name}": [m.name for m in s.method]
                    for f in files for s in f.service}
        self.assertIn("trams.v1.TramsService", services)
        self.assertIn("Score", services["trams.v1.TramsService"])

    def test_model_info(self):
        info = self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
        self.assertEqual(info.vocab_size, 260)
        self.assertEqual(info.tokenizer, "byte")
        self.assertEqual((info.n_layer, info.d_model, info.n_head, info.d_head), (3, 32, 3, 10))
        self.assertEqual(info.default_memory.mode, pb.MEMORY_MODE_TRAMS)
        self.assertEqual((info.default_memory.mem_len, info.default_memory.topk,
                          info.default_memory.remain), (24, 4, 8))
        self.assertEqual(info.default_segment_len, SEGMENT_LEN)
        self.assertTrue(info.device)

    # -- sessions -------------------------------------------------------------------------------

    def test_session_lifecycle(self):
        sid = self.create("life")
        session = self.stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=self.md(sid),
                                       timeout=TIMEOUT)
        self.assertEqual(session.session_id, sid)
        self.assertEqual(session.memory.mode, pb.MEMORY_MODE_TRAMS)
        self.assertEqual((session.memory.mem_len, session.memory.topk, session.memory.remain),
                         (24, 4, 8))
        self.assertEqual(session.segment_len, SEGMENT_LEN)
        self.assertEqual((session.position, session.pool_tokens, session.tokens_scored), (0, 0, 0))
        listed = self.stub.ListSessions(pb.ListSessionsRequest(), timeout=TIMEOUT).sessions
        self.assertIn(sid, [s.session_id for s in listed])
        self.stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid), metadata=self.md(sid),
                                timeout=TIMEOUT)
        listed = self.stub.ListSessions(pb.ListSessionsRequest(), timeout=TIMEOUT).sessions
        self.assertNotIn(sid, [s.session_id for s in listed])
        self.assert_rpc_error(grpc.StatusCode.NOT_FOUND, self.stub.GetSession,
                              pb.GetSessionRequest(session_id=sid), metadata=self.md(sid),
                              timeout=TIMEOUT)

    def test_create_with_explicit_settings_and_server_picked_id(self):
        session = self.stub.CreateSession(
            pb.CreateSessionRequest(memory=pb.MemorySettings(mode=pb.MEMORY_MODE_XL, mem_len=16),
                                    segment_len=4), timeout=TIMEOUT)
        self.addCleanup(self.delete_quietly, session.session_id)
        self.assertTrue(session.session_id)
        self.assertEqual(session.memory.mode, pb.MEMORY_MODE_XL)
        self.assertEqual(session.memory.mem_len, 16)
        self.assertEqual(session.segment_len, 4)

    # -- score ---------------------------------------------------------------------------------

    def test_score_identical_across_chunkings(self):
        data = self.sample()
        results = {}
        for chunk in (1, 7, 500):
            sid = self.create(f"chunk{chunk}")
            responses = self.score(sid, data, chunk)
            tokens = [t for r in responses for t in r.tokens]
            # One message per segment: full segments, then the rest at half-close.
            for r in responses[:-1]:
                self.assertEqual(len(r.tokens), SEGMENT_LEN, f"chunk {chunk}")
            self.assertTrue(1 <= len(responses[-1].tokens) <= SEGMENT_LEN)
            self.assertEqual(len(tokens), len(data))
            self.assertEqual([t.position for t in tokens], list(range(len(data))))
            self.assertEqual(bytes(t.id for t in tokens), data)  # byte tokenizer: id = byte
            self.assertEqual(b"".join(t.text for t in tokens), data)
            self.assertFalse(tokens[0].HasField("logprob"))
            self.assertTrue(all(t.HasField("logprob") and t.logprob <= 0 for t in tokens[1:]))
            last = responses[-1]
            nll = -sum(t.logprob for t in tokens[1:])
            self.assertEqual(last.position, len(data))
            self.assertEqual(last.tokens_scored, len(data) - 1)
            self.assertAlmostEqual(last.nll_sum, nll, delta=1e-6 * len(data))
            self.assertAlmostEqual(last.ppl, math.exp(nll / (len(data) - 1)), delta=1e-3)
            self.assertAlmostEqual(last.bits_per_token, nll / (len(data) - 1) / math.log(2),
                                   delta=1e-4)
            session = self.stub.GetSession(pb.GetSessionRequest(session_id=sid),
                                           metadata=self.md(sid), timeout=TIMEOUT)
            self.assertEqual(session.position, len(data))
            self.assertEqual(session.tokens_scored, len(data) - 1)
            self.assertEqual(session.pool_tokens, 24)
            results[chunk] = [(t.position, t.id, f32(t.logprob) if t.HasField("logprob") else None)
                              for t in tokens]
        self.assertEqual(results[1], results[7], "1-byte vs 7-byte chunks")
        self.assertEqual(results[1], results[500], "1-byte vs 500-byte chunks")

    def test_score_utf8_split_inside_character(self):
        # Curly quotes are 3 bytes; 1- and 2-byte chunks cut them. A byte model scores bytes.
        data = "“My dear Mr. Bennet,” said his lady".encode()
        sid = self.create("utf8")
        tokens = [t for r in self.score(sid, data, 2) for t in r.tokens]
        self.assertEqual(b"".join(t.text for t in tokens), data)

    def test_score_options_alternatives_and_entropy(self):
        sid = self.create("alts")
        options = pb.ScoreOptions(alternatives=3, entropy=True)
        tokens = [t for r in self.score(sid, self.sample(40), 16, options=options)
                  for t in r.tokens]
        for t in tokens[1:]:
            self.assertEqual(len(t.alternatives), 3)
            self.assertTrue(t.HasField("entropy") and t.entropy >= 0)
            logprobs = [a.logprob for a in t.alternatives]
            self.assertEqual(logprobs, sorted(logprobs, reverse=True))
            self.assertGreaterEqual(logprobs[0], t.logprob - 1e-6)

    def test_score_token_ids(self):
        data = self.sample(50)
        sid_text, sid_ids = self.create("bytes"), self.create("ids")
        by_text = [t for r in self.score(sid_text, data, 50) for t in r.tokens]

        def requests():
            yield pb.ScoreRequest(session_id=sid_ids, ids=pb.TokenIds(ids=list(data[:20])))
            yield pb.ScoreRequest(ids=pb.TokenIds(ids=list(data[20:])))
        by_ids = [t for r in self.stub.Score(requests(), metadata=self.md(sid_ids), timeout=TIMEOUT)
                  for t in r.tokens]
        self.assertEqual([(t.id, f32(t.logprob)) for t in by_text[1:]],
                         [(t.id, f32(t.logprob)) for t in by_ids[1:]])

    def test_score_without_messages_finishes(self):
        # A client may half-close before sending anything; the call must still end (not hang).
        sid = self.create("nomsg")
        try:
            responses = list(self.stub.Score(iter([]), metadata=self.md(sid), timeout=10))
            self.assertEqual(responses, [])
        except grpc.RpcError as e:
            self.assertEqual(e.code(), grpc.StatusCode.INVALID_ARGUMENT, e.details())

    # -- generate ------------------------------------------------------------------------------

    def test_generate_same_seed_same_tokens(self):
        runs = []
        for _ in range(2):
            sid = self.create("gen")
            responses, tokens = self.generate(sid, prompt_text=b"It is a truth ", max_tokens=24,
                                              temperature=1.0, top_k=50, seed=12345)
            self.assertEqual(len(tokens), 24)
            self.assertEqual(responses[-1].finish_reason, pb.FINISH_REASON_LENGTH)
            self.assertTrue(all(r.finish_reason == pb.FINISH_REASON_UNSPECIFIED
                                for r in responses[:-1]))
            self.assertEqual(responses[-1].position, 14 + 24)
            self.assertEqual([t.position for t in tokens], list(range(14, 38)))
            session = self.stub.GetSession(pb.GetSessionRequest(session_id=sid),
                                           metadata=self.md(sid), timeout=TIMEOUT)
            self.assertEqual(session.position, 38)
            runs.append([(t.id, t.text) for t in tokens])
        self.assertEqual(runs[0], runs[1])

    def test_generate_stop_string(self):
        sid = self.create("stop-ref")
        _, reference = self.generate(sid, prompt_text=b"The ", max_tokens=40, temperature=1.0,
                                     seed=7)
        text = b"".join(t.text for t in reference)
        # A stop string that the seeded run produces: its 3rd distinct byte, first seen at index k.
        stop = bytes([sorted(set(text), key=text.index)[min(2, len(set(text)) - 1)]])
        k = text.index(stop)
        sid2 = self.create("stop")
        responses, tokens = self.generate(sid2, prompt_text=b"The ", max_tokens=40,
                                          temperature=1.0, seed=7, stop=[stop])
        self.assertEqual(b"".join(t.text for t in tokens), text[:k + 1])
        self.assertEqual(responses[-1].finish_reason, pb.FINISH_REASON_STOP)

    def test_generate_continues_session(self):
        sid = self.create("cont")
        self.score(sid, b"Mr. Bennet replied", 5)
        _, tokens = self.generate(sid, max_tokens=5, temperature=0)
        self.assertEqual([t.position for t in tokens], list(range(18, 23)))
        self.assertTrue(all(t.HasField("logprob") for t in tokens))

    # -- x-session-id metadata -----------------------------------------------------------------

    def test_session_id_from_metadata_only(self):
        sid = self.create("meta")
        session = self.stub.GetSession(pb.GetSessionRequest(), metadata=self.md(sid),
                                       timeout=TIMEOUT)
        self.assertEqual(session.session_id, sid)
        responses = self.score(sid, b"hello world", 4, first_fields={})
        self.assertEqual(responses[-1].position, 11)
        responses = list(self.stub.Generate(pb.GenerateRequest(max_tokens=3, temperature=0),
                                            metadata=self.md(sid), timeout=TIMEOUT))
        self.assertEqual(responses[-1].position, 14)
        explain = self.stub.ExplainSelection(pb.ExplainSelectionRequest(), metadata=self.md(sid),
                                             timeout=TIMEOUT)
        # Generation feeds one token per step: the last segment is the newest token(s).
        self.assertEqual(explain.segment_start + explain.segment_len, 14)
        self.stub.DeleteSession(pb.DeleteSessionRequest(), metadata=self.md(sid), timeout=TIMEOUT)
        self.assert_rpc_error(grpc.StatusCode.NOT_FOUND, self.stub.GetSession,
                              pb.GetSessionRequest(session_id=sid), timeout=TIMEOUT)

    def test_session_id_field_and_metadata_must_agree(self):
        a, b = self.create("agree-a"), self.create("agree-b")
        self.assert_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, self.stub.GetSession,
                              pb.GetSessionRequest(session_id=a), metadata=self.md(b),
                              timeout=TIMEOUT)

    # -- errors --------------------------------------------------------------------------------

    def test_errors_have_codes_and_messages(self):
        S = grpc.StatusCode
        self.assert_rpc_error(S.NOT_FOUND, self.stub.GetSession,
                              pb.GetSessionRequest(session_id="no-such-session"), timeout=TIMEOUT)
        self.assert_rpc_error(S.NOT_FOUND, self.stub.DeleteSession,
                              pb.DeleteSessionRequest(session_id="no-such-session"),
                              timeout=TIMEOUT)
        self.assert_rpc_error(S.INVALID_ARGUMENT, self.stub.CreateSession,
                              pb.CreateSessionRequest(session_id="bad id with spaces!"),
                              timeout=TIMEOUT)
        self.assert_rpc_error(S.INVALID_ARGUMENT, self.stub.CreateSession,
                              pb.CreateSessionRequest(memory=pb.MemorySettings(mem_len=1 << 30)),
                              timeout=TIMEOUT)
        self.assert_rpc_error(S.INVALID_ARGUMENT, self.stub.CreateSession,
                              pb.CreateSessionRequest(segment_len=0), timeout=TIMEOUT)
        sid = self.create("err")
        self.assert_rpc_error(S.NOT_FOUND, self.score, "no-such-session", b"abc", 2)
        self.assert_rpc_error(S.INVALID_ARGUMENT, self.generate, sid, max_tokens=-1)
        self.assert_rpc_error(S.INVALID_ARGUMENT, self.generate, sid, max_tokens=4,
                              temperature=-1.0)
        self.assert_rpc_error(S.INVALID_ARGUMENT, self.score, sid, b"abc", 1,
                              options=pb.ScoreOptions(alternatives=21))
        self.assert_rpc_error(S.FAILED_PRECONDITION, self.score, sid, b"abc", 1,
                              first_fields={"session_id": sid, "expected_position": 5})

        def out_of_vocab():
            yield pb.ScoreRequest(session_id=sid, ids=pb.TokenIds(ids=[1, 2, 3, 260]))
        self.assert_rpc_error(S.INVALID_ARGUMENT, self.stub.Score, out_of_vocab(),
                              metadata=self.md(sid), timeout=TIMEOUT)
        # Failed calls leave the session as it was.
        session = self.stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=self.md(sid),
                                       timeout=TIMEOUT)
        self.assertEqual((session.position, session.tokens_scored, session.pool_tokens), (0, 0, 0))

    def test_failed_score_midway_leaves_session_unchanged(self):
        sid = self.create("atomic")
        self.score(sid, self.sample(100), 10)
        before = self.stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=self.md(sid),
                                      timeout=TIMEOUT)

        def requests():
            yield pb.ScoreRequest(session_id=sid, text=self.sample(200)[100:])
            yield pb.ScoreRequest(ids=pb.TokenIds(ids=[9999]))  # out of vocab after 12 segments
        self.assert_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, self.stub.Score, requests(),
                              metadata=self.md(sid), timeout=TIMEOUT)
        after = self.stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=self.md(sid),
                                     timeout=TIMEOUT)
        self.assertEqual((after.position, after.tokens_scored, after.nll_sum, after.pool_tokens),
                         (before.position, before.tokens_scored, before.nll_sum,
                          before.pool_tokens))

    # -- explain -------------------------------------------------------------------------------

    def test_explain_selection(self):
        sid = self.create("explain")
        n = 80
        self.score(sid, self.sample(n), 13)
        explain = self.stub.ExplainSelection(pb.ExplainSelectionRequest(session_id=sid),
                                             metadata=self.md(sid), timeout=TIMEOUT)
        self.assertEqual(explain.segment_len, SEGMENT_LEN)
        self.assertEqual(explain.segment_start, n - SEGMENT_LEN)
        self.assertEqual(len(explain.layers), 3)
        for layer in explain.layers:
            self.assertEqual(layer.recent_from, explain.segment_start - 8)  # remain = 8
            self.assertEqual(len(layer.heads), 3)
            for head in layer.heads:
                self.assertEqual(len(head.selected), 4)  # topk = 4, pool full
                positions = [t.position for t in head.selected]
                self.assertEqual(positions, sorted(positions))
                self.assertTrue(all(explain.segment_start - 24 <= p < layer.recent_from
                                    for p in positions), positions)
                data = self.sample(n)
                self.assertTrue(all(t.id == data[t.position] for t in head.selected))

    def test_explain_selection_reports_scores(self):
        # Every selected token has its TRAMS score (||K'|| * |sum K'| > 0 with the default metric),
        # including the oldest pool tokens, which leave the pool at the end of that same segment.
        sid = self.create("explain-scores")
        self.score(sid, self.sample(80), 80)
        explain = self.stub.ExplainSelection(pb.ExplainSelectionRequest(session_id=sid),
                                             metadata=self.md(sid), timeout=TIMEOUT)
        zero = [(layer.layer, head.head, t.position) for layer in explain.layers
                for head in layer.heads for t in head.selected if not t.score > 0]
        self.assertEqual(zero, [], "selected tokens reported with score 0 (layer, head, position); "
                         f"segment starts at {explain.segment_start}")

    # -- other clients against this server ---------------------------------------------------

    def test_python_example_client_demo(self):
        out = subprocess.run([sys.executable, os.path.join(REPO, "client", "python",
                                                           "trams_client.py"),
                              "--server", SERVER_PROC.target, "--max_tokens", "8"],
                             capture_output=True, timeout=120,
                             env=dict(os.environ, TRAMS_PY_STUBS=os.path.join(WORKDIR, "demo")))
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        self.assertIn(b"scored ", out.stdout)
        self.assertIn(b"generated: ", out.stdout)

    @unittest.skipUnless(CLI and os.access(CLI, os.X_OK), "TRAMS_CLIENT (trams-client) not set")
    def test_cpp_cli_matches_python(self):
        data = self.sample(1000)
        sid_py, sid_cli = self.create("cli-ref"), self.create("cli")
        reference = [t for r in self.score(sid_py, data, 500) for t in r.tokens]
        path = os.path.join(WORKDIR, "cli_input.txt")
        jsonl = os.path.join(WORKDIR, "cli_tokens.jsonl")
        with open(path, "wb") as f:
            f.write(data)
        out = subprocess.run([CLI, "--server", SERVER_PROC.target, "score", "--session", sid_cli,
                              "--file", path, "--chunk_bytes", "7", "--jsonl", jsonl],
                             capture_output=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        self.assertIn(b"bits/byte", out.stdout)
        with open(jsonl) as f:
            rows = [json.loads(line) for line in f]
        self.assertEqual([r["position"] for r in rows], list(range(len(data))))
        self.assertEqual([(r["id"], f32(r["logprob"]) if "logprob" in r else None) for r in rows],
                         [(t.id, f32(t.logprob) if t.HasField("logprob") else None)
                          for t in reference])
        out = subprocess.run([CLI, "--server", SERVER_PROC.target, "get", "--session",
                              "no-such-session"], capture_output=True, timeout=60)
        self.assertEqual(out.returncode, 1)
        self.assertIn(b"NOT_FOUND", out.stderr)


    @unittest.skipUnless(CLI and os.access(CLI, os.X_OK), "TRAMS_CLIENT (trams-client) not set")
    def test_cpp_cli_generate_matches_python(self):
        sampling = dict(max_tokens=24, temperature=1.0, top_k=50, seed=4242)
        _, reference = self.generate(self.create("cli-gen-ref"), prompt_text=b"It is a truth ",
                                     **sampling)
        sid = self.create("cli-gen")
        out = subprocess.run([CLI, "--server", SERVER_PROC.target, "generate", "--session", sid,
                              "--prompt", "It is a truth ", "--max_tokens", "24", "--temperature",
                              "1", "--top_k", "50", "--seed", "4242"],
                             capture_output=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        self.assertEqual(out.stdout, b"".join(t.text for t in reference))
        self.assertIn(b"finish length", out.stderr)


class ShutdownTest(unittest.TestCase):
    """SIGTERM on a server of its own: in-flight streams finish, then exit code 0."""

    def test_sigterm_drains_and_exits_zero(self):
        server = ServerProcess(WORKDIR, "shutdown")
        try:
            channel = grpc.insecure_channel(server.target)
            stub = pb_grpc.TramsServiceStub(channel)
            sid = fresh_id("drain")
            stub.CreateSession(pb.CreateSessionRequest(session_id=sid), timeout=TIMEOUT)
            stream = stub.Generate(pb.GenerateRequest(session_id=sid, prompt_text=b"The ",
                                                      max_tokens=200,
                                                      temperature=1.0, seed=3),
                                   metadata=[("x-session-id", sid)], timeout=TIMEOUT)
            first = next(stream)  # the call is running on the server
            server.proc.send_signal(signal.SIGTERM)
            rest = list(stream)
            tokens = len(first.tokens) + sum(len(r.tokens) for r in rest)
            self.assertEqual(tokens, 200, "the in-flight Generate was cut short")
            channel.close()
            rc = server.terminate()
        finally:
            if server.proc.poll() is None:
                server.proc.kill()
        self.assertEqual(rc, 0, f"exit code after SIGTERM:\n{server.log_tail()}")


if __name__ == "__main__":
    check_runtime()
    unittest.main(verbosity=2)
