//! AuthorizationPolicy → Envoy's native RBAC filters on the inbound side, built the way Istio
//! builds them (`pilot/pkg/security/authz`), so Istio's golden test data can check this
//! translation decision for decision: one Envoy policy per rule named
//! `ns[NS]-policy[NAME]-rule[I]`, one `andIds`/`andRules` per `from`/`to` entry, `values` as an
//! OR and `notValues` as a NOT of an OR.
//!
//! Filters, in order: AUDIT (action LOG), DENY, ALLOW; dry-run policies go to the same
//! filter's shadow rules. HTTP rules travel per route (see [`HTTP_RBAC_FILTERS`]); on a plain
//! TCP port the network filters sit in the listener, so a change reaches new connections
//! and old ones are closed after the drain time.

#![allow(deprecated)] // Istio matches JWT claims with the (deprecated) metadata principal.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{CidrRange, TypedExtensionConfig};
use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac, Permission, Policy, Principal, Rbac as RbacRules,
};
use envoy_types::pb::envoy::config::route::v3::{header_matcher, HeaderMatcher};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::{Rbac as HttpRbac, RbacPerRoute};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    list_matcher, metadata_matcher, path_matcher, string_matcher, value_matcher, ListMatcher,
    MetadataMatcher, OrMatcher, PathMatcher, RegexMatcher, StringMatcher, ValueMatcher,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use wasm_authz::policy::{
    is_path_template, Action, AuthorizationPolicy, Condition, ConditionKey, IpBlock, Operation,
    Rule, Source,
};

use crate::any;
use crate::jwt::{JWT_FILTER, PAYLOAD_METADATA_KEY};
use crate::listener::network_filter;

pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
const DRY_RUN_ALLOW_PREFIX: &str = "istio_dry_run_allow_";
const DRY_RUN_DENY_PREFIX: &str = "istio_dry_run_deny_";

/// The names of the inbound HTTP RBAC filters, in filter-chain order. Every inbound HTTP
/// listener has all three, configured empty (an RBAC filter without rules enforces nothing);
/// the rules reach them per route over RDS (`RBACPerRoute`), so a policy change is in force
/// for the next request, even on a connection opened before it. Rules in the listener would
/// only reach connections opened after the listener update.
pub const HTTP_RBAC_FILTERS: [&str; 3] = ["ward.rbac.audit", "ward.rbac.deny", "ward.rbac.allow"];

/// The empty RBAC filters every inbound HTTP connection manager carries.
pub fn http_filters() -> Vec<HttpFilter> {
    HTTP_RBAC_FILTERS
        .iter()
        .map(|name| HttpFilter {
            name: name.to_string(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(
                &HttpRbac::default(),
            ))),
            ..Default::default()
        })
        .collect()
}

/// The RBAC configs for a workload's policies, by filter name ([`HTTP_RBAC_FILTERS`]); a
/// filter with nothing to enforce or shadow is left out.
pub fn http_configs(policies: &[&AuthorizationPolicy]) -> Vec<(&'static str, HttpRbac)> {
    filters(policies, false)
        .into_iter()
        .map(|(filter, rules, shadow_rules, prefix)| {
            let config = HttpRbac {
                // Each filter's decision gets its own keys in the access log's dynamic
                // metadata (`ward_deny_enforced_effective_policy_id`, ...); without a prefix
                // the ALLOW filter would overwrite what the DENY filter recorded.
                rules_stat_prefix: rules.as_ref().map_or(String::new(), rules_prefix),
                rules,
                shadow_rules,
                shadow_rules_stat_prefix: prefix.to_string(),
                ..Default::default()
            };
            (filter, config)
        })
        .collect()
}

/// `typed_per_filter_config` for the inbound virtual host.
pub fn per_route_configs(policies: &[&AuthorizationPolicy]) -> HashMap<String, Any> {
    http_configs(policies)
        .into_iter()
        .map(|(filter, rbac)| (filter.to_string(), any(&RbacPerRoute { rbac: Some(rbac) })))
        .collect()
}

/// The inbound network RBAC filters for a workload's policies on a plain TCP port.
pub fn network_filters(policies: &[&AuthorizationPolicy]) -> Vec<Filter> {
    filters(policies, true)
        .into_iter()
        .map(|(_, rules, shadow_rules, prefix)| {
            network_filter(
                NETWORK_RBAC,
                &NetworkRbac {
                    rules,
                    shadow_rules,
                    shadow_rules_stat_prefix: prefix.to_string(),
                    stat_prefix: "tcp.".to_string(),
                    ..Default::default()
                },
            )
        })
        .collect()
}

