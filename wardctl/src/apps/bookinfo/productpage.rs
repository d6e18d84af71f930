//! productpage (`productpage.py`, Flask under gunicorn): the book's page built from details
//! and reviews, the login that makes it forward `end-user`, and the JSON API.
//!
//! Calls upstream as the real one does: `http://details:9080/details/<id>` and
//! `http://reviews:9080/reviews/<id>` (host, port and domain from the same env variables),
//! 3 s to connect and 3 s per read, details once and reviews twice (`getProductReviews`' loop,
//! kept in the real app so that Istio's fault-injection task shows reviews unavailable after
//! 6 s), then an error text in place of the data. The login lives in a session cookie named
//! `session` like Flask's; Ward keeps the session's contents in memory (Flask signs them into
//! the cookie), so a login does not survive a restart of the stand-in.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, StatusCode};
use rand::Rng;
use tracing::debug;

use super::headers::{self, Unsendable};
use super::outbound::{Outbound, Timeouts};
use super::page::{self, Answer, Product};
use super::{container_env, percent_decode, service_url, AppError, HttpResponse, PRODUCTPAGE};
use crate::apps::python_value::PyValue;
use crate::apps::respond;

const TIMEOUT: Duration = Duration::from_secs(3);
/// `for _ in range(2)` in `getProductReviews`.
const REVIEWS_ATTEMPTS: usize = 2;
const SESSION_COOKIE: &str = "session";
/// Oldest logins are forgotten past this many, so the store stays bounded.
const MAX_SESSIONS: usize = 10_000;
const MAX_FORM: usize = 1 << 20;

const TITLE: &str = "The Comedy of Errors";
const DESCRIPTION_HTML: &str = "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">\
    Wikipedia Summary</a>: The Comedy of Errors is one of <b>William Shakespeare's</b> early \
    plays. It is his shortest and one of his most farcical comedies, with a major part of the \
    humour coming from slapstick and mistaken identity, in addition to puns and word play.";

const HTML: &str = "text/html; charset=utf-8";

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `http://details:9080` and the others, as productpage.py builds them.
    pub(super) details: String,
    pub(super) reviews: String,
    pub(super) ratings: String,
    /// `FLOOD_FACTOR`: extra, ignored reviews calls per page (the rate-limiting demo).
    pub(super) flood_factor: u32,
    pub(super) outbound: Outbound,
}

impl Settings {
    pub(super) fn from_env(env: &[(String, String)], outbound: Outbound) -> Result<Self, AppError> {
        let flood_factor = match container_env(env, "FLOOD_FACTOR") {
            None => 0,
            // `int()`; a negative factor floods nothing, like `flood_factor > 0` there.
            Some(value) => value
                .trim()
                .parse::<i64>()
                .map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX))
                .map_err(|_| AppError::BadEnv {
                    image: PRODUCTPAGE,
                    name: "FLOOD_FACTOR",
                    value: value.to_string(),
                    problem: "is not an integer",
                })?,
        };
        Ok(Settings {
            details: service_url(env, "DETAILS_HOSTNAME", "details", "DETAILS_SERVICE_PORT"),
            reviews: service_url(env, "REVIEWS_HOSTNAME", "reviews", "REVIEWS_SERVICE_PORT"),
            ratings: service_url(env, "RATINGS_HOSTNAME", "ratings", "RATINGS_SERVICE_PORT"),
            flood_factor,
            outbound,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Upstream {
    Details,
    Reviews,
    Ratings,
}

impl Upstream {
    fn name(self) -> &'static str {
        match self {
            Upstream::Details => "details",
            Upstream::Reviews => "reviews",
            Upstream::Ratings => "ratings",
        }
    }

    fn unavailable(self) -> &'static str {
        match self {
            Upstream::Details => "Sorry, product details are currently unavailable for this book.",
            Upstream::Reviews => "Sorry, product reviews are currently unavailable for this book.",
            Upstream::Ratings => "Sorry, product ratings are currently unavailable for this book.",
        }
    }
}

/// An upstream answered 200 with a body that is not JSON: `res.json()` raises outside the
/// app's `try`, and Flask answers 500.
struct NotJson;

