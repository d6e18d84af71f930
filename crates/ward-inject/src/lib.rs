//! `wardctl inject`: adds Ward's sidecar to the pods of Kubernetes manifests, the way
//! `istioctl kube-inject` and `linkerd inject` do, as text edits so everything else in the
//! manifest stays byte for byte as the user wrote it.
//!
//! To each pod template (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob)
//! it adds:
//! - init container `ward-init`: the traffic capture ([`capture`]), written out in full;
//! - init container `ward-bootstrap`: renders the sidecar's Envoy bootstrap from the pod's
//!   identity (`xds-server pod-bootstrap`, downward API);
//! - container `ward-proxy`: Envoy 1.40 (the official image) as uid 1337. In a pod that runs
//!   to completion (Job, CronJob, `restartPolicy` Never or OnFailure) it is a native sidecar
//!   instead (an init container with `restartPolicy: Always`, Kubernetes 1.29 or later), so
//!   the pod completes when its own containers do;
//! - volumes: the bootstrap and the sidecar's credential (memory), the wasm module (an image
//!   volume), the pod's service-account token for audience `ward-xds` (exchanged by
//!   `ward-bootstrap` for the credential at xds-server's `/v1/credential`), and the mesh's
//!   root certificate (ConfigMap `ward-root-cert`, to trust xds-server with);
//! - annotation `ward.dev/injected`, which makes injecting twice change nothing.
//!
//! Pods opting out (`sidecar.istio.io/inject: "false"`, `linkerd.io/inject: disabled`,
//! `ward.dev/inject: "false"`) and host-network pods are left alone, with a note. A
//! `kind: List` (what `kubectl get -o yaml` prints) has each of its items injected.

pub mod capture;

use std::collections::BTreeMap;

use thiserror::Error;

use ward_config::wellknown::{INJECTED_ANNOTATION, ROOT_CERT_CONFIG_MAP};
use ward_config::yaml::{self, Node, Position, Value};

#[derive(Debug, Clone)]
pub struct InjectOptions {
    /// xds-server's Service, `host:port`.
    pub xds_address: String,
    /// xds-server's credential exchange (`https://<service>:15012/v1/credential`).
    pub credential_url: String,
    pub proxy_image: String,
    /// Image with `xds-server` and `iptables` (deploy/docker/xds-server.Dockerfile).
    pub init_image: String,
    /// Image holding the wasm module at `/plugin.wasm` (deploy/docker/wasm-authz.Dockerfile).
    pub wasm_image: String,
    pub trust_domain: String,
}

