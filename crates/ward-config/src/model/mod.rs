//! The resolved mesh model: what the loader (files today, the Kubernetes API later) produces
//! and what translation consumes. Pure data, no I/O; every value is already validated.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

pub use wasm_authz::policy::AuthorizationPolicy;

use crate::spiffe::SpiffeId;
use crate::wellknown::CLUSTER_DOMAIN;

pub mod condition;

/// Where a resource came from, so later stages can still point at the user's file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceRef {
    pub file: String,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mesh {
    /// SPIFFE trust domain, `cluster.local` unless MeshConfig says otherwise.
    pub trust_domain: String,
    /// Namespace whose policies apply mesh-wide (Istio's `istio-system`).
    pub root_namespace: String,
    pub namespaces: Vec<String>,
    pub service_accounts: Vec<ServiceAccount>,
    /// One per Deployment, sorted by (namespace, name).
    pub workloads: Vec<Workload>,
    /// Sorted by (namespace, name).
    pub services: Vec<Service>,
    /// Istio PeerAuthentication policies, sorted by (namespace, name).
    pub peer_authentications: Vec<PeerAuthentication>,
    /// Istio DestinationRules, sorted by (namespace, name).
    pub destination_rules: Vec<DestinationRule>,
    /// Istio AuthorizationPolicies, sorted by (namespace, name).
    pub authorization_policies: Vec<ScopedAuthorizationPolicy>,
    /// Istio RequestAuthentications, sorted by (namespace, name).
    pub request_authentications: Vec<RequestAuthentication>,
    /// Where AuthorizationPolicies are enforced (MeshConfig `authorizationEngine`).
    pub authorization_engine: AuthorizationEngine,
    /// JWKS documents fetched from `jwksUri`s, by URI: filled by xds-server's fetcher, not
    /// by the loader (empty until the first fetch succeeds).
    pub fetched_jwks: BTreeMap<String, String>,
    /// Linkerd ServiceProfiles, sorted by (namespace, name); at most one per service.
    pub service_profiles: Vec<ServiceProfile>,
    /// Istio VirtualServices, sorted by (namespace, name).
    pub virtual_services: Vec<VirtualService>,
    /// Which services select each workload, derived from `services` (build it with
    /// [`ServicesByWorkload::new`] whenever `services` is set).
    pub services_by_workload: ServicesByWorkload,
    /// Services, DestinationRules and VirtualServices by host, derived from them (build it
    /// with [`HostIndex::new`] whenever they are set).
    pub hosts: HostIndex,
}

/// Lookups by host: translation asks for every cluster and route which service, rule and
/// route a host has, which would otherwise be scans (with a string built per element) of
/// thousands of rules, per cluster, on every config change.
#[derive(Debug, Clone, Default)]
pub struct HostIndex {
    /// Service FQDN → index in `Mesh::services`.
    services: HashMap<String, usize>,
    rules: RuleIndex,
    /// Service FQDN → index in `Mesh::virtual_services` of the first one bound to the mesh
    /// that routes it.
    mesh_routes: HashMap<String, usize>,
}

impl HostIndex {
    pub fn new(mesh: &Mesh) -> Self {
        let mut index = HostIndex::default();
        for (i, service) in mesh.services.iter().enumerate() {
            index.services.insert(service_fqdn(service), i);
        }
        index.rules = RuleIndex::new(&mesh.destination_rules);
        for (i, route) in mesh.virtual_services.iter().enumerate() {
            if route.binds_mesh() {
                for host in &route.hosts {
                    index.mesh_routes.entry(host.clone()).or_insert(i);
                }
            }
        }
        index
    }
}

/// DestinationRules by host: exact hosts by (namespace, host), wildcards by namespace.
#[derive(Debug, Clone, Default)]
pub struct RuleIndex {
    /// (namespace, exact host) → index in the rules (the first for the pair; the loader
    /// merges rules for one host).
    exact: HashMap<(String, String), usize>,
    /// Indices of the rules whose host is a wildcard, by namespace.
    wildcard: HashMap<String, Vec<usize>>,
}

impl RuleIndex {
    pub fn new(rules: &[DestinationRule]) -> Self {
        let mut index = RuleIndex::default();
        for (i, rule) in rules.iter().enumerate() {
            if rule.host.starts_with('*') {
                index
                    .wildcard
                    .entry(rule.namespace.clone())
                    .or_default()
                    .push(i);
            } else {
                index
                    .exact
                    .entry((rule.namespace.clone(), rule.host.clone()))
                    .or_insert(i);
            }
        }
        index
    }

