//! Client-side resilience: Linkerd ServiceProfile routes (per-route names for metrics,
//! retries, timeouts) on the outbound routes, the retry budget's filter configuration, and
//! failure accrual on the outbound clusters (Envoy outlier detection); Istio's
//! DestinationRule `outlierDetection`, `connectionPool` and `retryBudget` on the same
//! clusters. (Envoy's default allows 3 retries in flight per cluster, which would cap a
//! budget long before the budget does: for a service with retries configured, Ward lifts it,
//! as Istio does, unless `maxRetries` says otherwise.)
//!
//! Who does what: Envoy's router matches the profile's routes, retries failures of retryable
//! routes on another endpoint and enforces timeouts; the `ward-retry-budget` wasm filter on
//! the outbound listener keeps each destination's budget and caps each request's retries
//! (`x-envoy-max-retries`); Envoy's outlier detection ejects an endpoint after consecutive
//! failures.

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers, cluster, CircuitBreakers, Cluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::route::v3::{route_match, RetryPolicy, RouteMatch};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::UInt32Value;
use wasm_authz::{OutboundConfig, RetryableRoute};

use crate::routing::{header, previous_hosts, regex_matcher};
use crate::{duration_ms, outbound_cluster_name};
use ward_config::model::condition::Atom;
use ward_config::model::{
    FailureAccrual, Mesh, OutlierDetectionPolicy, Service, StringMatch, TrafficPolicy,
};

/// Envoy needs a number where Linkerd's ServiceProfile has none (its budget alone limits
/// retries): a retryable request is tried at most this many more times, fewer when the
/// budget is short.
pub const PROFILE_MAX_RETRIES: u32 = 5;

/// Envoy's match for one conjunction. Linkerd anchors path regexes and matches the path
/// without the query, as Envoy's `safe_regex` path match does; further or negated path atoms
/// match the `:path` header, which carries the query, so their regex allows one.
pub fn route_match(conjunction: &[Atom]) -> RouteMatch {
    let mut path_specifier = None;
    let mut headers = Vec::new();
    for atom in conjunction {
        match atom {
            Atom::Method(method, negated) => headers.push(header(
                ":method",
                &StringMatch::Exact(method.clone()),
                *negated,
            )),
            Atom::Path(regex, false) if path_specifier.is_none() => {
                path_specifier = Some(route_match::PathSpecifier::SafeRegex(regex_matcher(
                    regex.clone(),
                )));
            }
            Atom::Path(regex, negated) => headers.push(header(
                ":path",
                &StringMatch::Regex(format!("(?:{regex})(?:\\?.*)?")),
                *negated,
            )),
        }
    }
    RouteMatch {
        path_specifier: Some(
            path_specifier.unwrap_or(route_match::PathSpecifier::Prefix("/".to_string())),
        ),
        headers,
        ..Default::default()
    }
}

/// Retries for a ServiceProfile's retryable route: what Linkerd retries (5xx answers,
/// resets, connection failures), on another endpoint when there is one.
pub fn profile_retry_policy() -> RetryPolicy {
    RetryPolicy {
        retry_on: "5xx,reset,connect-failure,refused-stream".to_string(),
        num_retries: Some(UInt32Value {
            value: PROFILE_MAX_RETRIES,
        }),
        retry_host_predicate: previous_hosts(),
        host_selection_retry_max_attempts: 3,
        ..Default::default()
    }
}

/// The outbound wasm filter's configuration: every retryable ServiceProfile route, by
/// cluster and route name, and its service's budget.
pub fn outbound_filter_config(mesh: &Mesh) -> OutboundConfig {
    let mut config = OutboundConfig::default();
    for service in &mesh.services {
        let Some(profile) = mesh.service_profile(service) else {
            continue;
        };
        // A VirtualService's routes replace the profile's.
        if mesh.virtual_service(service).is_some() {
            continue;
        }
        if !profile.routes.iter().any(|r| r.is_retryable) {
            continue;
        }
        config
            .budgets
            .insert(profile.name.clone(), profile.retry_budget);
        for port in service
            .ports
            .iter()
            .filter(|p| !ward_config::model::is_tcp_port(p))
        {
            let cluster = outbound_cluster_name(service, port);
            for route in profile.routes.iter().filter(|r| r.is_retryable) {
                config.retryable_routes.insert(
                    OutboundConfig::route_key(&cluster, &route.name),
                    RetryableRoute {
                        budget: profile.name.clone(),
                        max_retries: PROFILE_MAX_RETRIES,
                    },
                );
            }
        }
    }
    config
}

/// Failure accrual on Envoy's outlier detection. Envoy ejects after `max_failures`
/// consecutive 5xx answers or connection failures, for `min_penalty × times ejected` (capped
/// at `max_penalty`) where Linkerd doubles the penalty; after it the endpoint is back for
/// everyone rather than for one probe request.
pub fn outlier_detection(accrual: &FailureAccrual) -> OutlierDetection {
    let jitter_ms = accrual.min_penalty_ms * accrual.jitter_permille as u64 / 1000;
    OutlierDetection {
        consecutive_5xx: Some(UInt32Value {
            value: accrual.max_failures,
        }),
        enforcing_consecutive_5xx: Some(UInt32Value { value: 100 }),
        // Only consecutive failures, as Linkerd: no success-rate or gateway ejections.
        enforcing_success_rate: Some(UInt32Value { value: 0 }),
        enforcing_consecutive_gateway_failure: Some(UInt32Value { value: 0 }),
        // Ejection checks run every interval: it bounds how late an endpoint comes back.
        interval: Some(duration_ms(1000)),
        base_ejection_time: Some(duration_ms(accrual.min_penalty_ms)),
        max_ejection_time: Some(duration_ms(accrual.max_penalty_ms)),
        max_ejection_time_jitter: Some(duration_ms(jitter_ms)),
        // Linkerd ejects the last endpoint too.
        max_ejection_percent: Some(UInt32Value { value: 100 }),
        ..Default::default()
    }
}

