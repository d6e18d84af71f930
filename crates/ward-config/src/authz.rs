//! Istio's `security.istio.io` AuthorizationPolicy and RequestAuthentication, decoded into the
//! types the authorization engine (`wasm_authz`) shares with the control plane. Everything
//! Istio itself would reject is an error here; what Ward cannot enforce the way Istio does is
//! an error too (CUSTOM, targetRef), so a policy never fails open.

use std::collections::BTreeMap;

use wasm_authz::policy::{
    Action, AuthorizationPolicy, Condition, ConditionKey, IpBlock, Operation, Rule, Source,
};

use crate::decode::Object;
use crate::diagnostic::Report;
use crate::istio::workload_selector;
use crate::kinds::{decode_meta, Meta};
use crate::names::Rule as NameRule;
use crate::yaml::Position;

/// The annotation that turns a policy into a shadow policy (Istio's name).
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

#[derive(Debug, Clone)]
pub struct AuthorizationPolicySpec {
    pub meta: Meta,
    pub selector: Option<BTreeMap<String, String>>,
    pub selector_position: Position,
    pub policy: AuthorizationPolicy,
    /// Names the policy refers to, checked against the mesh once every file is read.
    pub references: Vec<Reference>,
}

#[derive(Debug, Clone)]
pub struct Reference {
    pub position: Position,
    pub field: String,
    pub kind: ReferenceKind,
}

#[derive(Debug, Clone)]
pub enum ReferenceKind {
    Namespace(String),
    /// `<trust domain>/ns/<ns>/sa/<sa>` principals and `serviceAccounts`.
    ServiceAccount {
        trust_domain: Option<String>,
        namespace: String,
        name: String,
    },
}

/// A list field, with each value's position.
fn values(object: &Object, key: &str, report: &mut Report) -> Vec<(Position, String, String)> {
    object
        .list(key, report)
        .into_iter()
        .filter_map(|(path, node)| {
            crate::decode::string(node, &path, report).map(|v| (node.position, path, v))
        })
        .collect()
}

fn strings(items: &[(Position, String, String)]) -> Vec<String> {
    items.iter().map(|(_, _, v)| v.clone()).collect()
}

/// Istio's rule for string patterns: `*` may only lead or trail.
fn check_pattern(items: &[(Position, String, String)], report: &mut Report) {
    for (at, path, value) in items {
        let inner = value.trim_start_matches('*').trim_end_matches('*');
        if inner.contains('*')
            || (value.len() > 1 && value.starts_with('*') && value.ends_with('*'))
        {
            report.error(
                *at,
                path,
                format!(
                    "`{value}`: `*` may only be the whole value, its first or its last character"
                ),
            );
        }
    }
}

fn check_ip_blocks(items: &[(Position, String, String)], report: &mut Report) {
    for (at, path, value) in items {
        if IpBlock::parse(value).is_none() {
            report.error(
                *at,
                path,
                format!("`{value}` is not an IP address or CIDR block"),
            );
        }
    }
}

fn check_ports(items: &[(Position, String, String)], report: &mut Report) {
    for (at, path, value) in items {
        if !matches!(value.parse::<u32>(), Ok(1..=65535)) {
            report.error(*at, path, format!("`{value}` is not a port number"));
        }
    }
}

fn check_paths(items: &[(Position, String, String)], report: &mut Report) {
    for (at, path, value) in items {
        if value.contains('{') {
            let bad = value.split('/').any(|segment| {
                segment.contains(['{', '}']) && segment != "{*}" && segment != "{**}"
            });
            if bad || !value.starts_with('/') {
                report.error(
                    *at,
                    path,
                    format!("`{value}`: a path template needs a leading `/` and whole segments `{{*}}` or `{{**}}`"),
                );
            }
        } else {
            check_pattern(&[(*at, path.clone(), value.clone())], report);
        }
    }
}

/// `targetRef(s)` would scope a policy to a Gateway API object; ignoring it would widen the
/// policy to the whole namespace, so it is refused.
fn refuse_target_refs(object: &Object, report: &mut Report) {
    for key in ["targetRef", "targetRefs"] {
        if object.has(key) {
            object.get(key);
            report.error(
                object.position_of(key),
                &object.field_path(key),
                "not supported by Ward (Gateway API targets); use `selector`",
            );
        }
    }
}

