//! From decoded documents to the mesh model: checks across documents (duplicates, selectors,
//! target ports, service accounts), instances (placed by `placement`), services with their
//! backends and numeric target ports.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use crate::authz::{AuthorizationPolicySpec, ReferenceKind, RequestAuthenticationSpec};
use crate::diagnostic::Diagnostic;
use crate::istio::{DestinationRuleSpec, PeerAuthenticationSpec};
use crate::kinds::{
    DeploymentSpec, Document, ServicePortSpec, ServiceSpec, TargetPort, DEFAULT_SERVICE_ACCOUNT,
};
use crate::linkerd::ServiceProfileSpec;
use crate::model::{
    policy_applies, AuthorizationEngine, DestinationRule, Instance, Mesh, PeerAuthentication,
    RequestAuthentication, ScopedAuthorizationPolicy, Service, ServiceAccount, ServicePort,
    ServiceProfile, SourceRef, VirtualService, Workload, MESH_GATEWAY,
};
use crate::placement;
use crate::virtual_service::VirtualServiceSpec;
use crate::yaml::Position;

pub use crate::wellknown::{DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN};

/// A decoded document with the file it came from.
pub struct Located {
    pub file: String,
    pub document: Document,
    /// Decoded without errors. Checks that compare documents stay quiet about one that had
    /// errors: what looks missing from it has already been reported.
    pub clean: bool,
}

