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

pub mod jwt;
pub mod rbac;
pub mod resilience;
pub mod routing;
pub mod tls;

pub use tls::{
    cluster_tls, mesh_sni, secret_layer, ClusterTls, CERTIFICATE_SECRET, TRUST_BUNDLE_SECRET,
};

use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::BackoffStrategy;
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, data_source, socket_address, substitution_format_string,
    AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, SocketAddress,
    SubstitutionFormatString, TrafficDirection,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AsyncDataSource, ExtensionConfigSource, Metadata, TypedExtensionConfig,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::RetryPolicy;
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, DirectResponseAction, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    file_access_log, FileAccessLog,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::wasm::v3::{
    FailurePolicy, PluginConfig, ReloadConfig, VmConfig,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, StringValue, UInt32Value};
use prost::{Message, Name};

use crate::model::{Instance, Mesh, Service, ServicePort, Workload};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::snapshot::{self, Resource, ResourceLayer, Snapshot};

/// Port of the outbound listener on every instance address (Istio uses 15001 too).
pub const OUTBOUND_PORT: u16 = 15001;
/// Envoy admin port on every instance address.
pub const ADMIN_PORT: u16 = 15000;
/// Name of the outbound route configuration, fetched over RDS.
pub const OUTBOUND_ROUTE: &str = "outbound";
/// Kubernetes cluster DNS domain used for service host names.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// What the translation needs besides the mesh.
#[derive(Debug, Clone, Default)]
pub struct TranslateOptions {
    /// Path of the wasm-authz module on the proxies' file system; no wasm filter when unset.
    pub wasm_module: Option<String>,
}

fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn duration_ms(ms: u64) -> Duration {
    Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn socket_address(ip: impl ToString, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port as u32)),
            ..Default::default()
        })),
    }
}

fn ads_config_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// `<name>.<ns>.svc.cluster.local`
pub fn service_fqdn(service: &Service) -> String {
    format!(
        "{}.{}.svc.{}",
        service.name, service.namespace, CLUSTER_DOMAIN
    )
}

pub fn outbound_cluster_name(service: &Service, port: &ServicePort) -> String {
    format!("outbound|{}||{}", port.port, service_fqdn(service))
}

pub fn inbound_cluster_name(port: u16) -> String {
    format!("inbound|{port}||")
}

/// Ports whose traffic is plain TCP rather than HTTP, by Istio's naming conventions.
pub fn is_tcp_port(port: &ServicePort) -> bool {
    let by_app_protocol = port.app_protocol.as_deref().map(|p| {
        matches!(
            p.to_ascii_lowercase().as_str(),
            "tcp" | "tls" | "mongo" | "mysql" | "redis"
        )
    });
    let by_name = port.name.as_deref().map(|n| {
        let prefix = n.split('-').next().unwrap_or(n).to_ascii_lowercase();
        matches!(prefix.as_str(), "tcp" | "tls" | "mongo" | "mysql" | "redis")
    });
    by_app_protocol.or(by_name).unwrap_or(false)
}

/// Resources every sidecar of the mesh shares, built once per config change: translation
/// cost and server memory grow with services plus proxies, not services times proxies.
pub struct SharedLayers {
    clusters: Arc<ResourceLayer>,
    endpoints: Arc<ResourceLayer>,
    /// Short service names resolve within the client's namespace: one route table each.
    routes_by_namespace: BTreeMap<String, Arc<ResourceLayer>>,
    /// The retry budget filter's routes and budgets, the same for every sidecar.
    outbound_filter: serde_json::Value,
}

