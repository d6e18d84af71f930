//! The ADS gRPC server, state-of-the-world and delta, over the [`SnapshotCache`].
//!
//! One task per stream, one `tracing` span per stream (node id, protocol). Per type the
//! stream keeps what the proxy subscribed to, what was sent and whether it is still waiting
//! for the ACK. Rules, as Envoy and go-control-plane expect them:
//! - a change is pushed in [`PUSH_ORDER`] (CDS, EDS, LDS, RDS, SDS, ECDS); listeners and
//!   routes also wait for the ACK of the clusters and endpoints they may name; of routes
//!   (RBAC rules) and extension configs (the wasm filter), the one that enforces
//!   authorization goes first and the other waits for its ACK;
//! - one response per type in flight: the next waits for the ACK or NACK of the previous;
//! - a NACK is logged with Envoy's `error_detail`, counted, and that version is never sent
//!   again to that proxy (Envoy keeps its last good config);
//! - requests carrying a stale nonce are ignored, as the xDS protocol specifies.
//!
//! Use: `AdsServer::new(cache, status, metrics).into_service()` and add it to a tonic server.
//! The wire format (gRPC framing, responses made of shared pre-encoded resources) is in
//! [`grpc`].

pub mod admission;
pub mod grpc;
mod subscription;

use subscription::{NameSet, Subscription};

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::value::Kind as prost_types_kind;
use tokio::sync::watch;
use tonic::{Request, Status};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::metrics::Metrics;
use crate::proxy_status::ProxyStatusRegistry;
use crate::snapshot::{
    self, Resource, ResourceLayer, ResourceSet, Snapshot, SnapshotCache, PUSH_ORDER,
};

/// Delta responses carry at most about this many bytes of resources (at least one resource);
/// the rest follows once the proxy ACKs, so one proxy's initial sync does not hold the
/// stream's share of the connection for long.
const DELTA_CHUNK_BYTES: usize = 32 * 1024;

static NEXT_STREAM_ID: AtomicU64 = AtomicU64::new(1);

/// The SPIFFE identity a node id must present (its workload's), None if the node is not part
/// of the mesh.
pub type NodeIdentities = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

#[derive(Clone)]
pub struct AdsServer {
    cache: Arc<SnapshotCache>,
    status: ProxyStatusRegistry,
    metrics: Arc<Metrics>,
    /// Set when proxies authenticate with client certificates: a stream is served only if
    /// its certificate's identity is the one its node id belongs to.
    identities: Option<NodeIdentities>,
    /// sha256 of the wasm module a sidecar must report (node metadata), if pinned.
    module_sha256: Option<String>,
    /// New streams admitted per second, if limited.
    admission: Option<Arc<admission::TokenBucket>>,
}

impl std::fmt::Debug for AdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsServer")
            .field("authenticating", &self.identities.is_some())
            .finish_non_exhaustive()
    }
}

impl AdsServer {
    pub fn new(
        cache: Arc<SnapshotCache>,
        status: ProxyStatusRegistry,
        metrics: Arc<Metrics>,
    ) -> Self {
        AdsServer {
            cache,
            status,
            metrics,
            identities: None,
            module_sha256: None,
            admission: None,
        }
    }

    /// Admit new streams at the bucket's rate; the excess is refused with UNAVAILABLE (a
    /// proxy retries with back-off) before its first request is even read.
    pub fn admitting(mut self, bucket: Arc<admission::TokenBucket>) -> Self {
        self.admission = Some(bucket);
        self
    }

    fn admit(&self) -> Result<(), Status> {
        let Some(bucket) = &self.admission else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        if bucket.try_take(now) {
            return Ok(());
        }
        self.metrics.refuse("rate-limit");
        debug!("refused an ADS stream: new-stream rate limit");
        Err(Status::unavailable(format!(
            "xds-server admits {} new ADS streams per second (--max-new-streams-per-second) and is at that rate; retry in {} ms or later",
            bucket.per_second(),
            bucket.next_token_in(now).as_millis().max(1)
        )))
    }

    /// Serve only sidecars whose bootstrap reports this wasm module sha256: a sidecar with
    /// another module file (tampered, or left from another version) gets no configuration,
    /// so it serves nothing rather than running unknown code on its traffic.
    pub fn pinning_module(mut self, sha256: String) -> Self {
        self.module_sha256 = Some(sha256);
        self
    }

