//! Translation of the mesh model into the Envoy resources of one sidecar.
//!
//! Every sidecar gets:
//! - an inbound listener on its instance address and each inbound port, routing to the app on
//!   its private address (`inbound|<port>||` clusters);
//! - one outbound HTTP listener (`outbound`, port [`OUTBOUND_PORT`]) whose route configuration
//!   (`outbound`, over RDS) routes by authority to `outbound|<port>||<fqdn>` clusters whose
//!   endpoints (EDS) are the destination instances' inbound listeners.
//!
//! The inbound HTTP chain is: JWT authentication (`jwt_authn`, over ECDS; native engine
//! only, see `jwt`), RBAC (AUDIT, DENY, ALLOW; rules per route over RDS), the `ward-authz`
//! wasm filter (configuration over ECDS), the router.
//!
//! The outbound HTTP chain is: the `ward-retry-budget` wasm filter (over ECDS), the router.
//! ServiceProfile routes, retries and timeouts, failure accrual and DestinationRule
//! resilience live in `resilience`; VirtualService routes in `routing`.
//!
//! Names follow Istio's so that users can read Envoy's admin output the way they are used to.
//! Mutual TLS (SDS secrets, inbound modes, auto mTLS on clusters) lives in `tls`;
//! AuthorizationPolicy → RBAC in `rbac`.

pub mod access_log;
pub mod bootstrap;
mod cluster;
mod extension;
pub mod jwt;
mod listener;
pub mod rbac;
pub mod resilience;
mod route;
pub mod routing;
pub mod tls;

pub use cluster::{inbound_cluster_name, outbound_cluster_name, BLACKHOLE_CLUSTER};
pub use extension::{wasm_http_filter, RETRY_BUDGET_FILTER, WASM_FILTER};
pub use listener::INBOUND_CAPTURE_LISTENER;
pub use route::{inbound_route_name, service_domains, OUTBOUND_ROUTE};
pub use tls::{
    cluster_tls, mesh_sni, secret_layer, ClusterTls, CERTIFICATE_SECRET, TRUST_BUNDLE_SECRET,
};

use envoy_types::pb::envoy::config::core::v3::Address;
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, socket_address, AggregatedConfigSource, ApiVersion, ConfigSource,
    SocketAddress,
};
use envoy_types::pb::google::protobuf::{Any, Duration};
use prost::{Message, Name};

use std::collections::BTreeMap;
use std::sync::Arc;

use cluster::load_assignment;
use cluster::{inbound_cluster, outbound_cluster};
use extension::{retry_budget_extension_config, wasm_enforces, wasm_extension_config};
use listener::{inbound_capture_listener, inbound_listener, outbound_listener};
use route::outbound_route_config;
use routing::RouteClient;
use ward_config::model::{port_protocol, Instance, Mesh, PortProtocol, Workload};
use ward_snapshot::{Resource, ResourceLayer, Snapshot};

/// What the translation needs besides the mesh.
#[derive(Debug, Clone, Default)]
pub struct TranslateOptions {
    /// Path of the wasm-authz module on the proxies' file system; no wasm filter when unset.
    pub wasm_module: Option<String>,
}

pub(crate) fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

pub(crate) fn duration_ms(ms: u64) -> Duration {
    Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

pub(crate) fn socket_address(ip: impl ToString, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port as u32)),
            ..Default::default()
        })),
    }
}

pub(crate) fn ads_config_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// Resources every sidecar of the mesh shares, built once per config change: translation
/// cost and server memory grow with services plus proxies, not services times proxies.
pub struct SharedLayers {
    clusters: Arc<ResourceLayer>,
    endpoints: Arc<ResourceLayer>,
    /// Short service names resolve within the client's namespace, and routes may match on
    /// the client: one route table per kind of client.
    routes_by_client: BTreeMap<RouteClient, Arc<ResourceLayer>>,
    /// The `sourceLabels` selectors of the mesh's routes (usually none).
    source_label_selectors: Vec<BTreeMap<String, String>>,
    /// The retry budget filter's routes and budgets, the same for every sidecar.
    outbound_filter: serde_json::Value,
}

