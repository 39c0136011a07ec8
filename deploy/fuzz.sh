#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz into ./build-fuzz (clang-14, ASan + UBSan) and runs each
# for N seconds (default 30) on a scratch copy of its seed corpus: new corpus files never land in the
# repository. Fails on the first crash, leak, timeout or out-of-memory; the reproducer (crash-*,
# timeout-*, oom-*) is kept under build-fuzz/findings/<target>/.
#   deploy/fuzz.sh [seconds-per-target] [target...]
# Environment: FUZZ_JOBS (build parallelism, default 2), FUZZ_NICE (niceness, default 10).
set -euo pipefail
# All in a function that bash parses whole before running it: the script may be edited during a run.
main() {
  cd "$(dirname "$0")/.."
  seconds="${1:-30}"
  shift || true
  targets=("$@")
  ((${#targets[@]})) || targets=(fuzz_safetensors fuzz_config fuzz_tokenizer fuzz_weights fuzz_trams_settings fuzz_requests fuzz_snapshot fuzz_session_snapshot fuzz_auth_keys fuzz_log_line)
  jobs="${FUZZ_JOBS:-2}"
  nice_level="${FUZZ_NICE:-10}"

  # clang-14 and libFuzzer from Debian 12, like deploy/deps.sh does for the rest.
  missing=()
  for p in clang-14 libfuzzer-14-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    echo "fuzz: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi

  nice -n "$nice_level" cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTRAMS_FUZZ=ON \
    -DTRAMS_WITH_CUDA=OFF -DCMAKE_CXX_COMPILER=clang++-14 >/dev/null
  nice -n "$nice_level" ninja -C build-fuzz -j "$jobs" "${targets[@]}"

  export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
  export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
  for t in "${targets[@]}"; do
    work="$(mktemp -d)"
    cp -r "tests/fuzz/corpus/$t" "$work/corpus"
    findings="build-fuzz/findings/$t"
    mkdir -p "$findings"
    echo "fuzz: $t for ${seconds}s" >&2
    # -rss_limit_mb: a hostile header must not make the loaders build gigabytes.
    if ! nice -n "$nice_level" "build-fuzz/tests/fuzz/$t" -max_total_time="$seconds" -rss_limit_mb=2048 \
        -timeout=10 -print_final_stats=1 -artifact_prefix="$findings/" "$work/corpus" 2> "$findings/log.txt"; then
      tail -n 40 "$findings/log.txt" >&2
      echo "fuzz: $t FAILED; reproducer under $findings/ (run: build-fuzz/tests/fuzz/$t <file>)" >&2
      rm -rf "$work"
      exit 1
    fi
    grep -E '^stat::number_of_executed_units|^Done ' "$findings/log.txt" | tr '\n' ' ' >&2
    echo >&2
    rm -rf "$work"
  done
  echo "fuzz: all ${#targets[@]} targets ran ${seconds}s without a crash" >&2
}
main "$@"
