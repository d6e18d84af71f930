#!/usr/bin/env bash
# The whole test suite: unit tests, protocol tests, and end-to-end tests on real Envoy.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export ENVOY_BIN="$PWD/.ward-tools/envoy/envoy/_bin/envoy"
cargo test --workspace -- --test-threads=2
