#!/usr/bin/env bash
# The programs as a user meets them: --help lists each program's own flags, every failed start of
# trams-server prints why and exits 1 (it used to segfault), and the client refuses flags it would
# silently ignore. Needs TRAMS_SERVER, TRAMS_CLIENT, TRAMS_LOAD, TRAMS_SOURCE_DIR (set by CTest).
set -uo pipefail
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
model="$TRAMS_SOURCE_DIR/tests/golden/models/adaptive_samelen"
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# --help: the program's flags, not "No flags matched".
expect_help() {  # program, a flag it must list
  local out
  out=$("$1" --help 2>&1)
  grep -q -- "--$2" <<<"$out" || fail "$(basename "$1") --help does not list --$2"
  grep -q "No flags matched" <<<"$out" && fail "$(basename "$1") --help says 'No flags matched'"
}
expect_help "$TRAMS_SERVER" drain_grace_seconds
expect_help "$TRAMS_SERVER" memory_budget_mb
expect_help "$TRAMS_LOAD" sessions
expect_help "$TRAMS_CLIENT" chunk_bytes

# A failed start: exit status 1 (not a signal), and a message on stderr containing $2.
expect_start_fails() {  # description, expected message part, server flags...
  local what=$1 part=$2
  shift 2
  timeout 60 "$TRAMS_SERVER" --threads 1 "$@" >"$work/out" 2>"$work/err"
  local rc=$?
  [[ $rc -eq 1 ]] || fail "$what: exit status $rc, expected 1; stderr: $(tail -c 400 "$work/err")"
  grep -qF -- "$part" "$work/err" || fail "$what: stderr lacks '$part': $(tail -c 400 "$work/err")"
}
expect_start_fails "no --model" "--model is required" --listen 127.0.0.1:0 --metrics_listen ""
expect_start_fails "missing model directory" "cannot open model directory" --model "$work/none" --listen 127.0.0.1:0
cp -r "$model" "$work/cut"
truncate -s 100 "$work/cut/model.safetensors"
expect_start_fails "truncated weights" "cannot start" --model "$work/cut" --listen 127.0.0.1:0 --metrics_listen ""
expect_start_fails "port 99999" "the port must be a number from 0 to 65535" --model "$model" --listen 127.0.0.1:99999
expect_start_fails "no host" "no host" --model "$model" --listen :50051
expect_start_fails "metrics port 9999999" "--metrics_listen" --model "$model" --listen 127.0.0.1:0 \
  --metrics_listen 127.0.0.1:9999999
expect_start_fails "bad flag value" "--max_segment_len must be in" --model "$model" --max_segment_len 0
expect_start_fails "default layers the model lacks" "do not fit the model" --model "$model" --listen 127.0.0.1:0 \
  --metrics_listen "" --layers 99

# SIGTERM while the model loads (a weights header of a million entries takes a while to read): the
# process ends at once with status 1 and says why (it used to ignore the signal until loaded).
mkdir -p "$work/slow"
cp "$model/config.json" "$model/tokenizer.json" "$work/slow/"
python3 - "$work/slow/model.safetensors" <<'PY'
import json, struct, sys
header = {f"unused.{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(1000000)}
blob = json.dumps(header).encode()
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob + bytes(4 * 1000000))
PY
"$TRAMS_SERVER" --model "$work/slow" --threads 1 --listen 127.0.0.1:0 --metrics_listen "" 2>"$work/slow.err" &
slow_pid=$!
sleep 0.3
kill -TERM "$slow_pid" 2>/dev/null
wait "$slow_pid"
rc=$?
if grep -q '"serving"' "$work/slow.err"; then
  echo "note: the slow model loaded within 0.3 s; the signal-while-loading check did not apply" >&2
elif [[ $rc -ne 1 ]] || ! grep -q "stopped by a signal while starting" "$work/slow.err"; then
  fail "SIGTERM while loading: exit status $rc; stderr: $(tail -c 400 "$work/slow.err")"
fi

# Busy ports: a first server holds both; a second must fail on each (no SO_REUSEPORT sharing).
"$TRAMS_SERVER" --model "$model" --threads 1 --listen 127.0.0.1:0 --metrics_listen 127.0.0.1:0 \
  --port_file "$work/ports" 2>"$work/first.log" &
pids+=($!)
for _ in $(seq 300); do [[ -s "$work/ports" ]] && break; sleep 0.1; done
read -r port metrics_port <"$work/ports" || fail "the first server did not start: $(tail -c 400 "$work/first.log")"
expect_start_fails "busy gRPC port" "cannot listen on 127.0.0.1:$port" --model "$model" \
  --listen "127.0.0.1:$port" --metrics_listen ""
expect_start_fails "busy metrics port" "cannot serve metrics" --model "$model" --listen 127.0.0.1:0 \
  --metrics_listen "127.0.0.1:$metrics_port"

# The client refuses create flags next to an existing session instead of ignoring them.
"$TRAMS_CLIENT" --server "127.0.0.1:$port" create --session existing >/dev/null || fail "create failed"
echo "some text" >"$work/text"
"$TRAMS_CLIENT" --server "127.0.0.1:$port" score --session existing --mode xl --file "$work/text" \
  >/dev/null 2>"$work/client.err"
rc=$?
[[ $rc -eq 2 ]] || fail "score --session existing --mode xl: exit status $rc, expected 2 (usage)"
grep -q -- "--mode applies when a session is created" "$work/client.err" || fail "no explanation: $(cat "$work/client.err")"

if ((failures)); then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "all CLI checks passed"
