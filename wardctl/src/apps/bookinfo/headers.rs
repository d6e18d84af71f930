//! The request headers each Bookinfo service copies onto its outbound calls, so that the
//! sidecars can join the spans into one trace and route on `end-user`.
//!
//! productpage.py forwards a fixed list and lets OpenTelemetry's B3 propagator handle
//! `x-b3-*`: it reads the incoming B3 context (the `b3` single header first) and writes only
//! `x-b3-traceid` (32 hex digits), `x-b3-spanid` and `x-b3-sampled`, or nothing when the context
//! is invalid. `end-user` comes from the login session, not from the request. reviews
//! (LibertyRestEndpoint.java) copies its own list, B3 headers and `end-user` included, verbatim.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

/// productpage.py `getForwardHeaders`' `incoming_headers`.
const PRODUCTPAGE_FORWARDS: &[&str] = &[
    "x-request-id",
    "x-ot-span-context",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "traceparent",
    "tracestate",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "sw8",
    "user-agent",
    "cookie",
    "authorization",
    "jwt",
];

/// LibertyRestEndpoint.java `headers_to_propagate`.
const REVIEWS_FORWARDS: &[&str] = &[
    "x-request-id",
    "x-ot-span-context",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "traceparent",
    "tracestate",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "sw8",
    "end-user",
    "user-agent",
    "cookie",
    "authorization",
    "jwt",
];

/// What `requests` sends when productpage has no `User-Agent` to forward.
const REQUESTS_USER_AGENT: &str = "python-requests/2.32.3";

/// `requests` refuses a header value it cannot send; productpage then treats the call as
/// failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("header {name}: value cannot be sent")]
pub(super) struct Unsendable {
    pub(super) name: &'static str,
}

/// A header as the servers hand it to the apps: repeated lines joined with commas.
fn joined(headers: &HeaderMap, name: &str) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut out = first.as_bytes().to_vec();
    for value in values {
        out.push(b',');
        out.extend_from_slice(value.as_bytes());
    }
    HeaderValue::from_bytes(&out).ok()
}

/// The headers productpage sends to details, reviews and ratings. `session_user` is the
/// session's `user` entry: absent when not logged in, `Some(None)` when the login form had no
/// username (Flask stores `None`, which `requests` then drops).
pub(super) fn from_productpage(
    incoming: &HeaderMap,
    session_user: Option<Option<&str>>,
) -> Result<HeaderMap, Unsendable> {
    let mut out = HeaderMap::new();
    for (name, value) in b3_propagation(incoming) {
        out.insert(name, value);
    }
    if let Some(Some(user)) = session_user {
        out.insert("end-user", latin1_header_value(user, "end-user")?);
    }
    for name in PRODUCTPAGE_FORWARDS {
        if let Some(value) = joined(incoming, name) {
            out.insert(*name, value);
        }
    }
    // `requests`' session defaults; Accept-Encoding is left out because nothing here decodes
    // gzip (the services answer uncompressed anyway).
    if !out.contains_key("user-agent") {
        out.insert("user-agent", HeaderValue::from_static(REQUESTS_USER_AGENT));
    }
    out.insert("accept", HeaderValue::from_static("*/*"));
    Ok(out)
}

/// The headers reviews sends to ratings.
pub(super) fn from_reviews(incoming: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in REVIEWS_FORWARDS {
        if let Some(value) = joined(incoming, name) {
            out.insert(*name, value);
        }
    }
    // `request(MediaType.APPLICATION_JSON)`.
    out.insert("accept", HeaderValue::from_static("application/json"));
    out
}

/// A Python `str` header value as `http.client` sends it: Latin-1, and `requests`' rule that a
/// value has no leading whitespace and no line breaks.
fn latin1_header_value(text: &str, name: &'static str) -> Result<HeaderValue, Unsendable> {
    let unsendable = Unsendable { name };
    if text.starts_with(|c: char| c.is_whitespace()) {
        return Err(unsendable);
    }
    let bytes: Vec<u8> = text
        .chars()
        .map(|c| u8::try_from(u32::from(c)).map_err(|_| unsendable.clone()))
        .collect::<Result<_, _>>()?;
    HeaderValue::from_bytes(&bytes).map_err(|_| unsendable)
}

