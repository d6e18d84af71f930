//! Istio `networking.istio.io` VirtualService: HTTP routes for mesh services (matches,
//! destinations with subsets and weights, redirects, rewrites, direct responses, header
//! changes, faults, mirrors, CORS, retries, timeouts) and the gateways they are bound to.
//! What would change where traffic goes and Ward cannot do is refused (delegation), so a
//! route never sends traffic somewhere its author did not mean; the rest is warned.

use crate::decode::{integer, number, regex, Object};
use crate::diagnostic::Report;
use crate::kinds::{decode_meta, Meta};
use crate::model::{
    CorsPolicy, DirectResponse, FaultAbort, FaultDelay, FaultStatus, HeaderOperations, HeaderOps,
    HttpFault, HttpMatch, HttpMirror, HttpRedirect, HttpRetry, HttpRewrite, HttpRoute,
    RedirectPort, RouteDestination, StringMatch, MESH_GATEWAY, PER_MILLION,
};
use crate::names::Rule;
use crate::yaml::{Node, Position};

#[derive(Debug, Clone)]
pub struct VirtualServiceSpec {
    pub meta: Meta,
    /// As written, with where.
    pub hosts: Vec<(String, Position)>,
    /// Qualified (`mesh`, `<namespace>/<name>`); `mesh` when absent.
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
    /// Where each route's destinations (then mirrors) are written, for checks across
    /// documents.
    pub destination_positions: Vec<Vec<TargetAt>>,
}

/// A gateway reference as Istio qualifies it: `mesh`, `ns/name`, or `name` in the
/// VirtualService's namespace.
fn qualify_gateway(gateway: &str, namespace: &str) -> String {
    if gateway == MESH_GATEWAY || gateway.contains('/') {
        gateway.to_string()
    } else {
        format!("{namespace}/{gateway}")
    }
}

fn gateway_list(object: &Object, namespace: &str, report: &mut Report) -> Vec<String> {
    object
        .string_list("gateways", report)
        .iter()
        .map(|g| qualify_gateway(g, namespace))
        .collect()
}