/// What the checks found, beside the mesh.
#[derive(Default)]
pub struct Findings {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Findings {
    pub(crate) fn push(
        &mut self,
        error: bool,
        file: &str,
        at: Position,
        field: &str,
        message: String,
    ) {
        let d = Diagnostic {
            file: file.to_string(),
            line: at.line,
            column: at.column,
            field: field.to_string(),
            message,
        };
        if error {
            self.errors.push(d);
        } else {
            self.warnings.push(d);
        }
    }
}

/// Builds the mesh. `complete` is false when some document could not be decoded at all
/// (a syntax error, a missing kind or name): then "matches nothing" is not reported, since
/// the missing Deployment may be the one that could not be read.
pub fn resolve(documents: Vec<Located>, complete: bool, findings: &mut Findings) -> Mesh {
    let mut trust_domain = DEFAULT_TRUST_DOMAIN.to_string();
    let mut root_namespace = DEFAULT_ROOT_NAMESPACE.to_string();
    let mut authorization_engine = AuthorizationEngine::default();
    let mut namespaces = BTreeSet::new();
    let mut service_accounts = BTreeSet::new();
    let mut deployments: Vec<(String, bool, DeploymentSpec)> = Vec::new();
    let mut services: Vec<(String, ServiceSpec)> = Vec::new();
    let mut mesh_config: Option<(String, usize)> = None;
    let mut peer_authentications: Vec<(String, PeerAuthenticationSpec)> = Vec::new();
    let mut destination_rules: Vec<(String, DestinationRuleSpec)> = Vec::new();
    let mut authorization_policies: Vec<(String, AuthorizationPolicySpec)> = Vec::new();
    let mut request_authentications: Vec<(String, RequestAuthenticationSpec)> = Vec::new();
    let mut service_profiles: Vec<(String, ServiceProfileSpec)> = Vec::new();
    let mut virtual_services: Vec<(String, VirtualServiceSpec)> = Vec::new();
    let mut traffic_routes: Vec<(String, crate::kuma::TrafficRouteSpec)> = Vec::new();
    let mut seen: BTreeMap<(&'static str, String, String), (String, usize)> = BTreeMap::new();

    for Located {
        file,
        document,
        clean,
    } in documents
    {
        if let Some(meta) = document.meta() {
            let key = (document.kind(), meta.namespace.clone(), meta.name.clone());
            if let Some((first_file, first_line)) = seen.get(&key) {
                let qualified = if meta.namespace.is_empty() {
                    meta.name.clone()
                } else {
                    format!("{}/{}", meta.namespace, meta.name)
                };
                findings.push(
                    true,
                    &file,
                    meta.name_position,
                    "metadata.name",
                    format!(
                        "duplicate {} {qualified} (first defined at {first_file}:{first_line})",
                        document.kind()
                    ),
                );
                continue;
            }
            seen.insert(key, (file.clone(), meta.position.line));
        }
        match document {
            Document::Namespace(meta) => {
                namespaces.insert(meta.name);
            }
            Document::ServiceAccount(meta) => {
                namespaces.insert(meta.namespace.clone());
                service_accounts.insert((meta.namespace, meta.name));
            }
            Document::MeshConfig(config) => {
                if let Some((first_file, first_line)) = &mesh_config {
                    findings.push(
                        true,
                        &file,
                        config.position,
                        "",
                        format!("a second MeshConfig (first at {first_file}:{first_line}); a mesh has at most one"),
                    );
                    continue;
                }
                mesh_config = Some((file, config.position.line));
                if let Some(td) = config.trust_domain {
                    trust_domain = td;
                }
                if let Some(ns) = config.root_namespace {
                    root_namespace = ns;
                }
                if let Some(engine) = config.authorization_engine {
                    authorization_engine = engine;
                }
            }
            Document::Deployment(d) => {
                namespaces.insert(d.meta.namespace.clone());
                deployments.push((file, clean, d));
            }
            Document::Service(s) => {
                namespaces.insert(s.meta.namespace.clone());
                services.push((file, s));
            }
            Document::PeerAuthentication(p) => peer_authentications.push((file, p)),
            Document::DestinationRule(r) => destination_rules.push((file, *r)),
            Document::AuthorizationPolicy(p) => authorization_policies.push((file, p)),
            Document::RequestAuthentication(r) => request_authentications.push((file, r)),
            Document::ServiceProfile(p) => service_profiles.push((file, p)),
            Document::VirtualService(v) => virtual_services.push((file, v)),
            Document::TrafficRoute(r) => traffic_routes.push((file, r)),
        }
    }

    deployments.sort_by(|(_, _, a), (_, _, b)| {
        (&a.meta.namespace, &a.meta.name).cmp(&(&b.meta.namespace, &b.meta.name))
    });
    let slots = placement::assign_slots(
        deployments
            .iter()
            .map(|(_, _, d)| (d.meta.namespace.as_str(), d.meta.name.as_str())),
    );
    let mut workloads = Vec::new();
    for ((file, _, d), slot) in deployments.iter().zip(slots) {
        let key = (d.meta.namespace.clone(), d.service_account.clone());
        if d.service_account != DEFAULT_SERVICE_ACCOUNT && !service_accounts.contains(&key) {
            findings.push(
                false,
                file,
                d.service_account_position.unwrap_or(d.meta.position),
                "spec.template.spec.serviceAccountName",
                format!(
                    "ServiceAccount {}/{} is not declared (Kubernetes would not start the pod); the identity uses that name anyway",
                    d.meta.namespace, d.service_account
                ),
            );
        }
        workloads.push(Workload {
            name: d.meta.name.clone(),
            namespace: d.meta.namespace.clone(),
            service_account: d.service_account.clone(),
            replicas: d.replicas,
            labels: d.template_labels.clone(),
            annotations: d.template_annotations.clone(),
            containers: d.containers.clone(),
            instances: match (d.is_pod, d.pod_ip) {
                (true, Some(ip)) => vec![Instance {
                    name: d.meta.name.clone(),
                    index: 0,
                    address: ip,
                    app_address: Ipv4Addr::LOCALHOST,
                    ready: d.ready,
                }],
                (true, None) => Vec::new(),
                (false, _) => placement::instances(&d.meta.name, d.replicas, slot),
            },
            capture: d.is_pod,
            sidecar: d.sidecar,
            source: SourceRef {
                file: file.clone(),
                line: d.meta.position.line,
            },
        });
    }

    let index = WorkloadIndex::new(&workloads, &deployments);
    let mut resolved = Vec::new();
    for (file, s) in &services {
        if let Some(service) = resolve_service(file, s, &index, complete, findings) {
            resolved.push(service);
        }
    }
    resolved.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    // Kuma's routes become what Istio would write for them.
    let (kuma_virtual_services, kuma_rules) =
        crate::kuma::to_istio(traffic_routes, &resolved, findings);
    virtual_services.extend(kuma_virtual_services);
    destination_rules.extend(kuma_rules);

    let peer_authentications =
        resolve_peer_authentications(peer_authentications, &workloads, &root_namespace, findings);
    let destination_rules = resolve_destination_rules(
        destination_rules,
        &resolved,
        &workloads,
        &root_namespace,
        findings,
    );
    let authorization_policies = resolve_authorization_policies(
        authorization_policies,
        &workloads,
        &AuthzContext {
            root_namespace: &root_namespace,
            trust_domain: &trust_domain,
            namespaces: &namespaces,
            service_accounts: &service_accounts,
            complete,
        },
        findings,
    );

    request_authentications.sort_by(|(_, a), (_, b)| {
        (&a.meta.namespace, &a.meta.name).cmp(&(&b.meta.namespace, &b.meta.name))
    });
    if complete {
        for (file, r) in &request_authentications {
            let policy = (&r.meta.namespace, r.selector.as_ref(), r.selector_position);
            warn_if_selects_nothing(
                file,
                policy,
                workloads.as_slice(),
                &root_namespace,
                findings,
            );
        }
    }
    let request_authentications: Vec<RequestAuthentication> = request_authentications
        .into_iter()
        .map(|(file, r)| RequestAuthentication {
            name: r.meta.name,
            namespace: r.meta.namespace,
            selector: r.selector,
            rules: r.rules,
            source: SourceRef {
                file,
                line: r.meta.position.line,
            },
        })
        .collect();

    warn_jwt_without_authentication(
        &authorization_policies,
        &request_authentications,
        &workloads,
        &root_namespace,
        findings,
    );

    let service_profiles = resolve_service_profiles(service_profiles, &resolved, findings);
    let virtual_services = resolve_virtual_services(
        virtual_services,
        &resolved,
        &service_profiles,
        &destination_rules,
        &root_namespace,
        findings,
    );

    let mut mesh = Mesh {
        virtual_services,
        service_profiles,
        fetched_jwks: BTreeMap::new(),
        request_authentications,
        authorization_engine,
        authorization_policies,
        peer_authentications,
        destination_rules,
        trust_domain,
        root_namespace,
        namespaces: namespaces.into_iter().collect(),
        service_accounts: service_accounts
            .into_iter()
            .map(|(namespace, name)| ServiceAccount { name, namespace })
            .collect(),
        workloads,
        services_by_workload: crate::model::ServicesByWorkload::new(&resolved),
        hosts: Default::default(),
        services: resolved,
    };
    mesh.hosts = crate::model::HostIndex::new(&mesh);
    mesh
}

fn selects(selector: &BTreeMap<String, String>, workload: &Workload) -> bool {
    selector
        .iter()
        .all(|(k, v)| workload.labels.get(k) == Some(v))
}

/// A security policy whose selector selects no workload in its scope has no effect.
fn warn_if_selects_nothing(
    file: &str,
    (namespace, selector, position): (&String, Option<&BTreeMap<String, String>>, Position),
    workloads: &[Workload],
    root_namespace: &str,
    findings: &mut Findings,
) {
    if selector.is_none()
        || workloads
            .iter()
            .any(|w| policy_applies(namespace, selector, root_namespace, w))
    {
        return;
    }
    let scope = if namespace == root_namespace {
        "in the mesh".to_string()
    } else {
        format!("in namespace {namespace}")
    };
    findings.push(
        false,
        file,
        position,
        "spec.selector",
        format!("selects no workload {scope}: the policy has no effect"),
    );
}

/// An AuthorizationPolicy that looks at JWTs (request principals, `request.auth.*`) on a
/// workload no RequestAuthentication covers: no request there ever has a principal.
fn warn_jwt_without_authentication(
    policies: &[ScopedAuthorizationPolicy],
    authentications: &[RequestAuthentication],
    workloads: &[Workload],
    root_namespace: &str,
    findings: &mut Findings,
) {
    let in_scope = |ns: &str, selector: &Option<BTreeMap<String, String>>, w: &Workload| {
        policy_applies(ns, selector.as_ref(), root_namespace, w)
    };
    for scoped in policies {
        let uses_jwt = scoped.policy.rules.iter().any(|rule| {
            rule.from.iter().any(|s| s.http_only())
                || rule
                    .when
                    .iter()
                    .any(|c| c.parsed_key().is_some_and(|k| k.needs_jwt()))
        });
        if !uses_jwt {
            continue;
        }
        let uncovered: Vec<&str> = workloads
            .iter()
            .filter(|w| in_scope(&scoped.policy.namespace, &scoped.selector, w))
            .filter(|w| {
                !authentications
                    .iter()
                    .any(|r| in_scope(&r.namespace, &r.selector, w))
            })
            .map(|w| w.name.as_str())
            .collect();
        if !uncovered.is_empty() {
            findings.push(
                false,
                &scoped.source.file,
                Position {
                    line: scoped.source.line,
                    column: 1,
                },
                "spec.rules",
                format!(
                    "uses request principals or JWT claims, but no RequestAuthentication applies to {}: no request there has a token principal, so these rules match nothing (their `not` forms everything)",
                    uncovered.join(", ")
                ),
            );
        }
    }
}

/// What AuthorizationPolicy references are checked against.
struct AuthzContext<'a> {
    root_namespace: &'a str,
    trust_domain: &'a str,
    namespaces: &'a BTreeSet<String>,
    service_accounts: &'a BTreeSet<(String, String)>,
    /// False when some document could not be read (it may declare what looks missing).
    complete: bool,
}

/// AuthorizationPolicies with `istioctl analyze`'s checks: a selector that selects nothing, a
/// namespace or service account that does not exist.
fn resolve_authorization_policies(
    mut specs: Vec<(String, AuthorizationPolicySpec)>,
    workloads: &[Workload],
    context: &AuthzContext,
    findings: &mut Findings,
) -> Vec<ScopedAuthorizationPolicy> {
    specs.sort_by(|(_, a), (_, b)| {
        (&a.meta.namespace, &a.meta.name).cmp(&(&b.meta.namespace, &b.meta.name))
    });
    let service_account_exists = |ns: &str, sa: &str| {
        context
            .service_accounts
            .contains(&(ns.to_string(), sa.to_string()))
            || workloads
                .iter()
                .any(|w| w.namespace == ns && w.service_account == sa)
    };
    for (file, p) in &specs {
        if context.complete {
            let policy = (&p.meta.namespace, p.selector.as_ref(), p.selector_position);
            warn_if_selects_nothing(file, policy, workloads, context.root_namespace, findings);
        }
        if !context.complete {
            continue;
        }
        for reference in &p.references {
            let problem = match &reference.kind {
                ReferenceKind::Namespace(ns) => (!context.namespaces.contains(ns)).then(|| {
                    format!(
                        "namespace {ns} does not exist in this mesh: the value matches no workload"
                    )
                }),
                ReferenceKind::ServiceAccount {
                    trust_domain,
                    namespace,
                    name,
                } => {
                    if let Some(td) = trust_domain
                        .as_deref()
                        .filter(|td| *td != context.trust_domain)
                    {
                        Some(format!("trust domain {td} is not this mesh's ({}): no workload has this identity", context.trust_domain))
                    } else if !service_account_exists(namespace, name) {
                        Some(format!("service account {namespace}/{name} does not exist in this mesh (no ServiceAccount, no workload uses it): the value matches no workload"))
                    } else {
                        None
                    }
                }
            };
            if let Some(message) = problem {
                findings.push(false, file, reference.position, &reference.field, message);
            }
        }
    }
    specs
        .into_iter()
        .map(|(file, p)| ScopedAuthorizationPolicy {
            policy: p.policy,
            selector: p.selector,
            source: SourceRef {
                file,
                line: p.meta.position.line,
            },
        })
        .collect()
}

/// PeerAuthentications with the checks `istioctl analyze` makes: a selector that selects
/// nothing, several policies competing for one scope.
fn resolve_peer_authentications(
    specs: Vec<(String, PeerAuthenticationSpec)>,
    workloads: &[Workload],
    root_namespace: &str,
    findings: &mut Findings,
) -> Vec<PeerAuthentication> {
    let mut policies: Vec<(String, PeerAuthenticationSpec)> = specs;
    policies.sort_by(|(_, a), (_, b)| {
        (&a.meta.namespace, &a.meta.name).cmp(&(&b.meta.namespace, &b.meta.name))
    });
    let mut namespace_wide: BTreeMap<&str, &str> = BTreeMap::new();
    for (file, p) in &policies {
        match &p.selector {
            None => {
                if let Some(first) = namespace_wide.get(p.meta.namespace.as_str()) {
                    let scope = if p.meta.namespace == root_namespace {
                        "mesh-wide (root namespace)".to_string()
                    } else {
                        format!("namespace-wide in {}", p.meta.namespace)
                    };
                    findings.push(
                        false,
                        file,
                        p.meta.name_position,
                        "metadata.name",
                        format!("a second {scope} PeerAuthentication (first: {first}); Ward applies the first by name, Istio the oldest: keep one"),
                    );
                } else {
                    namespace_wide.insert(&p.meta.namespace, &p.meta.name);
                }
            }
            Some(selector) => {
                let selected: Vec<&Workload> = workloads
                    .iter()
                    .filter(|w| w.namespace == p.meta.namespace && selects(selector, w))
                    .collect();
                if selected.is_empty() {
                    findings.push(
                        false,
                        file,
                        p.selector_position,
                        "spec.selector",
                        format!(
                            "selects no workload in namespace {}: the policy has no effect",
                            p.meta.namespace
                        ),
                    );
                }
                for w in &selected {
                    let earlier = policies.iter().find(|(_, q)| {
                        q.meta.namespace == p.meta.namespace
                            && q.meta.name < p.meta.name
                            && q.selector.as_ref().is_some_and(|s| selects(s, w))
                    });
                    if let Some((_, q)) = earlier {
                        findings.push(
                            false,
                            file,
                            p.selector_position,
                            "spec.selector",
                            format!("workload {} is also selected by PeerAuthentication {}; Ward applies {} (the first by name), Istio the oldest", w.name, q.meta.name, q.meta.name),
                        );
                    }
                }
            }
        }
    }
    policies
        .into_iter()
        .map(|(file, p)| PeerAuthentication {
            name: p.meta.name,
            namespace: p.meta.namespace,
            selector: p.selector,
            mode: p.mode,
            port_level: p.port_level,
            source: SourceRef {
                file,
                line: p.meta.position.line,
            },
        })
        .collect()
}

/// A DestinationRule host as Istio resolves it: short names are relative to the rule's
/// namespace.
pub fn qualify_host(host: &str, namespace: &str) -> String {
    let domain = crate::wellknown::CLUSTER_DOMAIN;
    if host.starts_with('*') || host.ends_with(domain) {
        return host.to_string();
    }
    match host.split('.').count() {
        1 => format!("{host}.{namespace}.svc.{domain}"),
        2 => format!("{host}.svc.{domain}"),
        3 if host.ends_with(".svc") => format!("{host}.{domain}"),
        _ => host.to_string(),
    }
}

/// DestinationRules with their hosts qualified. Several rules of one namespace for one host
/// are merged as Istio merges them: in order (file, then position), subsets add up (a
/// subset name already taken is ignored, with a warning), the first rule's traffic policy
/// wins (a later one's is ignored, with a warning). A subset whose labels select no pod of
/// the host is warned: routes to it get 503s.
fn resolve_destination_rules(
    specs: Vec<(String, DestinationRuleSpec)>,
    services: &[Service],
    workloads: &[Workload],
    root_namespace: &str,
    findings: &mut Findings,
) -> Vec<DestinationRule> {
    let mut rules: Vec<DestinationRule> = Vec::new();
    let fqdns: Vec<(String, &Service)> = services
        .iter()
        .map(|s| (crate::model::service_fqdn(s), s))
        .collect();
    let by_fqdn: HashMap<&str, &Service> = fqdns.iter().map(|(f, s)| (f.as_str(), *s)).collect();
    // (namespace, host) → the rule later ones for the same host merge into.
    let mut merge_into: HashMap<(String, String), usize> = HashMap::new();
    let by_name: HashMap<(&str, &str), &Workload> = workloads
        .iter()
        .map(|w| ((w.namespace.as_str(), w.name.as_str()), w))
        .collect();
    for (file, r) in specs {
        let host = qualify_host(&r.host, &r.meta.namespace);
        let source = SourceRef {
            file: file.clone(),
            line: r.meta.position.line,
        };
        let matched: Vec<&Service> = if host.starts_with('*') {
            fqdns
                .iter()
                .filter(|(fqdn, _)| crate::model::host_match(&host, fqdn).is_some())
                .map(|(_, s)| *s)
                .collect()
        } else {
            by_fqdn.get(host.as_str()).copied().into_iter().collect()
        };
        if matched.is_empty() && !host.starts_with('*') {
            findings.push(
                false,
                &file,
                r.host_position,
                "spec.host",
                format!("host {host} matches no Service in the mesh: the rule has no effect"),
            );
        } else if r.meta.namespace != root_namespace
            && matched.iter().any(|s| s.namespace != r.meta.namespace)
        {
            findings.push(
                false,
                &file,
                r.host_position,
                "spec.host",
                format!("ignored for hosts outside namespace {}: Ward applies a DestinationRule from the host's own namespace or the root namespace ({root_namespace}) to every client", r.meta.namespace),
            );
        }
        for (i, (subset, at)) in r.subsets.iter().enumerate() {
            let selects_a_pod = matched.iter().any(|service| {
                service.backends.iter().any(|(ns, name)| {
                    by_name
                        .get(&(ns.as_str(), name.as_str()))
                        .is_some_and(|w| crate::model::selects(&subset.labels, &w.labels))
                })
            });
            if !matched.is_empty() && !selects_a_pod {
                findings.push(
                    false,
                    &file,
                    *at,
                    &format!("spec.subsets[{i}]"),
                    format!(
                        "subset `{}` ({}) selects no pod of {host}: requests routed to it get 503 (no healthy upstream)",
                        subset.name,
                        labels_text(&subset.labels)
                    ),
                );
            }
        }
        let earlier = merge_into
            .get(&(r.meta.namespace.clone(), host.clone()))
            .map(|&i| &mut rules[i]);
        match earlier {
            Some(first) => {
                let first_at = format!(
                    "DestinationRule {}/{} ({}:{})",
                    first.namespace, first.name, first.source.file, first.source.line
                );
                if r.policy != Default::default() {
                    findings.push(
                        false,
                        &file,
                        r.policy_position,
                        "spec.trafficPolicy",
                        format!("ignored: {first_at} also sets {host}'s traffic policy, and Istio keeps the first rule's when it merges rules for one host"),
                    );
                }
                for (i, (subset, at)) in r.subsets.into_iter().enumerate() {
                    if first.subset(&subset.name).is_some() {
                        findings.push(
                            false,
                            &file,
                            at,
                            &format!("spec.subsets[{i}]"),
                            format!(
                                "ignored: {first_at} already defines subset `{}` of {host}",
                                subset.name
                            ),
                        );
                    } else {
                        first.subsets.push(subset);
                    }
                }
                first.merged.push(source);
            }
            None => {
                merge_into.insert((r.meta.namespace.clone(), host.clone()), rules.len());
                rules.push(DestinationRule {
                    host,
                    name: r.meta.name,
                    namespace: r.meta.namespace,
                    policy: r.policy,
                    subsets: r.subsets.into_iter().map(|(s, _)| s).collect(),
                    merged: Vec::new(),
                    source,
                });
            }
        }
    }
    rules.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rules
}

/// `app=reviews, version=v1`.
fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "no labels".to_string();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// ServiceProfiles that name a Service of their own namespace (the only ones Ward applies),
/// with a warning for the others and for failure-accrual annotations they switch off.
fn resolve_service_profiles(
    specs: Vec<(String, ServiceProfileSpec)>,
    services: &[Service],
    findings: &mut Findings,
) -> Vec<ServiceProfile> {
    let mut profiles = Vec::new();
    for (file, p) in specs {
        let service = services
            .iter()
            .find(|s| crate::model::service_fqdn(s) == p.meta.name);
        match service {
            None => {
                findings.push(
                    false,
                    &file,
                    p.meta.name_position,
                    "metadata.name",
                    format!(
                        "names no Service in the mesh: a ServiceProfile is named after the service's FQDN, <name>.<namespace>.svc.{}; the profile has no effect",
                        crate::wellknown::CLUSTER_DOMAIN
                    ),
                );
                continue;
            }
            Some(s) if s.namespace != p.meta.namespace => {
                findings.push(
                    false,
                    &file,
                    p.meta.name_position,
                    "metadata.namespace",
                    format!(
                        "ignored: Ward applies a ServiceProfile from the service's own namespace ({}), not per-client overrides from another namespace",
                        s.namespace
                    ),
                );
                continue;
            }
            Some(s) => {
                if s.failure_accrual.is_some() {
                    findings.push(
                        false,
                        &s.source.file,
                        Position {
                            line: s.source.line,
                            column: 1,
                        },
                        &format!("metadata.annotations.{}", crate::linkerd::FAILURE_ACCRUAL),
                        format!(
                            "ignored while ServiceProfile {} ({file}:{}) exists: Linkerd turns failure accrual off for a service with a profile",
                            p.meta.name, p.meta.position.line
                        ),
                    );
                }
            }
        }
        profiles.push(ServiceProfile {
            name: p.meta.name,
            namespace: p.meta.namespace,
            routes: p.routes,
            retry_budget: p.retry_budget,
            source: SourceRef {
                file,
                line: p.meta.position.line,
            },
        });
    }
    profiles.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    profiles
}

/// VirtualServices with their hosts and destinations qualified. A destination or mirror
/// that is not a mesh service (or not one of its ports, or names a subset its
/// DestinationRule does not define) is an error: the route would send traffic nowhere.
/// Hosts that are not mesh services are warned and dropped; among the VirtualServices bound
/// to the mesh, the first (by namespace and name) for a host is the one applied, as Istio
/// merges none for sidecars.
fn resolve_virtual_services(
    specs: Vec<(String, VirtualServiceSpec)>,
    services: &[Service],
    profiles: &[ServiceProfile],
    destination_rules: &[DestinationRule],
    root_namespace: &str,
    findings: &mut Findings,
) -> Vec<VirtualService> {
    let services_by_fqdn: HashMap<String, &Service> = services
        .iter()
        .map(|s| (crate::model::service_fqdn(s), s))
        .collect();
    let by_fqdn = |fqdn: &str| services_by_fqdn.get(fqdn).copied();
    // The subsets a host's routes can name: its DestinationRule's, as the mesh picks it.
    let rules = crate::model::RuleIndex::new(destination_rules);
    let subsets_of = |service: &Service| -> Vec<&str> {
        let fqdn = crate::model::service_fqdn(service);
        rules
            .closest(destination_rules, &service.namespace, root_namespace, &fqdn)
            .map(|r| r.subsets.iter().map(|s| s.name.as_str()).collect())
            .unwrap_or_default()
    };
    let mut sorted = specs;
    sorted.sort_by(|(_, a), (_, b)| {
        (&a.meta.namespace, &a.meta.name).cmp(&(&b.meta.namespace, &b.meta.name))
    });
    let mut claimed: BTreeMap<String, String> = BTreeMap::new();
    let mut resolved = Vec::new();
    for (file, v) in sorted {
        let qualified_name = format!("{}/{}", v.meta.namespace, v.meta.name);
        let binds_mesh = v.gateways.iter().any(|g| g == MESH_GATEWAY);
        if !binds_mesh {
            findings.push(
                false,
                &file,
                v.meta.position,
                "spec.gateways",
                format!(
                    "bound only to {}: Ward does not run gateways yet, so these routes apply nowhere (add `mesh` to route the sidecars' traffic)",
                    v.gateways.join(", ")
                ),
            );
        }
        let mut hosts = Vec::new();
        for (i, (host, at)) in v.hosts.iter().enumerate() {
            let fqdn = qualify_host(host, &v.meta.namespace);
            let field = format!("spec.hosts[{i}]");
            if host.contains('*') || by_fqdn(&fqdn).is_none() {
                findings.push(
                    false,
                    &file,
                    *at,
                    &field,
                    format!("ignored: {fqdn} is not a service of the mesh; Ward routes mesh services only"),
                );
                continue;
            }
            if binds_mesh {
                if let Some(first) = claimed.get(&fqdn) {
                    findings.push(
                        false,
                        &file,
                        *at,
                        &field,
                        format!("ignored: VirtualService {first} already routes {fqdn}; Istio does not merge VirtualServices for one host either"),
                    );
                    continue;
                }
                if let Some(profile) = profiles.iter().find(|p| p.name == fqdn) {
                    findings.push(
                        false,
                        &file,
                        *at,
                        &field,
                        format!(
                            "routes {fqdn} instead of ServiceProfile {} ({}:{}), whose routes are ignored",
                            profile.name, profile.source.file, profile.source.line
                        ),
                    );
                }
                claimed.insert(fqdn.clone(), qualified_name.clone());
            }
            hosts.push(fqdn);
        }
        let mut http = v.http;
        let mut ok = true;
        for (route, positions) in http.iter_mut().zip(&v.destination_positions) {
            let targets = route
                .destinations
                .iter_mut()
                .map(|d| (&mut d.host, d.port, d.subset.as_deref()))
                .chain(
                    route
                        .mirrors
                        .iter_mut()
                        .map(|m| (&mut m.host, m.port, m.subset.as_deref())),
                );
            for ((host, port, subset), at) in targets.zip(positions) {
                *host = qualify_host(host, &v.meta.namespace);
                let host_field = format!("{}.host", at.path);
                let Some(service) = by_fqdn(host) else {
                    findings.push(
                        true,
                        &file,
                        at.host,
                        &host_field,
                        format!(
                            "{host} is not a service of the mesh: the route would send traffic nowhere"
                        ),
                    );
                    ok = false;
                    continue;
                };
                if let Some(port) = port.filter(|p| !service.ports.iter().any(|sp| sp.port == *p)) {
                    let ports: Vec<String> =
                        service.ports.iter().map(|p| p.port.to_string()).collect();
                    findings.push(
                        true,
                        &file,
                        at.host,
                        &host_field,
                        format!(
                            "{host} has no port {port}: its ports are {}",
                            ports.join(", ")
                        ),
                    );
                    ok = false;
                }
                if let Some(subset) = subset {
                    let known = subsets_of(service);
                    if !known.contains(&subset) {
                        let defined = if known.is_empty() {
                            "no DestinationRule for it defines subsets".to_string()
                        } else {
                            format!("its DestinationRule defines {}", known.join(", "))
                        };
                        findings.push(
                            true,
                            &file,
                            at.subset,
                            &format!("{}.subset", at.path),
                            format!("{host} has no subset `{subset}`: {defined}"),
                        );
                        ok = false;
                    }
                }
            }
        }
        if ok && !hosts.is_empty() {
            resolved.push(VirtualService {
                name: v.meta.name,
                namespace: v.meta.namespace,
                hosts,
                gateways: v.gateways,
                http,
                source: SourceRef {
                    file,
                    line: v.meta.position.line,
                },
            });
        }
    }
    resolved
}

/// Workloads by namespace and label, so matching a thousand Services against a thousand
/// Deployments is not a million label comparisons (the resolver runs on every config change).
struct WorkloadIndex<'w> {
    by_label: HashMap<(&'w str, &'w str, &'w str), Vec<&'w Workload>>,
    /// Deployments that decoded without errors, by (namespace, name).
    clean: HashSet<(&'w str, &'w str)>,
    /// Namespaces with a Deployment that had errors.
    unclean_namespaces: HashSet<&'w str>,
}

impl<'w> WorkloadIndex<'w> {
    fn new(workloads: &'w [Workload], deployments: &'w [(String, bool, DeploymentSpec)]) -> Self {
        let mut by_label: HashMap<_, Vec<&Workload>> = HashMap::new();
        for w in workloads {
            for (k, v) in &w.labels {
                by_label
                    .entry((w.namespace.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(w);
            }
        }
        let (clean, unclean): (Vec<_>, Vec<_>) = deployments.iter().partition(|(_, c, _)| *c);
        WorkloadIndex {
            by_label,
            clean: clean
                .iter()
                .map(|(_, _, d)| (d.meta.namespace.as_str(), d.meta.name.as_str()))
                .collect(),
            unclean_namespaces: unclean
                .iter()
                .map(|(_, _, d)| d.meta.namespace.as_str())
                .collect(),
        }
    }

    /// The workloads of `namespace` whose pod labels include all of `selector` (not empty),
    /// in the order of the workload list.
    fn selected(&self, namespace: &str, selector: &BTreeMap<String, String>) -> Vec<&'w Workload> {
        let Some((k, v)) = selector.iter().next() else {
            return Vec::new();
        };
        self.by_label
            .get(&(namespace, k.as_str(), v.as_str()))
            .map(|candidates| {
                candidates
                    .iter()
                    .copied()
                    .filter(|w| selector.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A Service with its backends and numeric target ports; None if it has errors (reported).
fn resolve_service(
    file: &str,
    s: &ServiceSpec,
    index: &WorkloadIndex,
    complete: bool,
    findings: &mut Findings,
) -> Option<Service> {
    if s.selector.is_empty() {
        // Reported while decoding.
        return None;
    }
    let backends = index.selected(&s.meta.namespace, &s.selector);
    if backends.is_empty() {
        let unclean_neighbour = index.unclean_namespaces.contains(s.meta.namespace.as_str());
        if complete && !unclean_neighbour {
            let selector: Vec<String> =
                s.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            findings.push(
                true,
                file,
                s.selector_position,
                "spec.selector",
                format!(
                    "Service {}/{}: selector {{{}}} matches no Deployment's pod template labels in namespace {}",
                    s.meta.namespace,
                    s.meta.name,
                    selector.join(", "),
                    s.meta.namespace
                ),
            );
        }
        return None;
    }
    // A backend with errors may be missing the very port looked for: stay quiet then.
    let check_ports = backends.iter().all(|w| {
        index
            .clean
            .contains(&(w.namespace.as_str(), w.name.as_str()))
    });
    let mut ports = Vec::new();
    let mut ok = true;
    for p in &s.ports {
        match target_port(p, &backends) {
            Ok((target, warning)) => {
                if let (Some(message), true) = (warning, check_ports) {
                    findings.push(false, file, p.target_position, &p.target_path, message);
                }
                ports.push(ServicePort {
                    name: p.name.clone(),
                    port: p.port,
                    target_port: target,
                    protocol: p.protocol.clone(),
                    app_protocol: p.app_protocol.clone(),
                });
            }
            Err(message) => {
                ok = false;
                if check_ports {
                    findings.push(true, file, p.target_position, &p.target_path, message);
                }
            }
        }
    }
    ok.then(|| Service {
        failure_accrual: s.failure_accrual,
        name: s.meta.name.clone(),
        namespace: s.meta.namespace.clone(),
        selector: s.selector.clone(),
        ports,
        backends: backends
            .iter()
            .map(|w| (w.namespace.clone(), w.name.clone()))
            .collect(),
        source: SourceRef {
            file: file.to_string(),
            line: s.meta.position.line,
        },
    })
}

/// The numeric target port of a Service port, with a warning if it is only accepted, or
/// the error.
fn target_port(
    p: &ServicePortSpec,
    backends: &[&Workload],
) -> Result<(u16, Option<String>), String> {
    let declared: Vec<(&str, &crate::model::ContainerPort)> = backends
        .iter()
        .flat_map(|w| {
            w.containers
                .iter()
                .flat_map(move |c| c.ports.iter().map(move |p| (w.name.as_str(), p)))
        })
        .collect();
    match &p.target_port {
        TargetPort::Name(name) => {
            let matches: BTreeMap<u16, &str> = declared
                .iter()
                .filter(|(_, cp)| cp.name.as_deref() == Some(name.as_str()))
                .map(|(workload, cp)| (cp.container_port, *workload))
                .collect();
            let mut numbers = matches.keys();
            match (numbers.next(), numbers.next()) {
                (Some(n), None) => Ok((*n, None)),
                (None, _) => Err(format!(
                    "no container of the selected workloads has a port named `{name}`"
                )),
                // Kubernetes resolves a name per pod; Ward gives a Service port one number.
                (Some(_), Some(_)) => {
                    let found: Vec<String> =
                        matches.iter().map(|(n, w)| format!("{n} in {w}")).collect();
                    Err(format!(
                        "port name `{name}` means different numbers in the selected workloads ({}); Ward needs one",
                        found.join(", ")
                    ))
                }
            }
        }
        TargetPort::Number(n) if declared.is_empty() => Ok((
            *n,
            Some(format!("targetPort {n}: no container declares it; the sidecar will accept on it and the app must listen there")),
        )),
        TargetPort::Number(n) if declared.iter().any(|(_, cp)| cp.container_port == *n) => {
            Ok((*n, None))
        }
        TargetPort::Number(n) => {
            let mut known: Vec<u16> = declared.iter().map(|(_, cp)| cp.container_port).collect();
            known.sort_unstable();
            known.dedup();
            let known: Vec<String> = known.iter().map(ToString::to_string).collect();
            Err(format!(
                "targetPort {n} is not exposed by any container of the selected workloads (they expose {})",
                known.join(", ")
            ))
        }
    }
}
