//! Clusters and endpoints: one inbound cluster per port to the app behind the sidecar
//! (`inbound|<port>||`), one outbound cluster per Service port (`outbound|<port>||<fqdn>`)
//! with its endpoints over EDS, and the black hole for ports nobody serves.

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{Address, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::protobuf::UInt64Value;
use ward_config::model::{
    port_protocol, selects, service_fqdn, Instance, LoadBalancer, Mesh, PortProtocol, Service,
    ServicePort, Subset, Workload,
};
use ward_snapshot::Resource;

use crate::mesh_sni;
use crate::resilience;
use crate::tls;
use crate::{ads_config_source, any, duration_ms, socket_address};

/// `outbound|<port>||<fqdn>`: a service port's cluster, every endpoint.
pub fn outbound_cluster_name(service: &Service, port: &ServicePort) -> String {
    crate::routing::cluster_name(service, port, None)
}

pub fn inbound_cluster_name(port: u16) -> String {
    format!("inbound|{port}||")
}

/// A cluster with no endpoints: connections to ports a pod does not serve end there.
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";

/// Envoy's upstream options for HTTP/2 (gRPC and `http2` ports): set on a cluster, every
/// request to it goes out over HTTP/2, whatever the client spoke.
pub(crate) fn http2_upstream() -> std::collections::HashMap<String, Any> {
    use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
        explicit_http_config, ExplicitHttpConfig, UpstreamProtocolOptions,
    };
    use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    };
    [(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
        any(&options),
    )]
    .into()
}

/// The cluster to the app behind the sidecar on `port`; `http2` for gRPC and `http2` ports.
pub(crate) fn inbound_cluster(instance: &Instance, port: u16, http2: bool) -> Resource {
    let name = inbound_cluster_name(port);
    let cluster = Cluster {
        typed_extension_protocol_options: if http2 {
            http2_upstream()
        } else {
            Default::default()
        },
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
    Resource::new(ward_snapshot::CLUSTER, name, &cluster)
}

/// The SPIFFE identities of the workloads behind a service: the only peers a client accepts
/// for it (Istio's secure naming). Pods without Ward's sidecar have no identity.
fn service_identities(mesh: &Mesh, service: &Service, subset: Option<&Subset>) -> Vec<String> {
    let mut ids: Vec<String> = backends(mesh, service, subset)
        .filter(|w| w.sidecar)
        .map(|w| mesh.identity(w).to_string())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// A service port's cluster, or one subset's (`subset`: its endpoints only, its traffic
/// policy over the rule's).
pub(crate) fn outbound_cluster(
    mesh: &Mesh,
    service: &Service,
    port: &ServicePort,
    subset: Option<&Subset>,
    name: &str,
) -> Cluster {
    let fqdn = service_fqdn(service);
    let policy = mesh.traffic_policy(service, port.port, subset.map(|s| s.name.as_str()));
    let tls = tls::cluster_tls(policy.tls.as_ref());
    let (transport_socket, transport_socket_matches) = tls::cluster_transport(
        &tls,
        &service_identities(mesh, service, subset),
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
    if port_protocol(port) == PortProtocol::Http2 {
        cluster.typed_extension_protocol_options = http2_upstream();
    }
    match &policy.load_balancer {
        None | Some(LoadBalancer::RoundRobin) => {}
        Some(LoadBalancer::LeastRequest) => {
            cluster.lb_policy = cluster::LbPolicy::LeastRequest as i32;
        }
        Some(LoadBalancer::Random) => cluster.lb_policy = cluster::LbPolicy::Random as i32,
        Some(LoadBalancer::ConsistentHash {
            minimum_ring_size, ..
        }) => {
            cluster.lb_policy = cluster::LbPolicy::RingHash as i32;
            cluster.lb_config = Some(cluster::LbConfig::RingHashLbConfig(
                cluster::RingHashLbConfig {
                    minimum_ring_size: Some(UInt64Value {
                        value: *minimum_ring_size,
                    }),
                    ..Default::default()
                },
            ));
        }
    }
    resilience::apply_to_cluster(mesh, service, &policy, &mut cluster);
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

/// The workloads behind a service, or behind one subset of it.
fn backends<'m>(
    mesh: &'m Mesh,
    service: &'m Service,
    subset: Option<&'m Subset>,
) -> impl Iterator<Item = &'m Workload> {
    service
        .backends
        .iter()
        .filter_map(|(ns, name)| mesh.workload(ns, name))
        .filter(move |w| subset.is_none_or(|s| selects(&s.labels, &w.labels)))
}

pub(crate) fn load_assignment(
    mesh: &Mesh,
    service: &Service,
    port: &ServicePort,
    subset: Option<&Subset>,
    cluster_name: &str,
) -> ClusterLoadAssignment {
    let addresses = backends(mesh, service, subset)
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