impl SharedLayers {
    pub fn new(mesh: &Mesh, previous: Option<&SharedLayers>) -> Self {
        let mut clusters = Vec::new();
        let mut endpoints = Vec::new();
        for service in &mesh.services {
            for port in &service.ports {
                let name = outbound_cluster_name(service, port);
                clusters.push(Resource::new(
                    snapshot::CLUSTER,
                    &name,
                    &outbound_cluster(mesh, service, port, &name),
                ));
                endpoints.push(Resource::new(
                    snapshot::ENDPOINT,
                    &name,
                    &load_assignment(mesh, service, port, &name),
                ));
            }
        }
        let routes_by_namespace = mesh
            .workloads
            .iter()
            .map(|w| w.namespace.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|ns| {
                let routes = Resource::new(
                    snapshot::ROUTE,
                    OUTBOUND_ROUTE,
                    &outbound_route_config(mesh, &ns),
                );
                let old = previous.and_then(|p| p.routes_by_namespace.get(&ns));
                let layer = ResourceLayer::replacing([routes], old);
                (ns, layer)
            })
            .collect();
        SharedLayers {
            clusters: ResourceLayer::replacing(clusters, previous.map(|p| &p.clusters)),
            endpoints: ResourceLayer::replacing(endpoints, previous.map(|p| &p.endpoints)),
            routes_by_namespace,
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
    let tcp_inbound_ports: Vec<u16> = mesh
        .services_of(workload)
        .flat_map(|s| {
            s.ports
                .iter()
                .filter(|p| is_tcp_port(p))
                .map(|p| p.target_port)
        })
        .collect();
    for port in mesh.inbound_ports(workload) {
        clusters.push(inbound_cluster(instance, port));
        let tcp = tcp_inbound_ports.contains(&port);
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
        snapshot::CLUSTER,
        vec![shared.clusters.clone(), ResourceLayer::new(clusters)],
    );
    snapshot.insert(snapshot::ENDPOINT, vec![shared.endpoints.clone()]);
    snapshot.insert(snapshot::LISTENER, vec![ResourceLayer::new(listeners)]);
    let outbound_routes = shared.routes_by_namespace.get(&workload.namespace).cloned();
    let mut routes: Vec<_> = outbound_routes.into_iter().collect();
    routes.push(ResourceLayer::new(inbound_routes));
    snapshot.insert(snapshot::ROUTE, routes);
    snapshot.insert(snapshot::SECRET, secrets.into_iter().collect());
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
        snapshot::EXTENSION_CONFIG,
        vec![ResourceLayer::new(extensions)],
    );
    snapshot.routes_after_extensions = !verifies;
    snapshot
}

fn inbound_cluster(instance: &Instance, port: u16) -> Resource {
    let name = inbound_cluster_name(port);
    let cluster = Cluster {
        name: name.clone(),
        connect_timeout: Some(duration_ms(1000)),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.clone(),
            endpoints: vec![locality_endpoints(vec![(
                socket_address(instance.app_address, port),
                None,
            )])],
            ..Default::default()
        }),
        ..Default::default()
    };
    Resource::new(snapshot::CLUSTER, name, &cluster)
}

/// The SPIFFE identities of the workloads behind a service: the only peers a client accepts
/// for it (Istio's secure naming). Pods without Ward's sidecar have no identity.
fn service_identities(mesh: &Mesh, service: &Service) -> Vec<String> {
    let mut ids: Vec<String> = service
        .backends
        .iter()
        .filter_map(|(ns, name)| mesh.workload(ns, name))
        .filter(|w| w.sidecar)
        .map(|w| mesh.identity(w))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn outbound_cluster(mesh: &Mesh, service: &Service, port: &ServicePort, name: &str) -> Cluster {
    let fqdn = service_fqdn(service);
    let tls = cluster_tls(mesh, service, &fqdn, port.port);
    let (transport_socket, transport_socket_matches) = tls::cluster_transport(
        &tls,
        &service_identities(mesh, service),
        mesh_sni(port.port, &fqdn),
    );
    let mut cluster = Cluster {
        name: name.to_string(),
        transport_socket,
        transport_socket_matches,
        connect_timeout: Some(duration_ms(1000)),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: name.to_string(),
        }),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        ..Default::default()
    };
    resilience::apply_to_cluster(mesh, service, &mut cluster);
    cluster
}

