//! The kinds Ward understands, decoded from positioned YAML documents. Each decoder reads the
//! fields Ward acts on; whatever it leaves is reported by `Object::finish`. A document with
//! errors is still returned when its identity is known, so that later checks do not add
//! follow-on errors about it missing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::authz::{self, AuthorizationPolicySpec, RequestAuthenticationSpec};
use crate::decode::{integer, Object, IGNORED};
use crate::diagnostic::Report;
use crate::istio::{self, DestinationRuleSpec, PeerAuthenticationSpec};
use crate::linkerd::{self, ServiceProfileSpec};
use crate::model::{Container, ContainerPort};
use crate::names::{self, Rule};
use crate::virtual_service::{self, VirtualServiceSpec};
use crate::yaml::{Node, Position, Scalar, Value};

/// Namespaced objects without `metadata.namespace` live here, as with kubectl.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Pods without `serviceAccountName` run as this account, which exists in every namespace.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Each instance's two addresses share the workload's /24 (`.1..=.100` and `.129..=.228`).
pub const MAX_REPLICAS: i64 = 100;

/// Kubernetes bookkeeping with no meaning for Ward, accepted without a warning.
const METADATA_BOOKKEEPING: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "managedFields",
    "generation",
    "selfLink",
];

#[derive(Debug, Clone)]
pub struct Meta {
    pub name: String,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    /// Where the document starts.
    pub position: Position,
    /// Where `metadata.name` is written.
    pub name_position: Position,
    /// `metadata.annotations` (Istio reads some on its own kinds, e.g. `istio.io/dry-run`).
    pub annotations: BTreeMap<String, String>,
    /// Where `metadata.annotations` is written (the document's start if it is not).
    pub annotations_position: Position,
}

#[derive(Debug, Clone)]
pub struct DeploymentSpec {
    pub meta: Meta,
    pub replicas: u32,
    pub template_labels: BTreeMap<String, String>,
    pub template_annotations: BTreeMap<String, String>,
    pub service_account: String,
    /// Where `serviceAccountName` is written, if it is.
    pub service_account_position: Option<Position>,
    pub containers: Vec<Container>,
    /// A bare Pod: one instance at `pod_ip` (none until it has one), traffic captured.
    pub is_pod: bool,
    pub pod_ip: Option<Ipv4Addr>,
    /// A Pod's `Ready` condition (true for Deployments, and for a Pod written without
    /// `status.conditions`): only ready instances are endpoints.
    pub ready: bool,
    /// Runs Ward's sidecar: a Pod annotated `ward.dev/injected` (always for Deployments).
    pub sidecar: bool,
}

#[derive(Debug, Clone)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone)]
pub struct ServicePortSpec {
    pub position: Position,
    pub name: Option<String>,
    pub port: u16,
    pub target_port: TargetPort,
    /// Where the target port is written (the port's own line when it defaults to `port`).
    pub target_position: Position,
    pub target_path: String,
    pub protocol: String,
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub meta: Meta,
    /// Empty only when decoding already reported it.
    pub selector: BTreeMap<String, String>,
    pub selector_position: Position,
    pub ports: Vec<ServicePortSpec>,
    /// From the `balancer.linkerd.io/failure-accrual*` annotations.
    pub failure_accrual: Option<crate::model::FailureAccrual>,
}

#[derive(Debug, Clone)]
pub struct MeshConfigSpec {
    pub trust_domain: Option<String>,
    pub root_namespace: Option<String>,
    pub authorization_engine: Option<crate::model::AuthorizationEngine>,
    pub position: Position,
}

#[derive(Debug, Clone)]
pub enum Document {
    Namespace(Meta),
    ServiceAccount(Meta),
    Service(ServiceSpec),
    Deployment(DeploymentSpec),
    MeshConfig(MeshConfigSpec),
    PeerAuthentication(PeerAuthenticationSpec),
    DestinationRule(Box<DestinationRuleSpec>),
    AuthorizationPolicy(AuthorizationPolicySpec),
    RequestAuthentication(RequestAuthenticationSpec),
    ServiceProfile(ServiceProfileSpec),
    VirtualService(VirtualServiceSpec),
    TrafficRoute(crate::kuma::TrafficRouteSpec),
}

/// What became of one YAML document.
#[derive(Debug)]
pub enum Decoded {
    Document(Box<Document>),
    /// Empty, or a kind Ward does not support (warned).
    Skipped,
    /// Not even its kind and name could be read (errors reported).
    Failed,
}