    fn check_module(&self, node_id: &str, node: Option<&Node>) -> Result<(), Status> {
        let Some(pinned) = &self.module_sha256 else {
            return Ok(());
        };
        let reported = node
            .and_then(|n| n.metadata.as_ref())
            .and_then(|m| m.fields.get(crate::bootstrap::WASM_SHA256_METADATA))
            .and_then(|v| match &v.kind {
                Some(prost_types_kind::StringValue(s)) => Some(s.as_str()),
                _ => None,
            });
        let reason = match reported {
            Some(sha256) if sha256.eq_ignore_ascii_case(pinned) => return Ok(()),
            Some(sha256) => format!(
                "its wasm module has sha256 {sha256}; xds-server pins {pinned}"
            ),
            None => format!(
                "it does not report its wasm module's sha256 (node metadata {}); xds-server pins {pinned}",
                crate::bootstrap::WASM_SHA256_METADATA
            ),
        };
        self.metrics.refuse("wasm-module-mismatch");
        self.status.refuse(node_id, &reason);
        warn!(node = node_id, %reason, "refused an ADS stream: the sidecar would run another wasm module");
        Err(Status::failed_precondition(format!(
            "node {node_id}: {reason}"
        )))
    }

    /// Serve a node only to a client whose certificate carries the node's identity.
    pub fn authenticating(mut self, identities: NodeIdentities) -> Self {
        self.identities = Some(identities);
        self
    }

    /// Checks the client certificate against the node id it claims. A proxy holding one
    /// workload's credential never receives another's resources (and secrets).
    fn authorize(&self, node_id: &str, peer: Option<Result<String, String>>) -> Result<(), Status> {
        let Some(identities) = &self.identities else {
            return Ok(());
        };
        let refuse = |reason: &str, status: Status| {
            self.metrics.refuse(reason);
            warn!(node = node_id, reason, detail = %status.message(), "refused an ADS stream");
            Err(status)
        };
        let presented = match peer {
            None => {
                return refuse(
                    "no-client-certificate",
                    Status::unauthenticated("a client certificate is required"),
                )
            }
            Some(Err(e)) => {
                return refuse(
                    "bad-client-certificate",
                    Status::unauthenticated(format!("client certificate: {e}")),
                )
            }
            Some(Ok(id)) => id,
        };
        match identities(node_id) {
            None => refuse(
                "unknown-node",
                Status::permission_denied(format!("node {node_id} is not part of the mesh")),
            ),
            Some(expected) if expected != presented => refuse(
                "identity-mismatch",
                Status::permission_denied(format!(
                    "node {node_id} runs as {expected}; this credential is {presented}"
                )),
            ),
            Some(_) => Ok(()),
        }
    }
}

/// The SPIFFE identity of the client certificate of a TLS stream (None without TLS or
/// without a client certificate).
fn peer_identity<T>(request: &Request<T>) -> Option<Result<String, String>> {
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    Some(crate::identity::spiffe::identity_of(leaf).map(|id| id.to_string()))
}

impl AdsServer {
    pub fn into_service(self) -> grpc::AdsService {
        grpc::AdsService::new(self)
    }
}

/// Per-type state of one stream. Per-resource state is kept by reference to shared sets,
/// so a connected proxy costs the server little more than its subscription.
#[derive(Debug, Default)]
struct TypeState {
    /// The proxy asked for this type on this stream.
    requested: bool,
    subscription: Subscription,
    /// Something must be sent even if the version did not change (new stream, new names).
    must_send: bool,
    /// Nonce and version of the response waiting for its ACK or NACK.
    in_flight: Option<(String, Arc<str>)>,
    sent_version: Option<Arc<str>>,
    acked_version: Option<Arc<str>>,
    nacked_version: Option<Arc<str>>,
    /// Delta: the set the proxy ACKed last; it has every resource of it that it wanted.
    acked_set: Option<ResourceSet>,
    /// Delta: the response in flight.
    in_flight_set: Option<InFlight>,
    /// Delta: resources ACKed so far of a set sent in chunks (name → version); empty once
    /// the whole set is ACKed.
    partial: HashMap<Arc<str>, String>,
    /// Delta: what a reconnecting proxy says it has, until its first ACK on this stream.
    initial_versions: HashMap<String, String>,
    /// Delta: names subscribed since the last response, sent even if unchanged.
    newly_subscribed: BTreeSet<Arc<str>>,
}

