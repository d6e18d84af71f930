//! Istio's Bookinfo traffic tasks, unchanged, translated: the Envoy routes and clusters a
//! client sidecar gets. (Real Envoys run them in the end-to-end tests.)

use std::path::PathBuf;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, route, route_action, RouteConfiguration,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use prost::Message;
use ward_config::model::Mesh;
use ward_snapshot::Snapshot;

use crate::routing::FAULT_FILTER;
use crate::{mesh_snapshots, TranslateOptions};

fn sample(path: &str) -> (String, String) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/peer-tests/istio-samples/bookinfo");
    let text = std::fs::read_to_string(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    (path.to_string(), text)
}

fn bookinfo(extra: &[(String, String)]) -> Mesh {
    let mut files = vec![
        sample("platform/kube/bookinfo.yaml"),
        sample("networking/destination-rule-all.yaml"),
    ];
    files.extend(extra.iter().cloned());
    ward_config::load_sources(&files)
        .unwrap_or_else(|e| panic!("{e}"))
        .mesh
}

/// productpage's sidecar's snapshot.
fn productpage(mesh: &Mesh) -> Snapshot {
    let (snapshots, _) = mesh_snapshots(mesh, &TranslateOptions::default(), None, |_, _| None);
    snapshots
        .into_iter()
        .find(|(node, _)| node.starts_with("productpage-v1"))
        .expect("a productpage sidecar")
        .1
}

fn decode<M: Message + Default>(snapshot: &Snapshot, type_url: &str, name: &str) -> M {
    let resource = snapshot
        .set(type_url)
        .and_then(|set| set.get(name))
        .unwrap_or_else(|| panic!("no {type_url} {name}"));
    M::decode(resource.any().value.as_slice()).unwrap()
}

fn reviews_routes(snapshot: &Snapshot) -> Vec<envoy_types::pb::envoy::config::route::v3::Route> {
    let config: RouteConfiguration = decode(snapshot, ward_snapshot::ROUTE, "outbound");
    config
        .virtual_hosts
        .into_iter()
        .find(|v| v.name == "reviews.default.svc.cluster.local:9080")
        .unwrap()
        .routes
}

fn cluster_of(
    route: &envoy_types::pb::envoy::config::route::v3::Route,
) -> route_action::ClusterSpecifier {
    match &route.action {
        Some(route::Action::Route(action)) => action.cluster_specifier.clone().unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn each_subset_is_a_cluster_of_its_own_pods() {
    let snapshot = productpage(&bookinfo(&[]));
    let v2: Cluster = decode(
        &snapshot,
        ward_snapshot::CLUSTER,
        "outbound|9080|v2|reviews.default.svc.cluster.local",
    );
    assert_eq!(
        v2.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32
        ))
    );
    let endpoints = |name: &str| -> usize {
        let assignment: ClusterLoadAssignment = decode(&snapshot, ward_snapshot::ENDPOINT, name);
        assignment
            .endpoints
            .iter()
            .map(|l| l.lb_endpoints.len())
            .sum()
    };
    assert_eq!(
        endpoints("outbound|9080||reviews.default.svc.cluster.local"),
        3
    );
    assert_eq!(
        endpoints("outbound|9080|v2|reviews.default.svc.cluster.local"),
        1
    );
    // A subset without pods is a cluster without endpoints: 503, as in Istio.
    assert_eq!(
        endpoints("outbound|9080|v2|ratings.default.svc.cluster.local"),
        0
    );
}

#[test]
fn jason_goes_to_v2_and_the_rest_to_v1() {
    let mesh = bookinfo(&[sample("networking/virtual-service-reviews-test-v2.yaml")]);
    let routes = reviews_routes(&productpage(&mesh));
    assert_eq!(routes.len(), 2);
    let header = &routes[0].r#match.as_ref().unwrap().headers[0];
    assert_eq!(header.name, "end-user");
    assert!(matches!(
        header.header_match_specifier,
        Some(header_matcher::HeaderMatchSpecifier::StringMatch(_))
    ));
    assert_eq!(
        cluster_of(&routes[0]),
        route_action::ClusterSpecifier::Cluster(
            "outbound|9080|v2|reviews.default.svc.cluster.local".into()
        )
    );
    assert_eq!(
        cluster_of(&routes[1]),
        route_action::ClusterSpecifier::Cluster(
            "outbound|9080|v1|reviews.default.svc.cluster.local".into()
        )
    );
}

#[test]
fn weights_become_weighted_clusters() {
    let mesh = bookinfo(&[sample("networking/virtual-service-reviews-80-20.yaml")]);
    let routes = reviews_routes(&productpage(&mesh));
    let route_action::ClusterSpecifier::WeightedClusters(weighted) = cluster_of(&routes[0]) else {
        panic!("{routes:?}");
    };
    let weights: Vec<(String, u32)> = weighted
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.unwrap().value))
        .collect();
    assert_eq!(
        weights,
        [
            (
                "outbound|9080|v1|reviews.default.svc.cluster.local".to_string(),
                80
            ),
            (
                "outbound|9080|v2|reviews.default.svc.cluster.local".to_string(),
                20
            )
        ]
    );
}

#[test]
fn the_delay_for_jason_is_the_fault_filters_route_config() {
    let mesh = bookinfo(&[sample("networking/virtual-service-ratings-test-delay.yaml")]);
    let config: RouteConfiguration = decode(&productpage(&mesh), ward_snapshot::ROUTE, "outbound");
    let ratings = config
        .virtual_hosts
        .iter()
        .find(|v| v.name == "ratings.default.svc.cluster.local:9080")
        .unwrap();
    let fault = HttpFault::decode(
        ratings.routes[0].typed_per_filter_config[FAULT_FILTER]
            .value
            .as_slice(),
    )
    .unwrap();
    let delay = fault.delay.unwrap();
    assert_eq!(delay.percentage.unwrap().numerator, 1_000_000);
    assert!(ratings.routes[1].typed_per_filter_config.is_empty());
}

#[test]
fn source_labels_give_the_selected_clients_their_own_route_table() {
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - match:
    - sourceLabels:
        app: productpage
    route:
    - destination: {host: reviews, subset: v3}
  - route:
    - destination: {host: reviews, subset: v1}
";
    let mesh = bookinfo(&[("vs.yaml".into(), vs.into())]);
    let (snapshots, _) = mesh_snapshots(&mesh, &TranslateOptions::default(), None, |_, _| None);
    let first_cluster = |node: &str| {
        let snapshot = &snapshots
            .iter()
            .find(|(n, _)| n.starts_with(node))
            .unwrap()
            .1;
        cluster_of(&reviews_routes(snapshot)[0])
    };
    assert_eq!(
        first_cluster("productpage-v1"),
        route_action::ClusterSpecifier::Cluster(
            "outbound|9080|v3|reviews.default.svc.cluster.local".into()
        )
    );
    assert_eq!(
        first_cluster("details-v1"),
        route_action::ClusterSpecifier::Cluster(
            "outbound|9080|v1|reviews.default.svc.cluster.local".into()
        )
    );
}
