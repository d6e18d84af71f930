//! Istio VirtualService HTTP routes on a service's outbound virtual host: matches,
//! destinations (weighted), timeouts and retries, the way Istio builds them. A request that
//! matches no route gets Envoy's 404, as in Istio.

use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, retry_policy, route, route_action, route_match, weighted_cluster,
    HeaderMatcher, RetryPolicy, Route, RouteAction, RouteMatch, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, RegexMatcher, StringMatcher};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use crate::{any, duration_ms, outbound_cluster_name};
use ward_config::model::service_fqdn;
use ward_config::model::{HttpRetry, HttpRoute, Mesh, ServicePort, StringMatch, VirtualService};

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
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    }
}

/// A header (pseudo-headers included) matching `m`, or not matching it when `invert`.
pub(super) fn header(name: &str, m: &StringMatch, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_string(),
        invert_match: invert,
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            string_matcher(m),
        )),
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

/// The cluster of a destination: its port, else the port the request came to if the service
/// has it, else the service's first.
fn destination_cluster(
    mesh: &Mesh,
    host: &str,
    port: Option<u16>,
    request_port: u16,
) -> Option<String> {
    let service = mesh.services.iter().find(|s| service_fqdn(s) == host)?;
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
    Some(outbound_cluster_name(service, port))
}

fn action(mesh: &Mesh, route: &HttpRoute, request_port: u16) -> RouteAction {
    let clusters: Vec<(String, u32)> = route
        .destinations
        .iter()
        .filter_map(|d| {
            destination_cluster(mesh, &d.host, d.port, request_port).map(|c| (c, d.weight))
        })
        .collect();
    let cluster_specifier = if clusters.len() == 1 {
        route_action::ClusterSpecifier::Cluster(clusters[0].0.clone())
    } else {
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .into_iter()
                .map(|(name, weight)| weighted_cluster::ClusterWeight {
                    name,
                    weight: Some(UInt32Value { value: weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    RouteAction {
        cluster_specifier: Some(cluster_specifier),
        // Istio: no timeout unless the route sets one.
        timeout: Some(duration_ms(route.timeout_ms.unwrap_or(0))),
        retry_policy: retry_policy(route.retries.as_ref()),
        ..Default::default()
    }
}

/// The routes a VirtualService gives `service`'s `port`, in order.
pub fn virtual_service_routes(
    mesh: &Mesh,
    virtual_service: &VirtualService,
    port: &ServicePort,
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
        {
            let path_specifier = match &m.uri {
                None => route_match::PathSpecifier::Prefix("/".to_string()),
                Some(StringMatch::Exact(v)) => route_match::PathSpecifier::Path(v.clone()),
                Some(StringMatch::Prefix(v)) => route_match::PathSpecifier::Prefix(v.clone()),
                Some(StringMatch::Regex(v)) => {
                    route_match::PathSpecifier::SafeRegex(regex_matcher(v.clone()))
                }
            };
            let mut headers: Vec<HeaderMatcher> = m
                .method
                .iter()
                .map(|method| header(":method", method, false))
                .collect();
            headers.extend(
                m.headers
                    .iter()
                    .map(|(name, value)| header(name, value, false)),
            );
            routes.push(Route {
                name: name.clone(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(path_specifier),
                    case_sensitive: m.ignore_uri_case.then_some(BoolValue { value: false }),
                    headers,
                    ..Default::default()
                }),
                action: Some(route::Action::Route(action(mesh, http, port.port))),
                ..Default::default()
            });
        }
    }
    routes
}

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
