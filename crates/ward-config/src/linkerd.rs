//! Linkerd's kinds and annotations: `linkerd.io/v1alpha2` ServiceProfile (routes, retries,
//! timeouts, the retry budget) and the Service annotations for failure accrual
//! (`balancer.linkerd.io/failure-accrual*`), decoded with Linkerd's defaults and rules.

use std::collections::BTreeMap;

use crate::decode::{boolean, go_duration, integer, number, parse_go_duration, regex, Object};
use crate::diagnostic::Report;
use crate::kinds::{decode_meta, Meta};
use crate::model::condition::{alternatives, MAX_ALTERNATIVES};
use crate::model::{FailureAccrual, ProfileRoute, RequestMatch, RetryBudgetConfig};
use crate::names::Rule;
use crate::yaml::{Node, Position};

pub const SERVICE_PROFILE_VERSIONS: &[&str] = &["linkerd.io/v1alpha2"];

/// Linkerd's `ServiceProfile` methods.
const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT",
];

/// How deep `all`/`any`/`not` may nest: deeper is a mistake, and it bounds translation.
const MAX_MATCH_DEPTH: usize = 8;

#[derive(Debug, Clone)]
pub struct ServiceProfileSpec {
    pub meta: Meta,
    pub routes: Vec<ProfileRoute>,
    pub retry_budget: RetryBudgetConfig,
}

pub fn decode_service_profile(doc: &Object, report: &mut Report) -> Option<ServiceProfileSpec> {
    // The name is a host name (`aura-api.default.svc.cluster.local`), a DNS subdomain.
    let meta = decode_meta(doc, true, Rule::Subdomain, report)?;
    let mut profile = ServiceProfileSpec {
        meta,
        routes: Vec::new(),
        retry_budget: RetryBudgetConfig::default(),
    };
    let Some(spec) = doc.object("spec", report) else {
        doc.missing("spec", report);
        return Some(profile);
    };
    let mut first_line_of: BTreeMap<String, usize> = BTreeMap::new();
    for (path, node) in spec.list("routes", report) {
        let Some(route) = decode_route(node, &path, report) else {
            continue;
        };
        // Routes are told apart by name in metrics and by the retry budget filter.
        if let Some(first) = first_line_of.get(&route.name) {
            report.error(
                node.position,
                &format!("{path}.name"),
                format!(
                    "a second route named `{}` (first at line {first}): route names must be unique within a profile",
                    route.name
                ),
            );
            continue;
        }
        first_line_of.insert(route.name.clone(), node.position.line);
        profile.routes.push(route);
    }
    if let Some(budget) = spec.object("retryBudget", report) {
        let ratio = budget
            .required("retryRatio", report)
            .and_then(|n| number(n, &budget.field_path("retryRatio"), 0.0, 1000.0, report));
        let min_per_second = budget
            .required("minRetriesPerSecond", report)
            .and_then(|n| {
                integer(
                    n,
                    &budget.field_path("minRetriesPerSecond"),
                    0,
                    u32::MAX as i64,
                    report,
                )
            });
        let ttl = budget
            .required("ttl", report)
            .and_then(|n| go_duration(n, &budget.field_path("ttl"), report));
        // tower's budget, which Linkerd's proxy uses, keeps between 1 s and 60 s.
        let ttl = ttl.map(|ms| {
            let clamped = ms.clamp(1_000, 60_000);
            if clamped != ms {
                report.warn(
                    budget.position_of("ttl"),
                    &budget.field_path("ttl"),
                    format!("{ms} ms is outside 1s..60s; Ward uses {clamped} ms, as Linkerd's proxy would"),
                );
            }
            clamped
        });
        if let (Some(retry_ratio), Some(min), Some(ttl_ms)) = (ratio, min_per_second, ttl) {
            profile.retry_budget = RetryBudgetConfig {
                retry_ratio,
                min_retries_per_second: min as u32,
                ttl_ms,
            };
        }
        budget.finish(report);
    }
    spec.ignore(
        &[
            (
                "dstOverrides",
                "traffic splits are not supported; all traffic goes to the service",
            ),
            (
                "opaquePorts",
                "every port is treated by its Service port's protocol",
            ),
        ],
        report,
    );
    spec.finish(report);
    Some(profile)
}