/// `<td>/ns/<ns>/sa/<sa>` → a service-account reference (for "does it exist" checks).
fn principal_reference(at: Position, field: &str, value: &str) -> Option<Reference> {
    if value.contains('*') {
        return None;
    }
    let value = value.strip_prefix("spiffe://").unwrap_or(value);
    let (td, rest) = value.split_once("/ns/")?;
    let (ns, sa) = rest.split_once("/sa/")?;
    Some(Reference {
        position: at,
        field: field.to_string(),
        kind: ReferenceKind::ServiceAccount {
            trust_domain: Some(td.to_string()),
            namespace: ns.to_string(),
            name: sa.to_string(),
        },
    })
}

fn decode_source(
    object: &Object,
    policy_ns: &str,
    references: &mut Vec<Reference>,
    report: &mut Report,
) -> Source {
    let principals = values(object, "principals", report);
    let not_principals = values(object, "notPrincipals", report);
    let request_principals = values(object, "requestPrincipals", report);
    let not_request_principals = values(object, "notRequestPrincipals", report);
    let namespaces = values(object, "namespaces", report);
    let not_namespaces = values(object, "notNamespaces", report);
    let service_accounts = values(object, "serviceAccounts", report);
    let not_service_accounts = values(object, "notServiceAccounts", report);
    let ip_blocks = values(object, "ipBlocks", report);
    let not_ip_blocks = values(object, "notIpBlocks", report);
    let remote_ip_blocks = values(object, "remoteIpBlocks", report);
    let not_remote_ip_blocks = values(object, "notRemoteIpBlocks", report);
    for list in [
        &principals,
        &not_principals,
        &request_principals,
        &not_request_principals,
        &namespaces,
        &not_namespaces,
    ] {
        check_pattern(list, report);
    }
    for list in [
        &ip_blocks,
        &not_ip_blocks,
        &remote_ip_blocks,
        &not_remote_ip_blocks,
    ] {
        check_ip_blocks(list, report);
    }
    for (at, path, value) in principals.iter().chain(&not_principals) {
        references.extend(principal_reference(*at, path, value));
    }
    for (at, path, value) in namespaces.iter().chain(&not_namespaces) {
        if !value.contains('*') {
            references.push(Reference {
                position: *at,
                field: path.clone(),
                kind: ReferenceKind::Namespace(value.clone()),
            });
        }
    }
    for (at, path, value) in service_accounts.iter().chain(&not_service_accounts) {
        let (ns, sa) = value.split_once('/').unwrap_or((policy_ns, value));
        if value.contains('*') || sa.contains('/') {
            report.error(
                *at,
                path,
                format!(
                    "`{value}`: a service account is `name` or `namespace/name`, without wildcards"
                ),
            );
            continue;
        }
        references.push(Reference {
            position: *at,
            field: path.clone(),
            kind: ReferenceKind::ServiceAccount {
                trust_domain: None,
                namespace: ns.to_string(),
                name: sa.to_string(),
            },
        });
    }
    if !service_accounts.is_empty() && !principals.is_empty() {
        report.error(
            object.position_of("serviceAccounts"),
            &object.field_path("serviceAccounts"),
            "serviceAccounts and principals cannot be set together (Istio rejects it)",
        );
    }
    Source {
        principals: strings(&principals),
        not_principals: strings(&not_principals),
        request_principals: strings(&request_principals),
        not_request_principals: strings(&not_request_principals),
        namespaces: strings(&namespaces),
        not_namespaces: strings(&not_namespaces),
        service_accounts: strings(&service_accounts),
        not_service_accounts: strings(&not_service_accounts),
        ip_blocks: strings(&ip_blocks),
        not_ip_blocks: strings(&not_ip_blocks),
        remote_ip_blocks: strings(&remote_ip_blocks),
        not_remote_ip_blocks: strings(&not_remote_ip_blocks),
    }
}