impl Default for InjectOptions {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        InjectOptions {
            xds_address: "xds-server.ward-system.svc:15010".to_string(),
            credential_url: "https://xds-server.ward-system.svc:15012/v1/credential".to_string(),
            proxy_image: "envoyproxy/envoy:v1.40.0".to_string(),
            init_image: format!("ward/xds-server:{version}"),
            wasm_image: format!("ward/wasm-authz:{version}"),
            trust_domain: ward_config::DEFAULT_TRUST_DOMAIN.to_string(),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum InjectError {
    #[error("{file}: {message}")]
    Yaml { file: String, message: String },
    #[error("{file}:{line}:{column}: {field}: {message}")]
    At {
        file: String,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
}

/// What injection did to a file: its new text and a note per document left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    pub text: String,
    pub injected: Vec<String>,
    pub notes: Vec<String>,
}

/// The opt-out a pod template carries (label or annotation), if any: Istio's, Linkerd's or
/// Ward's own.
fn opted_out(
    annotations: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> Option<(&'static str, &'static str)> {
    [
        ("sidecar.istio.io/inject", "false"),
        ("linkerd.io/inject", "disabled"),
        ("ward.dev/inject", "false"),
    ]
    .into_iter()
    .find(|(k, v)| {
        annotations.get(*k).map(String::as_str) == Some(*v)
            || labels.get(*k).map(String::as_str) == Some(*v)
    })
}

/// Lines to insert before a 0-based line index.
struct Insertion {
    before_line: usize,
    text: String,
}

/// Injects every pod template of `text` (a multi-document YAML file named `file`).
pub fn inject(text: &str, file: &str, options: &InjectOptions) -> Result<Injected, InjectError> {
    let (documents, problems) = yaml::parse_documents(text).map_err(|p| InjectError::At {
        file: file.to_string(),
        line: p.position.line,
        column: p.position.column,
        field: p.field.clone(),
        message: p.message.clone(),
    })?;
    if let Some(p) = problems.first() {
        return Err(InjectError::At {
            file: file.to_string(),
            line: p.position.line,
            column: p.position.column,
            field: p.field.clone(),
            message: p.message.clone(),
        });
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut insertions = Vec::new();
    let mut injected = Vec::new();
    let mut notes = Vec::new();
    let doc = Doc {
        file,
        lines: &lines,
    };
    for document in &documents {
        for object in doc.objects(document)? {
            match doc.inject(object, options)? {
                Outcome::Injected(name, mut edits) => {
                    injected.push(name);
                    insertions.append(&mut edits);
                }
                Outcome::Skipped(Some(note)) => notes.push(note),
                Outcome::Skipped(None) => {}
            }
        }
    }
    // Later insertions first, so earlier line numbers stay right; insertions at the same
    // line keep their order.
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    if out.last().is_some_and(|l| !l.ends_with('\n')) {
        if let Some(last) = out.last_mut() {
            last.push('\n');
        }
    }
    let mut order: Vec<usize> = (0..insertions.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse((insertions[i].before_line, i)));
    // Same line: apply in reverse of their order, so the first ends up first.
    for i in order {
        let insertion = &insertions[i];
        out.insert(insertion.before_line.min(out.len()), insertion.text.clone());
    }
    let mut text_out: String = out.concat();
    if !text.ends_with('\n') && text_out.ends_with('\n') {
        text_out.pop();
    }
    Ok(Injected {
        text: text_out,
        injected,
        notes,
    })
}

enum Outcome {
    Injected(String, Vec<Insertion>),
    Skipped(Option<String>),
}

struct Doc<'a> {
    file: &'a str,
    lines: &'a [&'a str],
}

fn get<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    match &node.value {
        Value::Mapping(entries) => entries.iter().find(|(k, _, _)| k == key).map(|(_, _, v)| v),
        _ => None,
    }
}

fn key_position(node: &Node, key: &str) -> Option<Position> {
    match &node.value {
        Value::Mapping(entries) => entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, p, _)| *p),
        _ => None,
    }
}

fn text_of<'n>(node: &'n Node, key: &str) -> Option<&'n str> {
    get(node, key).and_then(Node::text)
}

fn string_map(node: Option<&Node>) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    if let Some(Node {
        value: Value::Mapping(entries),
        ..
    }) = node
    {
        for (k, _, v) in entries {
            if let Some(text) = v.text() {
                map.insert(k.clone(), text.to_string());
            }
        }
    }
    map
}

/// Indents every line of `block` by `spaces`.
fn indent(block: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    block
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("{pad}{l}\n")
            }
        })
        .collect()
}

