//! Decoding of the kinds Ward understands from positioned YAML documents.

use std::collections::BTreeMap;

use super::decode::{integer, Object, Report};
use super::yaml::{Node, Position, Value};

#[derive(Debug, Clone)]
pub struct Meta {
    pub name: String,
    pub namespace: String,
    pub position: Position,
}

#[derive(Debug, Clone)]
pub struct DeploymentSpec {
    pub meta: Meta,
    pub replicas: u32,
    pub template_labels: BTreeMap<String, String>,
    pub template_annotations: BTreeMap<String, String>,
    pub service_account: String,
    pub containers: Vec<crate::model::Container>,
}

#[derive(Debug, Clone)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone)]
pub struct ServicePortSpec {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: TargetPort,
    pub target_position: Position,
    pub target_path: String,
    pub protocol: String,
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub meta: Meta,
    pub selector: BTreeMap<String, String>,
    pub selector_position: Position,
    pub ports: Vec<ServicePortSpec>,
}

#[derive(Debug, Clone)]
pub struct MeshConfigSpec {
    pub trust_domain: Option<String>,
    pub root_namespace: Option<String>,
    pub position: Position,
}

#[derive(Debug, Clone)]
pub enum Document {
    Namespace(Meta),
    ServiceAccount(Meta),
    Service(ServiceSpec),
    Deployment(DeploymentSpec),
    MeshConfig(MeshConfigSpec),
}

impl Document {
    /// (kind, namespace, name) for duplicate detection.
    pub fn identity(&self) -> (&'static str, String, String) {
        match self {
            Document::Namespace(m) => ("Namespace", String::new(), m.name.clone()),
            Document::ServiceAccount(m) => ("ServiceAccount", m.namespace.clone(), m.name.clone()),
            Document::Service(s) => ("Service", s.meta.namespace.clone(), s.meta.name.clone()),
            Document::Deployment(d) => {
                ("Deployment", d.meta.namespace.clone(), d.meta.name.clone())
            }
            Document::MeshConfig(_) => ("MeshConfig", String::new(), String::new()),
        }
    }

    pub fn position(&self) -> Position {
        match self {
            Document::Namespace(m) | Document::ServiceAccount(m) => m.position,
            Document::Service(s) => s.meta.position,
            Document::Deployment(d) => d.meta.position,
            Document::MeshConfig(m) => m.position,
        }
    }
}

/// Kubernetes bookkeeping that carries no meaning for Ward: accepted without a warning.
const METADATA_BOOKKEEPING: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "managedFields",
    "generation",
    "selfLink",
    "generateName",
];

fn decode_meta(doc: &Object, report: &mut Report, namespaced: bool) -> Option<Meta> {
    let Some(meta) = doc.object("metadata", report) else {
        if !doc.has("metadata") {
            report.error(doc.position, "metadata", "required field is missing");
        }
        return None;
    };
    meta.skip(METADATA_BOOKKEEPING);
    let name = meta.required_string("name", report);
    let namespace = if namespaced {
        meta.string("namespace", report)
            .unwrap_or_else(|| "default".to_string())
    } else {
        String::new()
    };
    // Object labels and annotations are checked for shape; Ward acts on the pod template's.
    meta.string_map("labels", report);
    meta.string_map("annotations", report);
    let position = doc.position;
    meta.finish(report);
    Some(Meta {
        name: name?,
        namespace,
        position,
    })
}

/// Decodes one document; None when it is empty, unsupported (warned) or invalid (errors).
pub fn decode_document(node: &Node, report: &mut Report) -> Option<Document> {
    if node.is_null() {
        return None;
    }
    let doc = Object::of(node, "", report)?;
    let api_version = doc.required_string("apiVersion", report);
    let kind = doc.required_string("kind", report);
    let (api_version, kind) = (api_version?, kind?);
    doc.skip(&["status"]);
    let decoded = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => decode_meta(&doc, report, false).map(Document::Namespace),
        ("v1", "ServiceAccount") => {
            doc.skip(&[
                "secrets",
                "imagePullSecrets",
                "automountServiceAccountToken",
            ]);
            decode_meta(&doc, report, true).map(Document::ServiceAccount)
        }
        ("v1", "Service") => decode_service(&doc, report).map(Document::Service),
        ("apps/v1", "Deployment") => decode_deployment(&doc, report).map(Document::Deployment),
        ("ward.dev/v1alpha1", "MeshConfig") => {
            decode_mesh_config(&doc, report).map(Document::MeshConfig)
        }
        _ => {
            report.warn(
                doc.position_of("kind"),
                "kind",
                format!("kind {kind} (apiVersion {api_version}) is not supported by Ward; document ignored"),
            );
            return None;
        }
    };
    doc.finish(report);
    decoded
}

