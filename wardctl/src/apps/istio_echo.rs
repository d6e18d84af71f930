//! Istio's echo app (`gcr.io/istio-release/app`, `docker.io/istio/app`; the Gateway API mesh
//! suite runs it as `echo-advanced`), from istio/istio `pkg/test/echo`: the server binary's
//! flags (`cmd/server/main.go`), its HTTP endpoint (`server/endpoint/http.go`), its TCP echo
//! (`tcp.go`) and the `Echo` call of its gRPC endpoint (`grpc.go`).
//!
//! Every HTTP request, at any path, is answered with `Key=Value` lines describing it
//! (`ServiceVersion=`, `ServicePort=`, `Host=`, `URL=`, `Method=`, `Proto=`, `IP=`, one
//! `RequestHeader=Name:value` per value, `Hostname=` the pod name), with `?codes=`,
//! `?headers=` and `?delay=` shaping the answer. HTTP ports speak HTTP/1.1 and h2c. Not done:
//! TLS ports (`--tls`: Ward has no certificates for them, so they stay closed), WebSocket
//! echo, and the gRPC `ForwardEcho` call (the app's built-in client); flags for features
//! beyond those (UDP, HBONE, mTLS, UDS, metrics, binding choices) are refused.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::echo_basic::{go, grpc};
use super::{bind, pod_env, serve_all, serve_replies, AppError, Protocols, Reply};

const IMAGE: &str = "istio/app";

/// A pod running the echo server, as its flags and environment configure it.
#[derive(Debug, Clone, PartialEq)]
pub struct IstioEcho {
    /// Every port is opened on this IP; its port is served as HTTP too if no flag names it.
    pub listen: SocketAddr,
    /// `--port`, minus the `--tls` ones.
    pub http_ports: Vec<u16>,
    /// `--grpc`, minus the `--tls` ones.
    pub grpc_ports: Vec<u16>,
    /// `--tcp`, minus the `--tls` ones.
    pub tcp_ports: Vec<u16>,
    /// `--server-first`: TCP ports that greet first.
    pub server_first_ports: Vec<u16>,
    /// `--version`, shown as `ServiceVersion=`.
    pub version: String,
    /// `--cluster`
    pub cluster: String,
    /// `--istio-version`
    pub istio_version: String,
    /// `$NAMESPACE`
    pub namespace: String,
    /// `os.Hostname()`: the pod name.
    pub hostname: Option<String>,
}

/// How `cmd/server/main.go` declares each flag (cobra/pflag).
enum Flag {
    Ports,
    Int,
    Text,
    Bool,
}

/// The port lists the stand-in serves; the others name features it does not have.
const SUPPORTED_PORT_FLAGS: &[&str] = &["port", "grpc", "tcp", "tls", "server-first"];

fn flag_kind(name: &str) -> Option<Flag> {
    Some(match name {
        "port" | "grpc" | "tcp" | "udp" | "hbone" | "double-hbone" | "tls" | "mtls" | "bind-ip"
        | "bind-localhost" | "server-first" | "proxy-protocol" | "xds-grpc-server"
        | "endpoint-picker" => Flag::Ports,
        "metrics" => Flag::Int,
        "uds"
        | "version"
        | "cluster"
        | "crt"
        | "key"
        | "ca"
        | "istio-version"
        | "tls-min-version"
        | "tls-curve-preferences"
        | "log_target"
        | "log_output_level"
        | "log_stacktrace_level"
        | "log_caller" => Flag::Text,
        "disable-alpn" | "log_as_json" | "help" => Flag::Bool,
        _ => return None,
    })
}

/// `strconv.ParseBool`
fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

