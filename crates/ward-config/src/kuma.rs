//! Kuma's `kuma.io/v1alpha1` TrafficRoute: weighted splits between versions of a service,
//! selected by tags (seed 002, section 7.4). On Kubernetes Kuma names a service port
//! `<service>_<namespace>_svc_<port>` (the `kuma.io/service` tag) and every other tag of a
//! split is a pod label; Ward turns each route into what Istio would write for it, a
//! VirtualService on that port with one DestinationRule subset per tag set, so both dialects
//! meet one mechanism.

use std::collections::BTreeMap;

use crate::decode::{integer, Object};
use crate::diagnostic::Report;
use crate::istio::DestinationRuleSpec;
use crate::kinds::{decode_meta, Meta};
use crate::model::{
    HttpMatch, HttpRoute, RouteDestination, Service, Subset, TrafficPolicy, MESH_GATEWAY,
};
use crate::names::Rule;
use crate::resolve::Findings;
use crate::virtual_service::{TargetAt, VirtualServiceSpec};
use crate::yaml::{Position, Value};

pub const VERSIONS: &[&str] = &["kuma.io/v1alpha1"];

/// Kuma's tag naming a service port.
pub const SERVICE_TAG: &str = "kuma.io/service";

#[derive(Debug, Clone)]
pub struct TrafficRouteSpec {
    pub meta: Meta,
    /// `sources[].match`: the clients (any of them).
    pub sources: Vec<(BTreeMap<String, String>, Position)>,
    /// `destinations[].match`: the services routed.
    pub destinations: Vec<(BTreeMap<String, String>, Position)>,
    /// `conf.split` (or `conf.destination` as a split of one): weight, tags, where.
    pub split: Vec<(u32, BTreeMap<String, String>, Position)>,
}

fn tag_matches(
    object: &Object,
    key: &str,
    report: &mut Report,
) -> Vec<(BTreeMap<String, String>, Position)> {
    object
        .list(key, report)
        .into_iter()
        .filter_map(|(path, node)| {
            let item = Object::of(node, &path, report)?;
            // Messages point at the service tag, where the mistake usually is.
            let at = match item.get("match").map(|m| &m.value) {
                Some(Value::Mapping(entries)) => entries
                    .iter()
                    .find(|(k, _, _)| k == SERVICE_TAG)
                    .map_or(node.position, |(_, p, _)| *p),
                _ => node.position,
            };
            let tags = item.string_map("match", report);
            item.finish(report);
            Some((tags, at))
        })
        .collect()
}

pub fn decode_traffic_route(doc: &Object, report: &mut Report) -> Option<TrafficRouteSpec> {
    let meta = decode_meta(doc, false, Rule::Subdomain, report)?;
    // Every Kuma policy names its mesh; Ward runs one.
    if let Some(mesh) = doc.string("mesh", report) {
        if mesh != "default" {
            report.warn(
                doc.position_of("mesh"),
                "mesh",
                format!("Ward runs one mesh; the route applies to it, not to a mesh `{mesh}`"),
            );
        }
    }
    let mut route = TrafficRouteSpec {
        meta,
        sources: Vec::new(),
        destinations: Vec::new(),
        split: Vec::new(),
    };
    let Some(spec) = doc.object("spec", report) else {
        doc.missing("spec", report);
        return None;
    };
    route.sources = tag_matches(&spec, "sources", report);
    route.destinations = tag_matches(&spec, "destinations", report);
    if let Some(conf) = spec.object("conf", report) {
        for (path, node) in conf.list("split", report) {
            let Some(item) = Object::of(node, &path, report) else {
                continue;
            };
            let weight = item
                .required("weight", report)
                .and_then(|n| integer(n, &item.field_path("weight"), 0, u32::MAX as i64, report));
            let tags = item.string_map("destination", report);
            item.finish(report);
            if let Some(weight) = weight {
                route.split.push((weight as u32, tags, node.position));
            }
        }
        if conf.has("destination") {
            let at = conf.position_of("destination");
            let tags = conf.string_map("destination", report);
            route.split.push((1, tags, at));
        }
        conf.ignore(
            &[
                (
                    "loadBalancer",
                    "endpoints are balanced round robin (a DestinationRule sets another balancer)",
                ),
                (
                    "http",
                    "Ward does not match TrafficRoute HTTP routes yet; write a VirtualService for matches",
                ),
            ],
            report,
        );
        conf.finish(report);
    } else {
        spec.missing("conf", report);
    }
    spec.finish(report);
    Some(route)
}