fn decode_route(node: &Node, path: &str, report: &mut Report) -> Option<ProfileRoute> {
    let route = Object::of(node, path, report)?;
    let name = route.required_string("name", report);
    let condition = route
        .required("condition", report)
        .and_then(|n| decode_match(n, &route.field_path("condition"), 0, report));
    let is_retryable = route
        .get("isRetryable")
        .and_then(|n| boolean(n, &route.field_path("isRetryable"), report))
        .unwrap_or(false);
    let timeout_ms = route.duration("timeout", report).filter(|ms| *ms > 0);
    route.ignore(
        &[(
            "responseClasses",
            "a 5xx answer (or a reset) is a failure, as with no responseClasses",
        )],
        report,
    );
    if let Some(condition) = &condition {
        let count = alternatives(condition).len();
        if count > MAX_ALTERNATIVES {
            report.error(
                route.position_of("condition"),
                &route.field_path("condition"),
                format!("expands to more than {MAX_ALTERNATIVES} alternatives (any/not over all): split the route"),
            );
        }
    }
    route.finish(report);
    Some(ProfileRoute {
        name: name?,
        condition: condition?,
        is_retryable,
        timeout_ms,
    })
}

/// A `RequestMatch`. Linkerd's docs ask for exactly one field; its own template (and the
/// lab) writes `method` and `pathRegex` together, meaning both: several fields are `all`.
fn decode_match(
    node: &Node,
    path: &str,
    depth: usize,
    report: &mut Report,
) -> Option<RequestMatch> {
    let object = Object::of(node, path, report)?;
    if depth >= MAX_MATCH_DEPTH {
        report.error(
            object.position,
            path,
            format!("conditions nest deeper than {MAX_MATCH_DEPTH} levels"),
        );
        return None;
    }
    let mut parts = Vec::new();
    let mut ok = true;
    if let Some(method) = object.string("method", report) {
        if METHODS.contains(&method.as_str()) {
            parts.push(RequestMatch::Method(method));
        } else {
            ok = false;
            report.error(
                object.get("method").map_or(object.position, |n| n.position),
                &object.field_path("method"),
                format!(
                    "`{method}` is not an HTTP method Linkerd matches: expected one of {}",
                    METHODS.join(", ")
                ),
            );
        }
    }
    if let Some(node) = object.get("pathRegex") {
        match regex(node, &object.field_path("pathRegex"), report) {
            Some(regex) => parts.push(RequestMatch::PathRegex(regex)),
            None => ok = false,
        }
    }
    for (key, combine) in [
        (
            "all",
            RequestMatch::All as fn(Vec<RequestMatch>) -> RequestMatch,
        ),
        ("any", RequestMatch::Any),
    ] {
        if !object.has(key) {
            continue;
        }
        let items = object.required_list(key, report);
        let decoded: Vec<Option<RequestMatch>> = items
            .iter()
            .map(|(item_path, n)| decode_match(n, item_path, depth + 1, report))
            .collect();
        if decoded.iter().any(Option::is_none) || decoded.is_empty() {
            ok = false;
        } else {
            parts.push(combine(decoded.into_iter().flatten().collect()));
        }
    }
    if let Some(inner) = object.get("not") {
        match decode_match(inner, &object.field_path("not"), depth + 1, report) {
            Some(m) => parts.push(RequestMatch::Not(Box::new(m))),
            None => ok = false,
        }
    }
    if parts.is_empty() && ok {
        report.error(
            object.position,
            path,
            "a condition needs one of method, pathRegex, all, any or not",
        );
        ok = false;
    }
    object.finish(report);
    if !ok {
        return None;
    }
    Some(if parts.len() == 1 {
        parts.remove(0)
    } else {
        RequestMatch::All(parts)
    })
}