/// (HTTP filter name, enforced rules, shadow rules, shadow stat prefix) of one filter.
type FilterRules = (
    &'static str,
    Option<RbacRules>,
    Option<RbacRules>,
    &'static str,
);

fn rules_prefix(rules: &RbacRules) -> String {
    match rbac::Action::try_from(rules.action) {
        Ok(rbac::Action::Deny) => "ward_deny_",
        Ok(rbac::Action::Log) => "ward_audit_",
        _ => "ward_allow_",
    }
    .to_string()
}

fn filters(policies: &[&AuthorizationPolicy], tcp: bool) -> Vec<FilterRules> {
    [
        (Action::Audit, rbac::Action::Log),
        (Action::Deny, rbac::Action::Deny),
        (Action::Allow, rbac::Action::Allow),
    ]
    .into_iter()
    .zip(HTTP_RBAC_FILTERS)
    .filter_map(|((action, envoy_action), filter)| {
        let of = |dry_run: bool| -> Vec<&AuthorizationPolicy> {
            policies
                .iter()
                .copied()
                .filter(|p| p.action == action && p.dry_run == dry_run)
                .collect()
        };
        let (enforced, shadow) = (of(false), of(true));
        if enforced.is_empty() && shadow.is_empty() {
            return None;
        }
        let rules = |policies: &[&AuthorizationPolicy]| {
            (!policies.is_empty()).then(|| RbacRules {
                action: envoy_action as i32,
                policies: policies
                    .iter()
                    .flat_map(|p| envoy_policies(p, tcp))
                    .collect(),
                ..Default::default()
            })
        };
        let prefix = if action == Action::Deny && !shadow.is_empty() {
            DRY_RUN_DENY_PREFIX
        } else {
            DRY_RUN_ALLOW_PREFIX
        };
        Some((filter, rules(&enforced), rules(&shadow), prefix))
    })
    .collect()
}

/// One Envoy policy per rule. A policy with no rules becomes one that matches nothing, so an
/// ALLOW filter still exists and denies everything. On TCP, an ALLOW rule with HTTP-only
/// fields is left out; a DENY or AUDIT rule loses those fields.
fn envoy_policies(policy: &AuthorizationPolicy, tcp: bool) -> Vec<(String, Policy)> {
    if policy.rules.is_empty() {
        return vec![(
            policy.rule_id(0),
            Policy {
                permissions: vec![not_rule(permission_any())],
                principals: vec![not_id(principal_any())],
                ..Default::default()
            },
        )];
    }
    policy
        .rules
        .iter()
        .enumerate()
        .filter(|(_, rule)| !(tcp && policy.action == Action::Allow && rule.http_only()))
        .map(|(i, rule)| {
            (
                policy.rule_id(i),
                envoy_policy(rule, &policy.namespace, tcp),
            )
        })
        .collect()
}

fn envoy_policy(rule: &Rule, policy_ns: &str, tcp: bool) -> Policy {
    let mut base_permission = Vec::new();
    let mut base_principal = Vec::new();
    for condition in &rule.when {
        let Some(key) = condition.parsed_key() else {
            continue; // refused by the loader
        };
        if tcp && key.http_only() {
            continue;
        }
        condition_matchers(key, condition, &mut base_permission, &mut base_principal);
    }
    let principals = if rule.from.is_empty() {
        vec![and_ids(base_principal)]
    } else {
        rule.from
            .iter()
            .map(|source| {
                let mut ids = source_ids(source, policy_ns, tcp);
                ids.extend(base_principal.iter().cloned());
                and_ids(ids)
            })
            .collect()
    };
    let permissions = if rule.to.is_empty() {
        vec![and_rules(base_permission)]
    } else {
        rule.to
            .iter()
            .map(|operation| {
                let mut rules = operation_rules(operation, tcp);
                rules.extend(base_permission.iter().cloned());
                and_rules(rules)
            })
            .collect()
    };
    Policy {
        permissions,
        principals,
        ..Default::default()
    }
}

// --- Principals (who) ---

