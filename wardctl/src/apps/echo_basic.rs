//! The Gateway API conformance backend `echo-basic` (`registry.k8s.io/gateway-api/conformance/
//! echo-basic`, from kubernetes-sigs/gateway-api-conformance-images `echo-basic/echo-basic.go`).
//!
//! HTTP mode, the default: HTTP/1.1 on `$HTTP_PORT` (3000) and h2c on `$H2C_PORT` (3001).
//! Every path but a few echoes the request as indented JSON (path, host, method, proto,
//! headers, and the pod's `$NAMESPACE`/`$POD_NAME`), adding the response headers that
//! `X-Echo-Set-Header: Name:value,…` asks for; `?delay=` waits first. `/health`,
//! `/status/NNN` and the retry simulator `/retry/…?uuid=&succeedAfter=` answer their own way.
//! `$TCP_ECHO_SERVER` switches to the TCP server (`tcpserver.go`), `$GRPC_ECHO_SERVER` to the
//! gRPC echo (`grpc/grpc.go`). Ward has no certificates to serve the TLS listeners with, so
//! those are not opened; nor is the WebSocket echo on `/ws` (a handshake there is refused).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, LOCATION};
use hyper::{Method, Request, Response, StatusCode, Version};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tracing::warn;

use super::{bind, container_env, pod_env, serve_all, serve_replies, AppError, Protocols, Reply};

const IMAGE: &str = "gateway-api/echo-basic";

/// A pod running echo-basic, as its environment configures it.
#[derive(Debug, Clone, PartialEq)]
pub struct EchoBasic {
    /// Where the runner wants the app: its IP is where every port is opened, and its port
    /// is served too (by the mode's main server) if the app would not open it.
    pub listen: SocketAddr,
    pub mode: EchoBasicMode,
    pub context: PodContext,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EchoBasicMode {
    /// `http_port` is also reported as `httpPort`, spelled as `$HTTP_PORT` was.
    Http {
        http_port: u16,
        h2c_port: u16,
        http_port_text: String,
    },
    /// The ports are reported as spelled (`tcpport`, `tlsport`); the TLS listener is not
    /// opened.
    Tcp {
        tcp_port: u16,
        tcp_port_text: String,
        tls_port_text: String,
    },
    Grpc {
        http_port: u16,
    },
}

/// Where the backend says it runs (the Deployment's downward-API env).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct PodContext {
    pub namespace: String,
    pub ingress: String,
    pub service: String,
    pub pod: String,
}

fn port_env(
    env: &[(String, String)],
    name: &'static str,
    default: u16,
) -> Result<(u16, String), AppError> {
    match container_env(env, name) {
        None | Some("") => Ok((default, default.to_string())),
        Some(text) => text
            .parse::<u16>()
            .map(|port| (port, text.to_string()))
            .map_err(|_| AppError::BadEnv {
                image: IMAGE,
                name,
                value: text.to_string(),
                problem: "is not a port number",
            }),
    }
}

