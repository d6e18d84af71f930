//! Ward's sidecar filter, loaded by every Envoy as `envoy.filters.http.wasm`.
//!
//! This crate is split so that everything except the proxy-wasm glue builds and tests natively:
//! the configuration the control plane sends ([`FilterConfig`]) and the per-request decision
//! ([`Engine`]) live here; `shim` (wasm32 only) maps them onto proxy-wasm's host calls.
//!
//! Every response is marked with [`MARKER_HEADER`], so end-to-end tests can prove the module is
//! loaded and configured for the right workload. With an `authorization` section the filter
//! is also an authorization engine: it authenticates JWTs ([`jwt`], 401) and evaluates the
//! workload's AuthorizationPolicies ([`policy`], 403), with the same semantics as the RBAC
//! filters the control plane builds.
//!
//! On the client side (the outbound listener, a second plugin with an [`OutboundConfig`]) it
//! keeps Linkerd's retry budget for each destination ([`retry_budget`]) and tells Envoy's
//! router how many retries each request may make.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

pub mod jwt;
pub mod policy;
pub mod retry_budget;
#[cfg(target_arch = "wasm32")]
mod shim;

/// Response header that names the workload whose sidecar served the request.
pub const MARKER_HEADER: &str = "x-ward-wasm";

/// The plugin configuration, sent by the control plane as JSON in the Wasm filter's
/// `configuration` (a `google.protobuf.StringValue`).
///
/// Unknown fields are ignored so the control plane can roll out new fields before every
/// sidecar runs a module that understands them; a config the module cannot use makes the
/// plugin fail, and with `fail_open: false` that denies every request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct FilterConfig {
    /// Deployment name of the workload this sidecar belongs to.
    pub workload: String,
    pub namespace: String,
    /// SPIFFE id of the workload, `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    pub identity: String,
    /// Version of the mesh config this filter config was generated from (for logs).
    pub version: String,
    /// Policies and JWT rules to enforce here; absent: the filter only marks responses.
    #[serde(default)]
    pub authorization: Option<AuthorizationConfig>,
    /// Present on the outbound listener's filter: retry budgets instead of authorization.
    #[serde(default)]
    pub outbound: Option<OutboundConfig>,
}

/// What the client-side filter needs: the retryable routes and their destinations' budgets.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundConfig {
    /// By destination (the ServiceProfile's name, the service's FQDN).
    pub budgets: BTreeMap<String, retry_budget::RetryBudgetConfig>,
    /// By [`OutboundConfig::route_key`] of the Envoy cluster and route a request matched.
    pub retryable_routes: BTreeMap<String, RetryableRoute>,
}

/// A route whose failures Envoy retries, within its destination's budget.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryableRoute {
    /// Key into [`OutboundConfig::budgets`].
    pub budget: String,
    /// The route's own cap (its retry policy's `num_retries`).
    pub max_retries: u32,
}

impl OutboundConfig {
    /// Routes are named by users (`GET /aura`) and repeat across services; the cluster
    /// tells them apart.
    pub fn route_key(cluster: &str, route: &str) -> String {
        format!("{cluster}/{route}")
    }

    /// The retry rules for a request Envoy routed to `cluster` by `route`, if retryable.
    pub fn retryable(
        &self,
        cluster: &str,
        route: &str,
    ) -> Option<(&str, &retry_budget::RetryBudgetConfig, u32)> {
        let entry = self
            .retryable_routes
            .get(&Self::route_key(cluster, route))?;
        let (key, budget) = self.budgets.get_key_value(&entry.budget)?;
        Some((key.as_str(), budget, entry.max_retries))
    }
}

/// What the filter enforces for its workload.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationConfig {
    #[serde(default)]
    pub policies: Vec<policy::AuthorizationPolicy>,
    #[serde(default)]
    pub jwt_rules: Vec<jwt::JwtRule>,
    /// Remember verified tokens (default); off only to measure verification itself.
    #[serde(default = "yes")]
    pub cache_tokens: bool,
    /// The Envoy cluster of the control plane, to ask it to fetch a `jwksUri` again when a
    /// token names a key the filter does not have (keys rotated at the issuer).
    #[serde(default)]
    pub key_refresh_cluster: Option<String>,
}

fn yes() -> bool {
    true
}

/// The request as the proxy sees it, after Envoy's path normalization.
#[derive(Debug, Clone, Default)]
pub struct HttpInput {
    /// Every header, pseudo-headers (`:method`, `:path`, `:authority`) included.
    pub headers: Vec<(String, String)>,
    /// The peer's SPIFFE id from its client certificate.
    pub source_principal: Option<String>,
    pub source_ip: Option<std::net::IpAddr>,
    pub destination_ip: Option<std::net::IpAddr>,
    pub destination_port: u16,
    pub sni: Option<String>,
    /// Unix seconds.
    pub now: i64,
}