/// Logged-in users by session cookie. The value is the session's `user`: `None` when the login
/// form had no username (Flask stores `None` then).
#[derive(Default)]
struct Sessions {
    users: HashMap<String, Option<String>>,
    order: VecDeque<String>,
}

impl Sessions {
    fn get(&self, token: &str) -> Option<Option<&str>> {
        self.users.get(token).map(Option::as_deref)
    }

    /// Stores `user` under `token`, or under a new token; returns the token.
    fn set(&mut self, token: Option<&str>, user: Option<String>) -> String {
        if let Some(token) = token.filter(|t| self.users.contains_key(*t)) {
            self.users.insert(token.to_string(), user);
            return token.to_string();
        }
        let token = format!("{:032x}", rand::rng().random::<u128>());
        self.users.insert(token.clone(), user);
        self.order.push_back(token.clone());
        while self.order.len() > MAX_SESSIONS {
            if let Some(old) = self.order.pop_front() {
                self.users.remove(&old);
            }
        }
        token
    }

    fn remove(&mut self, token: &str) -> bool {
        self.users.remove(token).is_some()
    }
}

/// `request_result` (prometheus_client Counter), by destination and status.
#[derive(Default)]
struct Metrics {
    results: Vec<((Upstream, u16), u64, f64)>,
}

impl Metrics {
    fn count(&mut self, upstream: Upstream, status: u16) {
        let key = (upstream, status);
        match self.results.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, count, _)) => *count += 1,
            None => {
                let created = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64();
                self.results.push((key, 1, created));
            }
        }
    }

    /// The Prometheus text of the counter (the real one also exports the Python runtime's).
    fn render(&self) -> String {
        let mut out = String::from(
            "# HELP request_result_total Results of requests\n\
             # TYPE request_result_total counter\n",
        );
        let labels = |(upstream, status): (Upstream, u16)| {
            format!(
                "destination_app=\"{}\",response_code=\"{status}\"",
                upstream.name()
            )
        };
        for (key, count, _) in &self.results {
            #[allow(clippy::cast_precision_loss)]
            let count = *count as f64;
            let _ = writeln!(
                out,
                "request_result_total{{{}}} {}",
                labels(*key),
                prometheus_float(count)
            );
        }
        if !self.results.is_empty() {
            out.push_str(
                "# HELP request_result_created Results of requests\n\
                 # TYPE request_result_created gauge\n",
            );
            for (key, _, created) in &self.results {
                let _ = writeln!(
                    out,
                    "request_result_created{{{}}} {}",
                    labels(*key),
                    prometheus_float(*created)
                );
            }
        }
        out
    }
}

/// prometheus_client's `floatToGoString`: Python's `repr`, large values in exponent form.
fn prometheus_float(x: f64) -> String {
    let repr = PyValue::Float(x).repr();
    match repr.find('.') {
        Some(dot) if x > 0.0 && dot > 6 && !repr.contains('e') => {
            let digits = format!("{}{}", &repr[1..dot], &repr[dot + 1..]);
            let mantissa = format!("{}.{digits}", &repr[..1]);
            let mantissa = mantissa.trim_end_matches(['0', '.']);
            format!("{mantissa}e+0{}", dot - 1)
        }
        _ => repr,
    }
}

struct State {
    settings: Settings,
    sessions: Mutex<Sessions>,
    metrics: Mutex<Metrics>,
}

type ResponseFuture = Pin<Box<dyn Future<Output = HttpResponse> + Send>>;

pub(super) fn handler(
    settings: Settings,
) -> impl Fn(Request<Incoming>) -> ResponseFuture + Clone + Send + Sync + 'static {
    let state = Arc::new(State {
        settings,
        sessions: Mutex::default(),
        metrics: Mutex::default(),
    });
    move |request| {
        let state = state.clone();
        Box::pin(async move { state.handle(request).await })
    }
}

/// The routes, as Werkzeug matches them on the decoded path.
enum Route {
    Index,
    Health,
    Login,
    Logout,
    ProductPage,
    Products,
    Product(String),
    ProductReviews(String),
    ProductRatings(String),
    Metrics,
}