impl Document {
    pub fn kind(&self) -> &'static str {
        match self {
            Document::Namespace(_) => "Namespace",
            Document::ServiceAccount(_) => "ServiceAccount",
            Document::Service(_) => "Service",
            Document::Deployment(d) if d.is_pod => "Pod",
            Document::Deployment(_) => "Deployment",
            Document::MeshConfig(_) => "MeshConfig",
            Document::PeerAuthentication(_) => "PeerAuthentication",
            Document::DestinationRule(_) => "DestinationRule",
            Document::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Document::RequestAuthentication(_) => "RequestAuthentication",
            Document::ServiceProfile(_) => "ServiceProfile",
            Document::VirtualService(_) => "VirtualService",
            Document::TrafficRoute(_) => "TrafficRoute",
        }
    }

    pub fn meta(&self) -> Option<&Meta> {
        match self {
            Document::Namespace(m) | Document::ServiceAccount(m) => Some(m),
            Document::Service(s) => Some(&s.meta),
            Document::Deployment(d) => Some(&d.meta),
            Document::PeerAuthentication(p) => Some(&p.meta),
            Document::DestinationRule(r) => Some(&r.meta),
            Document::AuthorizationPolicy(p) => Some(&p.meta),
            Document::RequestAuthentication(r) => Some(&r.meta),
            Document::ServiceProfile(p) => Some(&p.meta),
            Document::VirtualService(v) => Some(&v.meta),
            Document::TrafficRoute(r) => Some(&r.meta),
            Document::MeshConfig(_) => None,
        }
    }
}

/// Decodes one document.
pub fn decode_document(node: &Node, report: &mut Report) -> Decoded {
    if node.is_null() {
        return Decoded::Skipped;
    }
    let Some(doc) = Object::of(node, "", report) else {
        return Decoded::Failed;
    };
    let api_version = doc.required_string("apiVersion", report);
    let kind = doc.required_string("kind", report);
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        return Decoded::Failed;
    };
    // Written by the cluster, not by the user.
    doc.skip(&["status"]);
    let decoded = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            decode_meta(&doc, false, Rule::Label, report).map(Document::Namespace)
        }
        ("v1", "ServiceAccount") => {
            decode_meta(&doc, true, Rule::Subdomain, report).map(Document::ServiceAccount)
        }
        ("v1", "Service") => decode_service(&doc, report).map(Document::Service),
        ("apps/v1", "Deployment") => decode_deployment(&doc, report).map(Document::Deployment),
        ("v1", "Pod") => decode_pod(&doc, report).map(Document::Deployment),
        ("ward.dev/v1alpha1", "MeshConfig") => {
            Some(Document::MeshConfig(decode_mesh_config(&doc, report)))
        }
        (v, "PeerAuthentication") if istio::SECURITY_VERSIONS.contains(&v) => {
            istio::decode_peer_authentication(&doc, report).map(Document::PeerAuthentication)
        }
        (v, "AuthorizationPolicy") if istio::SECURITY_VERSIONS.contains(&v) => {
            authz::decode_authorization_policy(&doc, report).map(Document::AuthorizationPolicy)
        }
        (v, "RequestAuthentication") if istio::SECURITY_VERSIONS.contains(&v) => {
            authz::decode_request_authentication(&doc, report).map(Document::RequestAuthentication)
        }
        (v, "DestinationRule") if istio::NETWORKING_VERSIONS.contains(&v) => {
            istio::decode_destination_rule(&doc, report)
                .map(|r| Document::DestinationRule(Box::new(r)))
        }
        (v, "VirtualService") if istio::NETWORKING_VERSIONS.contains(&v) => {
            virtual_service::decode_virtual_service(&doc, report).map(Document::VirtualService)
        }
        (v, "TrafficRoute") if crate::kuma::VERSIONS.contains(&v) => {
            crate::kuma::decode_traffic_route(&doc, report).map(Document::TrafficRoute)
        }
        (v, "ServiceProfile") if linkerd::SERVICE_PROFILE_VERSIONS.contains(&v) => {
            linkerd::decode_service_profile(&doc, report).map(Document::ServiceProfile)
        }
        _ => {
            let known = match kind.as_str() {
                "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication" => {
                    " (Ward reads security.istio.io/v1beta1 and v1)"
                }
                "DestinationRule" | "VirtualService" => {
                    " (Ward reads networking.istio.io/v1alpha3, v1beta1 and v1)"
                }
                "Namespace" | "ServiceAccount" | "Service" => " (Ward reads it as v1)",
                "Deployment" => " (Ward reads it as apps/v1)",
                "MeshConfig" => " (Ward reads it as ward.dev/v1alpha1)",
                "ServiceProfile" => " (Ward reads linkerd.io/v1alpha2)",
                _ => "",
            };
            report.warn(
                doc.position_of("kind"),
                "",
                format!(
                    "kind {kind} (apiVersion {api_version}) is not supported by Ward{known}; document ignored"
                ),
            );
            return Decoded::Skipped;
        }
    };
    doc.finish(report);
    decoded.map_or(Decoded::Failed, |d| Decoded::Document(Box::new(d)))
}