impl Doc<'_> {
    fn error(&self, at: Position, field: &str, message: impl Into<String>) -> InjectError {
        InjectError::At {
            file: self.file.to_string(),
            line: at.line,
            column: at.column,
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The column (0-based) of the `-` of the list item starting at `item`.
    fn dash_column(&self, item: Position, field: &str) -> Result<usize, InjectError> {
        let line = self.lines.get(item.line - 1).copied().unwrap_or_default();
        let before: Vec<char> = line.chars().take(item.column - 1).collect();
        before
            .iter()
            .rposition(|c| *c == '-')
            .filter(|&i| before[i + 1..].iter().all(|c| *c == ' '))
            .ok_or_else(|| {
                self.error(
                    item,
                    field,
                    "written in flow style (`[...]`): inject edits block-style lists only",
                )
            })
    }

    fn block_mapping<'n>(&self, node: &'n Node, field: &str) -> Result<&'n Node, InjectError> {
        let line = self
            .lines
            .get(node.position.line - 1)
            .copied()
            .unwrap_or_default();
        let flow = line
            .chars()
            .nth(node.position.column.saturating_sub(1))
            .is_some_and(|c| c == '{');
        match &node.value {
            Value::Mapping(entries) if !entries.is_empty() && !flow => Ok(node),
            _ => Err(self.error(
                node.position,
                field,
                "expected a block-style mapping: inject edits those only",
            )),
        }
    }

    /// The objects of a document: itself, or the items of a `kind: List`.
    fn objects<'n>(&self, document: &'n Node) -> Result<Vec<&'n Node>, InjectError> {
        if text_of(document, "kind") != Some("List") {
            return Ok(vec![document]);
        }
        match get(document, "items").map(|n| (&n.value, n.position)) {
            Some((Value::Sequence(items), _)) => Ok(items.iter().collect()),
            None => Ok(Vec::new()),
            Some((_, at)) => Err(self.error(at, "items", "expected a list of objects")),
        }
    }

    fn inject(&self, document: &Node, options: &InjectOptions) -> Result<Outcome, InjectError> {
        let Some(kind) = text_of(document, "kind") else {
            return Ok(Outcome::Skipped(None));
        };
        let name = get(document, "metadata")
            .and_then(|m| text_of(m, "name"))
            .unwrap_or("?")
            .to_string();
        // The pod template: its metadata's parent and its spec.
        let (template, prefix) = match kind {
            "Pod" => (Some(document), ""),
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => (
                get(document, "spec").and_then(|s| get(s, "template")),
                "spec.template.",
            ),
            "CronJob" => (
                get(document, "spec")
                    .and_then(|s| get(s, "jobTemplate"))
                    .and_then(|s| get(s, "spec"))
                    .and_then(|s| get(s, "template")),
                "spec.jobTemplate.spec.template.",
            ),
            _ => return Ok(Outcome::Skipped(None)),
        };
        let described = format!("{kind} {name}");
        let Some(template) = template else {
            return Err(self.error(
                document.position,
                &format!("{prefix}spec"),
                format!("{described} has no pod template"),
            ));
        };
        let metadata = get(template, "metadata");
        let annotations = string_map(metadata.and_then(|m| get(m, "annotations")));
        let labels = string_map(metadata.and_then(|m| get(m, "labels")));
        if annotations.contains_key(INJECTED_ANNOTATION) {
            return Ok(Outcome::Skipped(None));
        }
        let opted_out = opted_out(&annotations, &labels);
        if let Some((k, v)) = opted_out {
            return Ok(Outcome::Skipped(Some(format!(
                "{}: {described}: not injected ({k}: {v})",
                self.file
            ))));
        }
        let spec = get(template, "spec").ok_or_else(|| {
            self.error(
                template.position,
                &format!("{prefix}spec"),
                "the pod template has no spec",
            )
        })?;
        let spec = self.block_mapping(spec, &format!("{prefix}spec"))?;
        if get(spec, "hostNetwork").and_then(Node::text) == Some("true") {
            return Ok(Outcome::Skipped(Some(format!(
                "{}: {described}: not injected (hostNetwork: the sidecar would capture the node's traffic)",
                self.file
            ))));
        }
        let capture = capture::CaptureOptions::from_annotations(&annotations).map_err(|e| {
            // At the annotation's own value.
            let at = metadata
                .and_then(|m| get(m, "annotations"))
                .and_then(|a| get(a, &e.annotation))
                .or(metadata)
                .map_or(template.position, |n| n.position);
            self.error(at, &format!("{prefix}metadata.annotations"), e.to_string())
        })?;
        let service_account = text_of(spec, "serviceAccountName")
            .or_else(|| text_of(spec, "serviceAccount"))
            .unwrap_or("default")
            .to_string();
        // The pod's owner names the workload (a bare Pod is its own).
        let workload = name.clone();
        let native_sidecar =
            matches!(kind, "Job" | "CronJob") || runs_to_completion(text_of(spec, "restartPolicy"));

        let mut edits = Vec::new();
        // The annotation.
        let marker = format!("{INJECTED_ANNOTATION}: \"{}\"\n", env!("CARGO_PKG_VERSION"));
        match metadata {
            Some(metadata) => {
                let metadata = self.block_mapping(metadata, &format!("{prefix}metadata"))?;
                match get(metadata, "annotations") {
                    Some(existing) => {
                        let existing =
                            self.block_mapping(existing, &format!("{prefix}metadata.annotations"))?;
                        let Value::Mapping(entries) = &existing.value else {
                            unreachable!("checked by block_mapping")
                        };
                        let first = entries[0].1;
                        edits.push(Insertion {
                            before_line: first.line - 1,
                            text: indent(&marker, first.column - 1),
                        });
                    }
                    None => {
                        let Value::Mapping(entries) = &metadata.value else {
                            unreachable!("checked by block_mapping")
                        };
                        let first = entries[0].1;
                        edits.push(Insertion {
                            before_line: first.line - 1,
                            text: indent(&format!("annotations:\n  {marker}"), first.column - 1),
                        });
                    }
                }
            }
            None => {
                let Value::Mapping(entries) = &template.value else {
                    unreachable!("a template with a spec is a mapping")
                };
                let first = entries[0].1;
                edits.push(Insertion {
                    before_line: first.line - 1,
                    text: indent(
                        &format!("metadata:\n  annotations:\n    {marker}"),
                        first.column - 1,
                    ),
                });
            }
        }

        // The lists: new items first in each (the proxy container first, as Linkerd does,
        // so it starts before the app); missing lists go just before `containers:`.
        let containers_key = key_position(spec, "containers").ok_or_else(|| {
            self.error(
                spec.position,
                &format!("{prefix}spec.containers"),
                "the pod has no containers",
            )
        })?;
        let containers_field = format!("{prefix}spec.containers");
        let first_container = match &get(spec, "containers").map(|n| &n.value) {
            Some(Value::Sequence(items)) if !items.is_empty() => items[0].position,
            _ => {
                return Err(self.error(
                    containers_key,
                    &containers_field,
                    "expected a block-style list of containers",
                ))
            }
        };
        let dash = self.dash_column(first_container, &containers_field)?;
        let dash_offset = dash.saturating_sub(containers_key.column - 1);
        let items = Items {
            options,
            capture: &capture,
            service_account: &service_account,
            workload: &workload,
            native_sidecar,
        };
        if !native_sidecar {
            edits.push(Insertion {
                before_line: first_container.line - 1,
                text: indent(&items.proxy_container(), dash),
            });
        }
        for (key, block) in [
            ("initContainers", items.init_containers()),
            ("volumes", items.volumes()),
        ] {
            let field = format!("{prefix}spec.{key}");
            match get(spec, key).map(|n| (&n.value, n.position)) {
                Some((Value::Sequence(list), _)) if !list.is_empty() => {
                    let first = list[0].position;
                    let dash = self.dash_column(first, &field)?;
                    edits.push(Insertion {
                        before_line: first.line - 1,
                        text: indent(&block, dash),
                    });
                }
                Some((_, at)) => {
                    return Err(self.error(at, &field, "expected a block-style list"));
                }
                None => {
                    let key_column = containers_key.column - 1;
                    edits.push(Insertion {
                        before_line: containers_key.line - 1,
                        text: format!(
                            "{}{key}:\n{}",
                            " ".repeat(key_column),
                            indent(&block, key_column + dash_offset)
                        ),
                    });
                }
            }
        }
        Ok(Outcome::Injected(described, edits))
    }
}

