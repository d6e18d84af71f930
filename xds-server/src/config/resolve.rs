//! From decoded documents to the mesh model: instances with addresses, services with their
//! backends and numeric target ports. Cross-document checks live here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::kinds::{DeploymentSpec, Document, ServiceSpec, TargetPort};
use super::Diagnostic;
use crate::model::{Instance, Mesh, Service, ServiceAccount, ServicePort, SourceRef, Workload};

/// A document with the file it came from.
pub struct Located {
    pub file: String,
    pub document: Document,
}

/// Workload slots: 246 second octets × 254 third octets of 127.0.0.0/8.
const SLOTS: u64 = 246 * 254;

fn fnv1a(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Stable per-workload slots: a hash of "namespace/name", linear probing in sorted order, so
/// the result depends only on the set of workloads and adding one rarely moves another.
fn assign_slots(keys: &[(String, String)]) -> BTreeMap<(String, String), u64> {
    let mut used = BTreeSet::new();
    let mut slots = BTreeMap::new();
    for key in keys {
        let mut slot = fnv1a(&format!("{}/{}", key.0, key.1)) % SLOTS;
        while !used.insert(slot) {
            slot = (slot + 1) % SLOTS;
        }
        slots.insert(key.clone(), slot);
    }
    slots
}

fn slot_address(slot: u64, last_octet: u32) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        (10 + slot / 254) as u8,
        (1 + slot % 254) as u8,
        last_octet as u8,
    )
}

fn error(file: &str, line: usize, column: usize, field: &str, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_string(),
        line,
        column,
        field: field.to_string(),
        message,
    }
}