/// Reports `name` if it breaks `rule`; returns whether it is fine.
fn check_name(rule: Rule, name: &str, at: Position, path: &str, report: &mut Report) -> bool {
    match names::check(rule, name) {
        None => true,
        Some(expected) => {
            report.error(
                at,
                path,
                format!("`{name}` is not a valid name: {expected}"),
            );
            false
        }
    }
}

/// `metadata`, with `metadata.name` following `rule`. None when there is no usable name
/// (reported).
pub(super) fn decode_meta(
    doc: &Object,
    namespaced: bool,
    rule: Rule,
    report: &mut Report,
) -> Option<Meta> {
    let node = doc.required("metadata", report)?;
    let meta = Object::of(node, "metadata", report)?;
    meta.skip(METADATA_BOOKKEEPING);
    let name = meta.required_string("name", report);
    let name_position = meta.get("name").map_or(meta.position, |n| n.position);
    if let Some(name) = &name {
        check_name(rule, name, name_position, "metadata.name", report);
    }
    let namespace = if !namespaced {
        String::new()
    } else if let Some(ns) = meta.string("namespace", report) {
        let at = meta.get("namespace").map_or(meta.position, |n| n.position);
        check_name(Rule::Label, &ns, at, "metadata.namespace", report);
        ns
    } else {
        DEFAULT_NAMESPACE.to_string()
    };
    // The object's own labels and annotations are read for their shape only: Ward selects
    // and configures by the pod template's.
    meta.string_map("labels", report);
    let annotations_position = meta.get("annotations").map_or(doc.position, |n| n.position);
    let annotations = meta.string_map("annotations", report);
    meta.finish(report);
    Some(Meta {
        name: name?,
        namespace,
        position: doc.position,
        name_position,
        annotations,
        annotations_position,
    })
}

fn decode_mesh_config(doc: &Object, report: &mut Report) -> MeshConfigSpec {
    // There is one MeshConfig: its metadata is optional and names nothing Ward uses.
    if let Some(meta) = doc.object("metadata", report) {
        meta.skip(METADATA_BOOKKEEPING);
        meta.string("name", report);
        meta.string("namespace", report);
        meta.string_map("labels", report);
        meta.string_map("annotations", report);
        meta.finish(report);
    }
    let mut config = MeshConfigSpec {
        trust_domain: None,
        root_namespace: None,
        authorization_engine: None,
        position: doc.position,
    };
    let Some(spec) = doc.object("spec", report) else {
        return config;
    };
    if let Some(td) = spec.string("trustDomain", report) {
        if names::trust_domain_ok(&td) {
            config.trust_domain = Some(td);
        } else {
            report.error(
                spec.get("trustDomain").map_or(spec.position, |n| n.position),
                "spec.trustDomain",
                format!("`{td}` is not a valid SPIFFE trust domain: lowercase letters, digits, '.', '-' and '_'"),
            );
        }
    }
    if let Some(ns) = spec.string("rootNamespace", report) {
        let at = spec
            .get("rootNamespace")
            .map_or(spec.position, |n| n.position);
        if check_name(Rule::Label, &ns, at, "spec.rootNamespace", report) {
            config.root_namespace = Some(ns);
        }
    }
    let engine_at = spec.position_of("authorizationEngine");
    match spec.string("authorizationEngine", report).as_deref() {
        None => {}
        Some("native") => config.authorization_engine = Some(crate::model::AuthorizationEngine::Native),
        Some("wasm") => config.authorization_engine = Some(crate::model::AuthorizationEngine::Wasm),
        Some(other) => report.error(
            engine_at,
            "spec.authorizationEngine",
            format!("unknown engine `{other}`: expected native (Envoy's RBAC filters) or wasm (Ward's filter)"),
        ),
    }
    // Mesh-wide defaults: none is implemented yet, so each key set is reported as ignored.
    if let Some(defaults) = spec.object("defaults", report) {
        defaults.finish(report);
    }
    spec.finish(report);
    config
}