fn source_ids(source: &Source, policy_ns: &str, tcp: bool) -> Vec<Principal> {
    let mut ids = Vec::new();
    let mut push = |values: &[String], not_values: &[String], one: &dyn Fn(&str) -> Principal| {
        ids.extend(values_and_not(values, not_values, any_id(one), not_id));
    };
    push(
        &source.service_accounts,
        &source.not_service_accounts,
        &|v| service_account_id(v, policy_ns),
    );
    push(&source.principals, &source.not_principals, &principal_id);
    if !tcp {
        push(
            &source.request_principals,
            &source.not_request_principals,
            &request_principal_id,
        );
    }
    push(&source.namespaces, &source.not_namespaces, &namespace_id);
    push(
        &source.remote_ip_blocks,
        &source.not_remote_ip_blocks,
        &|v| id(principal::Identifier::RemoteIp(cidr(v))),
    );
    push(&source.ip_blocks, &source.not_ip_blocks, &|v| {
        id(principal::Identifier::DirectRemoteIp(cidr(v)))
    });
    ids
}

fn authenticated(matcher: StringMatcher) -> Principal {
    id(principal::Identifier::Authenticated(
        principal::Authenticated {
            principal_name: Some(matcher),
        },
    ))
}

/// `principals`: SPIFFE ids without the scheme, as Istio writes them.
fn principal_id(value: &str) -> Principal {
    let with_scheme = |v: &str| {
        if v.starts_with("spiffe://") {
            v.to_string()
        } else {
            format!("spiffe://{v}")
        }
    };
    let matcher = if value == "*" {
        regex(".+")
    } else if let Some(suffix) = value.strip_prefix('*') {
        regex(&format!("spiffe://.*{}", regex_escape(suffix)))
    } else if let Some(prefix) = value.strip_suffix('*') {
        string_match(string_matcher::MatchPattern::Prefix(with_scheme(prefix)))
    } else {
        string_match(string_matcher::MatchPattern::Exact(with_scheme(value)))
    };
    authenticated(matcher)
}

fn namespace_id(value: &str) -> Principal {
    let pattern = if value == "*" {
        ".*".to_string()
    } else if let Some(suffix) = value.strip_prefix('*') {
        format!(".*{}", regex_escape(suffix))
    } else if let Some(prefix) = value.strip_suffix('*') {
        format!("{}.*", regex_escape(prefix))
    } else {
        regex_escape(value)
    };
    authenticated(regex(&format!(".*/ns/{pattern}/.*")))
}

fn service_account_id(value: &str, policy_ns: &str) -> Principal {
    let (ns, sa) = value.split_once('/').unwrap_or((policy_ns, value));
    authenticated(regex(&format!(
        "spiffe://.+/ns/{}/(.+/|)sa/{}(/.+)?",
        regex_escape(ns),
        regex_escape(sa)
    )))
}

/// `<iss>/<sub>` against the JWT payload's `iss` and `sub`.
fn request_principal_id(value: &str) -> Principal {
    use string_matcher::MatchPattern::{Exact, Prefix, Suffix};
    let any = || regex(".+");
    let (iss, sub) = if value == "*" {
        (any(), any())
    } else if let Some(suffix) = value.strip_prefix('*') {
        (any(), string_match(Suffix(suffix.to_string())))
    } else if let Some(prefix) = value.strip_suffix('*') {
        match prefix.rsplit_once('/') {
            Some((iss, "")) => (string_match(Exact(iss.to_string())), any()),
            Some((iss, sub)) => (
                string_match(Exact(iss.to_string())),
                string_match(Prefix(sub.to_string())),
            ),
            None => (string_match(Prefix(prefix.to_string())), any()),
        }
    } else {
        let (iss, sub) = value.rsplit_once('/').unwrap_or((value, ""));
        (
            string_match(Exact(iss.to_string())),
            string_match(Exact(sub.to_string())),
        )
    };
    and_ids(vec![
        jwt_claim_id(&["iss"], ValueMatcher::string(iss)),
        jwt_claim_id(&["sub"], ValueMatcher::string(sub)),
    ])
}

fn jwt_metadata(claim: &[&str], value: ValueMatcher) -> MetadataMatcher {
    let path = std::iter::once(PAYLOAD_METADATA_KEY)
        .chain(claim.iter().copied())
        .map(|key| metadata_matcher::PathSegment {
            segment: Some(metadata_matcher::path_segment::Segment::Key(
                key.to_string(),
            )),
        })
        .collect();
    MetadataMatcher {
        filter: JWT_FILTER.to_string(),
        path,
        value: Some(value),
        invert: false,
    }
}

fn jwt_claim_id(claim: &[&str], value: ValueMatcher) -> Principal {
    id(principal::Identifier::Metadata(jwt_metadata(claim, value)))
}

/// A claim that may be a string or a list of strings (`aud`, `azp`, custom claims).
fn claim_values(values: &[String]) -> ValueMatcher {
    let strings = || any_of(values);
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
            value_matchers: vec![
                ValueMatcher {
                    match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
                        ListMatcher {
                            match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(
                                strings(),
                            ))),
                        },
                    ))),
                },
                strings(),
            ],
        })),
    }
}

