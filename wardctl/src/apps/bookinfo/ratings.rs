//! ratings (`ratings.js`, Node with httpdispatcher): GET `/ratings/<id>` answers Reviewer1 5
//! and Reviewer2 4 stars unless a POST stored other ratings for that id (in memory); `/health`.
//! The id is JavaScript's `parseInt` of the URL's last `/` part, query included, and output is
//! `JSON.stringify`'s. `SERVICE_VERSION` selects the image's failure modes (`v-faulty`,
//! `v-delayed`, `v-unavailable`, `v-unhealthy`); `v2` needs a database Ward does not run.

use std::collections::HashMap;
use std::fmt::Write;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use rand::Rng;

use super::{bare, AppError, HttpResponse, RATINGS};
use crate::apps::python_value::PyValue;
use crate::apps::respond;

/// `v-delayed`'s delay.
const DELAY: Duration = Duration::from_secs(7);
/// `v-unavailable` flips availability this often.
const UNAVAILABLE_PERIOD: Duration = Duration::from_secs(60);
/// `v-unhealthy` flips health (and availability) this often.
const UNHEALTHY_PERIOD: Duration = Duration::from_secs(900);
const MAX_POST: usize = 1 << 20;

/// ratings.js's behaviours by `SERVICE_VERSION`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Normal,
    /// Half of the GETs answer 503.
    Faulty,
    /// Half of the GETs wait 7 s.
    Delayed,
    /// Unavailable (503) every other minute.
    Unavailable,
    /// Unhealthy and unavailable every other 15 minutes.
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub(super) mode: Mode,
}

impl Settings {
    pub(super) fn from_env(env: &[(String, String)]) -> Result<Self, AppError> {
        let mode = match super::container_env(env, "SERVICE_VERSION") {
            Some("v-faulty") => Mode::Faulty,
            Some("v-delayed") => Mode::Delayed,
            Some("v-unavailable") => Mode::Unavailable,
            Some("v-unhealthy") => Mode::Unhealthy,
            Some(v2 @ "v2") => {
                return Err(AppError::BadEnv {
                    image: RATINGS,
                    name: "SERVICE_VERSION",
                    value: v2.to_string(),
                    problem: "(ratings from MongoDB or MySQL) is not supported by Ward's stand-in",
                })
            }
            _ => Mode::Normal,
        };
        Ok(Settings { mode })
    }
}

struct State {
    mode: Mode,
    started: Instant,
    /// POSTed ratings by id (`String(productId)`), as the JSON a GET then answers.
    posted: Mutex<HashMap<String, String>>,
}

impl State {
    /// `(healthy, unavailable)` now, from the flips since start like the real `setInterval`.
    fn health(&self) -> (bool, bool) {
        let flips = |period: Duration| self.started.elapsed().as_secs() / period.as_secs();
        match self.mode {
            Mode::Unavailable => (true, flips(UNAVAILABLE_PERIOD) % 2 == 1),
            Mode::Unhealthy => {
                let odd = flips(UNHEALTHY_PERIOD) % 2 == 1;
                (!odd, odd)
            }
            _ => (true, false),
        }
    }

