//! Istio kinds: `security.istio.io` PeerAuthentication and `networking.istio.io`
//! DestinationRule, decoded the way Istio reads them. Fields Ward does not act on are
//! reported by `Object::finish`, never dropped silently.

use std::collections::BTreeMap;

use crate::decode::{integer, number, Object, IGNORED};
use crate::diagnostic::Report;
use crate::kinds::{decode_meta, Meta};
use crate::model::{
    ClientTls, ClientTlsMode, ConcurrencyRetryBudget, ConnectionPool, HashKey, LoadBalancer,
    MtlsMode, OutlierDetectionPolicy, Subset, TrafficPolicy,
};
use crate::names::Rule;
use crate::yaml::{Node, Position};

pub const SECURITY_VERSIONS: &[&str] = &["security.istio.io/v1beta1", "security.istio.io/v1"];
pub const NETWORKING_VERSIONS: &[&str] = &[
    "networking.istio.io/v1alpha3",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1",
];

#[derive(Debug, Clone)]
pub struct PeerAuthenticationSpec {
    pub meta: Meta,
    pub selector: Option<BTreeMap<String, String>>,
    pub selector_position: Position,
    pub mode: MtlsMode,
    pub port_level: BTreeMap<u16, MtlsMode>,
    pub port_level_position: Position,
}

#[derive(Debug, Clone)]
pub struct DestinationRuleSpec {
    pub meta: Meta,
    /// As written.
    pub host: String,
    pub host_position: Position,
    pub policy: TrafficPolicy,
    pub policy_position: Position,
    /// With where each is written.
    pub subsets: Vec<(Subset, Position)>,
}

/// `selector.matchLabels` (Istio's WorkloadSelector); None when absent. An empty selector
/// selects every workload in the namespace in Istio, so it counts as absent too.
pub(super) fn workload_selector(
    spec: &Object,
    report: &mut Report,
) -> Option<BTreeMap<String, String>> {
    let selector = spec.object("selector", report)?;
    let labels = selector.string_map("matchLabels", report);
    selector.finish(report);
    (!labels.is_empty()).then_some(labels)
}

fn mtls_mode(node: &Node, path: &str, report: &mut Report) -> Option<MtlsMode> {
    let object = Object::of(node, path, report)?;
    let mode = match object.string("mode", report).as_deref() {
        None | Some("UNSET") => MtlsMode::Unset,
        Some("DISABLE") => MtlsMode::Disable,
        Some("PERMISSIVE") => MtlsMode::Permissive,
        Some("STRICT") => MtlsMode::Strict,
        Some(other) => {
            report.error(
                object.position_of("mode"),
                &object.field_path("mode"),
                format!(
                    "unknown mTLS mode `{other}`: expected UNSET, DISABLE, PERMISSIVE or STRICT"
                ),
            );
            return None;
        }
    };
    object.finish(report);
    Some(mode)
}

pub fn decode_peer_authentication(
    doc: &Object,
    report: &mut Report,
) -> Option<PeerAuthenticationSpec> {
    let meta = decode_meta(doc, true, Rule::Subdomain, report)?;
    let mut policy = PeerAuthenticationSpec {
        selector_position: meta.position,
        port_level_position: meta.position,
        meta,
        selector: None,
        mode: MtlsMode::Unset,
        port_level: BTreeMap::new(),
    };
    // `spec: {}` is a valid policy that inherits everything.
    let Some(spec) = doc.object("spec", report) else {
        return Some(policy);
    };
    policy.selector_position = spec.position_of("selector");
    policy.selector = workload_selector(&spec, report);
    if let Some(node) = spec.get("mtls") {
        if let Some(mode) = mtls_mode(node, "spec.mtls", report) {
            policy.mode = mode;
        }
    }
    if let Some(ports) = spec.object("portLevelMtls", report) {
        policy.port_level_position = ports.position;
        if policy.selector.is_none() {
            report.error(
                ports.position,
                "spec.portLevelMtls",
                "portLevelMtls needs a workload selector (Istio rejects it on namespace- and mesh-wide policies)",
            );
        }
        for key in port_keys(&ports) {
            let path = ports.field_path(&key);
            let at = ports.position_of(&key);
            let Some(node) = ports.get(&key) else {
                continue;
            };
            match key.parse::<u16>() {
                Ok(port) if port > 0 => {
                    if let Some(mode) = mtls_mode(node, &path, report) {
                        policy.port_level.insert(port, mode);
                    }
                }
                _ => report.error(at, &path, format!("`{key}` is not a port number")),
            }
        }
        ports.finish(report);
    }
    spec.finish(report);
    Some(policy)
}