impl SharedLayers {
    pub fn new(mesh: &Mesh, previous: Option<&SharedLayers>) -> Self {
        let mut clusters = Vec::new();
        let mut endpoints = Vec::new();
        for service in &mesh.services {
            let subsets = mesh.subsets_of(service);
            for port in &service.ports {
                let whole = std::iter::once(None);
                for subset in whole.chain(subsets.iter().map(Some)) {
                    let name =
                        routing::cluster_name(service, port, subset.map(|s| s.name.as_str()));
                    clusters.push(Resource::new(
                        ward_snapshot::CLUSTER,
                        &name,
                        &outbound_cluster(mesh, service, port, subset, &name),
                    ));
                    endpoints.push(Resource::new(
                        ward_snapshot::ENDPOINT,
                        &name,
                        &load_assignment(mesh, service, port, subset, &name),
                    ));
                }
            }
        }
        let source_label_selectors = routing::source_label_selectors(mesh);
        let routes_by_client = mesh
            .workloads
            .iter()
            .filter(|w| w.sidecar)
            .map(|w| RouteClient::of(w, &source_label_selectors))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|client| {
                let routes = Resource::new(
                    ward_snapshot::ROUTE,
                    OUTBOUND_ROUTE,
                    &outbound_route_config(mesh, &client),
                );
                let old = previous.and_then(|p| p.routes_by_client.get(&client));
                let layer = ResourceLayer::replacing([routes], old);
                (client, layer)
            })
            .collect();
        SharedLayers {
            clusters: ResourceLayer::replacing(clusters, previous.map(|p| &p.clusters)),
            endpoints: ResourceLayer::replacing(endpoints, previous.map(|p| &p.endpoints)),
            routes_by_client,
            source_label_selectors,
            outbound_filter: serde_json::to_value(resilience::outbound_filter_config(mesh))
                .unwrap_or_default(),
        }
    }
}

/// Builds the complete snapshot for one sidecar.
pub fn proxy_snapshot(
    mesh: &Mesh,
    shared: &SharedLayers,
    workload: &Workload,
    instance: &Instance,
    options: &TranslateOptions,
    secrets: Option<Arc<ResourceLayer>>,
) -> Snapshot {
    let mut clusters = Vec::new();
    let mut listeners = Vec::new();
    let mut inbound_routes = Vec::new();
    // The protocol of each target port, by the Service ports that send to it.
    let inbound_protocols: Vec<(u16, PortProtocol)> = mesh
        .services_of(workload)
        .flat_map(|s| s.ports.iter().map(|p| (p.target_port, port_protocol(p))))
        .collect();
    let serves = |port: u16, protocol| inbound_protocols.contains(&(port, protocol));
    for port in mesh.inbound_ports(workload) {
        clusters.push(inbound_cluster(
            instance,
            port,
            serves(port, PortProtocol::Http2),
        ));
        let tcp = serves(port, PortProtocol::Tcp);
        let (listener, route) = inbound_listener(mesh, workload, instance, port, tcp, options);
        listeners.push(listener);
        inbound_routes.extend(route);
    }
    listeners.push(outbound_listener(workload, instance, options));
    if workload.capture {
        let (listener, cluster) = inbound_capture_listener();
        listeners.push(listener);
        clusters.push(cluster);
    }

    let mut snapshot = Snapshot::default();
    snapshot.insert(
        ward_snapshot::CLUSTER,
        vec![shared.clusters.clone(), ResourceLayer::new(clusters)],
    );
    snapshot.insert(ward_snapshot::ENDPOINT, vec![shared.endpoints.clone()]);
    snapshot.insert(ward_snapshot::LISTENER, vec![ResourceLayer::new(listeners)]);
    let client = RouteClient::of(workload, &shared.source_label_selectors);
    let outbound_routes = shared.routes_by_client.get(&client).cloned();
    let mut routes: Vec<_> = outbound_routes.into_iter().collect();
    routes.push(ResourceLayer::new(inbound_routes));
    snapshot.insert(ward_snapshot::ROUTE, routes);
    snapshot.insert(ward_snapshot::SECRET, secrets.into_iter().collect());
    let mut extensions = Vec::new();
    if let Some(module) = &options.wasm_module {
        extensions.push(wasm_extension_config(mesh, workload, module, options));
        extensions.push(retry_budget_extension_config(
            mesh,
            workload,
            module,
            &shared.outbound_filter,
        ));
    }
    // Also in the wasm engine (with nothing to check): a listener still draining after a
    // switch from the native engine names it, and Envoy answers 500 for a filter whose ECDS
    // resource is gone.
    let verifies = !wasm_enforces(mesh, workload, options);
    extensions.push(jwt::extension_config(mesh, workload, verifies));
    snapshot.insert(
        ward_snapshot::EXTENSION_CONFIG,
        vec![ResourceLayer::new(extensions)],
    );
    snapshot.routes_after_extensions = !verifies;
    snapshot
}

