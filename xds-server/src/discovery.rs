//! Discovery from the Kubernetes API server: watches Namespaces, ServiceAccounts, Services,
//! Pods and the Istio and Linkerd kinds Ward reads, and hands the mesh to the **same** loader
//! as the files do. Each object becomes one source document (JSON, which is YAML), named
//! `kube:<Kind>/<namespace>/<name>`, holding only the fields Ward reads; the loader, resolver
//! and translation see no difference between a cluster and a directory.
//!
//! - Every running pod with a `status.podIP` is an instance, ready or not, as in Istio: a
//!   starting pod's sidecar needs its config before the pod can become Ready (the kubelet's
//!   probes are captured and reach the app through it). Only Ready pods are endpoints of
//!   their Services. The injected sidecar's own container is left out (its admin port is not
//!   a workload port). The containers' HTTP probes are kept: under STRICT mTLS the sidecar
//!   still serves their paths in plaintext to the kubelet.
//! - Only pods injected by Ward (annotation `ward.dev/injected`) are meshed; any other pod
//!   (kube-system, opted out, not injected) is a plaintext endpoint with no identity and no
//!   proxy config.
//! - A Service whose selector matches no pod is left out until one does (the loader would
//!   refuse it, and a Service with no endpoints routes nowhere anyway).
//! - One object the loader refuses (an invalid VirtualService, an unparsable pod) is left
//!   out, logged and counted; the rest of the cluster keeps being applied ([`load`]).
//! - Watches restart as kube-rs's watcher does (relist on expiry, with backoff); a relist
//!   that finds what was there produces the same sources, so nothing is pushed again.
//! - A policy kind whose CRD is not installed is simply empty (logged once per failure).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use ward_config::{self, ConfigError, Diagnostic, LoadedConfig};
use ward_metrics::{KindLabel, Metrics};

/// The policy kinds Ward reads, as their CRDs serve them.
pub const POLICY_KINDS: [(&str, &str, &str); 6] = [
    ("security.istio.io", "v1", "PeerAuthentication"),
    ("security.istio.io", "v1", "AuthorizationPolicy"),
    ("security.istio.io", "v1", "RequestAuthentication"),
    ("networking.istio.io", "v1", "DestinationRule"),
    ("networking.istio.io", "v1", "VirtualService"),
    ("linkerd.io", "v1alpha2", "ServiceProfile"),
];

/// Containers `wardctl inject` adds: not part of the workload.
const INJECTED_CONTAINERS: [&str; 1] = ["ward-proxy"];

/// The loader's sources: (name, text).
pub type Sources = Vec<(String, String)>;

/// What the watchers hold.
struct Stores {
    namespaces: Store<Namespace>,
    service_accounts: Store<ServiceAccount>,
    services: Store<Service>,
    pods: Store<Pod>,
    policies: Vec<(ApiResource, Store<DynamicObject>)>,
}

/// Starts one reflector for `api`; every change wakes `changed`.
fn reflect<K>(api: Api<K>, dyntype: K::DynamicType, changed: Arc<Notify>, what: String) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::new(dyntype);
    let reader = writer.as_reader();
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut failing = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => {
                    failing = false;
                    changed.notify_one();
                }
                Err(e) if !failing => {
                    failing = true;
                    warn!(kind = %what, error = %e, "watch failed; retrying with backoff");
                }
                Err(e) => debug!(kind = %what, error = %e, "watch still failing"),
            }
        }
    });
    reader
}

/// Watches the cluster and publishes the mesh's sources each time they change (debounced by
/// `quiet`). The first value is published once the core kinds are listed.
pub async fn run(client: Client, quiet: Duration, sources: watch::Sender<Option<Sources>>) {
    let changed = Arc::new(Notify::new());
    let stores = Stores {
        namespaces: reflect(
            Api::all(client.clone()),
            (),
            changed.clone(),
            "Namespace".into(),
        ),
        service_accounts: reflect(
            Api::all(client.clone()),
            (),
            changed.clone(),
            "ServiceAccount".into(),
        ),
        services: reflect(
            Api::all(client.clone()),
            (),
            changed.clone(),
            "Service".into(),
        ),
        pods: reflect(Api::all(client.clone()), (), changed.clone(), "Pod".into()),
        policies: POLICY_KINDS
            .iter()
            .map(|(group, version, kind)| {
                let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
                let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
                let store = reflect(api, resource.clone(), changed.clone(), kind.to_string());
                (resource, store)
            })
            .collect(),
    };
    for ready in [
        stores.namespaces.wait_until_ready().await.is_ok(),
        stores.service_accounts.wait_until_ready().await.is_ok(),
        stores.services.wait_until_ready().await.is_ok(),
        stores.pods.wait_until_ready().await.is_ok(),
    ] {
        if !ready {
            return;
        }
    }
    info!("Kubernetes discovery: the core kinds are listed");
    let mut last: Option<Sources> = None;
    loop {
        let current = stores.sources();
        if last.as_ref() != Some(&current) {
            debug!(objects = current.len(), "cluster changed");
            last = Some(current.clone());
            if sources.send(Some(current)).is_err() {
                return;
            }
        }
        changed.notified().await;
        // Fold a burst of events (a rollout) into one load.
        tokio::time::sleep(quiet).await;
    }
}

