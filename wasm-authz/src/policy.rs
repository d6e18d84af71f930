//! Istio `AuthorizationPolicy` semantics, as data and as a decision procedure.
//!
//! The control plane decodes users' YAML into these types and translates them into Envoy's
//! native RBAC filters; `wardctl check` runs [`evaluate`] on them to predict, and explain,
//! what those filters will decide. The evaluation follows Istio's documented rules:
//! CUSTOM, then DENY, then ALLOW; a workload with no ALLOW policy allows what no DENY denies;
//! a policy with no rules matches nothing; on plain TCP, HTTP-only fields make an ALLOW rule
//! match nothing and are left out of a DENY rule (so a mistake fails closed).

use std::fmt;
use std::net::IpAddr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Allow,
    Deny,
    Audit,
    Custom,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

/// One AuthorizationPolicy, already selected for a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    pub name: String,
    pub namespace: String,
    pub action: Action,
    /// `rules` as written; no rules (absent, null or `[]`) matches no request.
    pub rules: Vec<Rule>,
    /// `istio.io/dry-run: "true"`: evaluated and logged, never enforced.
    #[serde(default)]
    pub dry_run: bool,
}

impl AuthorizationPolicy {
    /// The name Istio gives rule `index` of this policy in Envoy's RBAC config and logs.
    pub fn rule_id(&self, index: usize) -> String {
        rule_id(&self.namespace, &self.name, index)
    }
}

