//! Built-in stand-ins for the container images of the seed labs, so the local runner
//! (`wardctl up`) runs their manifests unchanged without a container runtime. Each stand-in
//! answers like the real image does where the labs look at the output.

mod aura_api;
mod exam_scheduler;
mod http_echo;
mod httpbin;
mod python_value;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// A runnable stand-in, with everything it needs parsed from the pod spec.
#[derive(Debug, Clone, PartialEq)]
pub enum StandIn {
    /// `hashicorp/http-echo`: answers every request with `text` and a newline.
    HttpEcho { text: String, listen: SocketAddr },
    /// `alepispi/exam-scheduler`: POST stores an exam, GET lists them.
    ExamScheduler { listen: SocketAddr },
    /// `servicemeshncs/aura-api`: `/aura` with random delay and errors, `/slow`, `/chaos`.
    AuraApi {
        listen: SocketAddr,
        error_rate: f64,
        min_delay_s: f64,
        max_delay_s: f64,
    },
    /// httpbin (`kong/httpbin`, `kennethreitz/httpbin`, `mccutchen/go-httpbin`): echoes the
    /// request's headers (`/headers`), `/status/CODE`, `/ip`, `/get`, `/anything`.
    Httpbin { listen: SocketAddr },
    /// `curlimages/curl`, `radial/busyboxplus`: client-only pods, nothing listens.
    ClientOnly,
}

/// Why a pod spec cannot run on its stand-in (the real container would have failed too).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AppError {
    #[error("{image}: unknown flag `{flag}`")]
    UnknownFlag { image: &'static str, flag: String },
    #[error("{image}: flag `{flag}` needs a value")]
    MissingFlagValue { image: &'static str, flag: String },
    #[error("{image}: unexpected argument `{arg}`")]
    UnexpectedArgument { image: &'static str, arg: String },
    #[error("{image}: missing -text option")]
    MissingText { image: &'static str },
    #[error("{image}: environment variable {name}={value:?} {problem}")]
    BadEnv {
        image: &'static str,
        name: &'static str,
        value: String,
        problem: &'static str,
    },
}

const HTTP_ECHO: &str = "hashicorp/http-echo";
const EXAM_SCHEDULER: &str = "alepispi/exam-scheduler";
const AURA_API: &str = "servicemeshncs/aura-api";
const HTTPBIN_IMAGES: &[&str] = &[
    "kong/httpbin",
    "kennethreitz/httpbin",
    "mccutchen/go-httpbin",
];
const CLIENT_ONLY_IMAGES: &[&str] = &["curlimages/curl", "radial/busyboxplus"];

/// Picks the stand-in for a container, `None` if Ward has none for `image`.
///
/// `command` and `args` are the container's (the image's entrypoint is implied); `listen`
/// is where the runner wants the app, overriding any address the arguments name.
pub fn stand_in_for(
    image: &str,
    command: &[String],
    args: &[String],
    env: &[(String, String)],
    listen: SocketAddr,
) -> Result<Option<StandIn>, AppError> {
    let repository = image_repository(image);
    let stand_in = match repository.as_str() {
        HTTP_ECHO => {
            let argv: Vec<String> = command.iter().chain(args).cloned().collect();
            let text = http_echo::parse_text(&argv, env)?;
            StandIn::HttpEcho { text, listen }
        }
        EXAM_SCHEDULER => StandIn::ExamScheduler { listen },
        AURA_API => {
            let settings = aura_api::Settings::from_env(env)?;
            StandIn::AuraApi {
                listen,
                error_rate: settings.error_rate,
                min_delay_s: settings.min_delay_s,
                max_delay_s: settings.max_delay_s,
            }
        }
        other if HTTPBIN_IMAGES.contains(&other) => StandIn::Httpbin { listen },
        other if CLIENT_ONLY_IMAGES.contains(&other) => StandIn::ClientOnly,
        _ => return Ok(None),
    };
    Ok(Some(stand_in))
}

/// `docker.io/hashicorp/http-echo:1.0@sha256:…` → `hashicorp/http-echo`: the repository
/// path without registry, tag or digest, lowercased.
fn image_repository(image: &str) -> String {
    let without_digest = image.split_once('@').map_or(image, |(name, _)| name);
    // A tag is a `:` after the last `/`; a `:` before it is a registry port.
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    let without_tag = match without_digest[last_slash..].find(':') {
        Some(colon) => &without_digest[..last_slash + colon],
        None => without_digest,
    };
    let mut parts: Vec<&str> = without_tag.split('/').collect();
    // Docker's rule: the first component is a registry if it looks like a host name.
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        parts.remove(0);
    }
    if parts.len() > 1 && parts[0] == "library" {
        parts.remove(0);
    }
    parts.join("/").to_ascii_lowercase()
}

/// Binds the stand-in's listen address and serves forever (`ClientOnly` just waits).
pub async fn run_stand_in(app: StandIn) -> anyhow::Result<()> {
    let listen = match &app {
        StandIn::HttpEcho { listen, .. }
        | StandIn::ExamScheduler { listen }
        | StandIn::Httpbin { listen }
        | StandIn::AuraApi { listen, .. } => *listen,
        StandIn::ClientOnly => {
            // The pod exists only to `exec` into; keep the process alive like `sleep infinity`.
            std::future::pending::<()>().await;
            return Ok(());
        }
    };
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding {listen}: {e}"))?;
    serve_stand_in(app, listener).await
}

/// Serves `app` on an already bound listener (tests bind port 0 and read the address back).
pub async fn serve_stand_in(app: StandIn, listener: TcpListener) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    info!(address = %local, app = ?app, "stand-in listening");
    match app {
        StandIn::HttpEcho { text, .. } => serve_http(listener, http_echo::handler(text)).await,
        StandIn::ExamScheduler { .. } => serve_http(listener, exam_scheduler::handler()).await,
        StandIn::Httpbin { .. } => {
            serve_http(listener, |request: Request<Incoming>| {
                std::future::ready(httpbin::answer(&request))
            })
            .await
        }
        StandIn::AuraApi {
            error_rate,
            min_delay_s,
            max_delay_s,
            ..
        } => {
            let settings = aura_api::Settings {
                error_rate,
                min_delay_s,
                max_delay_s,
            };
            serve_http(listener, aura_api::handler(settings, local)).await
        }
        StandIn::ClientOnly => {
            std::future::pending::<()>().await;
            Ok(())
        }
    }
}

type HttpResponse = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_str(content_type).expect("static content type"),
    );
    response
}

/// HTTP/1.1 accept loop: one task per connection, `handle` per request.
async fn serve_http<H, F>(listener: TcpListener, handle: H) -> anyhow::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = handle(request);
                async move { Ok::<_, Infallible>(response.await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests;
