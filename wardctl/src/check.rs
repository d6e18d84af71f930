//! `wardctl check`: predicts the inbound authorization decision for one request before
//! anyone sends it, in the spirit of `istioctl x authz check`, and explains it: the mTLS
//! the connection would use, the policies that select the destination, which rule of each
//! matched, and what decided. It runs the same policy and JWT semantics (`wasm_authz`) the
//! sidecars enforce, on the same resolved mesh, so the end-to-end tests can hold it to what
//! Envoy does.

use std::fmt;

use serde::Serialize;
use wasm_authz::policy::{self, HttpRequest, Reason, Request};

use ward_config::model::{is_tcp_port, Mesh, MtlsMode, Service, ServicePort, Workload};
use ward_xds::tls::{cluster_tls, ClusterTls};

/// One request to predict.
#[derive(Debug, Clone)]
pub struct CheckQuery {
    /// `(namespace, workload)` of the client's sidecar; None for a client with no sidecar.
    pub source: Option<(String, String)>,
    pub destination: (String, String),
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The Service port the client calls (default: the destination's first).
    pub port: Option<u16>,
    /// The Host header (default: the Service's short name, as `curl SERVICE` sends).
    pub host: Option<String>,
    /// A JWT sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// Unix seconds, for the token's `exp` and `nbf`.
    pub now: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Allow,
    /// RBAC answers 403 `RBAC: access denied` (on a TCP port: closes the connection).
    Deny,
    /// The connection fails before any request: STRICT mTLS and a plaintext client.
    Refused,
    /// The token is refused by request authentication: 401.
    Unauthenticated,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub verdict: Verdict,
    /// The status the sidecar answers an HTTP request with: 200, 403 (RBAC, or a token for
    /// another audience), 401; none when the connection is refused or the port is TCP.
    pub status: Option<u16>,
    /// The rule that decided (`ns[NS]-policy[NAME]-rule[I]`), as Envoy's access log names it.
    pub decided_by: Option<String>,
    pub reason: String,
    pub source_principal: Option<String>,
    /// `<iss>/<sub>` of the verified token.
    pub request_principal: Option<String>,
    pub destination_port: u16,
    /// False on a plain TCP port, where only connection attributes count.
    pub http: bool,
    pub mtls: String,
    pub considered: Vec<ConsideredPolicy>,
    /// Dry-run rules and what they would have done.
    pub dry_run: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConsideredPolicy {
    pub policy: String,
    pub action: String,
    pub dry_run: bool,
    pub source: String,
    /// Rule ids that match this request.
    pub matched_rules: Vec<String>,
    pub rules: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("no workload {0}/{1} in the mesh")]
    UnknownWorkload(String, String),
    #[error("workload {0}/{1} is behind no Service, so no client can call it by name")]
    NoService(String, String),
    #[error("Service {service} has no port {port} (ports: {ports})")]
    UnknownPort {
        service: String,
        port: u16,
        ports: String,
    },
}

fn workload<'m>(mesh: &'m Mesh, (ns, name): &(String, String)) -> Result<&'m Workload, CheckError> {
    mesh.workload(ns, name)
        .ok_or_else(|| CheckError::UnknownWorkload(ns.clone(), name.clone()))
}