impl IstioEcho {
    /// Parses the container's argv as the server binary's pflag set does: `--name=value` or
    /// `--name value`, bare booleans, a list flag's first use replacing its default and later
    /// ones (or commas) appending. Positional arguments are ignored, as cobra's root
    /// command ignores them.
    pub(super) fn from_spec(
        command: &[String],
        args: &[String],
        env: &[(String, String)],
        listen: SocketAddr,
    ) -> Result<Self, AppError> {
        // The entrypoint is /usr/local/bin/server; a command may restate it.
        let mut argv: Vec<&String> = command.iter().chain(args).collect();
        if let Some(program) = command.first() {
            if program != "server" && !program.ends_with("/server") {
                return Err(AppError::UnexpectedArgument {
                    image: IMAGE,
                    arg: program.clone(),
                });
            }
            argv.remove(0);
        }
        let mut lists: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        let mut texts: BTreeMap<String, String> = BTreeMap::new();
        let mut argv = argv.into_iter();
        while let Some(arg) = argv.next() {
            if arg == "--" {
                break;
            }
            let Some(flag) = arg.strip_prefix("--") else {
                if arg.len() > 1 && arg.starts_with('-') {
                    if arg == "-h" {
                        return Err(unsupported("--help (it prints usage and exits)"));
                    }
                    return Err(AppError::UnknownFlag {
                        image: IMAGE,
                        flag: arg.clone(),
                    });
                }
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (flag, None),
            };
            let Some(kind) = flag_kind(name) else {
                return Err(AppError::UnknownFlag {
                    image: IMAGE,
                    flag: arg.clone(),
                });
            };
            let bad = |value: &str, problem: String| AppError::BadFlagValue {
                image: IMAGE,
                flag: format!("--{name}"),
                value: value.to_string(),
                problem,
            };
            if let Flag::Bool = kind {
                let value = inline.unwrap_or("true");
                let on =
                    parse_bool(value).ok_or_else(|| bad(value, "is not a boolean".to_string()))?;
                if on && name == "help" {
                    return Err(unsupported("--help (it prints usage and exits)"));
                }
                continue;
            }
            let value = match inline {
                Some(value) => value,
                None => argv
                    .next()
                    .ok_or_else(|| AppError::MissingFlagValue {
                        image: IMAGE,
                        flag: arg.clone(),
                    })?
                    .as_str(),
            };
            match kind {
                Flag::Ports => {
                    for item in value.split(',') {
                        let number = go::atoi(item).map_err(|e| bad(value, e))?;
                        let port = u16::try_from(number)
                            .map_err(|_| bad(value, format!("{number} is not a port")))?;
                        lists.entry(name.to_string()).or_default().push(port);
                    }
                }
                Flag::Int => {
                    let metrics = go::atoi(value).map_err(|e| bad(value, e))?;
                    if metrics > 0 {
                        return Err(unsupported("the metrics port (--metrics)"));
                    }
                }
                Flag::Text => {
                    texts.insert(name.to_string(), value.to_string());
                }
                Flag::Bool => unreachable!("handled above"),
            }
        }
        if let Some(name) = lists
            .keys()
            .find(|name| !SUPPORTED_PORT_FLAGS.contains(&name.as_str()))
        {
            return Err(unsupported(&format!("--{name}")));
        }
        if texts.get("uds").is_some_and(|uds| !uds.is_empty()) {
            return Err(unsupported("the unix socket server (--uds)"));
        }
        // Unset lists keep their defaults: HTTP 8080, gRPC 7070, TCP 9090.
        let list = |name: &str, default: &[u16]| {
            lists.get(name).cloned().unwrap_or_else(|| default.to_vec())
        };
        let tls = list("tls", &[]);
        let plain = |ports: Vec<u16>| -> Vec<u16> {
            ports.into_iter().filter(|p| !tls.contains(p)).collect()
        };
        if !tls.is_empty() {
            warn!(ports = ?tls, "{IMAGE}: TLS ports are not opened: Ward's stand-in has no TLS");
        }
        let text = |name: &str| texts.get(name).cloned().unwrap_or_default();
        Ok(IstioEcho {
            listen,
            http_ports: plain(list("port", &[8080])),
            grpc_ports: plain(list("grpc", &[7070])),
            tcp_ports: plain(list("tcp", &[9090])),
            server_first_ports: list("server-first", &[]),
            version: text("version"),
            cluster: text("cluster"),
            istio_version: text("istio-version"),
            namespace: pod_env(env, "NAMESPACE").unwrap_or_default(),
            hostname: pod_env(env, "HOSTNAME").or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            }),
        })
    }
}

fn unsupported(what: &str) -> AppError {
    AppError::Unsupported {
        image: IMAGE,
        what: what.to_string(),
    }
}

