#!/usr/bin/env bash
# One command from a fresh clone to the main job: packages, build, then trams-server on the bundled
# model, with the client scoring a sample text as a stream and continuing it by generation. Set
# TRAMS_KEEP_SERVING=1 to leave the server running in the foreground afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/deps.sh
deploy/build.sh
model=${TRAMS_MODEL:-models/trams-byte-books}
text=${TRAMS_TEXT:-tests/data/sample_excerpt.txt}
work=$(mktemp -d)
trap 'kill "${server_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

build/server/trams-server --model "$model" --listen 127.0.0.1:${TRAMS_PORT:-50051} \
  --metrics_listen 127.0.0.1:${TRAMS_METRICS_PORT:-9464} --port_file "$work/ports" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 100); do [[ -s "$work/ports" ]] && break; sleep 0.1; done
read -r port metrics_port < "$work/ports"
client=(build/client/trams-client --server "127.0.0.1:$port")
echo "== trams-server on $model: gRPC :$port, metrics :$metrics_port"
"${client[@]}" info
"${client[@]}" create --session demo --mode trams --mem_len 400 --topk 50 --remain 150 --segment_len 64
echo "== scoring $text as a stream"
"${client[@]}" score --session demo --file "$text"
echo "== generating 200 bytes that continue it (seed 7)"
"${client[@]}" generate --session demo --max_tokens 200 --temperature 0.8 --top_k 40 --seed 7
echo
echo "== which memory tokens TRAMS picked in the last segment (first layers)"
# sed reads to the end (head would exit early and, under pipefail, fail the script with SIGPIPE).
"${client[@]}" explain --session demo | sed -n '1,12p'
echo "== a few metrics"
curl -s "127.0.0.1:$metrics_port/metrics" | grep -E '^trams_(tokens_(scored|generated)_total|sessions_active|batch_size_count)' || true
if [[ -n "${TRAMS_KEEP_SERVING:-}" ]]; then wait "$server_pid"; fi