    /// Istio's choice of rule for `fqdn` (a service of `namespace`), among the `rules` this
    /// index was built from: the most specific host among the service namespace's rules, then
    /// among the root namespace's.
    pub fn closest<'r>(
        &self,
        rules: &'r [DestinationRule],
        namespace: &str,
        root_namespace: &str,
        fqdn: &str,
    ) -> Option<&'r DestinationRule> {
        [namespace, root_namespace].into_iter().find_map(|ns| {
            if let Some(&i) = self.exact.get(&(ns.to_string(), fqdn.to_string())) {
                return rules.get(i);
            }
            self.wildcard
                .get(ns)?
                .iter()
                .map(|&i| &rules[i])
                .filter_map(|r| r.host_match(fqdn).map(|score| (score, r)))
                .max_by_key(|(score, _)| *score)
                .map(|(_, r)| r)
        })
    }
}

/// Derived data: two meshes with equal sources have equal indices.
impl PartialEq for HostIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for HostIndex {}

/// Indices into `Mesh::services` by backend workload (namespace, name): translation asks for
/// every proxy which services select it, which would otherwise be a scan of all services per
/// proxy on every config change.
#[derive(Debug, Clone, Default)]
pub struct ServicesByWorkload(HashMap<(String, String), Vec<usize>>);

impl ServicesByWorkload {
    pub fn new(services: &[Service]) -> Self {
        let mut index: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for (i, service) in services.iter().enumerate() {
            for backend in &service.backends {
                index.entry(backend.clone()).or_default().push(i);
            }
        }
        ServicesByWorkload(index)
    }
}

/// Derived data: two meshes with equal services have equal indices.
impl PartialEq for ServicesByWorkload {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ServicesByWorkload {}

pub use wasm_authz::retry_budget::RetryBudgetConfig;

/// A Linkerd ServiceProfile: the client side's routes to one service (per-route metrics,
/// retries, timeouts) and the retry budget they share.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceProfile {
    /// The service's FQDN, `<name>.<namespace>.svc.cluster.local`.
    pub name: String,
    pub namespace: String,
    /// In order: the first route that matches a request is its route.
    pub routes: Vec<ProfileRoute>,
    /// Linkerd's defaults (0.2, 10/s, 10 s) when the profile has none.
    pub retry_budget: RetryBudgetConfig,
    pub source: SourceRef,
}

// The budget's ratio is validated finite, so equality is reflexive.
impl Eq for ServiceProfile {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileRoute {
    pub name: String,
    pub condition: RequestMatch,
    /// Failures (5xx, resets, connect failures) are retried within the budget.
    pub is_retryable: bool,
    /// The whole request, retries included; none: no limit.
    pub timeout_ms: Option<u64>,
}

/// ServiceProfile `condition`: what requests a route matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestMatch {
    Method(String),
    /// Anchored: the whole path (without the query) must match.
    PathRegex(String),
    All(Vec<RequestMatch>),
    Any(Vec<RequestMatch>),
    Not(Box<RequestMatch>),
}

/// Linkerd's consecutive-failures circuit breaker, from a Service's
/// `balancer.linkerd.io/failure-accrual*` annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureAccrual {
    /// Consecutive failures that take an endpoint out of load balancing (default 7).
    pub max_failures: u32,
    /// The first penalty (default 1 s); it grows on repeated failure up to `max_penalty_ms`.
    pub min_penalty_ms: u64,
    /// Default 1 min.
    pub max_penalty_ms: u64,
    /// Random extra penalty, as a fraction of the penalty, in thousandths (default 500).
    pub jitter_permille: u32,
}

/// A RequestAuthentication: the JWTs a workload accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAuthentication {
    pub name: String,
    pub namespace: String,
    pub selector: Option<BTreeMap<String, String>>,
    pub rules: Vec<JwtRuleSpec>,
    pub source: SourceRef,
}

pub use crate::authz::JwtRuleSpec;

/// Which engine enforces AuthorizationPolicy in the sidecars. Both follow the same semantics
/// (`wasm_authz::policy`); the golden-data test holds them to the same decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthorizationEngine {
    /// Envoy's RBAC filters (the default).
    #[default]
    Native,
    /// Ward's wasm filter evaluates the policies itself.
    Wasm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub name: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub replicas: u32,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub containers: Vec<Container>,
    /// Instances (replicas), index 0..replicas, with their addresses.
    pub instances: Vec<Instance>,
    pub source: SourceRef,
    /// The sidecar captures the pod's traffic with iptables (a Kubernetes pod, injected by
    /// `wardctl inject`): inbound arrives on the capture port with its original
    /// destination, the app listens on the pod's loopback, outbound leaves through the
    /// outbound port. Otherwise (`wardctl up`) listeners bind the instance's own address.
    pub capture: bool,
    /// The pod runs Ward's sidecar (a Pod carrying `ward.dev/injected`; always for
    /// Deployments). Without one it gets no proxy config and no identity, and its endpoints
    /// are plaintext: meshed clients must not send it mTLS.
    pub sidecar: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Variables from the downward API: (name, `fieldRef.fieldPath`), filled in per pod
    /// ([`Workload::pod_field`]).
    pub field_env: Vec<(String, String)>,
    pub ports: Vec<ContainerPort>,
    /// The kubelet's HTTP probes (readiness, liveness, startup) of a pod's container: under
    /// STRICT mTLS the sidecar still serves these paths in plaintext, as Linkerd authorizes
    /// probes, or the pod could never become Ready.
    pub probes: Vec<HttpProbe>,
}

