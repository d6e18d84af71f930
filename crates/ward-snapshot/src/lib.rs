//! Immutable per-proxy snapshots of Envoy resources, and the cache that holds the newest one
//! per node. Kept apart from the translation that fills them (`ward-xds`) and the gRPC
//! transport that reads them (`ward-ads`), as go-control-plane does: the transport only
//! reads snapshots and is told when one changes. [`Snapshot::consistent`] checks that what a
//! snapshot's resources name is in it (`consistent`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, Weak};

use bytes::Bytes;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

mod consistent;
pub use consistent::Inconsistency;

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
pub const EXTENSION_CONFIG: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";

/// The order in which a change is pushed, so Envoy never sees a reference to something it
/// has not received yet (clusters before the endpoints and listeners that use them, ...).
pub const PUSH_ORDER: [&str; 6] = [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, EXTENSION_CONFIG];

/// Short name for logs and status: `CDS`, `EDS`, ...
pub fn short_name(type_url: &str) -> &'static str {
    match type_url {
        CLUSTER => "CDS",
        ENDPOINT => "EDS",
        LISTENER => "LDS",
        ROUTE => "RDS",
        SECRET => "SDS",
        EXTENSION_CONFIG => "ECDS",
        _ => "UNKNOWN",
    }
}

/// One named, encoded resource with the hash of its bytes (its delta-xDS version).
///
/// It is encoded once, when the snapshot is built, straight into the form it takes on the
/// wire: one entry of a delta response's `resources` field. Every response that carries it,
/// to any number of proxies, shares those bytes (`ads::grpc` frames them without copying), so
/// a connected proxy costs the server no buffer of its own.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Shared with subscriptions that name it, so a thousand proxies asking for the same
    /// thousand clusters do not hold a thousand copies of each name.
    pub name: Arc<str>,
    pub version: String,
    /// Field 2 of `DeltaDiscoveryResponse` (key, length, then a discovery `Resource` with
    /// name, version and the `Any`, in that order).
    delta_entry: Bytes,
    /// Where the encoded `Any` lies in `delta_entry` (its last bytes).
    any_start: usize,
}

/// The entry holds the name, the version and the `Any`: equal bytes, equal resources.
impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        self.delta_entry == other.delta_entry
    }
}

/// Field numbers of `envoy.service.discovery.v3.Resource` and of the responses' `resources`.
const DELTA_RESOURCE_NAME: u32 = 3;
const DELTA_RESOURCE_VERSION: u32 = 1;
const DELTA_RESOURCE_BODY: u32 = 2;
/// `resources` is field 2 in both `DiscoveryResponse` and `DeltaDiscoveryResponse`.
pub const RESPONSE_RESOURCES: u32 = 2;

impl Resource {
    pub fn new<M: Message>(type_url: &str, name: impl AsRef<str>, message: &M) -> Self {
        use prost::encoding::{encode_key, encode_varint, encoded_len_varint, string, WireType};
        let name = name.as_ref();
        let value = message.encode_to_vec();
        let version = hex::encode(&Sha256::digest(&value)[..8]);
        let any = Any {
            type_url: type_url.to_string(),
            value,
        };
        let any_len = any.encoded_len();
        let (name_string, version_string) = (name.to_string(), version.clone());
        let inner_len = string::encoded_len(DELTA_RESOURCE_NAME, &name_string)
            + string::encoded_len(DELTA_RESOURCE_VERSION, &version_string)
            + 1
            + encoded_len_varint(any_len as u64)
            + any_len;
        let mut entry = Vec::with_capacity(1 + encoded_len_varint(inner_len as u64) + inner_len);
        encode_key(RESPONSE_RESOURCES, WireType::LengthDelimited, &mut entry);
        encode_varint(inner_len as u64, &mut entry);
        string::encode(DELTA_RESOURCE_NAME, &name_string, &mut entry);
        string::encode(DELTA_RESOURCE_VERSION, &version_string, &mut entry);
        encode_key(DELTA_RESOURCE_BODY, WireType::LengthDelimited, &mut entry);
        encode_varint(any_len as u64, &mut entry);
        let any_start = entry.len();
        any.encode_raw(&mut entry);
        Resource {
            name: Arc::from(name),
            version,
            delta_entry: Bytes::from(entry),
            any_start,
        }
    }