impl EchoBasic {
    /// The image's entrypoint `/echo-basic` reads no arguments (Go's `os.Args` is never
    /// looked at), so any `args` are ignored as the real binary ignores them; a `command`
    /// must still run that binary.
    pub(super) fn from_spec(
        command: &[String],
        env: &[(String, String)],
        listen: SocketAddr,
    ) -> Result<Self, AppError> {
        if let Some(program) = command.first() {
            if !program.ends_with("echo-basic") {
                return Err(AppError::UnexpectedArgument {
                    image: IMAGE,
                    arg: program.clone(),
                });
            }
        }
        let set = |name| container_env(env, name).is_some_and(|v| !v.is_empty());
        let mode = if set("GRPC_ECHO_SERVER") {
            EchoBasicMode::Grpc {
                http_port: port_env(env, "HTTP_PORT", 3000)?.0,
            }
        } else if set("TCP_ECHO_SERVER") {
            let (tcp_port, tcp_port_text) = port_env(env, "TCP_PORT", 3000)?;
            EchoBasicMode::Tcp {
                tcp_port,
                tcp_port_text,
                tls_port_text: port_env(env, "TLS_PORT", 8443)?.1,
            }
        } else if set("UDP_ECHO_SERVER") {
            return Err(AppError::Unsupported {
                image: IMAGE,
                what: "the UDP echo server (UDP_ECHO_SERVER)".to_string(),
            });
        } else {
            let (http_port, http_port_text) = port_env(env, "HTTP_PORT", 3000)?;
            EchoBasicMode::Http {
                http_port,
                h2c_port: port_env(env, "H2C_PORT", 3001)?.0,
                http_port_text,
            }
        };
        // NAMESPACE and POD_NAME come from the downward API; the runner may provide them.
        let context = PodContext {
            namespace: pod_env(env, "NAMESPACE").unwrap_or_default(),
            ingress: container_env(env, "INGRESS_NAME")
                .unwrap_or_default()
                .to_string(),
            service: container_env(env, "SERVICE_NAME")
                .unwrap_or_default()
                .to_string(),
            pod: pod_env(env, "POD_NAME").unwrap_or_default(),
        };
        for (cert, key) in [
            ("TLS_SERVER_CERT", "TLS_SERVER_PRIVKEY"),
            ("TLS_SERVER_CERT", "TLS_SERVER_PRIV_KEY"),
        ] {
            if set(cert) && set(key) {
                warn!("{IMAGE}: {cert}/{key} are set, but the stand-in opens no TLS listener");
            }
        }
        Ok(EchoBasic {
            listen,
            mode,
            context,
        })
    }
}

/// What each listener of a running echo-basic serves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Role {
    Http,
    H2c,
    Tcp,
    Grpc,
}

/// Binds every port of `app` on the listen address's IP; then `serve` runs them.
pub(super) async fn bind_all(app: &EchoBasic) -> anyhow::Result<Vec<(Role, TcpListener)>> {
    let ip = app.listen.ip();
    let mut ports = match &app.mode {
        EchoBasicMode::Http {
            http_port,
            h2c_port,
            ..
        } => vec![(Role::Http, *http_port), (Role::H2c, *h2c_port)],
        EchoBasicMode::Tcp { tcp_port, .. } => vec![(Role::Tcp, *tcp_port)],
        EchoBasicMode::Grpc { http_port } => vec![(Role::Grpc, *http_port)],
    };
    if !ports.iter().any(|(_, port)| *port == app.listen.port()) {
        let main = ports[0].0;
        ports.push((main, app.listen.port()));
    }
    let mut listeners = Vec::new();
    for (role, port) in ports {
        listeners.push((role, bind(SocketAddr::new(ip, port)).await?));
    }
    Ok(listeners)
}

pub(super) async fn serve(
    app: EchoBasic,
    listeners: Vec<(Role, TcpListener)>,
) -> anyhow::Result<()> {
    let state = Arc::new(State {
        context: app.context,
        http_port_text: match &app.mode {
            EchoBasicMode::Http { http_port_text, .. } => http_port_text.clone(),
            _ => String::new(),
        },
        tcp_ports_text: match &app.mode {
            EchoBasicMode::Tcp {
                tcp_port_text,
                tls_port_text,
                ..
            } => (tcp_port_text.clone(), tls_port_text.clone()),
            _ => Default::default(),
        },
        retries: Mutex::new(HashMap::new()),
    });
    let servers = listeners.into_iter().map(|(role, listener)| {
        let state = state.clone();
        let server: super::Server = match role {
            Role::Http => Box::pin(serve_replies(
                listener,
                Protocols::Http1,
                move |request, peer| main_handler(state.clone(), request, peer),
            )),
            Role::H2c => Box::pin(serve_replies(
                listener,
                Protocols::Http1AndH2c,
                move |request, peer| h2c_handler(state.clone(), request, peer),
            )),
            Role::Grpc => Box::pin(serve_replies(
                listener,
                Protocols::H2c,
                move |request, _peer| grpc_handler(state.clone(), request),
            )),
            Role::Tcp => Box::pin(serve_tcp(state, listener)),
        };
        server
    });
    serve_all(servers.collect()).await
}

