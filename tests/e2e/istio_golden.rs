//! Istio's own golden data for AuthorizationPolicy → Envoy RBAC
//! (`../shared/peer-tests/istio-authz/`, from `pilot/pkg/security/authz/builder/testdata`),
//! checked against Ward in two ways, both through real Envoy:
//!
//! 1. **Decisions.** Two Envoys run side by side: one loads Istio's expected filters (the
//!    `-out.yaml` files, as YAML), the other Ward's translation of the `-in.yaml` policies
//!    (built by the control plane's library, handed over as a binary bootstrap). Each case
//!    gets a listener on each; every request of a set built from the strings the case's
//!    policies mention (methods, paths, hosts, header values) goes to both, and the statuses
//!    must agree. TCP cases compare whether the connection is served. `wardctl check`'s
//!    engine (`wasm_authz::policy::evaluate`) must predict each of Envoy's decisions too, and
//!    a third listener per HTTP case, enforcing the same policies with Ward's wasm filter
//!    instead of RBAC, must answer every request as the RBAC listener does.
//! 2. **Structure.** Ward's filters as Envoy itself renders them (`/config_dump`, keys turned
//!    to camelCase) must equal Istio's expected `typedConfig`, except for the differences
//!    listed in [`KNOWN_DIFFERENCES`]. This covers what plaintext requests cannot reach
//!    (principals, namespaces, IP blocks, JWT claims).
//!
//! The `extended-*` files are the same cases built with Istio's filter-state principal
//! option (`io.istio.peer_principal` instead of `authenticated`): Ward builds the
//! non-extended form, and the non-extended files are the comparison.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::static_envoy::{address, any, get_text, http_manager, start_envoy};
use envoy_types::pb::envoy::config::bootstrap::v3::{bootstrap, Admin, Bootstrap};
use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use serde_json::{json, Value};
use ward_e2e::raw_http;

/// Cases whose expected output Ward does not reproduce on purpose, and why. Their decisions
/// are still compared.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    (
        "allow-host-before-111",
        "Istio's output for proxies older than Envoy 1.11 (case-insensitive regexes); Ward \
         targets Envoy 1.40 and writes the same hosts as ignoreCase string matchers",
    ),
    (
        "simple-policy-td-aliases",
        "trust domain aliases: Ward has one trust domain and does not expand principals to \
         aliases",
    ),
    (
        "simple-policy-multiple-td-aliases",
        "trust domain aliases (see simple-policy-td-aliases)",
    ),
    (
        "simple-policy-principal-with-wildcard",
        "trust domain aliases (see simple-policy-td-aliases)",
    ),
    (
        "td-aliases-source-principal",
        "trust domain aliases (see simple-policy-td-aliases)",
    ),
    (
        "trust-domains",
        "trust domain aliases (see simple-policy-td-aliases)",
    ),
];

/// CUSTOM policies (external authorizers) are refused by Ward's loader with file and line,
/// so nothing they would deny gets through; their cases are checked for that refusal.
const REFUSED_INPUTS: &[&str] = &[
    "custom-simple-http",
    "custom-bad-multiple-providers",
    "custom-both-http-tcp",
    "custom-only-http",
];

/// Ward-only fields, removed before the structural comparison: `rulesStatPrefix` keeps the
/// DENY and ALLOW filters' access-log metadata apart.
const WARD_ONLY_FIELDS: &[&str] = &["rulesStatPrefix"];

fn golden_dir() -> PathBuf {
    ward_e2e::workspace_root().join("../shared/peer-tests/istio-authz")
}

