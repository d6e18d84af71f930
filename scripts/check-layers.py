#!/usr/bin/env python3
"""Checks that each workspace crate depends only on the Ward crates allowed before it in the
data flow (docs/architecture.md, "Crates"). Normal and build dependencies count; dev-
dependencies may also reach later crates only where listed for tests."""
import json
import subprocess
import sys

# crate -> the workspace crates it may depend on (normal dependencies).
ALLOWED = {
    "wasm-authz": set(),
    "ward-config": {"wasm-authz"},
    "ward-metrics": set(),
    "ward-identity": {"ward-config", "ward-metrics"},
    "ward-snapshot": set(),
    "ward-xds": {"ward-config", "ward-identity", "ward-snapshot", "wasm-authz"},
    "ward-ads": {"ward-config", "ward-metrics", "ward-identity", "ward-snapshot"},
    "ward-inject": {"ward-config"},
    "ward-sources": {"ward-metrics"},
    "xds-server": {
        "ward-config", "ward-metrics", "ward-identity", "ward-snapshot", "ward-xds",
        "ward-ads", "ward-inject", "ward-sources", "wasm-authz",
    },
    "wardctl": {
        "ward-config", "ward-metrics", "ward-identity", "ward-snapshot", "ward-xds",
        "ward-ads", "ward-inject", "ward-sources", "wasm-authz",
    },
    "ward-e2e": {"wardctl"},
}
# Tests may use crates before theirs as well (never xds-server's library from a library's tests).
DEV_EXTRA = {
    "ward-e2e": {"ward-config", "ward-xds", "ward-snapshot", "wasm-authz"},
}

metadata = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
        check=True, capture_output=True, text=True,
    ).stdout
)
members = {p["name"] for p in metadata["packages"]}
errors = []
for package in metadata["packages"]:
    name = package["name"]
    if name not in ALLOWED:
        errors.append(f"{name}: a workspace crate with no place in the flow (add it to {sys.argv[0]})")
        continue
    for dep in package["dependencies"]:
        if dep["name"] not in members:
            continue
        allowed = ALLOWED[name] | (DEV_EXTRA.get(name, set()) if dep["kind"] == "dev" else set())
        if dep["kind"] == "dev":
            allowed |= ALLOWED[name]
        if dep["name"] not in allowed:
            errors.append(f"{name} depends on {dep['name']} ({dep['kind'] or 'normal'}), against the flow")
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"crate layers: {len(metadata['packages'])} crates, every dependency along the flow")
