//! details (`details.rb`, Ruby WEBrick): `/details/<id>` is the one hard-coded book with the
//! id as Ruby's `Integer()` reads it, `/health`; anything under `/details` without a number is
//! a 400. The paths are WEBrick mounts, so they match whole leading path segments.

use std::future::Future;
use std::pin::Pin;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use super::{html_escape, percent_decode, AppError, HttpResponse, DETAILS};
use crate::apps::respond;

type ResponseFuture = Pin<Box<dyn Future<Output = HttpResponse> + Send>>;

/// `ENABLE_EXTERNAL_BOOK_SERVICE=true` makes the real app fetch the book from Google Books;
/// the stand-in has no such fetch, so it refuses the setting rather than answer differently.
pub(super) fn check_env(env: &[(String, String)]) -> Result<(), AppError> {
    match super::container_env(env, "ENABLE_EXTERNAL_BOOK_SERVICE") {
        Some(value) if value == "true" => Err(AppError::BadEnv {
            image: DETAILS,
            name: "ENABLE_EXTERNAL_BOOK_SERVICE",
            value: value.to_string(),
            problem: "(the Google Books lookup) is not supported by Ward's stand-in",
        }),
        _ => Ok(()),
    }
}

pub(super) fn handler(
) -> impl Fn(Request<Incoming>) -> ResponseFuture + Clone + Send + Sync + 'static {
    move |request| {
        let response = answer(&request);
        Box::pin(std::future::ready(response))
    }
}

fn answer(request: &Request<Incoming>) -> HttpResponse {
    let path = normalize(&percent_decode(request.uri().path()));
    let mounted = |mount: &str| {
        path.strip_prefix(mount)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    let (health, details) = (mounted("/health"), mounted("/details"));
    if !health && !details {
        return not_found(request, &path);
    }
    // WEBrick's proc handlers take GET, HEAD and POST.
    if !matches!(*request.method(), Method::GET | Method::HEAD | Method::POST) {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/html; charset=ISO-8859-1",
            format!(
                "<HTML><HEAD><TITLE>Method Not Allowed</TITLE></HEAD><BODY>\
                 <H1>Method Not Allowed</H1>unsupported method `{}'.</BODY></HTML>\n",
                html_escape(request.method().as_str())
            ),
        );
    }
    if health {
        return json(
            StatusCode::OK,
            r#"{"status":"Details is healthy"}"#.to_string(),
        );
    }
    // Ruby's `split('/')` drops trailing empty parts, so this is the last non-empty segment.
    let last = path.split('/').rfind(|s| !s.is_empty()).unwrap_or_default();
    match ruby_integer(last) {
        Some(id) => json(StatusCode::OK, book(id)),
        None => json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"please provide numeric product id"}"#.to_string(),
        ),
    }
}

/// The book as `get_book_details` returns it, in its key order.
pub(super) fn book(id: i128) -> String {
    format!(
        r#"{{"id":{id},"author":"William Shakespeare","year":1595,"type":"paperback","pages":200,"publisher":"PublisherA","language":"English","ISBN-10":"1234567890","ISBN-13":"123-1234567890"}}"#
    )
}

fn json(status: StatusCode, body: String) -> HttpResponse {
    respond(status, "application/json", body)
}

/// WEBrick collapses repeated slashes before matching mounts.
fn normalize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

fn not_found(request: &Request<Incoming>, path: &str) -> HttpResponse {
    let host = request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("details:9080");
    respond(
        StatusCode::NOT_FOUND,
        "text/html; charset=ISO-8859-1",
        format!(
            "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01//EN\">\n<HTML>\n  \
             <HEAD><TITLE>Not Found</TITLE></HEAD>\n  <BODY>\n    <H1>Not Found</H1>\n    \
             `{}' not found.\n    <HR>\n    <ADDRESS>\n     WEBrick at\n     {}\n    \
             </ADDRESS>\n  </BODY>\n</HTML>\n",
            html_escape(path),
            html_escape(host)
        ),
    )
}

/// Ruby's `Integer(string)`: surrounding whitespace, a sign, `0x`/`0b`/`0o`/`0d` or a leading
/// `0` (octal) prefix, single underscores between digits. Bignums past i128 are refused.
pub(super) fn ruby_integer(text: &str) -> Option<i128> {
    let text = text.trim_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = unsigned.to_ascii_lowercase();
    let (radix, digits) = if let Some(rest) = lower.strip_prefix("0x") {
        (16, rest)
    } else if let Some(rest) = lower.strip_prefix("0b") {
        (2, rest)
    } else if let Some(rest) = lower.strip_prefix("0o") {
        (8, rest)
    } else if let Some(rest) = lower.strip_prefix("0d") {
        (10, rest)
    } else if lower.len() > 1 && lower.starts_with('0') {
        // `017` is octal, and `0_17` too.
        (8, lower[1..].strip_prefix('_').unwrap_or(&lower[1..]))
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    let mut value: i128 = 0;
    for c in digits.chars().filter(|&c| c != '_') {
        let digit = c.to_digit(radix)?;
        value = value
            .checked_mul(i128::from(radix))?
            .checked_add(i128::from(digit))?;
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruby_integer_reads_like_ruby() {
        for (text, value) in [
            ("0", 0),
            ("42", 42),
            (" 42\n", 42),
            ("-7", -7),
            ("+7", 7),
            ("1_000", 1000),
            ("0x1f", 31),
            ("0X1F", 31),
            ("-0b101", -5),
            ("0o17", 15),
            ("017", 15),
            ("0d19", 19),
        ] {
            assert_eq!(ruby_integer(text), Some(value), "{text:?}");
        }
        for text in [
            "", "+", "-", "abc", "1e3", "08", "1__0", "_1", "1_", "0x", "12abc", "1.5", "details",
        ] {
            assert_eq!(ruby_integer(text), None, "{text:?}");
        }
    }

    #[test]
    fn paths_collapse_slashes() {
        assert_eq!(normalize("//details///1"), "/details/1");
    }
}