/// The keys of a mapping, in document order.
fn port_keys(object: &Object) -> Vec<String> {
    object.keys()
}

fn client_tls(node: &Node, path: &str, report: &mut Report) -> Option<ClientTls> {
    let tls = Object::of(node, path, report)?;
    let mode = match tls.string("mode", report).as_deref() {
        None | Some("DISABLE") => ClientTlsMode::Disable,
        Some("SIMPLE") => ClientTlsMode::Simple,
        Some("MUTUAL") => ClientTlsMode::Mutual,
        Some("ISTIO_MUTUAL") => ClientTlsMode::IstioMutual,
        Some(other) => {
            report.error(
                tls.position_of("mode"),
                &tls.field_path("mode"),
                format!(
                    "unknown TLS mode `{other}`: expected DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL"
                ),
            );
            return None;
        }
    };
    let result = ClientTls {
        mode,
        client_certificate: tls.string("clientCertificate", report),
        private_key: tls.string("privateKey", report),
        ca_certificates: tls.string("caCertificates", report),
        sni: tls.string("sni", report),
        subject_alt_names: tls.string_list("subjectAltNames", report),
        insecure_skip_verify: tls
            .get("insecureSkipVerify")
            .is_some_and(|n| n.text() == Some("true")),
    };
    if mode == ClientTlsMode::Mutual
        && (result.client_certificate.is_none() || result.private_key.is_none())
    {
        report.error(
            tls.position_of("mode"),
            &tls.field_path("mode"),
            "MUTUAL needs clientCertificate and privateKey (files on the proxy); use ISTIO_MUTUAL for the mesh's own certificates",
        );
    }
    if tls.has("credentialName") {
        tls.get("credentialName");
        report.warn(
            tls.position_of("credentialName"),
            &tls.field_path("credentialName"),
            format!("{IGNORED}: Ward cannot read Kubernetes Secrets; give the files instead"),
        );
    }
    tls.finish(report);
    Some(result)
}

/// A `uint32` field, if present.
fn count(object: &Object, key: &str, report: &mut Report) -> Option<u32> {
    object
        .get(key)
        .and_then(|n| integer(n, &object.field_path(key), 0, u32::MAX as i64, report))
        .map(|v| v as u32)
}

/// `outlierDetection` with Istio's defaults (interval 10 s, base ejection 30 s, at most 10 %
/// of endpoints out, panic threshold 0).
fn outlier_detection(outlier: Object, report: &mut Report) -> OutlierDetectionPolicy {
    // `consecutiveErrors` is the deprecated name of consecutive gateway errors.
    let deprecated = count(&outlier, "consecutiveErrors", report);
    let policy = OutlierDetectionPolicy {
        consecutive_5xx_errors: count(&outlier, "consecutive5xxErrors", report).unwrap_or(0),
        consecutive_gateway_errors: count(&outlier, "consecutiveGatewayErrors", report)
            .or(deprecated)
            .unwrap_or(0),
        interval_ms: outlier.duration("interval", report).unwrap_or(10_000),
        base_ejection_time_ms: outlier
            .duration("baseEjectionTime", report)
            .unwrap_or(30_000),
        max_ejection_percent: count(&outlier, "maxEjectionPercent", report)
            .unwrap_or(10)
            .min(100),
        min_health_percent: count(&outlier, "minHealthPercent", report)
            .unwrap_or(0)
            .min(100),
    };
    outlier.finish(report);
    policy
}

fn connection_pool(pool: Object, report: &mut Report) -> ConnectionPool {
    let mut settings = ConnectionPool::default();
    if let Some(tcp) = pool.object("tcp", report) {
        settings.max_connections = count(&tcp, "maxConnections", report);
        settings.connect_timeout_ms = tcp.duration("connectTimeout", report);
        tcp.finish(report);
    }
    if let Some(http) = pool.object("http", report) {
        settings.http1_max_pending_requests = count(&http, "http1MaxPendingRequests", report);
        settings.http2_max_requests = count(&http, "http2MaxRequests", report);
        settings.max_requests_per_connection = count(&http, "maxRequestsPerConnection", report);
        settings.max_retries = count(&http, "maxRetries", report);
        http.finish(report);
    }
    pool.finish(report);
    settings
}