/// One string value matcher per value, OR-ed (Envoy wants two or more in an OR).
fn any_of(values: &[String]) -> ValueMatcher {
    let mut matchers: Vec<ValueMatcher> = values
        .iter()
        .map(|v| ValueMatcher::string(glob_matcher(v, false)))
        .collect();
    if matchers.len() == 1 {
        return matchers.remove(0);
    }
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
            value_matchers: matchers,
        })),
    }
}

fn header_id(name: &str, value: &str, ignore_case: bool) -> HeaderMatcher {
    let specifier = if value == "*" {
        header_matcher::HeaderMatchSpecifier::PresentMatch(true)
    } else {
        header_matcher::HeaderMatchSpecifier::StringMatch(glob_matcher(value, ignore_case))
    };
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}

// --- Permissions (what) ---

fn operation_rules(operation: &Operation, tcp: bool) -> Vec<Permission> {
    let mut rules = Vec::new();
    let mut push = |values: &[String], not_values: &[String], one: &dyn Fn(&str) -> Permission| {
        rules.extend(values_and_not(values, not_values, any_rule(one), not_rule));
    };
    if !tcp {
        push(&operation.hosts, &operation.not_hosts, &|v| {
            rule(permission::Rule::Header(header_id(":authority", v, true)))
        });
        push(&operation.methods, &operation.not_methods, &|v| {
            rule(permission::Rule::Header(header_id(":method", v, false)))
        });
        push(&operation.paths, &operation.not_paths, &path_rule);
    }
    push(&operation.ports, &operation.not_ports, &port_rule);
    rules
}

fn port_rule(value: &str) -> Permission {
    rule(permission::Rule::DestinationPort(
        value.parse().unwrap_or_default(),
    ))
}

fn path_rule(value: &str) -> Permission {
    if is_path_template(value) {
        let template = value.replace("{**}", "**").replace("{*}", "*");
        return rule(permission::Rule::UriTemplate(TypedExtensionConfig {
            name: "uri-template".to_string(),
            typed_config: Some(any(&UriTemplateMatchConfig {
                path_template: template,
            })),
        }));
    }
    rule(permission::Rule::UrlPath(PathMatcher {
        rule: Some(path_matcher::Rule::Path(glob_matcher(value, false))),
    }))
}

/// Splits `when` conditions the way Istio does: connection and destination attributes are
/// permissions, everything about the caller is a principal.
fn condition_matchers(
    key: &ConditionKey,
    condition: &Condition,
    permissions: &mut Vec<Permission>,
    principals: &mut Vec<Principal>,
) {
    let (values, not_values) = (&condition.values, &condition.not_values);
    let mut principal = |one: &dyn Fn(&str) -> Principal| {
        principals.extend(values_and_not(values, not_values, any_id(one), not_id));
    };
    match key {
        ConditionKey::RequestHeader(name) => {
            principal(&|v| id(principal::Identifier::Header(header_id(name, v, false))))
        }
        ConditionKey::SourceIp => {
            principal(&|v| id(principal::Identifier::DirectRemoteIp(cidr(v))))
        }
        ConditionKey::RemoteIp => principal(&|v| id(principal::Identifier::RemoteIp(cidr(v)))),
        ConditionKey::SourceNamespace => principal(&namespace_id),
        ConditionKey::SourcePrincipal => principal(&principal_id),
        ConditionKey::RequestPrincipal => principal(&request_principal_id),
        ConditionKey::RequestAudiences
        | ConditionKey::RequestPresenter
        | ConditionKey::RequestClaim(_) => {
            let claim: Vec<&str> = match key {
                ConditionKey::RequestAudiences => vec!["aud"],
                ConditionKey::RequestPresenter => vec!["azp"],
                ConditionKey::RequestClaim(path) => path.iter().map(String::as_str).collect(),
                _ => unreachable!(),
            };
            let matcher = |list: &[String]| jwt_claim_id(&claim, claim_values(list));
            principals.extend(values_and_not(values, not_values, matcher, not_id));
        }
        ConditionKey::DestinationIp
        | ConditionKey::DestinationPort
        | ConditionKey::ConnectionSni => {
            let one = |v: &str| match key {
                ConditionKey::DestinationIp => rule(permission::Rule::DestinationIp(cidr(v))),
                ConditionKey::DestinationPort => port_rule(v),
                _ => rule(permission::Rule::RequestedServerName(glob_matcher(
                    v, false,
                ))),
            };
            permissions.extend(values_and_not(values, not_values, any_rule(&one), not_rule));
        }
        ConditionKey::EnvoyFilterMetadata { filter, key } => {
            let matcher = |list: &[String]| {
                rule(permission::Rule::Metadata(MetadataMatcher {
                    filter: filter.clone(),
                    path: vec![metadata_matcher::PathSegment {
                        segment: Some(metadata_matcher::path_segment::Segment::Key(key.clone())),
                    }],
                    value: Some(any_of(list)),
                    invert: false,
                }))
            };
            permissions.extend(values_and_not(values, not_values, matcher, not_rule));
        }
    }
}

