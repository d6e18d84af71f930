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
//! The rooms: `stream` (a stream's life, the same for both variants), `sotw` and `delta`
//! (what differs), `state` (per-type state and the decisions both share), `subscription`;
//! the wire format (gRPC framing, responses made of shared pre-encoded resources) is in
//! [`grpc`]; the xDS port itself (TLS, limits, connection age) in [`listener`], admission of
//! new streams in [`admission`], `/status` in [`proxy_status`].

pub mod admission;
pub mod drain;
pub mod grpc;
pub mod listener;
pub mod proxy_status;
mod subscription;

mod delta;
mod sotw;
mod state;
mod stream;

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind as prost_types_kind;
use tonic::{Request, Status};
use tracing::{debug, warn};

use ward_config::wellknown::WASM_SHA256_METADATA;
use ward_config::SpiffeId;
use ward_identity::PeerIdentityError;
use ward_metrics::Metrics;

use crate::proxy_status::ProxyStatusRegistry;
use ward_snapshot::{self, SnapshotCache};

/// The SPIFFE identity a node id must present (its workload's), None if the node is not part
/// of the mesh.
pub type NodeIdentities = Arc<dyn Fn(&str) -> Option<SpiffeId> + Send + Sync>;

#[derive(Clone)]
pub struct AdsServer {
    pub(crate) cache: Arc<SnapshotCache>,
    pub(crate) status: ProxyStatusRegistry,
    pub(crate) metrics: Arc<Metrics>,
    /// Set when proxies authenticate with client certificates: a stream is served only if
    /// its certificate's identity is the one its node id belongs to.
    pub(crate) identities: Option<NodeIdentities>,
    /// sha256 of the wasm module a sidecar must report (node metadata), if pinned.
    pub(crate) module_sha256: Option<String>,
    /// New streams admitted per second, if limited.
    pub(crate) admission: Option<Arc<admission::TokenBucket>>,
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
            .and_then(|m| m.fields.get(WASM_SHA256_METADATA))
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
                WASM_SHA256_METADATA
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
    fn authorize(
        &self,
        node_id: &str,
        peer: Option<Result<SpiffeId, PeerIdentityError>>,
    ) -> Result<(), Status> {
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
pub(crate) fn peer_identity<T>(
    request: &Request<T>,
) -> Option<Result<SpiffeId, PeerIdentityError>> {
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    Some(ward_identity::identity_of(leaf))
}

impl AdsServer {
    pub fn into_service(self) -> grpc::AdsService {
        grpc::AdsService::new(self)
    }
}
