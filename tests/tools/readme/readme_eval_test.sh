#!/usr/bin/env bash
# Runs every trams-eval command of README.md as typed, from the repository root, with the binary under
# test standing in for build/engine/trams-eval (a README flag that does not exist fails here).
#   tests/tools/readme/readme_eval_test.sh <trams-eval binary> <repository root>
set -euo pipefail
bin="$1"
cd "$2"
# One command per line: join the lines a trailing backslash continues.
cmds="$(awk '/^build\/engine\/trams-eval /{cmd = $0; while (cmd ~ /\\$/) {sub(/\\$/, "", cmd); getline line; cmd = cmd line}
             print cmd}' README.md)"
[[ -n "$cmds" ]] || { echo "README.md has no trams-eval command" >&2; exit 1; }
while IFS= read -r cmd; do
  echo "+ $cmd"
  bash -c "$bin ${cmd#build/engine/trams-eval }"
done <<< "$cmds"