impl Workload {
    /// The value of a downward API `fieldPath` for one of this workload's pods (None for a
    /// label or annotation the pod does not have).
    pub fn pod_field(&self, instance: &Instance, field_path: &str) -> Option<String> {
        let keyed = |prefix: &str| {
            field_path
                .strip_prefix(prefix)?
                .strip_suffix("']")
                .map(str::to_string)
        };
        if let Some(key) = keyed("metadata.labels['") {
            return self.labels.get(&key).cloned();
        }
        if let Some(key) = keyed("metadata.annotations['") {
            return self.annotations.get(&key).cloned();
        }
        Some(match field_path {
            "metadata.name" => instance.name.clone(),
            "metadata.namespace" => self.namespace.clone(),
            "status.podIP" | "status.podIPs" => instance.address.to_string(),
            "status.hostIP" => "127.0.0.1".to_string(),
            "spec.nodeName" => "localhost".to_string(),
            "spec.serviceAccountName" => self.service_account.clone(),
            _ => return None,
        })
    }
}

/// A container's `httpGet` probe (HTTP, not HTTPS), its port resolved to a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    pub port: u16,
    /// Without the query: the route matches the path alone.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: u16,
    /// `TCP` unless set.
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `<workload>-<index>`, like a pod name.
    pub name: String,
    pub index: u32,
    /// The sidecar's address: inbound listeners bind here on each container port.
    pub address: Ipv4Addr,
    /// The app's private address, reachable only through the sidecar.
    pub app_address: Ipv4Addr,
    /// An endpoint of its Services (the pod is Ready). A pod that is not ready yet still
    /// gets its sidecar's config: the kubelet's probes reach the app through it.
    pub ready: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
    /// (namespace, name) of the workloads the selector matches.
    pub backends: Vec<(String, String)>,
    /// Set by the `balancer.linkerd.io/failure-accrual: consecutive` annotation.
    pub failure_accrual: Option<FailureAccrual>,
    pub source: SourceRef,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    /// Resolved to a number (named targetPorts are looked up in the backends' containers).
    pub target_port: u16,
    pub protocol: String,
    pub app_protocol: Option<String>,
}

/// Istio's mutual TLS modes for a server (PeerAuthentication `mtls.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MtlsMode {
    /// Inherit from the parent scope (workload → namespace → mesh).
    #[default]
    Unset,
    /// Plaintext only.
    Disable,
    /// mTLS and plaintext on the same port.
    Permissive,
    /// mTLS only.
    Strict,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAuthentication {
    pub name: String,
    pub namespace: String,
    /// `spec.selector.matchLabels`; None for a namespace-wide (or, in the root namespace,
    /// mesh-wide) policy.
    pub selector: Option<BTreeMap<String, String>>,
    pub mode: MtlsMode,
    /// `portLevelMtls`, by the workload's (container) port.
    pub port_level: BTreeMap<u16, MtlsMode>,
    pub source: SourceRef,
}

/// An AuthorizationPolicy with its scope: the selector (None: every workload of its
/// namespace, or of the mesh in the root namespace) and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopedAuthorizationPolicy {
    pub policy: AuthorizationPolicy,
    pub selector: Option<BTreeMap<String, String>>,
    pub source: SourceRef,
}

/// DestinationRule `trafficPolicy.tls.mode`: how a client talks to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTlsMode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub mode: ClientTlsMode,
    /// Files on the proxy, for SIMPLE and MUTUAL.
    pub client_certificate: Option<String>,
    pub private_key: Option<String>,
    pub ca_certificates: Option<String>,
    pub sni: Option<String>,
    pub subject_alt_names: Vec<String>,
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationRule {
    pub name: String,
    pub namespace: String,
    /// The host as the rule resolves it: a FQDN (`reviews.default.svc.cluster.local`) or a
    /// wildcard (`*.default.svc.cluster.local`, `*`).
    pub host: String,
    /// `trafficPolicy`, its `portLevelSettings` by service port.
    pub policy: TrafficPolicy,
    /// Named groups of the host's endpoints, by pod labels; routes send to them by name.
    pub subsets: Vec<Subset>,
    /// The other DestinationRules for the same host merged into this one (Istio merges
    /// rules of one namespace for one host: subsets add up, the first policy wins).
    pub merged: Vec<SourceRef>,
    pub source: SourceRef,
}