fn port_number(node: &Node, path: &str, report: &mut Report) -> Option<u16> {
    integer(node, path, 1, 65535, report).map(|p| p as u16)
}

/// A port's `protocol`: TCP unless set; Ward proxies TCP only, so others are warned about.
fn protocol(item: &Object, report: &mut Report) -> String {
    let Some(protocol) = item.string("protocol", report) else {
        return "TCP".to_string();
    };
    let at = item.position_of("protocol");
    let path = item.field_path("protocol");
    match protocol.as_str() {
        "TCP" => {}
        "UDP" | "SCTP" => report.warn(
            at,
            &path,
            format!("protocol {protocol}: Ward proxies TCP only; this port gets no traffic through the mesh"),
        ),
        _ => report.error(
            at,
            &path,
            format!("unknown protocol `{protocol}`: expected TCP, UDP or SCTP"),
        ),
    }
    protocol
}

fn decode_service(doc: &Object, report: &mut Report) -> Option<ServiceSpec> {
    let meta = decode_meta(doc, true, Rule::ServiceName, report);
    // Without a usable spec the Service still counts as declared (for duplicates).
    let stub = |meta: Meta| ServiceSpec {
        selector_position: meta.position,
        meta,
        selector: BTreeMap::new(),
        ports: Vec::new(),
        failure_accrual: None,
    };
    let Some(spec) = doc.required("spec", report) else {
        return meta.map(stub);
    };
    let Some(spec) = Object::of(spec, "spec", report) else {
        return meta.map(stub);
    };
    let selector_position = spec.position_of("selector");
    let selector = spec.string_map("selector", report);
    if is_empty_mapping(spec.get("selector")) {
        report.error(
            selector_position,
            "spec.selector",
            "required: Ward sends a Service's traffic to the Deployments it selects; Services without a selector (manual Endpoints) are not supported",
        );
    }
    if let Some(kind) = spec.string("type", report) {
        if kind != "ClusterIP" {
            report.warn(
                spec.position_of("type"),
                "spec.type",
                format!("ignored: type {kind} is not supported by Ward; the Service is reachable inside the mesh only, like a ClusterIP Service"),
            );
        }
    }
    if spec.get("clusterIP").is_some() {
        report.warn(
            spec.position_of("clusterIP"),
            "spec.clusterIP",
            "ignored: Ward routes by Service name, not by cluster IP",
        );
    }
    let items = spec.required_list("ports", report);
    let mut ports: Vec<ServicePortSpec> = Vec::new();
    for (path, node) in &items {
        if let Some(port) = decode_service_port(node, path, report) {
            let clash = ports.iter().find(|p| {
                (p.port == port.port && p.protocol == port.protocol)
                    || (p.name.is_some() && p.name == port.name)
            });
            if let Some(first) = clash {
                let what = if first.port == port.port {
                    format!("port {}/{}", port.port, port.protocol)
                } else {
                    format!("port name `{}`", port.name.as_deref().unwrap_or_default())
                };
                report.error(
                    node.position,
                    path,
                    format!("duplicate {what} (first at line {})", first.position.line),
                );
                continue;
            }
            if items.len() > 1 && port.name.is_none() {
                report.error(
                    node.position,
                    &format!("{path}.name"),
                    "required when a Service has more than one port",
                );
            }
            ports.push(port);
        }
    }
    spec.finish(report);
    let meta = meta?;
    let failure_accrual =
        linkerd::failure_accrual(&meta.annotations, meta.annotations_position, report);
    Some(ServiceSpec {
        meta,
        selector,
        selector_position,
        ports,
        failure_accrual,
    })
}

