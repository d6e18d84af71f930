#!/usr/bin/env bash
# Hot reload through real Envoys: the time from a config file write to the first request that
# sees the change, on `wardctl up` of a copy of config/exam-lab. Two kinds of change, each
# ROUNDS times (default 5):
#   new workload: a new Deployment (an http-echo stand-in) and its Service. xds-server reloads
#     and pushes, the runner starts the new instance's Envoy and app, and professor-tools'
#     sidecar routes the new name to it;
#   new Service over a running Deployment (exam-scheduler): xDS only, no process starts.
# The clock starts just before the rename that puts the file in the config directory (the
# way an editor or `wardctl apply` writes) and stops at the first request from professor-tools,
# through its sidecar, that the new service answers (200 and its body); requests go out every
# 5 ms on a new connection each. Includes the 100 ms debounce.
# Usage: scripts/bench-reload.sh [ROUNDS]
#   WARD_PROFILE=debug: the debug binaries; WARD_BUILD=0: use the binaries as they are built.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-5}"
PROFILE="${WARD_PROFILE:-release}"
ENVOY=.ward-tools/envoy/envoy/_bin/envoy
WASM=target/wasm32-wasip1/release/wasm_authz.wasm
[ -x "$ENVOY" ] && [ -f "$WASM" ] || { echo "run scripts/setup.sh first" >&2; exit 1; }
if [ "$PROFILE" = release ] && [ "${WARD_BUILD:-1}" != 0 ]; then
  cargo build --quiet --release -p xds-server -p wardctl --bins
fi
WARDCTL="$PWD/target/$PROFILE/wardctl"

work="$(mktemp -d)"
mkdir -p "$work/config"
# In a namespace of its own, so its loopback addresses (derived from the names) are not those
# of another exam lab running on the machine.
NS=reload-bench
for file in config/exam-lab/*.yaml; do
  sed -E "s/^(metadata:)$/\1\n  namespace: $NS/" "$file" >"$work/config/$(basename "$file")"
done
printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n' "$NS" >"$work/config/namespace.yaml"
wardctl() { "$WARDCTL" --state-dir "$work/state" "$@"; }
trap 'wardctl down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wardctl up "$work/config" --detach --envoy "$ENVOY" --wasm "$WASM" \
  --xds-address "127.0.0.1:$(free_port)" --xds-admin-address "127.0.0.1:$(free_port)" \
  --no-mesh-address "127.0.0.1:$(free_port)" >/dev/null

# Runs inside professor-tools' pod: its http_proxy is the sidecar.
cat >"$work/measure.py" <<'EOF'
import os, sys, time, urllib.request, urllib.error

config, kind, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])

def workload(name):
    return f"""apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: reload-bench}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: echo
        image: hashicorp/http-echo
        args: ["-text={name}"]
        ports: [{{containerPort: 5678}}]
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: reload-bench}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 5678}}]
""", name

def service(name):
    return f"""apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: reload-bench}}
spec:
  selector: {{app: exam-scheduler}}
  ports: [{{port: 80, targetPort: 8080}}]
""", '"exams"'

def probe(name, expected):
    """'ok' once the new service answers; 'routed' once the client's sidecar knows the name
    (anything but its 404 for unknown hosts); else 'unknown'."""
    try:
        with urllib.request.urlopen(f"http://{name}/", timeout=2) as response:
            body = response.read().decode()
            return "ok" if response.status == 200 and expected in body else "routed"
    except urllib.error.HTTPError as e:
        unknown = e.code == 404 and "no service in the mesh" in e.read().decode()
        return "unknown" if unknown else "routed"
    except (urllib.error.URLError, OSError):
        return "unknown"

def percentiles(values):
    values = sorted(values)
    return values, values[len(values) // 2], values[-1]

answered, routed = [], []
for i in range(rounds):
    name = f"reload-{kind}-{i}-{os.getpid()}"
    text, expected = (workload if kind == "workload" else service)(name)
    tmp = os.path.join(config, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    start = time.monotonic()
    os.rename(tmp, os.path.join(config, f"{name}.yaml"))
    first_routed = None
    while True:
        state = probe(name, expected)
        now = (time.monotonic() - start) * 1000
        if state != "unknown" and first_routed is None:
            first_routed = now
        if state == "ok":
            break
        if now > 30000:
            sys.exit(f"{name} not answering after 30 s")
        time.sleep(0.005)
    answered.append(now)
    routed.append(first_routed)
    time.sleep(2)  # the mesh settles (the runner's readiness wait) before the next round
values, p50, top = percentiles(answered)
_, routed_p50, routed_max = percentiles(routed)
print(" ".join(f"{t:.0f}" for t in values), f"{p50:.0f}", f"{top:.0f}", f"{routed_p50:.0f}", f"{routed_max:.0f}")
EOF

echo "| change | file write → first 200, each round (ms, sorted) | p50 ms | max ms | → client's sidecar routes the name, p50 / max ms |"
echo "|---|---|---|---|---|"
for kind in workload service; do
  read -r -a result < <(wardctl exec professor-tools -n "$NS" -- python3 "$work/measure.py" "$work/config" "$kind" "$ROUNDS")
  label="new Deployment + Service"
  [ "$kind" = service ] && label="new Service over a running Deployment"
  n=${#result[@]}
  echo "| $label | ${result[*]:0:n-4} | ${result[n-4]} | ${result[n-3]} | ${result[n-2]} / ${result[n-1]} |"
done

# Where the new workloads' time goes: each new sidecar's own start, as Envoy measures it
# (`server.initialization_time_ms`: from its start until it is initialized, which takes xDS
# over mutual TLS, its clusters and listeners, and the wasm module compiled).
python3 - "$work/state/state.json" <<'EOF'
import json, sys, urllib.request
state = json.load(open(sys.argv[1]))
times = []
for instance in state["instances"]:
    if instance["workload"].startswith("reload-workload-"):
        url = "http://%s:%d/stats?filter=server.initialization_time_ms&format=json" % (instance["address"], instance["admin_port"])
        stats = json.load(urllib.request.urlopen(url, timeout=5))["stats"]
        histogram = next(s for s in stats if "histograms" in s)["histograms"]
        times.append(histogram["computed_quantiles"][0]["values"][0]["cumulative"])
times.sort()
print("new sidecars' Envoy initialization_time_ms (sorted):", " ".join("%g" % t for t in times))
EOF
