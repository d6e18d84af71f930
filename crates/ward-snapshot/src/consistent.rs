//! The consistency check of a snapshot, as go-control-plane's `Snapshot.Consistent()`: every
//! name a resource refers to by xDS (a listener's route configuration, an EDS cluster's
//! endpoints, a filter configured over ECDS, a TLS context's SDS secrets) is in the snapshot,
//! and every endpoint assignment belongs to a cluster. Envoy would otherwise wait forever
//! for the missing resource (warming), which shows up as a listener or cluster that never
//! becomes active rather than as an error.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::{Snapshot, CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, SECRET};

/// What a snapshot refers to but does not hold (or holds but nothing refers to).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Inconsistency {
    #[error("{kind} `{name}` is named by {by} but not in the snapshot")]
    Missing {
        kind: &'static str,
        name: String,
        by: String,
    },
    #[error("endpoints `{0}` belong to no EDS cluster of the snapshot")]
    OrphanEndpoints(String),
    #[error("{kind} `{name}` cannot be decoded: {error}")]
    Undecodable {
        kind: &'static str,
        name: String,
        error: String,
    },
}

const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const UPSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const DOWNSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

impl Snapshot {
    /// Checks the snapshot's references (see the module's documentation); the first problem
    /// found, in push order.
    pub fn consistent(&self) -> Result<(), Inconsistency> {
        let names = |type_url: &str| -> BTreeSet<String> {
            self.set(type_url)
                .map(|set| set.iter().map(|r| r.name.to_string()).collect())
                .unwrap_or_default()
        };
        let (endpoints, routes, secrets, extensions) = (
            names(ENDPOINT),
            names(ROUTE),
            names(SECRET),
            names(EXTENSION_CONFIG),
        );
        let missing = |kind, name: &str, by: String| Inconsistency::Missing {
            kind,
            name: name.to_string(),
            by,
        };

        let mut eds_names = BTreeSet::new();
        for resource in self.set(CLUSTER).into_iter().flat_map(|s| s.iter()) {
            let cluster: Cluster = decode("cluster", &resource.name, &resource.any())?;
            let by = format!("cluster `{}`", cluster.name);
            if cluster.cluster_discovery_type
                == Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Eds as i32,
                ))
            {
                let service = cluster
                    .eds_cluster_config
                    .as_ref()
                    .map(|c| c.service_name.clone())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| cluster.name.clone());
                if !endpoints.contains(&service) {
                    return Err(missing("endpoints", &service, by));
                }
                eds_names.insert(service);
            }
            if let Some(socket) = &cluster.transport_socket {
                for secret in sds_names(socket)? {
                    if !secrets.contains(&secret) {
                        return Err(missing("secret", &secret, by.clone()));
                    }
                }
            }
        }
        if let Some(orphan) = endpoints.difference(&eds_names).next() {
            return Err(Inconsistency::OrphanEndpoints(orphan.clone()));
        }

        for resource in self.set(LISTENER).into_iter().flat_map(|s| s.iter()) {
            let listener: Listener = decode("listener", &resource.name, &resource.any())?;
            let by = format!("listener `{}`", listener.name);
            for chain in listener
                .filter_chains
                .iter()
                .chain(listener.default_filter_chain.iter())
            {
                if let Some(socket) = &chain.transport_socket {
                    for secret in sds_names(socket)? {
                        if !secrets.contains(&secret) {
                            return Err(missing("secret", &secret, by.clone()));
                        }
                    }
                }
                for f in &chain.filters {
                    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                        continue;
                    };
                    if any.type_url != HCM_TYPE {
                        continue;
                    }
                    let hcm: HttpConnectionManager = decode("listener", &listener.name, any)?;
                    if let Some(http_connection_manager::RouteSpecifier::Rds(rds)) =
                        &hcm.route_specifier
                    {
                        if !routes.contains(&rds.route_config_name) {
                            return Err(missing("route configuration", &rds.route_config_name, by));
                        }
                    }
                    for http in &hcm.http_filters {
                        if let Some(http_filter::ConfigType::ConfigDiscovery(_)) = &http.config_type
                        {
                            if !extensions.contains(&http.name) {
                                return Err(missing("extension config", &http.name, by));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn decode<M: Message + Default>(
    kind: &'static str,
    name: &str,
    any: &Any,
) -> Result<M, Inconsistency> {
    M::decode(any.value.as_slice()).map_err(|e| Inconsistency::Undecodable {
        kind,
        name: name.to_string(),
        error: e.to_string(),
    })
}

/// The SDS secret names a TLS transport socket asks for.
fn sds_names(socket: &TransportSocket) -> Result<Vec<String>, Inconsistency> {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
        return Ok(Vec::new());
    };
    let common: Option<CommonTlsContext> = match any.type_url.as_str() {
        UPSTREAM_TLS_TYPE => {
            decode::<UpstreamTlsContext>("transport socket", &socket.name, any)?.common_tls_context
        }
        DOWNSTREAM_TLS_TYPE => {
            decode::<DownstreamTlsContext>("transport socket", &socket.name, any)?
                .common_tls_context
        }
        _ => None,
    };
    let Some(common) = common else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = common
        .tls_certificate_sds_secret_configs
        .iter()
        .map(|c| c.name.clone())
        .collect();
    match &common.validation_context_type {
        Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(c)) => {
            names.push(c.name.clone())
        }
        Some(common_tls_context::ValidationContextType::CombinedValidationContext(c)) => {
            if let Some(sds) = &c.validation_context_sds_secret_config {
                names.push(sds.name.clone());
            }
        }
        _ => {}
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain};
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds;
    use prost::Name;

    use super::*;
    use crate::{Resource, ResourceLayer};

    fn eds_cluster(name: &str) -> Resource {
        let cluster = Cluster {
            name: name.to_string(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(EdsClusterConfig::default()),
            ..Default::default()
        };
        Resource::new(CLUSTER, name, &cluster)
    }

    fn endpoints(name: &str) -> Resource {
        let cla = ClusterLoadAssignment {
            cluster_name: name.to_string(),
            ..Default::default()
        };
        Resource::new(ENDPOINT, name, &cla)
    }

    fn listener_naming_routes(route: &str) -> Resource {
        let hcm = HttpConnectionManager {
            route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
                route_config_name: route.to_string(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let listener = Listener {
            name: "outbound".to_string(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".to_string(),
                    config_type: Some(filter::ConfigType::TypedConfig(Any {
                        type_url: HttpConnectionManager::type_url(),
                        value: hcm.encode_to_vec(),
                    })),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        Resource::new(LISTENER, "outbound", &listener)
    }

    fn snapshot(sets: Vec<(&'static str, Vec<Resource>)>) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (type_url, resources) in sets {
            snapshot.insert(type_url, vec![ResourceLayer::new(resources)]);
        }
        snapshot
    }

    #[test]
    fn a_snapshot_with_everything_it_names_is_consistent() {
        let route = RouteConfiguration {
            name: "outbound".into(),
            ..Default::default()
        };
        let whole = snapshot(vec![
            (CLUSTER, vec![eds_cluster("a")]),
            (ENDPOINT, vec![endpoints("a")]),
            (LISTENER, vec![listener_naming_routes("outbound")]),
            (ROUTE, vec![Resource::new(ROUTE, "outbound", &route)]),
        ]);
        assert_eq!(whole.consistent(), Ok(()));
    }

    #[test]
    fn missing_routes_and_endpoints_and_orphan_endpoints_are_found() {
        let no_routes = snapshot(vec![(LISTENER, vec![listener_naming_routes("outbound")])]);
        assert_eq!(
            no_routes.consistent(),
            Err(Inconsistency::Missing {
                kind: "route configuration",
                name: "outbound".into(),
                by: "listener `outbound`".into(),
            })
        );
        let no_endpoints = snapshot(vec![(CLUSTER, vec![eds_cluster("a")])]);
        assert!(matches!(
            no_endpoints.consistent(),
            Err(Inconsistency::Missing {
                kind: "endpoints",
                ..
            })
        ));
        let orphan = snapshot(vec![
            (CLUSTER, vec![eds_cluster("a")]),
            (ENDPOINT, vec![endpoints("a"), endpoints("b")]),
        ]);
        assert_eq!(
            orphan.consistent(),
            Err(Inconsistency::OrphanEndpoints("b".into()))
        );
    }
}