fn locality_endpoints(addresses: Vec<(Address, Option<Metadata>)>) -> LocalityLbEndpoints {
    LocalityLbEndpoints {
        lb_endpoints: addresses
            .into_iter()
            .map(|(address, metadata)| LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                    address: Some(address),
                    ..Default::default()
                })),
                metadata,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn load_assignment(
    mesh: &Mesh,
    service: &Service,
    port: &ServicePort,
    cluster_name: &str,
) -> ClusterLoadAssignment {
    let addresses = service
        .backends
        .iter()
        .filter_map(|(ns, name)| mesh.workload(ns, name))
        .flat_map(|w| {
            let metadata = tls::endpoint_metadata(mesh, w, port.target_port);
            // Not ready (starting, failing its readiness probe): no traffic, as Kubernetes.
            w.instances.iter().filter(|i| i.ready).map(move |i| {
                (
                    socket_address(i.address, port.target_port),
                    metadata.clone(),
                )
            })
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster_name.to_string(),
        endpoints: vec![locality_endpoints(addresses)],
        ..Default::default()
    }
}

/// Access log on the proxy's stdout: one line per request or connection, with the direction,
/// so `wardctl logs` shows who talked to whom and why a request failed.
fn access_log(direction: &str) -> AccessLog {
    // Who the peer proved to be: the client's identity inbound, the server's outbound.
    let peer = if direction == "inbound" {
        "peer=%DOWNSTREAM_PEER_URI_SAN% tls=%DOWNSTREAM_TLS_VERSION% rbac=%DYNAMIC_METADATA(envoy.filters.http.rbac)%"
    } else if direction.starts_with("inbound") {
        "peer=%DOWNSTREAM_PEER_URI_SAN% tls=%DOWNSTREAM_TLS_VERSION%"
    } else {
        "peer=%UPSTREAM_PEER_URI_SAN% tls=%UPSTREAM_TLS_VERSION%"
    };
    let format = format!(
        "[%START_TIME%] {direction} \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" \
         %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_RECEIVED% %BYTES_SENT% \
         %DURATION%ms \"%REQ(:AUTHORITY)%\" src=%DOWNSTREAM_REMOTE_ADDRESS% \
         upstream=%UPSTREAM_HOST% cluster=%UPSTREAM_CLUSTER% route=\"%ROUTE_NAME%\" \
         attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT% {peer}\n"
    );
    let file = FileAccessLog {
        path: "/dev/stdout".to_string(),
        access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(
            SubstitutionFormatString {
                format: Some(substitution_format_string::Format::TextFormatSource(
                    DataSource {
                        specifier: Some(data_source::Specifier::InlineString(format)),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            },
        )),
    };
    AccessLog {
        name: "envoy.access_loggers.file".to_string(),
        config_type: Some(access_log::ConfigType::TypedConfig(any(&file))),
        ..Default::default()
    }
}

fn router_filter() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(
            any(&Router::default()),
        )),
        ..Default::default()
    }
}

/// The name of the wasm filter in every inbound HTTP connection manager, and of its ECDS
/// resource.
pub const WASM_FILTER: &str = "ward-authz";

/// Whether this sidecar's AuthorizationPolicies are enforced by the wasm filter rather than
/// by RBAC ([`Mesh::wasm_authorizes`]) and the proxies have the module (without it, RBAC
/// and `jwt_authn` enforce the same policies and tokens, so nothing fails open).
fn wasm_enforces(mesh: &Mesh, workload: &Workload, options: &TranslateOptions) -> bool {
    options.wasm_module.is_some() && mesh.wasm_authorizes(workload)
}

/// The wasm filter's configuration for one sidecar, delivered over ECDS: a change (a policy,
/// a new version) reaches the next request without touching the listener, so no connection
/// is drained.
fn wasm_extension_config(
    mesh: &Mesh,
    workload: &Workload,
    module_path: &str,
    options: &TranslateOptions,
) -> Resource {
    let mut configuration = serde_json::json!({
        "workload": workload.name,
        "namespace": workload.namespace,
        "identity": mesh.identity(workload),
        "version": env!("CARGO_PKG_VERSION"),
    });
    if wasm_enforces(mesh, workload, options) {
        let policies = mesh.authorization_policies_for(workload);
        let jwt_rules = mesh.jwt_rules_for(workload);
        configuration["authorization"] =
            serde_json::json!({ "policies": policies, "jwtRules": jwt_rules });
        if jwt_rules.iter().any(|rule| rule.jwks_uri.is_some()) {
            // Keys rotated at the issuer: the filter asks xds-server to fetch them again.
            configuration["authorization"]["keyRefreshCluster"] =
                crate::bootstrap::XDS_CLUSTER.into();
        }
    }
    Resource::new(
        snapshot::EXTENSION_CONFIG,
        WASM_FILTER,
        &TypedExtensionConfig {
            name: WASM_FILTER.to_string(),
            typed_config: Some(any(&wasm_config(module_path, configuration.to_string()))),
        },
    )
}