impl Route {
    fn of(path: &str) -> Option<Route> {
        Some(match path {
            "/" | "/index.html" => Route::Index,
            "/health" => Route::Health,
            "/login" => Route::Login,
            "/logout" => Route::Logout,
            "/productpage" => Route::ProductPage,
            "/api/v1/products" => Route::Products,
            "/metrics" => Route::Metrics,
            _ => {
                let rest = path.strip_prefix("/api/v1/products/")?;
                let (id, tail) = rest.split_once('/').unwrap_or((rest, ""));
                if id.is_empty() {
                    return None;
                }
                let id = id.to_string();
                match tail {
                    "" if !rest.contains('/') => Route::Product(id),
                    "reviews" => Route::ProductReviews(id),
                    "ratings" => Route::ProductRatings(id),
                    _ => return None,
                }
            }
        })
    }

    fn methods(&self) -> &'static [Method] {
        match self {
            Route::Login => &[Method::POST],
            _ => &[Method::GET, Method::HEAD],
        }
    }

    fn allow(&self) -> &'static str {
        match self {
            Route::Login => "OPTIONS, POST",
            _ => "GET, HEAD, OPTIONS",
        }
    }

    /// Whether the view reads the session, so that Flask adds `Vary: Cookie`.
    fn uses_session(&self) -> bool {
        matches!(
            self,
            Route::Login
                | Route::Logout
                | Route::ProductPage
                | Route::Product(_)
                | Route::ProductReviews(_)
                | Route::ProductRatings(_)
        )
    }
}

fn html(status: StatusCode, body: impl Into<bytes::Bytes>) -> HttpResponse {
    respond(status, HTML, body)
}

fn json(status: u16, body: String) -> HttpResponse {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    respond(status, "application/json", body)
}

fn not_found() -> HttpResponse {
    html(
        StatusCode::NOT_FOUND,
        page::werkzeug_error(
            404,
            "Not Found",
            "The requested URL was not found on the server. If you entered the URL manually \
             please check your spelling and try again.",
        ),
    )
}

fn internal_error() -> HttpResponse {
    html(
        StatusCode::INTERNAL_SERVER_ERROR,
        page::werkzeug_error(
            500,
            "Internal Server Error",
            "The server encountered an internal error and was unable to complete your request. \
             Either the server is overloaded or there is an error in the application.",
        ),
    )
}

fn header(response: &mut HttpResponse, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().append(name, value);
    }
}

/// The `session` cookie's value, if the request has one (the first, as Werkzeug reads it).
fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name.trim() == SESSION_COOKIE).then(|| value.trim().trim_matches('"').to_string())
        })
}

/// A field of an `application/x-www-form-urlencoded` text.
fn form_field(text: &str, name: &str) -> Option<String> {
    text.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| percent_decode(&s.replace('+', " "));
        (decode(key) == name).then(|| decode(value))
    })
}

/// The product id as `requests` puts it into the URL: up to a `#`, unsafe bytes escaped.
fn url_segment(id: &str) -> String {
    let id = id.split('#').next().unwrap_or_default();
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~!#$%&'()*+,/:;=?@[]".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn products() -> PyValue {
    PyValue::List(vec![PyValue::Dict(vec![
        ("id".into(), PyValue::Int(0)),
        ("title".into(), PyValue::Str(TITLE.into())),
        (
            "descriptionHtml".into(),
            PyValue::Str(DESCRIPTION_HTML.into()),
        ),
    ])])
}

/// productpage.py's service dict (its top level names details' address, as there) for the
/// index's table.
fn service_tree(settings: &Settings) -> PyValue {
    let node = |name: &str, endpoint: &str, children: Vec<PyValue>| {
        PyValue::Dict(vec![
            ("name".into(), PyValue::Str(name.into())),
            ("endpoint".into(), PyValue::Str(endpoint.into())),
            ("children".into(), PyValue::List(children)),
        ])
    };
    let details = node(&settings.details, "details", vec![]);
    let ratings = node(&settings.ratings, "ratings", vec![]);
    let reviews = node(&settings.reviews, "reviews", vec![ratings]);
    node(&settings.details, "details", vec![details, reviews])
}