fn decode_operation(object: &Object, report: &mut Report) -> Operation {
    let hosts = values(object, "hosts", report);
    let not_hosts = values(object, "notHosts", report);
    let ports = values(object, "ports", report);
    let not_ports = values(object, "notPorts", report);
    let methods = values(object, "methods", report);
    let not_methods = values(object, "notMethods", report);
    let paths = values(object, "paths", report);
    let not_paths = values(object, "notPaths", report);
    for list in [&hosts, &not_hosts, &methods, &not_methods] {
        check_pattern(list, report);
    }
    check_ports(&ports, report);
    check_ports(&not_ports, report);
    check_paths(&paths, report);
    check_paths(&not_paths, report);
    Operation {
        hosts: strings(&hosts),
        not_hosts: strings(&not_hosts),
        ports: strings(&ports),
        not_ports: strings(&not_ports),
        methods: strings(&methods),
        not_methods: strings(&not_methods),
        paths: strings(&paths),
        not_paths: strings(&not_paths),
    }
}

fn decode_condition(object: &Object, report: &mut Report) -> Option<Condition> {
    let key = object.required_string("key", report)?;
    let key_at = object.position_of("key");
    let vals = values(object, "values", report);
    let not_vals = values(object, "notValues", report);
    let Some(parsed) = ConditionKey::parse(&key) else {
        report.error(
            key_at,
            &object.field_path("key"),
            format!("unknown condition key `{key}`: expected request.headers[NAME], source.ip, remote.ip, source.namespace, source.principal, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME], destination.ip, destination.port, connection.sni or experimental.envoy.filters.*[KEY]"),
        );
        return None;
    };
    if vals.is_empty() && not_vals.is_empty() {
        report.error(
            object.position,
            &object.path,
            "a condition needs `values` or `notValues`",
        );
    }
    if parsed.is_ip() {
        check_ip_blocks(&vals, report);
        check_ip_blocks(&not_vals, report);
    } else if parsed == ConditionKey::DestinationPort {
        check_ports(&vals, report);
        check_ports(&not_vals, report);
    } else {
        check_pattern(&vals, report);
        check_pattern(&not_vals, report);
    }
    if matches!(parsed, ConditionKey::EnvoyFilterMetadata { .. }) {
        report.warn(
            key_at,
            &object.field_path("key"),
            "experimental key: matched against Envoy dynamic metadata that no filter Ward configures sets, so only a `notValues` form can match",
        );
    }
    Some(Condition::new(key, strings(&vals), strings(&not_vals)))
}

/// One `rules[i]` entry.
fn decode_rule(
    object: &Object,
    policy_ns: &str,
    references: &mut Vec<Reference>,
    report: &mut Report,
) -> Rule {
    let mut rule = Rule::default();
    for (path, node) in object.list("from", report) {
        let Some(from) = Object::of(node, &path, report) else {
            continue;
        };
        match from.object("source", report) {
            Some(source) => {
                rule.from
                    .push(decode_source(&source, policy_ns, references, report));
                source.finish(report);
            }
            None => missing_parent(&from, "source", report),
        }
        from.finish(report);
    }
    for (path, node) in object.list("to", report) {
        let Some(to) = Object::of(node, &path, report) else {
            continue;
        };
        match to.object("operation", report) {
            Some(operation) => {
                rule.to.push(decode_operation(&operation, report));
                operation.finish(report);
            }
            None => missing_parent(&to, "operation", report),
        }
        to.finish(report);
    }
    for (path, node) in object.list("when", report) {
        let Some(when) = Object::of(node, &path, report) else {
            continue;
        };
        if let Some(condition) = decode_condition(&when, report) {
            rule.when.push(condition);
        }
        when.finish(report);
    }
    rule
}

/// `source`/`operation` missing, as Istio rejects it; when its fields sit beside it instead of
/// under it (an indentation slip, as in seed 002's section 7.3), say so.
fn missing_parent(object: &Object, key: &str, report: &mut Report) {
    let beside: Vec<String> = object.keys().into_iter().filter(|k| k != key).collect();
    if beside.is_empty() {
        object.missing(key, report);
        return;
    }
    // Reported here; not again as "ignored".
    object.skip(&beside.iter().map(String::as_str).collect::<Vec<_>>());
    report.error(
        object.position_of(key),
        &object.field_path(key),
        format!(
            "required field is missing or empty: `{}` is written beside `{key}:`, not under it; indent it under `{key}:`",
            beside.join("`, `")
        ),
    );
}