/// The name of the wasm filter in the outbound HTTP connection manager, and of its ECDS
/// resource.
pub const RETRY_BUDGET_FILTER: &str = "ward-retry-budget";

/// The outbound wasm filter's configuration for one sidecar: the retry budgets of the
/// destinations with a ServiceProfile.
fn retry_budget_extension_config(
    mesh: &Mesh,
    workload: &Workload,
    module_path: &str,
    outbound: &serde_json::Value,
) -> Resource {
    let configuration = serde_json::json!({
        "workload": workload.name,
        "namespace": workload.namespace,
        "identity": mesh.identity(workload),
        "version": env!("CARGO_PKG_VERSION"),
        "outbound": outbound,
    });
    let mut wasm = wasm_config(module_path, configuration.to_string());
    if let Some(plugin) = wasm.config.as_mut() {
        // Its own root context in the same VM (and the same shared data).
        plugin.name = RETRY_BUDGET_FILTER.to_string();
        plugin.root_id = RETRY_BUDGET_FILTER.to_string();
    }
    Resource::new(
        snapshot::EXTENSION_CONFIG,
        RETRY_BUDGET_FILTER,
        &TypedExtensionConfig {
            name: RETRY_BUDGET_FILTER.to_string(),
            typed_config: Some(any(&wasm)),
        },
    )
}

/// A route action that answers `status` with `body` itself.
fn direct_response(status: u32, body: &str) -> route::Action {
    route::Action::DirectResponse(DirectResponseAction {
        status,
        body: Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString(body.to_string())),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// An HTTP filter as the listener names it: its config, of `type_url`, comes over ECDS
/// under `name` (the wasm filters, `jwt_authn`).
fn discovered_filter(name: &str, type_url: String) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::ConfigDiscovery(
            ExtensionConfigSource {
                config_source: Some(ads_config_source()),
                type_urls: vec![type_url],
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// A wasm filter as the listener names it.
fn wasm_discovered_filter(name: &str) -> HttpFilter {
    discovered_filter(name, Wasm::type_url())
}

/// The `ward-authz` wasm filter, loaded from `module_path`, with a `wasm_authz::FilterConfig`
/// as JSON.
pub fn wasm_http_filter(module_path: &str, configuration: String) -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.wasm".to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&wasm_config(
            module_path,
            configuration,
        )))),
        ..Default::default()
    }
}

/// The `ward-authz` plugin: the module at `module_path`, fail closed, with `configuration`.
///
/// Failure policy `FAIL_RELOAD`: when the VM fails at run time (a panic), the request that
/// hit it and every request until a new VM is up are refused with 503, never passed on
/// unchecked; a new VM then serves (backoff from 1 s to 30 s between reloads). With
/// `FAIL_CLOSED` one request that makes the module panic would refuse all traffic until
/// the next config change. Envoy counts each reload (`wasm.<plugin>.vm_reload`), which
/// `wardctl status` shows.
fn wasm_config(module_path: &str, configuration: String) -> Wasm {
    Wasm {
        config: Some(PluginConfig {
            name: "ward-authz".to_string(),
            root_id: "ward-authz".to_string(),
            vm: Some(envoy_types::pb::envoy::extensions::wasm::v3::plugin_config::Vm::VmConfig(
                VmConfig {
                    vm_id: "ward-authz".to_string(),
                    runtime: "envoy.wasm.runtime.v8".to_string(),
                    code: Some(AsyncDataSource {
                        specifier: Some(
                            envoy_types::pb::envoy::config::core::v3::async_data_source::Specifier::Local(
                                DataSource {
                                    specifier: Some(data_source::Specifier::Filename(
                                        module_path.to_string(),
                                    )),
                                    ..Default::default()
                                },
                            ),
                        ),
                    }),
                    ..Default::default()
                },
            )),
            configuration: Some(any(&StringValue {
                value: configuration,
            })),
            // Fail closed: if the module fails, requests are refused, never let through.
            failure_policy: FailurePolicy::FailReload as i32,
            reload_config: Some(ReloadConfig {
                backoff: Some(BackoffStrategy {
                    base_interval: Some(duration_ms(1_000)),
                    max_interval: Some(duration_ms(30_000)),
                }),
            }),
            ..Default::default()
        }),
    }
}