/// What each listener serves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Role {
    Http,
    Grpc,
    Tcp,
}

/// Binds every port of `app` on the listen address's IP.
pub(super) async fn bind_all(app: &IstioEcho) -> anyhow::Result<Vec<(Role, TcpListener)>> {
    let ip = app.listen.ip();
    let mut ports: Vec<(Role, u16)> = app
        .http_ports
        .iter()
        .map(|p| (Role::Http, *p))
        .chain(app.grpc_ports.iter().map(|p| (Role::Grpc, *p)))
        .chain(app.tcp_ports.iter().map(|p| (Role::Tcp, *p)))
        .collect();
    if !ports.iter().any(|(_, port)| *port == app.listen.port()) {
        ports.push((Role::Http, app.listen.port()));
    }
    let mut listeners = Vec::new();
    for (role, port) in ports {
        listeners.push((role, bind(SocketAddr::new(ip, port)).await?));
    }
    Ok(listeners)
}

/// Serves each listener; `ServicePort=` is the port it is bound to, as the app reports the
/// port it actually got.
pub(super) async fn serve(
    app: IstioEcho,
    listeners: Vec<(Role, TcpListener)>,
) -> anyhow::Result<()> {
    let app = Arc::new(app);
    let mut servers: Vec<super::Server> = Vec::new();
    for (role, listener) in listeners {
        let port = listener.local_addr()?.port();
        let app = app.clone();
        servers.push(match role {
            Role::Http => Box::pin(serve_replies(
                listener,
                Protocols::Http1AndH2c,
                move |request, peer| http_handler(app.clone(), port, request, peer),
            )),
            Role::Grpc => Box::pin(serve_replies(
                listener,
                Protocols::H2c,
                move |request, peer| grpc_handler(app.clone(), port, request, peer),
            )),
            Role::Tcp => Box::pin(serve_tcp(app, port, listener)),
        });
    }
    serve_all(servers).await
}

/// `echo.Field.Write`: one `Key=Value` line.
fn field(body: &mut String, key: &str, value: &str) {
    body.push_str(key);
    body.push('=');
    body.push_str(value);
    body.push('\n');
}

fn field_non_empty(body: &mut String, key: &str, value: &str) {
    if !value.is_empty() {
        field(body, key, value);
    }
}

/// `?codes=500:1,200:3`: a status per request, drawn with the given weights. `Err` holds the
/// message; `Ok(None)` is a draw from zero total weight, where Go's `rand.Intn(0)` panics.
fn draw_code(codes: &str) -> Result<Option<u16>, String> {
    let codes = if codes.is_empty() { "200:1" } else { codes };
    let mut flavors: Vec<(u16, i64)> = Vec::new();
    for flavor in codes.split(',') {
        let parts: Vec<&str> = flavor.split(':').collect();
        if parts.len() > 2 {
            return Err(format!(
                "invalid {} (want code or code:count)",
                go::quote(flavor)
            ));
        }
        let code = go::atoi(parts[0])?;
        if !(200..600).contains(&code) {
            return Err(format!("invalid HTTP response code {code}"));
        }
        let count = match parts.get(1) {
            Some(count) => go::atoi(count)?,
            None => 1,
        };
        if count < 0 {
            return Err(format!("invalid count {count}"));
        }
        flavors.push((code as u16, count));
    }
    let total: i64 = flavors.iter().map(|(_, slices)| slices).sum();
    if total <= 0 {
        return Ok(None);
    }
    let slice = rand::rng().random_range(0..total);
    // The app's own walk over the pie, kept as written (it favours earlier codes by one).
    let mut code = flavors[flavors.len() - 1].0;
    let mut position = 0;
    for (n, (_, slices)) in flavors.iter().enumerate() {
        if position > slice {
            code = flavors[n - 1].0;
            break;
        }
        position += slices;
    }
    Ok(Some(code))
}

fn is_websocket(request: &Request<Incoming>) -> bool {
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    header("connection").contains("upgrade") && header("upgrade") == "websocket"
}