/// The workload every golden case selects: `app: httpbin, version: v1` in namespace foo.
fn httpbin_mesh(tcp: bool, trust_domain: Option<&str>) -> String {
    let port_name = if tcp { "tcp" } else { "http" };
    let mut text = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: sleep, namespace: foo}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: httpbin, namespace: foo}}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: httpbin, namespace: foo}}\n\
         spec:\n  selector: {{matchLabels: {{app: httpbin}}}}\n  template:\n    metadata: {{labels: {{app: httpbin, version: v1}}}}\n    spec:\n      serviceAccountName: httpbin\n      containers: [{{name: httpbin, image: hashicorp/http-echo, ports: [{{containerPort: 8000}}]}}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: httpbin, namespace: foo}}\n\
         spec:\n  selector: {{app: httpbin}}\n  ports: [{{name: {port_name}, port: 80, targetPort: 8000}}]\n"
    );
    if let Some(td) = trust_domain {
        text.push_str(&format!(
            "---\napiVersion: ward.dev/v1alpha1\nkind: MeshConfig\nspec: {{trustDomain: {td}}}\n"
        ));
    }
    text
}

struct Case {
    name: String,
    /// `http/NAME` or `tcp/NAME`: names repeat across the two folders.
    id: String,
    tcp: bool,
    input: String,
    /// Istio's expected filters, in order (`typedConfig` of each).
    expected: Vec<Value>,
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (folder, tcp) in [("http", false), ("tcp", true)] {
        let dir = golden_dir().join(folder);
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with("-in.yaml"))
            .collect();
        inputs.sort();
        for input in inputs {
            let file = input.file_name().unwrap().to_string_lossy().into_owned();
            let name = file.trim_end_matches("-in.yaml").to_string();
            if name.starts_with("extended-") {
                continue;
            }
            let outputs: Vec<Value> = ["-out.yaml", "-out1.yaml", "-out2.yaml"]
                .iter()
                .map(|suffix| dir.join(format!("{name}{suffix}")))
                .filter(|p| p.is_file())
                .map(|p| yaml_file_to_json(&p)["typedConfig"].clone())
                .collect();
            cases.push(Case {
                id: format!("{folder}/{name}"),
                name,
                tcp,
                input: std::fs::read_to_string(&input).unwrap(),
                expected: outputs,
            });
        }
    }
    cases
}

fn yaml_file_to_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    yaml_to_json(&docs[0])
}