/// `loadBalancer`: `simple` or `consistentHash` (one of them, as Istio's oneof).
fn load_balancer(lb: Object, report: &mut Report) -> Option<LoadBalancer> {
    let mut result = None;
    if let Some(node) = lb.get("simple") {
        let path = lb.field_path("simple");
        result = match node.text() {
            Some("ROUND_ROBIN") | Some("UNSPECIFIED") => Some(LoadBalancer::RoundRobin),
            Some("LEAST_REQUEST") | Some("LEAST_CONN") => Some(LoadBalancer::LeastRequest),
            Some("RANDOM") => Some(LoadBalancer::Random),
            Some("PASSTHROUGH") => {
                report.warn(
                    node.position,
                    &path,
                    "PASSTHROUGH sends to the address the client dialled, which behind Ward's sidecars is the endpoint list itself: endpoints are balanced round robin",
                );
                Some(LoadBalancer::RoundRobin)
            }
            other => {
                report.error(
                    node.position,
                    &path,
                    format!(
                        "unknown load balancer `{}`: expected ROUND_ROBIN, LEAST_REQUEST, RANDOM or PASSTHROUGH",
                        other.unwrap_or_default()
                    ),
                );
                None
            }
        };
    }
    if let Some(hash) = lb.object("consistentHash", report) {
        if lb.has("simple") {
            report.error(
                lb.position_of("consistentHash"),
                &lb.field_path("consistentHash"),
                "give `simple` or `consistentHash`, not both",
            );
        }
        let mut keys = Vec::new();
        if let Some(header) = hash.string("httpHeaderName", report) {
            keys.push(HashKey::Header(header.to_ascii_lowercase()));
        }
        if let Some(cookie) = hash.object("httpCookie", report) {
            if let Some(name) = cookie.required_string("name", report) {
                keys.push(HashKey::Cookie {
                    name,
                    path: cookie.string("path", report),
                    ttl_ms: cookie.duration("ttl", report),
                });
            }
            cookie.finish(report);
        }
        if let Some(node) = hash.get("useSourceIp") {
            if crate::decode::boolean(node, &hash.field_path("useSourceIp"), report) == Some(true) {
                keys.push(HashKey::SourceIp);
            }
        }
        if let Some(name) = hash.string("httpQueryParameterName", report) {
            keys.push(HashKey::QueryParameter(name));
        }
        let mut minimum_ring_size = count(&hash, "minimumRingSize", report).map(u64::from);
        if let Some(ring) = hash.object("ringHash", report) {
            minimum_ring_size = count(&ring, "minimumRingSize", report).map(u64::from);
            ring.finish(report);
        }
        if let Some(maglev) = hash.object("maglev", report) {
            // Both keep a key on its endpoint; Envoy's ring hash stands in for Maglev.
            report.warn(
                maglev.position,
                &hash.field_path("maglev"),
                "Ward uses Envoy's ring hash for consistent hashing; the Maglev table size is ignored",
            );
            maglev.skip(&["tableSize"]);
            maglev.finish(report);
        }
        if keys.len() != 1 {
            report.error(
                hash.position,
                &lb.field_path("consistentHash"),
                "needs exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName",
            );
        }
        hash.finish(report);
        if keys.len() == 1 {
            result = Some(LoadBalancer::ConsistentHash {
                key: keys.remove(0),
                minimum_ring_size: minimum_ring_size.unwrap_or(1024),
            });
        }
    }
    lb.ignore(
        &[
            (
                "localityLbSetting",
                "Ward's endpoints carry no locality yet, so every endpoint is equally near",
            ),
            ("warmupDurationSecs", "endpoints take full traffic at once"),
            ("warmup", "endpoints take full traffic at once"),
        ],
        report,
    );
    lb.finish(report);
    result
}