/// A DestinationRule subset: the endpoints whose pods carry all of `labels`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Overrides the rule's policy field by field.
    pub policy: TrafficPolicy,
}

/// DestinationRule `trafficPolicy` (and each `portLevelSettings` entry, whose `port_level`
/// is empty): every field optional, so that a narrower level overrides a wider one field by
/// field, as Istio merges them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrafficPolicy {
    pub tls: Option<ClientTls>,
    pub load_balancer: Option<LoadBalancer>,
    /// `trafficPolicy.outlierDetection`.
    pub outlier_detection: Option<OutlierDetectionPolicy>,
    /// `trafficPolicy.connectionPool`.
    pub connection_pool: Option<ConnectionPool>,
    /// `trafficPolicy.retryBudget` (Envoy's concurrency-based budget).
    pub retry_budget: Option<ConcurrencyRetryBudget>,
    /// `portLevelSettings`, by service port.
    pub port_level: BTreeMap<u16, TrafficPolicy>,
}

impl TrafficPolicy {
    /// `self` with every field `narrower` sets replaced (port-level settings excepted).
    pub fn overridden_by(&self, narrower: &TrafficPolicy) -> TrafficPolicy {
        TrafficPolicy {
            tls: narrower.tls.clone().or_else(|| self.tls.clone()),
            load_balancer: narrower
                .load_balancer
                .clone()
                .or_else(|| self.load_balancer.clone()),
            outlier_detection: narrower.outlier_detection.or(self.outlier_detection),
            connection_pool: narrower.connection_pool.or(self.connection_pool),
            retry_budget: narrower.retry_budget.or(self.retry_budget),
            port_level: BTreeMap::new(),
        }
    }

    /// The policy for `port`: its port-level settings over the rest.
    pub fn for_port(&self, port: u16) -> TrafficPolicy {
        match self.port_level.get(&port) {
            Some(port_policy) => self.overridden_by(port_policy),
            None => self.overridden_by(&TrafficPolicy::default()),
        }
    }
}

/// DestinationRule `loadBalancer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadBalancer {
    RoundRobin,
    LeastRequest,
    Random,
    /// Sticky sessions: requests with the same key go to the same endpoint while it lives.
    ConsistentHash {
        key: HashKey,
        /// Envoy's ring hash size (Istio's default 1024).
        minimum_ring_size: u64,
    },
}

/// What a consistent-hash load balancer hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(String),
    /// With a `ttl`, Envoy sets the cookie when the request has none.
    Cookie {
        name: String,
        path: Option<String>,
        ttl_ms: Option<u64>,
    },
    SourceIp,
    QueryParameter(String),
}

/// DestinationRule `outlierDetection`, with Istio's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetectionPolicy {
    /// 0: no ejection on 5xx.
    pub consecutive_5xx_errors: u32,
    /// 0: no ejection on gateway errors (502, 503, 504).
    pub consecutive_gateway_errors: u32,
    pub interval_ms: u64,
    pub base_ejection_time_ms: u64,
    pub max_ejection_percent: u32,
    /// Below this share of healthy endpoints, traffic goes to all of them (Envoy's panic
    /// threshold); Istio's default is 0.
    pub min_health_percent: u32,
}

/// DestinationRule `connectionPool`: Envoy's circuit breakers and connection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionPool {
    pub max_connections: Option<u32>,
    pub connect_timeout_ms: Option<u64>,
    pub http1_max_pending_requests: Option<u32>,
    pub http2_max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
}

/// DestinationRule `retryBudget`: retries in flight at most `percent` of the active requests,
/// and never fewer than `min_retry_concurrency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyRetryBudget {
    /// Thousandths of a percent (Envoy takes a double; equality needs an integer).
    pub percent_millis: u32,
    pub min_retry_concurrency: u32,
    /// Count requests over this window rather than only the active ones.
    pub budget_interval_ms: Option<u64>,
}

/// The gateway name that binds a VirtualService's routes to the mesh's sidecars.
pub const MESH_GATEWAY: &str = "mesh";

/// An Istio VirtualService's HTTP routes for mesh services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualService {
    pub name: String,
    pub namespace: String,
    /// The services' FQDNs (short names qualified in the VirtualService's namespace).
    pub hosts: Vec<String>,
    /// Where the routes apply: [`MESH_GATEWAY`] (the sidecars, the default) and gateways as
    /// `<namespace>/<name>`.
    pub gateways: Vec<String>,
    /// In order: the first route that matches a request takes it.
    pub http: Vec<HttpRoute>,
    pub source: SourceRef,
}