fn decode_mesh_config(doc: &Object, report: &mut Report) -> Option<MeshConfigSpec> {
    if let Some(meta) = doc.object("metadata", report) {
        meta.skip(&["name", "namespace", "labels", "annotations"]);
        meta.skip(METADATA_BOOKKEEPING);
        meta.finish(report);
    }
    let spec = doc.object("spec", report);
    let (trust_domain, root_namespace) = match &spec {
        Some(spec) => (
            spec.string("trustDomain", report),
            spec.string("rootNamespace", report),
        ),
        None => (None, None),
    };
    if let Some(spec) = spec {
        if let Some(defaults) = spec.object("defaults", report) {
            defaults.finish(report);
        }
        spec.finish(report);
    }
    Some(MeshConfigSpec {
        trust_domain,
        root_namespace,
        position: doc.position,
    })
}

fn port_number(node: &Node, path: &str, report: &mut Report) -> Option<u16> {
    integer(node, path, 1, 65535, report).map(|p| p as u16)
}

fn decode_service(doc: &Object, report: &mut Report) -> Option<ServiceSpec> {
    let meta = decode_meta(doc, report, true);
    let spec = doc.object("spec", report);
    let Some(spec) = spec else {
        report.error(doc.position, "spec", "required field is missing");
        return None;
    };
    let selector_position = spec.position_of("selector");
    let selector = spec.string_map("selector", report);
    if let Some(kind) = spec.string("type", report) {
        if kind != "ClusterIP" {
            report.warn(
                spec.position_of("type"),
                "spec.type",
                format!("type {kind} is treated as ClusterIP: Ward exposes services inside the mesh only"),
            );
        }
    }
    if spec.has("clusterIP") {
        let _ = spec.get("clusterIP");
        report.warn(
            spec.position_of("clusterIP"),
            "spec.clusterIP",
            "ignored: Ward routes by service name, not by cluster IP",
        );
    }
    let mut ports = Vec::new();
    let port_items = spec.list("ports", report);
    if port_items.is_empty() && !spec.has("ports") {
        report.error(spec.position, "spec.ports", "required field is missing");
    }
    for (path, node) in port_items {
        let Some(item) = Object::of(node, &path, report) else {
            continue;
        };
        let name = item.string("name", report);
        let port = match item.get("port") {
            Some(n) => port_number(n, &item.field_path("port"), report),
            None => {
                report.error(
                    item.position,
                    &item.field_path("port"),
                    "required field is missing",
                );
                None
            }
        };
        let target_path = item.field_path("targetPort");
        let target_position = item.position_of("targetPort");
        let target_port = match item.get("targetPort") {
            None => port.map(TargetPort::Number),
            Some(n) => match &n.value {
                Value::Scalar {
                    text,
                    quoted: false,
                } if text.chars().all(|c| c.is_ascii_digit()) => {
                    port_number(n, &target_path, report).map(TargetPort::Number)
                }
                Value::Scalar { text, .. } => Some(TargetPort::Name(text.clone())),
                _ => {
                    report.error(
                        n.position,
                        &target_path,
                        format!("expected a port number or name, found {}", n.kind_name()),
                    );
                    None
                }
            },
        };
        let protocol = item
            .string("protocol", report)
            .unwrap_or_else(|| "TCP".to_string());
        if protocol != "TCP" {
            report.warn(
                item.position_of("protocol"),
                &item.field_path("protocol"),
                format!("protocol {protocol} is not supported by Ward; only TCP is proxied"),
            );
        }
        let app_protocol = item.string("appProtocol", report);
        if item.has("nodePort") {
            let _ = item.get("nodePort");
            report.warn(
                item.position_of("nodePort"),
                &item.field_path("nodePort"),
                "ignored: not supported by Ward",
            );
        }
        item.finish(report);
        if let (Some(port), Some(target_port)) = (port, target_port) {
            ports.push(ServicePortSpec {
                name,
                port,
                target_port,
                target_position,
                target_path,
                protocol,
                app_protocol,
            });
        }
    }
    spec.finish(report);
    Some(ServiceSpec {
        meta: meta?,
        selector,
        selector_position,
        ports,
    })
}

