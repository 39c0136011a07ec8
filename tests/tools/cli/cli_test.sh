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

expect_start_fails "bad --log_level" "--log_level must be debug, info, warning or error" --model "$model" \
  --log_level loud
expect_start_fails "bad --request_log_level" "--request_log_level must be" --model "$model" --request_log_level all
expect_start_fails "--print_config with a bad flag" "--max_segment_len must be in" --print_config --max_segment_len 0

# --print_config: every flag, as a flag file that reads back to the same configuration; a changed flag
# shows its default; the shipped example flag file is one the server takes.
"$TRAMS_SERVER" --flagfile="$TRAMS_SOURCE_DIR/deploy/trams-server.flags" --mem_len 123 --print_config \
  >"$work/config" 2>"$work/config.err" || fail "--print_config: exit $?: $(cat "$work/config.err")"
grep -qx -- "--mem_len=123" "$work/config" || fail "--print_config lacks --mem_len=123: $(head -c 300 "$work/config")"
grep -B1 -x -- "--mem_len=123" "$work/config" | grep -qx "# default: 400" || fail "--print_config: no default for --mem_len"
grep -qx -- "--model=/usr/share/trams-serve/models/trams-byte-books" "$work/config" ||
  fail "--print_config did not read the example flag file's --model"
grep -q -- "^--print_config=" "$work/config" && fail "--print_config prints itself (read back, it would loop)"
[[ $(grep -c '^--' "$work/config") -ge 50 ]] || fail "--print_config prints only $(grep -c '^--' "$work/config") flags"
"$TRAMS_SERVER" --flagfile="$work/config" --print_config >"$work/config2" 2>&1 || fail "reading back --print_config failed"
diff -q "$work/config" "$work/config2" >/dev/null || fail "--print_config read back differs: $(diff "$work/config" "$work/config2" | head)"

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

# health: SERVING exits 0 (whole server and the service); an unknown service or no server exits 1.
out=$("$TRAMS_CLIENT" --server "127.0.0.1:$port" health 2>&1) || fail "health: exit $?: $out"
[[ "$out" == SERVING ]] || fail "health printed '$out', not SERVING"
"$TRAMS_CLIENT" --server "127.0.0.1:$port" --service trams.v1.TramsService health >/dev/null 2>&1 ||
  fail "health --service trams.v1.TramsService: not SERVING"
"$TRAMS_CLIENT" --server "127.0.0.1:$port" --service no.such.Service health >/dev/null 2>&1 &&
  fail "health of an unknown service exited 0"
"$TRAMS_CLIENT" --server 127.0.0.1:1 --timeout 2s health >/dev/null 2>"$work/health.err" && fail "health without a server exited 0"
grep -q UNAVAILABLE "$work/health.err" || fail "health without a server: $(cat "$work/health.err")"

# The request log: one JSON line per call, with its request id, which the error message names too.
"$TRAMS_CLIENT" --server "127.0.0.1:$port" get --session missing 2>"$work/get.err" >/dev/null
id=$(grep -o '\[request [0-9a-f]*\]' "$work/get.err" | tr -d '[]' | cut -d' ' -f2)
[[ -n "$id" ]] || fail "the error names no request id: $(cat "$work/get.err")"
for _ in $(seq 50); do grep -q "\"request_id\": \"$id\"" "$work/first.log" && break; sleep 0.1; done
line=$(grep "\"request_id\": \"$id\"" "$work/first.log")
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); assert (r["msg"], r["method"], r["code"], r["session"]) == ("request", "GetSession", "NOT_FOUND", "missing") and r["duration_ms"] >= 0, r' "$line" ||
  fail "no request line for $id in the server log: '$line'"

if ((failures)); then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "all CLI checks passed"
