//! Kubernetes discovery driven through list / watch / relist / delete sequences.
//!
//! No Kubernetes API server can run on these machines, so the API server is faked at the
//! HTTP level: a small server answering the list and watch requests kube-rs makes, with the
//! JSON Kubernetes sends. Everything above it is real: kube-rs's client, watchers and
//! reflectors, Ward's discovery, loader, resolver and translation, and the snapshot cache
//! that decides what is pushed to which proxy.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::Cluster as EnvoyCluster;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LbEndpoint};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::google::protobuf::value::Kind;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use prost::Message;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};
use xds_server::discovery::Sources;
use ward_snapshot::{Snapshot, SnapshotCache, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use ward_xds::{mesh_snapshots, TranslateOptions};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The fake API server's state: objects by resource path (`/api/v1/pods`), the current
/// resourceVersion, and the watch events it streams. As a real API server, a watch from a
/// resourceVersion first gets the events after it that it missed, so an event sent while a
/// watcher is between its list and its watch is not lost.
struct Cluster {
    objects: Mutex<BTreeMap<String, BTreeMap<String, Value>>>,
    version: Mutex<u64>,
    events: broadcast::Sender<(String, Value)>,
    /// Every event sent: (resourceVersion, path, event).
    history: Mutex<Vec<(u64, String, Value)>>,
    /// The next watch request on a path is answered 410 Gone (its version expired).
    expire_next_watch: Mutex<Vec<String>>,
    watches: Mutex<u64>,
    lists: Mutex<u64>,
}

const PATHS: [(&str, &str); 7] = [
    ("/api/v1/namespaces", "Namespace"),
    ("/api/v1/serviceaccounts", "ServiceAccount"),
    ("/api/v1/services", "Service"),
    ("/api/v1/pods", "Pod"),
    (PEER_AUTHENTICATIONS, "PeerAuthentication"),
    (AUTHORIZATION_POLICIES, "AuthorizationPolicy"),
    (VIRTUAL_SERVICES, "VirtualService"),
];
const PEER_AUTHENTICATIONS: &str = "/apis/security.istio.io/v1/peerauthentications";
const AUTHORIZATION_POLICIES: &str = "/apis/security.istio.io/v1/authorizationpolicies";
const VIRTUAL_SERVICES: &str = "/apis/networking.istio.io/v1/virtualservices";

impl Cluster {
    fn new() -> Arc<Cluster> {
        let objects = PATHS
            .iter()
            .map(|(p, _)| (p.to_string(), BTreeMap::new()))
            .collect();
        Arc::new(Cluster {
            objects: Mutex::new(objects),
            version: Mutex::new(1),
            events: broadcast::channel(64).0,
            history: Mutex::new(Vec::new()),
            expire_next_watch: Mutex::new(Vec::new()),
            watches: Mutex::new(0),
            lists: Mutex::new(0),
        })
    }

    /// Stores `object` at `path` and streams the event (ADDED, MODIFIED or DELETED).
    fn change(&self, path: &str, kind: &str, mut object: Value) {
        let mut version = self.version.lock().unwrap();
        *version += 1;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let key = format!(
            "{}/{}",
            object["metadata"]["namespace"].as_str().unwrap_or(""),
            object["metadata"]["name"].as_str().unwrap()
        );
        let mut objects = self.objects.lock().unwrap();
        let at = objects.get_mut(path).unwrap();
        let existed = at.contains_key(&key);
        if kind == "DELETED" {
            at.remove(&key);
        } else {
            at.insert(key, object.clone());
        }
        let kind = match kind {
            "DELETED" => "DELETED",
            _ if existed => "MODIFIED",
            _ => "ADDED",
        };
        let event = json!({"type": kind, "object": object});
        self.history
            .lock()
            .unwrap()
            .push((*version, path.to_string(), event.clone()));
        let _ = self.events.send((path.to_string(), event));
    }

    fn respond(self: &Arc<Self>, path: &str, query: &str) -> hyper::Response<Body> {
        let Some((_, kind)) = PATHS.iter().find(|(p, _)| *p == path) else {
            // A CRD that is not installed.
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource"});
            return response(404, status.to_string());
        };
        let watching = query
            .split('&')
            .any(|p| p == "watch=true" || p == "watch=1");
        if !watching {
            *self.lists.lock().unwrap() += 1;
            let items: Vec<Value> = self.objects.lock().unwrap()[path]
                .values()
                .cloned()
                .collect();
            let api_version = path
                .strip_prefix("/apis/")
                .and_then(|p| p.rsplit_once('/'))
                .map_or("v1", |(group_version, _)| group_version);
            let list = json!({"kind": format!("{kind}List"), "apiVersion": api_version,
                "metadata": {"resourceVersion": self.version.lock().unwrap().to_string()},
                "items": items});
            return response(200, list.to_string());
        }
        *self.watches.lock().unwrap() += 1;
        let mut expire = self.expire_next_watch.lock().unwrap();
        if let Some(i) = expire.iter().position(|p| p == path) {
            expire.remove(i);
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "reason": "Expired", "code": 410,
                "message": "too old resource version"}});
            return response(200, format!("{gone}\n"));
        }
        drop(expire);
        // Subscribed before the history is read: an event sent in between is in both, and
        // sent once (by version).
        let mut events = self.events.subscribe();
        let from: u64 = query
            .split('&')
            .find_map(|p| p.strip_prefix("resourceVersion="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let missed: Vec<(u64, Value)> = self
            .history
            .lock()
            .unwrap()
            .iter()
            .filter(|(version, at, _)| *version > from && at == path)
            .map(|(version, _, event)| (*version, event.clone()))
            .collect();
        let path = path.to_string();
        let stream = async_stream(move |tx| async move {
            let mut sent = from;
            for (version, event) in missed {
                sent = version;
                if tx.send(format!("{event}\n")).await.is_err() {
                    return;
                }
            }
            while let Ok((at, event)) = events.recv().await {
                if at == "end" {
                    return;
                }
                let version = event["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(u64::MAX);
                if at == path && version > sent {
                    sent = version;
                    if tx.send(format!("{event}\n")).await.is_err() {
                        return;
                    }
                }
            }
        });
        let mut builder = hyper::Response::builder().status(200);
        builder = builder.header("content-type", "application/json");
        builder.body(stream).unwrap()
    }

    /// Ends every open watch (the API server restarting its watch cache): the watchers
    /// reconnect, and find their version expired when `expire` is set.
    fn end_watches(&self, expire: bool) {
        if expire {
            *self.expire_next_watch.lock().unwrap() =
                PATHS.iter().map(|(p, _)| p.to_string()).collect();
        }
        let _ = self.events.send(("end".into(), Value::Null));
    }
}

/// A streaming body fed by `produce` through a channel; ends when an "end" event arrives.
fn async_stream<F, Fut>(produce: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<String>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(16);
    tokio::spawn(produce(tx));
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let frames = futures::StreamExt::map(stream, |line| Ok(Frame::data(Bytes::from(line))));
    BodyExt::boxed(StreamBody::new(frames))
}

fn response(status: u16, body: String) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(body))))
        .unwrap()
}