pub fn decode_virtual_service(doc: &Object, report: &mut Report) -> Option<VirtualServiceSpec> {
    let meta = decode_meta(doc, true, Rule::Subdomain, report)?;
    let namespace = meta.namespace.clone();
    let mut service = VirtualServiceSpec {
        meta,
        hosts: Vec::new(),
        gateways: vec![MESH_GATEWAY.to_string()],
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
    if spec.has("gateways") {
        let gateways = gateway_list(&spec, &namespace, report);
        if !gateways.is_empty() {
            service.gateways = gateways;
        }
    }
    for (path, node) in spec.list("http", report) {
        if let Some((route, positions)) = decode_http_route(node, &path, &namespace, report) {
            service.http.push(route);
            service.destination_positions.push(positions);
        }
    }
    spec.ignore(
        &[
            (
                "tcp",
                "TCP routes are not supported yet; TCP traffic goes to the service",
            ),
            (
                "tls",
                "TLS routes are not supported yet; TLS traffic goes to the service",
            ),
            ("exportTo", "the routes apply to every client in the mesh"),
        ],
        report,
    );
    spec.finish(report);
    Some(service)
}

/// Where a destination (or mirror) is written: its `host` and `subset` (the host's position
/// when it has none), and its field path.
#[derive(Debug, Clone)]
pub struct TargetAt {
    pub host: Position,
    pub subset: Position,
    pub path: String,
}

type Positions = Vec<TargetAt>;

/// A percentage (`{value: 0-100}`) in millionths.
fn percentage(object: &Object, key: &str, report: &mut Report) -> Option<u32> {
    let p = object.object(key, report)?;
    let value = p
        .get("value")
        .and_then(|n| number(n, &p.field_path("value"), 0.0, 100.0, report))
        .unwrap_or(0.0);
    p.finish(report);
    Some((value * (PER_MILLION as f64 / 100.0)).round() as u32)
}

/// Istio's deprecated integer percentages (`percent`, `mirrorPercent`: 0-100), in millionths.
fn integer_percent(object: &Object, key: &str, report: &mut Report) -> Option<u32> {
    object
        .get(key)
        .and_then(|n| integer(n, &object.field_path(key), 0, 100, report))
        .map(|p| p as u32 * (PER_MILLION / 100))
}

/// Adds a mirror read from `mirror` or `mirrors[]`, with where it is written (`path`);
/// false when it could not be read.
fn add_mirror(
    route: &mut HttpRoute,
    positions: &mut Positions,
    destination: Option<DestinationRef>,
    path: String,
    per_million: u32,
) -> bool {
    let Some(destination) = destination else {
        return false;
    };
    positions.push(destination.target_at(path));
    route.mirrors.push(HttpMirror {
        host: destination.host,
        port: destination.port,
        subset: destination.subset,
        per_million,
    });
    true
}

fn decode_http_route(
    node: &Node,
    path: &str,
    namespace: &str,
    report: &mut Report,
) -> Option<(HttpRoute, Positions)> {
    let object = Object::of(node, path, report)?;
    let mut ok = true;
    if object.has("delegate") {
        object.get("delegate");
        report.error(
            object.position_of("delegate"),
            &object.field_path("delegate"),
            "Ward does not support delegation yet; write the delegate's routes into this VirtualService",
        );
        ok = false;
    }
    let mut route = HttpRoute::to(Vec::new());
    route.name = object.string("name", report);
    for (match_path, match_node) in object.list("match", report) {
        match decode_match(match_node, &match_path, namespace, report) {
            Some(m) => route.matches.push(m),
            None => ok = false,
        }
    }
    let mut positions = Vec::new();
    for (dest_path, dest_node) in object.list("route", report) {
        match decode_destination(dest_node, &dest_path, report) {
            Some((destination, at)) => {
                positions.push(at);
                route.destinations.push(destination);
            }
            None => ok = false,
        }
    }
    if let Some(redirect) = object.object("redirect", report) {
        route.redirect = decode_redirect(redirect, report);
        ok &= route.redirect.is_some();
    }
    if let Some(direct) = object.object("directResponse", report) {
        route.direct_response = decode_direct_response(direct, report);
        ok &= route.direct_response.is_some();
    }
    let actions = [
        !route.destinations.is_empty(),
        object.has("redirect"),
        object.has("directResponse"),
    ];
    match actions.iter().filter(|a| **a).count() {
        1 => {}
        // A delegating route has no action of its own (and is refused above).
        0 if object.has("delegate") => {}
        0 => {
            report.error(
                object.position,
                path,
                "a route needs one of `route`, `redirect` or `directResponse`",
            );
            ok = false;
        }
        _ => {
            report.error(
                object.position,
                path,
                "give only one of `route`, `redirect` or `directResponse`",
            );
            ok = false;
        }
    }
    let destinations = &mut route.destinations;
    if destinations.len() > 1 && destinations.iter().all(|d| d.weight == 0) {
        // Istio: with several destinations, weights are required to add up to 100.
        report.error(
            object.position_of("route"),
            &object.field_path("route"),
            "several destinations need weights (adding up to 100)",
        );
        ok = false;
    }
    if destinations.len() == 1 && destinations[0].weight == 0 {
        destinations[0].weight = 100;
    }
    if let Some(rewrite) = object.object("rewrite", report) {
        if object.has("redirect") {
            report.error(
                rewrite.position,
                &object.field_path("rewrite"),
                "a route cannot both redirect and rewrite",
            );
            ok = false;
        }
        route.rewrite = decode_rewrite(rewrite, report);
        ok &= route.rewrite.is_some();
    }
    route.timeout_ms = object.duration("timeout", report).filter(|ms| *ms > 0);
    route.retries = object.object("retries", report).map(|retries| {
        let attempts = retries
            .get("attempts")
            .and_then(|n| integer(n, &retries.field_path("attempts"), 0, 1000, report))
            .unwrap_or(2) as u32;
        let per_try_timeout_ms = retries.duration("perTryTimeout", report);
        let retry_on = retries.string("retryOn", report);
        retries.ignore(
            &[
                (
                    "retryRemoteLocalities",
                    "Ward's endpoints carry no locality yet",
                ),
                ("backoff", "Envoy's default backoff (25 ms base) applies"),
            ],
            report,
        );
        retries.finish(report);
        HttpRetry {
            attempts,
            per_try_timeout_ms,
            retry_on,
        }
    });
    if let Some(fault) = object.object("fault", report) {
        route.fault = decode_fault(fault, report);
        ok &= route.fault.is_some();
    }
    if let Some(node) = object.get("mirror") {
        let mirror_path = object.field_path("mirror");
        let per_million = percentage(&object, "mirrorPercentage", report)
            .or_else(|| integer_percent(&object, "mirrorPercent", report))
            .unwrap_or(PER_MILLION);
        let destination = decode_destination_ref(node, &mirror_path, report);
        ok &= add_mirror(
            &mut route,
            &mut positions,
            destination,
            mirror_path,
            per_million,
        );
    }
    for (mirror_path, mirror_node) in object.list("mirrors", report) {
        let Some(mirror) = Object::of(mirror_node, &mirror_path, report) else {
            ok = false;
            continue;
        };
        let per_million = percentage(&mirror, "percentage", report).unwrap_or(PER_MILLION);
        let destination_path = mirror.field_path("destination");
        let destination = mirror
            .required("destination", report)
            .and_then(|n| decode_destination_ref(n, &destination_path, report));
        ok &= add_mirror(
            &mut route,
            &mut positions,
            destination,
            destination_path,
            per_million,
        );
        mirror.finish(report);
    }
    if let Some(headers) = object.object("headers", report) {
        route.headers = decode_header_operations(headers, report);
    }
    if let Some(cors) = object.object("corsPolicy", report) {
        route.cors = decode_cors(cors, report);
        ok &= route.cors.is_some();
    }
    object.finish(report);
    ok.then_some((route, positions))
}

/// A Destination as written: `host`, `port.number`, `subset`, and where host and subset are.
struct DestinationRef {
    host: String,
    port: Option<u16>,
    subset: Option<String>,
    at: (Position, Position),
}

impl DestinationRef {
    /// Where this destination is written, under the field path `path`.
    fn target_at(&self, path: String) -> TargetAt {
        TargetAt {
            host: self.at.0,
            subset: self.at.1,
            path,
        }
    }
}

fn decode_destination_ref(node: &Node, path: &str, report: &mut Report) -> Option<DestinationRef> {
    let destination = Object::of(node, path, report)?;
    let host_position = destination.position_of("host");
    let subset_position = if destination.has("subset") {
        destination.position_of("subset")
    } else {
        host_position
    };
    let host = destination.required_string("host", report);
    let port = destination.object("port", report).and_then(|p| {
        let number = p
            .required("number", report)
            .and_then(|n| integer(n, &p.field_path("number"), 1, 65535, report));
        p.finish(report);
        number.map(|n| n as u16)
    });
    let subset = destination.string("subset", report);
    destination.finish(report);
    Some(DestinationRef {
        host: host?,
        port,
        subset,
        at: (host_position, subset_position),
    })
}

fn decode_redirect(redirect: Object, report: &mut Report) -> Option<HttpRedirect> {
    let mut ok = true;
    let code = redirect
        .get("redirectCode")
        .and_then(|n| integer(n, &redirect.field_path("redirectCode"), 300, 399, report))
        .unwrap_or(301) as u32;
    if !matches!(code, 301 | 302 | 303 | 307 | 308) {
        report.error(
            redirect.position_of("redirectCode"),
            &redirect.field_path("redirectCode"),
            format!("{code}: Envoy redirects with 301, 302, 303, 307 or 308"),
        );
        ok = false;
    }
    let mut port = redirect
        .get("port")
        .and_then(|n| integer(n, &redirect.field_path("port"), 1, 65535, report))
        .map(|p| RedirectPort::Number(p as u16));
    if let Some(node) = redirect.get("derivePort") {
        port = match node.text() {
            Some("FROM_PROTOCOL_DEFAULT") => Some(RedirectPort::FromProtocolDefault),
            Some("FROM_REQUEST_PORT") => Some(RedirectPort::FromRequestPort),
            other => {
                report.error(
                    node.position,
                    &redirect.field_path("derivePort"),
                    format!(
                        "unknown `{}`: expected FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT",
                        other.unwrap_or_default()
                    ),
                );
                ok = false;
                None
            }
        };
    }
    let result = HttpRedirect {
        uri: redirect.string("uri", report),
        authority: redirect.string("authority", report),
        scheme: redirect.string("scheme", report),
        port,
        code,
    };
    redirect.finish(report);
    ok.then_some(result)
}

fn decode_direct_response(direct: Object, report: &mut Report) -> Option<DirectResponse> {
    let status = direct
        .required("status", report)
        .and_then(|n| integer(n, &direct.field_path("status"), 200, 599, report))?
        as u32;
    let mut body = None;
    if let Some(b) = direct.object("body", report) {
        body = b.string("string", report);
        if let Some(n) = b.get("bytes") {
            report.error(
                n.position,
                &b.field_path("bytes"),
                "Ward takes the body as `string`; give the text itself",
            );
            b.finish(report);
            direct.finish(report);
            return None;
        }
        b.finish(report);
    }
    direct.finish(report);
    Some(DirectResponse { status, body })
}

fn decode_rewrite(rewrite: Object, report: &mut Report) -> Option<HttpRewrite> {
    let mut result = HttpRewrite {
        uri: rewrite.string("uri", report),
        authority: rewrite.string("authority", report),
        uri_regex: None,
    };
    let mut ok = true;
    if let Some(regex_rewrite) = rewrite.object("uriRegexRewrite", report) {
        let pattern = regex_rewrite
            .required("match", report)
            .and_then(|n| regex(n, &regex_rewrite.field_path("match"), report));
        let substitution = regex_rewrite.required_string("rewrite", report);
        regex_rewrite.finish(report);
        match (pattern, substitution) {
            (Some(p), Some(r)) => result.uri_regex = Some((p, r)),
            _ => ok = false,
        }
        if result.uri.is_some() {
            report.error(
                rewrite.position_of("uriRegexRewrite"),
                &rewrite.field_path("uriRegexRewrite"),
                "give `uri` or `uriRegexRewrite`, not both",
            );
            ok = false;
        }
    }
    rewrite.finish(report);
    ok.then_some(result)
}

/// gRPC status names, as Istio's `grpcStatus` takes them, to their codes.
fn grpc_code(name: &str) -> Option<u32> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    CODES
        .iter()
        .position(|c| *c == name)
        .map(|i| i as u32)
        .or_else(|| name.parse().ok().filter(|c| *c < 17))
}

