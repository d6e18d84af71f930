//! Built-in stand-ins for the container images of the seed labs, so the local runner
//! (`wardctl up`) runs their manifests unchanged without a container runtime. Each stand-in
//! answers like the real image does where the labs look at the output.

mod aura_api;
mod bookinfo;
mod echo_basic;
mod exam_scheduler;
mod helloworld;
mod http_echo;
mod httpbin;
mod istio_echo;
mod outbound;
mod python_value;

pub use echo_basic::{EchoBasic, EchoBasicMode, PodContext};
pub use istio_echo::IstioEcho;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
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
    /// Istio's Bookinfo (`…/examples-bookinfo-{productpage,details,reviews,ratings}-v*`).
    Bookinfo {
        listen: SocketAddr,
        app: bookinfo::App,
    },
    /// Istio's helloworld sample (`examples-helloworld-v1`/`-v2`): `/hello` answers
    /// `Hello version: v1, instance: <pod>`.
    Helloworld {
        listen: SocketAddr,
        version: String,
        /// `$HOSTNAME`, the pod name (`None` prints as Python's `None`).
        hostname: Option<String>,
    },
    /// The Gateway API conformance backend `echo-basic`: echoes each request as JSON.
    EchoBasic(EchoBasic),
    /// Istio's echo app (`istio/app`, Gateway API `echo-advanced`): `Key=Value` lines.
    IstioEcho(IstioEcho),
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
    #[error("{image}: invalid value {value:?} for flag {flag}: {problem}")]
    BadFlagValue {
        image: &'static str,
        flag: String,
        value: String,
        problem: String,
    },
    #[error("{image}: {what} is not supported by Ward's stand-in")]
    Unsupported { image: &'static str, what: String },
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
/// Where the Gateway API project has published echo-basic.
const ECHO_BASIC_IMAGES: &[&str] = &[
    "gateway-api/conformance/echo-basic",
    "gateway-api/echo-basic",
    "k8s-staging-gateway-api/echo-basic",
    "k8s-staging-images/gateway-api/conformance/echo-basic",
];
/// Istio's echo app, and the Gateway API's `echo-advanced` (`FROM gcr.io/istio-release/app`).
const ISTIO_ECHO_IMAGES: &[&str] = &[
    "istio-release/app",
    "istio/app",
    "istio-testing/app",
    "gateway-api/conformance/echo-advanced",
    "gateway-api/echo-advanced",
    "k8s-staging-gateway-api/echo-advanced",
    "k8s-staging-images/gateway-api/conformance/echo-advanced",
];

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
    // Bookinfo's images go by their last path component, under any registry path.
    let process_env = |name: &str| std::env::var(name).ok();
    if let Some(app) = bookinfo::App::for_image(&repository, env, &process_env)? {
        return Ok(Some(StandIn::Bookinfo { listen, app }));
    }
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
        other if helloworld::image_version(other).is_some() => {
            let image_version = helloworld::image_version(other).unwrap_or_default();
            let (version, hostname) = helloworld::settings(image_version, command, args, env)?;
            StandIn::Helloworld {
                listen,
                version,
                hostname,
            }
        }
        other if ECHO_BASIC_IMAGES.contains(&other) => {
            StandIn::EchoBasic(EchoBasic::from_spec(command, env, listen)?)
        }
        other if ISTIO_ECHO_IMAGES.contains(&other) => {
            StandIn::IstioEcho(IstioEcho::from_spec(command, args, env, listen)?)
        }
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
        | StandIn::AuraApi { listen, .. }
        | StandIn::Helloworld { listen, .. }
        | StandIn::Bookinfo { listen, .. } => *listen,
        // Several ports each, bound on the listen address's IP.
        StandIn::EchoBasic(app) => {
            let listeners = echo_basic::bind_all(app).await?;
            return echo_basic::serve(app.clone(), listeners).await;
        }
        StandIn::IstioEcho(app) => {
            let listeners = istio_echo::bind_all(app).await?;
            return istio_echo::serve(app.clone(), listeners).await;
        }
        StandIn::ClientOnly => {
            // The pod exists only to `exec` into; keep the process alive like `sleep infinity`.
            std::future::pending::<()>().await;
            return Ok(());
        }
    };
    let listener = bind(listen).await?;
    serve_stand_in(app, listener).await
}

async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("binding {address}: {e}"))
}

