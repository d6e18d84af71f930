#!/usr/bin/env bash
# Authorization benchmarks, in one run on the exam lab (release build, real Envoys):
#
#  A. The cost of RBAC in the sidecars: professor-tools → exam-scheduler GET at full speed
#     (closed loop, no think time) with STRICT mTLS and no policy, with the lab's policies,
#     and with an ALLOW policy of 100 and of 1,000 rules whose matching rule is the last.
#  B. Seed 002, chapter 9, on one machine: 20 closed-loop users, 100 ms think time (as the
#     thesis' Locust users), against the exam lab with no mesh (straight to the app), with the
#     mesh and mTLS, and with mTLS plus the lab's policies.
#
# Usage: scripts/bench-authz.sh [SECONDS per measurement, default 20]
# Prints a Markdown table for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-20}"
scripts/setup.sh
cargo build --quiet --release -p xds-server -p wardctl --bins
work="$(mktemp -d)"
state="$work/state"
W=(target/release/wardctl --state-dir "$state")
trap '"${W[@]}" down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

cp -r config/exam-lab "$work/config"
rm -rf "$work/config/policies"
"${W[@]}" up "$work/config" --detach \
  --envoy .ward-tools/envoy/envoy/_bin/envoy \
  --wasm target/wasm32-wasip1/release/wasm_authz.wasm \
  --xds-address 127.0.0.1:25010 --xds-admin-address 127.0.0.1:25014 \
  --no-mesh-address 127.0.0.1:25080 >/dev/null

apply() { "${W[@]}" apply -f "$1" >/dev/null 2>&1; }

# An ALLOW policy on exam-scheduler with N rules; only the last matches professor-tools' GET.
rules_policy() {
  local n="$1" file="$work/authz-scheduler.yaml"
  {
    printf 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n'
    printf 'metadata:\n  name: allow-scheduler-access\n  namespace: default\n'
    printf 'spec:\n  selector:\n    matchLabels:\n      app: exam-scheduler\n  rules:\n'
    for i in $(seq 1 $((n - 1))); do
      printf '  - from:\n    - source:\n        principals: ["cluster.local/ns/default/sa/client-%d"]\n' "$i"
      printf '    to:\n    - operation:\n        methods: ["GET"]\n        paths: ["/p-%d/*"]\n' "$i"
    done
    printf '  - from:\n    - source:\n        principals: ["cluster.local/ns/default/sa/professor-tools-sa"]\n'
    printf '    to:\n    - operation:\n        methods: ["GET"]\n'
  } >"$file"
  echo "$file"
}

row() {
  local label="$1"
  shift
  "${W[@]}" bench http exam-scheduler "$@" --duration "${SECONDS_EACH}s" --warmup 3s --json |
    python3 -c '
import json, sys
r = json.load(sys.stdin)
statuses = " ".join("%s×%s" % (s, n) for s, n in r["statuses"].items())
print("| %s | %.0f | %.2f | %.2f | %.2f | %d | %s |" % (sys.argv[1], r["requests_per_second"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["errors"], statuses))
' "$label"
}

header() {
  echo
  echo "$1"
  echo
  echo "| configuration | requests/s | p50 ms | p95 ms | p99 ms | errors | statuses |"
  echo "|---|---|---|---|---|---|---|"
}

header "B. Seed 002 chapter 9: 20 users, 100 ms think time, ${SECONDS_EACH} s each"
row "no mesh (straight to the app)" --direct --users 20 --think-time 100ms
apply config/exam-lab/policies/peer-auth.yaml
row "mesh, STRICT mTLS" --from professor-tools --users 20 --think-time 100ms
for f in authz-scheduler authz-professor authz-student; do apply "config/exam-lab/policies/$f.yaml"; done
row "mesh, STRICT mTLS, lab policies" --from professor-tools --users 20 --think-time 100ms

# Part A starts from STRICT mTLS without authorization policies.
"${W[@]}" down >/dev/null
rm -f "$work/config"/authz-*.yaml
"${W[@]}" up "$work/config" --detach \
  --envoy .ward-tools/envoy/envoy/_bin/envoy \
  --wasm target/wasm32-wasip1/release/wasm_authz.wasm \
  --xds-address 127.0.0.1:25010 --xds-admin-address 127.0.0.1:25014 \
  --no-mesh-address 127.0.0.1:25080 >/dev/null
header "A. RBAC cost: 8 users, no think time, ${SECONDS_EACH} s each (STRICT mTLS throughout)"
row "no policy" --from professor-tools --users 8
for f in authz-scheduler authz-professor authz-student; do apply "config/exam-lab/policies/$f.yaml"; done
row "lab policies (3)" --from professor-tools --users 8
apply "$(rules_policy 100)"
row "100 rules, the last matches" --from professor-tools --users 8
apply "$(rules_policy 1000)"
row "1,000 rules, the last matches" --from professor-tools --users 8