/// `reviews_bookinfo_svc_9080` → (`reviews`, `bookinfo`, 9080).
pub fn parse_service_tag(tag: &str) -> Option<(&str, &str, u16)> {
    let mut parts = tag.rsplitn(4, '_');
    let port = parts.next()?.parse().ok()?;
    if parts.next()? != "svc" {
        return None;
    }
    let namespace = parts.next()?;
    let name = parts.next()?;
    Some((name, namespace, port))
}

/// The subset name Ward gives a set of pod tags: `version-v2`, `track-canary-version-v2`.
pub fn subset_name(labels: &BTreeMap<String, String>) -> String {
    let text: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{}-{v}", k.rsplit('/').next().unwrap_or(k)))
        .collect();
    let mut name: String = text
        .join("-")
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.truncate(63);
    name.trim_matches('-').to_string()
}

/// The Service port a `kuma.io/service` tag names, or what is wrong with it.
fn service_port<'s>(tag: &str, services: &'s [Service]) -> Result<(&'s Service, u16), String> {
    let (name, namespace, port) = parse_service_tag(tag).ok_or_else(|| {
        format!(
            "`{tag}` is not a Kubernetes service tag: Kuma writes <service>_<namespace>_svc_<port>"
        )
    })?;
    let service = services
        .iter()
        .find(|s| s.name == name && s.namespace == namespace)
        .ok_or_else(|| format!("`{tag}`: no Service {namespace}/{name} in the mesh"))?;
    if !service.ports.iter().any(|p| p.port == port) {
        return Err(format!(
            "`{tag}`: Service {namespace}/{name} has no port {port}"
        ));
    }
    Ok((service, port))
}

