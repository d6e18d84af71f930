//! The ADS server against a real gRPC client on loopback: what is sent, when, and what is not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use ward_ads::proxy_status::ProxyStatusRegistry;
use ward_ads::AdsServer;
use ward_metrics::Metrics;
use ward_snapshot::{Resource, ResourceLayer, Snapshot, SnapshotCache, CLUSTER, ENDPOINT};

const NODE: &str = "web-0.default";

struct Harness {
    cache: Arc<SnapshotCache>,
    status: ProxyStatusRegistry,
    metrics: Arc<Metrics>,
    address: SocketAddr,
}

/// Clusters named `names`, each with `tag` in its alt_stat_name so versions differ by tag.
fn snapshot(clusters: &[(&str, &str)], endpoints: &[&str]) -> Snapshot {
    let clusters = clusters
        .iter()
        .map(|(name, tag)| {
            Resource::new(
                CLUSTER,
                name,
                &Cluster {
                    name: name.to_string(),
                    alt_stat_name: tag.to_string(),
                    ..Default::default()
                },
            )
        })
        .collect::<Vec<_>>();
    let endpoints = endpoints
        .iter()
        .map(|name| {
            Resource::new(
                ENDPOINT,
                name,
                &ClusterLoadAssignment {
                    cluster_name: name.to_string(),
                    ..Default::default()
                },
            )
        })
        .collect::<Vec<_>>();
    let mut snapshot = Snapshot::default();
    snapshot.insert(CLUSTER, vec![ResourceLayer::new(clusters)]);
    snapshot.insert(ENDPOINT, vec![ResourceLayer::new(endpoints)]);
    snapshot
}

async fn start() -> Harness {
    let cache = Arc::new(SnapshotCache::new());
    let status = ProxyStatusRegistry::new();
    let metrics = Arc::new(Metrics::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let service = AdsServer::new(cache.clone(), status.clone(), metrics.clone()).into_service();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    Harness {
        cache,
        status,
        metrics,
        address,
    }
}

async fn client(
    address: SocketAddr,
) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    AggregatedDiscoveryServiceClient::connect(format!("http://{address}"))
        .await
        .unwrap()
}

fn node() -> Option<Node> {
    Some(Node {
        id: NODE.to_string(),
        ..Default::default()
    })
}

async fn next<T>(stream: &mut Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a response within 5 s")
        .unwrap()
        .expect("stream open")
}

async fn nothing_within<T: std::fmt::Debug>(stream: &mut Streaming<T>, ms: u64) {
    if let Ok(message) = tokio::time::timeout(Duration::from_millis(ms), stream.message()).await {
        panic!("expected nothing, got {message:?}");
    }
}