fn decode_fault(fault: Object, report: &mut Report) -> Option<HttpFault> {
    let mut result = HttpFault::default();
    let mut ok = true;
    // Istio: without a percentage, a fault applies to no request.
    let share = |object: &Object, report: &mut Report| {
        let per_million = percentage(object, "percentage", report)
            .or_else(|| integer_percent(object, "percent", report));
        if per_million.is_none() {
            report.warn(
                object.position,
                &object.path,
                "no `percentage`: Istio injects this fault into no request; add `percentage: {value: 100}` for every request",
            );
        }
        per_million.unwrap_or(0)
    };
    if let Some(delay) = fault.object("delay", report) {
        let per_million = share(&delay, report);
        match delay.duration("fixedDelay", report) {
            Some(fixed_ms) => {
                result.delay = Some(FaultDelay {
                    fixed_ms,
                    per_million,
                })
            }
            None => {
                if !delay.has("fixedDelay") {
                    delay.missing("fixedDelay", report);
                }
                ok = false;
            }
        }
        delay.ignore(
            &[(
                "exponentialDelay",
                "Istio does not support it either; give fixedDelay",
            )],
            report,
        );
        delay.finish(report);
    }
    if let Some(abort) = fault.object("abort", report) {
        let per_million = share(&abort, report);
        let status = if let Some(n) = abort.get("httpStatus") {
            integer(n, &abort.field_path("httpStatus"), 200, 599, report)
                .map(|c| FaultStatus::Http(c as u32))
        } else if let Some(n) = abort.get("grpcStatus") {
            let name = n.text().unwrap_or_default();
            let code = grpc_code(name).map(FaultStatus::Grpc);
            if code.is_none() {
                report.error(
                    n.position,
                    &abort.field_path("grpcStatus"),
                    format!("`{name}` is not a gRPC status name (such as UNAVAILABLE)"),
                );
            }
            code
        } else {
            report.error(
                abort.position,
                &abort.path,
                "an abort needs `httpStatus` or `grpcStatus`",
            );
            None
        };
        match status {
            Some(status) => {
                result.abort = Some(FaultAbort {
                    status,
                    per_million,
                })
            }
            None => ok = false,
        }
        abort.ignore(
            &[(
                "http2Error",
                "Istio does not support it either; give httpStatus",
            )],
            report,
        );
        abort.finish(report);
    }
    fault.finish(report);
    ok.then_some(result)
}