fn decode_service_port(node: &Node, path: &str, report: &mut Report) -> Option<ServicePortSpec> {
    let item = Object::of(node, path, report)?;
    let name = item.string("name", report);
    if let Some(name) = &name {
        let at = item.position_of("name");
        check_name(Rule::PortName, name, at, &item.field_path("name"), report);
    }
    let port = item
        .required("port", report)
        .and_then(|n| port_number(n, &item.field_path("port"), report));
    let target_path = item.field_path("targetPort");
    let (target_port, target_position) = match item.get("targetPort") {
        None => (port.map(TargetPort::Number), item.position),
        Some(n) => (decode_target_port(n, &target_path, report), n.position),
    };
    let protocol = protocol(&item, report);
    let app_protocol = item.string("appProtocol", report);
    let position = item.position;
    item.finish(report);
    Some(ServicePortSpec {
        position,
        name,
        port: port?,
        target_port: target_port?,
        target_position,
        target_path,
        protocol,
        app_protocol,
    })
}

/// Kubernetes' IntOrString: a number, or the name of a container port.
fn decode_target_port(node: &Node, path: &str, report: &mut Report) -> Option<TargetPort> {
    match node.scalar() {
        Some(Scalar::Int(_)) => port_number(node, path, report).map(TargetPort::Number),
        Some(Scalar::Str(name)) => match names::check(Rule::PortName, name) {
            None => Some(TargetPort::Name(name.to_string())),
            Some(_) if name.bytes().all(|b| b.is_ascii_digit()) => {
                report.error(
                    node.position,
                    path,
                    format!("\"{name}\" is a string, so it would name a port, and port names need a letter; write {name} without quotes for a port number"),
                );
                None
            }
            Some(expected) => {
                report.error(
                    node.position,
                    path,
                    format!("`{name}` is not a valid port name: {expected}"),
                );
                None
            }
        },
        _ => {
            report.error(
                node.position,
                path,
                format!("expected a port number or name, found {}", node.describe()),
            );
            None
        }
    }
}

fn decode_deployment(doc: &Object, report: &mut Report) -> Option<DeploymentSpec> {
    let meta = decode_meta(doc, true, Rule::Subdomain, report)?;
    let mut deployment = DeploymentSpec {
        meta,
        replicas: 1,
        template_labels: BTreeMap::new(),
        template_annotations: BTreeMap::new(),
        service_account: DEFAULT_SERVICE_ACCOUNT.to_string(),
        service_account_position: None,
        containers: Vec::new(),
        is_pod: false,
        pod_ip: None,
        ready: true,
        sidecar: true,
    };
    let Some(spec) = doc.required("spec", report) else {
        return Some(deployment);
    };
    let Some(spec) = Object::of(spec, "spec", report) else {
        return Some(deployment);
    };
    if let Some(node) = spec.get("replicas") {
        match integer(node, "spec.replicas", 0, i64::from(i32::MAX), report) {
            Some(n) if n > MAX_REPLICAS => report.error(
                node.position,
                "spec.replicas",
                format!("{n} replicas: Ward runs at most {MAX_REPLICAS} per Deployment (each instance gets two addresses in the workload's /24)"),
            ),
            Some(n) => deployment.replicas = n as u32,
            None => {}
        }
    }
    let match_labels = decode_selector(&spec, report);
    let mut labels_ok = false;
    if let Some(template) = spec.required("template", report) {
        if let Some(template) = Object::of(template, "spec.template", report) {
            labels_ok = decode_template(&template, &mut deployment, report);
            template.finish(report);
        }
    }
    // Compared only with labels read without errors: others were reported already.
    let match_labels = if labels_ok {
        match_labels
    } else {
        BTreeMap::new()
    };
    for (k, v) in &match_labels {
        if deployment.template_labels.get(k) != Some(v) {
            report.error(
                spec.position_of("selector"),
                "spec.selector.matchLabels",
                format!("selector {k}={v} does not match the template's labels (`spec.template.metadata.labels`); Kubernetes rejects such a Deployment"),
            );
        }
    }
    spec.finish(report);
    Some(deployment)
}

/// Absent, null or `{}`; anything else is either usable or already reported as wrong.
fn is_empty_mapping(node: Option<&Node>) -> bool {
    match node {
        None => true,
        Some(node) => matches!(&node.value, Value::Mapping(entries) if entries.is_empty()),
    }
}