impl HttpInput {
    fn header(&self, name: &str) -> String {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

/// Why a plugin configuration was rejected.
#[derive(Debug)]
pub enum ConfigError {
    /// Envoy passed no configuration at all.
    Empty,
    /// Not JSON, or not the shape of [`FilterConfig`] (missing field, wrong type).
    Json(serde_json::Error),
    /// A field that must name something is empty.
    EmptyField(&'static str),
    /// `identity` is not a `spiffe://` URI.
    NotSpiffeId(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Empty => write!(f, "the plugin configuration is empty"),
            ConfigError::Json(e) => write!(f, "invalid plugin configuration JSON: {e}"),
            ConfigError::EmptyField(field) => {
                write!(f, "plugin configuration field `{field}` is empty")
            }
            ConfigError::NotSpiffeId(id) => {
                write!(
                    f,
                    "plugin configuration `identity` is not a spiffe:// id: {id:?}"
                )
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Json(e) => Some(e),
            _ => None,
        }
    }
}

impl FilterConfig {
    /// Parses and validates the plugin configuration bytes Envoy hands to `on_configure`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::Empty);
        }
        let config: FilterConfig = serde_json::from_slice(bytes).map_err(ConfigError::Json)?;
        for (field, value) in [
            ("workload", &config.workload),
            ("namespace", &config.namespace),
            ("identity", &config.identity),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::EmptyField(field));
            }
        }
        if !config.identity.starts_with("spiffe://") {
            return Err(ConfigError::NotSpiffeId(config.identity));
        }
        Ok(config)
    }
}

/// What the filter does with one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    /// Headers to add to the response on its way back to the client.
    pub response_headers: Vec<(String, String)>,
    /// Request headers to remove before the app sees the request (verified tokens, and
    /// whatever a client sent in the headers the JWT rules write).
    pub strip_request_headers: Vec<String>,
    /// Request headers to set, after stripping (`outputPayloadToHeader`,
    /// `outputClaimToHeaders`).
    pub set_request_headers: Vec<(String, String)>,
    /// The token named a key its issuer's fetched JWKS lacks: ask the control plane to
    /// fetch the keys again (the request itself is refused, as Envoy's jwt_authn does).
    pub refresh_keys: Option<KeyRefresh>,
}

/// A request to the control plane to fetch an issuer's `jwksUri` again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRefresh {
    /// The control plane's cluster in Envoy.
    pub cluster: String,
    pub issuer: String,
    pub kid: String,
}

/// The control plane's gRPC method for [`KeyRefresh`]; its request message is
/// [`KeyRefresh::encode_request`], its response empty.
pub const KEY_REFRESH_SERVICE: &str = "ward.control.v1.KeyRefresh";
pub const KEY_REFRESH_METHOD: &str = "UnknownKey";

impl KeyRefresh {
    /// The protobuf request `{ string issuer = 1; string kid = 2; }`, encoded by hand so
    /// the wasm module needs no protobuf library.
    pub fn encode_request(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (field, value) in [(1u8, &self.issuer), (2u8, &self.kid)] {
            out.push(field << 3 | 2);
            let mut len = value.len();
            while len >= 0x80 {
                out.push((len as u8 & 0x7f) | 0x80);
                len >>= 7;
            }
            out.push(len as u8);
            out.extend_from_slice(value.as_bytes());
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the request through unchanged.
    Allow,
    /// Answer locally: 401 for a bad token (403 for one meant for another audience, as
    /// `jwt_authn` answers), 403 `RBAC: access denied` for a policy.
    Deny {
        status: u32,
        body: String,
        /// The rule that decided (`ns[..]-policy[..]-rule[..]`), or why (`none`, the JWT error).
        reason: String,
    },
}

/// The status `jwt_authn` refuses a token with: 403 for a valid token meant for another
/// audience, 401 for anything else.
pub fn refusal_status(error: &jwt::JwtError) -> u32 {
    match error {
        jwt::JwtError::WrongAudience => 403,
        _ => 401,
    }
}

/// An `OPTIONS` request with `Origin` and `Access-Control-Request-Method`, as jwt_authn's
/// `bypass_cors_preflight` recognizes one.
pub fn is_cors_preflight(headers: &[(String, String)]) -> bool {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
    };
    header(":method") == "OPTIONS"
        && !header("origin").is_empty()
        && !header("access-control-request-method").is_empty()
}

/// Decides per request from the configuration; built once per plugin configuration.
#[derive(Debug)]
pub struct Engine {
    config: FilterConfig,
    marker: String,
    /// Tokens verified under this configuration's keys.
    verified: jwt::VerifiedCache,
}

/// How many verified tokens an engine remembers.
const VERIFIED_TOKENS: usize = 4096;

impl Engine {
    pub fn new(config: FilterConfig) -> Self {
        let marker = format!("{}.{}", config.workload, config.namespace);
        Engine {
            config,
            marker,
            verified: jwt::VerifiedCache::new(VERIFIED_TOKENS),
        }
    }