fn header_ops(object: Object, report: &mut Report) -> HeaderOps {
    let pairs = |key: &str, report: &mut Report| -> Vec<(String, String)> {
        object
            .string_map(key, report)
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect()
    };
    let result = HeaderOps {
        set: pairs("set", report),
        add: pairs("add", report),
        remove: object
            .string_list("remove", report)
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    };
    object.finish(report);
    result
}

fn decode_header_operations(headers: Object, report: &mut Report) -> HeaderOperations {
    let mut result = HeaderOperations::default();
    if let Some(request) = headers.object("request", report) {
        result.request = header_ops(request, report);
    }
    if let Some(response) = headers.object("response", report) {
        result.response = header_ops(response, report);
    }
    headers.finish(report);
    result
}

fn decode_cors(cors: Object, report: &mut Report) -> Option<CorsPolicy> {
    let mut result = CorsPolicy::default();
    let mut ok = true;
    for (path, node) in cors.list("allowOrigins", report) {
        match string_match(node, &path, false, report) {
            Some(m) => result.allow_origins.push(m),
            None => ok = false,
        }
    }
    for origin in cors.string_list("allowOrigin", report) {
        // The deprecated form: exact origins, `*` for any.
        result.allow_origins.push(if origin == "*" {
            StringMatch::Prefix(String::new())
        } else {
            StringMatch::Exact(origin)
        });
    }
    result.allow_methods = cors.string_list("allowMethods", report);
    result.allow_headers = cors.string_list("allowHeaders", report);
    result.expose_headers = cors.string_list("exposeHeaders", report);
    result.max_age_seconds = cors.duration("maxAge", report).map(|ms| ms / 1000);
    if let Some(n) = cors.get("allowCredentials") {
        result.allow_credentials =
            crate::decode::boolean(n, &cors.field_path("allowCredentials"), report);
    }
    cors.ignore(
        &[(
            "unmatchedPreflights",
            "preflights from origins not allowed are forwarded, as Istio's default",
        )],
        report,
    );
    cors.finish(report);
    ok.then_some(result)
}

