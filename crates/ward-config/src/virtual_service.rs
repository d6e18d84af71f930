//! Istio `networking.istio.io` VirtualService: HTTP routes for mesh services (matches,
//! destinations and weights, retries, timeouts). What would change where or what traffic goes
//! and Ward cannot do is refused (rewrites, redirects, faults, subsets, unsupported matches),
//! so a route never sends traffic somewhere its author did not mean; the rest is warned.

use crate::decode::{integer, regex, Object};
use crate::diagnostic::Report;
use crate::kinds::{decode_meta, Meta};
use crate::model::{HttpMatch, HttpRetry, HttpRoute, RouteDestination, StringMatch};
use crate::names::Rule;
use crate::yaml::{Node, Position};

#[derive(Debug, Clone)]
pub struct VirtualServiceSpec {
    pub meta: Meta,
    /// As written, with where.
    pub hosts: Vec<(String, Position)>,
    pub http: Vec<HttpRoute>,
    /// Where each route's destinations are written, for checks across documents.
    pub destination_positions: Vec<Vec<(Position, String)>>,
}

pub fn decode_virtual_service(doc: &Object, report: &mut Report) -> Option<VirtualServiceSpec> {
    let meta = decode_meta(doc, true, Rule::Subdomain, report)?;
    let mut service = VirtualServiceSpec {
        meta,
        hosts: Vec::new(),
        http: Vec::new(),
        destination_positions: Vec::new(),
    };
    let Some(spec) = doc.object("spec", report) else {
        doc.missing("spec", report);
        return Some(service);
    };
    for (path, node) in spec.required_list("hosts", report) {
        if let Some(host) = crate::decode::string(node, &path, report) {
            service.hosts.push((host, node.position));
        }
    }
    if let Some(gateways) = spec.get("gateways") {
        let only_mesh = matches!(&gateways.value, crate::yaml::Value::Sequence(items)
            if items.iter().all(|g| g.text() == Some("mesh")));
        if !only_mesh {
            report.warn(
                gateways.position,
                "spec.gateways",
                "ignored: Ward has no gateways; the routes apply to the mesh's sidecars (`mesh`)",
            );
        }
    }
    for (path, node) in spec.list("http", report) {
        if let Some((route, positions)) = decode_http_route(node, &path, report) {
            service.http.push(route);
            service.destination_positions.push(positions);
        }
    }
    spec.ignore(
        &[
            (
                "tcp",
                "TCP routes are not supported; TCP traffic goes to the service",
            ),
            (
                "tls",
                "TLS routes are not supported; TLS traffic goes to the service",
            ),
            ("exportTo", "the routes apply to every client in the mesh"),
        ],
        report,
    );
    spec.finish(report);
    Some(service)
}

/// Fields of an HTTP route that change where or what traffic goes: refused, not ignored.
const REFUSED_ROUTE_FIELDS: &[(&str, &str)] = &[
    ("redirect", "redirects"),
    ("rewrite", "rewrites"),
    ("directResponse", "direct responses"),
    ("delegate", "delegation"),
    ("fault", "fault injection"),
];

type Positions = Vec<(Position, String)>;

fn decode_http_route(
    node: &Node,
    path: &str,
    report: &mut Report,
) -> Option<(HttpRoute, Positions)> {
    let route = Object::of(node, path, report)?;
    let mut ok = true;
    for (field, what) in REFUSED_ROUTE_FIELDS {
        if route.has(field) {
            route.get(field);
            report.error(
                route.position_of(field),
                &route.field_path(field),
                format!("Ward does not support {what} in VirtualService routes yet; remove it or route without it"),
            );
            ok = false;
        }
    }
    let name = route.string("name", report);
    let mut matches = Vec::new();
    for (match_path, match_node) in route.list("match", report) {
        match decode_match(match_node, &match_path, report) {
            Some(m) => matches.push(m),
            None => ok = false,
        }
    }
    let mut destinations = Vec::new();
    let mut positions = Vec::new();
    for (dest_path, dest_node) in route.required_list("route", report) {
        match decode_destination(dest_node, &dest_path, report) {
            Some((destination, at)) => {
                positions.push((at, format!("{dest_path}.destination.host")));
                destinations.push(destination);
            }
            None => ok = false,
        }
    }
    if destinations.len() > 1 && destinations.iter().all(|d| d.weight == 0) {
        // Istio: with several destinations, weights are required to add up to 100.
        report.error(
            route.position_of("route"),
            &route.field_path("route"),
            "several destinations need weights (adding up to 100)",
        );
        ok = false;
    }
    if destinations.len() == 1 && destinations[0].weight == 0 {
        destinations[0].weight = 100;
    }
    let timeout_ms = route.duration("timeout", report).filter(|ms| *ms > 0);
    let retries = route.object("retries", report).map(|retries| {
        let attempts = retries
            .get("attempts")
            .and_then(|n| integer(n, &retries.field_path("attempts"), 0, 1000, report))
            .unwrap_or(2) as u32;
        let per_try_timeout_ms = retries.duration("perTryTimeout", report);
        let retry_on = retries.string("retryOn", report);
        if retries.has("retryRemoteLocalities") {
            retries.get("retryRemoteLocalities");
        }
        retries.finish(report);
        HttpRetry {
            attempts,
            per_try_timeout_ms,
            retry_on,
        }
    });
    route.ignore(
        &[
            ("headers", "header manipulation is not supported"),
            ("corsPolicy", "CORS is not supported"),
            (
                "mirror",
                "mirroring is not supported; traffic goes to the route only",
            ),
            ("mirrorPercentage", "mirroring is not supported"),
            ("mirrors", "mirroring is not supported"),
        ],
        report,
    );
    route.finish(report);
    ok.then_some((
        HttpRoute {
            name,
            matches,
            destinations,
            timeout_ms,
            retries,
        },
        positions,
    ))
}