fn without_service_tag(tags: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    tags.iter()
        .filter(|(k, _)| k.as_str() != SERVICE_TAG)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The VirtualServices and DestinationRules (each with the file it came from) that stand
/// for TrafficRoutes.
type IstioEquivalent = (
    Vec<(String, VirtualServiceSpec)>,
    Vec<(String, DestinationRuleSpec)>,
);

/// TrafficRoutes as the VirtualServices and DestinationRule subsets Istio would need for
/// them. Kuma's default `route-all` (every source to every destination) routes as Ward does
/// without a route. A tag that names nothing is an error: the split would send traffic
/// nowhere.
pub(crate) fn to_istio(
    routes: Vec<(String, TrafficRouteSpec)>,
    services: &[Service],
    findings: &mut Findings,
) -> IstioEquivalent {
    let mut virtual_services = Vec::new();
    let mut subsets: BTreeMap<(String, String), (String, Position, Vec<Subset>)> = BTreeMap::new();
    for (file, route) in routes {
        let is_any = |tags: &BTreeMap<String, String>| {
            tags.get(SERVICE_TAG).is_none_or(|s| s == "*") && tags.len() <= 1
        };
        if route.destinations.iter().all(|(t, _)| is_any(t))
            && route.split.iter().all(|(_, t, _)| is_any(t))
        {
            continue;
        }
        for (index, (tags, at)) in route.destinations.iter().enumerate() {
            let field = format!("spec.destinations[{index}].match");
            let Some(tag) = tags.get(SERVICE_TAG) else {
                findings.push(
                    true,
                    &file,
                    *at,
                    &field,
                    format!("needs a `{SERVICE_TAG}` tag"),
                );
                continue;
            };
            let (service, port) = match service_port(tag, services) {
                Ok(found) => found,
                Err(message) => {
                    findings.push(true, &file, *at, &field, message);
                    continue;
                }
            };
            let mut matches = Vec::new();
            for (source_index, (source, at)) in route.sources.iter().enumerate() {
                let mut m = HttpMatch {
                    port: Some(port),
                    ..Default::default()
                };
                match source.get(SERVICE_TAG).map(String::as_str) {
                    None | Some("*") => {}
                    Some(client) => match service_port(client, services) {
                        // The clients behind that service: its pods.
                        Ok((client, _)) => {
                            m.source_labels = client.selector.clone();
                            m.source_namespace = Some(client.namespace.clone());
                        }
                        Err(message) => {
                            let field = format!("spec.sources[{source_index}].match");
                            findings.push(true, &file, *at, &field, message);
                            continue;
                        }
                    },
                }
                m.source_labels.extend(without_service_tag(source));
                matches.push(m);
            }
            if matches.is_empty() {
                matches.push(HttpMatch {
                    port: Some(port),
                    ..Default::default()
                });
            }
            let mut destinations = Vec::new();
            let mut positions = Vec::new();
            for (split_index, (weight, split, at)) in route.split.iter().enumerate() {
                let field = format!("spec.conf.split[{split_index}].destination");
                let target = match split.get(SERVICE_TAG).map(String::as_str) {
                    None | Some("*") => Ok((service, port)),
                    Some(tag) => service_port(tag, services),
                };
                let (target, target_port) = match target {
                    Ok(found) => found,
                    Err(message) => {
                        findings.push(true, &file, *at, &field, message);
                        continue;
                    }
                };
                let host = crate::model::service_fqdn(target);
                let labels = without_service_tag(split);
                let subset = (!labels.is_empty()).then(|| subset_name(&labels));
                if let Some(name) = &subset {
                    let entry = subsets
                        .entry((target.namespace.clone(), host.clone()))
                        .or_insert_with(|| (file.clone(), *at, Vec::new()));
                    if !entry.2.iter().any(|s| &s.name == name) {
                        entry.2.push(Subset {
                            name: name.clone(),
                            labels,
                            policy: TrafficPolicy::default(),
                        });
                    }
                }
                destinations.push(RouteDestination {
                    host,
                    port: Some(target_port),
                    subset,
                    weight: *weight,
                    headers: Default::default(),
                });
                positions.push(TargetAt {
                    host: *at,
                    subset: *at,
                    path: field,
                });
            }
            if destinations.is_empty() {
                continue;
            }
            if destinations.len() == 1 {
                destinations[0].weight = 100;
            }
            let mut http = HttpRoute::to(destinations);
            http.name = Some(route.meta.name.clone());
            http.matches = matches;
            let meta = Meta {
                name: format!("kuma-{}", route.meta.name),
                namespace: service.namespace.clone(),
                ..route.meta.clone()
            };
            virtual_services.push((
                file.clone(),
                VirtualServiceSpec {
                    meta,
                    hosts: vec![(crate::model::service_fqdn(service), *at)],
                    gateways: vec![MESH_GATEWAY.to_string()],
                    http: vec![http],
                    destination_positions: vec![positions],
                },
            ));
        }
    }
    let rules = subsets
        .into_iter()
        .map(|((namespace, host), (file, at, subsets))| {
            let name = format!("kuma-{}", host.split('.').next().unwrap_or_default());
            let rule = DestinationRuleSpec {
                meta: Meta {
                    name,
                    namespace,
                    position: at,
                    name_position: at,
                    annotations: BTreeMap::new(),
                    annotations_position: at,
                },
                host,
                host_position: at,
                policy: TrafficPolicy::default(),
                policy_position: at,
                subsets: subsets.into_iter().map(|s| (s, at)).collect(),
            };
            (file, rule)
        })
        .collect();
    (virtual_services, rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_tags_and_subset_names() {
        assert_eq!(
            parse_service_tag("reviews_bookinfo-kuma_svc_9080"),
            Some(("reviews", "bookinfo-kuma", 9080))
        );
        assert_eq!(parse_service_tag("reviews"), None);
        assert_eq!(parse_service_tag("*"), None);
        let labels = BTreeMap::from([("version".to_string(), "v2".to_string())]);
        assert_eq!(subset_name(&labels), "version-v2");
    }
}
