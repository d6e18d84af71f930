//! A stream's life, the same for both variants: admission, the first request (node id,
//! peer identity, wasm pin), then pushes on every snapshot change until either side ends or
//! the connection drains.

use envoy_types::pb::envoy::config::core::v3::Node;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::{Request, Status};
use tracing::{debug, info, info_span, Instrument};
use ward_metrics::Metrics;
use ward_snapshot::{self, Snapshot};

use crate::state::{node_id_of, StreamState};
use crate::{grpc, peer_identity, AdsServer};

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

pub(crate) static NEXT_STREAM_ID: AtomicU64 = AtomicU64::new(1);

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
pub(crate) struct Connection {
    pub(crate) snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
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

pub(crate) fn record_push(
    server: &AdsServer,
    node: &str,
    stream_id: u64,
    type_url: &str,
    version: &str,
    nonce: &str,
    bytes: usize,
) {
    let label = Metrics::by_type(ward_snapshot::short_name(type_url));
    server.metrics.record_push_activity();
    server.metrics.pushes.get_or_create(&label).inc();
    server
        .metrics
        .push_bytes
        .get_or_create(&label)
        .inc_by(bytes as u64);
    server.status.sent(stream_id, type_url, version, nonce);
    debug!(%node, r#type = ward_snapshot::short_name(type_url), %version, %nonce, bytes, "push");
}