/// Shared settings of every HTTP connection manager: path normalization is security (a policy on
/// `/admin` must also see `//admin` and `/%61dmin`), so it is on from the start.
fn http_connection_manager(
    stat_prefix: &str,
    route_specifier: http_connection_manager::RouteSpecifier,
    http_filters: Vec<HttpFilter>,
    direction: &str,
) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(route_specifier),
        http_filters,
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        path_with_escaped_slashes_action:
            http_connection_manager::PathWithEscapedSlashesAction::UnescapeAndForward as i32,
        access_log: vec![access_log(direction)],
        ..Default::default()
    }
}

fn network_filter<M: Message + Name>(name: &str, config: &M) -> Filter {
    Filter {
        name: name.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(config))),
    }
}

fn inbound_listener(
    mesh: &Mesh,
    workload: &Workload,
    instance: &Instance,
    port: u16,
    tcp: bool,
    options: &TranslateOptions,
) -> (Resource, Option<Resource>) {
    let name = format!("inbound|{}:{}", instance.address, port);
    let cluster = inbound_cluster_name(port);
    let policies = mesh.authorization_policies_for(workload);
    let mut route = None;
    let filters = if tcp {
        let mut filters = rbac::network_filters(&policies);
        filters.push(network_filter(
            "envoy.filters.network.tcp_proxy",
            &TcpProxy {
                stat_prefix: cluster.clone(),
                cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.clone())),
                access_log: vec![access_log("inbound-tcp")],
                ..Default::default()
            },
        ));
        filters
    } else {
        let mut http_filters = Vec::new();
        if !wasm_enforces(mesh, workload, options) {
            http_filters.push(jwt::discovered_filter());
        }
        http_filters.extend(rbac::http_filters());
        if options.wasm_module.is_some() {
            http_filters.push(wasm_discovered_filter(WASM_FILTER));
        }
        http_filters.push(router_filter());
        let route_name = inbound_route_name(port);
        route = Some(Resource::new(
            snapshot::ROUTE,
            &route_name,
            &RouteConfiguration {
                name: route_name.clone(),
                virtual_hosts: vec![VirtualHost {
                    name: "inbound".to_string(),
                    domains: vec!["*".to_string()],
                    routes: vec![Route {
                        name: "default".to_string(),
                        r#match: Some(prefix_match("/")),
                        action: Some(route::Action::Route(RouteAction {
                            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                                cluster.clone(),
                            )),
                            // Like Istio: no route timeout by default, the app decides.
                            timeout: Some(duration_ms(0)),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    typed_per_filter_config: if wasm_enforces(mesh, workload, options) {
                        Default::default()
                    } else {
                        rbac::per_route_configs(&policies)
                    },
                    ..Default::default()
                }],
                ..Default::default()
            },
        ));
        vec![network_filter(
            "envoy.filters.network.http_connection_manager",
            &http_connection_manager(
                &format!("inbound_{port}"),
                http_connection_manager::RouteSpecifier::Rds(Rds {
                    config_source: Some(ads_config_source()),
                    route_config_name: route_name,
                }),
                http_filters,
                "inbound",
            ),
        )]
    };
    let mode = mesh.effective_mtls(workload, port).mode;
    let probes = (!tcp).then(|| probe_filters(workload, port)).flatten();
    let (listener_filters, filter_chains) = tls::inbound_chains(mode, filters, probes);
    let listener = Listener {
        name: name.clone(),
        address: Some(socket_address(instance.address, port)),
        // Captured: connections arrive through the capture listener, by original destination.
        bind_to_port: workload.capture.then_some(BoolValue { value: false }),
        listener_filters,
        filter_chains,
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    };
    (Resource::new(snapshot::LISTENER, name, &listener), route)
}

/// What serves the kubelet's HTTP probes of `port` in plaintext when STRICT refuses all other
/// plaintext (Linkerd likewise authorizes probes without identity): their exact paths go to
/// the app; anything else is refused with 403. None when no probe targets the port.
fn probe_filters(workload: &Workload, port: u16) -> Option<Vec<Filter>> {
    let mut paths: Vec<&str> = workload
        .containers
        .iter()
        .flat_map(|c| &c.probes)
        .filter(|p| p.port == port)
        .map(|p| p.path.as_str())
        .collect();
    if paths.is_empty() {
        return None;
    }
    paths.sort_unstable();
    paths.dedup();
    let cluster = inbound_cluster_name(port);
    let mut routes: Vec<Route> = paths
        .iter()
        .map(|path| Route {
            name: format!("probe {path}"),
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Path(path.to_string())),
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.clone())),
                timeout: Some(duration_ms(0)),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    routes.push(Route {
        name: "not-a-probe".to_string(),
        r#match: Some(prefix_match("/")),
        action: Some(direct_response(
            403,
            "STRICT mTLS: plaintext is served only on the pod's probe paths\n",
        )),
        ..Default::default()
    });
    let name = format!("inbound-probes|{port}");
    Some(vec![network_filter(
        "envoy.filters.network.http_connection_manager",
        &http_connection_manager(
            &format!("inbound_probes_{port}"),
            http_connection_manager::RouteSpecifier::RouteConfig(RouteConfiguration {
                name,
                virtual_hosts: vec![VirtualHost {
                    name: "probes".to_string(),
                    domains: vec!["*".to_string()],
                    routes,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            vec![router_filter()],
            "inbound-probe",
        ),
    )])
}

/// The RDS name of a sidecar's inbound routes for one port (unique within the proxy).
pub fn inbound_route_name(port: u16) -> String {
    format!("inbound|{port}")
}

/// Where iptables sends a captured pod's inbound connections: Envoy hands each to the
/// listener of its original destination (`<pod ip>:<port>`, not bound itself); a port with
/// no listener reaches this one's own chain, which refuses it (fail closed: only declared
/// ports are served).
fn inbound_capture_listener() -> (Resource, Resource) {
    let listener = Listener {
        name: INBOUND_CAPTURE_LISTENER.to_string(),
        address: Some(socket_address("0.0.0.0", INBOUND_CAPTURE_PORT)),
        use_original_dst: Some(BoolValue { value: true }),
        filter_chains: vec![FilterChain {
            filters: vec![network_filter(
                "envoy.filters.network.tcp_proxy",
                &TcpProxy {
                    stat_prefix: BLACKHOLE_CLUSTER.to_string(),
                    cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(
                        BLACKHOLE_CLUSTER.to_string(),
                    )),
                    ..Default::default()
                },
            )],
            ..Default::default()
        }],
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    };
    let blackhole = Cluster {
        name: BLACKHOLE_CLUSTER.to_string(),
        connect_timeout: Some(duration_ms(1000)),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        ..Default::default()
    };
    (
        Resource::new(snapshot::LISTENER, INBOUND_CAPTURE_LISTENER, &listener),
        Resource::new(snapshot::CLUSTER, BLACKHOLE_CLUSTER, &blackhole),
    )
}

/// The capture listener's name and port (Istio's `virtualInbound` on 15006).
pub const INBOUND_CAPTURE_LISTENER: &str = "inbound-capture";
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// A cluster with no endpoints: connections to ports a pod does not serve end there.
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";

fn outbound_listener(
    workload: &Workload,
    instance: &Instance,
    options: &TranslateOptions,
) -> Resource {
    let mut http_filters = Vec::new();
    if options.wasm_module.is_some() {
        http_filters.push(wasm_discovered_filter(RETRY_BUDGET_FILTER));
    }
    http_filters.push(router_filter());
    let hcm = http_connection_manager(
        "outbound",
        http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_config_source()),
            route_config_name: OUTBOUND_ROUTE.to_string(),
        }),
        http_filters,
        "outbound",
    );
    let listener = Listener {
        name: "outbound".to_string(),
        // A captured pod's outbound connections arrive redirected to the pod's loopback.
        address: Some(if workload.capture {
            socket_address("0.0.0.0", OUTBOUND_PORT)
        } else {
            socket_address(instance.address, OUTBOUND_PORT)
        }),
        filter_chains: vec![FilterChain {
            filters: vec![network_filter(
                "envoy.filters.network.http_connection_manager",
                &hcm,
            )],
            ..Default::default()
        }],
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    };
    Resource::new(snapshot::LISTENER, "outbound", &listener)
}

fn prefix_match(prefix: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.to_string())),
        ..Default::default()
    }
}