/// `spec.selector.matchLabels`, which Kubernetes requires and Ward selects pods by.
fn decode_selector(spec: &Object, report: &mut Report) -> BTreeMap<String, String> {
    let Some(node) = spec.required("selector", report) else {
        return BTreeMap::new();
    };
    let Some(selector) = Object::of(node, "spec.selector", report) else {
        return BTreeMap::new();
    };
    let labels = selector.string_map("matchLabels", report);
    if is_empty_mapping(selector.get("matchLabels")) {
        report.error(
            selector.position_of("matchLabels"),
            "spec.selector.matchLabels",
            "required: Ward selects pods by matchLabels (matchExpressions are not supported)",
        );
    }
    selector.finish(report);
    labels
}

/// The pod template; returns whether its labels were read without errors.
fn decode_template(
    template: &Object,
    deployment: &mut DeploymentSpec,
    report: &mut Report,
) -> bool {
    let errors_before = report.errors.len();
    if let Some(meta) = template.object("metadata", report) {
        deployment.template_labels = meta.string_map("labels", report);
        deployment.template_annotations = meta.string_map("annotations", report);
        meta.skip(METADATA_BOOKKEEPING);
        meta.finish(report);
    }
    let labels_ok = report.errors.len() == errors_before;
    let Some(pod) = template.required("spec", report) else {
        return labels_ok;
    };
    decode_pod_spec(pod, "spec.template.spec", deployment, report);
    labels_ok
}

/// A pod's spec (a template's, or a Pod's): service account and containers.
fn decode_pod_spec(node: &Node, path: &str, deployment: &mut DeploymentSpec, report: &mut Report) {
    let Some(pod) = Object::of(node, path, report) else {
        return;
    };
    // `serviceAccount` is the deprecated spelling; Kubernetes prefers serviceAccountName.
    let sa_key = ["serviceAccountName", "serviceAccount"]
        .into_iter()
        .find(|k| pod.has(k));
    if let Some(key) = sa_key {
        if let Some(sa) = pod.string(key, report) {
            let at = pod.get(key).map_or(pod.position, |n| n.position);
            if check_name(Rule::Subdomain, &sa, at, &pod.field_path(key), report) {
                deployment.service_account = sa;
                deployment.service_account_position = Some(at);
            }
        }
    }
    // Scratch space only (`emptyDir`, as Bookinfo's reviews mounts on /tmp): every app
    // already has its own, so such volumes and their mounts need nothing. Any other volume
    // is reported where it is written.
    let scratch_only = match pod.get("volumes").map(|n| &n.value) {
        Some(Value::Sequence(volumes)) => volumes.iter().all(|v| match &v.value {
            Value::Mapping(fields) => fields
                .iter()
                .all(|(k, _, _)| k == "name" || k == "emptyDir"),
            _ => false,
        }),
        _ => !pod.has("volumes"),
    };
    if !scratch_only {
        // Not understood after all: leave it for `finish` to report.
        pod.forget("volumes");
    }
    let items = pod.required_list("containers", report);
    let mut names = BTreeSet::new();
    for (path, node) in items {
        // Only a Pod has a kubelet probing it (the local runner has none).
        if let Some(container) =
            decode_container(node, &path, deployment.is_pod, scratch_only, report)
        {
            if !names.insert(container.name.clone()) {
                report.error(
                    node.position,
                    &format!("{path}.name"),
                    format!("duplicate container name `{}`", container.name),
                );
            }
            deployment.containers.push(container);
        }
    }
    pod.finish(report);
}