fn decode_deployment(doc: &Object, report: &mut Report) -> Option<DeploymentSpec> {
    let meta = decode_meta(doc, report, true);
    let Some(spec) = doc.object("spec", report) else {
        report.error(doc.position, "spec", "required field is missing");
        return None;
    };
    let replicas = match spec.get("replicas") {
        Some(n) => integer(n, "spec.replicas", 0, 100, report).map(|r| r as u32),
        None => Some(1),
    };
    spec.skip(&[
        "strategy",
        "revisionHistoryLimit",
        "progressDeadlineSeconds",
        "minReadySeconds",
        "paused",
    ]);
    let match_labels = spec
        .object("selector", report)
        .map(|selector| {
            let labels = selector.string_map("matchLabels", report);
            selector.finish(report);
            labels
        })
        .unwrap_or_default();
    if !spec.has("selector") {
        report.error(spec.position, "spec.selector", "required field is missing");
    }
    let Some(template) = spec.object("template", report) else {
        report.error(spec.position, "spec.template", "required field is missing");
        spec.finish(report);
        return None;
    };
    let (template_labels, template_annotations) = match template.object("metadata", report) {
        Some(tm) => {
            let labels = tm.string_map("labels", report);
            let annotations = tm.string_map("annotations", report);
            tm.skip(&["name", "namespace", "creationTimestamp"]);
            tm.finish(report);
            (labels, annotations)
        }
        None => Default::default(),
    };
    for (k, v) in &match_labels {
        if template_labels.get(k) != Some(v) {
            report.error(
                spec.position_of("selector"),
                "spec.selector.matchLabels",
                format!("selector {k}={v} does not match the template's labels (Kubernetes rejects this Deployment)"),
            );
        }
    }
    let mut service_account = "default".to_string();
    let mut containers = Vec::new();
    if let Some(pod) = template.object("spec", report) {
        if let Some(sa) = pod.string("serviceAccountName", report) {
            service_account = sa;
        } else if let Some(sa) = pod.string("serviceAccount", report) {
            service_account = sa;
        }
        pod.skip(&[
            "restartPolicy",
            "terminationGracePeriodSeconds",
            "dnsPolicy",
            "schedulerName",
        ]);
        for (path, node) in pod.list("containers", report) {
            if let Some(c) = decode_container(node, &path, report) {
                containers.push(c);
            }
        }
        if containers.is_empty() && !pod.has("containers") {
            report.error(
                pod.position,
                "spec.template.spec.containers",
                "required field is missing",
            );
        }
        pod.finish(report);
    } else {
        report.error(
            template.position,
            "spec.template.spec",
            "required field is missing",
        );
    }
    template.finish(report);
    spec.finish(report);
    Some(DeploymentSpec {
        meta: meta?,
        replicas: replicas?,
        template_labels,
        template_annotations,
        service_account,
        containers,
    })
}

fn decode_container(
    node: &Node,
    path: &str,
    report: &mut Report,
) -> Option<crate::model::Container> {
    let c = Object::of(node, path, report)?;
    let name = c.required_string("name", report);
    let image = c.required_string("image", report);
    let command = c.string_list("command", report);
    let args = c.string_list("args", report);
    c.skip(&[
        "imagePullPolicy",
        "terminationMessagePath",
        "terminationMessagePolicy",
    ]);
    let mut env = Vec::new();
    for (epath, enode) in c.list("env", report) {
        let Some(e) = Object::of(enode, &epath, report) else {
            continue;
        };
        let name = e.required_string("name", report);
        let value = e.string("value", report).unwrap_or_default();
        if e.has("valueFrom") {
            let _ = e.get("valueFrom");
            report.warn(
                e.position_of("valueFrom"),
                &e.field_path("valueFrom"),
                "ignored: valueFrom is not supported by Ward; the variable is set to \"\"",
            );
        }
        e.finish(report);
        if let Some(name) = name {
            env.push((name, value));
        }
    }
    let mut ports = Vec::new();
    for (ppath, pnode) in c.list("ports", report) {
        let Some(p) = Object::of(pnode, &ppath, report) else {
            continue;
        };
        let name = p.string("name", report);
        let number = match p.get("containerPort") {
            Some(n) => port_number(n, &p.field_path("containerPort"), report),
            None => {
                report.error(
                    p.position,
                    &p.field_path("containerPort"),
                    "required field is missing",
                );
                None
            }
        };
        let protocol = p
            .string("protocol", report)
            .unwrap_or_else(|| "TCP".to_string());
        if let Some(n) = number {
            if n == crate::translate::OUTBOUND_PORT || n == crate::translate::ADMIN_PORT {
                report.warn(
                    p.position_of("containerPort"),
                    &p.field_path("containerPort"),
                    format!("port {n} is the sidecar's own; Envoy will reject this workload's listeners (see `wardctl status`)"),
                );
            }
        }
        p.finish(report);
        if let Some(container_port) = number {
            ports.push(crate::model::ContainerPort {
                name,
                container_port,
                protocol,
            });
        }
    }
    c.finish(report);
    Some(crate::model::Container {
        name: name?,
        image: image?,
        command,
        args,
        env,
        ports,
    })
}