/// With failure accrual, an ejected endpoint gets no traffic even when it is the only one
/// (Envoy's default panic threshold would send to every endpoint once half are out): the
/// client fails fast with 503, as Linkerd's does.
pub fn no_panic_routing() -> cluster::CommonLbConfig {
    cluster::CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 0.0 }),
        ..Default::default()
    }
}

/// DestinationRule `outlierDetection` as Istio builds it.
pub fn istio_outlier_detection(policy: &OutlierDetectionPolicy) -> OutlierDetection {
    let enforcing = |errors: u32| UInt32Value {
        value: if errors > 0 { 100 } else { 0 },
    };
    OutlierDetection {
        consecutive_5xx: Some(UInt32Value {
            value: policy.consecutive_5xx_errors,
        }),
        enforcing_consecutive_5xx: Some(enforcing(policy.consecutive_5xx_errors)),
        consecutive_gateway_failure: Some(UInt32Value {
            value: policy.consecutive_gateway_errors,
        }),
        enforcing_consecutive_gateway_failure: Some(enforcing(policy.consecutive_gateway_errors)),
        enforcing_success_rate: Some(UInt32Value { value: 0 }),
        interval: Some(duration_ms(policy.interval_ms)),
        base_ejection_time: Some(duration_ms(policy.base_ejection_time_ms)),
        max_ejection_percent: Some(UInt32Value {
            value: policy.max_ejection_percent,
        }),
        ..Default::default()
    }
}

/// Applies a service's client-side resilience to its outbound cluster: its traffic policy's
/// `outlierDetection`, `connectionPool` and `retryBudget` (Istio), else failure accrual
/// (Linkerd).
pub fn apply_to_cluster(
    mesh: &Mesh,
    service: &Service,
    policy: &TrafficPolicy,
    cluster: &mut Cluster,
) {
    let rule = Some(policy);
    let retries_configured = mesh.virtual_service(service).is_some()
        || mesh
            .service_profile(service)
            .is_some_and(|p| p.routes.iter().any(|r| r.is_retryable));
    let pool_or_budget =
        rule.is_some_and(|r| r.connection_pool.is_some() || r.retry_budget.is_some());
    let mut thresholds = circuit_breakers::Thresholds {
        max_retries: Some(UInt32Value { value: u32::MAX }),
        ..Default::default()
    };
    if let Some(policy) = rule.and_then(|r| r.outlier_detection.as_ref()) {
        cluster.outlier_detection = Some(istio_outlier_detection(policy));
        cluster.common_lb_config = Some(cluster::CommonLbConfig {
            healthy_panic_threshold: Some(Percent {
                value: policy.min_health_percent as f64,
            }),
            ..Default::default()
        });
    } else if let Some(accrual) = mesh.failure_accrual(service) {
        cluster.outlier_detection = Some(outlier_detection(&accrual));
        cluster.common_lb_config = Some(no_panic_routing());
    }
    if let Some(pool) = rule.and_then(|r| r.connection_pool.as_ref()) {
        let value = |v: Option<u32>| v.map(|value| UInt32Value { value });
        thresholds.max_connections = value(pool.max_connections);
        thresholds.max_pending_requests = value(pool.http1_max_pending_requests);
        thresholds.max_requests = value(pool.http2_max_requests);
        if pool.max_retries.is_some() {
            thresholds.max_retries = value(pool.max_retries);
        }
        if let Some(ms) = pool.connect_timeout_ms {
            cluster.connect_timeout = Some(duration_ms(ms));
        }
        #[allow(deprecated)]
        {
            cluster.max_requests_per_connection = value(pool.max_requests_per_connection);
        }
    }
    if let Some(budget) = rule.and_then(|r| r.retry_budget.as_ref()) {
        thresholds.retry_budget = Some(circuit_breakers::thresholds::RetryBudget {
            budget_percent: Some(Percent {
                value: budget.percent_millis as f64 / 1000.0,
            }),
            min_retry_concurrency: Some(UInt32Value {
                value: budget.min_retry_concurrency,
            }),
            budget_interval: budget.budget_interval_ms.map(duration_ms),
        });
    }
    // Services with neither retries configured nor a pool: Envoy's defaults, and smaller
    // clusters for every proxy.
    if retries_configured || pool_or_budget {
        cluster.circuit_breakers = Some(CircuitBreakers {
            thresholds: vec![thresholds],
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::header_matcher;
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher;

    #[test]
    fn a_negated_path_matches_the_path_header_with_any_query() {
        let m = route_match(&[Atom::Path("/a".into(), true)]);
        assert_eq!(
            m.path_specifier,
            Some(route_match::PathSpecifier::Prefix("/".into()))
        );
        assert!(m.headers[0].invert_match);
        let Some(header_matcher::HeaderMatchSpecifier::StringMatch(s)) =
            &m.headers[0].header_match_specifier
        else {
            panic!("a string match");
        };
        assert_eq!(
            s.match_pattern,
            Some(string_matcher::MatchPattern::SafeRegex(regex_matcher(
                "(?:/a)(?:\\?.*)?".into()
            )))
        );
    }
}