/// `{exact|prefix|regex: ...}`; with `presence`, `{}` matches any value (Istio's presence
/// match for headers and query parameters).
fn string_match(
    node: &Node,
    path: &str,
    presence: bool,
    report: &mut Report,
) -> Option<StringMatch> {
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
    let empty = object.keys().is_empty();
    object.finish(report);
    if !ok {
        return None;
    }
    if presence && empty {
        return Some(StringMatch::Present);
    }
    if found.len() != 1 {
        report.error(
            node.position,
            path,
            if presence {
                "needs exactly one of exact, prefix or regex (or `{}` for any value)"
            } else {
                "needs exactly one of exact, prefix or regex"
            },
        );
        return None;
    }
    found.pop()
}

/// `name: {exact|prefix|regex}` entries, names lowercased when they are headers.
fn named_matches(
    object: &Object,
    key: &str,
    lowercase: bool,
    report: &mut Report,
) -> Option<Vec<(String, StringMatch)>> {
    let mut result = Vec::new();
    let Some(entries) = object.object(key, report) else {
        return Some(result);
    };
    let mut ok = true;
    for name in entries.keys() {
        let Some(n) = entries.get(&name) else {
            continue;
        };
        match string_match(n, &entries.field_path(&name), true, report) {
            Some(m) if lowercase => result.push((name.to_ascii_lowercase(), m)),
            Some(m) => result.push((name, m)),
            None => ok = false,
        }
    }
    entries.finish(report);
    ok.then_some(result)
}