/// A bare `v1 Pod`, as Kubernetes reports it: a workload of one instance at `status.podIP`
/// whose sidecar captures the pod's traffic (what `wardctl inject` sets up). Without a
/// `status.podIP` (not scheduled yet) it has no instance.
fn decode_pod(doc: &Object, report: &mut Report) -> Option<DeploymentSpec> {
    let meta = decode_meta(doc, true, Rule::Subdomain, report)?;
    let labels = match doc.get("metadata").map(|m| &m.value) {
        Some(Value::Mapping(entries)) => entries
            .iter()
            .find(|(k, _, _)| k == "labels")
            .and_then(|(_, _, v)| match &v.value {
                Value::Mapping(labels) => Some(
                    labels
                        .iter()
                        .filter_map(|(k, _, v)| Some((k.clone(), v.text()?.to_string())))
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default(),
        _ => BTreeMap::new(),
    };
    let sidecar = meta
        .annotations
        .contains_key(crate::wellknown::INJECTED_ANNOTATION);
    let mut pod = DeploymentSpec {
        template_annotations: meta.annotations.clone(),
        meta,
        replicas: 1,
        template_labels: labels,
        service_account: DEFAULT_SERVICE_ACCOUNT.to_string(),
        service_account_position: None,
        containers: Vec::new(),
        is_pod: true,
        pod_ip: None,
        ready: true,
        sidecar,
    };
    if let Some(spec) = doc.required("spec", report) {
        decode_pod_spec(spec, "spec", &mut pod, report);
    }
    let status = |key: &str| {
        doc.get("status")
            .and_then(|s| match &s.value {
                Value::Mapping(entries) => entries.iter().find(|(k, _, _)| k == key),
                _ => None,
            })
            .map(|(_, _, v)| v)
    };
    // Kubernetes reports readiness as the `Ready` condition; a Pod written by hand without
    // conditions is taken as ready.
    if let Some(Value::Sequence(conditions)) = status("conditions").map(|c| &c.value) {
        let field = |condition: &Node, key: &str| match &condition.value {
            Value::Mapping(entries) => entries
                .iter()
                .find(|(k, _, _)| k == key)
                .and_then(|(_, _, v)| v.text().map(str::to_string)),
            _ => None,
        };
        pod.ready = conditions.iter().any(|c| {
            field(c, "type").as_deref() == Some("Ready")
                && field(c, "status").as_deref() == Some("True")
        });
    }
    let pod_ip = status("podIP");
    match pod_ip {
        Some(node) => match node.text().and_then(|t| t.parse::<Ipv4Addr>().ok()) {
            Some(ip) => pod.pod_ip = Some(ip),
            None => report.error(
                node.position,
                "status.podIP",
                format!("{}: expected an IPv4 address", node.describe()),
            ),
        },
        None => {
            report.warn(
                doc.position,
                "status.podIP",
                format!(
                    "Pod {}/{} has no status.podIP (not scheduled yet): it has no endpoint until it does",
                    pod.meta.namespace, pod.meta.name
                ),
            );
            pod.replicas = 0;
        }
    }
    Some(pod)
}

fn decode_container(
    node: &Node,
    path: &str,
    read_probes: bool,
    scratch_volumes: bool,
    report: &mut Report,
) -> Option<Container> {
    let c = Object::of(node, path, report)?;
    // Images are never pulled: each runs as its built-in stand-in.
    c.skip(&["imagePullPolicy"]);
    if scratch_volumes {
        c.skip(&["volumeMounts"]);
    }
    let name = c.required_string("name", report);
    if let Some(name) = &name {
        let at = c.get("name").map_or(c.position, |n| n.position);
        check_name(Rule::Label, name, at, &c.field_path("name"), report);
    }
    let image = c.required_string("image", report);
    let command = c.string_list("command", report);
    let args = c.string_list("args", report);
    let mut env = Vec::new();
    let mut field_env = Vec::new();
    for (path, node) in c.list("env", report) {
        match decode_env(node, &path, report) {
            Some(EnvVar::Value(name, value)) => env.push((name, value)),
            Some(EnvVar::Field(name, field)) => field_env.push((name, field)),
            None => {}
        }
    }
    let ports: Vec<ContainerPort> = c
        .list("ports", report)
        .into_iter()
        .filter_map(|(path, node)| decode_container_port(node, &path, report))
        .collect();
    let probes = ["readinessProbe", "livenessProbe", "startupProbe"]
        .into_iter()
        .filter(|_| read_probes)
        .filter_map(|key| {
            let at = c.position_of(key);
            let probe = c.get(key)?;
            decode_http_probe(probe, &ports, at, &c.field_path(key), report)
        })
        .collect();
    c.finish(report);
    Some(Container {
        name: name?,
        image: image?,
        command,
        args,
        env,
        field_env,
        ports,
        probes,
    })
}

/// A probe's `httpGet` (path and port); None for other probes (exec, tcpSocket, grpc) and
/// for HTTPS ones, which the sidecar cannot route in plaintext. Its timing fields are the
/// kubelet's business and not read.
fn decode_http_probe(
    probe: &Node,
    ports: &[ContainerPort],
    at: Position,
    path: &str,
    report: &mut Report,
) -> Option<crate::model::HttpProbe> {
    let field = |node: &Node, key: &str| match &node.value {
        Value::Mapping(entries) => entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, v)| v.clone()),
        _ => None,
    };
    let get = field(probe, "httpGet")?;
    if field(&get, "scheme")
        .and_then(|s| s.text().map(str::to_string))
        .as_deref()
        == Some("HTTPS")
    {
        return None;
    }
    let request = field(&get, "path")
        .and_then(|p| p.text().map(str::to_string))
        .unwrap_or_else(|| "/".to_string());
    let request = request.split('?').next().unwrap_or("/").to_string();
    let port = field(&get, "port")?;
    let number = match port.scalar() {
        Some(Scalar::Int(n)) => u16::try_from(n).ok(),
        _ => port.text().and_then(|name| {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port)
        }),
    };
    if number.is_none() {
        report.warn(
            at,
            &format!("{path}.httpGet.port"),
            format!(
                "{}: not a port of this container; the probe is not served under STRICT mTLS",
                port.describe()
            ),
        );
    }
    Some(crate::model::HttpProbe {
        port: number?,
        path: request,
    })
}

