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
    for block in crate::identity::ca::pem_certificates(pem_text) {
        let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(block.as_bytes()) else {
            continue;
        };
        let Ok(cert) = pem.parse_x509() else {
            continue;
        };
        let spiffe_id = crate::identity::spiffe::uri_sans(&pem.contents)
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
