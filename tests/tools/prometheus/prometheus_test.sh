#!/usr/bin/env bash
# Prometheus integration test: a real Prometheus (Debian's `prometheus` package) scrapes a real
# trams-server on loopback every second while the C++ CLI drives Score and Generate calls; then the
# HTTP query API must show the target up, a p90 Score latency from the request histogram,
# tokens scored, time-to-first-token observations and the number of live sessions.
# A second trams-server runs the CUDA code path on the host (--device emulated --gpu_pool_bytes N), scraped
# by the same Prometheus as job trams_emulated: its session-pool arena capacity must be N, its arena use
# must grow by a session's pool bytes after CreateSession, its device memory total must be there and
# trams_pool_bytes{device="emulated:0"} must be the pool bytes; on the cpu server (job trams) the gpu and
# arena series must be absent.
#
# Environment: TRAMS_SERVER, TRAMS_CLIENT (binaries), TRAMS_SOURCE_DIR (repo root, for the model);
# optional PROMETHEUS (binary; default /usr/bin/prometheus, else the one on PATH).
# Exits 77 (ctest SKIP_RETURN_CODE) when prometheus or curl is missing.
set -euo pipefail

SKIP=77
die() { echo "FAIL: $*" >&2; dump_logs; exit 1; }
skip() { echo "SKIP: $*" >&2; exit "$SKIP"; }

source_dir=${TRAMS_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}
server_bin=${TRAMS_SERVER:-}
client_bin=${TRAMS_CLIENT:-}
model_dir="$source_dir/tests/golden/models/adaptive_samelen"

prometheus_bin=${PROMETHEUS:-}
if [[ -z "$prometheus_bin" ]]; then
  if [[ -x /usr/bin/prometheus ]]; then prometheus_bin=/usr/bin/prometheus
  else prometheus_bin=$(command -v prometheus || true); fi
fi
[[ -n "$prometheus_bin" && -x "$prometheus_bin" ]] ||
  skip "prometheus not found (Debian package 'prometheus'; deploy/deps.sh --tests installs it)"
