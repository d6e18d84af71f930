#!/usr/bin/env bash
# The exam lab (seed 000, section 4.2) on a local mesh of real Envoys configured by xds-server.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

export WARD_STATE_DIR="${WARD_STATE_DIR:-$PWD/.ward-tools/demo-state}"
WARDCTL=target/debug/wardctl
$WARDCTL down >/dev/null 2>&1 || true
rm -rf "$WARD_STATE_DIR/logs"   # only this run's logs
trap '$WARDCTL down' EXIT

run() { echo; echo "\$ $*"; "$@"; }

# Run on a copy, so the policies applied below do not stay in config/exam-lab.
DEMO_CONFIG=.ward-tools/demo-config
rm -rf "$DEMO_CONFIG" && mkdir -p "$DEMO_CONFIG" && cp config/exam-lab/*.yaml "$DEMO_CONFIG"/
run $WARDCTL up "$DEMO_CONFIG" --detach
run $WARDCTL status
run $WARDCTL exec student-portal -- curl -s -X POST exam-scheduler -H 'Content-Type: application/json' -d '{"matricola": "s123456", "exam": "NCS"}'
echo
run $WARDCTL exec professor-tools -- curl -s http://exam-scheduler
echo
echo "# A client with no sidecar still reaches exam-scheduler (no PeerAuthentication yet):"
run $WARDCTL exec --no-mesh -- curl -s exam-scheduler
echo
echo "# A host no Service in the mesh answers to is refused by the sidecar:"
run $WARDCTL exec student-portal -- curl -s -w '%{http_code}\n' http://payroll
echo
echo "# Section 4.2.1: the lab's peer-auth.yaml (PeerAuthentication default, mode STRICT)."
run $WARDCTL apply -f config/exam-lab/policies/peer-auth.yaml
echo "# The client without a sidecar is now refused (curl: (52) Empty reply from server):"
run $WARDCTL exec --no-mesh -- curl -sS exam-scheduler || echo "(refused, exit $?)"
echo "# The meshed clients keep working, over mutual TLS:"
run $WARDCTL exec professor-tools -- curl -s http://exam-scheduler
echo
run $WARDCTL edges
run $WARDCTL certs exam-scheduler
echo
echo "# Sections 4.2.2-4.2.3: the lab's AuthorizationPolicies. authz-professor.yaml and"
echo "# authz-student.yaml have matchLabels beside selector, not under it: Ward says so, and,"
echo "# as on Kubernetes, the policies apply to the whole namespace."
for f in authz-scheduler authz-professor authz-student; do
  run $WARDCTL apply -f config/exam-lab/policies/$f.yaml
done
echo "# student-portal may POST, not GET; professor-tools may GET, not POST:"
run $WARDCTL exec student-portal -- curl -s -X POST exam-scheduler -H 'Content-Type: application/json' -d '{"matricola": "s654321", "exam": "ISS"}'
echo
run $WARDCTL exec student-portal -- curl -s -w '  (%{http_code})\n' http://exam-scheduler
run $WARDCTL exec professor-tools -- curl -s -w '  (%{http_code})\n' http://exam-scheduler
run $WARDCTL exec professor-tools -- curl -s -w '  (%{http_code})\n' -X POST exam-scheduler -d '{}'
echo "# Nobody may call student-portal or professor-tools:"
run $WARDCTL exec exam-scheduler -- curl -s -w '  (%{http_code})\n' http://student-portal
echo "# wardctl check predicts a decision, and names the rule that makes it:"
run $WARDCTL check exam-scheduler --from professor-tools -X GET
run $WARDCTL check exam-scheduler --from professor-tools -X POST
echo "# Every hop went app -> client Envoy -> server Envoy -> app; the server side's access log"
echo "# names the rule that allowed or denied each request (rbac=...):"
sleep 1   # Envoy flushes its access log every 200 ms
run $WARDCTL logs exam-scheduler --only proxy
