//! Istio VirtualService HTTP routes on a service's outbound virtual host: matches,
//! destinations (subsets, weights), redirects, direct responses, rewrites, header changes,
//! faults, mirrors, CORS, timeouts and retries, the way Istio builds them. A request that
//! matches no route gets Envoy's 404, as in Istio.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValue, HeaderValueOption,
    RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, query_parameter_matcher, redirect_action, retry_policy, route, route_action,
    route_match, weighted_cluster, HeaderMatcher, QueryParameterMatcher, RedirectAction,
    RetryPolicy, Route, RouteAction, RouteMatch, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{fault_delay, FaultDelay};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as EnvoyCorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    fault_abort, FaultAbort, HttpFault,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher, RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent, FractionalPercent};
use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt32Value};

use crate::{any, duration_ms};
use ward_config::model::{
    selects, service_fqdn, CorsPolicy, FaultStatus, HashKey, HeaderOps, HttpMatch, HttpRedirect,
    HttpRetry, HttpRoute, LoadBalancer, Mesh, RedirectPort, Service, ServicePort, StringMatch,
    VirtualService, Workload, MESH_GATEWAY,
};

/// Envoy's name for the fault filter, the key of its per-route configuration.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// Envoy's name for the CORS filter, the key of its per-route configuration.
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// Istio's retry policy when a route sets none.
const ISTIO_DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// Envoy's RE2 matcher for `regex` (the whole value must match).
pub(super) fn regex_matcher(regex: String) -> RegexMatcher {
    RegexMatcher {
        regex,
        ..Default::default()
    }
}

fn string_matcher(m: &StringMatch) -> StringMatcher {
    let pattern = match m {
        StringMatch::Exact(v) => string_matcher::MatchPattern::Exact(v.clone()),
        StringMatch::Prefix(v) => string_matcher::MatchPattern::Prefix(v.clone()),
        StringMatch::Regex(v) => string_matcher::MatchPattern::SafeRegex(regex_matcher(v.clone())),
        StringMatch::Present => string_matcher::MatchPattern::SafeRegex(regex_matcher(".*".into())),
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    }
}

/// A header (pseudo-headers included) matching `m`, or not matching it when `invert`.
pub(super) fn header(name: &str, m: &StringMatch, invert: bool) -> HeaderMatcher {
    let specifier = match m {
        StringMatch::Present => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
        m => header_matcher::HeaderMatchSpecifier::StringMatch(string_matcher(m)),
    };
    HeaderMatcher {
        name: name.to_string(),
        invert_match: invert,
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}

/// Retry on another endpoint than the ones already tried, when there is one (Istio's and
/// Linkerd's behaviour).
pub(super) fn previous_hosts() -> Vec<retry_policy::RetryHostPredicate> {
    vec![retry_policy::RetryHostPredicate {
        name: "envoy.retry_host_predicates.previous_hosts".to_string(),
        config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
            any(&PreviousHostsPredicate::default()),
        )),
    }]
}

/// Istio's `HTTPRetry`: `retryOn` goes to Envoy as written, status codes in it become
/// `retriable-status-codes`; no `retries`: Istio's default (2 attempts); 0 attempts: none.
pub fn retry_policy(retries: Option<&HttpRetry>) -> Option<RetryPolicy> {
    let (attempts, per_try, retry_on) = match retries {
        None => (2, None, ISTIO_DEFAULT_RETRY_ON.to_string()),
        Some(r) if r.attempts == 0 => return None,
        Some(r) => (
            r.attempts,
            r.per_try_timeout_ms,
            r.retry_on
                .clone()
                .unwrap_or_else(|| ISTIO_DEFAULT_RETRY_ON.to_string()),
        ),
    };
    let mut conditions = Vec::new();
    let mut codes = Vec::new();
    for part in retry_on.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>() {
            Ok(code) => codes.push(code),
            Err(_) => conditions.push(part.to_string()),
        }
    }
    if retries.is_none() {
        codes.push(503);
    }
    if !codes.is_empty() && !conditions.iter().any(|c| c == "retriable-status-codes") {
        conditions.push("retriable-status-codes".to_string());
    }
    Some(RetryPolicy {
        retry_on: conditions.join(","),
        num_retries: Some(UInt32Value { value: attempts }),
        per_try_timeout: per_try.map(duration_ms),
        retriable_status_codes: codes,
        retry_host_predicate: previous_hosts(),
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    })
}