/// Host names a client in `client_namespace` may use for a service port, as Kubernetes DNS
/// resolves them: the short name only from the same namespace; the bare host only for port 80.
pub fn service_domains(service: &Service, port: u16, client_namespace: &str) -> Vec<String> {
    let mut hosts = Vec::new();
    if service.namespace == client_namespace {
        hosts.push(service.name.clone());
    }
    hosts.push(format!("{}.{}", service.name, service.namespace));
    hosts.push(format!("{}.{}.svc", service.name, service.namespace));
    hosts.push(service_fqdn(service));
    let mut domains = Vec::new();
    for host in hosts {
        if port == 80 {
            domains.push(host.clone());
        }
        domains.push(format!("{host}:{port}"));
    }
    domains
}

/// A service port's routes: a VirtualService's (nothing else: Istio answers 404 to what
/// they do not match), else the ServiceProfile's, in order (first match wins, as in
/// Linkerd), then `default` for everything else.
fn outbound_virtual_host(
    mesh: &Mesh,
    service: &Service,
    port: &ServicePort,
    client_namespace: &str,
) -> VirtualHost {
    let cluster = outbound_cluster_name(service, port);
    let action = |timeout_ms: u64, retry_policy: RetryPolicy| {
        Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.clone())),
            timeout: Some(duration_ms(timeout_ms)),
            retry_policy: Some(retry_policy),
            ..Default::default()
        }))
    };
    if let Some(virtual_service) = mesh.virtual_service(service) {
        return VirtualHost {
            name: format!("{}:{}", service_fqdn(service), port.port),
            domains: service_domains(service, port.port, client_namespace),
            routes: routing::virtual_service_routes(mesh, virtual_service, port),
            ..Default::default()
        };
    }
    let mut routes = Vec::new();
    let profile = mesh.service_profile(service);
    for profile_route in profile.iter().flat_map(|p| &p.routes) {
        let retry_policy = if profile_route.is_retryable {
            resilience::profile_retry_policy()
        } else {
            safe_retry_policy()
        };
        for conjunction in resilience::alternatives(&profile_route.condition) {
            routes.push(Route {
                name: profile_route.name.clone(),
                r#match: Some(resilience::route_match(&conjunction)),
                // Linkerd's timeout covers the retries too, as Envoy's route timeout does.
                action: action(profile_route.timeout_ms.unwrap_or(0), retry_policy.clone()),
                ..Default::default()
            });
        }
    }
    routes.push(Route {
        name: "default".to_string(),
        r#match: Some(prefix_match("/")),
        // Like Istio: no route timeout by default, the app decides.
        action: action(0, safe_retry_policy()),
        ..Default::default()
    });
    VirtualHost {
        name: format!("{}:{}", service_fqdn(service), port.port),
        domains: service_domains(service, port.port, client_namespace),
        routes,
        // The retry budget filter charges what the router used.
        include_attempt_count_in_response: profile.is_some(),
        ..Default::default()
    }
}