/// The classic YAML slip: a `-` too many before `to:` (or `from:`) splits one rule into a
/// rule with only sources and one with only operations. In an ALLOW policy the second
/// allows that operation to everyone.
fn check_split_rules(
    rules: &[(Position, String, Vec<&'static str>)],
    action: Action,
    report: &mut Report,
) {
    for pair in rules.windows(2) {
        let (_, first_path, first) = &pair[0];
        let (at, path, second) = &pair[1];
        let split = (first.as_slice() == ["from"] && second.as_slice() == ["to"])
            || (first.as_slice() == ["to"] && second.as_slice() == ["from"]);
        if split {
            let effect = match action {
                Action::Allow => format!(
                    "as written, {path} allows its `{}` to every source",
                    second[0]
                ),
                _ => format!(
                    "as written, {path} applies its `{}` to every source",
                    second[0]
                ),
            };
            report.warn(
                *at,
                path,
                format!("{first_path} has only `{}` and {path} only `{}`: if they are one rule, remove the `-` before `{}`; {effect}", first[0], second[0], second[0]),
            );
        }
    }
}

pub fn decode_authorization_policy(
    doc: &Object,
    report: &mut Report,
) -> Option<AuthorizationPolicySpec> {
    let meta = decode_meta(doc, true, NameRule::Subdomain, report)?;
    let dry_run = match meta.annotations.get(DRY_RUN_ANNOTATION).map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            report.error(
                meta.position,
                &format!("metadata.annotations.{DRY_RUN_ANNOTATION}"),
                format!("`{other}`: expected \"true\" or \"false\""),
            );
            false
        }
    };
    let mut spec = AuthorizationPolicySpec {
        selector_position: meta.position,
        policy: AuthorizationPolicy {
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            action: Action::Allow,
            rules: Vec::new(),
            dry_run,
        },
        meta,
        selector: None,
        references: Vec::new(),
    };
    // `spec: {}` or no spec: an ALLOW policy with no rules, which allows nothing.
    let Some(object) = doc.object("spec", report) else {
        return Some(spec);
    };
    spec.selector_position = object.position_of("selector");
    spec.selector = workload_selector(&object, report);
    if object.has("matchLabels") {
        object.get("matchLabels");
        report.warn(
            object.position_of("matchLabels"),
            "spec.matchLabels",
            format!(
                "unknown field, ignored as Kubernetes prunes it: did you mean spec.selector.matchLabels (indent it under `selector:`)? Without a selector the policy applies to every workload in namespace {}",
                spec.meta.namespace
            ),
        );
    }
    refuse_target_refs(&object, report);
    let action_at = object.position_of("action");
    spec.policy.action = match object.string("action", report).as_deref() {
        None | Some("ALLOW") => Action::Allow,
        Some("DENY") => Action::Deny,
        Some("AUDIT") => Action::Audit,
        Some("CUSTOM") => {
            report.error(
                action_at,
                "spec.action",
                "CUSTOM (external authorizers) is not supported by Ward; the policy is refused rather than skipped, so nothing it would deny gets through",
            );
            Action::Custom
        }
        Some(other) => {
            report.error(
                action_at,
                "spec.action",
                format!("unknown action `{other}`: expected ALLOW, DENY, AUDIT or CUSTOM"),
            );
            return None;
        }
    };
    if object.has("provider") {
        object.get("provider");
        if spec.policy.action != Action::Custom {
            report.error(
                object.position_of("provider"),
                "spec.provider",
                "provider is only allowed with action CUSTOM",
            );
        }
    }
    let mut shapes = Vec::new();
    for (path, node) in object.list("rules", report) {
        let Some(rule) = Object::of(node, &path, report) else {
            continue;
        };
        let shape: Vec<&'static str> = ["from", "to", "when"]
            .into_iter()
            .filter(|k| rule.has(k))
            .collect();
        spec.policy.rules.push(decode_rule(
            &rule,
            &spec.meta.namespace,
            &mut spec.references,
            report,
        ));
        rule.finish(report);
        shapes.push((node.position, path, shape));
    }
    check_split_rules(&shapes, spec.policy.action, report);
    object.finish(report);
    Some(spec)
}