async fn serve(cluster: Arc<Cluster>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // "end" events close the open watches: each watch body listens for them too.
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let cluster = cluster.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let cluster = cluster.clone();
                        async move {
                            let query = request.uri().query().unwrap_or("").to_string();
                            Ok::<_, Infallible>(cluster.respond(request.uri().path(), &query))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{address}")
}

/// A pod `wardctl inject` injected (annotation `ward.dev/injected`, container `ward-proxy`).
fn pod(name: &str, app: &str, ip: &str, ready: bool) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": app},
            "annotations": {"ward.dev/injected": "0.1.0"},
            "uid": format!("uid-{name}"), "managedFields": [{"manager": "kubelet"}]},
        "spec": {"serviceAccountName": app, "containers": [
            {"name": app, "image": format!("example/{app}:1"), "ports": [{"containerPort": 8080, "protocol": "TCP"}]},
            {"name": "ward-proxy", "image": "envoyproxy/envoy:v1.40.0", "ports": [{"containerPort": 15000}]}
        ]},
        "status": {"phase": "Running", "podIP": ip,
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

/// A ready pod Ward did not inject (opted out, or never injected).
fn plain_pod(name: &str, app: &str, ip: &str) -> Value {
    let mut pod = pod(name, app, ip, true);
    pod["metadata"]["annotations"] = json!({"sidecar.istio.io/inject": "false"});
    pod["spec"]["containers"].as_array_mut().unwrap().pop();
    pod
}

fn service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10", "type": "ClusterIP",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    })
}

