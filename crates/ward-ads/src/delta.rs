//! Delta (incremental) ADS: only changed and removed resources travel, large changes in
//! chunks.

use crate::subscription::{NameSet, Subscription};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use tracing::debug;
use ward_snapshot::{self, Resource, ResourceLayer, ResourceSet, Snapshot, PUSH_ORDER};

use crate::state::{intern, known_type, InFlight, StreamState, TypeState};
use crate::stream::{record_push, ProtocolStream};
use crate::{grpc, AdsServer};

/// Delta responses carry at most about this many bytes of resources (at least one resource);
/// the rest follows once the proxy ACKs, so one proxy's initial sync does not hold the
/// stream's share of the connection for long.
const DELTA_CHUNK_BYTES: usize = 32 * 1024;

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
                && matches!(type_url, ward_snapshot::CLUSTER | ward_snapshot::LISTENER);
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
            let updated_clusters: Vec<Arc<str>> = if type_url == ward_snapshot::CLUSTER {
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