struct State {
    context: PodContext,
    http_port_text: String,
    /// `tcpport`, `tlsport`
    tcp_ports_text: (String, String),
    /// The retry simulator's attempts per `uuid`; held across its delay, as the Go mutex is.
    retries: Mutex<HashMap<String, i64>>,
}

type HttpResponse = Response<Full<Bytes>>;

fn empty(status: StatusCode) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// A body written without a Content-Type, which Go sniffs as plain text.
fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    super::respond(status, "text/plain; charset=utf-8", body)
}

/// `processError`: the error as `{"message":…}`.
fn process_error(status: StatusCode, message: &str) -> HttpResponse {
    let body = go::json(&serde_json::json!({ "message": message }), false);
    let mut response = super::respond(status, "application/json", body);
    response.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `http.WriteHeader(code)` with no body: Go panics (and drops the connection) outside
/// 100–999, sends a 1xx as an informational answer followed by a 200, and cannot
/// switch protocols without a hijack.
fn write_header(code: i64) -> Reply {
    match code {
        101 => Reply::Close,
        100..=199 => Reply::Respond(empty(StatusCode::OK)),
        200..=999 => match u16::try_from(code)
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => Reply::Respond(empty(status)),
            None => Reply::Close,
        },
        _ => Reply::Close,
    }
}

/// The main port: Go's `ServeMux` behind `preserveSlashes` (which folds `//` to `/`).
async fn main_handler(state: Arc<State>, request: Request<Incoming>, peer: SocketAddr) -> Reply {
    let folded = request.uri().path().replace("//", "/");
    let cleaned = go::clean_path(&folded);
    let query = request.uri().query();
    if cleaned != folded {
        return Reply::Respond(go::redirect(&request, &cleaned, query));
    }
    let route = super::percent_decode(&cleaned);
    match route.as_str() {
        "/health" => Reply::Respond(text(StatusCode::OK, "OK")),
        // A subtree's root without its slash is redirected into it.
        "/status" | "/retry" => {
            Reply::Respond(go::redirect(&request, &format!("{cleaned}/"), query))
        }
        "/ws" => Reply::Respond(websocket_refusal(&request)),
        _ if route.starts_with("/status/") => status_handler(&request),
        _ if route.starts_with("/retry/") => retry_handler(&state, request, peer).await,
        _ => Reply::Respond(echo(&state, &request, peer).await),
    }
}

