#!/usr/bin/env bash
# One command from a fresh clone to a passing test suite: packages, build, ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/deps.sh --tests "${TRAMS_TEST_TORCH:+--torch}"
deploy/build.sh
ctest --test-dir build --output-on-failure -j "$(nproc)"