/// A delta response waiting for its ACK.
#[derive(Debug)]
struct InFlight {
    set: ResourceSet,
    /// Names sent with it for the first time since they were subscribed.
    first_sent: BTreeSet<Arc<str>>,
    /// Some(resources sent) when this is one chunk of a larger change, not the last.
    chunk: Option<Vec<(Arc<str>, String)>>,
}

/// The per-type states of a stream, one slot per type of [`PUSH_ORDER`], filled when the
/// proxy first asks for that type. (A map would allocate room for eleven types per stream.)
#[derive(Debug, Default)]
struct TypeStates([Option<Box<TypeState>>; PUSH_ORDER.len()]);

impl TypeStates {
    fn slot(type_url: &str) -> Option<usize> {
        PUSH_ORDER.iter().position(|t| *t == type_url)
    }

    fn get(&self, type_url: &str) -> Option<&TypeState> {
        self.0[Self::slot(type_url)?].as_deref()
    }

    fn get_mut(&mut self, type_url: &str) -> Option<&mut TypeState> {
        self.0[Self::slot(type_url)?].as_deref_mut()
    }

    /// The state of a type of [`PUSH_ORDER`] (as [`known_type`] gives them), created if new.
    fn get_or_default(&mut self, type_url: &'static str) -> &mut TypeState {
        let slot = Self::slot(type_url).expect("a type of PUSH_ORDER");
        self.0[slot].get_or_insert_with(Box::default)
    }
}

/// The decisions shared by both protocol variants.
pub(crate) struct StreamState {
    id: u64,
    node_id: String,
    types: TypeStates,
    nonce_counter: u64,
}

/// Maps a type URL from the wire to ours, so the map key is `'static`.
fn known_type(type_url: &str) -> Option<&'static str> {
    PUSH_ORDER.iter().copied().find(|t| *t == type_url)
}

impl StreamState {
    fn new(node_id: String) -> Self {
        StreamState {
            id: NEXT_STREAM_ID.fetch_add(1, Ordering::Relaxed),
            node_id,
            types: TypeStates::default(),
            nonce_counter: 0,
        }
    }

    fn next_nonce(&mut self) -> String {
        self.nonce_counter += 1;
        format!("{}-{}", self.id, self.nonce_counter)
    }

    /// True if a type this one depends on still waits for its ACK. Listeners and routes wait
    /// for the clusters (and their endpoints) they name, so Envoy never routes to a cluster it
    /// does not know yet. Endpoints do not wait for clusters: Envoy ACKs a CDS update only
    /// once its new clusters are warm, which needs their endpoints first.
    ///
    /// Authorization is enforced by RBAC rules in the routes (native engine) or by the wasm
    /// filter's configuration (ECDS); of the two, the one that enforces in `snapshot` goes
    /// first and the other waits until the proxy has ACKed it
    /// ([`Snapshot::routes_after_extensions`]), so a switch of engine enforces both for a
    /// moment rather than neither. A NACK holds the other back, keeping the old enforcement.
    fn dependency_pending(&self, type_url: &str, snapshot: &Snapshot) -> bool {
        let depends_on: &[&str] = match type_url {
            snapshot::LISTENER => &[snapshot::CLUSTER, snapshot::ENDPOINT],
            snapshot::ROUTE => &[snapshot::CLUSTER, snapshot::ENDPOINT, snapshot::LISTENER],
            _ => &[],
        };
        let in_flight = depends_on.iter().any(|t| {
            self.types
                .get(t)
                .is_some_and(|s| s.in_flight.is_some() || !s.partial.is_empty())
        });
        let (enforcing, other) = if snapshot.routes_after_extensions {
            (snapshot::EXTENSION_CONFIG, snapshot::ROUTE)
        } else {
            (snapshot::ROUTE, snapshot::EXTENSION_CONFIG)
        };
        in_flight || (type_url == other && self.not_acked(enforcing, snapshot))
    }

    /// The proxy follows `type_url` and has not ACKed `snapshot`'s version of it (yet).
    fn not_acked(&self, type_url: &str, snapshot: &Snapshot) -> bool {
        let (Some(state), Some(set)) = (self.types.get(type_url), snapshot.set(type_url)) else {
            return false;
        };
        state.requested && state.acked_version.as_deref() != Some(&*set.version)
    }