fn source(kind: &str, namespace: Option<&str>, name: &str, document: Value) -> (String, String) {
    let at = match namespace {
        Some(ns) => format!("kube:{kind}/{ns}/{name}"),
        None => format!("kube:{kind}/{name}"),
    };
    (
        at,
        serde_json::to_string_pretty(&document).unwrap_or_default(),
    )
}

/// The object's metadata as Ward reads it.
fn metadata(meta: &kube::api::ObjectMeta) -> Value {
    let mut out = json!({ "name": meta.name });
    if let Some(ns) = &meta.namespace {
        out["namespace"] = json!(ns);
    }
    if let Some(labels) = meta.labels.as_ref().filter(|l| !l.is_empty()) {
        out["labels"] = json!(labels);
    }
    if let Some(annotations) = &meta.annotations {
        // kubectl's own bookkeeping is not configuration.
        let kept: BTreeMap<&String, &String> = annotations
            .iter()
            .filter(|(k, _)| !k.starts_with("kubectl.kubernetes.io/"))
            .collect();
        if !kept.is_empty() {
            out["annotations"] = json!(kept);
        }
    }
    out
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// A running pod with an address, as the loader's `v1 Pod` (its `Ready` condition and its
/// `ward.dev/injected` annotation say whether it is an endpoint and whether it is meshed);
/// None for a pod that is terminating, finished or not yet given an address.
pub fn pod_document(pod: &Pod) -> Option<Value> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip = status.pod_ip.as_ref().filter(|ip| !ip.is_empty())?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let spec = pod.spec.as_ref()?;
    let containers: Vec<Value> = spec
        .containers
        .iter()
        .filter(|c| !INJECTED_CONTAINERS.contains(&c.name.as_str()))
        .map(|c| {
            let mut container = json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
            });
            if let Some(ports) = c.ports.as_ref().filter(|p| !p.is_empty()) {
                container["ports"] = Value::Array(
                    ports
                        .iter()
                        .map(|p| {
                            let mut port = json!({ "containerPort": p.container_port });
                            if let Some(name) = &p.name {
                                port["name"] = json!(name);
                            }
                            if let Some(protocol) = &p.protocol {
                                port["protocol"] = json!(protocol);
                            }
                            port
                        })
                        .collect(),
                );
            }
            // The kubelet's HTTP probes: STRICT mTLS still serves them in plaintext.
            for (key, probe) in [
                ("readinessProbe", &c.readiness_probe),
                ("livenessProbe", &c.liveness_probe),
                ("startupProbe", &c.startup_probe),
            ] {
                if let Some(get) = probe.as_ref().and_then(|p| p.http_get.as_ref()) {
                    let mut http_get = json!({ "port": to_value(&get.port) });
                    if let Some(path) = &get.path {
                        http_get["path"] = json!(path);
                    }
                    if let Some(scheme) = &get.scheme {
                        http_get["scheme"] = json!(scheme);
                    }
                    container[key] = json!({ "httpGet": http_get });
                }
            }
            container
        })
        .collect();
    let mut pod_spec = json!({ "containers": containers });
    if let Some(sa) = &spec.service_account_name {
        pod_spec["serviceAccountName"] = json!(sa);
    }
    Some(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata(&pod.metadata),
        "spec": pod_spec,
        "status": {
            "podIP": ip,
            "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
        },
    }))
}

/// A Service with a selector, as the loader's `v1 Service`.
pub fn service_document(service: &Service) -> Option<Value> {
    let spec = service.spec.as_ref()?;
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let ports: Vec<Value> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let mut port = json!({ "port": p.port });
            for (key, value) in [
                ("name", p.name.as_ref().map(|n| json!(n))),
                ("protocol", p.protocol.as_ref().map(|n| json!(n))),
                ("appProtocol", p.app_protocol.as_ref().map(|n| json!(n))),
                ("targetPort", p.target_port.as_ref().map(to_value)),
            ] {
                if let Some(value) = value {
                    port[key] = value;
                }
            }
            port
        })
        .collect();
    Some(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(&service.metadata),
        "spec": { "selector": selector, "ports": ports },
    }))
}