/// The injected list items, as YAML at column 0 (`- ` first).
struct Items<'a> {
    options: &'a InjectOptions,
    capture: &'a capture::CaptureOptions,
    service_account: &'a str,
    workload: &'a str,
    /// The proxy is the last init container, with `restartPolicy: Always` (a native
    /// sidecar: it starts before the app, after the bootstrap, and does not keep a pod that
    /// runs to completion from completing).
    native_sidecar: bool,
}

/// A pod whose `restartPolicy` lets it complete: a plain proxy container would keep it
/// running forever.
fn runs_to_completion(restart_policy: Option<&str>) -> bool {
    matches!(restart_policy, Some("Never" | "OnFailure"))
}

const BOOTSTRAP_DIR: &str = "/etc/ward/bootstrap";
const WASM_DIR: &str = "/etc/ward/wasm";
const CREDENTIALS_DIR: &str = "/etc/ward/credentials";
const TOKEN_DIR: &str = "/var/run/secrets/ward";
const ROOT_DIR: &str = "/etc/ward/root";

impl Items<'_> {
    fn proxy_container(&self) -> String {
        format!(
            r#"- name: ward-proxy
  image: {image}
{restart}  args: ["-c", "{BOOTSTRAP_DIR}/envoy.json", "--disable-hot-restart", "--log-level", "warning"]
  ports:
  - name: ward-admin
    containerPort: {admin}
  securityContext:
    runAsUser: {uid}
    runAsGroup: {uid}
    runAsNonRoot: true
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
  resources:
    requests:
      cpu: 10m
      memory: 40Mi
  volumeMounts:
  - name: ward-bootstrap
    mountPath: {BOOTSTRAP_DIR}
    readOnly: true
  - name: ward-wasm
    mountPath: {WASM_DIR}
    readOnly: true
  - name: ward-credentials
    mountPath: {CREDENTIALS_DIR}
    readOnly: true
"#,
            image = self.options.proxy_image,
            restart = if self.native_sidecar {
                "  restartPolicy: Always\n"
            } else {
                ""
            },
            admin = capture::ADMIN_PORT,
            uid = capture::PROXY_UID,
        )
    }

    fn init_containers(&self) -> String {
        let rules = indent(&self.capture.iptables_restore(), 4);
        let sidecar = if self.native_sidecar {
            self.proxy_container()
        } else {
            String::new()
        };
        let env = |name: &str, path: &str| {
            format!(
                "  - name: {name}\n    valueFrom:\n      fieldRef:\n        fieldPath: {path}\n"
            )
        };
        format!(
            r#"- name: ward-init
  image: {init_image}
  command: ["sh", "-c"]
  args:
  - |
    iptables-restore --noflush <<'EOF'
{rules}    EOF
  securityContext:
    runAsUser: 0
    runAsNonRoot: false
    capabilities:
      add: ["NET_ADMIN", "NET_RAW"]
      drop: ["ALL"]
- name: ward-bootstrap
  image: {init_image}
  command: ["xds-server", "pod-bootstrap"]
  args: ["--xds-address", "{xds}", "--token-file", "{TOKEN_DIR}/token", "--credential-url", "{credential_url}", "--root-cert", "{ROOT_DIR}/root-cert.pem", "--credentials-dir", "{CREDENTIALS_DIR}", "--wasm-module", "{WASM_DIR}/plugin.wasm", "--out", "{BOOTSTRAP_DIR}/envoy.json"]
  env:
{pod_name}{pod_namespace}{pod_ip}  - name: SERVICE_ACCOUNT
    value: "{service_account}"
  - name: WARD_WORKLOAD
    value: "{workload}"
  - name: WARD_TRUST_DOMAIN
    value: "{trust_domain}"
  securityContext:
    runAsUser: {uid}
    runAsNonRoot: true
    allowPrivilegeEscalation: false
  volumeMounts:
  - name: ward-bootstrap
    mountPath: {BOOTSTRAP_DIR}
  - name: ward-wasm
    mountPath: {WASM_DIR}
    readOnly: true
  - name: ward-credentials
    mountPath: {CREDENTIALS_DIR}
  - name: ward-token
    mountPath: {TOKEN_DIR}
    readOnly: true
  - name: ward-root-cert
    mountPath: {ROOT_DIR}
    readOnly: true
{sidecar}"#,
            init_image = self.options.init_image,
            credential_url = self.options.credential_url,
            xds = self.options.xds_address,
            pod_name = env("POD_NAME", "metadata.name"),
            pod_namespace = env("POD_NAMESPACE", "metadata.namespace"),
            pod_ip = env("POD_IP", "status.podIP"),
            service_account = self.service_account,
            workload = self.workload,
            trust_domain = self.options.trust_domain,
            uid = capture::PROXY_UID,
        )
    }

    fn volumes(&self) -> String {
        format!(
            r#"- name: ward-bootstrap
  emptyDir:
    medium: Memory
- name: ward-wasm
  image:
    reference: {wasm_image}
    pullPolicy: IfNotPresent
- name: ward-credentials
  emptyDir:
    medium: Memory
- name: ward-token
  projected:
    sources:
    - serviceAccountToken:
        audience: ward-xds
        expirationSeconds: 3600
        path: token
- name: ward-root-cert
  configMap:
    name: {ROOT_CERT_CONFIG_MAP}
"#,
            wasm_image = self.options.wasm_image,
        )
    }
}