    /// Envoy replaces an updated EDS cluster with a new one that warms only once it receives
    /// its endpoints again: after clusters change, their endpoints are re-sent (all of them
    /// in state-of-the-world, the updated ones in delta), even though they did not change.
    fn resend_endpoints_of(&mut self, clusters: Option<&[Arc<str>]>) {
        let Some(eds) = self.types.get_mut(snapshot::ENDPOINT) else {
            return;
        };
        if !eds.requested {
            return;
        }
        match clusters {
            None => eds.must_send = true,
            Some(names) => {
                for name in names {
                    if eds.subscription.wants(name) {
                        eds.newly_subscribed.insert(name.clone());
                        eds.must_send = true;
                    }
                }
            }
        }
    }

    /// Handles the ACK/NACK part of a request. Returns false if the nonce is stale.
    fn settle(
        &mut self,
        type_url: &'static str,
        nonce: &str,
        error: Option<&str>,
        ctx: &AdsServer,
    ) -> bool {
        let stream_id = self.id;
        let state = self.types.get_or_default(type_url);
        let Some((sent_nonce, sent_version)) = state.in_flight.clone() else {
            return false;
        };
        if sent_nonce != nonce {
            return false;
        }
        state.in_flight = None;
        let label = Metrics::by_type(snapshot::short_name(type_url));
        match error {
            None => {
                match state.in_flight_set.take() {
                    Some(InFlight {
                        chunk: Some(sent), ..
                    }) => {
                        // One chunk of a larger change: the set is not complete yet.
                        state.partial.extend(sent);
                        ctx.metrics
                            .acks
                            .get_or_create(&Metrics::by_type(snapshot::short_name(type_url)))
                            .inc();
                        debug!(r#type = snapshot::short_name(type_url), "ACK of a chunk");
                        return true;
                    }
                    Some(InFlight { set, .. }) => {
                        state.acked_set = Some(set);
                        state.initial_versions.clear();
                        state.partial = HashMap::new();
                    }
                    None => {}
                }
                state.acked_version = Some(sent_version.clone());
                ctx.metrics.acks.get_or_create(&label).inc();
                ctx.status.acked(stream_id, type_url, &sent_version);
                debug!(r#type = snapshot::short_name(type_url), version = %sent_version, "ACK");
            }
            Some(detail) => {
                if let Some(in_flight) = state.in_flight_set.take() {
                    // They never arrived: send them again with the next response.
                    state.newly_subscribed.extend(in_flight.first_sent);
                }
                state.nacked_version = Some(sent_version.clone());
                ctx.metrics.nacks.get_or_create(&label).inc();
                ctx.status
                    .nacked(stream_id, type_url, &sent_version, detail);
                warn!(
                    node = %self.node_id,
                    r#type = snapshot::short_name(type_url),
                    version = %sent_version,
                    error_detail = %detail,
                    "NACK: the proxy rejected this config and keeps its last good one; this version will not be sent again"
                );
            }
        }
        true
    }
}

/// The name as the snapshot holds it (shared), or a new one if the snapshot has no such name.
fn intern(snapshot: Option<&Snapshot>, type_url: &str, name: &str) -> Arc<str> {
    snapshot
        .and_then(|s| s.set(type_url))
        .and_then(|set| set.get(name))
        .map(|r| r.name.clone())
        .unwrap_or_else(|| Arc::from(name))
}

fn node_id_of(node: Option<&Node>) -> Option<String> {
    node.map(|n| n.id.clone()).filter(|id| !id.is_empty())
}

impl AdsServer {
    /// Reads the first request (it names the node), authorizes the stream and starts its
    /// task. An error is the gRPC status the call ends with.
    async fn first_request<T: prost::Message + Default>(
        &self,
        request: &Request<()>,
        requests: &mut grpc::Requests<T>,
        node: impl Fn(&T) -> Option<&Node>,
    ) -> Result<(T, String), Status> {
        let peer = peer_identity(request);
        let first = requests
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before the first request"))?;
        let node_id = node_id_of(node(&first))
            .ok_or_else(|| Status::invalid_argument("the first request must carry node.id"))?;
        self.authorize(&node_id, peer)?;
        self.check_module(&node_id, node(&first))?;
        Ok((first, node_id))
    }

    /// Admits the stream, reads and checks the first request, then runs the stream in its own
    /// task, in a span naming the node and the protocol. The stream ends with UNAVAILABLE when
    /// `drain` turns true (its connection is closing: maximum age, or shutdown).
    pub(crate) async fn open<S: ProtocolStream>(
        &self,
        request: Request<()>,
        mut requests: grpc::Requests<S::Request>,
        tx: grpc::ResponseSender,
        drain: Option<watch::Receiver<bool>>,
    ) -> Result<(), Status> {
        self.admit()?;
        let (first, node_id) = self.first_request(&request, &mut requests, S::node).await?;
        let span = info_span!("ads", node = %node_id, protocol = S::PROTOCOL);
        let stream = S::new(StreamState::new(node_id), self.clone(), tx.clone());
        tokio::spawn(run(stream, first, requests, tx, drain).instrument(span));
        Ok(())
    }
}

/// Common life cycle of a stream: register, follow the node's snapshot, unregister.
struct Connection {
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
}

impl Connection {
    fn open(server: &AdsServer, state: &StreamState, protocol: &'static str) -> Self {
        server.status.connect(state.id, &state.node_id, protocol);
        server.metrics.connected_proxies.inc();
        let snapshots = server.cache.watch(&state.node_id);
        if snapshots.borrow().is_none() {
            info!("node is not part of the mesh (yet): waiting for a snapshot for it");
        } else {
            info!("proxy connected");
        }
        Connection { snapshots }
    }

    fn close(server: &AdsServer, state: &StreamState) {
        server.status.disconnect(state.id);
        server.metrics.connected_proxies.dec();
        info!("proxy disconnected");
    }

    fn current(&self) -> Option<Arc<Snapshot>> {
        self.snapshots.borrow().clone()
    }
}

/// What differs between the two variants of the protocol; [`run`] is the rest.
pub(crate) trait ProtocolStream: Send + Sized + 'static {
    type Request: prost::Message + Default + Send + 'static;
    /// `sotw` or `delta`, for logs and status.
    const PROTOCOL: &'static str;
    fn new(state: StreamState, server: AdsServer, tx: grpc::ResponseSender) -> Self;
    fn node(request: &Self::Request) -> Option<&Node>;
    fn parts(&self) -> (&AdsServer, &StreamState);
    fn on_request(&mut self, request: Self::Request, snapshot: Option<&Snapshot>);
    fn push(
        &mut self,
        snapshot: Option<Arc<Snapshot>>,
    ) -> impl std::future::Future<Output = Result<(), ()>> + Send;
}

/// Resolves once the connection is draining; never without a drain signal.
async fn drained(drain: &mut Option<watch::Receiver<bool>>) {
    if let Some(rx) = drain {
        if rx.wait_for(|d| *d).await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// A stream's life: answer the first request, then push the node's snapshot whenever it
/// changes and take each request, until either side ends or the connection drains.
async fn run<S: ProtocolStream>(
    mut stream: S,
    first: S::Request,
    mut requests: grpc::Requests<S::Request>,
    tx: grpc::ResponseSender,
    mut drain: Option<watch::Receiver<bool>>,
) {
    let (server, state) = stream.parts();
    let mut connection = Connection::open(server, state, S::PROTOCOL);
    stream.on_request(first, connection.current().as_deref());
    loop {
        // Boxed: a push's state exists only while it runs, not for the life of the stream.
        if Box::pin(stream.push(connection.current())).await.is_err() {
            break;
        }
        tokio::select! {
            request = requests.message() => match request {
                Ok(Some(request)) => stream.on_request(request, connection.current().as_deref()),
                Err(e) => { debug!(error = %e, "stream error"); break; }
                Ok(None) => break,
            },
            changed = connection.snapshots.changed() => {
                if changed.is_err() { break; }
            }
            () = drained(&mut drain) => {
                // The connection has sent GOAWAY: ending the stream makes the proxy open a new
                // one on a new connection (maybe to another replica); it serves its last
                // config meanwhile.
                info!("connection closing (maximum age or shutdown): ending the stream so the proxy reconnects");
                let _ = tx
                    .send(Err(Status::unavailable(
                        "xds-server is closing this connection (maximum connection age or shutdown); reconnect",
                    )))
                    .await;
                break;
            }
        }
    }
    let (server, state) = stream.parts();
    Connection::close(server, state);
}

pub(crate) struct SotwStream {
    state: StreamState,
    server: AdsServer,
    tx: grpc::ResponseSender,
}

impl ProtocolStream for SotwStream {
    type Request = DiscoveryRequest;
    const PROTOCOL: &'static str = "sotw";

    fn new(state: StreamState, server: AdsServer, tx: grpc::ResponseSender) -> Self {
        SotwStream { state, server, tx }
    }

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn parts(&self) -> (&AdsServer, &StreamState) {
        (&self.server, &self.state)
    }

    fn on_request(&mut self, request: DiscoveryRequest, snapshot: Option<&Snapshot>) {
        let Some(type_url) = known_type(&request.type_url) else {
            debug!(type_url = %request.type_url, "ignoring a request for an unknown type");
            return;
        };
        let error = request.error_detail.as_ref().map(|s| s.message.as_str());
        if !request.response_nonce.is_empty()
            && !self
                .state
                .settle(type_url, &request.response_nonce, error, &self.server)
        {
            // A stale nonce: the proxy has not seen our latest response yet.
            let latest = self
                .state
                .types
                .get(type_url)
                .and_then(|t| t.in_flight.clone());
            if latest.is_some() {
                return;
            }
        }
        let subscription = if request.resource_names.is_empty()
            && matches!(type_url, snapshot::CLUSTER | snapshot::LISTENER)
            || request.resource_names.iter().any(|n| n == "*")
        {
            Subscription::Wildcard
        } else {
            Subscription::Names(NameSet::new(
                request
                    .resource_names
                    .iter()
                    .map(|n| intern(snapshot, type_url, n))
                    .collect(),
            ))
        };
        let state = self.state.types.get_or_default(type_url);
        if !state.requested
            || request.response_nonce.is_empty()
            || state.subscription != subscription
        {
            state.must_send = true;
        }
        state.requested = true;
        state.subscription = subscription;
    }

    async fn push(&mut self, snapshot: Option<Arc<Snapshot>>) -> Result<(), ()> {
        let Some(snapshot) = snapshot else {
            return Ok(());
        };
        for type_url in PUSH_ORDER {
            if self.state.dependency_pending(type_url, &snapshot) {
                continue;
            }
            let nonce = self.state.next_nonce();
            let Some(state) = self.state.types.get_mut(type_url) else {
                continue;
            };
            if !state.requested || state.in_flight.is_some() {
                continue;
            }
            let empty = snapshot::ResourceSet::default();
            let set = snapshot.set(type_url).unwrap_or(&empty);
            let changed = state.sent_version.as_deref() != Some(&*set.version);
            let nacked = state.nacked_version.as_deref() == Some(&*set.version);
            // Send when the proxy needs an answer, or when there is a version it has not
            // seen and did not reject.
            let send = state.must_send || (changed && !nacked);
            if !send {
                continue;
            }
            let head = DiscoveryResponse {
                version_info: set.version.to_string(),
                type_url: type_url.to_string(),
                nonce: nonce.clone(),
                ..Default::default()
            };
            let response = grpc::EncodedMessage::sotw(
                head,
                set.iter()
                    .filter(|r| state.subscription.wants(&r.name))
                    .map(|r| &**r),
            );
            state.must_send = false;
            state.in_flight = Some((nonce.clone(), set.version.clone()));
            state.sent_version = Some(set.version.clone());
            record_push(
                &self.server,
                &self.state.node_id,
                self.state.id,
                type_url,
                &set.version,
                &nonce,
                response.len(),
            );
            if self.tx.send(Ok(response)).await.is_err() {
                return Err(());
            }
            if type_url == snapshot::CLUSTER {
                self.state.resend_endpoints_of(None);
            }
        }
        Ok(())
    }
}

fn record_push(
    server: &AdsServer,
    node: &str,
    stream_id: u64,
    type_url: &str,
    version: &str,
    nonce: &str,
    bytes: usize,
) {
    let label = Metrics::by_type(snapshot::short_name(type_url));
    server.metrics.record_push_activity();
    server.metrics.pushes.get_or_create(&label).inc();
    server
        .metrics
        .push_bytes
        .get_or_create(&label)
        .inc_by(bytes as u64);
    server.status.sent(stream_id, type_url, version, nonce);
    debug!(%node, r#type = snapshot::short_name(type_url), %version, %nonce, bytes, "push");
}

pub(crate) struct DeltaStream {
    state: StreamState,
    server: AdsServer,
    tx: grpc::ResponseSender,
}

impl ProtocolStream for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    const PROTOCOL: &'static str = "delta";

    fn new(state: StreamState, server: AdsServer, tx: grpc::ResponseSender) -> Self {
        DeltaStream { state, server, tx }
    }

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn parts(&self) -> (&AdsServer, &StreamState) {
        (&self.server, &self.state)
    }

    fn on_request(&mut self, request: DeltaDiscoveryRequest, snapshot: Option<&Snapshot>) {
        let Some(type_url) = known_type(&request.type_url) else {
            debug!(type_url = %request.type_url, "ignoring a request for an unknown type");
            return;
        };
        let error = request.error_detail.as_ref().map(|s| s.message.as_str());
        if !request.response_nonce.is_empty() {
            // A stale nonce settles nothing; its subscription changes still count.
            self.state
                .settle(type_url, &request.response_nonce, error, &self.server);
        }
        let state = self.state.types.get_or_default(type_url);
        if !state.requested {
            state.requested = true;
            state.must_send = true;
            // A reconnecting proxy says what it has, so unchanged resources are not re-sent.
            state.initial_versions = request
                .initial_resource_versions
                .clone()
                .into_iter()
                .collect();
            let legacy_wildcard = request.resource_names_subscribe.is_empty()
                && matches!(type_url, snapshot::CLUSTER | snapshot::LISTENER);
            state.subscription = if legacy_wildcard {
                Subscription::Wildcard
            } else {
                Subscription::Names(NameSet::default())
            };
        }
        let mut subscribe = Vec::new();
        for name in &request.resource_names_subscribe {
            if name == "*" {
                state.subscription = Subscription::Wildcard;
                state.must_send = true;
            } else if matches!(state.subscription, Subscription::Names(_)) {
                subscribe.push(intern(snapshot, type_url, name));
            }
        }
        if let Subscription::Names(names) = &mut state.subscription {
            let (updated, new) = names.changed(&subscribe, &request.resource_names_unsubscribe);
            *names = updated;
            if !new.is_empty() {
                state.must_send = true;
                state.newly_subscribed.extend(new);
            }
        }
        for name in &request.resource_names_unsubscribe {
            state.newly_subscribed.remove(name.as_str());
        }
    }

    async fn push(&mut self, snapshot: Option<Arc<Snapshot>>) -> Result<(), ()> {
        let Some(snapshot) = snapshot else {
            return Ok(());
        };
        for type_url in PUSH_ORDER {
            if self.state.dependency_pending(type_url, &snapshot) {
                continue;
            }
            let nonce = self.state.next_nonce();
            let Some(state) = self.state.types.get_mut(type_url) else {
                continue;
            };
            if !state.requested || state.in_flight.is_some() {
                continue;
            }
            let empty = ResourceSet::default();
            let set = snapshot.set(type_url).unwrap_or(&empty);
            let nacked = state.nacked_version.as_deref() == Some(&*set.version);
            if !state.must_send
                && state.partial.is_empty()
                && (nacked || state.acked_version.as_deref() == Some(&*set.version))
            {
                continue;
            }
            let (mut changed, removed) = delta(state, set);
            state.must_send = false;
            if changed.is_empty() && removed.is_empty() {
                // Nothing new for this proxy: it already has everything it wants of this set.
                state.newly_subscribed.clear();
                state.acked_set = Some(set.clone());
                state.initial_versions.clear();
                state.partial = HashMap::new();
                if state.acked_version.as_deref() != Some(&*set.version) {
                    state.acked_version = Some(set.version.clone());
                    state.sent_version = Some(set.version.clone());
                    self.server
                        .status
                        .sent(self.state.id, type_url, &set.version, "");
                    self.server
                        .status
                        .acked(self.state.id, type_url, &set.version);
                }
                continue;
            }
            // Send a large change in chunks; removals go with the last one.
            let mut bytes = 0;
            let fits = changed
                .iter()
                .position(|r| {
                    bytes += r.encoded_len();
                    bytes > DELTA_CHUNK_BYTES
                })
                .map(|i| i.max(1));
            let chunk = fits.filter(|&n| n < changed.len()).map(|n| {
                changed.truncate(n);
                changed
                    .iter()
                    .map(|r| (r.name.clone(), r.version.clone()))
                    .collect::<Vec<_>>()
            });
            let removed = if chunk.is_some() { Vec::new() } else { removed };
            let first_sent: BTreeSet<Arc<str>> = changed
                .iter()
                .filter(|r| state.newly_subscribed.contains(&r.name))
                .map(|r| r.name.clone())
                .collect();
            state.newly_subscribed.retain(|n| !first_sent.contains(n));
            // Clusters the proxy had in another version: their endpoints must follow.
            let updated_clusters: Vec<Arc<str>> = if type_url == snapshot::CLUSTER {
                changed
                    .iter()
                    .filter(|r| {
                        state
                            .acked_set
                            .as_ref()
                            .is_some_and(|a| a.get(&r.name).is_some())
                            || state.initial_versions.contains_key(&*r.name)
                    })
                    .map(|r| r.name.clone())
                    .collect()
            } else {
                Vec::new()
            };
            let head = DeltaDiscoveryResponse {
                system_version_info: set.version.to_string(),
                type_url: type_url.to_string(),
                removed_resources: removed,
                nonce: nonce.clone(),
                ..Default::default()
            };
            let response = grpc::EncodedMessage::delta(head, changed.into_iter().map(|r| &**r));
            state.in_flight = Some((nonce.clone(), set.version.clone()));
            state.in_flight_set = Some(InFlight {
                set: set.clone(),
                first_sent,
                chunk,
            });
            state.sent_version = Some(set.version.clone());
            record_push(
                &self.server,
                &self.state.node_id,
                self.state.id,
                type_url,
                &set.version,
                &nonce,
                response.len(),
            );
            if self.tx.send(Ok(response)).await.is_err() {
                return Err(());
            }
            if !updated_clusters.is_empty() {
                self.state.resend_endpoints_of(Some(&updated_clusters));
            }
        }
        Ok(())
    }
}

/// What a delta proxy lacks of `set` (new or changed resources it wants) and what it has that
/// `set` no longer holds. Layers shared with the last ACKed set are skipped whole.
fn delta<'s>(state: &TypeState, set: &'s ResourceSet) -> (Vec<&'s Arc<Resource>>, Vec<String>) {
    let mut changed = Vec::new();
    let mut removed = Vec::new();
    // ACKed layers whose replacement was handled through its precomputed diff.
    let mut diffed: Vec<Arc<ResourceLayer>> = Vec::new();
    let partial_has =
        |r: &Resource| !state.partial.is_empty() && state.partial.get(&r.name) == Some(&r.version);
    // Newly subscribed names are sent whether or not they changed.
    let newly_subscribed_in = |layer: &'s ResourceLayer| {
        state
            .newly_subscribed
            .iter()
            .filter_map(move |name| layer.resources.get(name))
    };
    for layer in &set.layers {
        let unchanged = state
            .acked_set
            .as_ref()
            .is_some_and(|acked| acked.shares(layer));
        if unchanged {
            changed.extend(newly_subscribed_in(layer));
            continue;
        }
        // The proxy has the layer this one replaced: only the diff can be new to it.
        let replaced = layer.base.as_ref().and_then(|diff| {
            let from = diff.from.upgrade()?;
            let acked = state.acked_set.as_ref()?;
            acked.shares(&from).then_some((diff, from))
        });
        if let Some((diff, from)) = replaced {
            for name in &diff.changed {
                if !state.subscription.wants(name) || state.newly_subscribed.contains(name) {
                    continue;
                }
                if let Some(resource) = layer.resources.get(name) {
                    if !partial_has(resource) {
                        changed.push(resource);
                    }
                }
            }
            changed.extend(newly_subscribed_in(layer));
            for name in &diff.removed {
                if state.subscription.wants(name) && set.get(name).is_none() {
                    removed.push(name.to_string());
                }
            }
            diffed.push(from);
            continue;
        }
        for resource in layer.resources.values() {
            if !state.subscription.wants(&resource.name) {
                continue;
            }
            let has = match &state.acked_set {
                Some(acked) => {
                    !state.newly_subscribed.contains(&resource.name)
                        && acked
                            .get(&resource.name)
                            .is_some_and(|r| r.version == resource.version)
                }
                None => state.initial_versions.get(&*resource.name) == Some(&resource.version),
            } || partial_has(resource);
            if !has {
                changed.push(resource);
            }
        }
    }
    match &state.acked_set {
        Some(acked) => {
            let handled = |l: &Arc<ResourceLayer>| diffed.iter().any(|d| Arc::ptr_eq(d, l));
            for layer in acked
                .layers
                .iter()
                .filter(|l| !set.shares(l) && !handled(l))
            {
                for name in layer.resources.keys() {
                    if state.subscription.wants(name) && set.get(name).is_none() {
                        removed.push(name.to_string());
                    }
                }
            }
        }
        None => {
            for name in state.initial_versions.keys() {
                if state.subscription.wants(name) && set.get(name).is_none() {
                    removed.push(name.clone());
                }
            }
        }
    }
    (changed, removed)
}