/// Serves `app` on an already bound listener (tests bind port 0 and read the address back).
pub async fn serve_stand_in(app: StandIn, listener: TcpListener) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    info!(address = %local, app = ?app, "stand-in listening");
    match app {
        StandIn::HttpEcho { text, .. } => serve_http(listener, http_echo::handler(text)).await,
        StandIn::ExamScheduler { .. } => serve_http(listener, exam_scheduler::handler()).await,
        StandIn::Httpbin { .. } => {
            serve_http(listener, |request: Request<Incoming>| async move {
                if let Some(delay) = httpbin::delay_of(request.uri().path()) {
                    tokio::time::sleep(delay).await;
                }
                httpbin::answer(&request)
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
        StandIn::Helloworld {
            version, hostname, ..
        } => {
            serve_http(listener, move |request: Request<Incoming>| {
                std::future::ready(helloworld::answer(&request, &version, hostname.as_deref()))
            })
            .await
        }
        // The main port only: HTTP for echo-basic's HTTP mode and the Istio app's first
        // HTTP port, the TCP or gRPC server in echo-basic's other modes.
        StandIn::EchoBasic(app) => {
            let role = match app.mode {
                EchoBasicMode::Http { .. } => echo_basic::Role::Http,
                EchoBasicMode::Tcp { .. } => echo_basic::Role::Tcp,
                EchoBasicMode::Grpc { .. } => echo_basic::Role::Grpc,
            };
            echo_basic::serve(app, vec![(role, listener)]).await
        }
        StandIn::IstioEcho(app) => {
            istio_echo::serve(app, vec![(istio_echo::Role::Http, listener)]).await
        }
        StandIn::Bookinfo { app, .. } => bookinfo::serve(app, listener).await,
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
        let (stream, peer) = crate::accept::next_connection(&listener, "stand-in").await;
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

/// The value of `name` in the container's env (the last definition wins, as in Kubernetes).
fn container_env<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// A fact about the pod (`HOSTNAME`, `POD_NAME`, `NAMESPACE`): the container's env, else the
/// process env, where the runner puts what Kubernetes would (the pod name as `HOSTNAME`).
fn pod_env(env: &[(String, String)], name: &str) -> Option<String> {
    container_env(env, name)
        .map(str::to_string)
        .or_else(|| std::env::var(name).ok())
}

/// `%XX` escapes decoded (as a router matches paths); a malformed escape stays as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| bytes[i] == b'%' && h.iter().all(u8::is_ascii_hexdigit));
        match hex.and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One listener's serving loop, for apps that serve several.
type Server = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Runs every server; the first to fail ends them all.
async fn serve_all(servers: Vec<Server>) -> anyhow::Result<()> {
    let mut running = tokio::task::JoinSet::new();
    for server in servers {
        running.spawn(server);
    }
    while let Some(ended) = running.join_next().await {
        ended??;
    }
    Ok(())
}

/// What a connection speaks. HTTP/2 is cleartext with prior knowledge (h2c).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Protocols {
    Http1,
    Http1AndH2c,
    H2c,
}

/// A handler's answer, where the real app may also end the connection instead.
enum Reply<B = Full<Bytes>> {
    Respond(Response<B>),
    /// Close the connection unanswered, as Go's server does when a handler panics.
    Close,
    /// Abort the connection with a TCP RST (`SO_LINGER` 0), as echo-basic's retry
    /// simulator does. On HTTP/2 only the stream is reset.
    Reset,
}

#[derive(Debug, thiserror::Error)]
#[error("the handler ended the connection")]
struct Ended;

/// Accept loop for the apps whose handlers see the peer's address and may end the
/// connection (`Reply`); HTTP/1.1 and h2c as `protocols` says.
async fn serve_replies<H, F, B>(
    listener: TcpListener,
    protocols: Protocols,
    handle: H,
) -> anyhow::Result<()>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Reply<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let builder = match protocols {
        Protocols::Http1 => builder.http1_only(),
        Protocols::Http1AndH2c => builder,
        Protocols::H2c => builder.http2_only(),
    };
    loop {
        let (stream, peer) = crate::accept::next_connection(&listener, "stand-in").await;
        // A second descriptor of the socket, so a handler can still set SO_LINGER on it
        // while hyper owns the stream.
        let (stream, spare) = match split_descriptor(stream) {
            Ok(pair) => pair,
            Err(e) => {
                warn!(%peer, error = %e, "duplicating the connection's descriptor");
                continue;
            }
        };
        let spare = Arc::new(Mutex::new(Some(spare)));
        let handle = handle.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn({
                let spare = spare.clone();
                move |request: Request<Incoming>| {
                    let http2 = request.version() == hyper::Version::HTTP_2;
                    let reply = handle(request, peer);
                    let spare = spare.clone();
                    async move {
                        match reply.await {
                            Reply::Respond(response) => Ok(response),
                            Reply::Reset if !http2 => {
                                let spare = spare.lock().ok().and_then(|mut s| s.take());
                                if let Some(spare) = spare.and_then(|s| TcpStream::from_std(s).ok())
                                {
                                    // hyper's close, when the service fails, then sends a RST.
                                    let _ = spare.set_zero_linger();
                                }
                                Err(Ended)
                            }
                            Reply::Close | Reply::Reset => Err(Ended),
                        }
                    }
                }
            });
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(spare);
        });
    }
}

fn split_descriptor(stream: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let stream = stream.into_std()?;
    let spare = stream.try_clone()?;
    Ok((TcpStream::from_std(stream)?, spare))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod echo_tests;