fn yaml_to_json(yaml: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match yaml {
        Yaml::Real(r) => r.parse::<f64>().map(|f| json!(f)).unwrap_or(Value::Null),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => json!(s),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// Trust domain per case, as Istio's test builds them (the peer-tests README).
fn trust_domain(case: &str) -> Option<&'static str> {
    match case {
        "simple-policy-td-aliases"
        | "simple-policy-multiple-td-aliases"
        | "simple-policy-principal-with-wildcard" => Some("td1"),
        "td-aliases-source-principal" => Some("new-td"),
        _ => None,
    }
}

/// What Ward builds for a case: Err(diagnostics) when its loader refuses the input.
struct Translated {
    built: Built,
    /// The policies selecting httpbin, for `wardctl check`'s engine.
    policies: Vec<wasm_authz::policy::AuthorizationPolicy>,
}

enum Built {
    Http(Vec<Any>),
    Tcp(Vec<Filter>),
}

fn ward_filters(case: &Case) -> Result<Translated, String> {
    let mesh_text = httpbin_mesh(case.tcp, trust_domain(&case.name));
    let loaded = ward_config::load_sources(&[
        ("mesh.yaml".to_string(), mesh_text),
        (format!("{}-in.yaml", case.name), case.input.clone()),
    ])
    .map_err(|e| e.to_string())?;
    let mesh = loaded.mesh;
    let workload = mesh.workload("foo", "httpbin").unwrap();
    let policies = mesh.authorization_policies_for(workload);
    let built = if case.tcp {
        Built::Tcp(ward_xds::rbac::network_filters(&policies))
    } else {
        Built::Http(
            ward_xds::rbac::http_configs(&policies)
                .into_iter()
                .map(|(_, config)| any(&config))
                .collect(),
        )
    };
    Ok(Translated {
        built,
        policies: policies.into_iter().cloned().collect(),
    })
}

/// HTTP filters for RBAC configs, named `rbac-N`.
fn rbac_filters(rbac: &[Any]) -> Vec<HttpFilter> {
    rbac.iter()
        .enumerate()
        .map(|(i, config)| HttpFilter {
            name: format!("rbac-{i}"),
            config_type: Some(http_filter::ConfigType::TypedConfig(config.clone())),
            ..Default::default()
        })
        .collect()
}

/// A listener that answers 200 `ok` to what its RBAC filters let through. On TCP the
/// network RBAC filters sit in front of the same HTTP manager: they decide on the first
/// bytes, before anything answers.
fn ward_listener(name: &str, ip: &str, built: &Built) -> Listener {
    let filters = match built {
        Built::Http(configs) => vec![http_manager(name, rbac_filters(configs))],
        Built::Tcp(rbac) => {
            let mut filters = rbac.clone();
            filters.push(http_manager(name, Vec::new()));
            filters
        }
    };
    listener(name, ip, filters)
}

/// The same case enforced by Ward's wasm engine instead of RBAC: the `ward-authz` filter
/// with the case's policies in its configuration.
fn wasm_listener(
    name: &str,
    ip: &str,
    policies: &[wasm_authz::policy::AuthorizationPolicy],
) -> Listener {
    let configuration = json!({
        "workload": "httpbin",
        "namespace": "foo",
        "identity": "spiffe://cluster.local/ns/foo/sa/httpbin",
        "version": "golden",
        "authorization": {"policies": policies}
    });
    let filter = ward_xds::wasm_http_filter(
        &ward_e2e::wasm_module().display().to_string(),
        configuration.to_string(),
    );
    listener(name, ip, vec![http_manager(name, vec![filter])])
}

fn listener(name: &str, ip: &str, filters: Vec<Filter>) -> Listener {
    crate::static_envoy::listener(name, ip, PORT, filters)
}

/// The same listener with Istio's expected filters, as JSON for a JSON bootstrap.
fn istio_listener(name: &str, ip: &str, case: &Case) -> Value {
    let address = json!({"socket_address": {"address": ip, "port_value": PORT}});
    let manager = |http_rbac: &[Value]| {
        let mut http_filters: Vec<Value> = http_rbac
            .iter()
            .enumerate()
            .map(|(i, config)| json!({"name": format!("rbac-{i}"), "typed_config": config}))
            .collect();
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
        }));
        json!({
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
                ]}]},
                "http_filters": http_filters
            }
        })
    };
    let filters = if case.tcp {
        let mut filters: Vec<Value> = case
            .expected
            .iter()
            .map(|config| json!({"name": "envoy.filters.network.rbac", "typed_config": config}))
            .collect();
        filters.push(manager(&[]));
        filters
    } else {
        vec![manager(&case.expected)]
    };
    json!({"name": name, "address": address, "filter_chains": [{"filters": filters}]})
}

/// Every listener and admin endpoint uses this port, each on its own loopback address
/// (`127.78.1.N` for Ward's Envoy, `127.78.2.N` for Istio's), so no two can collide.
const PORT: u16 = 18078;

/// The loopback address of listener `index` of Envoy `side` (1 Ward, 2 Istio); index 0 is
/// the admin endpoint.
fn ip(side: u8, index: usize) -> String {
    format!("127.78.{side}.{}", index + 1)
}

/// One request: (method, path, host, extra headers).
type Probe = (String, String, String, Vec<(String, String)>);