fn service_port<'m>(
    mesh: &'m Mesh,
    destination: &'m Workload,
    port: Option<u16>,
) -> Result<(&'m Service, &'m ServicePort), CheckError> {
    let service = mesh.services_of(destination).next().ok_or_else(|| {
        CheckError::NoService(destination.namespace.clone(), destination.name.clone())
    })?;
    let found = match port {
        None => service.ports.first(),
        Some(p) => service.ports.iter().find(|sp| sp.port == p),
    };
    let port_number = port.unwrap_or_default();
    found
        .map(|p| (service, p))
        .ok_or_else(|| CheckError::UnknownPort {
            service: service.name.clone(),
            port: port_number,
            ports: service
                .ports
                .iter()
                .map(|p| p.port.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

pub fn check(mesh: &Mesh, query: &CheckQuery) -> Result<CheckReport, CheckError> {
    let destination = workload(mesh, &query.destination)?;
    let source = query
        .source
        .as_ref()
        .map(|s| workload(mesh, s))
        .transpose()?;
    let (service, port) = service_port(mesh, destination, query.port)?;
    let server_mode = mesh.effective_mtls(destination, port.target_port).mode;
    // What the client's sidecar sends: Istio's auto mTLS unless a DestinationRule says.
    let client_mtls = source.is_some()
        && match cluster_tls(mesh.traffic_policy(service, port.port, None).tls.as_ref()) {
            ClusterTls::Auto => server_mode != MtlsMode::Disable,
            ClusterTls::IstioMutual => true,
            ClusterTls::Plaintext | ClusterTls::Origination(_) => false,
        };
    let mtls = format!(
        "{} (server {}, client {})",
        if client_mtls { "mTLS" } else { "plaintext" },
        server_mode.as_str(),
        match source {
            Some(_) => "sidecar",
            None => "no sidecar",
        }
    );
    let source_principal = (client_mtls)
        .then(|| source.map(|s| mesh.identity(s).to_string()))
        .flatten();
    let policies: Vec<policy::AuthorizationPolicy> = mesh
        .authorization_policies_for(destination)
        .into_iter()
        .cloned()
        .collect();
    // Request authentication, as the wasm engine does it; the native engine's jwt_authn
    // decides alike but where tests/tests/engines_differential.rs lists otherwise.
    let mut headers = query.headers.clone();
    if let Some(token) = &query.token {
        headers.push(("authorization".to_string(), format!("Bearer {token}")));
    }
    let jwt_rules = mesh.jwt_rules_for(destination);
    // A CORS preflight's token is not looked at, in either engine.
    let mut with_method = headers.clone();
    with_method.push((":method".to_string(), query.method.clone()));
    let authenticated = if wasm_authz::is_cors_preflight(&with_method) {
        Ok(None)
    } else {
        wasm_authz::jwt::authenticate(&jwt_rules, &headers, &query.path, query.now)
    };
    let verified = authenticated.as_ref().ok().and_then(Option::as_ref);
    let instance_ip = |w: &Workload| w.instances.first().map(|i| i.address.into());
    let request = Request {
        source_principal: source_principal.clone(),
        source_ip: source.and_then(instance_ip),
        remote_ip: source.and_then(instance_ip),
        destination_ip: instance_ip(destination),
        destination_port: port.target_port,
        sni: None,
        // A plain TCP port sees no request: HTTP-only rules are handled as on Envoy's
        // network filter.
        http: (!is_tcp_port(port)).then(|| HttpRequest {
            method: query.method.clone(),
            path: query.path.clone(),
            host: query.host.clone().unwrap_or_else(|| service.name.clone()),
            headers: headers.clone(),
        }),
        request_principal: verified.map(wasm_authz::jwt::VerifiedJwt::principal),
        request_claims: verified.map(|t| t.claims.clone()),
    };
    let considered = mesh
        .authorization_policies
        .iter()
        .filter(|scoped| policies.contains(&scoped.policy))
        .map(|scoped| {
            let p = &scoped.policy;
            ConsideredPolicy {
                policy: format!("{}/{}", p.namespace, p.name),
                action: p.action.as_str().to_string(),
                dry_run: p.dry_run,
                source: format!("{}:{}", scoped.source.file, scoped.source.line),
                matched_rules: p
                    .rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.matches(p.action, &p.namespace, &request))
                    .map(|(i, _)| p.rule_id(i))
                    .collect(),
                rules: p.rules.len(),
            }
        })
        .collect();
    let refused = server_mode == MtlsMode::Strict && !client_mtls;
    let evaluation = policy::evaluate(&policies, &request);
    let (verdict, decided_by, reason) = if refused {
        (
            Verdict::Refused,
            None,
            "STRICT mTLS on the destination and the client sends plaintext: the connection is reset before any request".to_string(),
        )
    } else if let Err(error) = &authenticated {
        (
            Verdict::Unauthenticated,
            None,
            format!("request authentication refuses the token: {error}"),
        )
    } else {
        let decided_by = match &evaluation.reason {
            Reason::DeniedBy(rule) | Reason::AllowedBy(rule) => Some(rule.clone()),
            Reason::NoAllowMatched | Reason::NoPolicy => None,
        };
        let verdict = if evaluation.allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        (verdict, decided_by, evaluation.reason.to_string())
    };
    let status = match (&verdict, &authenticated) {
        (Verdict::Refused, _) => None,
        _ if is_tcp_port(port) => None,
        (Verdict::Unauthenticated, Err(error)) => Some(wasm_authz::refusal_status(error) as u16),
        (Verdict::Deny, _) => Some(403),
        _ => Some(200),
    };
    Ok(CheckReport {
        verdict,
        status,
        decided_by,
        reason,
        source_principal,
        request_principal: request.request_principal.clone(),
        destination_port: port.target_port,
        http: !is_tcp_port(port),
        mtls,
        considered,
        dry_run: evaluation
            .dry_run
            .into_iter()
            .map(|(rule, action)| (rule, action.as_str().to_string()))
            .collect(),
    })
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Allow => "ALLOW",
            Verdict::Deny => "DENY (403 RBAC: access denied)",
            Verdict::Refused => "REFUSED (connection reset)",
            Verdict::Unauthenticated => "UNAUTHENTICATED",
        };
        match (self.verdict, self.status) {
            (Verdict::Unauthenticated, Some(status)) => {
                writeln!(f, "{verdict} ({status}): {}", self.reason)?
            }
            _ => writeln!(f, "{verdict}: {}", self.reason)?,
        }
        if let Some(rule) = &self.decided_by {
            writeln!(f, "  decided by: {rule}")?;
        } else if self.verdict == Verdict::Deny {
            writeln!(
                f,
                "  decided by: none (Envoy logs rbac_access_denied_matched_policy[none])"
            )?;
        }
        writeln!(f, "  connection: {}", self.mtls)?;
        writeln!(
            f,
            "  source principal: {}",
            self.source_principal.as_deref().unwrap_or("none")
        )?;
        if let Some(principal) = &self.request_principal {
            writeln!(f, "  request principal: {principal}")?;
        }
        let protocol = if self.http {
            "HTTP"
        } else {
            "TCP: method, path and headers do not apply"
        };
        writeln!(
            f,
            "  destination port: {} ({protocol})",
            self.destination_port
        )?;
        if self.considered.is_empty() {
            writeln!(f, "  policies considered: none select the destination")?;
        } else {
            writeln!(f, "  policies considered:")?;
            for p in &self.considered {
                let matched = if p.matched_rules.is_empty() {
                    format!("no rule of {} matches", p.rules)
                } else {
                    format!("matches {}", p.matched_rules.join(", "))
                };
                let dry = if p.dry_run { " (dry-run)" } else { "" };
                writeln!(
                    f,
                    "    {} {}{dry} [{}]: {matched}",
                    p.action, p.policy, p.source
                )?;
            }
        }
        for (rule, action) in &self.dry_run {
            writeln!(f, "  dry-run: {rule} would {action}")?;
        }
        Ok(())
    }
}

/// Splits `Name: value` header arguments as curl's `-H` takes them.
pub fn parse_header(text: &str) -> Option<(String, String)> {
    let (name, value) = text.split_once(':')?;
    let name = name.trim();
    (!name.is_empty()).then(|| (name.to_ascii_lowercase(), value.trim().to_string()))
}