fn string_match(node: &Node, path: &str, report: &mut Report) -> Option<StringMatch> {
    let object = Object::of(node, path, report)?;
    let mut found = Vec::new();
    let mut ok = true;
    for key in ["exact", "prefix", "regex"] {
        let Some(n) = object.get(key) else {
            continue;
        };
        let path = object.field_path(key);
        let value = if key == "regex" {
            regex(n, &path, report)
        } else {
            crate::decode::string(n, &path, report)
        };
        match (key, value) {
            (_, None) => ok = false,
            ("exact", Some(v)) => found.push(StringMatch::Exact(v)),
            ("prefix", Some(v)) => found.push(StringMatch::Prefix(v)),
            (_, Some(v)) => found.push(StringMatch::Regex(v)),
        }
    }
    object.finish(report);
    if !ok {
        return None;
    }
    if found.len() != 1 {
        report.error(
            node.position,
            path,
            "needs exactly one of exact, prefix or regex",
        );
        return None;
    }
    found.pop()
}

/// Match conditions Ward cannot check: refused, since ignoring one would widen the match.
const REFUSED_MATCH_FIELDS: &[&str] = &[
    "scheme",
    "authority",
    "queryParams",
    "sourceLabels",
    "sourceNamespace",
    "gateways",
    "withoutHeaders",
    "statPrefix",
];

fn decode_match(node: &Node, path: &str, report: &mut Report) -> Option<HttpMatch> {
    let object = Object::of(node, path, report)?;
    let mut ok = true;
    let mut result = HttpMatch::default();
    if let Some(n) = object.get("uri") {
        result.uri = string_match(n, &object.field_path("uri"), report);
        ok &= result.uri.is_some();
    }
    if let Some(n) = object.get("method") {
        result.method = string_match(n, &object.field_path("method"), report);
        ok &= result.method.is_some();
    }
    if let Some(headers) = object.object("headers", report) {
        for key in headers.keys() {
            let Some(n) = headers.get(&key) else {
                continue;
            };
            match string_match(n, &headers.field_path(&key), report) {
                Some(m) => result.headers.push((key.to_ascii_lowercase(), m)),
                None => ok = false,
            }
        }
        headers.finish(report);
    }
    if let Some(n) = object.get("ignoreUriCase") {
        result.ignore_uri_case =
            crate::decode::boolean(n, &object.field_path("ignoreUriCase"), report).unwrap_or(false);
    }
    if let Some(n) = object.get("port") {
        result.port = integer(n, &object.field_path("port"), 1, 65535, report).map(|p| p as u16);
    }
    object.get("name");
    for field in REFUSED_MATCH_FIELDS {
        if object.has(field) {
            object.get(field);
            report.error(
                object.position_of(field),
                &object.field_path(field),
                format!("Ward cannot match on `{field}` yet; without it the route would take more requests than written, so it is refused"),
            );
            ok = false;
        }
    }
    object.finish(report);
    ok.then_some(result)
}

fn decode_destination(
    node: &Node,
    path: &str,
    report: &mut Report,
) -> Option<(RouteDestination, Position)> {
    let item = Object::of(node, path, report)?;
    let weight = item
        .get("weight")
        .and_then(|n| integer(n, &item.field_path("weight"), 0, 100, report))
        .unwrap_or(0) as u32;
    let destination = item.required("destination", report)?;
    let destination = Object::of(destination, &item.field_path("destination"), report)?;
    let host_position = destination.position_of("host");
    let host = destination.required_string("host", report);
    let port = destination.object("port", report).and_then(|p| {
        let number = p
            .required("number", report)
            .and_then(|n| integer(n, &p.field_path("number"), 1, 65535, report));
        p.finish(report);
        number.map(|n| n as u16)
    });
    let mut ok = true;
    if destination.has("subset") {
        destination.get("subset");
        report.error(
            destination.position_of("subset"),
            &destination.field_path("subset"),
            "Ward does not support DestinationRule subsets yet; route to the service as a whole",
        );
        ok = false;
    }
    destination.finish(report);
    item.ignore(
        &[("headers", "header manipulation is not supported")],
        report,
    );
    item.finish(report);
    let host = host?;
    ok.then_some((RouteDestination { host, port, weight }, host_position))
}
