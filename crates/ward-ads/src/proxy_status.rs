//! What each connected proxy has: per type, what was sent, what it ACKed, what it NACKed.
//! Backs `/status` and `wardctl status` (like `istioctl proxy-status`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

use ward_snapshot::{self as snapshot, SnapshotCache};

#[derive(Debug, Clone, Default, Serialize)]
pub struct Nack {
    pub version: String,
    pub error: String,
    pub at_unix: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    pub acked_version: Option<String>,
    pub last_nack: Option<Nack>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProxyConnection {
    pub node_id: String,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
    pub connected_at_unix: u64,
    /// By short type name (`CDS`, `EDS`, ...), in the order first sent. (A list: a map would
    /// allocate room for eleven types per connected proxy.)
    pub types: Vec<(&'static str, TypeStatus)>,
}

impl ProxyConnection {
    pub fn type_status(&self, short_name: &str) -> Option<&TypeStatus> {
        self.types
            .iter()
            .find(|(name, _)| *name == short_name)
            .map(|(_, status)| status)
    }

    fn type_status_mut(&mut self, short_name: &'static str) -> &mut TypeStatus {
        let at = match self.types.iter().position(|(name, _)| *name == short_name) {
            Some(at) => at,
            None => {
                self.types.push((short_name, TypeStatus::default()));
                self.types.len() - 1
            }
        };
        &mut self.types[at].1
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Shared registry of connected proxies, keyed by stream id (a node may briefly have two
/// streams while it reconnects).
#[derive(Debug, Clone, Default)]
pub struct ProxyStatusRegistry {
    streams: Arc<Mutex<BTreeMap<u64, ProxyConnection>>>,
    /// Nodes whose last stream was refused, with why; cleared when one is served.
    refused: Arc<Mutex<BTreeMap<String, Refusal>>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub reason: String,
    pub at_unix: u64,
}

impl ProxyStatusRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A stream of `node_id` was refused (another wasm module, ...).
    pub fn refuse(&self, node_id: &str, reason: &str) {
        self.refused.lock().expect("status lock").insert(
            node_id.to_string(),
            Refusal {
                reason: reason.to_string(),
                at_unix: unix_now(),
            },
        );
    }

    pub fn refused(&self) -> BTreeMap<String, Refusal> {
        self.refused.lock().expect("status lock").clone()
    }

    pub fn connect(&self, stream_id: u64, node_id: &str, protocol: &'static str) {
        self.refused.lock().expect("status lock").remove(node_id);
        self.streams.lock().expect("status lock").insert(
            stream_id,
            ProxyConnection {
                node_id: node_id.to_string(),
                protocol,
                connected_at_unix: unix_now(),
                types: Vec::new(),
            },
        );
    }

    pub fn disconnect(&self, stream_id: u64) {
        self.streams.lock().expect("status lock").remove(&stream_id);
    }

    fn update(&self, stream_id: u64, type_url: &str, change: impl FnOnce(&mut TypeStatus)) {
        if let Some(connection) = self
            .streams
            .lock()
            .expect("status lock")
            .get_mut(&stream_id)
        {
            change(connection.type_status_mut(snapshot::short_name(type_url)));
        }
    }

    pub fn sent(&self, stream_id: u64, type_url: &str, version: &str, nonce: &str) {
        self.update(stream_id, type_url, |t| {
            t.sent_version = Some(version.to_string());
            t.sent_nonce = Some(nonce.to_string());
        });
    }

    pub fn acked(&self, stream_id: u64, type_url: &str, version: &str) {
        self.update(stream_id, type_url, |t| {
            t.acked_version = Some(version.to_string())
        });
    }

    pub fn nacked(&self, stream_id: u64, type_url: &str, version: &str, error: &str) {
        self.update(stream_id, type_url, |t| {
            t.last_nack = Some(Nack {
                version: version.to_string(),
                error: error.to_string(),
                at_unix: unix_now(),
            })
        });
    }

    /// JSON for `/status`: every connection with a per-type state against the node's current
    /// snapshot: SYNCED (ACKed the current version), NACKED (rejected it), STALE (not there
    /// yet), plus `synced` for the whole proxy.
    pub fn snapshot_json(&self, cache: &SnapshotCache) -> serde_json::Value {
        let streams = self.streams.lock().expect("status lock").clone();
        let proxies: Vec<serde_json::Value> = streams
            .values()
            .map(|connection| {
                let current = cache.get(&connection.node_id);
                let mut all_synced = current.is_some();
                let mut types = serde_json::Map::new();
                for type_url in snapshot::PUSH_ORDER {
                    let Some(set) = current.as_ref().and_then(|s| s.set(type_url).cloned()) else {
                        continue;
                    };
                    let short = snapshot::short_name(type_url);
                    let status = connection.type_status(short).cloned().unwrap_or_default();
                    let state = if status.acked_version.as_deref() == Some(&*set.version) {
                        "SYNCED"
                    } else if status
                        .last_nack
                        .as_ref()
                        .is_some_and(|n| *n.version == *set.version)
                    {
                        "NACKED"
                    } else if status.sent_version.is_none() && status.acked_version.is_none() {
                        "NOT SENT"
                    } else {
                        "STALE"
                    };
                    all_synced &= state == "SYNCED";
                    types.insert(
                        short.to_string(),
                        serde_json::json!({
                            "state": state,
                            "current_version": &*set.version,
                            "resources": set.len(),
                            "sent_version": status.sent_version,
                            "acked_version": status.acked_version,
                            "last_nack": status.last_nack,
                        }),
                    );
                }
                serde_json::json!({
                    "node_id": connection.node_id,
                    "protocol": connection.protocol,
                    "connected_at_unix": connection.connected_at_unix,
                    "synced": all_synced,
                    "types": types,
                })
            })
            .collect();
        serde_json::Value::Array(proxies)
    }
}

/// `wardctl status`'s table, from `/status` JSON. ECDS is the wasm filters' configuration and,
/// in the native engine, `jwt_authn`'s: a module that cannot load shows there as NACKED (and
/// its requests are refused: fail closed).
pub fn render_table(status: &serde_json::Value) -> String {
    let mut out = format!(
        "{:<34} {:<6} {:<9} {:<9} {:<9} {:<9} {:<9} {:<9}\n",
        "NAME", "XDS", "CDS", "EDS", "LDS", "RDS", "SDS", "ECDS"
    );
    let mut nacks = Vec::new();
    for proxy in status["proxies"].as_array().into_iter().flatten() {
        let node = proxy["node_id"].as_str().unwrap_or("?");
        let state = |t: &str| {
            proxy["types"][t]["state"]
                .as_str()
                .unwrap_or("-")
                .to_string()
        };
        out.push_str(&format!(
            "{:<34} {:<6} {:<9} {:<9} {:<9} {:<9} {:<9} {:<9}\n",
            node,
            proxy["protocol"].as_str().unwrap_or("?"),
            state("CDS"),
            state("EDS"),
            state("LDS"),
            state("RDS"),
            state("SDS"),
            state("ECDS")
        ));
        if let Some(types) = proxy["types"].as_object() {
            for (t, v) in types {
                if v["state"] == "NACKED" {
                    nacks.push(format!(
                        "{node} {t}: {}",
                        v["last_nack"]["error"].as_str().unwrap_or("")
                    ));
                }
            }
        }
    }
    let expected: Vec<&str> = status["config"]["expected_nodes"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    for node in expected {
        let connected = status["proxies"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["node_id"] == node));
        if !connected && status["refused"].get(node).is_none() {
            out.push_str(&format!("{node:<34} NOT CONNECTED\n"));
        }
    }
    for nack in nacks {
        out.push_str(&format!("NACK {nack}\n"));
    }
    // A refused stream gets no configuration: the sidecar serves nothing (fail closed).
    for (node, refusal) in status["refused"].as_object().into_iter().flatten() {
        out.push_str(&format!(
            "REFUSED {node}: {}\n",
            refusal["reason"].as_str().unwrap_or("")
        ));
    }
    out
}

/// Node ids that `/status` reports as SYNCED on every type.
pub fn synced_node_ids(status: &serde_json::Value) -> Vec<String> {
    status["proxies"]
        .as_array()
        .map(|proxies| {
            proxies
                .iter()
                .filter(|p| p["synced"].as_bool() == Some(true))
                .filter_map(|p| p["node_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::render_table;

    #[test]
    fn the_table_shows_every_type_and_names_each_nack() {
        let status = serde_json::json!({
            "proxies": [{
                "node_id": "exam-scheduler-0.default",
                "protocol": "delta",
                "types": {
                    "CDS": {"state": "SYNCED"}, "EDS": {"state": "SYNCED"},
                    "LDS": {"state": "SYNCED"}, "RDS": {"state": "SYNCED"},
                    "SDS": {"state": "SYNCED"},
                    "ECDS": {"state": "NACKED", "last_nack": {"error": "Unable to create Wasm HTTP filter"}},
                },
            }],
            "config": {"expected_nodes": ["exam-scheduler-0.default", "student-portal-0.default", "professor-tools-0.default"]},
            "refused": {"professor-tools-0.default": {"reason": "its wasm module has sha256 ab; xds-server pins cd"}},
        });
        let table = render_table(&status);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].trim_end().ends_with("ECDS"), "{table}");
        assert!(lines[1].starts_with("exam-scheduler-0.default"), "{table}");
        assert!(lines[1].trim_end().ends_with("NACKED"), "{table}");
        assert!(
            table.contains("student-portal-0.default           NOT CONNECTED"),
            "{table}"
        );
        assert!(
            table.contains("NACK exam-scheduler-0.default ECDS: Unable to create Wasm HTTP filter"),
            "{table}"
        );
        assert!(
            table.contains(
                "REFUSED professor-tools-0.default: its wasm module has sha256 ab; xds-server pins cd"
            ),
            "{table}"
        );
        assert!(!table.contains("professor-tools-0.default           NOT CONNECTED"));
    }
}
