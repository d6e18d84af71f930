//! Route configurations: the outbound one (by authority, one virtual host per Service port),
//! the names of the inbound ones, and the small routes several listeners share.

use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
use envoy_types::pb::envoy::config::route::v3::RetryPolicy;
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, DirectResponseAction, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use ward_config::model::{is_tcp_port, service_fqdn, Mesh, Service, ServicePort};

use crate::cluster::outbound_cluster_name;
use crate::duration_ms;
use crate::resilience;
use crate::routing::{self, RouteClient};

/// Name of the outbound route configuration, fetched over RDS.
pub const OUTBOUND_ROUTE: &str = "outbound";

/// The RDS name of a sidecar's inbound routes for one port (unique within the proxy).
pub fn inbound_route_name(port: u16) -> String {
    format!("inbound|{port}")
}

/// A route action that answers `status` with `body` itself.
pub(crate) fn direct_response(status: u32, body: &str) -> route::Action {
    route::Action::DirectResponse(DirectResponseAction {
        status,
        body: Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString(body.to_string())),
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub(crate) fn prefix_match(prefix: &str) -> RouteMatch {
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
    client: &RouteClient,
) -> VirtualHost {
    let cluster = outbound_cluster_name(service, port);
    let hash_policy = routing::hash_policy(mesh, service, port.port, None);
    let action = |timeout_ms: u64, retry_policy: RetryPolicy| {
        Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.clone())),
            timeout: Some(duration_ms(timeout_ms)),
            retry_policy: Some(retry_policy),
            hash_policy: hash_policy.clone(),
            ..Default::default()
        }))
    };
    let client_namespace = client.namespace.as_str();
    if let Some(virtual_service) = mesh.virtual_service(service) {
        return VirtualHost {
            name: format!("{}:{}", service_fqdn(service), port.port),
            domains: service_domains(service, port.port, client_namespace),
            routes: routing::virtual_service_routes(mesh, virtual_service, port, client),
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
        for conjunction in ward_config::model::condition::alternatives(&profile_route.condition) {
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

pub(crate) fn outbound_route_config(mesh: &Mesh, client: &RouteClient) -> RouteConfiguration {
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
        .map(|(service, port)| outbound_virtual_host(mesh, service, port, client))
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