impl VirtualService {
    /// The routes apply to the mesh's sidecars (`gateways` absent or naming `mesh`).
    pub fn binds_mesh(&self) -> bool {
        self.gateways.iter().any(|g| g == MESH_GATEWAY)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRoute {
    pub name: Option<String>,
    /// Any of them (none: every request).
    pub matches: Vec<HttpMatch>,
    /// Where requests go; empty when the route redirects or answers itself.
    pub destinations: Vec<RouteDestination>,
    pub redirect: Option<HttpRedirect>,
    pub direct_response: Option<DirectResponse>,
    pub rewrite: Option<HttpRewrite>,
    /// The whole request, retries included.
    pub timeout_ms: Option<u64>,
    pub retries: Option<HttpRetry>,
    pub fault: Option<HttpFault>,
    /// Copies of the requests, sent without waiting for their answers.
    pub mirrors: Vec<HttpMirror>,
    pub headers: HeaderOperations,
    pub cors: Option<CorsPolicy>,
}

impl HttpRoute {
    /// A route to `destinations` with nothing else set.
    pub fn to(destinations: Vec<RouteDestination>) -> HttpRoute {
        HttpRoute {
            name: None,
            matches: Vec::new(),
            destinations,
            redirect: None,
            direct_response: None,
            rewrite: None,
            timeout_ms: None,
            retries: None,
            fault: None,
            mirrors: Vec::new(),
            headers: HeaderOperations::default(),
            cors: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpMatch {
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub headers: Vec<(String, StringMatch)>,
    /// Requests carrying any of these do not match.
    pub without_headers: Vec<(String, StringMatch)>,
    pub query_params: Vec<(String, StringMatch)>,
    pub ignore_uri_case: bool,
    /// The service port the request was sent to.
    pub port: Option<u16>,
    /// Only requests from workloads with all these labels.
    pub source_labels: BTreeMap<String, String>,
    /// Only requests from workloads in this namespace.
    pub source_namespace: Option<String>,
    /// Narrows the VirtualService's `gateways` for this match (empty: all of them).
    pub gateways: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// RE2, the whole value.
    Regex(String),
    /// Istio's empty match `{}`: the header or parameter is present, with any value.
    Present,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDestination {
    /// A service FQDN.
    pub host: String,
    /// None: the service's only port, or the port the request came in on.
    pub port: Option<u16>,
    /// A subset of the host's DestinationRule.
    pub subset: Option<String>,
    pub weight: u32,
    pub headers: HeaderOperations,
}

/// VirtualService `headers`: changes to the request before it is forwarded and to the
/// response before it is returned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderOperations {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderOps {
    /// Replaces the header's values.
    pub set: Vec<(String, String)>,
    /// Appends a value.
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// VirtualService `redirect`: the sidecar answers with a redirect, the request goes nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRedirect {
    /// Replaces the path (the query is kept unless the new one has its own).
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub port: Option<RedirectPort>,
    pub scheme: Option<String>,
    /// 301 unless set.
    pub code: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectPort {
    Number(u16),
    /// 80 for http, 443 for https.
    FromProtocolDefault,
    FromRequestPort,
}

/// VirtualService `directResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectResponse {
    pub status: u32,
    pub body: Option<String>,
}

/// VirtualService `rewrite`: applied before forwarding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpRewrite {
    /// Replaces the matched prefix (or the whole path for exact and regex matches).
    pub uri: Option<String>,
    /// `uriRegexRewrite`: (RE2 pattern, substitution with `\1` groups).
    pub uri_regex: Option<(String, String)>,
    pub authority: Option<String>,
}

/// Shares of requests, in millionths (Istio's percentages are doubles of 0–100).
pub const PER_MILLION: u32 = 1_000_000;

/// VirtualService `fault`: delays and aborts injected by the client's sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpFault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultDelay {
    pub fixed_ms: u64,
    /// Of requests, in millionths.
    pub per_million: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultAbort {
    pub status: FaultStatus,
    /// Of requests, in millionths.
    pub per_million: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultStatus {
    Http(u32),
    /// A gRPC status code number.
    Grpc(u32),
}

/// VirtualService `mirror`/`mirrors`: a copy of each request (of a share) goes here too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpMirror {
    pub host: String,
    pub port: Option<u16>,
    pub subset: Option<String>,
    /// Of requests, in millionths.
    pub per_million: u32,
}

/// VirtualService `corsPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CorsPolicy {
    pub allow_origins: Vec<StringMatch>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age_seconds: Option<u64>,
    pub allow_credentials: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRetry {
    pub attempts: u32,
    pub per_try_timeout_ms: Option<u64>,
    /// Envoy's `retry_on` (Istio passes it through); status codes in it become
    /// `retriable-status-codes`.
    pub retry_on: Option<String>,
}

impl DestinationRule {
    /// How specific the rule's host is for `fqdn`: None if it does not match, higher wins.
    pub fn host_match(&self, fqdn: &str) -> Option<usize> {
        host_match(&self.host, fqdn)
    }

    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }
}

/// Which policy decided a workload port's mTLS mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveMtls {
    pub mode: MtlsMode,
    /// `namespace/name` of the deciding PeerAuthentication; None for the default.
    pub decided_by: Option<String>,
}

/// Istio's scope for a security policy in `namespace`: the root namespace's apply across the
/// mesh, others in their namespace; a selector narrows to the workloads with its labels.
pub fn policy_applies(
    namespace: &str,
    selector: Option<&BTreeMap<String, String>>,
    root_namespace: &str,
    workload: &Workload,
) -> bool {
    (namespace == workload.namespace || namespace == root_namespace)
        && selector.is_none_or(|s| selects(s, &workload.labels))
}

pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Mesh {
    /// The ServiceProfile for `service`, if any (its name is the service's FQDN).
    pub fn service_profile(&self, service: &Service) -> Option<&ServiceProfile> {
        let fqdn = service_fqdn(service);
        self.service_profiles
            .iter()
            .find(|p| p.namespace == service.namespace && p.name == fqdn)
    }

    /// The VirtualService routing `service`'s host in the sidecars, if any: the first bound
    /// to the mesh by (namespace, name), as Istio merges none for sidecars (the loader warns
    /// about the others). Routes bound only to gateways never touch sidecars.
    pub fn virtual_service(&self, service: &Service) -> Option<&VirtualService> {
        let i = *self.hosts.mesh_routes.get(&service_fqdn(service))?;
        self.virtual_services.get(i)
    }

    /// The service whose FQDN is `fqdn`.
    pub fn service_by_fqdn(&self, fqdn: &str) -> Option<&Service> {
        let i = *self.hosts.services.get(fqdn)?;
        self.services.get(i)
    }

    /// Failure accrual for `service`: Linkerd turns it off when a ServiceProfile exists.
    pub fn failure_accrual(&self, service: &Service) -> Option<FailureAccrual> {
        service
            .failure_accrual
            .filter(|_| self.service_profile(service).is_none())
    }

    /// The PeerAuthentication policies that apply to `workload`, most specific first: the
    /// workload's own (selector, its namespace), the namespace's, the mesh's (root namespace).
    fn peer_authentication_chain<'m>(
        &'m self,
        workload: &'m Workload,
    ) -> Vec<&'m PeerAuthentication> {
        fn in_ns<'m>(
            policies: &'m [PeerAuthentication],
            ns: &'m str,
        ) -> impl Iterator<Item = &'m PeerAuthentication> {
            policies.iter().filter(move |p| p.namespace == ns)
        }
        let policies = &self.peer_authentications;
        let mut chain = Vec::new();
        // Istio: among several selecting policies the oldest wins; Ward takes the first by
        // name (and the loader warns about the overlap).
        chain.extend(in_ns(policies, &workload.namespace).find(|p| {
            p.selector
                .as_ref()
                .is_some_and(|s| selects(s, &workload.labels))
        }));
        chain.extend(in_ns(policies, &workload.namespace).find(|p| p.selector.is_none()));
        if workload.namespace != self.root_namespace {
            chain.extend(in_ns(policies, &self.root_namespace).find(|p| p.selector.is_none()));
        }
        chain
    }

    /// The mTLS mode a workload's sidecar enforces on `port`, with Istio's precedence:
    /// workload port-level, workload, namespace, mesh, and PERMISSIVE by default; UNSET
    /// inherits.
    pub fn effective_mtls(&self, workload: &Workload, port: u16) -> EffectiveMtls {
        for policy in self.peer_authentication_chain(workload) {
            let port_mode = policy
                .port_level
                .get(&port)
                .copied()
                .filter(|m| *m != MtlsMode::Unset && policy.selector.is_some());
            if let Some(mode) = port_mode.or(Some(policy.mode).filter(|m| *m != MtlsMode::Unset)) {
                return EffectiveMtls {
                    mode,
                    decided_by: Some(format!("{}/{}", policy.namespace, policy.name)),
                };
            }
        }
        EffectiveMtls {
            mode: MtlsMode::Permissive,
            decided_by: None,
        }
    }

    /// The DestinationRule for a service: the most specific host match among rules in the
    /// service's namespace, then in the root namespace.
    pub fn destination_rule_for(&self, service: &Service, fqdn: &str) -> Option<&DestinationRule> {
        self.hosts.rules.closest(
            &self.destination_rules,
            &service.namespace,
            &self.root_namespace,
            fqdn,
        )
    }

    /// The traffic policy a client applies to `service`'s `port` (and `subset`), Istio's
    /// precedence from the narrowest: subset port-level, subset, rule port-level, rule.
    pub fn traffic_policy(
        &self,
        service: &Service,
        port: u16,
        subset: Option<&str>,
    ) -> TrafficPolicy {
        let Some(rule) = self.destination_rule_for(service, &service_fqdn(service)) else {
            return TrafficPolicy::default();
        };
        let policy = rule.policy.for_port(port);
        match subset.and_then(|name| rule.subset(name)) {
            Some(subset) => policy.overridden_by(&subset.policy.for_port(port)),
            None => policy,
        }
    }

    /// The subsets of `service` routes can name (its DestinationRule's).
    pub fn subsets_of(&self, service: &Service) -> &[Subset] {
        self.destination_rule_for(service, &service_fqdn(service))
            .map(|r| &r.subsets[..])
            .unwrap_or_default()
    }

    /// The AuthorizationPolicies that apply to `workload`, sorted by namespace and name: the
    /// root namespace's (mesh-wide, or selecting in every namespace) and its own namespace's
    /// (namespace-wide, or selecting it).
    pub fn authorization_policies_for(&self, workload: &Workload) -> Vec<&AuthorizationPolicy> {
        self.authorization_policies
            .iter()
            .filter(|p| {
                policy_applies(
                    &p.policy.namespace,
                    p.selector.as_ref(),
                    &self.root_namespace,
                    workload,
                )
            })
            .map(|p| &p.policy)
            .collect()
    }

    /// The RequestAuthentications that apply to `workload` (root namespace and its own,
    /// namespace-wide or selecting it).
    pub fn request_authentications_for(&self, workload: &Workload) -> Vec<&RequestAuthentication> {
        self.request_authentications
            .iter()
            .filter(|r| {
                policy_applies(
                    &r.namespace,
                    r.selector.as_ref(),
                    &self.root_namespace,
                    workload,
                )
            })
            .collect()
    }

    /// Whether the wasm filter authenticates and authorizes for `workload`: MeshConfig chose
    /// the wasm engine. Otherwise Envoy's `jwt_authn` verifies tokens and its RBAC filters
    /// read the payload it leaves in the dynamic metadata.
    pub fn wasm_authorizes(&self, _workload: &Workload) -> bool {
        self.authorization_engine == AuthorizationEngine::Wasm
    }

    /// The JWT rules a workload's sidecar enforces, each with its keys: inline, or fetched
    /// from its URI. A rule whose keys were never fetched gets an empty key set, so its
    /// tokens are refused (401) rather than accepted unverified.
    pub fn jwt_rules_for(&self, workload: &Workload) -> Vec<wasm_authz::jwt::JwtRule> {
        self.request_authentications_for(workload)
            .into_iter()
            .flat_map(|r| r.rules.iter())
            .map(|rule| wasm_authz::jwt::JwtRule {
                issuer: rule.issuer.clone(),
                audiences: rule.audiences.clone(),
                jwks: rule
                    .jwks
                    .clone()
                    .or_else(|| {
                        rule.jwks_uri
                            .as_ref()
                            .and_then(|uri| self.fetched_jwks.get(uri).cloned())
                    })
                    .unwrap_or_else(|| r#"{"keys":[]}"#.to_string()),
                from_headers: rule.from_headers.clone(),
                from_params: rule.from_params.clone(),
                from_cookies: rule.from_cookies.clone(),
                forward_original_token: rule.forward_original_token,
                output_payload_to_header: rule.output_payload_to_header.clone(),
                output_claim_to_headers: rule.output_claim_to_headers.clone(),
                jwks_uri: rule.jwks.is_none().then(|| rule.jwks_uri.clone()).flatten(),
            })
            .collect()
    }

    /// The `jwksUri`s the keys of `issuer` are fetched from.
    pub fn jwks_uris_of(&self, issuer: &str) -> Vec<String> {
        self.fetched_jwks_uris(|i| i == issuer)
    }

    /// Every `jwksUri` the mesh names.
    pub fn jwks_uris(&self) -> Vec<String> {
        self.fetched_jwks_uris(|_| true)
    }

    /// The `jwksUri`s (sorted, once each) of the rules without inline keys whose issuer
    /// `wanted` accepts.
    fn fetched_jwks_uris(&self, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        let mut uris: Vec<String> = self
            .request_authentications
            .iter()
            .flat_map(|r| r.rules.iter())
            .filter(|rule| rule.jwks.is_none() && wanted(&rule.issuer))
            .filter_map(|rule| rule.jwks_uri.clone())
            .collect();
        uris.sort();
        uris.dedup();
        uris
    }

    /// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>` for a workload.
    pub fn identity(&self, workload: &Workload) -> SpiffeId {
        SpiffeId::new(
            &self.trust_domain,
            &workload.namespace,
            &workload.service_account,
        )
    }

    pub fn workload(&self, namespace: &str, name: &str) -> Option<&Workload> {
        // `workloads` is sorted by (namespace, name): translation asks this for every backend
        // of every cluster.
        let first = self
            .workloads
            .partition_point(|w| (w.namespace.as_str(), w.name.as_str()) < (namespace, name));
        self.workloads
            .get(first)
            .filter(|w| w.namespace == namespace && w.name == name)
    }

    /// The node id a sidecar uses: `<instance>.<namespace>`, e.g. `exam-scheduler-0.default`.
    pub fn node_id(workload: &Workload, instance: &Instance) -> String {
        format!("{}.{}", instance.name, workload.namespace)
    }

    /// Finds the workload and instance behind a sidecar's node id (a pod without Ward's
    /// sidecar has none: no proxy may connect as it).
    pub fn instance_by_node_id(&self, node_id: &str) -> Option<(&Workload, &Instance)> {
        self.workloads.iter().filter(|w| w.sidecar).find_map(|w| {
            w.instances
                .iter()
                .find(|i| Self::node_id(w, i) == node_id)
                .map(|i| (w, i))
        })
    }

    pub fn services_of<'a>(&'a self, workload: &'a Workload) -> impl Iterator<Item = &'a Service> {
        self.services_by_workload
            .0
            .get(&(workload.namespace.clone(), workload.name.clone()))
            .into_iter()
            .flatten()
            .map(|&i| &self.services[i])
    }

    /// Ports a workload's sidecar accepts traffic on: declared container ports and every
    /// targetPort of a Service that selects it (Kubernetes does not require the former).
    pub fn inbound_ports(&self, workload: &Workload) -> Vec<u16> {
        let mut ports: Vec<u16> = workload
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().map(|p| p.container_port))
            .chain(
                self.services_of(workload)
                    .flat_map(|s| s.ports.iter().map(|p| p.target_port)),
            )
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// How specifically an Istio host (a FQDN, `*.suffix` or `*`) covers `fqdn`: None if it does
/// not, higher for a closer match.
pub fn host_match(host: &str, fqdn: &str) -> Option<usize> {
    if host == fqdn {
        Some(usize::MAX)
    } else if host == "*" {
        Some(0)
    } else if let Some(suffix) = host.strip_prefix('*') {
        fqdn.ends_with(suffix).then_some(suffix.len())
    } else {
        None
    }
}

/// `<name>.<ns>.svc.cluster.local`
pub fn service_fqdn(service: &Service) -> String {
    format!(
        "{}.{}.svc.{}",
        service.name, service.namespace, CLUSTER_DOMAIN
    )
}

/// How a service port's traffic is carried, by Istio's protocol selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortProtocol {
    /// HTTP/1.1 to the app (and whatever the client speaks between the sidecars).
    Http,
    /// HTTP/2 end to end: `http2`, `grpc` (and h2c `appProtocol`s).
    Http2,
    /// Bytes: `tcp`, `tls`, `https` (TLS the sidecar does not terminate), `mongo`, `mysql`,
    /// `redis`.
    Tcp,
}