    fn ratings(&self, id: f64) -> String {
        let stored = self
            .posted
            .lock()
            .expect("ratings lock")
            .get(&js_string(id))
            .cloned();
        stored.unwrap_or_else(|| {
            format!(
                r#"{{"id":{},"ratings":{{"Reviewer1":5,"Reviewer2":4}}}}"#,
                js_json_number(id)
            )
        })
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = HttpResponse> + Send>>;

pub(super) fn handler(
    settings: Settings,
) -> impl Fn(Request<Incoming>) -> ResponseFuture + Clone + Send + Sync + 'static {
    let state = Arc::new(State {
        mode: settings.mode,
        started: Instant::now(),
        posted: Mutex::default(),
    });
    move |request| {
        let state = state.clone();
        Box::pin(async move { handle(request, &state).await })
    }
}

fn json(status: StatusCode, body: impl Into<bytes::Bytes>) -> HttpResponse {
    respond(status, "application/json", body)
}

async fn handle(request: Request<Incoming>, state: &State) -> HttpResponse {
    let ratings_path = request.uri().path().starts_with("/ratings/");
    // `req.url.split('/').pop()`: the raw last part, query string and all.
    let url = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let id = js_parse_int(url.rsplit('/').next().unwrap_or_default());
    let bad_id = || {
        json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"please provide numeric product ID"}"#,
        )
    };
    match *request.method() {
        Method::POST if ratings_path => {
            let body = match Limited::new(request.into_body(), MAX_POST).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => return bare(StatusCode::PAYLOAD_TOO_LARGE),
            };
            if id.is_nan() {
                return bad_id();
            }
            let Ok(ratings) = serde_json::from_slice::<PyValue>(&body) else {
                return json(
                    StatusCode::BAD_REQUEST,
                    r#"{"error":"please provide valid ratings JSON"}"#,
                );
            };
            let mut answer = format!(r#"{{"id":{},"ratings":"#, js_json_number(id));
            write_js_json(&ratings, &mut answer);
            answer.push('}');
            state
                .posted
                .lock()
                .expect("ratings lock")
                .insert(js_string(id), answer.clone());
            json(StatusCode::OK, answer)
        }
        Method::GET if ratings_path => {
            if id.is_nan() {
                return bad_id();
            }
            let unavailable = || {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"error":"Service unavailable"}"#,
                )
            };
            match state.mode {
                Mode::Faulty if rand::rng().random_bool(0.5) => return unavailable(),
                Mode::Delayed if rand::rng().random_bool(0.5) => tokio::time::sleep(DELAY).await,
                Mode::Unavailable | Mode::Unhealthy if state.health().1 => return unavailable(),
                _ => {}
            }
            json(StatusCode::OK, state.ratings(id))
        }
        Method::GET if request.uri().path() == "/health" => {
            if state.health().0 {
                json(StatusCode::OK, r#"{"status":"Ratings is healthy"}"#)
            } else {
                json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    r#"{"status":"Ratings is not healthy"}"#,
                )
            }
        }
        // httpdispatcher's default: an empty 404 (HEAD included, no listener takes it).
        _ => bare(StatusCode::NOT_FOUND),
    }
}

/// JavaScript's `parseInt(text)` (no radix): leading whitespace, a sign, `0x` for hex, then
/// digits up to the first non-digit; NaN if there are none.
pub(super) fn js_parse_int(text: &str) -> f64 {
    let text = text.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    let (sign, text) = match text.as_bytes().first() {
        Some(b'-') => (-1.0, &text[1..]),
        Some(b'+') => (1.0, &text[1..]),
        _ => (1.0, text),
    };
    let (radix, text) = match text.get(..2) {
        Some("0x" | "0X") => (16, &text[2..]),
        _ => (10, text),
    };
    let end = text
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(text.len());
    let digits = &text[..end];
    if digits.is_empty() {
        return f64::NAN;
    }
    let magnitude = if radix == 10 {
        digits.parse::<f64>().unwrap_or(f64::NAN)
    } else {
        digits.chars().fold(0.0, |acc, c| {
            acc * 16.0 + f64::from(c.to_digit(16).expect("a hex digit"))
        })
    };
    sign * magnitude
}

/// `String(number)` for a finite number: shortest round-trip digits, exponent form from 1e21
/// and below 1e-6 (`1e+21`, `1.5e-7`), `-0` as `0`.
fn js_number(x: f64) -> String {
    if x == 0.0 {
        return "0".to_string();
    }
    if (1e-6..1e21).contains(&x.abs()) {
        return format!("{x}");
    }
    let exp = format!("{x:e}");
    match exp.split_once('e') {
        Some((mantissa, power)) if !power.starts_with('-') => format!("{mantissa}e+{power}"),
        _ => exp,
    }
}