/// A container's variable: a value, or a pod field (the downward API) the runner fills in
/// per pod.
enum EnvVar {
    Value(String, String),
    Field(String, String),
}

/// The downward API's `fieldRef.fieldPath`s Ward fills in.
const POD_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "status.podIP",
    "status.podIPs",
    "status.hostIP",
    "spec.nodeName",
    "spec.serviceAccountName",
];

fn decode_env(node: &Node, path: &str, report: &mut Report) -> Option<EnvVar> {
    let e = Object::of(node, path, report)?;
    let name = e.required_string("name", report);
    let value = e.string("value", report);
    let mut field = None;
    if let Some(from) = e.object("valueFrom", report) {
        if let Some(field_ref) = from.object("fieldRef", report) {
            let field_path = field_ref.required_string("fieldPath", report);
            field_ref.skip(&["apiVersion"]);
            let known = field_path.as_deref().is_some_and(|p| {
                POD_FIELDS.contains(&p)
                    || p.starts_with("metadata.labels['")
                    || p.starts_with("metadata.annotations['")
            });
            if known {
                field = field_path;
            } else if let Some(p) = &field_path {
                report.warn(
                    field_ref.position_of("fieldPath"),
                    &field_ref.field_path("fieldPath"),
                    format!("{IGNORED}: Ward fills in {} and metadata.labels/annotations['…'], not `{p}`; the variable is not set", POD_FIELDS.join(", ")),
                );
            }
            field_ref.finish(report);
        }
        from.ignore(
            &[
                (
                    "secretKeyRef",
                    "Ward cannot read Secrets, so the variable is not set",
                ),
                (
                    "configMapKeyRef",
                    "Ward cannot read ConfigMaps, so the variable is not set",
                ),
                (
                    "resourceFieldRef",
                    "pods have no resource limits here, so the variable is not set",
                ),
            ],
            report,
        );
        from.finish(report);
    }
    e.finish(report);
    match (name?, field, value) {
        (name, Some(path), _) => Some(EnvVar::Field(name, path)),
        (name, None, Some(value)) => Some(EnvVar::Value(name, value)),
        (name, None, None) if !has_value_from(node) => Some(EnvVar::Value(name, String::new())),
        _ => None,
    }
}

/// Whether an env entry has `valueFrom` (one Ward could not fill in is left unset).
fn has_value_from(node: &Node) -> bool {
    matches!(&node.value, Value::Mapping(entries) if entries.iter().any(|(k, _, _)| k == "valueFrom"))
}

fn decode_container_port(node: &Node, path: &str, report: &mut Report) -> Option<ContainerPort> {
    let p = Object::of(node, path, report)?;
    let name = p.string("name", report);
    if let Some(name) = &name {
        let at = p.position_of("name");
        check_name(Rule::PortName, name, at, &p.field_path("name"), report);
    }
    let path = p.field_path("containerPort");
    let number = p
        .required("containerPort", report)
        .and_then(|n| port_number(n, &path, report));
    let protocol = protocol(&p, report);
    if let Some(n) = number {
        if n == crate::wellknown::OUTBOUND_PORT || n == crate::wellknown::ADMIN_PORT {
            report.warn(
                p.position_of("containerPort"),
                &path,
                format!("port {n} is the sidecar's own; Envoy will reject this workload's listeners (see `wardctl status`)"),
            );
        }
    }
    p.finish(report);
    Some(ContainerPort {
        name,
        container_port: number?,
        protocol,
    })
}