/// `/ws` runs `golang.org/x/net/websocket`, whose handshake check answers a plain request
/// itself. The echo behind a real handshake is not implemented: such a connection is closed.
fn websocket_refusal(request: &Request<Incoming>) -> HttpResponse {
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    let (status, body) = if request.method() != Method::GET {
        (StatusCode::METHOD_NOT_ALLOWED, "bad method")
    } else if header("upgrade") != "websocket" || !header("connection").contains("upgrade") {
        (StatusCode::BAD_REQUEST, "not websocket protocol")
    } else {
        warn!("{IMAGE}: WebSocket echo on /ws is not implemented by the stand-in");
        (
            StatusCode::NOT_IMPLEMENTED,
            "WebSocket echo is not implemented by Ward's stand-in",
        )
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// `/status/NNN`: the regexp `^/status/(\d\d\d)$` runs on the raw request URI, query
/// included, so anything else is a 400.
fn status_handler(request: &Request<Incoming>) -> Reply {
    let uri = go::request_uri(request);
    match uri.strip_prefix("/status/") {
        Some(code) if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) => {
            write_header(code.parse().unwrap_or_default())
        }
        _ => Reply::Respond(empty(StatusCode::BAD_REQUEST)),
    }
}

/// The retry simulator: the first `succeedAfter` requests of a `uuid` fail (after
/// `delayRetry`) with `responseCode`, or with a TCP reset when there is none; later ones echo.
async fn retry_handler(state: &State, request: Request<Incoming>, peer: SocketAddr) -> Reply {
    let (query, _) = go::parse_query(request.uri().query().unwrap_or_default());
    let uuid = go::form_value(&query, "uuid");
    if uuid.is_empty() {
        return Reply::Respond(text(StatusCode::BAD_REQUEST, "uuid is required"));
    }
    let Ok(succeed_after) = go::atoi(go::form_value(&query, "succeedAfter")) else {
        return Reply::Respond(text(StatusCode::BAD_REQUEST, "succeedAfter is required"));
    };
    let response_code = go::atoi(go::form_value(&query, "responseCode")).ok();
    let mut attempts = state.retries.lock().await;
    let count = attempts.entry(uuid.to_string()).or_insert(0);
    if *count < succeed_after {
        *count += 1;
        if let Err(e) = delay(&query, "delayRetry").await {
            return Reply::Respond(process_error(StatusCode::INTERNAL_SERVER_ERROR, &e));
        }
        return match response_code {
            Some(code) => write_header(code),
            None => Reply::Reset,
        };
    }
    // Go echoes while still holding the lock.
    let reply = Reply::Respond(echo(state, &request, peer).await);
    drop(attempts);
    reply
}

/// `?key=<Go duration>` sleeps that long first (`delayResponse`).
async fn delay(query: &[(String, String)], key: &str) -> Result<(), String> {
    let value = go::form_value(query, key);
    if value.is_empty() {
        return Ok(());
    }
    tokio::time::sleep(go::parse_duration(value)?).await;
    Ok(())
}

/// The h2c port: HTTP/2 (prior knowledge), or HTTP/1.1 saying `Upgrade: h2c`, is echoed
/// at any path; any other HTTP/1 request is refused.
async fn h2c_handler(state: Arc<State>, request: Request<Incoming>, peer: SocketAddr) -> Reply {
    let upgrade = request.headers().get("upgrade").map(|v| v.as_bytes());
    if request.version() != Version::HTTP_2 && upgrade != Some(b"h2c") {
        return Reply::Respond(text(StatusCode::BAD_REQUEST, "Expected h2c request"));
    }
    Reply::Respond(echo(&state, &request, peer).await)
}

/// The JSON `echoHandler` answers with (`RequestAssertions`, without `tls`).
#[derive(Serialize)]
struct RequestAssertions<'a> {
    path: String,
    host: String,
    method: &'a str,
    proto: &'static str,
    headers: BTreeMap<String, Vec<String>>,
    #[serde(rename = "httpPort")]
    http_port: &'a str,
    #[serde(flatten)]
    context: &'a PodContext,
}

async fn echo(state: &State, request: &Request<Incoming>, peer: SocketAddr) -> HttpResponse {
    let request_uri = go::request_uri(request);
    // The line the conformance suite's mirror tests look for in the backend's log.
    println!("Echoing back request made to {request_uri} to client ({peer})");
    let (query, _) = go::parse_query(request.uri().query().unwrap_or_default());
    if let Err(e) = delay(&query, "delay").await {
        return process_error(StatusCode::INTERNAL_SERVER_ERROR, &e);
    }
    let assertions = RequestAssertions {
        path: request_uri,
        host: go::host(request),
        method: request.method().as_str(),
        proto: go::proto(request.version()),
        headers: go::request_headers(request),
        http_port: &state.http_port_text,
        context: &state.context,
    };
    let mut response = Response::new(Full::new(Bytes::from(go::json(&assertions, true))));
    let headers = response.headers_mut();
    set_echo_headers(request.headers(), headers);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `X-Echo-Set-Header: Name:value,Name2:value2` adds those response headers; a name seen
/// again gets `,value` appended. Names Go would not write (empty, invalid) are skipped.
fn set_echo_headers(request: &HeaderMap, response: &mut HeaderMap) {
    let mut wanted: Vec<(String, String)> = Vec::new();
    for line in request.get_all("x-echo-set-header") {
        let line = String::from_utf8_lossy(line.as_bytes());
        for pair in line.split(',') {
            let (name, value) = pair.trim().split_once(':').unwrap_or((pair.trim(), ""));
            match wanted.iter_mut().find(|(n, _)| n == name) {
                Some((_, existing)) => {
                    existing.push(',');
                    existing.push_str(value.trim());
                }
                None => wanted.push((name.to_string(), value.to_string())),
            }
        }
    }
    for (name, value) in wanted {
        // Go trims the value as it writes it.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            response.append(name, value);
        }
    }
}

