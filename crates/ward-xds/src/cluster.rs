//! Clusters and endpoints: one inbound cluster per port to the app behind the sidecar
//! (`inbound|<port>||`), one outbound cluster per Service port (`outbound|<port>||<fqdn>`)
//! with its endpoints over EDS, and the black hole for ports nobody serves.

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{Address, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use ward_config::model::{service_fqdn, Instance, Mesh, Service, ServicePort};
use ward_snapshot::Resource;

use crate::resilience;
use crate::tls;
use crate::{ads_config_source, duration_ms, socket_address};
use crate::{cluster_tls, mesh_sni};

pub fn outbound_cluster_name(service: &Service, port: &ServicePort) -> String {
    format!("outbound|{}||{}", port.port, service_fqdn(service))
}

pub fn inbound_cluster_name(port: u16) -> String {
    format!("inbound|{port}||")
}

/// A cluster with no endpoints: connections to ports a pod does not serve end there.
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";

pub(crate) fn inbound_cluster(instance: &Instance, port: u16) -> Resource {
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
    Resource::new(ward_snapshot::CLUSTER, name, &cluster)
}

/// The SPIFFE identities of the workloads behind a service: the only peers a client accepts
/// for it (Istio's secure naming). Pods without Ward's sidecar have no identity.
fn service_identities(mesh: &Mesh, service: &Service) -> Vec<String> {
    let mut ids: Vec<String> = service
        .backends
        .iter()
        .filter_map(|(ns, name)| mesh.workload(ns, name))
        .filter(|w| w.sidecar)
        .map(|w| mesh.identity(w).to_string())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

pub(crate) fn outbound_cluster(
    mesh: &Mesh,
    service: &Service,
    port: &ServicePort,
    name: &str,
) -> Cluster {
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

pub(crate) fn load_assignment(
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
