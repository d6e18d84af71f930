//! Reading what the running Envoys hold, from their admin endpoints: `wardctl certs` (like
//! `istioctl proxy-config secret`) and `wardctl edges` (like `linkerd viz edges`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::admin_client;
use super::state::{self, InstanceState};

/// One certificate of one SDS secret, as a proxy holds it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SecretCertificate {
    pub proxy: String,
    /// SDS resource name: `default` (the proxy's own) or `ROOTCA` (the trust bundle).
    pub resource: String,
    /// `Cert Chain` or `CA`, as istioctl prints them.
    pub kind: &'static str,
    /// ACTIVE, or WARMING while Envoy has not taken it into use.
    pub status: &'static str,
    pub valid: bool,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub spiffe_id: String,
}

fn admin_address(instance: &InstanceState) -> SocketAddr {
    SocketAddr::new(instance.address.into(), instance.admin_port)
}

fn rfc3339(time: x509_parser::time::ASN1Time) -> String {
    let secs = u64::try_from(time.timestamp()).unwrap_or(0);
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Every certificate in a PEM text, decoded.
fn describe_pem(
    proxy: &str,
    resource: &str,
    kind: &'static str,
    status: &'static str,
    pem_text: &str,
) -> Vec<SecretCertificate> {
    let mut out = Vec::new();
    for block in ward_identity::ca::pem_certificates(pem_text) {
        let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(block.as_bytes()) else {
            continue;
        };
        let Ok(cert) = pem.parse_x509() else {
            continue;
        };
        let spiffe_id = ward_identity::uri_sans(&pem.contents)
            .unwrap_or_default()
            .join(",");
        out.push(SecretCertificate {
            proxy: proxy.to_string(),
            resource: resource.to_string(),
            kind,
            status,
            valid: cert.validity().is_valid(),
            serial: cert.raw_serial_as_string().replace(':', ""),
            not_before: rfc3339(cert.validity().not_before),
            not_after: rfc3339(cert.validity().not_after),
            spiffe_id,
        });
    }
    out
}

/// The SDS secrets an Envoy holds, from its config dump: either the whole SecretsConfigDump or,
/// with `?resource=`, one DynamicSecret per entry.
pub fn secrets_from_config_dump(
    proxy: &str,
    dump: &serde_json::Value,
    status: &'static str,
) -> Vec<SecretCertificate> {
    let mut out = Vec::new();
    let mut describe = |secret: &serde_json::Value| {
        let name = secret["name"].as_str().unwrap_or("?");
        let body = &secret["secret"];
        let text = |v: &serde_json::Value| v["inline_string"].as_str().map(str::to_string);
        if let Some(chain) = text(&body["tls_certificate"]["certificate_chain"]) {
            out.extend(describe_pem(proxy, name, "Cert Chain", status, &chain));
        }
        if let Some(ca) = text(&body["validation_context"]["trusted_ca"]) {
            out.extend(describe_pem(proxy, name, "CA", status, &ca));
        }
    };
    let key = if status == "ACTIVE" {
        "dynamic_active_secrets"
    } else {
        "dynamic_warming_secrets"
    };
    for config in dump["configs"].as_array().into_iter().flatten() {
        match config[key].as_array() {
            Some(secrets) => secrets.iter().for_each(&mut describe),
            None if config["secret"].is_object() => describe(config),
            None => {}
        }
    }
    out
}

/// The secrets of every running proxy of `workload` (all proxies when None).
pub async fn certs(
    state_dir: &Path,
    workload: Option<&str>,
) -> anyhow::Result<Vec<SecretCertificate>> {
    let state = state::read_state(state_dir)?;
    let mut out = Vec::new();
    let instances: Vec<&InstanceState> = state
        .instances
        .iter()
        .filter(|i| workload.is_none_or(|w| i.workload == w))
        .collect();
    if instances.is_empty() {
        anyhow::bail!("no running workload named {}", workload.unwrap_or("(any)"));
    }
    for instance in instances {
        let dump = admin_client::get_json(
            admin_address(instance),
            "/config_dump?resource=dynamic_active_secrets&include_eds=false",
        )
        .await;
        // `resource=` takes one field; warming secrets need a second request.
        let warming = admin_client::get_json(
            admin_address(instance),
            "/config_dump?resource=dynamic_warming_secrets",
        )
        .await;
        let dump = dump.with_context(|| format!("reading the secrets of {}", instance.node_id))?;
        out.extend(secrets_from_config_dump(&instance.node_id, &dump, "ACTIVE"));
        if let Ok(warming) = warming {
            out.extend(secrets_from_config_dump(
                &instance.node_id,
                &warming,
                "WARMING",
            ));
        }
    }
    Ok(out)
}

pub fn render_certs(certs: &[SecretCertificate]) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:<28} {:<9} {:<11} {:<8} {:<6} {:<34} {:<21} {:<21} SPIFFE ID",
        "PROXY", "RESOURCE", "TYPE", "STATUS", "VALID", "SERIAL", "NOT BEFORE", "NOT AFTER"
    );
    for c in certs {
        let _ = writeln!(
            text,
            "{:<28} {:<9} {:<11} {:<8} {:<6} {:<34} {:<21} {:<21} {}",
            c.proxy,
            c.resource,
            c.kind,
            c.status,
            c.valid,
            c.serial,
            c.not_before,
            c.not_after,
            c.spiffe_id
        );
    }
    text
}