    pub fn config(&self) -> &FilterConfig {
        &self.config
    }

    /// The marker every response carries: [`MARKER_HEADER`] with `<workload>.<namespace>`.
    pub fn marker(&self) -> (String, String) {
        (MARKER_HEADER.to_string(), self.marker.clone())
    }

    /// Decides one request; every response is marked with `<workload>.<namespace>`.
    pub fn decide(&self, input: &HttpInput) -> Decision {
        let mut response_headers = vec![self.marker()];
        let Some(authorization) = &self.config.authorization else {
            return Decision {
                verdict: Verdict::Allow,
                response_headers,
                strip_request_headers: Vec::new(),
                set_request_headers: Vec::new(),
                refresh_keys: None,
            };
        };
        let path = input.header(":path");
        // A CORS preflight carries no credentials: like Istio's jwt_authn
        // (`bypass_cors_preflight`), no token is looked at; the policies decide without one.
        let token = if is_cors_preflight(&input.headers) {
            Ok(None)
        } else {
            jwt::authenticate_cached(
                &authorization.jwt_rules,
                &input.headers,
                &path,
                input.now,
                authorization.cache_tokens.then_some(&self.verified),
            )
        };
        let token = match token {
            Ok(token) => token,
            Err(error) => {
                let refresh_keys = match (&error, &authorization.key_refresh_cluster) {
                    (jwt::JwtError::UnknownKid { issuer, kid }, Some(cluster)) => authorization
                        .jwt_rules
                        .iter()
                        .any(|r| r.issuer == *issuer && r.jwks_uri.is_some())
                        .then(|| KeyRefresh {
                            cluster: cluster.clone(),
                            issuer: issuer.clone(),
                            kid: kid.clone().unwrap_or_default(),
                        }),
                    _ => None,
                };
                response_headers.push((
                    "www-authenticate".to_string(),
                    format!("Bearer realm=\"{}\", error=\"invalid_token\"", self.marker),
                ));
                return Decision {
                    verdict: Verdict::Deny {
                        status: refusal_status(&error),
                        body: error.to_string(),
                        reason: error.to_string(),
                    },
                    response_headers,
                    strip_request_headers: Vec::new(),
                    set_request_headers: Vec::new(),
                    refresh_keys,
                };
            }
        };
        let token_rule = token.as_ref().and_then(|t| {
            authorization
                .jwt_rules
                .iter()
                .find(|r| r.issuer == t.issuer)
        });
        let mut strip_request_headers: Vec<String> = authorization
            .jwt_rules
            .iter()
            .flat_map(jwt::JwtRule::output_header_names)
            .collect();
        strip_request_headers.extend(
            token_rule
                .filter(|rule| !rule.forward_original_token)
                .map(jwt::JwtRule::token_headers)
                .unwrap_or_default(),
        );
        let set_request_headers = match (&token, token_rule) {
            (Some(token), Some(rule)) => token.output_headers(rule),
            _ => Vec::new(),
        };
        let request = policy::Request {
            source_principal: input.source_principal.clone(),
            source_ip: input.source_ip,
            remote_ip: input.source_ip,
            destination_ip: input.destination_ip,
            destination_port: input.destination_port,
            sni: input.sni.clone(),
            http: Some(policy::HttpRequest {
                method: input.header(":method"),
                path,
                host: input.header(":authority"),
                headers: input
                    .headers
                    .iter()
                    .filter(|(n, _)| !n.starts_with(':'))
                    .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                    .collect(),
            }),
            request_principal: token.as_ref().map(jwt::VerifiedJwt::principal),
            request_claims: token.map(|t| t.claims),
        };
        let evaluation = policy::evaluate(&authorization.policies, &request);
        let verdict = if evaluation.allowed {
            Verdict::Allow
        } else {
            let reason = match evaluation.reason {
                policy::Reason::DeniedBy(rule) => rule,
                _ => "none".to_string(),
            };
            Verdict::Deny {
                status: 403,
                body: "RBAC: access denied".to_string(),
                reason,
            }
        };
        Decision {
            verdict,
            response_headers,
            strip_request_headers,
            set_request_headers,
            refresh_keys: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"{
        "workload": "exam-scheduler",
        "namespace": "default",
        "identity": "spiffe://cluster.local/ns/default/sa/exam-scheduler",
        "version": "v7"
    }"#;

    #[test]
    fn parses_a_valid_config() {
        let config = FilterConfig::from_json(VALID.as_bytes()).unwrap();
        assert_eq!(
            config,
            FilterConfig {
                workload: "exam-scheduler".into(),
                namespace: "default".into(),
                identity: "spiffe://cluster.local/ns/default/sa/exam-scheduler".into(),
                version: "v7".into(),
                authorization: None,
                outbound: None,
            }
        );
    }

    #[test]
    fn ignores_unknown_fields() {
        let json = r#"{"workload":"a","namespace":"b","identity":"spiffe://td/ns/b/sa/a",
                       "version":"1","rules":[]}"#;
        assert_eq!(
            FilterConfig::from_json(json.as_bytes()).unwrap().workload,
            "a"
        );
    }

