//! Listeners: the inbound one per instance port (HTTP or TCP), the probe chain, the inbound
//! capture listener of captured pods, and the outbound listener.

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use prost::{Message, Name};
use ward_config::model::{Instance, Mesh, Workload};
use ward_config::wellknown::{INBOUND_CAPTURE_PORT, OUTBOUND_PORT};
use ward_snapshot::Resource;

use crate::access_log::{AccessLogEntry, Direction};
use crate::cluster::{inbound_cluster_name, BLACKHOLE_CLUSTER};
use crate::extension::{wasm_discovered_filter, wasm_enforces, RETRY_BUDGET_FILTER, WASM_FILTER};
use crate::jwt;
use crate::rbac;
use crate::route::{direct_response, inbound_route_name, prefix_match, OUTBOUND_ROUTE};
use crate::routing;
use crate::tls;
use crate::{ads_config_source, any, duration_ms, socket_address, TranslateOptions};

/// Access log on the proxy's stdout: one line per request or connection, with the direction,
/// so `wardctl logs` shows who talked to whom and why a request failed.
/// The outbound chain's CORS and fault filters: idle unless a route configures them
/// (VirtualService `corsPolicy`, `fault`), as in Istio's sidecars.
fn route_configured_filters() -> Vec<HttpFilter> {
    let filter = |name: &str, config: Any| HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    };
    vec![
        filter(routing::CORS_FILTER, any(&Cors::default())),
        filter(routing::FAULT_FILTER, any(&HttpFault::default())),
    ]
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

/// Shared settings of every HTTP connection manager: path normalization is security (a policy on
/// `/admin` must also see `//admin` and `/%61dmin`), so it is on from the start.
pub(crate) fn http_connection_manager(
    stat_prefix: &str,
    route_specifier: http_connection_manager::RouteSpecifier,
    http_filters: Vec<HttpFilter>,
    direction: Direction,
) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(route_specifier),
        http_filters,
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        path_with_escaped_slashes_action:
            http_connection_manager::PathWithEscapedSlashesAction::UnescapeAndForward as i32,
        access_log: vec![AccessLogEntry::envoy_access_log(direction)],
        ..Default::default()
    }
}

pub(crate) fn network_filter<M: Message + Name>(name: &str, config: &M) -> Filter {
    Filter {
        name: name.to_string(),
        config_type: Some(filter::ConfigType::TypedConfig(any(config))),
    }
}

pub(crate) fn inbound_listener(
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
                access_log: vec![AccessLogEntry::envoy_access_log(Direction::InboundOther(
                    "inbound-tcp",
                ))],
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
            ward_snapshot::ROUTE,
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
                Direction::Inbound,
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
    (
        Resource::new(ward_snapshot::LISTENER, name, &listener),
        route,
    )
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
            Direction::InboundOther("inbound-probe"),
        ),
    )])
}

/// The inbound capture listener's name (Istio's `virtualInbound`).
pub const INBOUND_CAPTURE_LISTENER: &str = "inbound-capture";

/// Where iptables sends a captured pod's inbound connections: Envoy hands each to the
/// listener of its original destination (`<pod ip>:<port>`, not bound itself); a port with
/// no listener reaches this one's own chain, which refuses it (fail closed: only declared
/// ports are served).
pub(crate) fn inbound_capture_listener() -> (Resource, Resource) {
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
        Resource::new(ward_snapshot::LISTENER, INBOUND_CAPTURE_LISTENER, &listener),
        Resource::new(ward_snapshot::CLUSTER, BLACKHOLE_CLUSTER, &blackhole),
    )
}

pub(crate) fn outbound_listener(
    workload: &Workload,
    instance: &Instance,
    options: &TranslateOptions,
) -> Resource {
    let mut http_filters = route_configured_filters();
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
        Direction::Outbound,
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
    Resource::new(ward_snapshot::LISTENER, "outbound", &listener)
}
