#!/usr/bin/env bash
# The whole test suite: lint gates, unit tests, protocol tests, and end-to-end tests on real
# Envoy.
set -euo pipefail
cd "$(dirname "$0")/.."

# Clippy's lints run on the workspace's crates while they compile, here and in setup.sh's
# builds (clippy-driver as the workspace's rustc wrapper, which is how `cargo clippy` runs it
# for `cargo check`), with warnings denied: the same lints as
# `cargo clippy --workspace --all-targets -- -D warnings` (and on wasm32-wasip1 for the
# filter), without a second pass over every dependency (~2.5 min on 2 cores).
if ! rustup which clippy-driver >/dev/null 2>&1 || ! rustup which rustfmt >/dev/null 2>&1; then
  echo "==> adding the clippy and rustfmt components" >&2
  rustup component add clippy rustfmt
fi
RUSTC_WORKSPACE_WRAPPER="$(rustup which clippy-driver)"
export RUSTC_WORKSPACE_WRAPPER
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

echo "==> lint gates: crate layers, rustfmt" >&2
python3 scripts/check-layers.py
cargo fmt --all --check

scripts/setup.sh
export ENVOY_BIN="$PWD/.ward-tools/envoy/envoy/_bin/envoy"
cargo test --workspace -- --test-threads=2
