//! State-of-the-world ADS: every response carries the whole set of its type.

use crate::subscription::{NameSet, Subscription};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use std::sync::Arc;
use tracing::debug;
use ward_snapshot::{self, Snapshot, PUSH_ORDER};

use crate::state::{intern, known_type, StreamState};
use crate::stream::{record_push, ProtocolStream};
use crate::{grpc, AdsServer};

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
            && matches!(type_url, ward_snapshot::CLUSTER | ward_snapshot::LISTENER)
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
            let empty = ward_snapshot::ResourceSet::default();
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
            if type_url == ward_snapshot::CLUSTER {
                self.state.resend_endpoints_of(None);
            }
        }
        Ok(())
    }
}
