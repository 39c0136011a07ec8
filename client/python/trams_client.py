#!/usr/bin/python3
"""Example Python client of trams.v1.TramsService (Debian's python3-grpcio 1.51, no PyPI).

The stubs are generated on first use from proto/trams/v1/trams.proto with Debian's protoc and
grpc_python_plugin (grpc_tools.protoc bundles protoc 3.5, which rejects proto3 `optional`), into
$TRAMS_PY_STUBS or a per-proto-version folder under the temp directory.

    /usr/bin/python3 client/python/trams_client.py --server 127.0.0.1:50051
"""

import argparse
import hashlib
import importlib
import math
import os
import shutil
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_ROOT = os.path.join(REPO_ROOT, "proto")
TRAMS_PROTO = "trams/v1/trams.proto"
GRPC_PYTHON_PLUGIN = "/usr/bin/grpc_python_plugin"
SESSION_METADATA = "x-session-id"


def generate_stubs(out_dir, proto_root=PROTO_ROOT, protos=(TRAMS_PROTO,)):
    """Runs protoc with the Python and gRPC plugins; files land under out_dir/<proto path>."""
    protoc = shutil.which("protoc")
    if protoc is None or not os.path.exists(GRPC_PYTHON_PLUGIN):
        raise RuntimeError("protoc and /usr/bin/grpc_python_plugin are needed "
                           "(apt-get install protobuf-compiler protobuf-compiler-grpc)")
    os.makedirs(out_dir, exist_ok=True)
    subprocess.run([protoc, "-I", proto_root, f"--python_out={out_dir}", f"--grpc_out={out_dir}",
                    f"--plugin=protoc-gen-grpc={GRPC_PYTHON_PLUGIN}", *protos], check=True)


def load_stubs(out_dir=None):
    """Imports (generating first if needed) trams.v1.trams_pb2 and trams_pb2_grpc."""
    if out_dir is None:
        out_dir = os.environ.get("TRAMS_PY_STUBS")
    if out_dir is None:
        with open(os.path.join(PROTO_ROOT, TRAMS_PROTO), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        out_dir = os.path.join(tempfile.gettempdir(), f"trams-py-stubs-{os.getuid()}-{digest}")
    if not os.path.exists(os.path.join(out_dir, "trams", "v1", "trams_pb2_grpc.py")):
        # Generate into a sibling folder and rename it, so concurrent first uses never see half a file.
        tmp = tempfile.mkdtemp(prefix="gen-", dir=os.path.dirname(out_dir) or ".")
        generate_stubs(tmp)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    if out_dir not in sys.path:
        sys.path.insert(0, out_dir)
    return (importlib.import_module("trams.v1.trams_pb2"),
            importlib.import_module("trams.v1.trams_pb2_grpc"))


pb, pb_grpc = None, None

MODES = {"trams": 1, "xl": 2, "none": 3}      # trams.v1.MemoryMode
METRICS = {"code": 1, "paper": 2}             # trams.v1.SelectionMetric


class Client:
    """Synchronous client; every call that names a session also sends it as x-session-id."""

    def __init__(self, target, timeout=None):
        global pb, pb_grpc
        import grpc  # imported here so that --help works without python3-grpcio
        if pb is None:
            pb, pb_grpc = load_stubs()
        self.pb = pb
        self.grpc = grpc
        self.timeout = timeout
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.TramsServiceStub(self.channel)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _md(self, session_id):
        return [(SESSION_METADATA, session_id)] if session_id else None

    def model_info(self):
        return self.stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=self.timeout)

    def create_session(self, session_id="", mode=None, mem_len=None, topk=None, remain=None,
                       segment_len=None, layers=None, metric=None):
        """Unset arguments take the server's defaults. Returns the effective trams.v1.Session."""
        memory = pb.MemorySettings(mode=MODES[mode] if mode else 0,
                                   metric=METRICS[metric] if metric else 0, layers=layers or [])
        for name, value in (("mem_len", mem_len), ("topk", topk), ("remain", remain)):
            if value is not None:
                setattr(memory, name, value)
        request = pb.CreateSessionRequest(session_id=session_id, memory=memory)
        if segment_len is not None:
            request.segment_len = segment_len
        return self.stub.CreateSession(request, metadata=self._md(session_id), timeout=self.timeout)

    def get_session(self, session_id):
        return self.stub.GetSession(pb.GetSessionRequest(session_id=session_id),
                                    metadata=self._md(session_id), timeout=self.timeout)

    def list_sessions(self):
        return list(self.stub.ListSessions(pb.ListSessionsRequest(), timeout=self.timeout).sessions)

    def delete_session(self, session_id):
        self.stub.DeleteSession(pb.DeleteSessionRequest(session_id=session_id),
                                metadata=self._md(session_id), timeout=self.timeout)

    def score_stream(self, session_id, text, chunk_bytes=4096, alternatives=0, entropy=False,
                     expected_position=None):
        """Streams `text` (bytes or str) in chunks; yields each ScoreResponse (one per segment)."""
        data = text.encode() if isinstance(text, str) else bytes(text)

        def requests():
            first = pb.ScoreRequest(session_id=session_id,
                                    options=pb.ScoreOptions(alternatives=alternatives,
                                                            entropy=entropy))
            if expected_position is not None:
                first.expected_position = expected_position
            if not data:
                yield first
                return
            for offset in range(0, len(data), chunk_bytes):
                request = first if offset == 0 else pb.ScoreRequest()
                request.text = data[offset:offset + chunk_bytes]
                yield request

        yield from self.stub.Score(requests(), metadata=self._md(session_id), timeout=self.timeout)

    def score_text(self, session_id, text, **kwargs):
        """Returns (tokens, last ScoreResponse): every TokenScore, and the call's running totals.

        Tokens before last.first_position answer an earlier call's provisional tail again; tokens
        with `provisional` set are answered again by the next call. Keep the latest per position."""
        tokens, last = [], pb.ScoreResponse()
        for response in self.score_stream(session_id, text, **kwargs):
            tokens.extend(response.tokens)
            last = response
        return tokens, last

    def generate(self, session_id, prompt=b"", max_tokens=64, temperature=1.0, top_k=0, top_p=0.0,
                 seed=None, stop=(), expected_position=None):
        """Yields the generated TokenScores as they arrive."""
        request = pb.GenerateRequest(session_id=session_id, max_tokens=max_tokens,
                                     temperature=temperature, top_k=top_k, top_p=top_p,
                                     stop=[s.encode() if isinstance(s, str) else s for s in stop])
        if prompt:
            request.prompt_text = prompt.encode() if isinstance(prompt, str) else prompt
        if seed is not None:
            request.seed = seed
        if expected_position is not None:
            request.expected_position = expected_position
        for response in self.stub.Generate(request, metadata=self._md(session_id),
                                           timeout=self.timeout):
            yield from response.tokens

    def explain_selection(self, session_id):
        return self.stub.ExplainSelection(pb.ExplainSelectionRequest(session_id=session_id),
                                          metadata=self._md(session_id), timeout=self.timeout)