/// `tcpserver.go`: a welcome line, then per line `TEST` → the pod's JSON, `IS_TLS` →
/// `false`, `PING` → `PONG`; anything else is ignored.
async fn serve_tcp(state: Arc<State>, listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (stream, _) = crate::accept::next_connection(&listener, "echo-basic tcp").await;
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = tcp_connection(&state, stream).await {
                tracing::debug!(error = %e, "tcp echo connection ended");
            }
        });
    }
}

#[derive(Serialize)]
struct TcpAssertions<'a> {
    #[serde(flatten)]
    context: &'a PodContext,
    tcpport: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    tlsport: &'a str,
    #[serde(rename = "isTLS")]
    is_tls: bool,
}

/// bufio.Scanner's limit: a longer line ends the conversation.
const MAX_LINE: usize = 64 * 1024;

async fn tcp_connection(state: &State, stream: TcpStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    write.write_all(b"Gateway API Test TCP Server\n").await?;
    let payload = go::json(
        &TcpAssertions {
            context: &state.context,
            tcpport: &state.tcp_ports_text.0,
            tlsport: &state.tcp_ports_text.1,
            is_tls: false,
        },
        false,
    );
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 || (line.len() > MAX_LINE && !line.ends_with(b"\n")) {
            return Ok(());
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let answer = match text {
            b"TEST" => format!("{payload}\n"),
            b"IS_TLS" => "false\n".to_string(),
            b"PING" => "PONG\n".to_string(),
            _ => continue,
        };
        write.write_all(answer.as_bytes()).await?;
    }
}

/// `grpc/grpc.go`: `gateway_api_conformance.echo_basic.grpcecho.GrpcEcho` over h2c.
const GRPC_SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

pub(super) mod pb {
    //! The messages of `echo-basic/grpcecho.proto`.

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Header {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Context {
        #[prost(string, tag = "1")]
        pub namespace: String,
        #[prost(string, tag = "2")]
        pub ingress: String,
        #[prost(string, tag = "3")]
        pub service_name: String,
        #[prost(string, tag = "4")]
        pub pod: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Assertions {
        #[prost(string, tag = "1")]
        pub fully_qualified_method: String,
        #[prost(message, repeated, tag = "2")]
        pub headers: Vec<Header>,
        #[prost(string, tag = "3")]
        pub authority: String,
        #[prost(message, optional, tag = "4")]
        pub context: Option<Context>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EchoResponse {
        #[prost(message, optional, tag = "1")]
        pub assertions: Option<Assertions>,
    }
}

async fn grpc_handler(state: Arc<State>, request: Request<Incoming>) -> Reply<grpc::Body> {
    let call = match grpc::read_call(request).await {
        Ok(call) => call,
        Err(response) => return Reply::Respond(response),
    };
    let method = match call.path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((GRPC_SERVICE, method @ ("Echo" | "EchoTwo"))) => method,
        Some((GRPC_SERVICE, "EchoThree")) => {
            return Reply::Respond(grpc::status(
                grpc::UNIMPLEMENTED,
                "method EchoThree not implemented",
            ))
        }
        _ => return Reply::Respond(grpc::unknown(&call.path, &[GRPC_SERVICE])),
    };
    let headers = call
        .metadata
        .iter()
        .map(|(key, value)| pb::Header {
            key: key.clone(),
            value: value.clone(),
        })
        .collect();
    let context = &state.context;
    let response = pb::EchoResponse {
        assertions: Some(pb::Assertions {
            fully_qualified_method: format!("/{GRPC_SERVICE}/{method}"),
            headers,
            authority: call.authority.unwrap_or_default(),
            context: Some(pb::Context {
                namespace: context.namespace.clone(),
                ingress: context.ingress.clone(),
                service_name: context.service.clone(),
                pod: context.pod.clone(),
            }),
        }),
    };
    Reply::Respond(grpc::ok(&response))
}

/// Just enough gRPC over h2c for unary echo calls: what grpc-go hands a handler, and its
/// answers. Shared with the Istio echo app.
pub(super) mod grpc {
    use super::*;

    pub type Body =
        StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;

    pub struct Call {
        /// `/package.Service/Method`
        pub path: String,
        /// The request message, unframed.
        pub message: Bytes,
        /// grpc-go's incoming metadata: `:authority` and the headers it does not reserve
        /// for itself, names lowercase, in the order received.
        pub metadata: Vec<(String, String)>,
        pub authority: Option<String>,
    }

    fn response(
        headers: HeaderMap,
        frames: Vec<Result<Frame<Bytes>, Infallible>>,
    ) -> Response<Body> {
        let mut response = Response::new(StreamBody::new(tokio_stream::iter(frames)));
        *response.headers_mut() = headers;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        response
    }

    /// A failed call, as a trailers-only answer.
    pub fn status(code: u32, message: &str) -> Response<Body> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from(code));
        if let Ok(message) = HeaderValue::from_str(message) {
            headers.insert("grpc-message", message);
        }
        response(headers, Vec::new())
    }