command -v curl >/dev/null || skip "curl not found"
[[ -n "$server_bin" && -x "$server_bin" ]] || { echo "FAIL: TRAMS_SERVER='$server_bin' is not an executable" >&2; exit 1; }
[[ -n "$client_bin" && -x "$client_bin" ]] || { echo "FAIL: TRAMS_CLIENT='$client_bin' is not an executable" >&2; exit 1; }
[[ -f "$model_dir/config.json" ]] || { echo "FAIL: no model at $model_dir" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/trams-prometheus.XXXXXX")
server_pid=""
emu_pid=""
prom_pid=""
cleanup() {
  local pid
  for pid in "$prom_pid" "$server_pid" "$emu_pid"; do
    [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
  done
  for pid in "$prom_pid" "$server_pid" "$emu_pid"; do
    [[ -n "$pid" ]] && wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

dump_logs() {
  local f
  for f in "$work/server.log" "$work/emulated.log" "$work/prometheus.log"; do
    [[ -f "$f" ]] || continue
    echo "---- last lines of $(basename "$f") ----" >&2
    tail -n 30 "$f" >&2 || true
  done
}

# --- trams-servers on loopback, ports from --port_file ------------------------------------------
# start_server NAME PID_VAR ARGS...: starts one, waits for its port file, sets NAME_grpc / NAME_metrics.
start_server() {
  local name=$1 pid_var=$2 pid grpc metrics
  shift 2
  "$server_bin" --model "$model_dir" --listen 127.0.0.1:0 --metrics_listen 127.0.0.1:0 \
    --port_file "$work/$name.ports" --mem_len 24 --topk 4 --remain 8 --segment_len 8 "$@" \
    >"$work/$name.log" 2>&1 &
  pid=$!
  printf -v "$pid_var" '%s' "$pid"
  for _ in $(seq 1 300); do
    [[ -s "$work/$name.ports" ]] && break
    kill -0 "$pid" 2>/dev/null || die "trams-server ($name) exited before serving"
    sleep 0.1
  done
  [[ -s "$work/$name.ports" ]] || die "trams-server ($name) wrote no port file in 30 s"
  read -r grpc metrics <"$work/$name.ports"
  [[ "$grpc" =~ ^[0-9]+$ && "$metrics" =~ ^[0-9]+$ && "$metrics" != 0 ]] ||
    die "bad port file ($name): '$(cat "$work/$name.ports")'"
  printf -v "${name}_grpc" '%s' "$grpc"
  printf -v "${name}_metrics" '%s' "$metrics"
  echo "trams-server ($name$([[ $# -gt 0 ]] && echo " $*")): gRPC 127.0.0.1:$grpc, metrics 127.0.0.1:$metrics"
}
start_server server server_pid --device cpu
server="127.0.0.1:$server_grpc"
metrics_port=$server_metrics
# The CUDA code path run on the host: it has a session-pool arena of exactly this many bytes (a multiple
# of the arena's 256-byte alignment) and reports the emulation's device memory.
arena_bytes=8388608
start_server emulated emu_pid --device emulated --gpu_pool_bytes "$arena_bytes"
emu_server="127.0.0.1:$emulated_grpc"

# --- Prometheus: 1 s scrapes of the metrics port, temp tsdb, a free loopback port -----------------
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: trams
    static_configs:
      - targets: ['127.0.0.1:$metrics_port']
  - job_name: trams_emulated
    static_configs:
      - targets: ['127.0.0.1:$emulated_metrics']
EOF

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
prom_port=""
for attempt in 1 2 3 4 5; do
  candidate=$((20000 + (RANDOM * 7 + attempt) % 30000))
  port_in_use "$candidate" && continue
  rm -rf "$work/tsdb"
  "$prometheus_bin" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$candidate" --log.level=warn >"$work/prometheus.log" 2>&1 &
  prom_pid=$!
  for _ in $(seq 1 300); do
    if curl -sf "http://127.0.0.1:$candidate/-/ready" >/dev/null 2>&1; then prom_port=$candidate; break; fi
    kill -0 "$prom_pid" 2>/dev/null || break
    sleep 0.1
  done
  [[ -n "$prom_port" ]] && break
  kill "$prom_pid" 2>/dev/null || true
  wait "$prom_pid" 2>/dev/null || true
  prom_pid=""
done
[[ -n "$prom_port" ]] || die "prometheus did not become ready"
prom="http://127.0.0.1:$prom_port"
echo "prometheus: $prom"

# --- query helpers ------------------------------------------------------------------------------
# Prints the instant-query result as lines "<metric labels json> <value>", one per series.
query() {
  local body
  body=$(curl -sfG --max-time 5 --data-urlencode "query=$1" "$prom/api/v1/query") || return 1
  [[ "$body" == *'"status":"success"'* ]] || return 1
  grep -o '"metric":{[^}]*},"value":\[[^]]*\]' <<<"$body" |
    sed -E 's/^"metric":(\{[^}]*\}),"value":\[[^,]*,"([^"]*)"\]$/\1 \2/' || true
}
# The value of the single series matching `pattern` (grep -E over the labels), or nothing.
value_of() { query "$1" | grep -E -- "${2:-.}" | head -n 1 | awk '{print $NF}'; }
is_positive() { awk -v v="$1" 'BEGIN { exit !(v != "" && v+0 == v && v+0 > 0 && v != "NaN" && v != "+Inf") }'; }
# Polls until `check` succeeds or `seconds` pass.
wait_for() {
  local what=$1 seconds=$2 check=$3 i
  for ((i = 0; i < seconds * 2; i++)); do
    if eval "$check"; then return 0; fi
    sleep 0.5
  done
  die "timed out after $seconds s waiting for: $what"
}

# --- load ---------------------------------------------------------------------------------------
client() { "$client_bin" --server "$server" "$@" >>"$work/client.log" 2>&1 || { cat "$work/client.log" >&2; die "trams-client $*"; }; }

# A few KB of text (byte tokenizer: any bytes go).
for i in $(seq 1 40); do
  echo "Line $i: the quick brown fox jumps over the lazy dog while the memory pool keeps what matters."
done >"$work/text.txt"

sessions=(alpha beta gamma)
for s in "${sessions[@]}"; do client create --session "$s"; done
client score --session alpha --file "$work/text.txt"
client generate --session gamma --prompt "Once upon a time" --max_tokens 12 --seed 7

# Score's latency histogram must be seen by a scrape before the second round, so that rate() over
# the window sees it grow (a series whose first sample already holds every observation rates 0).
wait_for "a scrape with Score latencies" 30 \
  'is_positive "$(value_of "sum(trams_request_duration_seconds_count{job=\"trams\",method=\"Score\"})")"'
client score --session beta --file "$work/text.txt"
client score --session alpha --file "$work/text.txt"
client generate --session beta --prompt "And then" --max_tokens 8 --seed 11

# --- checks -------------------------------------------------------------------------------------
wait_for "target up" 30 '[[ "$(value_of "up{job=\"trams\"}")" == 1 ]]'
echo "ok: target 127.0.0.1:$metrics_port is up"

p90_query='histogram_quantile(0.9, sum by (le, method) (rate(trams_request_duration_seconds_bucket{job="trams"}[1m])))'
wait_for "a p90 Score latency from histogram_quantile" 60 \
  'p90=$(value_of "$p90_query" "\"method\":\"Score\""); is_positive "$p90"'
echo "ok: p90 Score latency ${p90} s"

wait_for "trams_tokens_scored_total > 0" 30 \
  'scored=$(value_of "trams_tokens_scored_total{job=\"trams\"}"); is_positive "$scored"'
echo "ok: trams_tokens_scored_total = $scored"

wait_for "trams_generate_time_to_first_token_seconds_count > 0" 30 \
  'ttft=$(value_of "trams_generate_time_to_first_token_seconds_count{job=\"trams\"}"); is_positive "$ttft"'
echo "ok: trams_generate_time_to_first_token_seconds_count = $ttft"

wait_for "trams_sessions_active == ${#sessions[@]}" 30 \
  'active=$(value_of "trams_sessions_active{job=\"trams\"}"); [[ -n "$active" ]] && awk -v a="$active" -v n="${#sessions[@]}" "BEGIN { exit !(a + 0 == n) }"'
echo "ok: trams_sessions_active = $active"

# --- device memory metrics: the emulated server has them, the cpu server has none ---------------
# equals A B: numerically equal (Prometheus may write 8388608 as 8.388608e+06).
equals() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a != "" && b != "" && a + 0 == b + 0) }'; }
series_count() { query "$1" | grep -c . || true; }
emu='job="trams_emulated",device="emulated:0"'

wait_for "target trams_emulated up" 30 '[[ "$(value_of "up{job=\"trams_emulated\"}")" == 1 ]]'
wait_for "trams_pool_arena_capacity_bytes{device=\"emulated:0\"} == $arena_bytes" 30 \
  'capacity=$(value_of "trams_pool_arena_capacity_bytes{$emu}"); equals "$capacity" "$arena_bytes"'
echo "ok: trams_pool_arena_capacity_bytes{device=\"emulated:0\"} = $capacity"
wait_for "trams_gpu_memory_total_bytes{device=\"emulated:0\"} > 0" 30 \
  'gpu_total=$(value_of "trams_gpu_memory_total_bytes{$emu}"); is_positive "$gpu_total"'
wait_for "trams_gpu_memory_used_bytes{device=\"emulated:0\"} > 0" 30 \
  'gpu_used=$(value_of "trams_gpu_memory_used_bytes{$emu}"); is_positive "$gpu_used"'
echo "ok: trams_gpu_memory_total_bytes = $gpu_total, trams_gpu_memory_used_bytes = $gpu_used (device=\"emulated:0\")"
arena_before=$(value_of "trams_pool_arena_used_bytes{$emu}")
[[ -n "$arena_before" ]] || die "no trams_pool_arena_used_bytes{device=\"emulated:0\"}"
equals "$arena_before" 0 || die "trams_pool_arena_used_bytes before any session: $arena_before, not 0"

created=$("$client_bin" --server "$emu_server" create --session delta 2>&1 >/dev/null) ||
  { echo "$created" >&2; die "trams-client create on the emulated server"; }
pool=$(grep -o 'pool_bytes=[0-9]*' <<<"$created" | cut -d= -f2)
is_positive "$pool" || die "no pool_bytes in the client's answer: $created"
expected=$(awk -v a="$arena_before" -v p="$pool" 'BEGIN { printf "%.0f", a + p }')
wait_for "trams_pool_arena_used_bytes{device=\"emulated:0\"} == $arena_before + $pool" 30 \
  'arena_used=$(value_of "trams_pool_arena_used_bytes{$emu}"); equals "$arena_used" "$expected"'
echo "ok: trams_pool_arena_used_bytes{device=\"emulated:0\"} grew $arena_before -> $arena_used (pool_bytes $pool)"
wait_for "trams_pool_bytes{device=\"emulated:0\"} == $pool" 30 \
  'pool_gauge=$(value_of "trams_pool_bytes{$emu}"); equals "$pool_gauge" "$pool"'
echo "ok: trams_pool_bytes{device=\"emulated:0\"} = $pool_gauge"
wait_for "trams_sessions_resident{device=\"emulated:0\"} == 1" 30 \
  'resident=$(value_of "trams_sessions_resident{$emu}"); equals "$resident" 1'
echo "ok: trams_sessions_resident{device=\"emulated:0\"} = $resident"

# The cpu server has been scraped all along (the checks above saw its series): the device series are
# absent there, not zero; its pool gauge carries the real label.
for name in trams_gpu_memory_used_bytes trams_gpu_memory_total_bytes trams_pool_arena_used_bytes \
            trams_pool_arena_capacity_bytes trams_pool_arena_largest_free_bytes; do
  n=$(series_count "$name{job=\"trams\"}")
  [[ "$n" == 0 ]] || die "$name on the cpu server: $(query "$name{job=\"trams\"}")"
  [[ "$(value_of "absent($name{job=\"trams\"})")" == 1 ]] || die "absent($name{job=\"trams\"}) is not 1"
done
echo "ok: no gpu/arena series on the cpu server"
cpu_pool=$(value_of 'trams_pool_bytes{job="trams",device="cpu"}')
is_positive "$cpu_pool" || die "trams_pool_bytes{device=\"cpu\"} = '$cpu_pool' with ${#sessions[@]} sessions"
echo "ok: trams_pool_bytes{device=\"cpu\"} = $cpu_pool"

echo "PASS"