pub const FAILURE_ACCRUAL: &str = "balancer.linkerd.io/failure-accrual";
const MAX_FAILURES: &str = "balancer.linkerd.io/failure-accrual-consecutive-max-failures";
const MIN_PENALTY: &str = "balancer.linkerd.io/failure-accrual-consecutive-min-penalty";
const MAX_PENALTY: &str = "balancer.linkerd.io/failure-accrual-consecutive-max-penalty";
const JITTER_RATIO: &str = "balancer.linkerd.io/failure-accrual-consecutive-jitter-ratio";

/// Failure accrual from a Service's annotations, with Linkerd's defaults (7 failures, 1 s to
/// 1 min, jitter 0.5). None when `failure-accrual` is not `consecutive`.
pub fn failure_accrual(
    annotations: &BTreeMap<String, String>,
    at: Position,
    report: &mut Report,
) -> Option<FailureAccrual> {
    let field = |key: &str| format!("metadata.annotations.{key}");
    let bad = |report: &mut Report, key: &str, value: &str, expected: &str| {
        report.error(
            at,
            &field(key),
            format!("`{value}` is not valid: expected {expected}"),
        );
    };
    let mode = annotations.get(FAILURE_ACCRUAL);
    let tuning: Vec<&str> = [MAX_FAILURES, MIN_PENALTY, MAX_PENALTY, JITTER_RATIO]
        .into_iter()
        .filter(|k| annotations.contains_key(*k))
        .collect();
    match mode.map(String::as_str) {
        Some("consecutive") => {}
        Some(other) => {
            bad(
                report,
                FAILURE_ACCRUAL,
                other,
                "`consecutive` (Linkerd's only mode)",
            );
            return None;
        }
        None => {
            if let Some(key) = tuning.first() {
                report.warn(
                    at,
                    &field(key),
                    format!("ignored: without `{FAILURE_ACCRUAL}: consecutive` Linkerd does no failure accrual"),
                );
            }
            return None;
        }
    }
    let mut accrual = FailureAccrual {
        max_failures: 7,
        min_penalty_ms: 1_000,
        max_penalty_ms: 60_000,
        jitter_permille: 500,
    };
    let mut ok = true;
    if let Some(v) = annotations.get(MAX_FAILURES) {
        match v.trim().parse::<u32>() {
            Ok(n) if n >= 1 => accrual.max_failures = n,
            _ => {
                bad(
                    report,
                    MAX_FAILURES,
                    v,
                    "a whole number of failures, at least 1",
                );
                ok = false;
            }
        }
    }
    for (key, slot) in [
        (MIN_PENALTY, &mut accrual.min_penalty_ms),
        (MAX_PENALTY, &mut accrual.max_penalty_ms),
    ] {
        if let Some(v) = annotations.get(key) {
            match parse_go_duration(v).filter(|ms| *ms > 0) {
                Some(ms) => *slot = ms,
                None => {
                    bad(report, key, v, "a duration such as 30s or 5m");
                    ok = false;
                }
            }
        }
    }
    if let Some(v) = annotations.get(JITTER_RATIO) {
        match v.trim().parse::<f64>() {
            Ok(r) if (0.0..=100.0).contains(&r) => accrual.jitter_permille = (r * 1000.0) as u32,
            _ => {
                bad(
                    report,
                    JITTER_RATIO,
                    v,
                    "a ratio between 0 and 100, such as 0.5",
                );
                ok = false;
            }
        }
    }
    if ok && accrual.max_penalty_ms < accrual.min_penalty_ms {
        report.error(
            at,
            &field(MAX_PENALTY),
            format!(
                "the max penalty ({} ms) is shorter than the min penalty ({} ms)",
                accrual.max_penalty_ms, accrual.min_penalty_ms
            ),
        );
        ok = false;
    }
    ok.then_some(accrual)
}
