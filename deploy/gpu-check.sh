#!/usr/bin/env bash
# GPU check: builds only what it needs (Release, CUDA on) in build-gpu/ and runs, each step timed, its result
# recorded, and the next step run whatever happened:
#   a  nvidia-smi summary (skipped when nvidia-smi is absent)
#   b  cuda_loader_test: the loader must report the device ("[ probe ] CUDA: N device(s) ...")
#   c  ctest -L gpu (every test of tests/cuda: op parity, golden files, host engine) with TRAMS_REQUIRE_GPU=1
#   d  compute-sanitizer memcheck and racecheck on cuda_ops_test's cuda cases (skipped without the tool)
#   e  trams-eval --device cuda against --device cpu on the bundled model: bpc within 2e-3 relative
#   f  the server tests on the device (TRAMS_TEST_DEVICE=cuda, TRAMS_REQUIRE_GPU=1)
#   g  trams-cuda-bench (output captured; fails when it finds no device)
# One results file (default build-gpu/gpu-check-results.txt): a summary table, then every step's output.
# Exit status: 0 when no step failed (skips do not fail), 1 otherwise, 2 on bad usage.
#
# usage: deploy/gpu-check.sh [RESULTS_FILE] [--build-dir DIR] [--no-build] [--jobs N]
#   --build-dir DIR  build tree (default build-gpu; the results file defaults to DIR/gpu-check-results.txt)
#   --no-build       use the binaries already in the build tree (configure and build are skipped)
#   --jobs N         build and ctest parallelism (default: nproc)
# Environment: CMAKE_CUDA_ARCHITECTURES (default: "native" when nvidia-smi lists a GPU, else the project's
# 80;90), TRAMS_GPU_CHECK_STEP_TIMEOUT (seconds per command, default 300).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)

BUILD_DIR=build-gpu
RESULTS=""
DO_BUILD=1
JOBS=$(nproc 2>/dev/null || echo 4)
STEP_TIMEOUT=${TRAMS_GPU_CHECK_STEP_TIMEOUT:-300}
BPC_TOLERANCE=2e-3  # relative |bpc_cuda - bpc_cpu| / bpc_cpu

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) [ $# -ge 2 ] || { usage >&2; exit 2; }; BUILD_DIR=$2; shift 2 ;;
    --build-dir=*) BUILD_DIR=${1#*=}; shift ;;
    --no-build) DO_BUILD=0; shift ;;
    --jobs) [ $# -ge 2 ] || { usage >&2; exit 2; }; JOBS=$2; shift 2 ;;
    --jobs=*) JOBS=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu-check: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) [ -z "$RESULTS" ] || { echo "gpu-check: one results file only" >&2; exit 2; }; RESULTS=$1; shift ;;
  esac
done
case "$BUILD_DIR" in /*) B=$BUILD_DIR ;; *) B=$ROOT/$BUILD_DIR ;; esac
[ -n "$RESULTS" ] || RESULTS=$B/gpu-check-results.txt
mkdir -p "$B" "$(dirname "$RESULTS")" || exit 2

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 2
trap 'rm -rf "$WORK"' EXIT
SUMMARY=$WORK/summary
DETAILS=$WORK/details
: >"$SUMMARY"
: >"$DETAILS"
FAILED=0

MODEL=$ROOT/models/trams-byte-books
TEXT=$ROOT/tests/data/sample_excerpt.txt
EVAL=$B/engine/trams-eval
LOADER_TEST=$B/tests/cuda/cuda_loader_test
OPS_TEST=$B/tests/cuda/cuda_ops_test
BENCH=$B/trams-cuda-bench
SERVER_BINARIES=(score_call_test generate_call_test lm_service_test session_limits_test server_app_test persistence_test
                 server_hardening_test)
TARGETS=(trams_cuda cuda_math_test cuda_loader_test cuda_ops_test cuda_golden_test stream_image_test trams-eval trams-cuda-bench
         "${SERVER_BINARIES[@]}")
# cuda_ops_test names its cases Backends/DeviceOpsTest.<Op>/<backend>: the cuda ones end in /cuda.
OPS_CUDA_FILTER='*/cuda'
# The server tests' names (their gtest suites in tests/server; ctest -R is case-sensitive).
SERVER_TESTS_REGEX='[Ss]erver|HardeningTest|PersistenceTest'