/// Node → JSON, scalars typed by YAML 1.2's core schema (as Kubernetes reads YAML).
fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as Json;
    match &node.value {
        Value::Mapping(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, _, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
        Value::Sequence(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Scalar { .. } => match node.scalar() {
            Some(yaml::Scalar::Null) | None => Json::Null,
            Some(yaml::Scalar::Bool(b)) => Json::Bool(b),
            Some(yaml::Scalar::Int(i)) => serde_json::json!(i as i64),
            Some(yaml::Scalar::Float) => node
                .text()
                .and_then(|t| t.parse::<f64>().ok())
                .map_or(Json::Null, |f| serde_json::json!(f)),
            Some(yaml::Scalar::Str(s)) => Json::String(s.to_string()),
        },
    }
}

/// A list of injected items (rendered as YAML above) as JSON values.
fn items_json(block: &str) -> Vec<serde_json::Value> {
    let (documents, _) = yaml::parse_documents(block).expect("Ward's own templates parse");
    match documents.first().map(to_json) {
        Some(serde_json::Value::Array(items)) => items,
        _ => unreachable!("the templates are lists"),
    }
}

/// The mutating admission webhook's answer for one Pod (`AdmissionReview.request.object`):
/// the JSON Patch that adds what [`inject`] adds to a manifest (the same items, from the
/// same templates), or None when the pod is left alone (opted out, host network, injected
/// already). Errors are capture annotations Ward cannot read.
pub fn pod_patch(
    pod: &serde_json::Value,
    options: &InjectOptions,
) -> Result<Option<Vec<serde_json::Value>>, capture::AnnotationError> {
    use serde_json::json;
    let strings = |v: &serde_json::Value| -> BTreeMap<String, String> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let annotations = strings(&pod["metadata"]["annotations"]);
    let labels = strings(&pod["metadata"]["labels"]);
    if opted_out(&annotations, &labels).is_some()
        || annotations.contains_key(INJECTED_ANNOTATION)
        || pod["spec"]["hostNetwork"] == json!(true)
    {
        return Ok(None);
    }
    let capture = capture::CaptureOptions::from_annotations(&annotations)?;
    let service_account = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    // A pod from a controller has no name yet: its workload is its app label, or its
    // generated name's prefix.
    let workload = labels
        .get("app.kubernetes.io/name")
        .or_else(|| labels.get("app"))
        .cloned()
        .or_else(|| pod["metadata"]["name"].as_str().map(str::to_string))
        .or_else(|| {
            pod["metadata"]["generateName"]
                .as_str()
                .map(|g| g.trim_end_matches('-').to_string())
        })
        .unwrap_or_else(|| "pod".to_string());
    let native_sidecar = runs_to_completion(pod["spec"]["restartPolicy"].as_str());
    let items = Items {
        options,
        capture: &capture,
        service_account: &service_account,
        workload: &workload,
        native_sidecar,
    };
    let mut patch = Vec::new();
    if pod["metadata"]["annotations"].is_object() {
        patch.push(
            json!({"op": "add", "path": "/metadata/annotations/ward.dev~1injected",
            "value": env!("CARGO_PKG_VERSION")}),
        );
    } else {
        patch.push(json!({"op": "add", "path": "/metadata/annotations",
            "value": {INJECTED_ANNOTATION: env!("CARGO_PKG_VERSION")}}));
    }
    for (key, block) in [
        ("initContainers", items.init_containers()),
        (
            "containers",
            if native_sidecar {
                String::new()
            } else {
                items.proxy_container()
            },
        ),
        ("volumes", items.volumes()),
    ] {
        if block.is_empty() {
            continue;
        }
        let new = items_json(&block);
        if pod["spec"][key].as_array().is_some_and(|l| !l.is_empty()) {
            // First, in order, as the text injection does.
            for (i, item) in new.into_iter().enumerate() {
                patch.push(json!({"op": "add", "path": format!("/spec/{key}/{i}"), "value": item}));
            }
        } else {
            patch.push(json!({"op": "add", "path": format!("/spec/{key}"), "value": new}));
        }
    }
    Ok(Some(patch))
}

#[cfg(test)]
mod tests;