impl Stores {
    /// Every object as a loader source, sorted by name (a relist gives the same list).
    fn sources(&self) -> Sources {
        let mut sources = Vec::new();
        for ns in self.namespaces.state() {
            let name = ns.metadata.name.clone().unwrap_or_default();
            sources.push(source(
                "Namespace",
                None,
                &name,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
            ));
        }
        for sa in self.service_accounts.state() {
            sources.push(source(
                "ServiceAccount",
                sa.metadata.namespace.as_deref(),
                sa.metadata.name.as_deref().unwrap_or_default(),
                json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(&sa.metadata)}),
            ));
        }
        let pods: Vec<Value> = self
            .pods
            .state()
            .iter()
            .filter_map(|p| pod_document(p))
            .collect();
        for pod in &pods {
            sources.push(source(
                "Pod",
                pod["metadata"]["namespace"].as_str(),
                pod["metadata"]["name"].as_str().unwrap_or_default(),
                pod.clone(),
            ));
        }
        for service in self.services.state() {
            let Some(document) = service_document(&service) else {
                continue;
            };
            let namespace = document["metadata"]["namespace"].clone();
            let selector = document["spec"]["selector"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let selects_a_pod = pods.iter().any(|p| {
                p["metadata"]["namespace"] == namespace
                    && selector
                        .iter()
                        .all(|(k, v)| p["metadata"]["labels"][k.as_str()] == *v)
            });
            if !selects_a_pod {
                continue;
            }
            let name = document["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            sources.push(source("Service", namespace.as_str(), &name, document));
        }
        for (resource, store) in &self.policies {
            for object in store.state() {
                let document = json!({
                    "apiVersion": resource.api_version,
                    "kind": resource.kind,
                    "metadata": metadata(&object.metadata),
                    "spec": object.data.get("spec").cloned().unwrap_or(json!({})),
                });
                sources.push(source(
                    &resource.kind,
                    object.metadata.namespace.as_deref(),
                    object.metadata.name.as_deref().unwrap_or_default(),
                    document,
                ));
            }
        }
        sources.sort();
        sources
    }
}

/// A cluster object the loader refused: left out of the mesh until it is fixed.
#[derive(Debug, Clone)]
pub struct LeftOut {
    /// The source's name, `kube:<Kind>/<namespace>/<name>`.
    pub source: String,
    pub kind: String,
    /// `<namespace>/<name>` (just the name for cluster-scoped kinds).
    pub object: String,
    pub errors: Vec<Diagnostic>,
}

/// Loads the files together with the cluster's objects. The files keep their all-or-nothing
/// semantics (an error in one fails the load; the caller keeps the last good config). A
/// cluster object with an error is left out and the rest loaded again without it, until
/// what remains loads: one bad object must not freeze every endpoint. (Leaving one out can
/// make another one refused, e.g. a policy naming it, hence the loop; each round leaves out
/// at least one object, so it ends.)
pub fn load(
    files: &Sources,
    cluster: &Sources,
) -> Result<(LoadedConfig, Vec<LeftOut>), ConfigError> {
    let mut cluster: Vec<&(String, String)> = cluster.iter().collect();
    let mut left_out: Vec<LeftOut> = Vec::new();
    loop {
        let sources: Sources = files
            .iter()
            .chain(cluster.iter().copied())
            .cloned()
            .collect();
        let errors = match ward_config::load_sources(&sources) {
            Ok(loaded) => return Ok((loaded, left_out)),
            Err(ConfigError::Invalid(errors)) => errors,
            Err(e) => return Err(e),
        };
        let mut by_object: BTreeMap<String, Vec<Diagnostic>> = BTreeMap::new();
        for error in &errors {
            if !cluster.iter().any(|(name, _)| *name == error.file) {
                // An error in the files (or one no object can be blamed for).
                return Err(ConfigError::Invalid(errors));
            }
            by_object
                .entry(error.file.clone())
                .or_default()
                .push(error.clone());
        }
        cluster.retain(|(name, _)| !by_object.contains_key(name));
        for (source, errors) in by_object {
            let (kind, object) = source
                .strip_prefix("kube:")
                .and_then(|rest| rest.split_once('/'))
                .map(|(k, o)| (k.to_string(), o.to_string()))
                .unwrap_or_else(|| (String::new(), source.clone()));
            left_out.push(LeftOut {
                source,
                kind,
                object,
                errors,
            });
        }
    }
}

/// Logs each left-out object with its kind, name and errors, and sets the
/// `ward_kubernetes_objects_left_out` gauge (by kind) to what this load left out. Returns
/// one line per object for `/status`.
pub fn report_left_out(metrics: &Metrics, left_out: &[LeftOut]) -> Vec<String> {
    metrics.kubernetes_objects_left_out.clear();
    left_out
        .iter()
        .map(|object| {
            let errors: Vec<String> = object.errors.iter().map(ToString::to_string).collect();
            let errors = errors.join("; ");
            warn!(kind = %object.kind, object = %object.object, %errors,
                "cluster object refused; the mesh is served without it");
            metrics
                .kubernetes_objects_left_out
                .get_or_create(&KindLabel {
                    kind: object.kind.clone(),
                })
                .inc();
            format!("{} left out: {errors}", object.source)
        })
        .collect()
}