/// Retry only what never reached the app, so a reload or a restarting endpoint does not fail
/// requests, and nothing is processed twice.
fn safe_retry_policy() -> RetryPolicy {
    RetryPolicy {
        retry_on: "connect-failure,refused-stream,reset-before-request".to_string(),
        num_retries: Some(UInt32Value { value: 2 }),
        ..Default::default()
    }
}

fn outbound_route_config(mesh: &Mesh, client_namespace: &str) -> RouteConfiguration {
    let mut virtual_hosts: Vec<VirtualHost> = mesh
        .services
        .iter()
        .flat_map(|service| {
            service
                .ports
                .iter()
                .filter(|p| !is_tcp_port(p))
                .map(move |port| (service, port))
        })
        .map(|(service, port)| outbound_virtual_host(mesh, service, port, client_namespace))
        .collect();
    // Anything else: a clear answer rather than a hang, like a DNS failure would be in a pod.
    virtual_hosts.push(VirtualHost {
        name: "unknown".to_string(),
        domains: vec!["*".to_string()],
        routes: vec![Route {
            name: "unknown-host".to_string(),
            r#match: Some(prefix_match("/")),
            action: Some(direct_response(
                404,
                "ward: no service in the mesh matches this host\n",
            )),
            ..Default::default()
        }],
        ..Default::default()
    });
    RouteConfiguration {
        name: OUTBOUND_ROUTE.to_string(),
        virtual_hosts,
        ..Default::default()
    }
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