    #[test]
    fn rejects_empty_configuration() {
        assert!(matches!(
            FilterConfig::from_json(b""),
            Err(ConfigError::Empty)
        ));
        assert!(matches!(
            FilterConfig::from_json(b" \n"),
            Err(ConfigError::Empty)
        ));
    }

    #[test]
    fn rejects_malformed_json() {
        let err = FilterConfig::from_json(b"{not json").unwrap_err();
        assert!(matches!(err, ConfigError::Json(_)));
        assert!(err
            .to_string()
            .starts_with("invalid plugin configuration JSON"));
    }

    #[test]
    fn rejects_missing_field() {
        let json = r#"{"workload":"a","namespace":"b","version":"1"}"#;
        let err = FilterConfig::from_json(json.as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("missing field `identity`"),
            "{err}"
        );
    }

    #[test]
    fn rejects_wrong_type() {
        let json = r#"{"workload":1,"namespace":"b","identity":"spiffe://x","version":"1"}"#;
        assert!(matches!(
            FilterConfig::from_json(json.as_bytes()),
            Err(ConfigError::Json(_))
        ));
    }

    #[test]
    fn rejects_empty_names() {
        let json = r#"{"workload":"a","namespace":" ","identity":"spiffe://x","version":"1"}"#;
        assert!(matches!(
            FilterConfig::from_json(json.as_bytes()),
            Err(ConfigError::EmptyField("namespace"))
        ));
    }

    #[test]
    fn rejects_identity_that_is_not_spiffe() {
        let json = r#"{"workload":"a","namespace":"b","identity":"a.b","version":"1"}"#;
        let err = FilterConfig::from_json(json.as_bytes()).unwrap_err();
        assert!(matches!(err, ConfigError::NotSpiffeId(_)));
    }

    /// As Istio's jwt_authn (`bypass_cors_preflight`): a CORS preflight's token is not looked
    /// at; any other request's is.
    #[test]
    fn a_cors_preflight_is_not_authenticated() {
        let json = r#"{"workload":"a","namespace":"b","identity":"spiffe://td/ns/b/sa/a",
            "version":"1","authorization":{"policies":[],
            "jwtRules":[{"issuer":"i","jwks":"{\"keys\":[]}"}]}}"#;
        let engine = Engine::new(FilterConfig::from_json(json.as_bytes()).unwrap());
        let status = |headers: &[(&str, &str)]| {
            let mut all = vec![("authorization", "Bearer not-a-token"), (":path", "/")];
            all.extend(headers);
            let input = HttpInput {
                headers: all
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            };
            match engine.decide(&input).verdict {
                Verdict::Allow => 200,
                Verdict::Deny { status, .. } => status,
            }
        };
        let preflight = [
            (":method", "OPTIONS"),
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
        ];
        assert_eq!(status(&preflight), 200);
        assert_eq!(
            status(&preflight[..2]),
            401,
            "no Access-Control-Request-Method"
        );
        assert_eq!(status(&[(":method", "OPTIONS")]), 401, "no Origin");
        assert_eq!(status(&[(":method", "GET")]), 401);
    }

    #[test]
    fn engine_allows_and_marks_with_workload_and_namespace() {
        let engine = Engine::new(FilterConfig::from_json(VALID.as_bytes()).unwrap());
        assert_eq!(
            engine.decide(&HttpInput::default()),
            Decision {
                verdict: Verdict::Allow,
                response_headers: vec![("x-ward-wasm".into(), "exam-scheduler.default".into())],
                strip_request_headers: vec![],
                set_request_headers: vec![],
                refresh_keys: None,
            }
        );
    }
}