    /// grpc-go's answer for a path it has no handler for.
    pub fn unknown(path: &str, services: &[&str]) -> Response<Body> {
        let message = match path.strip_prefix('/').and_then(|p| p.rsplit_once('/')) {
            Some((service, method)) if services.contains(&service) => {
                format!("unknown method {method} for service {service}")
            }
            Some((service, _)) => format!("unknown service {service}"),
            None => format!("malformed method name: {}", go::quote(path)),
        };
        status(UNIMPLEMENTED, &message)
    }

    pub fn ok(message: &impl prost::Message) -> Response<Body> {
        let encoded = message.encode_to_vec();
        let mut framed = Vec::with_capacity(5 + encoded.len());
        framed.push(0);
        framed.extend_from_slice(
            &u32::try_from(encoded.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        framed.extend_from_slice(&encoded);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        response(
            HeaderMap::new(),
            vec![
                Ok(Frame::data(Bytes::from(framed))),
                Ok(Frame::trailers(trailers)),
            ],
        )
    }

    /// Headers grpc-go keeps out of the metadata it gives handlers (`isReservedHeader`;
    /// `host` becomes `:authority`).
    fn reserved(name: &str) -> bool {
        matches!(
            name,
            "content-type"
                | "te"
                | "host"
                | "grpc-message-type"
                | "grpc-encoding"
                | "grpc-message"
                | "grpc-status"
                | "grpc-timeout"
                | "grpc-status-details-bin"
        )
    }

    /// Reads a unary call: one length-prefixed, uncompressed message.
    pub async fn read_call(request: Request<Incoming>) -> Result<Call, Response<Body>> {
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if request.method() != Method::POST || !content_type.starts_with("application/grpc") {
            let mut refusal = status(INTERNAL, "invalid gRPC request");
            *refusal.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
            return Err(refusal);
        }
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                request
                    .headers()
                    .get(hyper::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            });
        let mut metadata: Vec<(String, String)> = authority
            .iter()
            .map(|a| (":authority".to_string(), a.clone()))
            .collect();
        for (name, value) in request.headers() {
            if !reserved(name.as_str()) {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                metadata.push((name.as_str().to_string(), value));
            }
        }
        let path = request.uri().path().to_string();
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => return Err(status(INTERNAL, &format!("reading the request: {e}"))),
        };
        let message = match body.first() {
            Some(0) if body.len() >= 5 => {
                let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
                if body.len() < 5 + length {
                    return Err(status(INTERNAL, "grpc: the request message is truncated"));
                }
                body.slice(5..5 + length)
            }
            Some(_) => {
                return Err(status(
                    UNIMPLEMENTED,
                    "grpc: compressed messages are not supported by Ward's stand-in",
                ))
            }
            None => return Err(status(INTERNAL, "grpc: the request has no message")),
        };
        Ok(Call {
            path,
            message,
            metadata,
            authority,
        })
    }
}

/// What Go's standard library does where the echo apps show it.
pub(super) mod go {
    use super::*;

