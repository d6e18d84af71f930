# Shared by the benchmarks that run one Envoy of their own (scripts/bench-jwt.sh,
# scripts/bench-retry.sh). Source it after `cd` to the repository root; SECONDS_EACH must be set.

# start_bench_envoy CONFIG LOG: one Envoy 1.40, one worker thread; sets envoy_pid and returns
# once its admin (127.0.0.1:20000) is LIVE.
start_bench_envoy() {
  .ward-tools/envoy/envoy/_bin/envoy -c "$1" --concurrency 1 --disable-hot-restart \
    --log-level error 2>"$2" &
  envoy_pid=$!
  for _ in $(seq 100); do
    curl -s -m 1 http://127.0.0.1:20000/ready | grep -q LIVE && break
    sleep 0.1
  done
  sleep 1
}

# bench_row LABEL PORT HOST [wardctl bench http args...]: 8 closed-loop users against
# 127.0.0.1:PORT with Host HOST, after 3 s of warm-up; prints one markdown table row
# (label, requests/s, p50 ms, p99 ms, errors, statuses).
bench_row() {
  local label="$1" port="$2" host="$3"
  shift 3
  target/release/wardctl bench http "$host" --target "127.0.0.1:$port" "$@" --users 8 \
    --duration "${SECONDS_EACH}s" --warmup 3s --json |
    python3 -c '
import json, sys
r = json.load(sys.stdin)
statuses = " ".join("%s×%s" % (s, n) for s, n in r["statuses"].items())
print("| %s | %.0f | %.2f | %.2f | %d | %s |" % (sys.argv[1], r["requests_per_second"], r["p50_ms"], r["p99_ms"], r["errors"], statuses))
' "$label"
}