# A step's verdict: its function returns 0 (PASS), 77 (SKIP) or anything else (FAIL); it may set REASON.
REASON=""
step() {
  local id=$1 title=$2 fn=$3 out=$WORK/step.out rc verdict t0 t1 secs
  REASON=""
  echo "== [$id] $title" | tee -a "$DETAILS"
  t0=$(date +%s.%N)
  "$fn" >"$out" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) verdict=PASS ;;
    77) verdict=SKIP ;;
    *) verdict=FAIL; FAILED=1; [ -n "$REASON" ] || REASON="exit status $rc" ;;
  esac
  cat "$out" >>"$DETAILS"
  printf -- '-- [%s] %s in %ss%s\n\n' "$id" "$verdict" "$secs" "${REASON:+: $REASON}" >>"$DETAILS"
  printf '%-4s  %-5s  %7ss  %s%s\n' "$verdict" "$id" "$secs" "$title" "${REASON:+  ($REASON)}" | tee -a "$SUMMARY"
}

# Runs a command under the per-command timeout; 124 means it ran out of time.
t() { timeout --kill-after=10 "$STEP_TIMEOUT" "$@"; }
need() {  # need FILE WHAT: fails the step when a binary was not built
  if [ ! -x "$1" ]; then
    REASON="$2 not built ($1 missing: see the build step)"
    echo "$REASON"
    return 1
  fi
}
gpu_listed() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; }

step_build() {
  local archs=${CMAKE_CUDA_ARCHITECTURES:-}
  if [ -z "$archs" ] && gpu_listed; then archs=native; fi
  echo "configure: Release, TRAMS_WITH_CUDA=ON, CUDA architectures ${archs:-project default}"
  if ! t cmake -S "$ROOT" -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTRAMS_WITH_CUDA=ON \
      ${archs:+"-DCMAKE_CUDA_ARCHITECTURES=$archs"}; then
    command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ] || REASON="no nvcc: "
    REASON="${REASON}cmake configure with TRAMS_WITH_CUDA=ON failed"
    return 1
  fi
  # -k 0: build every target that can be built, so that one broken target fails only the steps needing it.
  if ! t cmake --build "$B" -j "$JOBS" --target "${TARGETS[@]}" -- -k 0; then
    local missing=()
    local f
    for f in "$B/libtrams_cuda.so" "$LOADER_TEST" "$OPS_TEST" "$B/tests/cuda/cuda_golden_test" "$EVAL" "$BENCH" \
             "${SERVER_BINARIES[@]/#/$B/tests/server/}"; do
      [ -e "$f" ] || missing+=("${f#"$B"/}")
    done
    REASON="build failed${missing:+; missing: ${missing[*]}}"
    return 1
  fi
}

step_smi() {
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    REASON="nvidia-smi not installed"
    echo "$REASON"
    return 77
  fi
  if ! t nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used,compute_cap,temperature.gpu \
      --format=csv; then
    t nvidia-smi
    REASON="nvidia-smi failed (no driver or no device?)"
    return 1
  fi
  t nvidia-smi -L
}

step_loader() {
  need "$LOADER_TEST" cuda_loader_test || return 1
  local out=$WORK/loader.out rc
  TRAMS_REQUIRE_GPU=1 t "$LOADER_TEST" >"$out" 2>&1
  rc=$?
  cat "$out"
  local probe
  probe=$(grep -m1 '^\[ probe \]' "$out" | sed 's/^\[ probe \] //')
  if [ "$rc" -ne 0 ]; then
    REASON="cuda_loader_test failed (rc $rc)${probe:+: $probe}"
    [ -n "$probe" ] || REASON="$REASON: $(grep -m1 'TRAMS_REQUIRE_GPU=1 but' "$out")"
    return 1
  fi
  case "$probe" in
    CUDA:*) REASON=$probe ;;
    *) REASON="the loader reports no device: ${probe:-no probe line}"; return 1 ;;
  esac
}