    /// `textproto.CanonicalMIMEHeaderKey`: `x-header-set` → `X-Header-Set`.
    pub fn canonical_header_key(name: &str) -> String {
        let mut upper = true;
        name.chars()
            .map(|c| {
                let out = if upper {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                };
                upper = c == '-';
                out
            })
            .collect()
    }

    /// `r.Header`: canonical names, one value per header line, without `Host` (it is
    /// `r.Host`) and `Transfer-Encoding` (`r.TransferEncoding`). HTTP/2 cookies are joined.
    pub fn request_headers<B>(request: &Request<B>) -> BTreeMap<String, Vec<String>> {
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in request.headers() {
            if name == hyper::header::HOST || name == hyper::header::TRANSFER_ENCODING {
                continue;
            }
            headers
                .entry(canonical_header_key(name.as_str()))
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        if request.version() == Version::HTTP_2 {
            if let Some(cookies) = headers.get_mut("Cookie") {
                let joined = cookies.join("; ");
                *cookies = vec![joined];
            }
        }
        headers
    }

    /// `r.RequestURI`: the request target as sent (HTTP/2: `:path`).
    pub fn request_uri<B>(request: &Request<B>) -> String {
        if request.version() == Version::HTTP_2 {
            request
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string())
        } else {
            request.uri().to_string()
        }
    }

    /// `r.Host`: the URL's host in absolute form or HTTP/2's `:authority`, else `Host`.
    pub fn host<B>(request: &Request<B>) -> String {
        match request.uri().authority() {
            Some(authority) => authority.as_str().to_string(),
            None => request
                .headers()
                .get(hyper::header::HOST)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default(),
        }
    }

