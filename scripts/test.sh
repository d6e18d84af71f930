#!/usr/bin/env bash
# The whole test suite: lint gates, unit tests, protocol tests, and end-to-end tests on real
# Envoy.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export ENVOY_BIN="$PWD/.ward-tools/envoy/envoy/_bin/envoy"

echo "==> lint gates: crate layers, rustfmt, clippy (-D warnings; native and wasm32-wasip1)" >&2
python3 scripts/check-layers.py
cargo fmt --all --check
cargo clippy --quiet --workspace --all-targets -- -D warnings
cargo clippy --quiet -p wasm-authz --target wasm32-wasip1 --release -- -D warnings

cargo test --workspace -- --test-threads=2