step_ctest_gpu() {
  [ -f "$B/CTestTestfile.cmake" ] || { REASON="no build tree at $B"; echo "$REASON"; return 1; }
  # ctest -L gpu silently leaves out a test binary that was not built: require both.
  need "$OPS_TEST" cuda_ops_test || return 1
  need "$B/tests/cuda/cuda_golden_test" cuda_golden_test || return 1
  need "$B/tests/cuda/stream_image_test" stream_image_test || return 1
  local out=$WORK/ctest-gpu.out rc
  TRAMS_REQUIRE_GPU=1 t ctest --test-dir "$B" -L gpu --output-on-failure --no-tests=error -j "$JOBS" \
    --timeout 120 >"$out" 2>&1
  rc=$?
  cat "$out"
  REASON=$(grep -E 'tests passed|tests failed' "$out" | tail -1)
  [ "$rc" -eq 0 ] || { [ -n "$REASON" ] || REASON="ctest -L gpu: rc $rc"; return 1; }
}

sanitize() {  # sanitize TOOL
  if ! command -v compute-sanitizer >/dev/null 2>&1; then
    REASON="compute-sanitizer not installed"
    echo "$REASON"
    return 77
  fi
  need "$OPS_TEST" cuda_ops_test || return 1
  local out=$WORK/sanitizer.out rc
  TRAMS_REQUIRE_GPU=1 t compute-sanitizer --tool "$1" --error-exitcode 99 --print-limit 20 \
    "$OPS_TEST" --gtest_filter="$OPS_CUDA_FILTER" >"$out" 2>&1
  rc=$?
  cat "$out"
  local summary
  summary=$(grep -m1 -E '========= (ERROR|RACECHECK|LEAK)? ?SUMMARY' "$out")
  case $rc in
    0) REASON=${summary:-clean} ;;
    99) REASON="$1 reported errors${summary:+: $summary}"; return 1 ;;
    *) REASON="cuda_ops_test under $1: rc $rc$(grep -m1 -o 'TRAMS_REQUIRE_GPU=1 but.*' "$out" | sed 's/^/: /')"
       return 1 ;;
  esac
}
step_memcheck() { sanitize memcheck; }
step_racecheck() { sanitize racecheck; }

# The README's command (tests/data/sample_excerpt.txt, TRAMS M=400 topk 50 remain 150, n=64, batch 4).
eval_bpc() {  # eval_bpc DEVICE OUTFILE: prints the JSON line; the bpc goes to OUTFILE.bpc
  t "$EVAL" --model "$MODEL" --input "$TEXT" --mode trams --mem_len 400 --topk 50 --remain 150 --tgt_len 64 \
    --batch 4 --json --device "$1" >"$2" 2>"$2.err"
  local rc=$?
  cat "$2" "$2.err"
  sed -n 's/.*"bpc": *\([-0-9.eE+]*\).*/\1/p' "$2" | head -1 >"$2.bpc"
  return $rc
}
step_eval() {
  need "$EVAL" trams-eval || return 1
  local cpu=$WORK/eval-cpu.json cuda=$WORK/eval-cuda.json
  echo "-- cpu"
  eval_bpc cpu "$cpu" || { REASON="trams-eval --device cpu failed: $(tail -1 "$cpu.err")"; return 1; }
  echo "-- cuda"
  eval_bpc cuda "$cuda" || { REASON="trams-eval --device cuda failed: $(tail -1 "$cuda.err")"; return 1; }
  local b_cpu b_cuda
  b_cpu=$(cat "$cpu.bpc")
  b_cuda=$(cat "$cuda.bpc")
  if [ -z "$b_cpu" ] || [ -z "$b_cuda" ]; then REASON="no bpc in trams-eval's output"; return 1; fi
  grep -q '"device": "cuda' "$cuda" || { REASON="--device cuda did not run on the device"; return 1; }
  local verdict
  verdict=$(awk -v a="$b_cuda" -v b="$b_cpu" -v tol="$BPC_TOLERANCE" 'BEGIN {
    d = a - b; if (d < 0) d = -d; r = (b != 0) ? d / (b < 0 ? -b : b) : d;
    printf "%s %.3g", (r <= tol) ? "ok" : "over", r }')
  REASON="bpc cpu $b_cpu, cuda $b_cuda, relative difference ${verdict#* } (tolerance $BPC_TOLERANCE)"
  echo "$REASON"
  [ "${verdict%% *}" = ok ]
}