/// The client side of a route table: routes can match on who sends (`sourceNamespace`,
/// `sourceLabels`), so sidecars whose answers to those differ get different tables, and all
/// the others share one per namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteClient {
    pub namespace: String,
    /// The `sourceLabels` selectors in the mesh's routes that select this client.
    pub selected_by: Vec<BTreeMap<String, String>>,
}

/// Every distinct `sourceLabels` selector of the routes bound to the mesh.
pub fn source_label_selectors(mesh: &Mesh) -> Vec<BTreeMap<String, String>> {
    let mut selectors: Vec<BTreeMap<String, String>> = mesh
        .virtual_services
        .iter()
        .filter(|v| v.binds_mesh())
        .flat_map(|v| &v.http)
        .flat_map(|r| &r.matches)
        .filter(|m| !m.source_labels.is_empty())
        .map(|m| m.source_labels.clone())
        .collect();
    selectors.sort();
    selectors.dedup();
    selectors
}

impl RouteClient {
    pub fn of(workload: &Workload, selectors: &[BTreeMap<String, String>]) -> RouteClient {
        RouteClient {
            namespace: workload.namespace.clone(),
            selected_by: selectors
                .iter()
                .filter(|s| selects(s, &workload.labels))
                .cloned()
                .collect(),
        }
    }

    /// Whether a match can take this client's requests at a sidecar.
    fn may_match(&self, m: &HttpMatch) -> bool {
        m.source_namespace
            .as_ref()
            .is_none_or(|ns| *ns == self.namespace)
            && (m.source_labels.is_empty() || self.selected_by.contains(&m.source_labels))
            && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == MESH_GATEWAY))
    }
}

/// `outbound|<port>|<subset>|<fqdn>`, Istio's cluster names.
pub fn cluster_name(service: &Service, port: &ServicePort, subset: Option<&str>) -> String {
    format!(
        "outbound|{}|{}|{}",
        port.port,
        subset.unwrap_or_default(),
        service_fqdn(service)
    )
}

/// A destination's service and port: its port, else the port the request came to if the
/// service has it, else the service's first.
fn destination_port<'m>(
    mesh: &'m Mesh,
    host: &str,
    port: Option<u16>,
    request_port: u16,
) -> Option<(&'m Service, &'m ServicePort)> {
    let service = mesh.service_by_fqdn(host)?;
    let chosen = port
        .or_else(|| {
            service
                .ports
                .iter()
                .any(|p| p.port == request_port)
                .then_some(request_port)
        })
        .or_else(|| service.ports.first().map(|p| p.port))?;
    let port = service.ports.iter().find(|p| p.port == chosen)?;
    Some((service, port))
}

/// Envoy's hash policy for a destination whose load balancer is a consistent hash.
pub fn hash_policy(
    mesh: &Mesh,
    service: &Service,
    port: u16,
    subset: Option<&str>,
) -> Vec<route_action::HashPolicy> {
    use route_action::hash_policy::{
        ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter,
    };
    let Some(LoadBalancer::ConsistentHash { key, .. }) =
        mesh.traffic_policy(service, port, subset).load_balancer
    else {
        return Vec::new();
    };
    let specifier = match key {
        HashKey::Header(header_name) => PolicySpecifier::Header(Header {
            header_name,
            ..Default::default()
        }),
        HashKey::Cookie { name, path, ttl_ms } => PolicySpecifier::Cookie(Cookie {
            name,
            path: path.unwrap_or_default(),
            ttl: ttl_ms.map(duration_ms),
            ..Default::default()
        }),
        HashKey::SourceIp => {
            PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
        }
        HashKey::QueryParameter(name) => PolicySpecifier::QueryParameter(QueryParameter { name }),
    };
    vec![route_action::HashPolicy {
        policy_specifier: Some(specifier),
        ..Default::default()
    }]
}

