//! The runner's state directory: what `wardctl up` started, for `exec`, `status`, `logs` and
//! `down` to find. One JSON file, written atomically.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunnerState {
    pub supervisor_pid: u32,
    pub config_dir: PathBuf,
    pub xds_address: SocketAddr,
    pub xds_admin_address: SocketAddr,
    pub no_mesh_proxy: SocketAddr,
    /// True once every Envoy has ACKed its config and every app listens.
    pub ready: bool,
    /// Set when the last config reload failed; the previous mesh keeps running.
    pub last_error: Option<String>,
    pub instances: Vec<InstanceState>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceState {
    pub workload: String,
    pub namespace: String,
    pub instance: String,
    pub node_id: String,
    pub identity: String,
    pub address: Ipv4Addr,
    pub app_address: Ipv4Addr,
    pub ports: Vec<u16>,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub envoy_pid: Option<u32>,
    pub app_pid: Option<u32>,
    /// What runs behind the sidecar: a built-in stand-in, a local command, or nothing.
    pub app: String,
    pub env: Vec<(String, String)>,
}

/// `--state-dir`, else `$WARD_STATE_DIR`, else `~/.ward/run`.
pub fn state_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(dir) = explicit {
        return dir.to_path_buf();
    }
    if let Some(dir) = std::env::var_os("WARD_STATE_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".ward").join("run")
}

pub fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

pub fn logs_dir(dir: &Path) -> PathBuf {
    dir.join("logs")
}

/// Where an instance's Envoy writes (its access log among it).
pub fn envoy_log(dir: &Path, node_id: &str) -> PathBuf {
    logs_dir(dir).join(format!("{node_id}.envoy.log"))
}

/// Where an instance's app writes.
pub fn app_log(dir: &Path, node_id: &str) -> PathBuf {
    logs_dir(dir).join(format!("{node_id}.app.log"))
}

pub fn read_state(dir: &Path) -> anyhow::Result<RunnerState> {
    let path = state_file(dir);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no local mesh is running (could not read {}); start one with `wardctl up DIR`",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("corrupt state file {}", path.display()))
}

pub fn write_state(dir: &Path, state: &RunnerState) -> anyhow::Result<()> {
    let path = state_file(dir);
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// True if a process with this pid exists (signal 0 probes without signalling).
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
