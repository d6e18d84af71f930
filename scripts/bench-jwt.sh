#!/usr/bin/env bash
# JWT authentication + authorization cost, in one run on one Envoy 1.40 (one worker thread),
# same requests (GET / with Istio's demo.jwt), four listeners answering 200 themselves:
#   1. no filter;
#   2. Envoy's native jwt_authn + RBAC (requestPrincipals), as Istio configures them;
#   3. Ward's wasm engine (RequestAuthentication + the same policy), verified tokens cached;
#   4. the same with the cache off: every request pays the signature check ("cold").
# Usage: scripts/bench-jwt.sh [SECONDS per measurement, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-20}"
. scripts/lib/bench-envoy.sh
scripts/setup.sh
cargo build --quiet --release -p xds-server -p wardctl --bins
work="$(mktemp -d)"
trap 'kill "$envoy_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

samples=../shared/peer-tests/istio-jwt
token="$(cat "$samples/demo.jwt")"
python3 - "$samples/jwks.json" "$PWD/target/wasm32-wasip1/release/wasm_authz.wasm" >"$work/envoy.json" <<'EOF'
import json, sys
jwks = open(sys.argv[1]).read()
module = sys.argv[2]
issuer = "testing@secure.istio.io"
principal = issuer + "/" + issuer

def manager(name, filters):
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
        "http_filters": filters + [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}

def listener(port, filters):
    return {"name": "l%d" % port, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [manager("l%d" % port, filters)]}]}

jwt_authn = {"name": "envoy.filters.http.jwt_authn", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
    "providers": {"origins-0": {"issuer": issuer, "local_jwks": {"inline_string": jwks},
                                "payload_in_metadata": "payload", "forward": True}},
    "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
        {"provider_name": "origins-0"}, {"allow_missing": {}}]}}}]}}
meta = lambda key, value: {"metadata": {"filter": "envoy.filters.http.jwt_authn",
    "path": [{"key": "payload"}, {"key": key}], "value": {"string_match": {"exact": value}}}}
rbac = {"name": "envoy.filters.http.rbac", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
    "rules": {"policies": {"ns[default]-policy[require-jwt]-rule[0]": {
        "permissions": [{"any": True}],
        "principals": [{"and_ids": {"ids": [meta("iss", issuer), meta("sub", issuer)]}}]}}}}}

def ward(cache):
    config = {"workload": "bench", "namespace": "default", "identity": "spiffe://cluster.local/ns/default/sa/bench",
              "version": "bench", "authorization": {
                  "cacheTokens": cache,
                  "jwtRules": [{"issuer": issuer, "jwks": jwks}],
                  "policies": [{"name": "require-jwt", "namespace": "default", "action": "ALLOW",
                                "rules": [{"from": [{"requestPrincipals": [principal]}]}]}]}}
    return {"name": "ward-authz", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": "ward-authz", "root_id": "ward-authz", "fail_open": False,
                   "vm_config": {"vm_id": "ward-authz", "runtime": "envoy.wasm.runtime.v8",
                                 "code": {"local": {"filename": module}}},
                   "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                     "value": json.dumps(config)}}}}

print(json.dumps({
    "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 20000}}},
    "static_resources": {"listeners": [
        listener(20001, []),
        listener(20002, [jwt_authn, rbac]),
        listener(20003, [ward(True)]),
        listener(20004, [ward(False)]),
    ]}}))
EOF

start_bench_envoy "$work/envoy.json" "$work/envoy.log"

# Each listener decides as intended before it is measured: no token 403 (200 with no
# filter), a forged token 401, demo.jwt 200.
expect() {
  local port="$1" want="$2" got
  shift 2
  got="$(curl -s -o /dev/null -w '%{http_code}' "$@" "http://127.0.0.1:$port/")"
  [ "$got" = "$want" ] || { echo "listener $port: expected $want, got $got ($*)" >&2; exit 1; }
}
expect 20001 200
for port in 20002 20003 20004; do
  expect "$port" 403
  expect "$port" 401 -H "Authorization: Bearer ${token%?}x"
  expect "$port" 200 -H "Authorization: Bearer $token"
done

row() {
  bench_row "$1" "$2" bench -H "Authorization: Bearer $token"
}

echo
echo "8 users, no think time, ${SECONDS_EACH} s each, one Envoy worker; every request carries demo.jwt"
echo
echo "| listener | requests/s | p50 ms | p99 ms | errors | statuses |"
echo "|---|---|---|---|---|---|"
row "no filter" 20001
row "Envoy jwt_authn + RBAC" 20002
row "Ward wasm engine, cached token" 20003
row "Ward wasm engine, cold (no cache)" 20004
