#!/usr/bin/env bash
# The Prometheus alert rules of deploy/prometheus: `promtool check rules` (syntax, PromQL, templates),
# `promtool test rules` (alerts_test.yml's unit tests), and that every alert in alerts.yml has a unit
# test where it fires and one where it must not (an `exp_alerts: []`).
# Usage: alerts_test.sh [DIR] (default: the repo's deploy/prometheus). Optional PROMTOOL (binary).
# Exits 77 (ctest SKIP_RETURN_CODE) when promtool is missing (Debian package 'prometheus').
set -euo pipefail

dir=${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../../deploy/prometheus" && pwd)}
promtool=${PROMTOOL:-}
if [[ -z "$promtool" ]]; then
  if [[ -x /usr/bin/promtool ]]; then promtool=/usr/bin/promtool
  else promtool=$(command -v promtool || true); fi
fi
[[ -n "$promtool" && -x "$promtool" ]] ||
  { echo "SKIP: promtool not found (Debian package 'prometheus'; deploy/deps.sh --tests installs it)" >&2; exit 77; }
rules="$dir/alerts.yml"
tests="$dir/alerts_test.yml"
[[ -f "$rules" && -f "$tests" ]] || { echo "FAIL: no $rules or $tests" >&2; exit 1; }

"$promtool" check rules "$rules"
# promtool resolves rule_files relative to the test file's directory.
(cd "$dir" && "$promtool" test rules "$(basename "$tests")")

# Coverage: alertname lines in the tests, each followed by its exp_alerts (empty: `[]`; firing: a list).
mapfile -t alerts < <(sed -nE 's/^[[:space:]]*-[[:space:]]*alert:[[:space:]]*([A-Za-z0-9_]+).*/\1/p' "$rules")
[[ ${#alerts[@]} -gt 0 ]] || { echo "FAIL: no alerts in $rules" >&2; exit 1; }
coverage=$(awk '
  /^[[:space:]]*alertname:/ { name = $2 }
  /^[[:space:]]*exp_alerts:[[:space:]]*\[\][[:space:]]*(#.*)?$/ { if (name != "") quiet[name] = 1; next }
  /^[[:space:]]*exp_alerts:[[:space:]]*(#.*)?$/ { if (name != "") fires[name] = 1 }
  END { for (n in quiet) print "quiet", n; for (n in fires) print "fires", n }' "$tests")
missing=0
for a in "${alerts[@]}"; do
  for kind in fires quiet; do
    if ! grep -qx "$kind $a" <<<"$coverage"; then
      echo "FAIL: alert $a has no unit test where it $([[ $kind == fires ]] && echo fires || echo "must not fire (exp_alerts: [])")" >&2
      missing=1
    fi
  done
done
[[ $missing == 0 ]] || exit 1
echo "ok: ${#alerts[@]} alerts, each tested firing and not firing"
echo "PASS"