fn header_values(pairs: &[(String, String)], action: HeaderAppendAction) -> Vec<HeaderValueOption> {
    pairs
        .iter()
        .map(|(key, value)| HeaderValueOption {
            header: Some(HeaderValue {
                key: key.clone(),
                value: value.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        })
        .collect()
}

/// Istio's `set` replaces, `add` appends.
fn headers_to_add(ops: &HeaderOps) -> Vec<HeaderValueOption> {
    let mut options = header_values(&ops.set, HeaderAppendAction::OverwriteIfExistsOrAdd);
    options.extend(header_values(
        &ops.add,
        HeaderAppendAction::AppendIfExistsOrAdd,
    ));
    options
}

fn per_million(value: u32) -> FractionalPercent {
    FractionalPercent {
        numerator: value,
        denominator: fractional_percent::DenominatorType::Million as i32,
    }
}

fn action(mesh: &Mesh, http: &HttpRoute, request_port: u16, route: &mut Route) -> RouteAction {
    let clusters: Vec<(String, &ward_config::model::RouteDestination, Vec<_>)> = http
        .destinations
        .iter()
        .filter_map(|d| {
            let (service, port) = destination_port(mesh, &d.host, d.port, request_port)?;
            let hash = hash_policy(mesh, service, port.port, d.subset.as_deref());
            Some((cluster_name(service, port, d.subset.as_deref()), d, hash))
        })
        .collect();
    // Envoy hashes once per route: Istio takes the policy when every destination agrees.
    let hash_policy = clusters
        .first()
        .map(|(_, _, h)| h.clone())
        .filter(|first| clusters.iter().all(|(_, _, h)| h == first))
        .unwrap_or_default();
    let cluster_specifier = if clusters.len() == 1 {
        // One destination: its header changes go on the route.
        let (name, destination, _) = &clusters[0];
        route
            .request_headers_to_add
            .extend(headers_to_add(&destination.headers.request));
        route
            .request_headers_to_remove
            .extend(destination.headers.request.remove.iter().cloned());
        route
            .response_headers_to_add
            .extend(headers_to_add(&destination.headers.response));
        route
            .response_headers_to_remove
            .extend(destination.headers.response.remove.iter().cloned());
        route_action::ClusterSpecifier::Cluster(name.clone())
    } else {
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .iter()
                .map(|(name, d, _)| weighted_cluster::ClusterWeight {
                    name: name.clone(),
                    weight: Some(UInt32Value { value: d.weight }),
                    request_headers_to_add: headers_to_add(&d.headers.request),
                    request_headers_to_remove: d.headers.request.remove.clone(),
                    response_headers_to_add: headers_to_add(&d.headers.response),
                    response_headers_to_remove: d.headers.response.remove.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    let mut action = RouteAction {
        cluster_specifier: Some(cluster_specifier),
        // Istio: no timeout unless the route sets one.
        timeout: Some(duration_ms(http.timeout_ms.unwrap_or(0))),
        retry_policy: retry_policy(http.retries.as_ref()),
        hash_policy,
        ..Default::default()
    };
    if let Some(rewrite) = &http.rewrite {
        // Envoy swaps the matched prefix, or the whole path under an exact or regex match:
        // Istio's semantics for `rewrite.uri`.
        if let Some(uri) = &rewrite.uri {
            action.prefix_rewrite = uri.clone();
        }
        if let Some((pattern, substitution)) = &rewrite.uri_regex {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex_matcher(pattern.clone())),
                substitution: substitution.clone(),
            });
        }
        if let Some(authority) = &rewrite.authority {
            action.host_rewrite_specifier = Some(
                route_action::HostRewriteSpecifier::HostRewriteLiteral(authority.clone()),
            );
        }
    }
    action.request_mirror_policies = http
        .mirrors
        .iter()
        .filter_map(|m| {
            let (service, port) = destination_port(mesh, &m.host, m.port, request_port)?;
            Some(route_action::RequestMirrorPolicy {
                cluster: cluster_name(service, port, m.subset.as_deref()),
                runtime_fraction: Some(RuntimeFractionalPercent {
                    default_value: Some(per_million(m.per_million)),
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .collect();
    action
}

fn redirect(redirect: &HttpRedirect, request_port: u16) -> RedirectAction {
    use redirect_action::RedirectResponseCode as Code;
    let response_code = match redirect.code {
        302 => Code::Found,
        303 => Code::SeeOther,
        307 => Code::TemporaryRedirect,
        308 => Code::PermanentRedirect,
        _ => Code::MovedPermanently,
    };
    let port_redirect = match redirect.port {
        None => 0,
        Some(RedirectPort::Number(port)) => port.into(),
        Some(RedirectPort::FromRequestPort) => request_port.into(),
        Some(RedirectPort::FromProtocolDefault) => {
            if redirect.scheme.as_deref() == Some("https") {
                443
            } else {
                80
            }
        }
    };
    RedirectAction {
        host_redirect: redirect.authority.clone().unwrap_or_default(),
        port_redirect,
        response_code: response_code as i32,
        scheme_rewrite_specifier: redirect
            .scheme
            .clone()
            .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier: redirect
            .uri
            .clone()
            .map(redirect_action::PathRewriteSpecifier::PathRedirect),
        ..Default::default()
    }
}

/// The fault filter's configuration for a route.
fn fault(fault: &ward_config::model::HttpFault) -> HttpFault {
    HttpFault {
        delay: fault.delay.map(|d| FaultDelay {
            percentage: Some(per_million(d.per_million)),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration_ms(
                d.fixed_ms,
            ))),
        }),
        abort: fault.abort.as_ref().map(|a| FaultAbort {
            percentage: Some(per_million(a.per_million)),
            error_type: Some(match a.status {
                FaultStatus::Http(code) => fault_abort::ErrorType::HttpStatus(code),
                FaultStatus::Grpc(code) => fault_abort::ErrorType::GrpcStatus(code),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn cors(policy: &CorsPolicy) -> EnvoyCorsPolicy {
    EnvoyCorsPolicy {
        allow_origin_string_match: policy.allow_origins.iter().map(string_matcher).collect(),
        allow_methods: policy.allow_methods.join(","),
        allow_headers: policy.allow_headers.join(","),
        expose_headers: policy.expose_headers.join(","),
        max_age: policy
            .max_age_seconds
            .map(|s| s.to_string())
            .unwrap_or_default(),
        allow_credentials: policy.allow_credentials.map(|value| BoolValue { value }),
        ..Default::default()
    }
}

/// The per-route configurations of the outbound chain's filters a route uses.
fn per_filter_config(http: &HttpRoute) -> std::collections::HashMap<String, Any> {
    let mut configs = std::collections::HashMap::new();
    if let Some(f) = &http.fault {
        configs.insert(FAULT_FILTER.to_string(), any(&fault(f)));
    }
    if let Some(c) = &http.cors {
        configs.insert(CORS_FILTER.to_string(), any(&cors(c)));
    }
    configs
}

fn query_parameter(name: &str, m: &StringMatch) -> QueryParameterMatcher {
    use query_parameter_matcher::QueryParameterMatchSpecifier as Spec;
    QueryParameterMatcher {
        name: name.to_string(),
        query_parameter_match_specifier: Some(match m {
            StringMatch::Present => Spec::PresentMatch(true),
            m => Spec::StringMatch(string_matcher(m)),
        }),
    }
}

fn route_match_of(m: &HttpMatch) -> RouteMatch {
    let path_specifier = match &m.uri {
        None | Some(StringMatch::Present) => route_match::PathSpecifier::Prefix("/".to_string()),
        Some(StringMatch::Exact(v)) => route_match::PathSpecifier::Path(v.clone()),
        Some(StringMatch::Prefix(v)) => route_match::PathSpecifier::Prefix(v.clone()),
        Some(StringMatch::Regex(v)) => {
            route_match::PathSpecifier::SafeRegex(regex_matcher(v.clone()))
        }
    };
    let pseudo = [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ];
    let mut headers: Vec<HeaderMatcher> = pseudo
        .iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| header(name, v, false)))
        .collect();
    headers.extend(m.headers.iter().map(|(name, v)| header(name, v, false)));
    headers.extend(
        m.without_headers
            .iter()
            .map(|(name, v)| header(name, v, true)),
    );
    RouteMatch {
        path_specifier: Some(path_specifier),
        case_sensitive: m.ignore_uri_case.then_some(BoolValue { value: false }),
        headers,
        query_parameters: m
            .query_params
            .iter()
            .map(|(name, v)| query_parameter(name, v))
            .collect(),
        ..Default::default()
    }
}

/// The routes a VirtualService gives `service`'s `port` for requests from `client`, in
/// order. Matches that cannot take the client's requests (another source namespace or
/// labels, bound to gateways only) are left out; a route whose every match is left out
/// takes nothing, rather than everything.
pub fn virtual_service_routes(
    mesh: &Mesh,
    virtual_service: &VirtualService,
    port: &ServicePort,
    client: &RouteClient,
) -> Vec<Route> {
    let mut routes = Vec::new();
    for (index, http) in virtual_service.http.iter().enumerate() {
        let name = http.name.clone().unwrap_or_else(|| {
            format!(
                "{}.{}/http[{index}]",
                virtual_service.name, virtual_service.namespace
            )
        });
        let everything = [Default::default()];
        let matches = if http.matches.is_empty() {
            &everything[..]
        } else {
            &http.matches[..]
        };
        for m in matches
            .iter()
            .filter(|m| m.port.is_none_or(|p| p == port.port))
            .filter(|m| client.may_match(m))
        {
            let mut route = Route {
                name: name.clone(),
                r#match: Some(route_match_of(m)),
                request_headers_to_add: headers_to_add(&http.headers.request),
                request_headers_to_remove: http.headers.request.remove.clone(),
                response_headers_to_add: headers_to_add(&http.headers.response),
                response_headers_to_remove: http.headers.response.remove.clone(),
                typed_per_filter_config: per_filter_config(http),
                ..Default::default()
            };
            route.action = Some(if let Some(r) = &http.redirect {
                route::Action::Redirect(redirect(r, port.port))
            } else if let Some(d) = &http.direct_response {
                crate::route::direct_response(d.status, d.body.as_deref().unwrap_or_default())
            } else {
                route::Action::Route(action(mesh, http, port.port, &mut route))
            });
            routes.push(route);
        }
    }
    routes
}

#[cfg(test)]
#[path = "routing_tests.rs"]
mod bookinfo_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_on_status_codes_become_retriable_status_codes() {
        let policy = retry_policy(Some(&HttpRetry {
            attempts: 3,
            per_try_timeout_ms: Some(500),
            retry_on: Some("5xx,503,reset".to_string()),
        }))
        .unwrap();
        assert_eq!(policy.retry_on, "5xx,reset,retriable-status-codes");
        assert_eq!(policy.retriable_status_codes, vec![503]);
        assert_eq!(policy.num_retries, Some(UInt32Value { value: 3 }));
        assert_eq!(policy.per_try_timeout, Some(duration_ms(500)));
    }

    #[test]
    fn istio_defaults_and_zero_attempts() {
        let default = retry_policy(None).unwrap();
        assert_eq!(default.num_retries, Some(UInt32Value { value: 2 }));
        assert_eq!(default.retriable_status_codes, vec![503]);
        assert!(retry_policy(Some(&HttpRetry {
            attempts: 0,
            per_try_timeout_ms: None,
            retry_on: None
        }))
        .is_none());
    }
}