/// The mesh the sources make, translated: (node id → web's endpoints as `ip:port`, for
/// every proxy), and which nodes' snapshots changed in `cache`.
struct Translated {
    endpoints: BTreeMap<String, Vec<String>>,
    /// web's endpoints (`ip:port`) that carry the `tlsMode: istio` metadata the client
    /// cluster's mTLS transport socket matches on.
    mtls_endpoints: Vec<String>,
    changed: Vec<String>,
    workloads: Vec<String>,
    snapshots: BTreeMap<String, Snapshot>,
    /// Cluster objects the loader refused and left out.
    left_out: Vec<xds_server::discovery::LeftOut>,
}

/// The names of a listener's filter chains, in order.
fn chain_names(listener: &Listener) -> Vec<&str> {
    listener
        .filter_chains
        .iter()
        .map(|c| c.name.as_str())
        .collect()
}

fn socket(address: &Option<Address>) -> Option<String> {
    match address.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(s) => match s.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(port)) => {
                Some(format!("{}:{port}", s.address))
            }
            _ => None,
        },
        _ => None,
    }
}

fn translate(sources: &Sources, cache: &SnapshotCache) -> Translated {
    let (loaded, left_out) =
        xds_server::discovery::load(&Vec::new(), sources).expect("the cluster's objects load");
    let mesh = loaded.mesh;
    let (snapshots, _) = mesh_snapshots(&mesh, &TranslateOptions::default(), None, |_, _| None);
    let mut endpoints = BTreeMap::new();
    let mut mtls_endpoints = Vec::new();
    let mut changed = Vec::new();
    let mut kept = BTreeMap::new();
    for (node, snapshot) in snapshots {
        let web = snapshot
            .set(ENDPOINT)
            .and_then(|set| set.get("outbound|80||web.shop.svc.cluster.local").cloned());
        let lb_endpoints = web
            .map(|r| {
                let cla = ClusterLoadAssignment::decode(&r.any().value[..]).unwrap();
                cla.endpoints
                    .into_iter()
                    .flat_map(|e| e.lb_endpoints)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let address = |e: &LbEndpoint| match &e.host_identifier {
            Some(HostIdentifier::Endpoint(endpoint)) => socket(&endpoint.address),
            _ => None,
        };
        mtls_endpoints = lb_endpoints
            .iter()
            .filter(|e| {
                e.metadata.as_ref().is_some_and(|m| {
                    m.filter_metadata["envoy.transport_socket_match"].fields["tlsMode"].kind
                        == Some(Kind::StringValue("istio".into()))
                })
            })
            .filter_map(address)
            .collect();
        endpoints.insert(
            node.clone(),
            lb_endpoints.iter().filter_map(address).collect(),
        );
        if cache.set(&node, snapshot.clone()) {
            changed.push(node.clone());
        }
        kept.insert(node, snapshot);
    }
    Translated {
        endpoints,
        mtls_endpoints,
        changed,
        workloads: mesh.workloads.iter().map(|w| w.name.clone()).collect(),
        snapshots: kept,
        left_out,
    }
}

/// A resource of `node`'s snapshot, decoded.
fn resource<M: Message + Default>(step: &Translated, node: &str, type_url: &str, name: &str) -> M {
    let snapshot = &step.snapshots[node];
    let resource = snapshot
        .set(type_url)
        .and_then(|set| set.get(name))
        .unwrap_or_else(|| panic!("{node} has no {name}"));
    M::decode(&resource.any().value[..]).unwrap()
}

async fn next_sources(rx: &mut watch::Receiver<Option<Sources>>) -> Sources {
    tokio::time::timeout(Duration::from_secs(20), rx.changed())
        .await
        .expect("the cluster change reached the sources within 20 s")
        .unwrap();
    rx.borrow_and_update().clone().unwrap()
}

/// Namespace `shop` with Service `web` and its ready, injected pod `web-a` (10.1.0.1).
fn shop_with_web_a() -> Arc<Cluster> {
    let cluster = Cluster::new();
    cluster.change(
        "/api/v1/namespaces",
        "ADDED",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
    );
    cluster.change("/api/v1/services", "ADDED", service());
    cluster.change(
        "/api/v1/pods",
        "ADDED",
        pod("web-a", "web", "10.1.0.1", true),
    );
    cluster
}

/// Starts discovery against the fake API server.
async fn discover(cluster: &Arc<Cluster>) -> watch::Receiver<Option<Sources>> {
    let url = serve(cluster.clone()).await;
    let config = kube::Config::new(url.parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let (tx, rx) = watch::channel(None);
    tokio::spawn(xds_server::discovery::run(
        client,
        Duration::from_millis(50),
        tx,
    ));
    rx
}

/// The first published sources that hold every one of `names` (a burst of changes may be
/// published in one or several steps).
async fn sources_with(rx: &mut watch::Receiver<Option<Sources>>, names: &[&str]) -> Sources {
    loop {
        let sources = next_sources(rx).await;
        if names.iter().all(|n| sources.iter().any(|(s, _)| s == n)) {
            return sources;
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmeshed_pods_are_plaintext_cluster_policies_apply_and_a_bad_object_is_left_out() {
    let cluster = shop_with_web_a();
    let mut legacy = plain_pod("web-legacy", "web", "10.1.0.3");
    legacy["spec"]["serviceAccountName"] = json!("legacy");
    cluster.change("/api/v1/pods", "ADDED", legacy);
    cluster.change(
        "/api/v1/pods",
        "ADDED",
        pod("client", "client", "10.1.0.9", true),
    );
    let mut rx = discover(&cluster).await;
    let cache = SnapshotCache::new();

    // 1. The pod Ward did not inject is an endpoint without the tlsMode metadata, so the
    // client's cluster reaches it in plaintext (its mTLS socket matches only tlsMode=istio),
    // and it has no proxy config and no identity among the service's peers.
    let step = translate(&next_sources(&mut rx).await, &cache);
    assert_eq!(step.workloads, ["client", "web-a", "web-legacy"]);
    assert_eq!(
        step.endpoints["client.shop"],
        ["10.1.0.1:8080", "10.1.0.3:8080"]
    );
    assert_eq!(step.mtls_endpoints, ["10.1.0.1:8080"]);
    assert_eq!(
        step.snapshots.keys().collect::<Vec<_>>(),
        ["client.shop", "web-a.shop"]
    );
    let web: EnvoyCluster = resource(
        &step,
        "client.shop",
        CLUSTER,
        "outbound|80||web.shop.svc.cluster.local",
    );
    assert!(web.transport_socket.is_none(), "plaintext unless matched");
    let [mtls] = &web.transport_socket_matches[..] else {
        panic!("{:?}", web.transport_socket_matches)
    };
    assert_eq!(
        mtls.r#match.as_ref().unwrap().fields["tlsMode"].kind,
        Some(Kind::StringValue("istio".into()))
    );
    let socket_bytes = mtls.transport_socket.as_ref().unwrap().encode_to_vec();
    assert!(contains(
        &socket_bytes,
        "spiffe://cluster.local/ns/shop/sa/web"
    ));
    assert!(!contains(&socket_bytes, "sa/legacy"));
    // Before any policy: PERMISSIVE, and no RBAC rules.
    let inbound: Listener = resource(&step, "web-a.shop", LISTENER, "inbound|10.1.0.1:8080");
    let chains = chain_names(&inbound);
    assert_eq!(chains, ["mtls", "plaintext"]);
    let routes: RouteConfiguration = resource(&step, "web-a.shop", ROUTE, "inbound|8080");
    assert!(routes.virtual_hosts[0].typed_per_filter_config.is_empty());

    // 2. Istio policies from the cluster: STRICT for the namespace, and web accepts only
    // the client's identity.
    cluster.change(
        PEER_AUTHENTICATIONS,
        "ADDED",
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": "shop"},
            "spec": {"mtls": {"mode": "STRICT"}}}),
    );
    cluster.change(
        AUTHORIZATION_POLICIES,
        "ADDED",
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "web-from-client", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW",
                "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/client"]}}]}]}}),
    );
    let sources = sources_with(
        &mut rx,
        &[
            "kube:PeerAuthentication/shop/default",
            "kube:AuthorizationPolicy/shop/web-from-client",
        ],
    )
    .await;
    let step = translate(&sources, &cache);
    assert!(step.left_out.is_empty());
    let inbound: Listener = resource(&step, "web-a.shop", LISTENER, "inbound|10.1.0.1:8080");
    let chains = chain_names(&inbound);
    assert_eq!(chains, ["mtls"], "STRICT: plaintext refused");
    let routes: RouteConfiguration = resource(&step, "web-a.shop", ROUTE, "inbound|8080");
    let allow = &routes.virtual_hosts[0].typed_per_filter_config["ward.rbac.allow"];
    assert!(contains(
        &allow.value,
        "spiffe://cluster.local/ns/shop/sa/client"
    ));
    // The client is not selected: no rules on its own inbound port.
    let routes: RouteConfiguration = resource(&step, "client.shop", ROUTE, "inbound|8080");
    assert!(routes.virtual_hosts[0].typed_per_filter_config.is_empty());
    assert_eq!(step.mtls_endpoints, ["10.1.0.1:8080"]);

    // 3. A VirtualService the loader refuses arrives with a pod change: the VirtualService
    // is left out (named, with its error), and everything else is applied.
    cluster.change(
        VIRTUAL_SERVICES,
        "ADDED",
        json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "broken", "namespace": "shop"},
            "spec": {"hosts": ["web"], "http": [{"route": [
                {"destination": {"host": "web"}}, {"destination": {"host": "web"}}]}]}}),
    );
    // web-c's readiness probe (a named port, a query): STRICT still serves its path to the
    // kubelet in plaintext, and nothing else.
    let mut web_c = pod("web-c", "web", "10.1.0.4", true);
    web_c["spec"]["containers"][0]["ports"][0]["name"] = json!("http");
    web_c["spec"]["containers"][0]["readinessProbe"] =
        json!({"httpGet": {"path": "/healthz?verbose=1", "port": "http"}, "periodSeconds": 5});
    cluster.change("/api/v1/pods", "ADDED", web_c);
    let sources = sources_with(
        &mut rx,
        &["kube:VirtualService/shop/broken", "kube:Pod/shop/web-c"],
    )
    .await;
    assert!(
        ward_config::load_sources(&sources).is_err(),
        "the cluster as a whole does not load"
    );
    let step = translate(&sources, &cache);
    let [broken] = &step.left_out[..] else {
        panic!("{:?}", step.left_out)
    };
    assert_eq!(
        (broken.kind.as_str(), broken.object.as_str()),
        ("VirtualService", "shop/broken")
    );
    assert!(
        broken.errors[0]
            .to_string()
            .contains("several destinations need weights"),
        "{:?}",
        broken.errors
    );
    assert_eq!(
        step.endpoints["client.shop"],
        ["10.1.0.1:8080", "10.1.0.4:8080", "10.1.0.3:8080"]
    );
    assert!(step.changed.contains(&"web-c.shop".to_string()));
    let inbound: Listener = resource(&step, "web-c.shop", LISTENER, "inbound|10.1.0.4:8080");
    let chains = chain_names(&inbound);
    assert_eq!(
        chains,
        ["mtls", "probes"],
        "STRICT still applies, but for the probe"
    );
    let probes = &inbound.filter_chains[1];
    assert!(probes.transport_socket.is_none());
    assert_eq!(
        probes
            .filter_chain_match
            .as_ref()
            .unwrap()
            .transport_protocol,
        "raw_buffer"
    );
    let hcm = HttpConnectionManager::decode(
        &match probes.filters[0].config_type.as_ref().unwrap() {
            ConfigType::TypedConfig(any) => any.value.clone(),
            _ => panic!("no typed config"),
        }[..],
    )
    .unwrap();
    let Some(RouteSpecifier::RouteConfig(routes)) = hcm.route_specifier else {
        panic!("{hcm:?}")
    };
    let routes: Vec<String> = routes.virtual_hosts[0]
        .routes
        .iter()
        .map(
            |r| match (&r.r#match.as_ref().unwrap().path_specifier, &r.action) {
                (Some(PathSpecifier::Path(p)), Some(Action::Route(_))) => format!("{p} -> app"),
                (Some(PathSpecifier::Prefix(p)), Some(Action::DirectResponse(d))) => {
                    format!("{p} -> {}", d.status)
                }
                other => format!("{other:?}"),
            },
        )
        .collect();
    assert_eq!(routes, ["/healthz -> app", "/ -> 403"]);
    // web-a has no probe: STRICT refuses all plaintext.
    let inbound: Listener = resource(&step, "web-a.shop", LISTENER, "inbound|10.1.0.1:8080");
    assert_eq!(inbound.filter_chains.len(), 1);

    // The refusal is counted by kind, and the count goes when the object is fixed.
    let metrics = ward_metrics::Metrics::new();
    xds_server::discovery::report_left_out(&metrics, &step.left_out);
    assert!(
        metrics
            .encode()
            .contains("ward_kubernetes_objects_left_out{kind=\"VirtualService\"} 1"),
        "{}",
        metrics.encode()
    );
    xds_server::discovery::report_left_out(&metrics, &[]);
    assert!(!metrics.encode().contains("kind=\"VirtualService\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_watch_relist_delete_reach_the_mesh_and_only_changes_are_pushed() {
    let cluster = shop_with_web_a();
    cluster.change(
        "/api/v1/pods",
        "ADDED",
        pod("client", "client", "10.1.0.9", true),
    );
    // Not ready yet: a workload whose sidecar gets its config, but no endpoint.
    cluster.change(
        "/api/v1/pods",
        "ADDED",
        pod("web-b", "web", "10.1.0.2", false),
    );
    let mut rx = discover(&cluster).await;
    let cache = SnapshotCache::new();

    // 1. The initial list: every pod is a workload, only the ready ones are endpoints; the
    // sidecar container is left out.
    let sources = next_sources(&mut rx).await;
    let step = translate(&sources, &cache);
    assert_eq!(step.workloads, ["client", "web-a", "web-b"]);
    assert_eq!(step.endpoints["client.shop"], ["10.1.0.1:8080"]);
    assert_eq!(step.changed, ["client.shop", "web-a.shop", "web-b.shop"]);
    // The not-ready pod's sidecar has its inbound listeners: the kubelet's readiness probe,
    // captured to 15006, reaches the app through them, so the pod can become Ready.
    let capture: Listener = resource(&step, "web-b.shop", LISTENER, "inbound-capture");
    assert_eq!(socket(&capture.address).unwrap(), "0.0.0.0:15006");
    let inbound: Listener = resource(&step, "web-b.shop", LISTENER, "inbound|10.1.0.2:8080");
    let chains = chain_names(&inbound);
    assert_eq!(
        chains,
        ["mtls", "plaintext"],
        "PERMISSIVE: the plaintext probe is served"
    );
    let pod_source = &sources
        .iter()
        .find(|(n, _)| n == "kube:Pod/shop/web-a")
        .unwrap()
        .1;
    assert!(
        !pod_source.contains("ward-proxy") && !pod_source.contains("managedFields"),
        "{pod_source}"
    );

    // 2. A watch event: web-b becomes ready, and an endpoint.
    cluster.change(
        "/api/v1/pods",
        "MODIFIED",
        pod("web-b", "web", "10.1.0.2", true),
    );
    let step = translate(&next_sources(&mut rx).await, &cache);
    assert_eq!(
        step.endpoints["client.shop"],
        ["10.1.0.1:8080", "10.1.0.2:8080"]
    );
    assert_eq!(step.changed, ["client.shop", "web-a.shop", "web-b.shop"]);

    // 3. The watches end and their version has expired: kube-rs relists. The cluster is
    // the same, so the sources are the same and nothing is published or pushed again.
    let lists_before = *cluster.lists.lock().unwrap();
    let watches_before = *cluster.watches.lock().unwrap();
    cluster.end_watches(true);
    // Every kind is watching again (one watch answered 410, then one after the relist),
    // so the relist is over before the checks below.
    let rewatched = watches_before + 2 * PATHS.len() as u64;
    tokio::time::timeout(Duration::from_secs(20), async {
        while *cluster.watches.lock().unwrap() < rewatched {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every kind watches again after the relist");
    // Past the debounce, so a (wrong) publication of the relist would show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        *cluster.lists.lock().unwrap() >= lists_before + PATHS.len() as u64,
        "every kind relisted"
    );
    assert!(
        !rx.has_changed().unwrap(),
        "a relist of the same objects publishes nothing"
    );
    let step = translate(&rx.borrow().clone().unwrap(), &cache);
    assert!(
        step.changed.is_empty(),
        "nothing pushed: {:?}",
        step.changed
    );

    // 4. Events after the relist still arrive: web-a is deleted.
    cluster.change(
        "/api/v1/pods",
        "DELETED",
        pod("web-a", "web", "10.1.0.1", true),
    );
    let step = translate(&next_sources(&mut rx).await, &cache);
    assert_eq!(step.workloads, ["client", "web-b"]);
    assert_eq!(step.endpoints["client.shop"], ["10.1.0.2:8080"]);

    // 5. The last web pod goes: the Service routes nowhere and leaves the mesh.
    cluster.change(
        "/api/v1/pods",
        "DELETED",
        pod("web-b", "web", "10.1.0.2", true),
    );
    let sources = next_sources(&mut rx).await;
    assert!(
        !sources.iter().any(|(n, _)| n.starts_with("kube:Service/")),
        "{sources:?}"
    );
    let step = translate(&sources, &cache);
    assert_eq!(step.workloads, ["client"]);
    assert!(step.endpoints["client.shop"].is_empty());
    assert!(*cluster.watches.lock().unwrap() > 4);
}
