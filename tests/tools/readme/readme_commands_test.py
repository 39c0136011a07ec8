#!/usr/bin/env python3
"""Runs the commands of the READMEs as a user would type them, and fails if any fails.

Each document's ```sh blocks (and ```python blocks, through /usr/bin/python3) run in order as one
bash script with `set -e`, from a scratch directory that mirrors the repository (its folders are
symlinked, `build` points at the build tree under test), so files the commands write stay out of the
checkout. A few lines cannot run inside a test as typed; they are rewritten, each for a stated reason:

  build/server/trams-server ...   started in the background (it serves until stopped), and the script
                                  waits for its port; every server is stopped when the document ends
                                  (not with --print_config or --help: those print and exit)
  trams-bench, trams-soak         only their flags are checked (run with `--help` appended: an
                                  unknown flag is still refused): they run for minutes, and the soak
                                  has its own ctest
  --interactive                   stdin is /dev/null
  deploy/{run,test,sanitize,fuzz}.sh   not run here: CI runs them (.ci/run)
  ctest ...                       not run here: it is this very test suite
  npm ci                          not run here: deploy/deps.sh --tests runs it (concurrent tests use
                                  the same node_modules)
  docker, kubectl                 not run here: CI has no Docker engine and no cluster (tests/deploy checks
                                  the Dockerfiles and manifests without them)

Usage: readme_commands_test.py SOURCE_DIR BUILD_DIR DOC...   (DOC relative to SOURCE_DIR)
"""
import os
import re
import subprocess
import sys
import tempfile

PRELUDE = r'''
set -euo pipefail
servers=()
trap 'for p in "${servers[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
trams_check_flags() {  # the command with --help: its flags must all be known
  local out rc=0
  out=$("$@" --help 2>&1) || rc=$?
  if [[ $rc -eq 2 ]] || grep -qE "Unknown command line flag|ERROR:|unknown argument" <<<"$out"; then
    echo "$out" >&2
    return 1
  fi
}
trams_start_server() {  # the command; waits until its --listen port accepts connections
  local port
  port=$(sed -nE 's/.*--listen[ =][^ ]*:([0-9]+).*/\1/p' <<<"$*")
  "$@" 2>>server.log &
  servers+=($!)
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    kill -0 "${servers[-1]}" 2>/dev/null || { echo "the server exited: $(tail -c 600 server.log)" >&2; return 1; }
    sleep 0.1
  done
  echo "the server never listened on port $port" >&2
  return 1
}
'''


def blocks(text):
    """(language, body) of every fenced sh/bash/python block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(sh|bash|python)\n(.*?)^```", text, re.S | re.M)]


def logical_lines(body):
    """Lines with backslash continuations joined."""
    out, cur = [], ""
    for line in body.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    if cur:
        out.append(cur)
    return out


def rewrite(line):
    code = line.split(" #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
    if not code:
        return line
    if re.match(r"\s*deploy/(run|test|sanitize|fuzz)\.sh\b", code):
        return f": not run here, CI runs it: {code!r}"
    if re.match(r"\s*ctest\b", code):
        return f": not run here, it is this test suite: {code!r}"
    if "npm ci" in code:
        return re.sub(r"\s*&&\s*npm ci\b", "", code) + "  # npm ci: done by deploy/deps.sh --tests"
    if re.match(r"\s*(docker|kubectl)\b", code):
        return f": not run here, it needs a Docker engine or a cluster: {code!r}"
    if re.search(r"(^|\s|/)build/server/trams-server\b", code) and not re.search(r"^\s*\w+=", code) \
            and not re.search(r"\s--(print_config|help)\b", code):
        return "trams_start_server " + code.strip()
    if re.search(r"trams-(bench|soak)\b", code):
        return "trams_check_flags " + code.strip()
    if "--interactive" in code:
        return code + " </dev/null"
    return code


def script_for(doc_text):
    parts = [PRELUDE]
    for lang, body in blocks(doc_text):
        if lang == "python":
            parts.append("/usr/bin/python3 - <<'PYTHON_BLOCK'\n" + body + "PYTHON_BLOCK")
        else:
            parts.extend(rewrite(l) for l in logical_lines(body))
    return "\n".join(parts) + "\n"


def missing_runtime(source):
    """What the READMEs' client examples need and this machine lacks (deploy/deps.sh --tests has them)."""
    if subprocess.run(["/usr/bin/python3", "-c", "import grpc"], capture_output=True).returncode != 0:
        return "python3-grpcio"
    if not os.path.isdir(os.path.join(source, "client", "node", "node_modules")):
        return "client/node/node_modules (npm ci)"
    return None


def main():
    source, build, docs = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2]), sys.argv[3:]
    missing = missing_runtime(source)
    if missing:
        print(f"SKIP: the README examples need {missing}; run deploy/deps.sh --tests")
        sys.exit(77)
    failed = []
    for doc in docs:
        with tempfile.TemporaryDirectory(prefix="trams-readme-") as work:
            for name in os.listdir(source):
                if name not in ("build", ".git") and not name.startswith("build-"):
                    os.symlink(os.path.join(source, name), os.path.join(work, name))
            os.symlink(build, os.path.join(work, "build"))
            with open(os.path.join(source, doc)) as f:
                script = script_for(f.read())
            path = os.path.join(work, "readme.sh")
            with open(path, "w") as f:
                f.write(script)
            print(f"== {doc}", flush=True)
            r = subprocess.run(["bash", "-x", path], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=600, text=True, errors="replace")
            if r.returncode != 0:
                failed.append(doc)
                print(r.stdout[-6000:])
                print(f"FAIL: {doc}: a command exited with status {r.returncode} (its trace is above)")
            else:
                ran = sum(1 for l in r.stdout.splitlines() if l.startswith("+ ") and "trams" in l)
                print(f"ok: {doc} ({ran} traced commands)")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