pub fn rule_id(namespace: &str, name: &str, index: usize) -> String {
    format!("ns[{namespace}]-policy[{name}]-rule[{index}]")
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Rule {
    /// Sources, any of which may match; empty matches every source.
    pub from: Vec<Source>,
    /// Operations, any of which may match; empty matches every operation.
    pub to: Vec<Operation>,
    /// Conditions, all of which must match.
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Source {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub request_principals: Vec<String>,
    pub not_request_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub service_accounts: Vec<String>,
    pub not_service_accounts: Vec<String>,
    pub ip_blocks: Vec<String>,
    pub not_ip_blocks: Vec<String>,
    pub remote_ip_blocks: Vec<String>,
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Operation {
    pub hosts: Vec<String>,
    pub not_hosts: Vec<String>,
    pub ports: Vec<String>,
    pub not_ports: Vec<String>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<String>,
    pub not_paths: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    pub key: String,
    pub values: Vec<String>,
    pub not_values: Vec<String>,
    /// `key` parsed, on first use: conditions are evaluated on every request.
    #[serde(skip)]
    parsed: ParsedKey,
}

impl Condition {
    pub fn new(key: String, values: Vec<String>, not_values: Vec<String>) -> Self {
        Condition {
            key,
            values,
            not_values,
            parsed: ParsedKey::default(),
        }
    }

    /// What `key` refers to; `None` for a key Istio would reject.
    pub fn parsed_key(&self) -> Option<&ConditionKey> {
        self.parsed
            .0
            .get_or_init(|| ConditionKey::parse(&self.key))
            .as_ref()
    }
}

/// A cache, so it takes no part in comparisons: two conditions are equal by what is written.
#[derive(Debug, Clone, Default)]
struct ParsedKey(OnceLock<Option<ConditionKey>>);

impl PartialEq for ParsedKey {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ParsedKey {}

/// What a `when` key refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionKey {
    RequestHeader(String),
    SourceIp,
    RemoteIp,
    SourceNamespace,
    SourcePrincipal,
    RequestPrincipal,
    RequestAudiences,
    RequestPresenter,
    /// `request.auth.claims[a][b]`: the claim path.
    RequestClaim(Vec<String>),
    DestinationIp,
    DestinationPort,
    ConnectionSni,
    /// `experimental.envoy.filters.<filter>[<key>]`: dynamic metadata.
    EnvoyFilterMetadata {
        filter: String,
        key: String,
    },
}

impl ConditionKey {
    /// Parses a `when` key the way Istio does; `None` for a key Istio would reject.
    pub fn parse(key: &str) -> Option<ConditionKey> {
        let bracketed = |prefix: &str| -> Option<Vec<String>> {
            let rest = key.strip_prefix(prefix)?;
            let mut parts = Vec::new();
            let mut rest = rest;
            while !rest.is_empty() {
                let inner = rest.strip_prefix('[')?;
                let end = inner.find(']')?;
                if end == 0 {
                    return None;
                }
                parts.push(inner[..end].to_string());
                rest = &inner[end + 1..];
            }
            (!parts.is_empty()).then_some(parts)
        };
        Some(match key {
            "source.ip" => ConditionKey::SourceIp,
            "remote.ip" => ConditionKey::RemoteIp,
            "source.namespace" => ConditionKey::SourceNamespace,
            "source.principal" => ConditionKey::SourcePrincipal,
            "request.auth.principal" => ConditionKey::RequestPrincipal,
            "request.auth.audiences" => ConditionKey::RequestAudiences,
            "request.auth.presenter" => ConditionKey::RequestPresenter,
            "destination.ip" => ConditionKey::DestinationIp,
            "destination.port" => ConditionKey::DestinationPort,
            "connection.sni" => ConditionKey::ConnectionSni,
            _ if key.starts_with("request.headers") => {
                let parts = bracketed("request.headers")?;
                if parts.len() != 1 {
                    return None;
                }
                ConditionKey::RequestHeader(parts[0].clone())
            }
            _ if key.starts_with("request.auth.claims") => {
                ConditionKey::RequestClaim(bracketed("request.auth.claims")?)
            }
            _ if key.starts_with("experimental.envoy.filters.") => {
                let rest = key.strip_prefix("experimental.")?;
                let open = rest.find('[')?;
                let filter = rest[..open].to_string();
                let parts = bracketed(&key[..("experimental.".len() + open)])?;
                if parts.len() != 1 {
                    return None;
                }
                ConditionKey::EnvoyFilterMetadata {
                    filter,
                    key: parts[0].clone(),
                }
            }
            _ => return None,
        })
    }

    /// Whether only an HTTP request carries this attribute.
    pub fn http_only(&self) -> bool {
        matches!(
            self,
            ConditionKey::RequestHeader(_)
                | ConditionKey::RequestPrincipal
                | ConditionKey::RequestAudiences
                | ConditionKey::RequestPresenter
                | ConditionKey::RequestClaim(_)
        )
    }

    /// Whether the value is an IP or CIDR (`source.ip`, `remote.ip`, `destination.ip`).
    pub fn is_ip(&self) -> bool {
        matches!(
            self,
            ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp
        )
    }

    pub fn needs_jwt(&self) -> bool {
        matches!(
            self,
            ConditionKey::RequestPrincipal
                | ConditionKey::RequestAudiences
                | ConditionKey::RequestPresenter
                | ConditionKey::RequestClaim(_)
        )
    }
}

impl Source {
    /// Fields that need a request (JWT), not just a connection.
    pub fn http_only(&self) -> bool {
        !self.request_principals.is_empty() || !self.not_request_principals.is_empty()
    }
}

impl Operation {
    pub fn http_only(&self) -> bool {
        [
            &self.hosts,
            &self.not_hosts,
            &self.methods,
            &self.not_methods,
            &self.paths,
            &self.not_paths,
        ]
        .iter()
        .any(|v| !v.is_empty())
    }
}

impl Rule {
    pub fn http_only(&self) -> bool {
        self.from.iter().any(Source::http_only)
            || self.to.iter().any(Operation::http_only)
            || self
                .when
                .iter()
                .any(|c| c.parsed_key().is_some_and(ConditionKey::http_only))
    }
}

/// An IP address or CIDR block as Istio accepts it (`1.2.3.4` or `1.2.3.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl IpBlock {
    pub fn parse(text: &str) -> Option<IpBlock> {
        let (address, prefix_len) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, p.parse::<u8>().ok()?),
            None => {
                let a = text.parse::<IpAddr>().ok()?;
                (a, if a.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if address.is_ipv4() { 32 } else { 128 };
        (prefix_len <= max).then_some(IpBlock {
            address,
            prefix_len,
        })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Istio's string pattern: `*` (anything non-empty), `prefix*`, `*suffix` or an exact value.
pub fn glob_match(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        !value.is_empty()
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else {
        value == pattern
    }
}

/// Istio's path patterns: the globs above plus templates, `{*}` for one path segment and
/// `{**}` for one or more.
pub fn path_match(pattern: &str, path: &str) -> bool {
    if pattern.contains('{') {
        return template_match(pattern, path);
    }
    glob_match(pattern, path)
}

fn template_match(pattern: &str, path: &str) -> bool {
    fn matches(pattern: &[&str], path: &[&str]) -> bool {
        match pattern.split_first() {
            None => path.is_empty(),
            Some((&"{**}", rest)) => (1..=path.len()).any(|n| matches(rest, &path[n..])),
            Some((&"{*}", rest)) => !path.is_empty() && matches(rest, &path[1..]),
            Some((literal, rest)) => path.first() == Some(literal) && matches(rest, &path[1..]),
        }
    }
    let pattern: Vec<&str> = pattern.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    matches(&pattern, &path)
}

/// Istio turns `{*}`/`{**}` into Envoy's URI template operators; a path is a template when
/// it has either.
pub fn is_path_template(path: &str) -> bool {
    path.contains("{*}") || path.contains("{**}")
}

/// The attributes of one request (or connection) a policy can look at.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The peer's SPIFFE id from its mTLS certificate; `None` over plaintext.
    pub source_principal: Option<String>,
    pub source_ip: Option<IpAddr>,
    /// The original client address (X-Forwarded-For aware); the same as `source_ip` here.
    pub remote_ip: Option<IpAddr>,
    pub destination_ip: Option<IpAddr>,
    pub destination_port: u16,
    pub sni: Option<String>,
    /// `None` for a plain TCP connection.
    pub http: Option<HttpRequest>,
    /// `<iss>/<sub>` of a validated JWT.
    pub request_principal: Option<String>,
    /// The validated JWT's payload (`scope`/`permission` split into lists), for
    /// `request.auth.*` conditions.
    pub request_claims: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    pub method: String,
    /// The normalized path; a query string is ignored.
    pub path: String,
    pub host: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.to_ascii_lowercase() == name)
            .map(|(_, v)| v.as_str())
            .collect();
        match name.as_str() {
            ":method" => Some(self.method.clone()),
            ":path" => Some(self.path.clone()),
            ":authority" | "host" => Some(self.host.clone()),
            _ if values.is_empty() => None,
            // Envoy joins repeated headers with commas before matching.
            _ => Some(values.join(",")),
        }
    }
}

/// The trust domain, namespace and service account of a SPIFFE id.
fn spiffe_parts(principal: &str) -> Option<(&str, &str, &str)> {
    let rest = principal.strip_prefix("spiffe://")?;
    let (td, path) = rest.split_once('/')?;
    let path = path.strip_prefix("ns/")?;
    let (ns, rest) = path.split_once('/')?;
    let sa = rest.strip_prefix("sa/")?;
    Some((td, ns, sa))
}

/// Istio prefixes principals with `spiffe://` before matching the peer certificate's URI.
fn principal_match(pattern: &str, principal: Option<&str>) -> bool {
    let Some(principal) = principal else {
        return false;
    };
    if pattern == "*" {
        return !principal.is_empty();
    }
    let pattern = if pattern.starts_with("spiffe://") || pattern.starts_with('*') {
        pattern.to_string()
    } else {
        format!("spiffe://{pattern}")
    };
    match pattern.strip_prefix('*') {
        Some(suffix) => principal.starts_with("spiffe://") && principal.ends_with(suffix),
        None => glob_match(&pattern, principal),
    }
}

fn namespace_match(pattern: &str, principal: Option<&str>) -> bool {
    principal
        .and_then(spiffe_parts)
        .is_some_and(|(_, ns, _)| glob_match(pattern, ns))
}

/// `serviceAccounts`: `ns/sa`, or `sa` in the policy's namespace.
fn service_account_match(pattern: &str, policy_ns: &str, principal: Option<&str>) -> bool {
    let (ns, sa) = pattern.split_once('/').unwrap_or((policy_ns, pattern));
    principal
        .and_then(spiffe_parts)
        .is_some_and(|(_, p_ns, p_sa)| p_ns == ns && p_sa == sa)
}

fn ip_match(block: &str, ip: Option<IpAddr>) -> bool {
    match (IpBlock::parse(block), ip) {
        (Some(block), Some(ip)) => block.contains(ip),
        _ => false,
    }
}

/// `values` (any may match; empty is no constraint) and `notValues` (none may match).
fn field(values: &[String], not_values: &[String], matches: impl Fn(&str) -> bool) -> bool {
    (values.is_empty() || values.iter().any(|v| matches(v)))
        && !not_values.iter().any(|v| matches(v))
}

/// Istio's request principal (`<iss>/<sub>`) as its RBAC filters match it: the pattern splits
/// at its last `/` into issuer and subject, each matched against the token's own `iss` and
/// `sub` claims. So a token without `sub` has no principal (even for `*`), and `*/x` is a
/// suffix of the subject alone.
fn request_principal_match(pattern: &str, request: &Request) -> bool {
    let claim = |name: &str| {
        request
            .request_claims
            .as_ref()
            .and_then(|c| c.get(name))
            .and_then(serde_json::Value::as_str)
    };
    let (Some(iss), Some(sub)) = (claim("iss"), claim("sub")) else {
        return false;
    };
    let present = |v: &str| !v.is_empty();
    if pattern == "*" {
        present(iss) && present(sub)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        present(iss) && sub.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        match prefix.rsplit_once('/') {
            Some((i, "")) => iss == i && present(sub),
            Some((i, s)) => iss == i && sub.starts_with(s),
            None => iss.starts_with(prefix) && present(sub),
        }
    } else {
        let (i, s) = pattern.rsplit_once('/').unwrap_or((pattern, ""));
        iss == i && sub == s
    }
}

impl Source {
    fn matches(&self, policy_ns: &str, request: &Request, tcp: bool) -> bool {
        let principal = request.source_principal.as_deref();
        field(&self.principals, &self.not_principals, |p| {
            principal_match(p, principal)
        }) && field(&self.namespaces, &self.not_namespaces, |p| {
            namespace_match(p, principal)
        }) && field(&self.service_accounts, &self.not_service_accounts, |p| {
            service_account_match(p, policy_ns, principal)
        }) && field(&self.ip_blocks, &self.not_ip_blocks, |b| {
            ip_match(b, request.source_ip)
        }) && field(&self.remote_ip_blocks, &self.not_remote_ip_blocks, |b| {
            ip_match(b, request.remote_ip)
        }) && (tcp
            || field(
                &self.request_principals,
                &self.not_request_principals,
                |p| request_principal_match(p, request),
            ))
    }
}

impl Operation {
    fn matches(&self, request: &Request, tcp: bool) -> bool {
        let port = request.destination_port.to_string();
        let ports = field(&self.ports, &self.not_ports, |p| p == port);
        if tcp {
            return ports;
        }
        let Some(http) = &request.http else {
            return false;
        };
        let host = http.host.to_ascii_lowercase();
        ports
            && field(&self.hosts, &self.not_hosts, |h| {
                glob_match(&h.to_ascii_lowercase(), &host)
            })
            && field(&self.methods, &self.not_methods, |m| {
                glob_match(m, &http.method)
            })
            && field(&self.paths, &self.not_paths, |p| {
                path_match(p, path_without_query(&http.path))
            })
    }
}

/// The string values of a (nested) JWT claim: a string, or the strings of a list.
fn claim_strings(request: &Request, path: &[&str]) -> Vec<String> {
    let Some(claims) = &request.request_claims else {
        return Vec::new();
    };
    let mut value = claims.get(path[0]);
    for key in &path[1..] {
        value = value.and_then(|v| v.get(key));
    }
    match value {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn path_without_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

impl Condition {
    fn matches(&self, request: &Request) -> bool {
        let Some(key) = self.parsed_key() else {
            return false;
        };
        let principal = request.source_principal.as_deref();
        match key {
            ConditionKey::SourceIp => field(&self.values, &self.not_values, |b| {
                ip_match(b, request.source_ip)
            }),
            ConditionKey::RemoteIp => field(&self.values, &self.not_values, |b| {
                ip_match(b, request.remote_ip)
            }),
            ConditionKey::DestinationIp => field(&self.values, &self.not_values, |b| {
                ip_match(b, request.destination_ip)
            }),
            ConditionKey::DestinationPort => {
                let port = request.destination_port.to_string();
                field(&self.values, &self.not_values, |p| p == port)
            }
            ConditionKey::SourceNamespace => field(&self.values, &self.not_values, |p| {
                namespace_match(p, principal)
            }),
            ConditionKey::SourcePrincipal => field(&self.values, &self.not_values, |p| {
                principal_match(p, principal)
            }),
            ConditionKey::ConnectionSni => {
                let sni = request.sni.as_deref().unwrap_or_default();
                field(&self.values, &self.not_values, |p| glob_match(p, sni))
            }
            ConditionKey::RequestHeader(name) => {
                let value = request.http.as_ref().and_then(|h| h.header(name));
                field(&self.values, &self.not_values, |p| {
                    value.as_deref().is_some_and(|v| glob_match(p, v))
                })
            }
            ConditionKey::RequestPrincipal => field(&self.values, &self.not_values, |p| {
                request_principal_match(p, request)
            }),
            ConditionKey::RequestAudiences => {
                let values = claim_strings(request, &["aud"]);
                field(&self.values, &self.not_values, |p| {
                    values.iter().any(|v| glob_match(p, v))
                })
            }
            ConditionKey::RequestPresenter => {
                let values = claim_strings(request, &["azp"]);
                field(&self.values, &self.not_values, |p| {
                    values.iter().any(|v| glob_match(p, v))
                })
            }
            ConditionKey::RequestClaim(path) => {
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                let values = claim_strings(request, &path);
                field(&self.values, &self.not_values, |p| {
                    values.iter().any(|v| glob_match(p, v))
                })
            }
            // No filter Ward configures sets this metadata.
            ConditionKey::EnvoyFilterMetadata { .. } => {
                field(&self.values, &self.not_values, |_| false)
            }
        }
    }
}

impl Rule {
    /// Whether the rule matches. On TCP, an ALLOW rule with HTTP-only fields matches nothing
    /// and a DENY or AUDIT rule is evaluated without them, as Istio builds the network filter.
    pub fn matches(&self, action: Action, policy_ns: &str, request: &Request) -> bool {
        let tcp = request.http.is_none();
        if tcp && self.http_only() && action == Action::Allow {
            return false;
        }
        let from =
            self.from.is_empty() || self.from.iter().any(|s| s.matches(policy_ns, request, tcp));
        let to = self.to.is_empty() || self.to.iter().any(|o| o.matches(request, tcp));
        let when = self.when.iter().all(|c| {
            let http_only = c.parsed_key().is_some_and(ConditionKey::http_only);
            (tcp && http_only) || c.matches(request)
        });
        from && to && when
    }
}

/// Why a request was allowed or denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A DENY rule matched.
    DeniedBy(String),
    /// An ALLOW rule matched.
    AllowedBy(String),
    /// The workload has ALLOW policies and none matched.
    NoAllowMatched,
    /// No policy applies to the workload (or none enforces anything).
    NoPolicy,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::DeniedBy(rule) => write!(f, "denied by {rule}"),
            Reason::AllowedBy(rule) => write!(f, "allowed by {rule}"),
            Reason::NoAllowMatched => write!(f, "no ALLOW policy matched"),
            Reason::NoPolicy => write!(f, "no policy applies"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub allowed: bool,
    pub reason: Reason,
    /// Dry-run policies: (rule id, what it would have done: ALLOW or DENY).
    pub dry_run: Vec<(String, Action)>,
    /// AUDIT rules that matched.
    pub audited: Vec<String>,
}

/// The matching rule Envoy reports: its RBAC engine keeps policies in a map ordered by name,
/// so among several matches the lexicographically first id decides.
fn first_match<'a>(
    policies: impl Iterator<Item = &'a AuthorizationPolicy>,
    request: &Request,
) -> Option<String> {
    policies
        .flat_map(|policy| {
            policy
                .rules
                .iter()
                .enumerate()
                .filter(|(_, rule)| rule.matches(policy.action, &policy.namespace, request))
                .map(|(i, _)| policy.rule_id(i))
        })
        .min()
}

/// Decides one request against the policies that select its destination workload, as the
/// RBAC filters Ward generates do. CUSTOM policies are not supported and are skipped (the
/// control plane refuses them before they get here).
pub fn evaluate(policies: &[AuthorizationPolicy], request: &Request) -> Evaluation {
    let with = |action: Action, dry_run: bool| {
        policies
            .iter()
            .filter(move |p| p.action == action && p.dry_run == dry_run)
    };
    let mut dry_run = Vec::new();
    if let Some(rule) = first_match(with(Action::Deny, true), request) {
        dry_run.push((rule, Action::Deny));
    }
    if with(Action::Allow, true).next().is_some() {
        match first_match(with(Action::Allow, true), request) {
            Some(rule) => dry_run.push((rule, Action::Allow)),
            None => dry_run.push(("none".to_string(), Action::Deny)),
        }
    }
    let audited = with(Action::Audit, false)
        .flat_map(|p| {
            p.rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.matches(Action::Audit, &p.namespace, request))
                .map(|(i, _)| p.rule_id(i))
        })
        .collect();
    let (allowed, reason) = if let Some(rule) = first_match(with(Action::Deny, false), request) {
        (false, Reason::DeniedBy(rule))
    } else if with(Action::Allow, false).next().is_some() {
        match first_match(with(Action::Allow, false), request) {
            Some(rule) => (true, Reason::AllowedBy(rule)),
            None => (false, Reason::NoAllowMatched),
        }
    } else {
        (true, Reason::NoPolicy)
    };
    Evaluation {
        allowed,
        reason,
        dry_run,
        audited,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(action: Action, rules: Vec<Rule>) -> AuthorizationPolicy {
        AuthorizationPolicy {
            name: "p".into(),
            namespace: "default".into(),
            action,
            rules,
            dry_run: false,
        }
    }

    fn http(principal: Option<&str>, method: &str, path: &str) -> Request {
        Request {
            source_principal: principal.map(str::to_string),
            destination_port: 8080,
            http: Some(HttpRequest {
                method: method.into(),
                path: path.into(),
                host: "exam-scheduler".into(),
                headers: Vec::new(),
            }),
            ..Default::default()
        }
    }

    const STUDENT: &str = "spiffe://cluster.local/ns/default/sa/student-portal-sa";

    #[test]
    fn globs_and_templates() {
        assert!(glob_match("*", "x"));
        assert!(!glob_match("*", ""));
        assert!(glob_match("/admin*", "/admin/x"));
        assert!(glob_match("*.json", "/a.json"));
        assert!(!glob_match("/admin", "/admin/"));
        assert!(path_match("/a/{*}/c", "/a/b/c"));
        assert!(!path_match("/a/{*}/c", "/a/b/x/c"));
        assert!(path_match("/{**}/c", "/a/b/c"));
        assert!(!path_match("/{**}/c", "/c"));
    }

    #[test]
    fn cidr_blocks() {
        let block = IpBlock::parse("10.1.0.0/16").unwrap();
        assert!(block.contains("10.1.2.3".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(IpBlock::parse("1.2.3.4")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        assert!(IpBlock::parse("1.2.3.4/33").is_none());
        assert!(IpBlock::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn condition_keys() {
        assert_eq!(
            ConditionKey::parse("request.headers[X-Token]"),
            Some(ConditionKey::RequestHeader("X-Token".into()))
        );
        assert_eq!(
            ConditionKey::parse("request.auth.claims[a][b]"),
            Some(ConditionKey::RequestClaim(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            ConditionKey::parse("experimental.envoy.filters.a.b[c]"),
            Some(ConditionKey::EnvoyFilterMetadata {
                filter: "envoy.filters.a.b".into(),
                key: "c".into()
            })
        );
        assert_eq!(ConditionKey::parse("request.headers"), None);
        assert_eq!(ConditionKey::parse("source.user"), None);
    }

    #[test]
    fn allow_policies_deny_what_they_do_not_match() {
        let rule = Rule {
            from: vec![Source {
                principals: vec!["cluster.local/ns/default/sa/student-portal-sa".into()],
                ..Default::default()
            }],
            to: vec![Operation {
                methods: vec!["POST".into()],
                ..Default::default()
            }],
            when: vec![],
        };
        let policies = [policy(Action::Allow, vec![rule])];
        let post = evaluate(&policies, &http(Some(STUDENT), "POST", "/"));
        assert!(post.allowed);
        assert_eq!(
            post.reason,
            Reason::AllowedBy("ns[default]-policy[p]-rule[0]".into())
        );
        let get = evaluate(&policies, &http(Some(STUDENT), "GET", "/"));
        assert_eq!((get.allowed, get.reason), (false, Reason::NoAllowMatched));
        assert!(!evaluate(&policies, &http(None, "POST", "/")).allowed);
    }

    #[test]
    fn no_rules_matches_nothing_and_an_empty_rule_everything() {
        let nothing = [policy(Action::Allow, vec![])];
        assert!(!evaluate(&nothing, &http(None, "GET", "/")).allowed);
        let everything = [policy(Action::Allow, vec![Rule::default()])];
        assert!(evaluate(&everything, &http(None, "GET", "/")).allowed);
        let deny_all = [policy(Action::Deny, vec![Rule::default()])];
        assert!(!evaluate(&deny_all, &http(None, "GET", "/")).allowed);
    }

    #[test]
    fn deny_wins_over_allow() {
        let deny = policy(
            Action::Deny,
            vec![Rule {
                to: vec![Operation {
                    paths: vec!["/admin*".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        );
        let allow = policy(Action::Allow, vec![Rule::default()]);
        let policies = [allow, deny];
        let admin = evaluate(&policies, &http(None, "GET", "/admin/x?y=1"));
        assert_eq!(
            admin.reason,
            Reason::DeniedBy("ns[default]-policy[p]-rule[0]".into())
        );
        assert!(evaluate(&policies, &http(None, "GET", "/public")).allowed);
    }

    #[test]
    fn http_fields_on_tcp_fail_closed() {
        let methods = Rule {
            to: vec![Operation {
                methods: vec!["GET".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let tcp = Request {
            destination_port: 5432,
            ..Default::default()
        };
        // ALLOW: the rule matches nothing, so nothing is allowed.
        assert!(!evaluate(&[policy(Action::Allow, vec![methods.clone()])], &tcp).allowed);
        // DENY: the HTTP field is dropped, so everything is denied.
        assert!(!evaluate(&[policy(Action::Deny, vec![methods])], &tcp).allowed);
    }

    #[test]
    fn not_values_match_when_the_attribute_is_absent() {
        let rule = Rule {
            from: vec![Source {
                not_principals: vec!["*".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let deny_plaintext = [policy(Action::Deny, vec![rule])];
        assert!(!evaluate(&deny_plaintext, &http(None, "GET", "/")).allowed);
        assert!(evaluate(&deny_plaintext, &http(Some(STUDENT), "GET", "/")).allowed);
    }

    #[test]
    fn namespaces_and_service_accounts_come_from_the_principal() {
        let rule = Rule {
            from: vec![Source {
                namespaces: vec!["def*".into()],
                service_accounts: vec!["student-portal-sa".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let policies = [policy(Action::Allow, vec![rule])];
        assert!(evaluate(&policies, &http(Some(STUDENT), "GET", "/")).allowed);
        let other = "spiffe://cluster.local/ns/default/sa/other";
        assert!(!evaluate(&policies, &http(Some(other), "GET", "/")).allowed);
    }

    #[test]
    fn request_principals_and_claims_come_from_the_verified_token() {
        let rule = Rule {
            from: vec![Source {
                request_principals: vec!["testing@secure.istio.io/*".into()],
                ..Default::default()
            }],
            when: vec![
                Condition::new(
                    "request.auth.claims[groups]".into(),
                    vec!["group1".into()],
                    vec![],
                ),
                Condition::new(
                    "request.auth.claims[nested][key1]".into(),
                    vec!["valueB".into()],
                    vec![],
                ),
            ],
            ..Default::default()
        };
        let policies = [policy(Action::Allow, vec![rule])];
        let mut request = http(None, "GET", "/");
        assert!(!evaluate(&policies, &request).allowed);
        request.request_principal = Some("testing@secure.istio.io/alice".into());
        request.request_claims = serde_json::json!({
            "iss": "testing@secure.istio.io",
            "sub": "alice",
            "groups": ["group2", "group1"],
            "nested": {"key1": ["valueA", "valueB"]}
        })
        .as_object()
        .cloned();
        assert!(evaluate(&policies, &request).allowed);
        request.request_claims = serde_json::json!({
            "iss": "testing@secure.istio.io", "sub": "alice",
            "groups": "group2", "nested": {"key1": "valueB"}
        })
        .as_object()
        .cloned();
        assert!(!evaluate(&policies, &request).allowed);
    }

    /// As Istio's RBAC filters match `<iss>/<sub>`: split at the pattern's last `/`, each half
    /// on its own claim (the engines differential test holds both engines to this).
    #[test]
    fn request_principals_match_issuer_and_subject_as_istio_splits_them() {
        let matches = |pattern: &str, claims: serde_json::Value| {
            let request = Request {
                request_claims: claims.as_object().cloned(),
                ..Default::default()
            };
            request_principal_match(pattern, &request)
        };
        let tenant = serde_json::json!({"iss": "https://idp.example/t", "sub": "team/carol"});
        assert!(matches("https://idp.example/t/team*", tenant.clone()));
        assert!(matches("*carol", tenant.clone()));
        assert!(matches("*", tenant.clone()));
        // The split is at the last `/`: issuer `https://idp.example/t/team`, so a subject
        // with a `/` is never matched exactly.
        assert!(!matches("https://idp.example/t/team/carol", tenant.clone()));
        assert!(!matches("https://idp.example/t/team/*", tenant.clone()));
        assert!(matches(
            "https://idp.example/t/*",
            serde_json::json!({"iss": "https://idp.example/t", "sub": "carol"})
        ));
        // `*/x` is a suffix of the subject: `/carol`.
        assert!(matches("*/carol", tenant));
        assert!(!matches(
            "*/alice",
            serde_json::json!({"iss": "i", "sub": "alice"})
        ));
        // No `sub`: no principal, not even for `*` or `<iss>/*`.
        let no_sub = serde_json::json!({"iss": "testing@secure.istio.io"});
        assert!(!matches("*", no_sub.clone()));
        assert!(!matches("testing@secure.istio.io/*", no_sub));
        // A pattern without `/` is an issuer with an empty subject, or an issuer prefix.
        let bare = serde_json::json!({"iss": "issuer", "sub": ""});
        assert!(matches("issuer", bare.clone()));
        assert!(!matches("iss*", bare));
        assert!(matches(
            "iss*",
            serde_json::json!({"iss": "issuer", "sub": "s"})
        ));
    }

    #[test]
    fn dry_run_policies_are_reported_not_enforced() {
        let mut deny = policy(Action::Deny, vec![Rule::default()]);
        deny.dry_run = true;
        let result = evaluate(&[deny], &http(None, "GET", "/"));
        assert!(result.allowed);
        assert_eq!(
            result.dry_run,
            vec![("ns[default]-policy[p]-rule[0]".to_string(), Action::Deny)]
        );
    }
}