/// Istio's protocol selection: the port's `appProtocol`, else its name's prefix
/// (`<protocol>[-<suffix>]`); ports with neither are HTTP.
pub fn port_protocol(port: &ServicePort) -> PortProtocol {
    fn of(word: &str) -> Option<PortProtocol> {
        match word.to_ascii_lowercase().as_str() {
            "http" | "grpc-web" => Some(PortProtocol::Http),
            "http2" | "grpc" | "kubernetes.io/h2c" => Some(PortProtocol::Http2),
            "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" | "kubernetes.io/ws"
            | "kubernetes.io/wss" => Some(PortProtocol::Tcp),
            _ => None,
        }
    }
    let by_app_protocol = port.app_protocol.as_deref().and_then(of);
    let by_name = port.name.as_deref().and_then(|name| {
        of(name).or_else(|| {
            // `grpc-web-x` before `grpc-x`.
            name.strip_suffix(name.rsplit('-').next().unwrap_or_default())
                .map(|p| p.trim_end_matches('-'))
                .and_then(of)
                .or_else(|| of(name.split('-').next().unwrap_or(name)))
        })
    });
    by_app_protocol.or(by_name).unwrap_or(PortProtocol::Http)
}

/// Ports whose traffic is plain TCP rather than HTTP, by Istio's naming conventions.
pub fn is_tcp_port(port: &ServicePort) -> bool {
    port_protocol(port) == PortProtocol::Tcp
}
