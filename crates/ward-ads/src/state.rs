//! What a stream remembers per type: subscription, the response in flight, ACKed and
//! NACKed versions, and (delta) the set the proxy has. The decisions both protocol variants
//! share are here; the wire is theirs.

use crate::subscription::Subscription;
use envoy_types::pb::envoy::config::core::v3::Node;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tracing::{debug, warn};
use ward_metrics::Metrics;
use ward_snapshot::{self, ResourceSet, Snapshot, PUSH_ORDER};

use crate::stream::NEXT_STREAM_ID;
use crate::AdsServer;

/// Per-type state of one stream. Per-resource state is kept by reference to shared sets,
/// so a connected proxy costs the server little more than its subscription.
#[derive(Debug, Default)]
pub(crate) struct TypeState {
    /// The proxy asked for this type on this stream.
    pub(crate) requested: bool,
    pub(crate) subscription: Subscription,
    /// Something must be sent even if the version did not change (new stream, new names).
    pub(crate) must_send: bool,
    /// Nonce and version of the response waiting for its ACK or NACK.
    pub(crate) in_flight: Option<(String, Arc<str>)>,
    pub(crate) sent_version: Option<Arc<str>>,
    pub(crate) acked_version: Option<Arc<str>>,
    pub(crate) nacked_version: Option<Arc<str>>,
    /// Delta: the set the proxy ACKed last; it has every resource of it that it wanted.
    pub(crate) acked_set: Option<ResourceSet>,
    /// Delta: the response in flight.
    pub(crate) in_flight_set: Option<InFlight>,
    /// Delta: resources ACKed so far of a set sent in chunks (name → version); empty once
    /// the whole set is ACKed.
    pub(crate) partial: HashMap<Arc<str>, String>,
    /// Delta: what a reconnecting proxy says it has, until its first ACK on this stream.
    pub(crate) initial_versions: HashMap<String, String>,
    /// Delta: names subscribed since the last response, sent even if unchanged.
    pub(crate) newly_subscribed: BTreeSet<Arc<str>>,
}

/// A delta response waiting for its ACK.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub(crate) set: ResourceSet,
    /// Names sent with it for the first time since they were subscribed.
    pub(crate) first_sent: BTreeSet<Arc<str>>,
    /// Some(resources sent) when this is one chunk of a larger change, not the last.
    pub(crate) chunk: Option<Vec<(Arc<str>, String)>>,
}

/// The per-type states of a stream, one slot per type of [`PUSH_ORDER`], filled when the
/// proxy first asks for that type. (A map would allocate room for eleven types per stream.)
#[derive(Debug, Default)]
pub(crate) struct TypeStates([Option<Box<TypeState>>; PUSH_ORDER.len()]);

impl TypeStates {
    pub(crate) fn slot(type_url: &str) -> Option<usize> {
        PUSH_ORDER.iter().position(|t| *t == type_url)
    }

    pub(crate) fn get(&self, type_url: &str) -> Option<&TypeState> {
        self.0[Self::slot(type_url)?].as_deref()
    }

    pub(crate) fn get_mut(&mut self, type_url: &str) -> Option<&mut TypeState> {
        self.0[Self::slot(type_url)?].as_deref_mut()
    }

    /// The state of a type of [`PUSH_ORDER`] (as [`known_type`] gives them), created if new.
    pub(crate) fn get_or_default(&mut self, type_url: &'static str) -> &mut TypeState {
        let slot = Self::slot(type_url).expect("a type of PUSH_ORDER");
        self.0[slot].get_or_insert_with(Box::default)
    }
}

/// The decisions shared by both protocol variants.
pub(crate) struct StreamState {
    pub(crate) id: u64,
    pub(crate) node_id: String,
    pub(crate) types: TypeStates,
    pub(crate) nonce_counter: u64,
}

/// Maps a type URL from the wire to ours, so the map key is `'static`.
pub(crate) fn known_type(type_url: &str) -> Option<&'static str> {
    PUSH_ORDER.iter().copied().find(|t| *t == type_url)
}

impl StreamState {
    pub(crate) fn new(node_id: String) -> Self {
        StreamState {
            id: NEXT_STREAM_ID.fetch_add(1, Ordering::Relaxed),
            node_id,
            types: TypeStates::default(),
            nonce_counter: 0,
        }
    }

    pub(crate) fn next_nonce(&mut self) -> String {
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
    pub(crate) fn dependency_pending(&self, type_url: &str, snapshot: &Snapshot) -> bool {
        let depends_on: &[&str] = match type_url {
            ward_snapshot::LISTENER => &[ward_snapshot::CLUSTER, ward_snapshot::ENDPOINT],
            ward_snapshot::ROUTE => &[
                ward_snapshot::CLUSTER,
                ward_snapshot::ENDPOINT,
                ward_snapshot::LISTENER,
            ],
            _ => &[],
        };
        let in_flight = depends_on.iter().any(|t| {
            self.types
                .get(t)
                .is_some_and(|s| s.in_flight.is_some() || !s.partial.is_empty())
        });
        let (enforcing, other) = if snapshot.routes_after_extensions {
            (ward_snapshot::EXTENSION_CONFIG, ward_snapshot::ROUTE)
        } else {
            (ward_snapshot::ROUTE, ward_snapshot::EXTENSION_CONFIG)
        };
        in_flight || (type_url == other && self.not_acked(enforcing, snapshot))
    }

    /// The proxy follows `type_url` and has not ACKed `snapshot`'s version of it (yet).
    pub(crate) fn not_acked(&self, type_url: &str, snapshot: &Snapshot) -> bool {
        let (Some(state), Some(set)) = (self.types.get(type_url), snapshot.set(type_url)) else {
            return false;
        };
        state.requested && state.acked_version.as_deref() != Some(&*set.version)
    }

    /// Envoy replaces an updated EDS cluster with a new one that warms only once it receives
    /// its endpoints again: after clusters change, their endpoints are re-sent (all of them
    /// in state-of-the-world, the updated ones in delta), even though they did not change.
    pub(crate) fn resend_endpoints_of(&mut self, clusters: Option<&[Arc<str>]>) {
        let Some(eds) = self.types.get_mut(ward_snapshot::ENDPOINT) else {
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
    pub(crate) fn settle(
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
        let label = Metrics::by_type(ward_snapshot::short_name(type_url));
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
                            .get_or_create(&Metrics::by_type(ward_snapshot::short_name(type_url)))
                            .inc();
                        debug!(
                            r#type = ward_snapshot::short_name(type_url),
                            "ACK of a chunk"
                        );
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
                debug!(r#type = ward_snapshot::short_name(type_url), version = %sent_version, "ACK");
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
                    r#type = ward_snapshot::short_name(type_url),
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
pub(crate) fn intern(snapshot: Option<&Snapshot>, type_url: &str, name: &str) -> Arc<str> {
    snapshot
        .and_then(|s| s.set(type_url))
        .and_then(|set| set.get(name))
        .map(|r| r.name.clone())
        .unwrap_or_else(|| Arc::from(name))
}

pub(crate) fn node_id_of(node: Option<&Node>) -> Option<String> {
    node.map(|n| n.id.clone()).filter(|id| !id.is_empty())
}