/// A `trafficPolicy` (or, without port-level settings, one of its `portLevelSettings`).
fn traffic_policy(policy: Object, port_level: bool, report: &mut Report) -> TrafficPolicy {
    let mut result = TrafficPolicy::default();
    if let Some(node) = policy.get("tls") {
        result.tls = client_tls(node, &policy.field_path("tls"), report);
    }
    if let Some(lb) = policy.object("loadBalancer", report) {
        result.load_balancer = load_balancer(lb, report);
    }
    if let Some(outlier) = policy.object("outlierDetection", report) {
        result.outlier_detection = Some(outlier_detection(outlier, report));
    }
    if let Some(pool) = policy.object("connectionPool", report) {
        result.connection_pool = Some(connection_pool(pool, report));
    }
    if let Some(budget) = policy.object("retryBudget", report) {
        let percent = budget
            .get("percent")
            .and_then(|n| number(n, &budget.field_path("percent"), 0.0, 100.0, report))
            .unwrap_or(20.0);
        let min = budget
            .get("minRetryConcurrency")
            .and_then(|n| {
                integer(
                    n,
                    &budget.field_path("minRetryConcurrency"),
                    0,
                    u32::MAX as i64,
                    report,
                )
            })
            .unwrap_or(3);
        result.retry_budget = Some(ConcurrencyRetryBudget {
            percent_millis: (percent * 1000.0).round() as u32,
            min_retry_concurrency: min as u32,
            budget_interval_ms: budget.duration("budgetInterval", report),
        });
        budget.finish(report);
    }
    if port_level {
        for (path, node) in policy.list("portLevelSettings", report) {
            let Some(settings) = Object::of(node, &path, report) else {
                continue;
            };
            let port = settings.object("port", report).and_then(|p| {
                let number = p
                    .required("number", report)
                    .and_then(|n| integer(n, &p.field_path("number"), 1, 65535, report));
                p.finish(report);
                number
            });
            if !settings.has("port") {
                settings.missing("port", report);
            }
            let port_policy = traffic_policy(settings, false, report);
            if let Some(port) = port {
                result.port_level.insert(port as u16, port_policy);
            }
        }
    }
    policy.ignore(
        &[
            ("tunnel", "Ward does not tunnel to destinations"),
            ("proxyProtocol", "Ward does not send PROXY protocol headers"),
        ],
        report,
    );
    policy.finish(report);
    result
}

pub fn decode_destination_rule(doc: &Object, report: &mut Report) -> Option<DestinationRuleSpec> {
    let meta = decode_meta(doc, true, Rule::Subdomain, report)?;
    let spec = doc.object("spec", report);
    let mut rule = DestinationRuleSpec {
        host_position: meta.position,
        meta,
        host: String::new(),
        policy: TrafficPolicy::default(),
        policy_position: Position::default(),
        subsets: Vec::new(),
    };
    let Some(spec) = spec else {
        doc.missing("spec", report);
        return None;
    };
    rule.host_position = spec.position_of("host");
    rule.host = spec.required_string("host", report)?;
    rule.policy_position = spec.position_of("trafficPolicy");
    if let Some(policy) = spec.object("trafficPolicy", report) {
        rule.policy = traffic_policy(policy, true, report);
    }
    for (path, node) in spec.list("subsets", report) {
        let Some(subset) = Object::of(node, &path, report) else {
            continue;
        };
        let Some(name) = subset.required_string("name", report) else {
            subset.finish(report);
            continue;
        };
        if let Some(rule) = crate::names::check(Rule::Label, &name) {
            report.error(
                subset.position_of("name"),
                &subset.field_path("name"),
                format!("`{name}` is not a valid subset name: {rule}"),
            );
        }
        if rule.subsets.iter().any(|(s, _)| s.name == name) {
            report.error(
                subset.position_of("name"),
                &subset.field_path("name"),
                format!("subset `{name}` is defined twice"),
            );
        }
        let labels = subset.string_map("labels", report);
        let policy = subset
            .object("trafficPolicy", report)
            .map(|p| traffic_policy(p, true, report))
            .unwrap_or_default();
        rule.subsets.push((
            Subset {
                name,
                labels,
                policy,
            },
            node.position,
        ));
        subset.finish(report);
    }
    spec.ignore(
        &[
            ("exportTo", "the rule applies to every client in the mesh"),
            (
                "workloadSelector",
                "the rule applies to every client in the mesh",
            ),
        ],
        report,
    );
    spec.finish(report);
    Some(rule)
}