async fn http_handler(
    app: Arc<IstioEcho>,
    port: u16,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Reply {
    if is_websocket(&request) {
        warn!("{IMAGE}: WebSocket echo is not implemented by the stand-in");
        let mut response = Response::new(Full::new(Bytes::from_static(
            b"WebSocket echo is not implemented by Ward's stand-in\n",
        )));
        *response.status_mut() = StatusCode::NOT_IMPLEMENTED;
        return Reply::Respond(response);
    }
    let mut body = String::new();
    let (query, parse_error) = go::parse_query(request.uri().query().unwrap_or_default());
    if let Some(e) = parse_error {
        write_error(&mut body, format!("ParseForm() error: {e}"));
    }
    let delay = go::form_value(&query, "delay");
    if !delay.is_empty() {
        match go::parse_duration(delay) {
            Ok(duration) => tokio::time::sleep(duration).await,
            Err(e) => write_error(&mut body, format!("error delaying response error: {e}")),
        }
    }
    // `?headers=name:value,…` sets response headers, names as given.
    let mut headers = Vec::new();
    let wanted = go::form_value(&query, "headers");
    if !wanted.is_empty() {
        for pair in wanted.split(',') {
            let parts: Vec<&str> = pair.split(':').collect();
            let [name, value] = parts[..] else {
                let message = format!("invalid {} (want name:value)", go::quote(pair));
                write_error(&mut body, format!("response headers error: {message}"));
                break;
            };
            headers.push((name.to_string(), value.to_string()));
        }
    }
    let status = match draw_code(go::form_value(&query, "codes")) {
        Ok(Some(code)) => Some(code),
        Ok(None) => return Reply::Close,
        Err(e) => {
            write_error(&mut body, format!("codes error: {e}"));
            None
        }
    };
    add_payload(&app, port, &request, peer, &mut body);

    let mut response = Response::new(Full::new(Bytes::from(body)));
    if let Some(code) = status {
        *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    }
    let response_headers = response.headers_mut();
    for (name, value) in &headers {
        // Go writes a name it accepts as is, and trims the value.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            response_headers.insert(name, value);
        }
    }
    // The app sets `application/text` after choosing the status. Go applies a header set
    // after `WriteHeader` only if the handler had not touched the headers before, so with
    // `?headers=` the type is sniffed from the text instead.
    let content_type = if status.is_some() && !headers.is_empty() {
        "text/plain; charset=utf-8"
    } else {
        "application/text"
    };
    response_headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Reply::Respond(response)
}

/// `writeError`: the message becomes a line of the answer.
fn write_error(body: &mut String, message: String) {
    warn!("{IMAGE}: {message}");
    body.push_str(&message);
    body.push('\n');
}

/// `addResponsePayload`
fn add_payload(
    app: &IstioEcho,
    port: u16,
    request: &Request<Incoming>,
    peer: SocketAddr,
    body: &mut String,
) {
    field(body, "ServiceVersion", &app.version);
    field(body, "ServicePort", &port.to_string());
    field(body, "Host", &go::host(request));
    field(body, "URL", &go::request_uri(request));
    field_non_empty(body, "Cluster", &app.cluster);
    field_non_empty(body, "IstioVersion", &app.istio_version);
    field_non_empty(body, "Namespace", &app.namespace);
    field(body, "Method", request.method().as_str());
    field(body, "Proto", go::proto(request.version()));
    field(body, "IP", &peer.ip().to_string());
    for (name, values) in go::request_headers(request) {
        for value in values {
            field(body, "RequestHeader", &format!("{name}:{value}"));
        }
    }
    if let Some(hostname) = &app.hostname {
        field(body, "Hostname", hostname);
    }
}

/// `proto.EchoTestService` from `pkg/test/echo/proto/echo.proto`.
const GRPC_SERVICE: &str = "proto.EchoTestService";

#[derive(Clone, PartialEq, prost::Message)]
struct EchoMessage {
    #[prost(string, tag = "1")]
    message: String,
}

