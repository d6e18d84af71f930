//! `kong/httpbin`, `kennethreitz/httpbin`, `mccutchen/go-httpbin`: the app of Istio's
//! security tasks (`curl httpbin.foo:8000/headers`). The endpoints those tasks read: the
//! request's headers as the app received them (what the sidecar added or removed is visible),
//! `/status/CODE`, `/ip`, `/get`, `/anything` and `/delay/SECONDS` (Istio's timeout tasks).

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Map, Value};

use super::{respond, HttpResponse};

/// `x-jwt-payload` → `X-Jwt-Payload`, as httpbin shows header names.
fn title_case(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn headers(request: &Request<Incoming>) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in request.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        let key = title_case(name.as_str());
        // httpbin joins repeated headers with commas.
        match out.get_mut(&key) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            _ => {
                out.insert(key, Value::String(value));
            }
        }
    }
    out
}

fn args(request: &Request<Incoming>) -> Map<String, Value> {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k.to_string(), Value::String(v.to_string()))
        })
        .collect()
}

fn pretty(status: StatusCode, value: Value) -> HttpResponse {
    let body = serde_json::to_string_pretty(&value).unwrap_or_default() + "\n";
    respond(status, "application/json", body)
}

/// httpbin's `/delay/N`: N seconds (fractions allowed), at most 10, before answering.
pub(super) fn delay_of(path: &str) -> Option<std::time::Duration> {
    let seconds: f64 = path.strip_prefix("/delay/")?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0)
        .then(|| std::time::Duration::from_secs_f64(seconds.min(10.0)))
}

pub(super) fn answer(request: &Request<Incoming>) -> HttpResponse {
    let path = request.uri().path();
    let url = format!(
        "http://{}{}",
        request
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default(),
        request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or(path)
    );
    // The app's peer is its sidecar; httpbin reports the first forwarded address if any.
    let origin = request
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .unwrap_or("127.0.0.1")
        .trim()
        .to_string();
    match path {
        "/headers" => pretty(StatusCode::OK, json!({ "headers": headers(request) })),
        "/ip" => pretty(StatusCode::OK, json!({ "origin": origin })),
        _ if delay_of(path).is_some() => pretty(
            StatusCode::OK,
            json!({ "args": args(request), "headers": headers(request), "origin": origin, "url": url }),
        ),
        "/get" => pretty(
            StatusCode::OK,
            json!({ "args": args(request), "headers": headers(request), "origin": origin, "url": url }),
        ),
        "/" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<!DOCTYPE html><title>httpbin</title><p>httpbin (Ward's stand-in)</p>\n",
        ),
        _ if path == "/anything" || path.starts_with("/anything/") => pretty(
            StatusCode::OK,
            json!({
                "args": args(request),
                "headers": headers(request),
                "method": request.method().as_str(),
                "origin": origin,
                "url": url,
            }),
        ),
        _ => match path.strip_prefix("/status/").map(str::parse::<u16>) {
            Some(Ok(code)) => match StatusCode::from_u16(code) {
                Ok(status) => respond(status, "text/html; charset=utf-8", ""),
                Err(_) => respond(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "Invalid status code\n",
                ),
            },
            Some(Err(_)) => respond(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "Invalid status code\n",
            ),
            None => respond(
                StatusCode::NOT_FOUND,
                "text/html; charset=utf-8",
                "<h1>Not Found</h1>\n",
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn delays_are_seconds_capped_at_ten() {
        use std::time::Duration;
        assert_eq!(super::delay_of("/delay/3"), Some(Duration::from_secs(3)));
        assert_eq!(
            super::delay_of("/delay/0.5"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(super::delay_of("/delay/60"), Some(Duration::from_secs(10)));
        assert_eq!(super::delay_of("/delay/x"), None);
        assert_eq!(super::delay_of("/headers"), None);
    }

    #[test]
    fn header_names_are_shown_title_cased() {
        assert_eq!(super::title_case("x-jwt-payload"), "X-Jwt-Payload");
        assert_eq!(super::title_case("host"), "Host");
    }
}