/// OpenTelemetry's `B3MultiFormat().extract()` then `.inject()` over the incoming headers.
fn b3_propagation(incoming: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let text = |name: &str| {
        joined(incoming, name)
            .and_then(|v| v.to_str().ok().map(str::to_string))
            .filter(|v| !v.is_empty())
    };
    let (trace_id, span_id, sampled, flags) = match text("b3") {
        Some(single) => {
            let fields: Vec<&str> = single.splitn(5, '-').collect();
            match fields.as_slice() {
                [trace, span] => (trace.to_string(), span.to_string(), "1".to_string(), None),
                [trace, span, sampled] | [trace, span, sampled, _] => (
                    trace.to_string(),
                    span.to_string(),
                    sampled.to_string(),
                    None,
                ),
                // One field is only a sampling decision, five are malformed: no context.
                _ => return Vec::new(),
            }
        }
        None => (
            text("x-b3-traceid").unwrap_or_default(),
            text("x-b3-spanid").unwrap_or_default(),
            text("x-b3-sampled").unwrap_or_else(|| "0".to_string()),
            text("x-b3-flags"),
        ),
    };
    let hex = |s: &str, lengths: &[usize]| {
        lengths.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    if !hex(&trace_id, &[16, 32]) || !hex(&span_id, &[16]) {
        return Vec::new();
    }
    let sampled =
        matches!(sampled.as_str(), "1" | "True" | "true" | "d") || flags.as_deref() == Some("1");
    let trace_id = format!("{:0>32}", trace_id.to_ascii_lowercase());
    let span_id = span_id.to_ascii_lowercase();
    let value = |s: String| HeaderValue::from_str(&s).expect("hex digits are a valid header");
    vec![
        (HeaderName::from_static("x-b3-traceid"), value(trace_id)),
        (HeaderName::from_static("x-b3-spanid"), value(span_id)),
        (
            HeaderName::from_static("x-b3-sampled"),
            HeaderValue::from_static(if sampled { "1" } else { "0" }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn get<'a>(map: &'a HeaderMap, name: &str) -> Option<&'a str> {
        map.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn b3_is_reinjected_like_opentelemetry() {
        let out = from_productpage(
            &headers(&[
                ("x-b3-traceid", "80F198EE56343BA8"),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
                ("x-b3-parentspanid", "0000000000000001"),
                ("x-b3-flags", "1"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(
            get(&out, "x-b3-traceid"),
            Some("000000000000000080f198ee56343ba8")
        );
        assert_eq!(get(&out, "x-b3-spanid"), Some("e457b5a2e4d86bd1"));
        assert_eq!(
            get(&out, "x-b3-sampled"),
            Some("1"),
            "flags 1 means sampled"
        );
        assert_eq!(get(&out, "x-b3-parentspanid"), None);
        assert_eq!(get(&out, "x-b3-flags"), None);
    }

    #[test]
    fn b3_unsampled_single_header_and_invalid() {
        let out = from_productpage(
            &headers(&[
                ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(get(&out, "x-b3-sampled"), Some("0"), "no decision is 0");

        let out = from_productpage(
            &headers(&[
                ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1"),
                ("x-b3-traceid", "1111111111111111"),
                ("x-b3-spanid", "2222222222222222"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(
            get(&out, "x-b3-traceid"),
            Some("80f198ee56343ba864fe8b2a57d3eff7"),
            "the single header wins"
        );
        assert_eq!(get(&out, "x-b3-sampled"), Some("1"), "deferred is recorded");
        assert_eq!(get(&out, "b3"), None, "b3 itself is not forwarded");

        for bad in [
            &[("x-b3-traceid", "xyz"), ("x-b3-spanid", "e457b5a2e4d86bd1")][..],
            &[("x-b3-traceid", "80f198ee56343ba8")][..],
            &[("b3", "0")][..],
        ] {
            let out = from_productpage(&headers(bad), None).unwrap();
            assert_eq!(get(&out, "x-b3-traceid"), None, "{bad:?}");
            assert_eq!(get(&out, "x-b3-sampled"), None, "{bad:?}");
        }
    }

    #[test]
    fn productpage_list_session_user_and_defaults() {
        let incoming = headers(&[
            ("x-request-id", "abc"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("end-user", "mallory"),
            ("x-forwarded-for", "10.0.0.1"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
        ]);
        let out = from_productpage(&incoming, Some(Some("jason"))).unwrap();
        assert_eq!(get(&out, "x-request-id"), Some("abc"));
        assert!(get(&out, "traceparent").is_some());
        assert_eq!(
            get(&out, "end-user"),
            Some("jason"),
            "from the session only"
        );
        assert_eq!(get(&out, "x-forwarded-for"), None);
        assert_eq!(get(&out, "cookie"), Some("a=1,b=2"));
        assert_eq!(get(&out, "user-agent"), Some(REQUESTS_USER_AGENT));

        let out = from_productpage(&incoming, None).unwrap();
        assert_eq!(get(&out, "end-user"), None, "not logged in");
        let out = from_productpage(&incoming, Some(None)).unwrap();
        assert_eq!(get(&out, "end-user"), None, "a None user is dropped");
        let out = from_productpage(&headers(&[("user-agent", "curl/8")]), None).unwrap();
        assert_eq!(get(&out, "user-agent"), Some("curl/8"));

        let out = from_productpage(&HeaderMap::new(), Some(Some("José"))).unwrap();
        assert_eq!(
            out.get("end-user").unwrap().as_bytes(),
            b"Jos\xe9",
            "Latin-1"
        );
        assert!(from_productpage(&HeaderMap::new(), Some(Some("名前"))).is_err());
        assert!(from_productpage(&HeaderMap::new(), Some(Some(" jason"))).is_err());
    }

    #[test]
    fn reviews_copies_b3_and_end_user_verbatim() {
        let incoming = headers(&[
            ("x-b3-traceid", "80F198EE56343BA8"),
            ("x-b3-parentspanid", "0000000000000001"),
            ("end-user", "jason"),
            ("x-forwarded-for", "10.0.0.1"),
        ]);
        let out = from_reviews(&incoming);
        assert_eq!(get(&out, "x-b3-traceid"), Some("80F198EE56343BA8"));
        assert_eq!(get(&out, "x-b3-parentspanid"), Some("0000000000000001"));
        assert_eq!(get(&out, "end-user"), Some("jason"));
        assert_eq!(get(&out, "x-forwarded-for"), None);
        assert_eq!(get(&out, "user-agent"), None);
    }
}
