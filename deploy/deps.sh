#!/usr/bin/env bash
# Installs the Debian 12 packages trams-serve builds and tests with (idempotent; needs root or sudo).
set -euo pipefail
build_pkgs=(cmake ninja-build g++ pkg-config ccache libxxhash-dev libzstd-dev libhiredis-dev libssl-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libblis-serial-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev)
test_pkgs=(python3-numpy python3-grpcio python3-yaml prometheus grpc-proto curl redis-server nginx openssl systemd dpkg-dev file)  # Node.js comes with the machine image
pkgs=("${build_pkgs[@]}")
if [[ "${1:-}" == "--tests" ]]; then pkgs+=("${test_pkgs[@]}"); fi
if [[ "${2:-}" == "--torch" ]]; then pkgs+=(python3-torch); fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "deps: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Node interop test's client libraries (@grpc/grpc-js), from the npm registry, pinned by the lock file.
node_dir="$(dirname "$0")/../client/node"
if [[ "${1:-}" == "--tests" && ! -d "$node_dir/node_modules" ]] && command -v npm >/dev/null; then
  echo "deps: npm ci in client/node" >&2
  (cd "$node_dir" && npm ci --no-audit --no-fund >/dev/null)
fi