impl State {
    async fn handle(&self, request: Request<Incoming>) -> HttpResponse {
        let path = percent_decode(request.uri().path());
        let Some(route) = Route::of(&path) else {
            return not_found();
        };
        let method = request.method().clone();
        let mut response = if method == Method::OPTIONS {
            html(StatusCode::OK, "")
        } else if !route.methods().contains(&method) {
            html(
                StatusCode::METHOD_NOT_ALLOWED,
                page::werkzeug_error(
                    405,
                    "Method Not Allowed",
                    "The method is not allowed for the requested URL.",
                ),
            )
        } else {
            self.route(&route, request).await
        };
        if method == Method::OPTIONS || response.status() == StatusCode::METHOD_NOT_ALLOWED {
            header(&mut response, "allow", route.allow());
        } else if route.uses_session() {
            header(&mut response, "vary", "Cookie");
        }
        response
    }

    async fn route(&self, route: &Route, request: Request<Incoming>) -> HttpResponse {
        match route {
            Route::Index => html(
                StatusCode::OK,
                page::index(&page::json2html(&service_tree(&self.settings))),
            ),
            Route::Health => html(StatusCode::OK, "Product page is healthy"),
            Route::Login => self.login(request).await,
            Route::Logout => self.logout(request.headers()),
            Route::ProductPage => self.front(request.headers()).await,
            Route::Products => respond(
                StatusCode::OK,
                "application/json",
                products().to_json_dumps(),
            ),
            Route::Product(id) => self.api(Upstream::Details, id, request.headers()).await,
            Route::ProductReviews(id) => self.api(Upstream::Reviews, id, request.headers()).await,
            Route::ProductRatings(id) => self.api(Upstream::Ratings, id, request.headers()).await,
            Route::Metrics => html(
                StatusCode::OK,
                self.metrics.lock().expect("metrics lock").render(),
            ),
        }
    }

    /// The session's `user` entry for this request (see [`Sessions`]).
    fn session_user(&self, headers: &HeaderMap) -> Option<Option<String>> {
        let token = session_token(headers)?;
        let sessions = self.sessions.lock().expect("sessions lock");
        sessions.get(&token).map(|user| user.map(str::to_string))
    }

    fn forward_headers(&self, incoming: &HeaderMap) -> Result<HeaderMap, Unsendable> {
        let user = self.session_user(incoming);
        headers::from_productpage(incoming, user.as_ref().map(Option::as_deref))
    }

    /// `/productpage`.
    async fn front(&self, incoming: &HeaderMap) -> HttpResponse {
        let forward = self.forward_headers(incoming);
        let user = self.session_user(incoming).flatten().unwrap_or_default();
        let Ok(details) = self.fetch(Upstream::Details, "0", &forward).await else {
            return internal_error();
        };
        for _ in 0..self.settings.flood_factor {
            // The rate-limiting demo's extra calls, one after another as asyncio runs them.
            let _ = self.fetch(Upstream::Reviews, "0", &forward).await;
        }
        let Ok(reviews) = self.fetch(Upstream::Reviews, "0", &forward).await else {
            return internal_error();
        };
        let product = Product {
            title: TITLE,
            description_html: DESCRIPTION_HTML,
        };
        match page::product_page(&product, &user, &details, &reviews) {
            Ok(body) => html(StatusCode::OK, body),
            Err(e) => {
                debug!(error = %e, "product page not rendered");
                internal_error()
            }
        }
    }

    /// `/api/v1/products/<id>[/reviews|/ratings]`: the upstream's JSON, re-encoded by Python.
    async fn api(&self, upstream: Upstream, id: &str, incoming: &HeaderMap) -> HttpResponse {
        let forward = self.forward_headers(incoming);
        match self.fetch(upstream, &url_segment(id), &forward).await {
            Ok(answer) => json(answer.status, answer.body.to_json_dumps()),
            Err(NotJson) => internal_error(),
        }
    }