/// Snapshots for every instance in the mesh, keyed by node id, and the shared layers they
/// use (pass them back in as `previous` next time so unchanged layers are reused).
/// `secrets` gives each proxy its SDS secrets (None: the proxy gets none). Pods without
/// Ward's sidecar get none; pods that are not ready do (their probes go through it).
pub fn mesh_snapshots(
    mesh: &Mesh,
    options: &TranslateOptions,
    previous: Option<&SharedLayers>,
    secrets: impl Fn(&Workload, &Instance) -> Option<Arc<ResourceLayer>>,
) -> (Vec<(String, Snapshot)>, SharedLayers) {
    let shared = SharedLayers::new(mesh, previous);
    let snapshots = mesh
        .workloads
        .iter()
        .filter(|w| w.sidecar)
        .flat_map(|w| w.instances.iter().map(move |i| (w, i)))
        .map(|(w, i)| {
            (
                Mesh::node_id(w, i),
                proxy_snapshot(mesh, &shared, w, i, options, secrets(w, i)),
            )
        })
        .collect();
    (snapshots, shared)
}

#[cfg(test)]
mod consistency_tests {
    //! Every snapshot of every mesh the project ships is consistent: what a listener, cluster
    //! or TLS context names over xDS is in the same snapshot.

    use std::path::{Path, PathBuf};

    use ward_identity::{CaOptions, CertificateAuthority, KeyAlgorithm};

    use super::*;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// Each example mesh, and each with its policies and profiles applied.
    fn meshes() -> Vec<(String, Vec<(String, String)>)> {
        let mut meshes = Vec::new();
        for dir in [
            "config/exam-lab",
            "config/aura-lab",
            "tests/configs/bookinfo",
            "tests/configs/httpbin",
        ] {
            let dir = workspace().join(dir);
            let mut sources = ward_config::read_sources(&dir).unwrap();
            meshes.push((dir.display().to_string(), sources.clone()));
            for extra in ["policies", "profiles"] {
                let extra_dir = dir.join(extra);
                if extra_dir.is_dir() {
                    sources.extend(ward_config::read_sources(&extra_dir).unwrap());
                    meshes.push((extra_dir.display().to_string(), sources.clone()));
                }
            }
        }
        meshes
    }

    #[test]
    fn every_example_mesh_translates_to_consistent_snapshots() {
        let state =
            std::env::temp_dir().join(format!("ward-xds-consistency-{}", std::process::id()));
        let ca = CertificateAuthority::load_or_create(&CaOptions {
            state_dir: state.clone(),
            plugged_in_dir: None,
            algorithm: KeyAlgorithm::EcdsaP256,
            extra_trust_roots: Vec::new(),
            trust_domain: "cluster.local".into(),
        })
        .unwrap();
        for wasm in [None, Some("/etc/ward/wasm/wasm_authz.wasm".to_string())] {
            let options = TranslateOptions { wasm_module: wasm };
            for (name, sources) in meshes() {
                let mesh = match ward_config::load_sources(&sources) {
                    Ok(loaded) => loaded.mesh,
                    // A policy directory meant to be applied one file at a time.
                    Err(_) => continue,
                };
                let (snapshots, _) = mesh_snapshots(&mesh, &options, None, |w, _| {
                    let cert = ca
                        .issue(&mesh.identity(w), std::time::Duration::from_secs(600))
                        .unwrap();
                    Some(secret_layer(&cert, ca.trust_bundle_pem()))
                });
                assert!(!snapshots.is_empty(), "{name}: no sidecar");
                for (node, snapshot) in snapshots {
                    if let Err(e) = snapshot.consistent() {
                        panic!("{name}, node {node} (wasm {:?}): {e}", options.wasm_module);
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(state);
    }
}