    /// The resource as one entry of a `DeltaDiscoveryResponse`'s `resources`.
    pub fn delta_entry(&self) -> Bytes {
        self.delta_entry.clone()
    }

    /// The encoded `Any` (type URL and value), as a `DiscoveryResponse` carries it.
    pub fn any_bytes(&self) -> Bytes {
        self.delta_entry.slice(self.any_start..)
    }

    /// Size of the resource on the wire, for chunking responses.
    pub fn encoded_len(&self) -> usize {
        self.delta_entry.len()
    }

    /// The resource decoded back into its `Any` (tests and tools; the server never needs it).
    pub fn any(&self) -> Any {
        Any::decode(&self.delta_entry[self.any_start..]).expect("encoded by Resource::new")
    }
}

/// Resources built once and shared by every proxy that has them (the outbound clusters and
/// endpoints of a mesh are the same for all its proxies).
#[derive(Debug, Default)]
pub struct ResourceLayer {
    pub version: String,
    pub resources: BTreeMap<Arc<str>, Arc<Resource>>,
    /// What changed from the layer this one replaced: computed once per config change, so a
    /// push to a proxy that has the previous layer costs the size of the change, not of the
    /// layer.
    pub base: Option<LayerDiff>,
}

#[derive(Debug)]
pub struct LayerDiff {
    /// The replaced layer (weak: a chain of diffs does not keep old layers alive).
    pub from: Weak<ResourceLayer>,
    /// Names new in this layer or with another version.
    pub changed: Vec<Arc<str>>,
    /// Names the replaced layer had and this one does not.
    pub removed: Vec<Arc<str>>,
}

impl PartialEq for ResourceLayer {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && self.resources == other.resources
    }
}

impl ResourceLayer {
    fn build(resources: impl IntoIterator<Item = Resource>) -> Self {
        let resources: BTreeMap<Arc<str>, Arc<Resource>> = resources
            .into_iter()
            .map(|r| (r.name.clone(), Arc::new(r)))
            .collect();
        let mut hasher = Sha256::new();
        for (name, r) in &resources {
            hasher.update(name.as_bytes());
            hasher.update(r.version.as_bytes());
        }
        let version = hex::encode(&hasher.finalize()[..8]);
        ResourceLayer {
            version,
            resources,
            base: None,
        }
    }

    pub fn new(resources: impl IntoIterator<Item = Resource>) -> Arc<Self> {
        Arc::new(Self::build(resources))
    }

    /// A layer that replaces `previous`: `previous` itself when nothing changed (proxies that
    /// have it are then known, by pointer, to have all of it), otherwise a new layer that
    /// knows its difference from it.
    pub fn replacing(
        resources: impl IntoIterator<Item = Resource>,
        previous: Option<&Arc<ResourceLayer>>,
    ) -> Arc<Self> {
        let mut layer = Self::build(resources);
        let Some(old) = previous else {
            return Arc::new(layer);
        };
        if old.version == layer.version {
            return old.clone();
        }
        let changed = layer
            .resources
            .iter()
            .filter(|(name, r)| {
                old.resources
                    .get(*name)
                    .is_none_or(|o| o.version != r.version)
            })
            .map(|(name, _)| name.clone())
            .collect();
        let removed = old
            .resources
            .keys()
            .filter(|name| !layer.resources.contains_key(*name))
            .cloned()
            .collect();
        layer.base = Some(LayerDiff {
            from: Arc::downgrade(old),
            changed,
            removed,
        });
        Arc::new(layer)
    }
}

/// All resources of one type for one proxy: shared layers plus its own, with a version
/// derived from theirs. Names are unique across layers.
#[derive(Debug, Clone, Default)]
pub struct ResourceSet {
    /// Shared: every stream that sent or ACKed this set holds it.
    pub version: Arc<str>,
    pub layers: Vec<Arc<ResourceLayer>>,
}