// --- Matcher helpers ---

/// Istio's `values` and `notValues`: a matcher over `values` (any of them), and the negation
/// of one over `notValues`; an empty list adds nothing.
fn values_and_not<T>(
    values: &[String],
    not_values: &[String],
    over: impl Fn(&[String]) -> T,
    not: fn(T) -> T,
) -> Vec<T> {
    let mut matchers = Vec::new();
    if !values.is_empty() {
        matchers.push(over(values));
    }
    if !not_values.is_empty() {
        matchers.push(not(over(not_values)));
    }
    matchers
}

/// An OR of one principal per value.
fn any_id(one: &dyn Fn(&str) -> Principal) -> impl Fn(&[String]) -> Principal + '_ {
    move |list| or_ids(list.iter().map(|v| one(v)).collect())
}

/// An OR of one permission per value.
fn any_rule(one: &dyn Fn(&str) -> Permission) -> impl Fn(&[String]) -> Permission + '_ {
    move |list| or_rules(list.iter().map(|v| one(v)).collect())
}

fn regex(pattern: &str) -> StringMatcher {
    string_match(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
        regex: pattern.to_string(),
        ..Default::default()
    }))
}

fn string_match(pattern: string_matcher::MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    }
}

/// Istio's `*`, `prefix*`, `*suffix` and exact values as a string matcher (`*`: non-empty).
fn glob_matcher(value: &str, ignore_case: bool) -> StringMatcher {
    use string_matcher::MatchPattern::{Exact, Prefix, Suffix};
    let mut matcher = if value == "*" {
        regex(".+")
    } else if let Some(suffix) = value.strip_prefix('*') {
        string_match(Suffix(suffix.to_string()))
    } else if let Some(prefix) = value.strip_suffix('*') {
        string_match(Prefix(prefix.to_string()))
    } else {
        string_match(Exact(value.to_string()))
    };
    matcher.ignore_case = ignore_case;
    matcher
}

/// RE2 syntax escape (Go's `regexp.QuoteMeta`).
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn cidr(value: &str) -> CidrRange {
    let block = IpBlock::parse(value).expect("IP blocks are validated by the loader");
    CidrRange {
        address_prefix: block.address.to_string(),
        prefix_len: Some(UInt32Value {
            value: u32::from(block.prefix_len),
        }),
    }
}

trait StringValueMatcher {
    fn string(matcher: StringMatcher) -> ValueMatcher;
}

impl StringValueMatcher for ValueMatcher {
    fn string(matcher: StringMatcher) -> ValueMatcher {
        ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::StringMatch(matcher)),
        }
    }
}

fn id(identifier: principal::Identifier) -> Principal {
    Principal {
        identifier: Some(identifier),
    }
}

fn rule(rule: permission::Rule) -> Permission {
    Permission { rule: Some(rule) }
}

fn principal_any() -> Principal {
    id(principal::Identifier::Any(true))
}

fn permission_any() -> Permission {
    rule(permission::Rule::Any(true))
}

fn and_ids(ids: Vec<Principal>) -> Principal {
    let ids = if ids.is_empty() {
        vec![principal_any()]
    } else {
        ids
    };
    id(principal::Identifier::AndIds(principal::Set { ids }))
}

fn or_ids(ids: Vec<Principal>) -> Principal {
    id(principal::Identifier::OrIds(principal::Set { ids }))
}

fn not_id(inner: Principal) -> Principal {
    id(principal::Identifier::NotId(Box::new(inner)))
}

fn and_rules(rules: Vec<Permission>) -> Permission {
    let rules = if rules.is_empty() {
        vec![permission_any()]
    } else {
        rules
    };
    rule(permission::Rule::AndRules(permission::Set { rules }))
}

fn or_rules(rules: Vec<Permission>) -> Permission {
    rule(permission::Rule::OrRules(permission::Set { rules }))
}

fn not_rule(inner: Permission) -> Permission {
    rule(permission::Rule::NotRule(Box::new(inner)))
}