DEMO_TEXT = ("It is a truth universally acknowledged, that a single man in possession\n"
             "of a good fortune, must be in want of a wife.\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description="trams-serve Python demo: create, score, generate")
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--file", help="text to score (default: a built-in sentence)")
    parser.add_argument("--prompt", default="The ")
    parser.add_argument("--max_tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    try:
        import grpc
    except ImportError:
        print("no module named grpc: apt-get install python3-grpcio (and run /usr/bin/python3)",
              file=sys.stderr)
        return 2
    text = open(args.file, "rb").read() if args.file else DEMO_TEXT.encode()

    with Client(args.server, timeout=args.timeout) as client:
        try:
            info = client.model_info()
            print(f"model {info.model_dir}: {info.n_layer} layers, vocab {info.vocab_size}, "
                  f"tokenizer {info.tokenizer}, device {info.device}")
            session = client.create_session()
            sid = session.session_id
            print(f"session {sid}: mode {pb.MemoryMode.Name(session.memory.mode)} "
                  f"mem_len {session.memory.mem_len} segment_len {session.segment_len}")
            tokens, totals = client.score_text(sid, text, chunk_bytes=64)
            bits_per_byte = totals.nll_sum / math.log(2) / max(
                1, sum(len(t.text) for t in tokens if t.HasField("logprob")))
            print(f"scored {totals.tokens_scored} tokens: ppl {totals.ppl:.3f}, "
                  f"bits/token {totals.bits_per_token:.3f}, bits/byte {bits_per_byte:.3f}")
            sys.stdout.write("generated: ")
            for token in client.generate(sid, prompt=args.prompt, max_tokens=args.max_tokens,
                                         temperature=0.8, top_k=40, seed=args.seed):
                sys.stdout.write(token.text.decode("utf-8", "replace"))
                sys.stdout.flush()
            sys.stdout.write("\n")
            print(f"session position now {client.get_session(sid).position}")
            client.delete_session(sid)
        except grpc.RpcError as e:
            print(f"trams_client.py: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
