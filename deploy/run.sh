#!/usr/bin/env bash
# One command from a fresh clone to the main job on the bundled model: packages, build, then
# trams-eval scoring the bundled sample text in XL and TRAMS modes (the paper's protocol).
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/deps.sh
deploy/build.sh
model=${TRAMS_MODEL:-models/trams-byte-books}
text=${TRAMS_TEXT:-tests/data/sample_excerpt.txt}
for args in "--mode xl --mem-len 200" "--mode trams --mem-len 400 --topk 50 --remain 150"; do
  # shellcheck disable=SC2086
  build/engine/trams-eval --model "$model" --input "$text" --tgt-len 64 --batch 4 $args
done