impl ResourceSet {
    pub fn new(layers: Vec<Arc<ResourceLayer>>) -> Self {
        let mut hasher = Sha256::new();
        for layer in &layers {
            hasher.update(layer.version.as_bytes());
        }
        ResourceSet {
            version: hex::encode(&hasher.finalize()[..8]).into(),
            layers,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.layers.iter().find_map(|l| l.resources.get(name))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Resource>> {
        self.layers.iter().flat_map(|l| l.resources.values())
    }

    pub fn len(&self) -> usize {
        self.layers.iter().map(|l| l.resources.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True if `layer` (the very same allocation) is part of this set.
    pub fn shares(&self, layer: &Arc<ResourceLayer>) -> bool {
        self.layers.iter().any(|l| Arc::ptr_eq(l, layer))
    }
}

/// Everything one proxy should have. Immutable once built.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub sets: BTreeMap<&'static str, ResourceSet>,
    /// Routes wait until the proxy has ACKed this snapshot's extension configs (true), or
    /// the other way round (false). True where Ward's wasm filter (over ECDS) enforces
    /// authorization, false where the RBAC rules in the routes do: on a switch of engine the
    /// one that enforces must be in place before the other stops, or requests would pass
    /// unchecked for a moment.
    pub routes_after_extensions: bool,
}

/// Versions are content hashes: equal versions, equal snapshots.
impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.routes_after_extensions == other.routes_after_extensions
            && self.sets.len() == other.sets.len()
            && self
                .sets
                .iter()
                .zip(&other.sets)
                .all(|((t1, s1), (t2, s2))| t1 == t2 && s1.version == s2.version)
    }
}

impl Snapshot {
    pub fn set(&self, type_url: &str) -> Option<&ResourceSet> {
        self.sets.get(type_url)
    }

    pub fn insert(&mut self, type_url: &'static str, layers: Vec<Arc<ResourceLayer>>) {
        self.sets.insert(type_url, ResourceSet::new(layers));
    }
}

/// Newest snapshot per node id. Setting an identical snapshot notifies nobody, so a config
/// change reaches only the proxies whose resources changed.
#[derive(Debug, Default)]
pub struct SnapshotCache {
    nodes: RwLock<HashMap<String, watch::Sender<Option<Arc<Snapshot>>>>>,
}

impl SnapshotCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `snapshot` for `node_id`; returns true if it differs from the previous one.
    pub fn set(&self, node_id: &str, snapshot: Snapshot) -> bool {
        let mut nodes = self.nodes.write().expect("snapshot cache poisoned");
        let sender = nodes
            .entry(node_id.to_string())
            .or_insert_with(|| watch::channel(None).0);
        sender.send_if_modified(|current| {
            if current.as_deref() == Some(&snapshot) {
                false
            } else {
                *current = Some(Arc::new(snapshot));
                true
            }
        })
    }

    /// Drops the snapshot of a node that no longer exists in the mesh; connected proxies
    /// of that node see `None` and keep their last config.
    pub fn clear(&self, node_id: &str) {
        if let Some(sender) = self
            .nodes
            .read()
            .expect("snapshot cache poisoned")
            .get(node_id)
        {
            sender.send_replace(None);
        }
    }

    pub fn get(&self, node_id: &str) -> Option<Arc<Snapshot>> {
        self.nodes
            .read()
            .expect("snapshot cache poisoned")
            .get(node_id)
            .and_then(|s| s.borrow().clone())
    }

    /// A receiver that sees every new snapshot for `node_id` (and the current one first).
    pub fn watch(&self, node_id: &str) -> watch::Receiver<Option<Arc<Snapshot>>> {
        let mut nodes = self.nodes.write().expect("snapshot cache poisoned");
        nodes
            .entry(node_id.to_string())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    pub fn node_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .nodes
            .read()
            .expect("snapshot cache poisoned")
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }
}