fn decode_match(
    node: &Node,
    path: &str,
    namespace: &str,
    report: &mut Report,
) -> Option<HttpMatch> {
    let object = Object::of(node, path, report)?;
    let mut ok = true;
    let mut result = HttpMatch::default();
    let mut single = |key: &str, report: &mut Report| -> Option<StringMatch> {
        let n = object.get(key)?;
        let m = string_match(n, &object.field_path(key), false, report);
        ok &= m.is_some();
        m
    };
    result.uri = single("uri", report);
    result.scheme = single("scheme", report);
    result.method = single("method", report);
    result.authority = single("authority", report);
    match named_matches(&object, "headers", true, report) {
        Some(headers) => result.headers = headers,
        None => ok = false,
    }
    match named_matches(&object, "withoutHeaders", true, report) {
        Some(headers) => result.without_headers = headers,
        None => ok = false,
    }
    match named_matches(&object, "queryParams", false, report) {
        Some(params) => result.query_params = params,
        None => ok = false,
    }
    if let Some(n) = object.get("ignoreUriCase") {
        result.ignore_uri_case =
            crate::decode::boolean(n, &object.field_path("ignoreUriCase"), report).unwrap_or(false);
    }
    if let Some(n) = object.get("port") {
        result.port = integer(n, &object.field_path("port"), 1, 65535, report).map(|p| p as u16);
        ok &= result.port.is_some();
    }
    result.source_labels = object.string_map("sourceLabels", report);
    result.source_namespace = object.string("sourceNamespace", report);
    result.gateways = gateway_list(&object, namespace, report);
    object.get("name");
    object.ignore(
        &[(
            "statPrefix",
            "Envoy's route statistics keep the route's name",
        )],
        report,
    );
    object.finish(report);
    ok.then_some(result)
}

/// A `route[]` entry, and where its destination is written.
fn decode_destination(
    node: &Node,
    path: &str,
    report: &mut Report,
) -> Option<(RouteDestination, TargetAt)> {
    let item = Object::of(node, path, report)?;
    let weight = item
        .get("weight")
        .and_then(|n| integer(n, &item.field_path("weight"), 0, 100, report))
        .unwrap_or(0) as u32;
    let destination_path = item.field_path("destination");
    let destination = item
        .required("destination", report)
        .and_then(|n| decode_destination_ref(n, &destination_path, report));
    let headers = item
        .object("headers", report)
        .map(|h| decode_header_operations(h, report))
        .unwrap_or_default();
    item.finish(report);
    let destination = destination?;
    let at = destination.target_at(destination_path);
    Some((
        RouteDestination {
            host: destination.host,
            port: destination.port,
            subset: destination.subset,
            weight,
            headers,
        },
        at,
    ))
}
