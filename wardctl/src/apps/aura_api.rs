//! `servicemeshncs/aura-api`, the backend of the resilience lab: `/aura` is slow and flaky by
//! configuration, `/slow` always takes 2–4 s, `/chaos` always fails. Every answer names the
//! replica (`X-Served-By`) so load balancing and retries are visible.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use rand::Rng;

use super::{respond, AppError, HttpResponse, AURA_API};

/// Range of `/slow`'s delay, in seconds.
pub(super) const SLOW_DELAY_S: (f64, f64) = (2.0, 4.0);

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Settings {
    /// Probability in [0, 1] that `/aura` answers 500.
    pub error_rate: f64,
    pub min_delay_s: f64,
    pub max_delay_s: f64,
}

impl Settings {
    /// `ERROR_RATE` (default 0), `MIN_DELAY_S` and `MAX_DELAY_S` (default 0) from the pod env.
    pub(super) fn from_env(env: &[(String, String)]) -> Result<Self, AppError> {
        let read = |name: &'static str| -> Result<f64, AppError> {
            let Some((_, value)) = env.iter().rev().find(|(n, _)| n == name) else {
                return Ok(0.0);
            };
            let bad = |problem| AppError::BadEnv {
                image: AURA_API,
                name,
                value: value.clone(),
                problem,
            };
            let number: f64 = value.trim().parse().map_err(|_| bad("is not a number"))?;
            if !number.is_finite() || number < 0.0 {
                return Err(bad("must be a finite number >= 0"));
            }
            Ok(number)
        };
        let error_rate = read("ERROR_RATE")?;
        if error_rate > 1.0 {
            return Err(AppError::BadEnv {
                image: AURA_API,
                name: "ERROR_RATE",
                value: error_rate.to_string(),
                problem: "must be between 0 and 1",
            });
        }
        Ok(Settings {
            error_rate,
            min_delay_s: read("MIN_DELAY_S")?,
            max_delay_s: read("MAX_DELAY_S")?,
        })
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = HttpResponse> + Send>>;

pub(super) fn handler(
    settings: Settings,
    served_by: SocketAddr,
) -> impl Fn(Request<Incoming>) -> ResponseFuture + Clone + Send + Sync + 'static {
    let served_by =
        HeaderValue::from_str(&served_by.to_string()).expect("an address is a valid header");
    move |request| {
        let served_by = served_by.clone();
        let path = request.uri().path().to_string();
        Box::pin(async move {
            let mut response = answer(&path, settings).await;
            response.headers_mut().insert("x-served-by", served_by);
            response
        })
    }
}

async fn answer(path: &str, settings: Settings) -> HttpResponse {
    match path {
        "/aura" => {
            sleep_between(settings.min_delay_s, settings.max_delay_s).await;
            // random_bool(0.0) is never and random_bool(1.0) always true.
            if rand::rng().random_bool(settings.error_rate) {
                json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    r#"{"error":"aura disturbance"}"#,
                )
            } else {
                json(StatusCode::OK, r#"{"status":"ok","aura":"stable"}"#)
            }
        }
        "/slow" => {
            let waited = sleep_between(SLOW_DELAY_S.0, SLOW_DELAY_S.1).await;
            json(
                StatusCode::OK,
                format!(r#"{{"status":"ok","delay_s":{:.3}}}"#, waited.as_secs_f64()),
            )
        }
        "/chaos" => json(StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":"chaos"}"#),
        "/" | "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#),
    }
}

fn json(status: StatusCode, body: impl Into<bytes::Bytes>) -> HttpResponse {
    respond(status, "application/json", body)
}

/// Sleeps [`random_delay`] and returns how long.
async fn sleep_between(a: f64, b: f64) -> Duration {
    let delay = random_delay(a, b);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    delay
}

/// A uniformly random duration in [a, b] seconds, bounds in either order like Python's
/// `random.uniform`.
pub(super) fn random_delay(a: f64, b: f64) -> Duration {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    let seconds = if high > low {
        rand::rng().random_range(low..=high)
    } else {
        low
    };
    Duration::from_secs_f64(seconds)
}