pub fn resolve(
    documents: Vec<Located>,
    errors: &mut Vec<Diagnostic>,
    warnings: &mut Vec<Diagnostic>,
) -> Mesh {
    let mut trust_domain = "cluster.local".to_string();
    let mut root_namespace = "istio-system".to_string();
    let mut namespaces = BTreeSet::new();
    let mut service_accounts = Vec::new();
    let mut deployments: Vec<(String, DeploymentSpec)> = Vec::new();
    let mut services: Vec<(String, ServiceSpec)> = Vec::new();
    let mut seen: BTreeMap<(&'static str, String, String), (String, usize)> = BTreeMap::new();

    for Located { file, document } in documents {
        let position = document.position();
        if let Some((first_file, first_line)) = seen.get(&document.identity()) {
            let (kind, ns, name) = document.identity();
            errors.push(error(
                &file,
                position.line,
                position.column,
                "metadata.name",
                format!(
                    "duplicate {kind} {ns}/{name} (first defined at {first_file}:{first_line})"
                ),
            ));
            continue;
        }
        seen.insert(document.identity(), (file.clone(), position.line));
        match document {
            Document::Namespace(meta) => {
                namespaces.insert(meta.name);
            }
            Document::ServiceAccount(meta) => {
                namespaces.insert(meta.namespace.clone());
                service_accounts.push(ServiceAccount {
                    name: meta.name,
                    namespace: meta.namespace,
                });
            }
            Document::MeshConfig(config) => {
                if let Some(td) = config.trust_domain {
                    trust_domain = td;
                }
                if let Some(ns) = config.root_namespace {
                    root_namespace = ns;
                }
            }
            Document::Deployment(d) => {
                namespaces.insert(d.meta.namespace.clone());
                deployments.push((file, d));
            }
            Document::Service(s) => {
                namespaces.insert(s.meta.namespace.clone());
                services.push((file, s));
            }
        }
    }
    if seen
        .keys()
        .filter(|(kind, _, _)| *kind == "MeshConfig")
        .count()
        > 1
    {
        // Already reported as a duplicate above.
    }

    deployments.sort_by(|a, b| {
        (&a.1.meta.namespace, &a.1.meta.name).cmp(&(&b.1.meta.namespace, &b.1.meta.name))
    });
    let keys: Vec<(String, String)> = deployments
        .iter()
        .map(|(_, d)| (d.meta.namespace.clone(), d.meta.name.clone()))
        .collect();
    let slots = assign_slots(&keys);

    let mut workloads = Vec::new();
    for (file, d) in &deployments {
        let declared_sa = d.service_account == "default"
            || service_accounts
                .iter()
                .any(|sa| sa.name == d.service_account && sa.namespace == d.meta.namespace);
        if !declared_sa {
            warnings.push(error(
                file,
                d.meta.position.line,
                d.meta.position.column,
                "spec.template.spec.serviceAccountName",
                format!(
                    "ServiceAccount {}/{} is not declared; the identity uses that name anyway",
                    d.meta.namespace, d.service_account
                ),
            ));
        }
        let slot = slots[&(d.meta.namespace.clone(), d.meta.name.clone())];
        let instances = (0..d.replicas)
            .map(|i| Instance {
                name: format!("{}-{i}", d.meta.name),
                index: i,
                address: slot_address(slot, i + 1),
                app_address: slot_address(slot, i + 1 + 128),
            })
            .collect();
        workloads.push(Workload {
            name: d.meta.name.clone(),
            namespace: d.meta.namespace.clone(),
            service_account: d.service_account.clone(),
            replicas: d.replicas,
            labels: d.template_labels.clone(),
            annotations: d.template_annotations.clone(),
            containers: d.containers.clone(),
            instances,
            source: SourceRef {
                file: file.clone(),
                line: d.meta.position.line,
            },
        });
    }

    let mut resolved_services = Vec::new();
    for (file, s) in &services {
        let backends: Vec<&Workload> = workloads
            .iter()
            .filter(|w| {
                w.namespace == s.meta.namespace
                    && !s.selector.is_empty()
                    && s.selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
            })
            .collect();
        if backends.is_empty() {
            let selector: Vec<String> =
                s.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            errors.push(error(
                file,
                s.selector_position.line,
                s.selector_position.column,
                "spec.selector",
                format!(
                    "Service {}/{}: selector {{{}}} matches no Deployment in namespace {}",
                    s.meta.namespace,
                    s.meta.name,
                    selector.join(", "),
                    s.meta.namespace
                ),
            ));
            continue;
        }
        let mut ports = Vec::new();
        for p in &s.ports {
            let declared: Vec<&crate::model::ContainerPort> = backends
                .iter()
                .flat_map(|w| w.containers.iter().flat_map(|c| c.ports.iter()))
                .collect();
            let target = match &p.target_port {
                TargetPort::Name(name) => {
                    match declared
                        .iter()
                        .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                    {
                        Some(cp) => cp.container_port,
                        None => {
                            errors.push(error(
                            file,
                            p.target_position.line,
                            p.target_position.column,
                            &p.target_path,
                            format!("no container of the selected workloads has a port named `{name}`"),
                        ));
                            continue;
                        }
                    }
                }
                TargetPort::Number(n) => {
                    if declared.is_empty() {
                        warnings.push(error(
                            file,
                            p.target_position.line,
                            p.target_position.column,
                            &p.target_path,
                            format!("targetPort {n}: no container declares it; the sidecar will accept on it and the app must listen there"),
                        ));
                    } else if !declared.iter().any(|cp| cp.container_port == *n) {
                        let known: Vec<String> = declared
                            .iter()
                            .map(|cp| cp.container_port.to_string())
                            .collect();
                        errors.push(error(
                            file,
                            p.target_position.line,
                            p.target_position.column,
                            &p.target_path,
                            format!("targetPort {n} is not exposed by any container of the selected workloads (they expose {})", known.join(", ")),
                        ));
                        continue;
                    }
                    *n
                }
            };
            ports.push(ServicePort {
                name: p.name.clone(),
                port: p.port,
                target_port: target,
                protocol: p.protocol.clone(),
                app_protocol: p.app_protocol.clone(),
            });
        }
        resolved_services.push(Service {
            name: s.meta.name.clone(),
            namespace: s.meta.namespace.clone(),
            selector: s.selector.clone(),
            ports,
            backends: backends
                .iter()
                .map(|w| (w.namespace.clone(), w.name.clone()))
                .collect(),
            source: SourceRef {
                file: file.clone(),
                line: s.meta.position.line,
            },
        });
    }
    resolved_services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    Mesh {
        trust_domain,
        root_namespace,
        namespaces: namespaces.into_iter().collect(),
        service_accounts,
        workloads,
        services: resolved_services,
    }
}