    /// `r.Proto`
    pub fn proto(version: Version) -> &'static str {
        match version {
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        }
    }

    /// `strconv.Quote`, near enough for error messages.
    pub fn quote(text: &str) -> String {
        format!("{text:?}")
    }

    /// `url.ParseQuery`: the pairs it could decode, and its first error.
    pub fn parse_query(raw: &str) -> (Vec<(String, String)>, Option<String>) {
        let mut pairs = Vec::new();
        let mut error = None;
        for part in raw.split('&') {
            if part.contains(';') {
                error.get_or_insert_with(|| "invalid semicolon separator in query".to_string());
                continue;
            }
            if part.is_empty() {
                continue;
            }
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            match (query_unescape(key), query_unescape(value)) {
                (Ok(key), Ok(value)) => pairs.push((key, value)),
                (Err(e), _) | (_, Err(e)) => {
                    error.get_or_insert(e);
                }
            }
        }
        (pairs, error)
    }

    /// `url.QueryUnescape`: `+` is a space, `%XX` a byte.
    pub fn query_unescape(text: &str) -> Result<String, String> {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'%' => {
                    let hex = bytes
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok());
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(byte)
                            if hex.is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit())) =>
                        {
                            out.push(byte);
                            i += 3;
                        }
                        _ => {
                            let bad: String = text[i..].chars().take(3).collect();
                            return Err(format!("invalid URL escape {}", quote(&bad)));
                        }
                    }
                }
                b'+' => {
                    out.push(b' ');
                    i += 1;
                }
                byte => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// `r.FormValue` over the query: the first value, or "".
    pub fn form_value<'a>(query: &'a [(String, String)], name: &str) -> &'a str {
        query
            .iter()
            .find(|(key, _)| key == name)
            .map_or("", |(_, value)| value.as_str())
    }

    /// `strconv.Atoi`
    pub fn atoi(text: &str) -> Result<i64, String> {
        text.parse::<i64>().map_err(|e| {
            let problem = match e.kind() {
                std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                    "value out of range"
                }
                _ => "invalid syntax",
            };
            format!("strconv.Atoi: parsing {}: {problem}", quote(text))
        })
    }

    /// `time.ParseDuration`, with its error messages. A negative duration is returned as
    /// zero: the apps only sleep for it, and Go's `time.Sleep` returns at once.
    pub fn parse_duration(text: &str) -> Result<Duration, String> {
        let invalid = || format!("time: invalid duration {}", quote(text));
        let (negative, mut rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        if rest == "0" {
            return Ok(Duration::ZERO);
        }
        if rest.is_empty() {
            return Err(invalid());
        }
        let mut total: u128 = 0;
        while !rest.is_empty() {
            if !rest.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
                return Err(invalid());
            }
            let int_len = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let (int_part, after) = rest.split_at(int_len);
            rest = after;
            let mut frac_part = "";
            if let Some(after_dot) = rest.strip_prefix('.') {
                let frac_len = after_dot
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(after_dot.len());
                frac_part = &after_dot[..frac_len];
                rest = &after_dot[frac_len..];
                if int_part.is_empty() && frac_part.is_empty() {
                    return Err(invalid());
                }
            } else if int_part.is_empty() {
                return Err(invalid());
            }
            let unit_len = rest
                .find(|c: char| c == '.' || c.is_ascii_digit())
                .unwrap_or(rest.len());
            if unit_len == 0 {
                return Err(format!("time: missing unit in duration {}", quote(text)));
            }
            let (unit, after) = rest.split_at(unit_len);
            rest = after;
            let nanos_per_unit: u128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => {
                    return Err(format!(
                        "time: unknown unit {} in duration {}",
                        quote(unit),
                        quote(text)
                    ))
                }
            };
            let whole: u128 = if int_part.is_empty() {
                0
            } else {
                int_part.parse().map_err(|_| invalid())?
            };
            let mut nanos = whole.checked_mul(nanos_per_unit).ok_or_else(invalid)?;
            // Digits past what the unit can resolve are dropped, as Go does.
            let mut scale = nanos_per_unit;
            for digit in frac_part.bytes().take(30) {
                scale /= 10;
                nanos += u128::from(digit - b'0') * scale;
            }
            total = total.checked_add(nanos).ok_or_else(invalid)?;
            if total > i64::MAX as u128 {
                return Err(invalid());
            }
        }
        if negative {
            return Ok(Duration::ZERO);
        }
        Ok(Duration::from_nanos(
            u64::try_from(total).map_err(|_| invalid())?,
        ))
    }

    /// `json.Marshal` (or `MarshalIndent(v, "", " ")`), which escapes `<`, `>`, `&` and
    /// the line and paragraph separators.
    pub fn json(value: &impl Serialize, indent: bool) -> String {
        let mut out = Vec::new();
        let written = if indent {
            let formatter = serde_json::ser::PrettyFormatter::with_indent(b" ");
            value.serialize(&mut serde_json::Serializer::with_formatter(
                &mut out, formatter,
            ))
        } else {
            value.serialize(&mut serde_json::Serializer::new(&mut out))
        };
        if written.is_err() {
            return String::new();
        }
        // These characters only occur inside strings, so a plain replacement is exact.
        String::from_utf8_lossy(&out)
            .replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026")
            .replace('\u{2028}', "\\u2028")
            .replace('\u{2029}', "\\u2029")
    }

    /// `path.Clean`, keeping a trailing slash as `ServeMux`'s `cleanPath` does.
    pub fn clean_path(path: &str) -> String {
        let mut parts: Vec<&str> = Vec::new();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                part => parts.push(part),
            }
        }
        let mut cleaned = format!("/{}", parts.join("/"));
        if path.ends_with('/') && cleaned != "/" {
            cleaned.push('/');
        }
        cleaned
    }

    /// `html.EscapeString`
    pub fn html_escape(text: &str) -> String {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('\'', "&#39;")
            .replace('"', "&#34;")
    }

    /// `ServeMux`'s 301 to a cleaned path (`http.Redirect`), keeping the query.
    pub fn redirect<B>(
        request: &Request<B>,
        path: &str,
        query: Option<&str>,
    ) -> Response<Full<Bytes>> {
        let location = match query {
            Some(query) if !query.is_empty() => format!("{path}?{query}"),
            _ => path.to_string(),
        };
        let method = request.method();
        let body = if method == Method::GET {
            format!(
                "<a href=\"{}\">Moved Permanently</a>.\n\n",
                html_escape(&location)
            )
        } else {
            String::new()
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(LOCATION, value);
        }
        if method == Method::GET || method == Method::HEAD {
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
        }
        response
    }
}