/// Who talks to whom and whether the connections are mutual TLS, like `linkerd viz edges`,
/// from the Envoys' own connection counters: each client sidecar's outbound clusters (TLS
/// handshakes vs all connections), and, for clients without a sidecar, each server
/// sidecar's inbound plaintext connections that no meshed client accounts for.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Edge {
    pub src: String,
    pub src_ns: String,
    pub dst: String,
    pub dst_ns: String,
    pub mtls_connections: u64,
    pub plaintext_connections: u64,
}

impl Edge {
    pub fn secured(&self) -> bool {
        self.plaintext_connections == 0 && self.mtls_connections > 0
    }
}

/// `name: value` lines of Envoy's `/stats` text output.
fn parse_stats(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(": ")?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

pub async fn edges(state_dir: &Path) -> anyhow::Result<Vec<Edge>> {
    use std::collections::BTreeMap;
    let state = state::read_state(state_dir)?;
    let mesh = ward_config::load_path(&state.config_dir)?.mesh;
    // Destination workloads of each outbound cluster.
    let mut backends: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for service in &mesh.services {
        for port in &service.ports {
            backends.insert(
                ward_xds::outbound_cluster_name(service, port),
                service.backends.clone(),
            );
        }
    }
    let mut pairs: BTreeMap<(String, String, String, String), (u64, u64)> = BTreeMap::new();
    // Plaintext connections meshed clients opened toward each workload.
    let mut meshed_plaintext: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut inbound_plaintext: BTreeMap<(String, String), u64> = BTreeMap::new();
    for instance in &state.instances {
        let (status, body) = admin_client::get(
            admin_address(instance),
            "/stats?filter=(upstream_cx_total|downstream_cx_total|ssl.handshake)$",
        )
        .await
        .with_context(|| format!("reading the stats of {}", instance.node_id))?;
        if status != 200 {
            anyhow::bail!("{}: /stats answered {status}", instance.node_id);
        }
        let stats = parse_stats(&body);
        for (cluster, workloads) in &backends {
            let total = stats
                .get(&format!("cluster.{cluster}.upstream_cx_total"))
                .copied()
                .unwrap_or(0);
            if total == 0 {
                continue;
            }
            let mtls = stats
                .get(&format!("cluster.{cluster}.ssl.handshake"))
                .copied()
                .unwrap_or(0)
                .min(total);
            for (dst_ns, dst) in workloads {
                let entry = pairs
                    .entry((
                        instance.workload.clone(),
                        instance.namespace.clone(),
                        dst.clone(),
                        dst_ns.clone(),
                    ))
                    .or_default();
                entry.0 += mtls;
                entry.1 += total - mtls;
                *meshed_plaintext
                    .entry((dst_ns.clone(), dst.clone()))
                    .or_default() += total - mtls;
            }
        }
        for port in &instance.ports {
            let prefix = format!("listener.{}_{port}.", instance.address);
            let total = stats
                .get(&format!("{prefix}downstream_cx_total"))
                .copied()
                .unwrap_or(0);
            let tls = stats
                .get(&format!("{prefix}ssl.handshake"))
                .copied()
                .unwrap_or(0);
            *inbound_plaintext
                .entry((instance.namespace.clone(), instance.workload.clone()))
                .or_default() += total.saturating_sub(tls);
        }
    }
    let mut edges: Vec<Edge> = pairs
        .into_iter()
        .map(|((src, src_ns, dst, dst_ns), (mtls, plain))| Edge {
            src,
            src_ns,
            dst,
            dst_ns,
            mtls_connections: mtls,
            plaintext_connections: plain,
        })
        .collect();
    for ((dst_ns, dst), plain) in inbound_plaintext {
        let from_mesh = meshed_plaintext
            .get(&(dst_ns.clone(), dst.clone()))
            .copied()
            .unwrap_or(0);
        if plain > from_mesh {
            edges.push(Edge {
                src: "(no sidecar)".to_string(),
                src_ns: "-".to_string(),
                dst,
                dst_ns,
                mtls_connections: 0,
                plaintext_connections: plain - from_mesh,
            });
        }
    }
    Ok(edges)
}

pub fn render_edges(edges: &[Edge]) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:<20} {:<20} {:<12} {:<12} {:<8} {:>6} {:>9}",
        "SRC", "DST", "SRC_NS", "DST_NS", "SECURED", "MTLS", "PLAINTEXT"
    );
    for e in edges {
        let _ = writeln!(
            text,
            "{:<20} {:<20} {:<12} {:<12} {:<8} {:>6} {:>9}",
            e.src,
            e.dst,
            e.src_ns,
            e.dst_ns,
            if e.secured() { "√" } else { "×" },
            e.mtls_connections,
            e.plaintext_connections
        );
    }
    text
}