/// One `jwtRules` entry as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtRuleSpec {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Inline JWKS (wins over `jwks_uri`, as in Istio).
    pub jwks: Option<String>,
    pub jwks_uri: Option<String>,
    pub from_headers: Vec<(String, String)>,
    pub from_params: Vec<String>,
    /// Cookie names holding the token.
    pub from_cookies: Vec<String>,
    pub forward_original_token: bool,
    pub output_payload_to_header: Option<String>,
    /// `(header, claim)`.
    pub output_claim_to_headers: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct RequestAuthenticationSpec {
    pub meta: Meta,
    pub selector: Option<BTreeMap<String, String>>,
    pub selector_position: Position,
    pub rules: Vec<JwtRuleSpec>,
}

fn decode_jwt_rule(object: &Object, report: &mut Report) -> Option<JwtRuleSpec> {
    let issuer = object.required_string("issuer", report)?;
    let audiences = object.string_list("audiences", report);
    let jwks = object.string("jwks", report);
    let jwks_uri = object.string("jwksUri", report);
    if let Some(text) = &jwks {
        let keys = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("keys").and_then(|k| k.as_array()).map(Vec::len));
        if keys.is_none() {
            report.error(
                object.position_of("jwks"),
                &object.field_path("jwks"),
                "not a JWKS: expected a JSON object with a `keys` list",
            );
        }
    }
    match (&jwks, &jwks_uri) {
        (None, None) => report.error(
            object.position,
            &object.path,
            "set `jwks` or `jwksUri`: Ward does not discover keys from the issuer (OpenID discovery)",
        ),
        (None, Some(uri)) if !(uri.starts_with("http://") || uri.starts_with("https://")) => {
            report.error(
                object.position_of("jwksUri"),
                &object.field_path("jwksUri"),
                format!("`{uri}`: expected an http:// or https:// URL"),
            )
        }
        _ => {}
    }
    let mut from_headers = Vec::new();
    for (path, node) in object.list("fromHeaders", report) {
        if let Some(header) = Object::of(node, &path, report) {
            if let Some(name) = header.required_string("name", report) {
                let prefix = header.string("prefix", report).unwrap_or_default();
                from_headers.push((name, prefix));
            }
            header.finish(report);
        }
    }
    let from_params = object.string_list("fromParams", report);
    let mut from_cookies = Vec::new();
    for (path, node) in object.list("fromCookies", report) {
        let Some(name) = crate::decode::string(node, &path, report) else {
            continue;
        };
        // A name with a separator can never match a cookie: refused rather than ignored.
        if name.is_empty() || name.contains([';', '=', ',', ' ', '\t', '"']) {
            report.error(
                node.position,
                &path,
                format!("{name:?} is not a cookie name (non-empty, without `;`, `=`, `,`, quotes or spaces)"),
            );
        } else {
            from_cookies.push(name);
        }
    }
    let forward_original_token = object
        .get("forwardOriginalToken")
        .is_some_and(|n| n.text() == Some("true"));
    let output_payload_to_header = object.string("outputPayloadToHeader", report);
    let mut output_claim_to_headers = Vec::new();
    for (path, node) in object.list("outputClaimToHeaders", report) {
        if let Some(entry) = Object::of(node, &path, report) {
            let header = entry.required_string("header", report);
            let claim = entry.required_string("claim", report);
            if let (Some(header), Some(claim)) = (header, claim) {
                output_claim_to_headers.push((header, claim));
            }
            entry.finish(report);
        }
    }
    Some(JwtRuleSpec {
        issuer,
        audiences,
        jwks,
        jwks_uri,
        from_headers,
        from_params,
        from_cookies,
        forward_original_token,
        output_payload_to_header,
        output_claim_to_headers,
    })
}

pub fn decode_request_authentication(
    doc: &Object,
    report: &mut Report,
) -> Option<RequestAuthenticationSpec> {
    let meta = decode_meta(doc, true, NameRule::Subdomain, report)?;
    let mut spec = RequestAuthenticationSpec {
        selector_position: meta.position,
        meta,
        selector: None,
        rules: Vec::new(),
    };
    let Some(object) = doc.object("spec", report) else {
        return Some(spec);
    };
    spec.selector_position = object.position_of("selector");
    spec.selector = workload_selector(&object, report);
    refuse_target_refs(&object, report);
    for (path, node) in object.list("jwtRules", report) {
        if let Some(rule) = Object::of(node, &path, report) {
            spec.rules.extend(decode_jwt_rule(&rule, report));
            rule.finish(report);
        }
    }
    object.finish(report);
    Some(spec)
}