    /// `getProductDetails`, `getProductReviews`, `getProductRatings`.
    async fn fetch(
        &self,
        upstream: Upstream,
        id: &str,
        forward: &Result<HeaderMap, Unsendable>,
    ) -> Result<Answer, NotJson> {
        let base = match upstream {
            Upstream::Details => &self.settings.details,
            Upstream::Reviews => &self.settings.reviews,
            Upstream::Ratings => &self.settings.ratings,
        };
        let url = format!("{base}/{}/{id}", upstream.name());
        let attempts = if upstream == Upstream::Reviews {
            REVIEWS_ATTEMPTS
        } else {
            1
        };
        let mut last_status = None;
        for _ in 0..attempts {
            let fetched = match forward {
                Ok(headers) => self
                    .settings
                    .outbound
                    .get(&url, headers, Timeouts::both(TIMEOUT))
                    .await
                    .map_err(|e| debug!(error = %e, "upstream call failed"))
                    .ok(),
                Err(e) => {
                    debug!(error = %e, "upstream call not sent");
                    None
                }
            };
            match fetched {
                Some(fetched) if fetched.status == StatusCode::OK => {
                    self.count(upstream, 200);
                    let body =
                        serde_json::from_slice::<PyValue>(&fetched.body).map_err(|_| NotJson)?;
                    return Ok(Answer { status: 200, body });
                }
                Some(fetched) => last_status = Some(fetched.status.as_u16()),
                None => last_status = None,
            }
        }
        let status = last_status.unwrap_or(500);
        self.count(upstream, status);
        Ok(Answer {
            status,
            body: PyValue::Dict(vec![(
                "error".into(),
                PyValue::Str(upstream.unavailable().into()),
            )]),
        })
    }

    fn count(&self, upstream: Upstream, status: u16) {
        self.metrics
            .lock()
            .expect("metrics lock")
            .count(upstream, status);
    }

    /// `POST /login`: `username` from the query or the form (the password is not looked at),
    /// stored in the session, then back to where the form was (`Referer`).
    async fn login(&self, request: Request<Incoming>) -> HttpResponse {
        let query_user = request
            .uri()
            .query()
            .and_then(|query| form_field(query, "username"));
        let is_form = request
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/x-www-form-urlencoded")
            });
        let referer = request
            .headers()
            .get(hyper::header::REFERER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let token = session_token(request.headers());
        let body = match Limited::new(request.into_body(), MAX_FORM).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return html(StatusCode::PAYLOAD_TOO_LARGE, ""),
        };
        let user = query_user.or_else(|| {
            is_form
                .then(|| form_field(&String::from_utf8_lossy(&body), "username"))
                .flatten()
        });
        let token = self
            .sessions
            .lock()
            .expect("sessions lock")
            .set(token.as_deref(), user);
        // Without a Referer the real app sends `Location: None`; the page is the sensible place.
        let mut response = redirect(referer.as_deref().unwrap_or("/productpage"));
        header(
            &mut response,
            "set-cookie",
            &format!("{SESSION_COOKIE}={token}; HttpOnly; Path=/"),
        );
        response
    }

    /// `GET /logout`: forgets the user, then back to `Referer`.
    fn logout(&self, headers: &HeaderMap) -> HttpResponse {
        let referer = headers
            .get(hyper::header::REFERER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("/productpage");
        let mut response = redirect(referer);
        let had_user = session_token(headers)
            .is_some_and(|token| self.sessions.lock().expect("sessions lock").remove(&token));
        // Flask deletes the cookie once the session is empty, and only if it changed.
        if had_user {
            header(
                &mut response,
                "set-cookie",
                &format!(
                    "{SESSION_COOKIE}=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; \
                     HttpOnly; Path=/"
                ),
            );
        }
        response
    }
}