/// Requests built from every string the case's policies mention, with `*` made concrete,
/// plus plain ones: each value is sent where it could match (method, path, host, header).
fn probes(case: &Case) -> Vec<Probe> {
    let docs = yaml_rust2::YamlLoader::load_from_str(&case.input).unwrap();
    let mut strings = Vec::new();
    let mut headers = vec!["x-header".to_string()];
    fn walk(y: &yaml_rust2::Yaml, out: &mut Vec<String>, headers: &mut Vec<String>) {
        use yaml_rust2::Yaml;
        match y {
            Yaml::String(s) => {
                if let Some(name) = s
                    .strip_prefix("request.headers[")
                    .and_then(|r| r.strip_suffix(']'))
                {
                    headers.push(name.to_ascii_lowercase());
                }
                out.push(s.clone());
            }
            Yaml::Array(items) => items.iter().for_each(|i| walk(i, out, headers)),
            Yaml::Hash(map) => map.values().for_each(|v| walk(v, out, headers)),
            _ => {}
        }
    }
    for doc in &docs {
        walk(&doc["spec"], &mut strings, &mut headers);
    }
    let concrete = |s: &str| {
        s.replace("{**}", "a/b")
            .replace("{*}", "a")
            .replace('*', "zz")
    };
    let mut probes: Vec<Probe> = vec![
        ("GET".into(), "/".into(), "httpbin".into(), vec![]),
        ("POST".into(), "/other".into(), "httpbin".into(), vec![]),
    ];
    for s in strings.iter().filter(|s| !s.is_empty()) {
        let value = concrete(s);
        let token = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if value.starts_with('/') {
            probes.push(("GET".into(), value.clone(), "httpbin".into(), vec![]));
        }
        if token && value.chars().any(|c| c.is_ascii_uppercase()) || value.contains("method") {
            probes.push((value.clone(), "/".into(), "httpbin".into(), vec![]));
        }
        if token {
            probes.push(("GET".into(), "/".into(), value.clone(), vec![]));
            for header in &headers {
                probes.push((
                    "GET".into(),
                    "/".into(),
                    "httpbin".into(),
                    vec![(header.clone(), value.clone())],
                ));
            }
        }
    }
    // Combinations too: a rule that needs a method and a path together is only reached by a
    // request that has both.
    let methods: Vec<String> = probes.iter().map(|p| p.0.clone()).collect();
    let paths: Vec<String> = probes.iter().map(|p| p.1.clone()).collect();
    let hosts: Vec<String> = probes.iter().map(|p| p.2.clone()).collect();
    let mut combined = Vec::new();
    for method in dedup(methods)
        .iter()
        .filter(|m| ["GET", "POST"].contains(&m.as_str()))
    {
        for path in dedup(paths.clone()).iter().take(12) {
            for host in dedup(hosts.clone()).iter().take(6) {
                combined.push((method.clone(), path.clone(), host.clone(), vec![]));
            }
        }
    }
    let with_headers: Vec<Vec<(String, String)>> = probes
        .iter()
        .filter(|p| !p.3.is_empty())
        .map(|p| p.3.clone())
        .collect();
    for headers in with_headers {
        for path in dedup(paths.clone()).iter().take(6) {
            combined.push((
                "GET".into(),
                path.clone(),
                "httpbin".into(),
                headers.clone(),
            ));
        }
    }
    probes.extend(combined);
    probes.sort();
    probes.dedup();
    probes
}

fn dedup(mut items: Vec<String>) -> Vec<String> {
    items.sort();
    items.dedup();
    items
}

/// The status of one HTTP request, or 0 when the connection closed without a response.
fn send(listener: &str, (method, path, host, headers): &Probe) -> u16 {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    raw_http(&format!("{listener}:{PORT}"), request.as_bytes())
        .0
        .unwrap_or(0)
}

/// Whether a TCP connection is served: the network RBAC filters let the bytes of a request
/// through to the HTTP manager behind them, which answers 200.
fn served(listener: &str) -> bool {
    let probe: Probe = ("GET".into(), "/".into(), "httpbin".into(), vec![]);
    send(listener, &probe) == 200
}

/// snake_case keys (Envoy's config_dump) to lowerCamelCase (Istio's YAML); the keys of
/// `policies` are names and stay as they are.
fn camel_case(value: &Value, in_policies: bool) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !WARD_ONLY_FIELDS.contains(&camel(k).as_str()))
                .map(|(k, v)| {
                    let key = if in_policies { k.clone() } else { camel(k) };
                    (
                        key.clone(),
                        camel_case(v, key == "policies" && !in_policies),
                    )
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| camel_case(v, false)).collect()),
        other => other.clone(),
    }
}