/// `String(number)`, infinities included (an id past 1e308 is `Infinity`).
fn js_string(x: f64) -> String {
    match x {
        f64::INFINITY => "Infinity".to_string(),
        f64::NEG_INFINITY => "-Infinity".to_string(),
        x => js_number(x),
    }
}

/// A number in `JSON.stringify`: non-finite ones become `null`.
fn js_json_number(x: f64) -> String {
    if x.is_finite() {
        js_number(x)
    } else {
        "null".to_string()
    }
}

/// `JSON.stringify(JSON.parse(body))`: compact; an object lists its array-index keys first,
/// ascending, then the others in insertion order.
fn write_js_json(value: &PyValue, out: &mut String) {
    match value {
        PyValue::None => out.push_str("null"),
        PyValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        // JavaScript has one number type; the precision loss past 2^53 is JavaScript's too.
        PyValue::Int(i) => out.push_str(&js_json_number(*i as f64)),
        PyValue::Float(x) => out.push_str(&js_json_number(*x)),
        PyValue::Str(s) => out.push_str(&js_string_literal(s)),
        PyValue::List(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_js_json(item, out);
            }
            out.push(']');
        }
        PyValue::Dict(entries) => {
            let mut ordered: Vec<&(String, PyValue)> = entries.iter().collect();
            // Stable: non-index keys keep their insertion order.
            ordered.sort_by_key(|(key, _)| array_index(key).map_or((1, 0), |i| (0, i)));
            out.push('{');
            for (i, (key, value)) in ordered.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}:", js_string_literal(key));
                write_js_json(value, out);
            }
            out.push('}');
        }
    }
}

/// A key JavaScript treats as an array index: canonical decimal below 2^32 - 1.
fn array_index(key: &str) -> Option<u32> {
    if key.is_empty() || (key.len() > 1 && key.starts_with('0')) {
        return None;
    }
    if !key.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    key.parse::<u32>().ok().filter(|&i| i != u32::MAX)
}

/// `JSON.stringify` of a string: the same escapes as serde_json's.
fn js_string_literal(text: &str) -> String {
    serde_json::to_string(text).expect("a string serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_int_like_javascript() {
        for (text, value) in [
            ("0", 0.0),
            ("42", 42.0),
            ("42?x=1", 42.0),
            ("  7abc", 7.0),
            ("-3", -3.0),
            ("+3", 3.0),
            ("0x1A", 26.0),
            ("007", 7.0),
            ("1.9", 1.0),
        ] {
            assert_eq!(js_parse_int(text), value, "{text:?}");
        }
        for text in ["", "abc", "-", "0x", "%31", "?x"] {
            assert!(js_parse_int(text).is_nan(), "{text:?}");
        }
    }

    #[test]
    fn numbers_print_like_javascript() {
        assert_eq!(js_number(-0.0), "0");
        assert_eq!(js_number(5.0), "5");
        assert_eq!(js_number(4.5), "4.5");
        assert_eq!(js_number(1e20), "100000000000000000000");
        assert_eq!(js_number(1e21), "1e+21");
        assert_eq!(js_number(1.5e-7), "1.5e-7");
        assert_eq!(js_number(12345678901234567890.0), "12345678901234567000");
        assert_eq!(js_json_number(f64::INFINITY), "null");
        assert_eq!(js_string(f64::INFINITY), "Infinity");
    }

    #[test]
    fn stringify_orders_index_keys_first() {
        let value: PyValue =
            serde_json::from_str(r#"{"b": 1, "2": 2, "a": [1.0, "x\n"], "1": null, "01": true}"#)
                .unwrap();
        let mut out = String::new();
        write_js_json(&value, &mut out);
        assert_eq!(out, r#"{"1":null,"2":2,"b":1,"a":[1,"x\n"],"01":true}"#);
    }
}