async fn grpc_handler(
    app: Arc<IstioEcho>,
    port: u16,
    request: Request<Incoming>,
    peer: SocketAddr,
) -> Reply<grpc::Body> {
    let call = match grpc::read_call(request).await {
        Ok(call) => call,
        Err(response) => return Reply::Respond(response),
    };
    match call.path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((GRPC_SERVICE, "Echo")) => {}
        Some((GRPC_SERVICE, "ForwardEcho")) => {
            return Reply::Respond(grpc::status(
                grpc::UNIMPLEMENTED,
                "ForwardEcho (the app's built-in client) is not implemented by Ward's stand-in",
            ))
        }
        _ => return Reply::Respond(grpc::unknown(&call.path, &[GRPC_SERVICE])),
    }
    let request = match <EchoMessage as prost::Message>::decode(call.message) {
        Ok(request) => request,
        Err(e) => {
            return Reply::Respond(grpc::status(
                grpc::INTERNAL,
                &format!("grpc: error unmarshalling request: {e}"),
            ))
        }
    };
    let mut body = String::new();
    for (key, value) in &call.metadata {
        // Binary metadata is left out, as the app does.
        if key.ends_with("-bin") {
            continue;
        }
        if key == ":authority" {
            field(&mut body, "Host", value);
        }
        field(&mut body, "RequestHeader", &format!("{key}:{value}"));
    }
    field(&mut body, "StatusCode", "200");
    field(&mut body, "ServiceVersion", &app.version);
    field(&mut body, "ServicePort", &port.to_string());
    field_non_empty(&mut body, "Cluster", &app.cluster);
    field_non_empty(&mut body, "Namespace", &app.namespace);
    field(&mut body, "IP", &peer.ip().to_string());
    field_non_empty(&mut body, "IstioVersion", &app.istio_version);
    field(&mut body, "Proto", "GRPC");
    field(&mut body, "Echo", &request.message);
    if let Some(hostname) = &app.hostname {
        field(&mut body, "Hostname", hostname);
    }
    Reply::Respond(grpc::ok(&EchoMessage { message: body }))
}

/// The magic greeting of a server-first TCP port (`common.ServerFirstMagicString`).
const SERVER_FIRST_MAGIC: &[u8] = b"server-first-protocol\n";
/// The app resets a TCP connection still open after this long.
const TCP_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

async fn serve_tcp(app: Arc<IstioEcho>, port: u16, listener: TcpListener) -> anyhow::Result<()> {
    let server_first = app.server_first_ports.contains(&port);
    loop {
        let (stream, peer) = crate::accept::next_connection(&listener, "echo tcp").await;
        let app = app.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let echoed = tokio::time::timeout(
                TCP_REQUEST_TIMEOUT,
                tcp_echo(&app, port, server_first, &mut stream, peer),
            )
            .await;
            let clean = matches!(echoed, Ok(Ok(())));
            if !clean {
                debug!(%peer, "tcp echo: resetting the connection");
                // A read error or the timeout: the app forces the close with a RST.
                let _ = stream.set_zero_linger();
            }
        });
    }
}

/// The first read, whatever it brings, is answered with the instance's fields; then every
/// byte read is written back until the client closes.
async fn tcp_echo(
    app: &IstioEcho,
    port: u16,
    server_first: bool,
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> std::io::Result<()> {
    if server_first {
        stream.write_all(SERVER_FIRST_MAGIC).await?;
    }
    let mut buffer = vec![0u8; 4096];
    let mut first = true;
    loop {
        let read = stream.read(&mut buffer).await;
        if first {
            first = false;
            let mut fields = String::new();
            field(&mut fields, "StatusCode", "200");
            field_non_empty(&mut fields, "Cluster", &app.cluster);
            field_non_empty(&mut fields, "IstioVersion", &app.istio_version);
            field_non_empty(&mut fields, "Namespace", &app.namespace);
            field(&mut fields, "ServiceVersion", &app.version);
            field(&mut fields, "ServicePort", &port.to_string());
            field(&mut fields, "IP", &peer.ip().to_string());
            field(&mut fields, "Proto", "TCP");
            if let Some(hostname) = &app.hostname {
                field(&mut fields, "Hostname", hostname);
            }
            if let Err(e) = stream.write_all(fields.as_bytes()).await {
                warn!(error = %e, "tcp echo: writing the response fields");
            }
        }
        match read? {
            0 => return stream.shutdown().await,
            n => stream.write_all(&buffer[..n]).await?,
        }
    }
}