fn camel(key: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in key.chars() {
        if c == '_' && !out.is_empty() {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Ward's RBAC filter configs per listener, from Envoy's own config dump.
fn dumped_filters(admin: &str) -> BTreeMap<String, Vec<Value>> {
    let dump: Value = serde_json::from_str(&get_text(admin, "/config_dump").unwrap()).unwrap();
    let mut by_listener = BTreeMap::new();
    for config in dump["configs"].as_array().unwrap() {
        for listener in config["static_listeners"].as_array().into_iter().flatten() {
            let listener = &listener["listener"];
            let name = listener["name"].as_str().unwrap().to_string();
            let filters = listener["filter_chains"][0]["filters"].as_array().unwrap();
            let rbac: Vec<Value> =
                if filters[0]["name"] == "envoy.filters.network.http_connection_manager" {
                    filters[0]["typed_config"]["http_filters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|f| f["name"].as_str().unwrap().starts_with("rbac-"))
                        .map(|f| camel_case(&f["typed_config"], false))
                        .collect()
                } else {
                    filters
                        .iter()
                        .filter(|f| f["name"] == "envoy.filters.network.rbac")
                        .map(|f| camel_case(&f["typed_config"], false))
                        .collect()
                };
            by_listener.insert(name, rbac);
        }
    }
    by_listener
}

#[test]
fn ward_decides_like_istio_on_istios_golden_cases() {
    let dir = std::env::temp_dir().join(format!("ward-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = cases();
    assert!(cases.len() >= 25, "golden data missing: {}", cases.len());

    let mut ward_listeners = Vec::new();
    let mut wasm_ips = BTreeMap::new();
    let mut istio_listeners = Vec::new();
    let mut compared = Vec::new();
    for case in &cases {
        match ward_filters(case) {
            Err(diagnostics) => {
                assert!(
                    REFUSED_INPUTS.contains(&case.name.as_str()),
                    "{}: Ward refused the input:\n{diagnostics}",
                    case.name
                );
                assert!(
                    diagnostics
                        .contains("spec.action: CUSTOM (external authorizers) is not supported"),
                    "{}: {diagnostics}",
                    case.name
                );
            }
            Ok(Translated { built, policies }) => {
                assert!(
                    !REFUSED_INPUTS.contains(&case.name.as_str()),
                    "{}: expected Ward to refuse it",
                    case.name
                );
                if case.expected.is_empty() {
                    // An input whose outputs belong to other (CUSTOM) cases.
                    continue;
                }
                let index = compared.len() + 1;
                let (ward_ip, istio_ip) = (ip(1, index), ip(2, index));
                if !case.tcp {
                    let wasm_ip = ip(3, index);
                    let name = format!("wasm/{}", case.id);
                    ward_listeners.push(wasm_listener(&name, &wasm_ip, &policies));
                    wasm_ips.insert(case.id.clone(), wasm_ip);
                }
                ward_listeners.push(ward_listener(&case.id, &ward_ip, &built));
                istio_listeners.push(istio_listener(&case.id, &istio_ip, case));
                compared.push((case, ward_ip, istio_ip, policies));
            }
        }
    }

    let (ward_admin, istio_admin) = (ip(1, 0), ip(2, 0));
    let admin_address = |ip: &str| format!("{ip}:{PORT}");
    let ward_bootstrap = Bootstrap {
        admin: Some(Admin {
            address: Some(address(&ward_admin, PORT)),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::StaticResources {
            listeners: ward_listeners,
            ..Default::default()
        }),
        ..Default::default()
    };
    let ward_config = dir.join("ward.pb");
    std::fs::write(&ward_config, ward_bootstrap.encode_to_vec()).unwrap();
    let istio_config = dir.join("istio.json");
    std::fs::write(
        &istio_config,
        serde_json::to_string_pretty(&json!({
            "admin": {"address": {"socket_address": {"address": istio_admin, "port_value": PORT}}},
            "static_resources": {"listeners": istio_listeners}
        }))
        .unwrap(),
    )
    .unwrap();
    let ward_envoy = start_envoy(&ward_config, &dir, "ward", admin_address(&ward_admin));
    let istio_envoy = start_envoy(&istio_config, &dir, "istio", admin_address(&istio_admin));

    let mut decision_mismatches = Vec::new();
    let mut requests = 0;
    let mut check_mismatches = Vec::new();
    let mut engine_mismatches = Vec::new();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for (case, ward_ip, istio_ip, policies) in &compared {
        let predicted = |http: Option<wasm_authz::policy::HttpRequest>| {
            let request = wasm_authz::policy::Request {
                destination_port: PORT,
                source_ip: Some("127.0.0.1".parse().unwrap()),
                remote_ip: Some("127.0.0.1".parse().unwrap()),
                http,
                ..Default::default()
            };
            wasm_authz::policy::evaluate(policies, &request).allowed
        };
        if case.tcp {
            requests += 1;
            let (ward, istio) = (served(ward_ip), served(istio_ip));
            *statuses.entry(if ward { 200 } else { 0 }).or_insert(0) += 1;
            if ward != istio {
                decision_mismatches.push(format!(
                    "{}: TCP served: Ward {ward}, Istio {istio}",
                    case.id
                ));
            }
            if predicted(None) != ward {
                check_mismatches.push(format!("{}: TCP: Envoy serves: {ward}", case.id));
            }
            continue;
        }
        for probe in probes(case) {
            requests += 1;
            let (ward, istio) = (send(ward_ip, &probe), send(istio_ip, &probe));
            *statuses.entry(ward).or_insert(0) += 1;
            let wasm = send(&wasm_ips[&case.id], &probe);
            if wasm != ward {
                engine_mismatches.push(format!("{}: {probe:?}: RBAC {ward}, wasm {wasm}", case.id));
            }
            if ward != istio {
                decision_mismatches.push(format!(
                    "{}: {probe:?}: Ward {ward}, Istio {istio}",
                    case.id
                ));
            }
            // `wardctl check`'s engine, wherever Envoy's RBAC decided (not where Envoy
            // refused the request line itself).
            if matches!(ward, 200 | 403) {
                let (method, path, host, headers) = probe.clone();
                let allowed = predicted(Some(wasm_authz::policy::HttpRequest {
                    method,
                    path,
                    host,
                    headers,
                }));
                if allowed != (ward == 200) {
                    check_mismatches.push(format!(
                        "{}: {probe:?}: check allows: {allowed}, Envoy {ward}",
                        case.id
                    ));
                }
            }
        }
    }

    let dumped = dumped_filters(&ward_envoy.admin);
    let mut structure_mismatches = Vec::new();
    for (case, _, _, _) in &compared {
        if KNOWN_DIFFERENCES.iter().any(|(name, _)| *name == case.name) {
            continue;
        }
        let ward = &dumped[&case.id];
        if *ward != case.expected {
            structure_mismatches.push(format!(
                "{}:\n  Ward:  {}\n  Istio: {}",
                case.id,
                serde_json::to_string(ward).unwrap(),
                serde_json::to_string(&case.expected).unwrap()
            ));
        }
    }
    drop(istio_envoy);
    eprintln!(
        "golden cases: {} compared ({} requests, Ward's statuses {:?}), {} refused as CUSTOM, {} with listed structural differences",
        compared.len(),
        requests,
        statuses,
        REFUSED_INPUTS.len(),
        KNOWN_DIFFERENCES.len()
    );
    assert!(
        decision_mismatches.is_empty(),
        "Ward and Istio decide differently:\n{}",
        decision_mismatches.join("\n")
    );
    assert!(
        engine_mismatches.is_empty(),
        "Ward's wasm engine decides differently from its RBAC filters:\n{}",
        engine_mismatches.join("\n")
    );
    assert!(
        check_mismatches.is_empty(),
        "wardctl check's engine predicts differently from Envoy:\n{}",
        check_mismatches.join("\n")
    );
    assert!(
        structure_mismatches.is_empty(),
        "Ward's RBAC differs from Istio's golden output:\n{}",
        structure_mismatches.join("\n\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