step_server() {
  [ -f "$B/CTestTestfile.cmake" ] || { REASON="no build tree at $B"; echo "$REASON"; return 1; }
  local bin
  for bin in "${SERVER_BINARIES[@]}"; do
    need "$B/tests/server/$bin" "$bin" || return 1
  done
  local out=$WORK/ctest-server.out rc
  TRAMS_TEST_DEVICE=cuda TRAMS_REQUIRE_GPU=1 t ctest --test-dir "$B" -R "$SERVER_TESTS_REGEX" --output-on-failure \
    --no-tests=error -j "$JOBS" --timeout 120 >"$out" 2>&1
  rc=$?
  cat "$out"
  REASON=$(grep -E 'tests passed|tests failed' "$out" | tail -1)
  [ "$rc" -eq 0 ] || { [ -n "$REASON" ] || REASON="ctest -R '$SERVER_TESTS_REGEX': rc $rc"; return 1; }
}

step_bench() {
  need "$BENCH" trams-cuda-bench || return 1
  echo "-- trams-cuda-bench --help"
  t "$BENCH" --help  # prints its usage and exits 2
  echo "-- trams-cuda-bench"
  local out=$WORK/bench.out rc
  t "$BENCH" >"$out" 2>&1
  rc=$?
  cat "$out"
  local probe
  probe=$(head -1 "$out")
  [ "$rc" -eq 0 ] || { REASON="trams-cuda-bench: rc $rc"; return 1; }
  case "$probe" in
    CUDA:*) ;;
    *) REASON="it ran on no device: $probe"; return 1 ;;
  esac
}

{
  echo "trams-serve GPU check"
  echo "date:   $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "host:   $(uname -n) ($(uname -sr))"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet HEAD \
    2>/dev/null || echo ' (with local changes)')"
  echo "build:  $B"
} >"$WORK/header"
cat "$WORK/header"
T_START=$(date +%s)

if [ "$DO_BUILD" -eq 1 ]; then
  step build "configure and build (${TARGETS[*]})" step_build
else
  printf '%-4s  %-5s  %7ss  %s\n' SKIP - 0.0 "build (--no-build)" | tee -a "$SUMMARY"
fi
step a "nvidia-smi summary" step_smi
step b "cuda_loader_test reports the device" step_loader
step c "ctest -L gpu with TRAMS_REQUIRE_GPU=1" step_ctest_gpu
step d1 "compute-sanitizer memcheck, cuda_ops_test --gtest_filter='$OPS_CUDA_FILTER'" step_memcheck
step d2 "compute-sanitizer racecheck, cuda_ops_test --gtest_filter='$OPS_CUDA_FILTER'" step_racecheck
step e "trams-eval --device cuda vs cpu, bpc within $BPC_TOLERANCE relative" step_eval
step f "server tests, TRAMS_TEST_DEVICE=cuda TRAMS_REQUIRE_GPU=1 (ctest -R '$SERVER_TESTS_REGEX')" step_server
step g "trams-cuda-bench" step_bench

VERDICT=$([ "$FAILED" -eq 0 ] && echo "PASSED" || echo "FAILED")
{
  cat "$WORK/header"
  echo "total:  $(( $(date +%s) - T_START ))s"
  echo "result: $VERDICT"
  echo
  cat "$SUMMARY"
  echo
  echo "==================== step output ===================="
  cat "$DETAILS"
} >"$RESULTS"
echo "result: $VERDICT (details in $RESULTS)"
[ "$FAILED" -eq 0 ]
