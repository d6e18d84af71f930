#!/usr/bin/env bash
# Cost of the retry budget filter on the client's outbound path, in one run on one Envoy 1.40
# (one worker thread). Three listeners route the same requests to the same upstream (a
# listener answering 200) with the same retry policy (5xx, up to 5 retries):
#   1. no filter;
#   2. Ward's retry budget filter (ward-retry-budget, the route retryable: every request
#      is granted from and charged to the shared budget);
#   3. the filter present but the route not retryable (a lookup only).
# Then the budget's accuracy against Linkerd's, from `wardctl bench retry-budget`.
# Usage: scripts/bench-retry.sh [SECONDS per measurement, default 20] [--no-accuracy]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-20}"
. scripts/lib/bench-envoy.sh
scripts/setup.sh
cargo build --quiet --release -p xds-server -p wardctl --bins
work="$(mktemp -d)"
trap 'kill "$envoy_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

python3 - "$PWD/target/wasm32-wasip1/release/wasm_authz.wasm" >"$work/envoy.json" <<'EOF'
import json, sys
module = sys.argv[1]

def manager(name, filters, route_name):
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
            "include_attempt_count_in_response": True,
            "routes": [{"name": route_name, "match": {"prefix": "/"}, "route": {
                "cluster": "upstream", "timeout": "0s",
                "retry_policy": {"retry_on": "5xx,reset,connect-failure,refused-stream", "num_retries": 5}}}]}]},
        "http_filters": filters + [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}

def listener(port, filters, route_name="retryable"):
    return {"name": "l%d" % port, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [manager("l%d" % port, filters, route_name)]}]}

budget = {"workload": "bench", "namespace": "default", "identity": "spiffe://cluster.local/ns/default/sa/bench",
          "version": "bench", "outbound": {
              "budgets": {"upstream.default.svc.cluster.local": {"retryRatio": 0.2, "minRetriesPerSecond": 10, "ttlMs": 10000}},
              "retryableRoutes": {"upstream/retryable": {"budget": "upstream.default.svc.cluster.local", "maxRetries": 5}}}}
ward = {"name": "ward-retry-budget", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
    "config": {"name": "ward-retry-budget", "root_id": "ward-retry-budget", "fail_open": False,
               "vm_config": {"vm_id": "ward-authz", "runtime": "envoy.wasm.runtime.v8",
                             "code": {"local": {"filename": module}}},
               "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                 "value": json.dumps(budget)}}}}

upstream = {"name": "upstream", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 20010}},
    "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "upstream",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}

print(json.dumps({
    "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 20000}}},
    "static_resources": {
        "listeners": [upstream, listener(20001, []), listener(20002, [ward]),
                      listener(20003, [ward], "not-retryable")],
        "clusters": [{"name": "upstream", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "upstream", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 20010}}}}]}]}}]}}))
EOF

start_bench_envoy "$work/envoy.json" "$work/envoy.log"

# The filter is in the path before anything is measured: it counts the requests it granted.
for port in 20001 20002 20003; do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")" = 200 ] ||
    { echo "listener $port does not answer 200" >&2; cat "$work/envoy.log" >&2; exit 1; }
done
curl -s http://127.0.0.1:20000/stats | grep -q 'wasmcustom.ward.retry_budget.upstream.default.svc.cluster.local.requests: 1' ||
  { echo "the budget filter did not count the request" >&2; exit 1; }

row() {
  bench_row "$1" "$2" upstream
}

echo
echo "8 users, no think time, ${SECONDS_EACH} s each, one Envoy worker, through the outbound route to a 200 upstream"
echo
echo "| listener | requests/s | p50 ms | p99 ms | errors | statuses |"
echo "|---|---|---|---|---|---|"
row "no filter" 20001
row "budget filter, retryable route" 20002
row "budget filter, route not retryable" 20003
echo
[ "${2:-}" = "--no-accuracy" ] && exit 0
echo "Budget accuracy: retries allowed by the filter's budget and by Linkerd's, retryRatio 0.2, 10/s, ttl 10 s, 60 s per case"
echo
target/release/wardctl bench retry-budget
