//! Istio's Bookinfo sample (`examples-bookinfo-*` images, from `istio/istio:
//! samples/bookinfo/src/`): productpage calls details and reviews, reviews v2 and v3 call
//! ratings. Each stand-in answers like the real service where a user or a test can see it: the
//! JSON bytes, the page's text, the headers each one forwards, the timeouts and the retry that
//! Istio's fault-injection task depends on.

mod details;
mod headers;
mod page;
mod productpage;
mod ratings;
mod reviews;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use tokio::net::TcpListener;

use super::outbound::{self, Outbound};
use super::{container_env, percent_decode, serve_http, AppError, HttpResponse};

const PRODUCTPAGE: &str = "examples-bookinfo-productpage-v1";
const DETAILS: &str = "examples-bookinfo-details-v1";
const REVIEWS_V1: &str = "examples-bookinfo-reviews-v1";
const REVIEWS_V2: &str = "examples-bookinfo-reviews-v2";
const REVIEWS_V3: &str = "examples-bookinfo-reviews-v3";
const RATINGS: &str = "examples-bookinfo-ratings-v1";

/// A Bookinfo service with what its image and the pod's environment configure.
#[derive(Debug, Clone, PartialEq)]
pub enum App {
    Productpage(productpage::Settings),
    Details,
    Reviews(reviews::Settings),
    Ratings(ratings::Settings),
}

impl App {
    /// The app for an image repository (`istio/examples-bookinfo-reviews-v2`, any registry
    /// path), `None` if it is not one of Bookinfo's. `env` is the container's; `process_env`
    /// reads the stand-in's own environment, where the runner puts `HOSTNAME` and `http_proxy`.
    pub(super) fn for_image(
        repository: &str,
        env: &[(String, String)],
        process_env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<App>, AppError> {
        let name = repository.rsplit('/').next().unwrap_or(repository);
        let outbound = Outbound {
            proxy: outbound::proxy_from(process_env),
        };
        let app = match name {
            PRODUCTPAGE => App::Productpage(productpage::Settings::from_env(env, outbound)?),
            DETAILS => {
                details::check_env(env)?;
                App::Details
            }
            REVIEWS_V1 | REVIEWS_V2 | REVIEWS_V3 => {
                // The Dockerfile's per-image defaults (docker-bake.hcl); the pod's env wins.
                let (ratings_enabled, star_color) = match name {
                    REVIEWS_V1 => (false, "black"),
                    REVIEWS_V2 => (true, "black"),
                    _ => (true, "red"),
                };
                App::Reviews(reviews::Settings::from_env(
                    env,
                    process_env,
                    ratings_enabled,
                    star_color,
                    outbound,
                ))
            }
            RATINGS => App::Ratings(ratings::Settings::from_env(env)?),
            _ => return Ok(None),
        };
        Ok(Some(app))
    }
}

/// Serves `app` on a bound listener.
pub(super) async fn serve(app: App, listener: TcpListener) -> anyhow::Result<()> {
    match app {
        App::Productpage(settings) => serve_http(listener, productpage::handler(settings)).await,
        App::Details => serve_http(listener, details::handler()).await,
        App::Reviews(settings) => serve_http(listener, reviews::handler(settings)).await,
        App::Ratings(settings) => serve_http(listener, ratings::handler(settings)).await,
    }
}

/// `http://{HOSTNAME}{.SERVICES_DOMAIN}:{PORT}`, the way productpage.py and reviews' Java both
/// build a service's address from the environment (an empty `SERVICES_DOMAIN` still adds the
/// dot, as there).
fn service_url(
    env: &[(String, String)],
    hostname_var: &str,
    default_hostname: &str,
    port_var: &str,
) -> String {
    let domain = container_env(env, "SERVICES_DOMAIN").map_or(String::new(), |d| format!(".{d}"));
    let host = container_env(env, hostname_var).unwrap_or(default_hostname);
    let port = container_env(env, port_var).unwrap_or("9080");
    format!("http://{host}{domain}:{port}")
}

/// A response with no body and no content type (Node's and Liberty's bare errors).
fn bare(status: StatusCode) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// Markupsafe's `escape`, which Jinja and json2html apply to text in the page.
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