fn state_of(h: &Harness, type_short: &str) -> String {
    let json = h.status.snapshot_json(&h.cache);
    json[0]["types"][type_short]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn nacks(h: &Harness) -> String {
    h.metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("ward_xds_nacks_total"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A delta ADS stream opened with `first` (which carries the node).
async fn open_delta(
    address: SocketAddr,
    first: DeltaDiscoveryRequest,
) -> (
    mpsc::Sender<DeltaDiscoveryRequest>,
    Streaming<DeltaDiscoveryResponse>,
) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let responses = client(address)
        .await
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, responses)
}

/// A delta ACK of the response with `nonce`.
async fn ack(tx: &mpsc::Sender<DeltaDiscoveryRequest>, type_url: &str, nonce: &str) {
    tx.send(DeltaDiscoveryRequest {
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// A delta NACK of the response with `nonce`, with Envoy's `error_detail`.
async fn nack(tx: &mpsc::Sender<DeltaDiscoveryRequest>, type_url: &str, nonce: &str, why: &str) {
    tx.send(DeltaDiscoveryRequest {
        type_url: type_url.into(),
        response_nonce: nonce.into(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: why.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
}

fn delta_names(response: &DeltaDiscoveryResponse) -> Vec<String> {
    response.resources.iter().map(|r| r.name.clone()).collect()
}

#[tokio::test]
async fn sotw_push_ack_nack_and_no_resend_of_a_rejected_version() {
    let h = start().await;
    h.cache
        .set(NODE, snapshot(&[("a", "1"), ("b", "1")], &["a", "b"]));
    let (tx, rx) = mpsc::channel(8);
    tx.send(DiscoveryRequest {
        node: node(),
        type_url: CLUSTER.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = client(h.address)
        .await
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    let first: DiscoveryResponse = next(&mut responses).await;
    assert_eq!(first.type_url, CLUSTER);
    assert_eq!(first.resources.len(), 2);
    assert!(!first.version_info.is_empty() && !first.nonce.is_empty());
    tx.send(DiscoveryRequest {
        type_url: CLUSTER.into(),
        version_info: first.version_info.clone(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(state_of(&h, "CDS"), "SYNCED");

    // EDS by name: only what is asked for.
    tx.send(DiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names: vec!["b".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let eds: DiscoveryResponse = next(&mut responses).await;
    assert_eq!(eds.type_url, ENDPOINT);
    assert_eq!(eds.resources.len(), 1);
    tx.send(DiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names: vec!["b".into()],
        version_info: eds.version_info.clone(),
        response_nonce: eds.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // A new version is NACKed: recorded, counted, and never sent again.
    h.cache
        .set(NODE, snapshot(&[("a", "2"), ("b", "1")], &["a", "b"]));
    let second: DiscoveryResponse = next(&mut responses).await;
    assert_ne!(second.version_info, first.version_info);
    // Envoy warms an updated cluster only with its endpoints: they follow the clusters.
    let eds_again: DiscoveryResponse = next(&mut responses).await;
    assert_eq!(eds_again.type_url, ENDPOINT);
    assert_eq!(eds_again.version_info, eds.version_info);
    tx.send(DiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names: vec!["b".into()],
        version_info: eds_again.version_info.clone(),
        response_nonce: eds_again.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    tx.send(DiscoveryRequest {
        type_url: CLUSTER.into(),
        version_info: first.version_info.clone(),
        response_nonce: second.nonce.clone(),
        error_detail: Some(RpcStatus {
            code: 3,
            message: "cluster a: invalid".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(state_of(&h, "CDS"), "NACKED");
    assert!(nacks(&h).contains("type=\"CDS\"} 1"), "{}", nacks(&h));
    let json = h.status.snapshot_json(&h.cache).to_string();
    assert!(json.contains("cluster a: invalid"), "{json}");
    // Re-setting the same (rejected) content does not resend it.
    h.cache
        .set(NODE, snapshot(&[("a", "2"), ("b", "1")], &["a", "b"]));
    nothing_within(&mut responses, 300).await;

    // The next different version goes out.
    h.cache
        .set(NODE, snapshot(&[("a", "3"), ("b", "1")], &["a", "b"]));
    let third: DiscoveryResponse = next(&mut responses).await;
    assert_eq!(third.type_url, CLUSTER);
    assert_ne!(third.version_info, second.version_info);
}

#[tokio::test]
async fn delta_sends_only_changes_and_removals() {
    let h = start().await;
    h.cache.set(
        NODE,
        snapshot(&[("a", "1"), ("b", "1"), ("c", "1")], &["a"]),
    );
    let (tx, mut responses) = open_delta(
        h.address,
        DeltaDiscoveryRequest {
            node: node(),
            type_url: CLUSTER.into(),
            ..Default::default()
        },
    )
    .await;

    let first = next(&mut responses).await;
    assert_eq!(delta_names(&first), vec!["a", "b", "c"]);
    ack(&tx, CLUSTER, &first.nonce).await;

    // One cluster changes, one disappears: exactly that travels.
    h.cache
        .set(NODE, snapshot(&[("a", "2"), ("b", "1")], &["a"]));
    let second = next(&mut responses).await;
    assert_eq!(delta_names(&second), vec!["a"]);
    assert_eq!(second.removed_resources, vec!["c".to_string()]);
    ack(&tx, CLUSTER, &second.nonce).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(state_of(&h, "CDS"), "SYNCED");

    // Endpoints by name, and a later subscription to a name sends just that one.
    tx.send(DeltaDiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names_subscribe: vec!["a".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let eds = next(&mut responses).await;
    assert_eq!(delta_names(&eds), vec!["a"]);

    // NACK: not resent for the same content.
    h.cache
        .set(NODE, snapshot(&[("a", "3"), ("b", "1")], &["a"]));
    let third = next(&mut responses).await;
    assert_eq!(third.type_url, CLUSTER);
    nack(&tx, CLUSTER, &third.nonce, "no").await;
    nothing_within(&mut responses, 300).await;
    assert_eq!(state_of(&h, "CDS"), "NACKED");
}

#[tokio::test]
async fn delta_reconnect_with_matching_versions_gets_nothing_resent() {
    let h = start().await;
    h.cache.set(NODE, snapshot(&[("a", "1"), ("b", "1")], &[]));
    let (tx, mut responses) = open_delta(
        h.address,
        DeltaDiscoveryRequest {
            node: node(),
            type_url: CLUSTER.into(),
            ..Default::default()
        },
    )
    .await;
    let first = next(&mut responses).await;
    let versions: BTreeMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(tx);
    drop(responses);

    // Reconnect: the proxy has a@1 and b@1; only the changed b comes back.
    h.cache.set(NODE, snapshot(&[("a", "1"), ("b", "2")], &[]));
    let (_tx, mut responses) = open_delta(
        h.address,
        DeltaDiscoveryRequest {
            node: node(),
            type_url: CLUSTER.into(),
            initial_resource_versions: versions.into_iter().collect(),
            ..Default::default()
        },
    )
    .await;
    let resent = next(&mut responses).await;
    assert_eq!(delta_names(&resent), vec!["b"]);
    assert!(resent.removed_resources.is_empty());
}

#[tokio::test]
async fn delta_sends_a_large_set_in_chunks_and_holds_listeners_until_it_is_complete() {
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use ward_snapshot::LISTENER;
    let h = start().await;
    // 300 clusters of about 1 KB each: several chunks of at most ~32 KB.
    let padding = "x".repeat(1000);
    let clusters: Vec<(String, String)> = (0..300)
        .map(|i| (format!("c{i:03}"), format!("{padding}{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = clusters
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    // The clusters, and one listener that must wait for all of them.
    let with_listener = |clusters: &[(&str, &str)]| {
        let mut snap = snapshot(clusters, &[]);
        let listener = Listener {
            name: "l".into(),
            ..Default::default()
        };
        snap.insert(
            LISTENER,
            vec![ResourceLayer::new([Resource::new(
                LISTENER, "l", &listener,
            )])],
        );
        snap
    };
    h.cache.set(NODE, with_listener(&refs));

    let mut c = client(h.address).await;
    let (tx, rx) = mpsc::channel(16);
    for (type_url, first) in [(CLUSTER, true), (LISTENER, false)] {
        tx.send(DeltaDiscoveryRequest {
            node: first.then(node).flatten(),
            type_url: type_url.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut responses = c
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut received = std::collections::BTreeSet::new();
    let mut chunks = 0;
    while received.len() < 300 {
        let response: DeltaDiscoveryResponse = next(&mut responses).await;
        assert_eq!(
            response.type_url, CLUSTER,
            "listeners wait until every cluster has arrived"
        );
        assert!(
            response.encoded_len() < 40 * 1024,
            "{}",
            response.encoded_len()
        );
        chunks += 1;
        for r in &response.resources {
            assert!(received.insert(r.name.clone()), "{} sent twice", r.name);
        }
        assert_eq!(
            state_of(&h, "CDS"),
            "STALE",
            "not SYNCED before the last chunk"
        );
        ack(&tx, CLUSTER, &response.nonce).await;
    }
    assert!(chunks >= 8, "{chunks} chunks");
    let listeners: DeltaDiscoveryResponse = next(&mut responses).await;
    assert_eq!(listeners.type_url, LISTENER);
    ack(&tx, LISTENER, &listeners.nonce).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(state_of(&h, "CDS"), "SYNCED");
    assert_eq!(state_of(&h, "LDS"), "SYNCED");
    nothing_within(&mut responses, 200).await;

    // A later change of one cluster is one small response.
    let mut changed = refs.clone();
    changed[7].1 = "new";
    h.cache.set(NODE, with_listener(&changed));
    let update: DeltaDiscoveryResponse = next(&mut responses).await;
    assert_eq!(delta_names(&update), vec!["c007"]);
}

#[tokio::test]
async fn delta_resends_the_endpoints_of_an_updated_cluster_so_envoy_can_warm_it() {
    let h = start().await;
    h.cache
        .set(NODE, snapshot(&[("a", "1"), ("b", "1")], &["a", "b"]));
    let (tx, mut responses) = open_delta(
        h.address,
        DeltaDiscoveryRequest {
            node: node(),
            type_url: CLUSTER.into(),
            ..Default::default()
        },
    )
    .await;
    let cds: DeltaDiscoveryResponse = next(&mut responses).await;
    ack(&tx, CLUSTER, &cds.nonce).await;
    tx.send(DeltaDiscoveryRequest {
        type_url: ENDPOINT.into(),
        resource_names_subscribe: vec!["a".into(), "b".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let eds: DeltaDiscoveryResponse = next(&mut responses).await;
    assert_eq!(delta_names(&eds), vec!["a", "b"]);
    ack(&tx, ENDPOINT, &eds.nonce).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Cluster `a` changes (say, its TLS settings); its endpoints do not.
    h.cache
        .set(NODE, snapshot(&[("a", "2"), ("b", "1")], &["a", "b"]));
    let cds: DeltaDiscoveryResponse = next(&mut responses).await;
    assert_eq!(cds.type_url, CLUSTER);
    assert_eq!(delta_names(&cds), vec!["a"]);
    let eds: DeltaDiscoveryResponse = next(&mut responses).await;
    assert_eq!(eds.type_url, ENDPOINT);
    assert_eq!(
        delta_names(&eds),
        vec!["a"],
        "the updated cluster's endpoints follow it"
    );
}

#[tokio::test]
async fn delta_uses_a_replaced_layers_diff_and_sends_the_same_changes() {
    let cluster = |name: &str, tag: &str| {
        Resource::new(
            CLUSTER,
            name,
            &Cluster {
                name: name.to_string(),
                alt_stat_name: tag.to_string(),
                ..Default::default()
            },
        )
    };
    let h = start().await;
    let first = ResourceLayer::replacing(
        [cluster("a", "1"), cluster("b", "1"), cluster("c", "1")],
        None,
    );
    let mut snap = Snapshot::default();
    snap.insert(CLUSTER, vec![first.clone()]);
    h.cache.set(NODE, snap);
    let (tx, mut responses) = open_delta(
        h.address,
        DeltaDiscoveryRequest {
            node: node(),
            type_url: CLUSTER.into(),
            ..Default::default()
        },
    )
    .await;
    let response = next(&mut responses).await;
    assert_eq!(delta_names(&response), vec!["a", "b", "c"]);
    ack(&tx, CLUSTER, &response.nonce).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // The next layer replaces the first: `a` changed, `c` removed, `d` added, `b` the same.
    let second = ResourceLayer::replacing(
        [cluster("a", "2"), cluster("b", "1"), cluster("d", "1")],
        Some(&first),
    );
    let diff = second.base.as_ref().expect("a diff from the first layer");
    assert_eq!(
        diff.changed
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        vec!["a", "d"]
    );
    let mut snap = Snapshot::default();
    snap.insert(CLUSTER, vec![second.clone()]);
    h.cache.set(NODE, snap);
    let response = next(&mut responses).await;
    assert_eq!(delta_names(&response), vec!["a", "d"]);
    assert_eq!(response.removed_resources, vec!["c".to_string()]);
    ack(&tx, CLUSTER, &response.nonce).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(state_of(&h, "CDS"), "SYNCED");
    // An unchanged replacement is the very same layer: nothing is sent.
    let third = ResourceLayer::replacing(
        [cluster("a", "2"), cluster("b", "1"), cluster("d", "1")],
        Some(&second),
    );
    assert!(Arc::ptr_eq(&third, &second));
    nothing_within(&mut responses, 200).await;
}

/// A snapshot with one resource of every type, each tagged with `tag` so a new tag changes
/// every type at once.
fn every_type(tag: &str) -> Snapshot {
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
    use ward_snapshot::{EXTENSION_CONFIG, LISTENER, ROUTE, SECRET};
    let mut snap = snapshot(&[("c", tag)], &["c"]);
    let one = |type_url: &'static str, resource: Resource| (type_url, resource);
    for (type_url, resource) in [
        one(
            LISTENER,
            Resource::new(
                LISTENER,
                "l",
                &Listener {
                    name: "l".into(),
                    stat_prefix: tag.into(),
                    ..Default::default()
                },
            ),
        ),
        one(
            ROUTE,
            Resource::new(
                ROUTE,
                "r",
                &RouteConfiguration {
                    name: "r".into(),
                    internal_only_headers: vec![tag.into()],
                    ..Default::default()
                },
            ),
        ),
        one(
            SECRET,
            Resource::new(
                SECRET,
                "s",
                &Secret {
                    name: format!("s{tag}"),
                    ..Default::default()
                },
            ),
        ),
        one(
            EXTENSION_CONFIG,
            Resource::new(
                EXTENSION_CONFIG,
                "e",
                &TypedExtensionConfig {
                    name: format!("e{tag}"),
                    ..Default::default()
                },
            ),
        ),
    ] {
        snap.insert(type_url, vec![ResourceLayer::new([resource])]);
    }
    snap
}

/// What the server sends until it waits for ACKs: type names of each response, in order,
/// then ACKs them all. Repeated until nothing more comes; one inner list per round.
async fn rounds_until_quiet(
    tx: &mpsc::Sender<DeltaDiscoveryRequest>,
    responses: &mut Streaming<DeltaDiscoveryResponse>,
) -> Vec<Vec<&'static str>> {
    let mut rounds = Vec::new();
    loop {
        let mut round = Vec::new();
        // Quiet for 300 ms: the server is waiting for the ACKs of what it sent.
        while let Ok(message) =
            tokio::time::timeout(Duration::from_millis(300), responses.message()).await
        {
            let response = message.unwrap().expect("stream open");
            round.push((ward_snapshot::short_name(&response.type_url), response));
        }
        if round.is_empty() {
            return rounds;
        }
        for (_, response) in &round {
            ack(tx, &response.type_url, &response.nonce).await;
        }
        rounds.push(round.into_iter().map(|(short, _)| short).collect());
    }
}

/// A delta stream subscribed to everything at once (wildcard for CDS and LDS, by name for the
/// others), as every type's resources of [`every_type`] are named.
async fn subscribe_to_every_type(
    address: SocketAddr,
) -> (
    mpsc::Sender<DeltaDiscoveryRequest>,
    Streaming<DeltaDiscoveryResponse>,
) {
    use ward_snapshot::{EXTENSION_CONFIG, LISTENER, ROUTE, SECRET};
    let mut c = client(address).await;
    let (tx, rx) = mpsc::channel(16);
    for (type_url, names) in [
        (CLUSTER, vec![]),
        (ENDPOINT, vec!["c"]),
        (LISTENER, vec![]),
        (ROUTE, vec!["r"]),
        (SECRET, vec!["s"]),
        (EXTENSION_CONFIG, vec!["e"]),
    ] {
        tx.send(DeltaDiscoveryRequest {
            node: (type_url == CLUSTER).then(node).flatten(),
            type_url: type_url.into(),
            resource_names_subscribe: names.into_iter().map(String::from).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let responses = c
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, responses)
}

/// The initial sync of [`subscribe_to_every_type`]: clusters first, then their endpoints;
/// secrets name nothing and go in the same round. Listeners only once clusters and endpoints
/// are ACKed, routes only once listeners are: Envoy never sees a name it has not received.
/// Filter configs (ECDS) once the routes are: where the routes carry the RBAC rules, the
/// wasm filter may stop enforcing only once they are in place.
const EVERY_TYPE_ROUNDS: [&[&str]; 4] = [&["CDS", "EDS", "SDS"], &["LDS"], &["RDS"], &["ECDS"]];

/// A proxy subscribed to every type of [`every_type`] `"1"`, synced in [`EVERY_TYPE_ROUNDS`].
async fn synced_on_every_type(
    h: &Harness,
) -> (
    mpsc::Sender<DeltaDiscoveryRequest>,
    Streaming<DeltaDiscoveryResponse>,
) {
    h.cache.set(NODE, every_type("1"));
    let (tx, mut responses) = subscribe_to_every_type(h.address).await;
    assert_eq!(
        rounds_until_quiet(&tx, &mut responses).await,
        EVERY_TYPE_ROUNDS
    );
    (tx, responses)
}

#[tokio::test]
async fn every_type_is_pushed_in_order_and_listeners_and_routes_wait_for_acks() {
    let h = start().await;
    let (tx, mut responses) = synced_on_every_type(&h).await;
    for short in ["CDS", "EDS", "LDS", "RDS", "SDS", "ECDS"] {
        assert_eq!(state_of(&h, short), "SYNCED", "{short}");
    }

    // A change of every type is pushed in the same order.
    h.cache.set(NODE, every_type("2"));
    assert_eq!(
        rounds_until_quiet(&tx, &mut responses).await,
        EVERY_TYPE_ROUNDS
    );
    for short in ["CDS", "EDS", "LDS", "RDS", "SDS", "ECDS"] {
        assert_eq!(state_of(&h, short), "SYNCED", "{short}");
    }
}

/// [`every_type`] `"1"` whose routes and extension configs are those of `tag`, as when the
/// authorization engine switches: the RBAC rules move between the routes and the wasm
/// filter's configuration (ECDS).
fn engine_switch(tag: &str, wasm_enforces: bool) -> Snapshot {
    use ward_snapshot::{EXTENSION_CONFIG, ROUTE};
    let mut snap = every_type("1");
    let changed = every_type(tag);
    for type_url in [ROUTE, EXTENSION_CONFIG] {
        snap.sets
            .insert(type_url, changed.set(type_url).unwrap().clone());
    }
    snap.routes_after_extensions = wasm_enforces;
    snap
}

/// To the wasm engine, the filter's policies (ECDS) must be in place before the routes drop
/// the RBAC rules, or requests would pass unchecked for a moment: the routes wait for the
/// ECDS ACK, and for as long as the proxy NACKs it. Back to the native engine, the routes
/// (bringing the rules back) go first, and the filter stops once they are ACKed.
#[tokio::test]
async fn where_the_wasm_filter_enforces_routes_wait_for_its_configuration() {
    use ward_snapshot::EXTENSION_CONFIG;
    let h = start().await;
    let (tx, mut responses) = synced_on_every_type(&h).await;

    h.cache.set(NODE, engine_switch("2", true));
    assert_eq!(
        rounds_until_quiet(&tx, &mut responses).await,
        [["ECDS"], ["RDS"]]
    );

    h.cache.set(NODE, engine_switch("3", false));
    assert_eq!(
        rounds_until_quiet(&tx, &mut responses).await,
        [["RDS"], ["ECDS"]]
    );

    // The proxy rejects the filter's configuration: the routes keep the RBAC rules.
    h.cache.set(NODE, engine_switch("4", true));
    let ecds = next(&mut responses).await;
    assert_eq!(ecds.type_url, EXTENSION_CONFIG);
    nack(
        &tx,
        EXTENSION_CONFIG,
        &ecds.nonce,
        "the module failed to load",
    )
    .await;
    nothing_within(&mut responses, 300).await;
    assert_eq!(state_of(&h, "ECDS"), "NACKED");
    assert_eq!(state_of(&h, "RDS"), "STALE");
}