fn redirect(location: &str) -> HttpResponse {
    let mut response = html(StatusCode::FOUND, page::redirect_page(location));
    header(&mut response, "location", location);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_env() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let settings = Settings::from_env(&[], Outbound::default()).unwrap();
        assert_eq!(settings.details, "http://details:9080");
        assert_eq!(settings.reviews, "http://reviews:9080");
        assert_eq!(settings.ratings, "http://ratings:9080");
        assert_eq!(settings.flood_factor, 0);
        let settings = Settings::from_env(
            &env(&[
                ("SERVICES_DOMAIN", "bookinfo.svc.cluster.local"),
                ("DETAILS_HOSTNAME", "details-v2"),
                ("REVIEWS_SERVICE_PORT", "9090"),
                ("FLOOD_FACTOR", "3"),
            ]),
            Outbound::default(),
        )
        .unwrap();
        assert_eq!(
            settings.details,
            "http://details-v2.bookinfo.svc.cluster.local:9080"
        );
        assert_eq!(
            settings.reviews,
            "http://reviews.bookinfo.svc.cluster.local:9090"
        );
        assert_eq!(settings.flood_factor, 3);
        assert!(matches!(
            Settings::from_env(&env(&[("FLOOD_FACTOR", "many")]), Outbound::default()),
            Err(AppError::BadEnv {
                name: "FLOOD_FACTOR",
                ..
            })
        ));
    }

    #[test]
    fn routes_match_like_werkzeug() {
        assert!(matches!(Route::of("/"), Some(Route::Index)));
        assert!(matches!(Route::of("/index.html"), Some(Route::Index)));
        assert!(matches!(Route::of("/api/v1/products/0"), Some(Route::Product(id)) if id == "0"));
        assert!(matches!(
            Route::of("/api/v1/products/7/reviews"),
            Some(Route::ProductReviews(id)) if id == "7"
        ));
        assert!(matches!(
            Route::of("/api/v1/products/7/ratings"),
            Some(Route::ProductRatings(_))
        ));
        for path in [
            "/productpage/",
            "/api/v1/products/",
            "/api/v1/products/0/",
            "/api/v1/products/0/other",
            "/static/tailwind/tailwind.css",
        ] {
            assert!(Route::of(path).is_none(), "{path}");
        }
    }

    #[test]
    fn dumps_like_python() {
        assert_eq!(
            products().to_json_dumps(),
            format!(
                r#"[{{"id": 0, "title": "The Comedy of Errors", "descriptionHtml": "{}"}}]"#,
                DESCRIPTION_HTML.replace('"', "\\\"")
            )
        );
        let value: PyValue =
            serde_json::from_str(r#"{"z": 1, "a": [true, null, 1.5, "é"]}"#).unwrap();
        assert_eq!(
            value.to_json_dumps(),
            r#"{"z": 1, "a": [true, null, 1.5, "\u00e9"]}"#
        );
    }

    #[test]
    fn form_cookie_and_url_helpers() {
        assert_eq!(
            form_field("username=jason&passwd=x", "username").as_deref(),
            Some("jason")
        );
        assert_eq!(
            form_field("passwd=x&username=J%C3%A9+S", "username").as_deref(),
            Some("Jé S")
        );
        assert_eq!(form_field("passwd=x", "username"), None);
        let mut headers = HeaderMap::new();
        headers.insert(
            hyper::header::COOKIE,
            HeaderValue::from_static("a=1; session=abc; session=def"),
        );
        assert_eq!(session_token(&headers).as_deref(), Some("abc"));
        assert_eq!(url_segment("0"), "0");
        assert_eq!(url_segment("a b/é#frag"), "a%20b/%C3%A9");
    }

    #[test]
    fn sessions_are_bounded() {
        let mut sessions = Sessions::default();
        let first = sessions.set(None, Some("jason".into()));
        assert_eq!(sessions.get(&first), Some(Some("jason")));
        assert_eq!(sessions.set(Some(&first), None), first, "same session");
        assert_eq!(sessions.get(&first), Some(None));
        for _ in 0..MAX_SESSIONS {
            sessions.set(None, Some("x".into()));
        }
        assert_eq!(sessions.get(&first), None, "the oldest is forgotten");
        assert_eq!(sessions.users.len(), MAX_SESSIONS);
    }

    #[test]
    fn metrics_text() {
        assert_eq!(prometheus_float(3.0), "3.0");
        assert_eq!(prometheus_float(1717171712.25), "1.71717171225e+09");
        let mut metrics = Metrics::default();
        metrics.count(Upstream::Details, 200);
        metrics.count(Upstream::Details, 200);
        metrics.count(Upstream::Reviews, 503);
        let text = metrics.render();
        assert!(text.contains(
            "request_result_total{destination_app=\"details\",response_code=\"200\"} 2.0\n"
        ));
        assert!(text.contains(
            "request_result_total{destination_app=\"reviews\",response_code=\"503\"} 1.0\n"
        ));
        assert!(text.contains("# TYPE request_result_created gauge\n"));
    }
}
