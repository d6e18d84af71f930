//! What a pod without a sidecar gets in Kubernetes, for `wardctl exec --no-mesh`: Service names
//! resolve (kube-dns) and a connection goes straight to one of the Service's pods on the
//! targetPort (kube-proxy), where that pod's sidecar listens; no identity, plaintext.
//!
//! The command's `http_proxy` points here. Each client connection is resolved once from its
//! first request head (absolute-form `GET http://exam-scheduler/ HTTP/1.1`, or `CONNECT`) and
//! then spliced to one upstream connection; later requests on it go to the same endpoint.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use ward_config::model::Mesh;

/// The namespace whose Services answer to their bare name: where `kubectl run` puts a pod.
pub const CLIENT_NAMESPACE: &str = "default";

/// Largest request head accepted, like common proxies' defaults.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A client that connects and sends no complete head within this is dropped.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Per endpoint; endpoints are on this machine, so anything slower is a dead one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Service host names and ports → the instance addresses (sidecar address : targetPort)
/// behind them, the way kube-dns and kube-proxy see them.
#[derive(Debug, Default)]
pub struct ServiceDirectory {
    /// Lowercase host name → service port → endpoints.
    hosts: HashMap<String, BTreeMap<u16, Vec<SocketAddr>>>,
    /// Round-robin position shared by every host.
    next: AtomicUsize,
}

/// Why a host:port has no endpoint to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    NoService {
        host: String,
    },
    NoPort {
        host: String,
        port: u16,
        ports: Vec<u16>,
    },
    NoEndpoints {
        host: String,
        port: u16,
    },
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupError::NoService { host } => {
                write!(f, "ward: no service named {host} in the mesh")
            }
            LookupError::NoPort { host, port, ports } => {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                write!(
                    f,
                    "ward: service {host} has no port {port} (it has {})",
                    ports.join(", ")
                )
            }
            LookupError::NoEndpoints { host, port } => {
                write!(
                    f,
                    "ward: service {host} has no running instance behind port {port}"
                )
            }
        }
    }
}

impl std::error::Error for LookupError {}

impl ServiceDirectory {
    /// Every Service of the mesh under the names a pod in [`CLIENT_NAMESPACE`] resolves; the
    /// cluster domain is the mesh's trust domain (`cluster.local` unless configured).
    pub fn from_mesh(mesh: &Mesh) -> Self {
        let mut directory = ServiceDirectory::default();
        for service in &mesh.services {
            let instances: Vec<_> = service
                .backends
                .iter()
                .filter_map(|(namespace, name)| mesh.workload(namespace, name))
                .flat_map(|workload| workload.instances.iter())
                .collect();
            for port in &service.ports {
                let endpoints = instances
                    .iter()
                    .map(|instance| SocketAddr::new(instance.address.into(), port.target_port))
                    .collect();
                directory.add_service_port(
                    &service.name,
                    &service.namespace,
                    &mesh.trust_domain,
                    port.port,
                    endpoints,
                );
            }
        }
        directory
    }

    /// Registers one Service port under `name.ns`, `name.ns.svc`, `name.ns.svc.<domain>` and,
    /// in [`CLIENT_NAMESPACE`], the bare `name`.
    pub fn add_service_port(
        &mut self,
        name: &str,
        namespace: &str,
        cluster_domain: &str,
        port: u16,
        endpoints: Vec<SocketAddr>,
    ) {
        let mut hosts = vec![
            format!("{name}.{namespace}"),
            format!("{name}.{namespace}.svc"),
            format!("{name}.{namespace}.svc.{cluster_domain}"),
        ];
        if namespace == CLIENT_NAMESPACE {
            hosts.push(name.to_string());
        }
        for host in hosts {
            self.hosts
                .entry(host.to_ascii_lowercase())
                .or_default()
                .insert(port, endpoints.clone());
        }
    }

    /// The endpoints behind host:port; the host is matched case-insensitively, with or
    /// without a trailing dot.
    pub fn resolve(&self, host: &str, port: u16) -> Result<&[SocketAddr], LookupError> {
        let host = normalize_host(host);
        let ports = self
            .hosts
            .get(&host)
            .ok_or_else(|| LookupError::NoService { host: host.clone() })?;
        let endpoints = ports.get(&port).ok_or_else(|| LookupError::NoPort {
            host: host.clone(),
            port,
            ports: ports.keys().copied().collect(),
        })?;
        if endpoints.is_empty() {
            return Err(LookupError::NoEndpoints { host, port });
        }
        Ok(endpoints)
    }

    /// The endpoints behind host:port, rotated so that successive calls start at successive
    /// endpoints (round robin); the caller tries them in order.
    pub fn endpoints_in_turn(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, LookupError> {
        let endpoints = self.resolve(host, port)?;
        let mut rotated = endpoints.to_vec();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % rotated.len();
        rotated.rotate_left(start);
        Ok(rotated)
    }

    /// One endpoint for host:port, round robin.
    pub fn pick(&self, host: &str, port: u16) -> Option<SocketAddr> {
        self.endpoints_in_turn(host, port).ok()?.first().copied()
    }
}

fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Accepts clients forever; each connection is handled on its own task.
pub async fn serve_no_mesh_proxy(
    listener: TcpListener,
    directory: Arc<RwLock<ServiceDirectory>>,
) -> anyhow::Result<()> {
    loop {
        let (client, peer) = crate::accept::next_connection(&listener, "no-mesh proxy").await;
        let directory = directory.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_client(client, &directory).await {
                debug!(%peer, error = %e, "no-mesh connection ended");
            }
        });
    }
}

/// Where the client asked to go, parsed from its first request head.
#[derive(Debug, PartialEq, Eq)]
enum Destination {
    /// `CONNECT host:port`: a tunnel, nothing is rewritten.
    Tunnel { host: String, port: u16 },
    /// A plain HTTP request; the head is forwarded with `request_line` in origin-form.
    Http {
        host: String,
        port: u16,
        request_line: String,
        /// `Host: <authority>` to add because the client sent none (HTTP/1.0).
        missing_host_header: Option<String>,
    },
}

impl Destination {
    fn host_port(&self) -> (&str, u16) {
        match self {
            Destination::Tunnel { host, port } | Destination::Http { host, port, .. } => {
                (host, *port)
            }
        }
    }
}

async fn handle_client(
    mut client: TcpStream,
    directory: &RwLock<ServiceDirectory>,
) -> anyhow::Result<()> {
    let (buffer, head_end) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await
    {
        Ok(Ok(Some(read))) => read,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(HeadError::TooLarge)) => {
            return reply_error(
                &mut client,
                "431 Request Header Fields Too Large",
                "ward: request head too large",
            )
            .await;
        }
        Ok(Err(HeadError::Io(e))) => return Err(e.into()),
        Err(_) => anyhow::bail!("no request head within {HEAD_TIMEOUT:?}"),
    };
    let head = &buffer[..head_end];
    let destination = match parse_destination(head) {
        Ok(destination) => destination,
        Err(message) => return reply_error(&mut client, "400 Bad Request", &message).await,
    };
    let (host, port) = destination.host_port();
    let candidates = directory
        .read()
        .expect("service directory lock")
        .endpoints_in_turn(host, port);
    let candidates = match candidates {
        Ok(candidates) => candidates,
        Err(e) => return reply_error(&mut client, "502 Bad Gateway", &e.to_string()).await,
    };
    let (mut upstream, endpoint) = match connect_first(&candidates).await {
        Ok(connected) => connected,
        Err(e) => {
            let message = format!("ward: cannot connect to {host}:{port}: {e}");
            return reply_error(&mut client, "502 Bad Gateway", &message).await;
        }
    };
    debug!(%host, port, %endpoint, "no-mesh connection");

    match &destination {
        Destination::Tunnel { .. } => {
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await?;
        }
        Destination::Http {
            request_line,
            missing_host_header,
            ..
        } => {
            let forwarded = rewrite_head(head, request_line, missing_host_header.as_deref());
            upstream.write_all(&forwarded).await?;
        }
    }
    // Whatever the client sent after the head (a body, a TLS hello) belongs to the upstream.
    upstream.write_all(&buffer[head_end..]).await?;
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok(_) => Ok(()),
        Err(e) => {
            // A pod connected straight to the sidecar would see its reset (a STRICT sidecar
            // resets a plaintext client): pass it on as a reset, not as a clean close.
            if e.kind() == std::io::ErrorKind::ConnectionReset {
                let _ = client.set_zero_linger();
            }
            Err(e.into())
        }
    }
}

enum HeadError {
    TooLarge,
    Io(std::io::Error),
}

/// Reads until the end of the request head: the bytes read and where the head ends.
/// `None` when the client closed without sending a complete head.
async fn read_head(client: &mut TcpStream) -> Result<Option<(Vec<u8>, usize)>, HeadError> {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = client.read(&mut chunk).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Ok(None);
        }
        // Only the new bytes (and 3 before them) can complete the terminator.
        let search_from = buffer.len().saturating_sub(3);
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer[search_from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            return Ok(Some((buffer, search_from + at + 4)));
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Reads the destination from the request line (and `Host` for origin-form requests).
fn parse_destination(head: &[u8]) -> Result<Destination, String> {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let request_line = std::str::from_utf8(&head[..line_end])
        .map_err(|_| "ward: the request line is not text".to_string())?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("ward: malformed request line {request_line:?}"));
    };
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_authority(target, 443)?;
        return Ok(Destination::Tunnel { host, port });
    }
    let host_header = header_value(head, "host");
    let (authority, path) = if let Some(rest) = strip_prefix_ignore_case(target, "http://") {
        let path_start = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(path_start);
        // Userinfo (`user@host`) is for the origin's auth, not part of the address.
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        let path = match path.chars().next() {
            None => "/".to_string(),
            Some('?') => format!("/{path}"),
            Some(_) => path.to_string(),
        };
        (authority.to_string(), path)
    } else if target.starts_with('/') {
        // Sent as to a server rather than a proxy: the Host header says where.
        let authority = host_header
            .clone()
            .ok_or_else(|| "ward: origin-form request without a Host header".to_string())?;
        (authority, target.to_string())
    } else {
        return Err(format!(
            "ward: only http:// URLs and CONNECT are proxied, not {target:?}"
        ));
    };
    let (host, port) = split_authority(&authority, 80)?;
    Ok(Destination::Http {
        host,
        port,
        request_line: format!("{method} {path} {version}"),
        missing_host_header: host_header.is_none().then_some(authority),
    })
}

/// `host[:port]` or `[v6]:port` → (host, port).
fn split_authority(authority: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad = || format!("ward: bad host:port {authority:?}");
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
        (format!("[{v6}]"), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        Some(port) => port.parse().map_err(|_| bad())?,
        None => default_port,
    };
    Ok((host, port))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The header lines of a head, without the request line and the final empty line.
fn header_lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .skip(1)
        .filter(|line| !line.is_empty())
}

fn header_name_is(line: &[u8], name: &str) -> bool {
    line.len() > name.len()
        && line[name.len()] == b':'
        && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
}

fn header_value(head: &[u8], name: &str) -> Option<String> {
    header_lines(head)
        .find(|line| header_name_is(line, name))
        .map(|line| {
            String::from_utf8_lossy(&line[name.len() + 1..])
                .trim()
                .to_string()
        })
}

/// The head as the upstream should see it: origin-form request line, headers byte for byte
/// except those addressed to the proxy itself.
fn rewrite_head(head: &[u8], request_line: &str, missing_host_header: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len());
    out.extend_from_slice(request_line.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(authority) = missing_host_header {
        out.extend_from_slice(format!("Host: {authority}\r\n").as_bytes());
    }
    for line in header_lines(head) {
        if header_name_is(line, "proxy-connection") || header_name_is(line, "proxy-authorization") {
            continue;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Connects to the first endpoint that accepts; the error names the last one tried.
async fn connect_first(candidates: &[SocketAddr]) -> Result<(TcpStream, SocketAddr), String> {
    let mut last_error = String::from("no endpoints");
    for &endpoint in candidates {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await {
            Ok(Ok(stream)) => return Ok((stream, endpoint)),
            Ok(Err(e)) => last_error = format!("{endpoint}: {e}"),
            Err(_) => last_error = format!("{endpoint}: timed out after {CONNECT_TIMEOUT:?}"),
        }
        debug!(%endpoint, error = %last_error, "no-mesh proxy: endpoint refused, trying the next");
    }
    Err(last_error)
}

async fn reply_error(client: &mut TcpStream, status: &str, message: &str) -> anyhow::Result<()> {
    let body = format!("{message}\n");
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAM_LAB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: exam-scheduler}
spec:
  replicas: 2
  selector: {matchLabels: {app: exam-scheduler}}
  template:
    metadata: {labels: {app: exam-scheduler}}
    spec:
      containers:
      - name: exam-scheduler
        image: alepispi/exam-scheduler:latest
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: exam-scheduler}
spec:
  selector: {app: exam-scheduler}
  ports: [{port: 80, targetPort: 8080}]
"#;

    #[test]
    fn directory_from_mesh_knows_every_dns_name_of_a_service() {
        let mesh = ward_config::load_str("exam.yaml", EXAM_LAB).unwrap().mesh;
        let workload = mesh.workload("default", "exam-scheduler").unwrap();
        let expected: Vec<SocketAddr> = workload
            .instances
            .iter()
            .map(|i| SocketAddr::new(i.address.into(), 8080))
            .collect();
        assert_eq!(expected.len(), 2);
        let directory = ServiceDirectory::from_mesh(&mesh);
        for host in [
            "exam-scheduler",
            "exam-scheduler.default",
            "exam-scheduler.default.svc",
            "exam-scheduler.default.svc.cluster.local",
            "exam-scheduler.default.svc.cluster.local.",
            "Exam-Scheduler.Default",
        ] {
            assert_eq!(directory.resolve(host, 80), Ok(&expected[..]), "{host}");
        }
        assert_eq!(
            directory.resolve("payroll", 80),
            Err(LookupError::NoService {
                host: "payroll".into()
            })
        );
        let no_port = directory.resolve("exam-scheduler", 8080).unwrap_err();
        assert_eq!(
            no_port.to_string(),
            "ward: service exam-scheduler has no port 8080 (it has 80)"
        );
    }

    #[test]
    fn bare_names_resolve_only_in_the_client_namespace() {
        let endpoint: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut directory = ServiceDirectory::default();
        directory.add_service_port("ledger", "finance", "cluster.local", 80, vec![endpoint]);
        assert!(directory.resolve("ledger", 80).is_err());
        assert_eq!(directory.resolve("ledger.finance", 80), Ok(&[endpoint][..]));
        directory.add_service_port("empty", "default", "cluster.local", 80, vec![]);
        assert_eq!(
            directory.resolve("empty", 80),
            Err(LookupError::NoEndpoints {
                host: "empty".into(),
                port: 80
            })
        );
    }

    #[test]
    fn round_robin_starts_at_successive_endpoints() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut directory = ServiceDirectory::default();
        directory.add_service_port("svc", "default", "cluster.local", 80, vec![a, b]);
        let picks: Vec<SocketAddr> = (0..4).map(|_| directory.pick("svc", 80).unwrap()).collect();
        assert_eq!(picks, [a, b, a, b]);
        assert_eq!(directory.endpoints_in_turn("svc", 80).unwrap(), [a, b]);
        assert_eq!(directory.endpoints_in_turn("svc", 80).unwrap(), [b, a]);
    }

    #[test]
    fn destinations_from_request_heads() {
        let http = |host: &str, port, line: &str, missing: Option<&str>| Destination::Http {
            host: host.into(),
            port,
            request_line: line.into(),
            missing_host_header: missing.map(String::from),
        };
        let cases = [
            (
                "GET http://exam-scheduler/ HTTP/1.1\r\nHost: exam-scheduler\r\n\r\n",
                http("exam-scheduler", 80, "GET / HTTP/1.1", None),
            ),
            (
                "POST http://exam-scheduler.default:8080 HTTP/1.1\r\nHost: x\r\n\r\n",
                http("exam-scheduler.default", 8080, "POST / HTTP/1.1", None),
            ),
            (
                "GET HTTP://a?x=1 HTTP/1.0\r\n\r\n",
                http("a", 80, "GET /?x=1 HTTP/1.0", Some("a")),
            ),
            (
                "GET http://user:pw@a:81/p/q?r HTTP/1.1\r\nhost: a:81\r\n\r\n",
                http("a", 81, "GET /p/q?r HTTP/1.1", None),
            ),
            (
                "GET /direct HTTP/1.1\r\nHost: svc:8080\r\n\r\n",
                http("svc", 8080, "GET /direct HTTP/1.1", None),
            ),
            (
                "CONNECT exam-scheduler:443 HTTP/1.1\r\nHost: exam-scheduler:443\r\n\r\n",
                Destination::Tunnel {
                    host: "exam-scheduler".into(),
                    port: 443,
                },
            ),
            (
                "CONNECT [::1]:8443 HTTP/1.1\r\n\r\n",
                Destination::Tunnel {
                    host: "[::1]".into(),
                    port: 8443,
                },
            ),
        ];
        for (head, expected) in cases {
            assert_eq!(parse_destination(head.as_bytes()), Ok(expected), "{head:?}");
        }
        for bad in [
            "GET https://a/ HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET http://a:http/ HTTP/1.1\r\n\r\n",
            "GET http:/// HTTP/1.1\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(parse_destination(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rewritten_head_keeps_headers_byte_for_byte_except_proxy_ones() {
        let head = b"GET http://a/x HTTP/1.1\r\nHost: a\r\nProxy-Connection: keep-alive\r\n\
                     X-Raw: caf\xe9\r\nproxy-authorization: Basic eA==\r\nAccept: */*\r\n\r\n";
        let rewritten = rewrite_head(head, "GET /x HTTP/1.1", None);
        assert_eq!(
            rewritten,
            b"GET /x HTTP/1.1\r\nHost: a\r\nX-Raw: caf\xe9\r\nAccept: */*\r\n\r\n".to_vec()
        );
        let rewritten = rewrite_head(
            b"GET http://a/ HTTP/1.0\r\n\r\n",
            "GET / HTTP/1.0",
            Some("a"),
        );
        assert_eq!(rewritten, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n".to_vec());
    }

    /// An upstream that answers each connection with what it received (head and the
    /// Content-Length body) as the body of a 200, then closes.
    async fn echo_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let Ok(Some((mut received, head_end))) = read_head(&mut socket).await else {
                        return;
                    };
                    let length: usize = header_value(&received[..head_end], "content-length")
                        .map_or(0, |v| v.parse().unwrap());
                    while received.len() < head_end + length {
                        let mut chunk = [0u8; 1024];
                        let n = socket.read(&mut chunk).await.unwrap();
                        received.extend_from_slice(&chunk[..n]);
                    }
                    let mut response = format!(
                        "HTTP/1.1 200 OK\r\nX-Upstream: {address}\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n",
                        received.len()
                    )
                    .into_bytes();
                    response.extend_from_slice(&received);
                    socket.write_all(&response).await.unwrap();
                });
            }
        });
        (address, task)
    }

    async fn start_proxy(directory: ServiceDirectory) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve_no_mesh_proxy(
            listener,
            Arc::new(RwLock::new(directory)),
        ));
        address
    }

    /// Sends raw bytes through the proxy and reads until it closes.
    async fn exchange(proxy: SocketAddr, request: &[u8]) -> String {
        let mut client = TcpStream::connect(proxy).await.unwrap();
        client.write_all(request).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut response))
            .await
            .expect("the proxy answers within 10 s")
            .unwrap();
        String::from_utf8_lossy(&response).into_owned()
    }

    #[tokio::test]
    async fn forwards_in_origin_form_with_body() {
        let (upstream, _task) = echo_upstream().await;
        let mut directory = ServiceDirectory::default();
        directory.add_service_port(
            "exam-scheduler",
            "default",
            "cluster.local",
            80,
            vec![upstream],
        );
        let proxy = start_proxy(directory).await;

        let body = r#"{"matricola": "s123456", "exam": "NCS"}"#;
        let request = format!(
            "POST http://exam-scheduler/exams?x=1 HTTP/1.1\r\nHost: exam-scheduler\r\n\
             User-Agent: curl/8\r\nProxy-Connection: Keep-Alive\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let response = exchange(proxy, request.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        let (_, received) = response.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            received,
            format!(
                "POST /exams?x=1 HTTP/1.1\r\nHost: exam-scheduler\r\nUser-Agent: curl/8\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        );
    }

    #[tokio::test]
    async fn every_dns_name_and_explicit_port_reach_the_service() {
        let (upstream, _task) = echo_upstream().await;
        let mut directory = ServiceDirectory::default();
        directory.add_service_port(
            "exam-scheduler",
            "default",
            "cluster.local",
            80,
            vec![upstream],
        );
        let proxy = start_proxy(directory).await;
        for url in [
            "http://exam-scheduler/",
            "http://exam-scheduler.default/",
            "http://exam-scheduler.default.svc/",
            "http://exam-scheduler.default.svc.cluster.local:80/",
        ] {
            let request = format!("GET {url} HTTP/1.1\r\nHost: x\r\n\r\n");
            let response = exchange(proxy, request.as_bytes()).await;
            assert!(response.starts_with("HTTP/1.1 200 OK"), "{url}: {response}");
            assert!(
                response.contains("\r\n\r\nGET / HTTP/1.1\r\n"),
                "{url}: {response}"
            );
        }
    }

    #[tokio::test]
    async fn connections_are_spread_over_the_endpoints() {
        let (first, _t1) = echo_upstream().await;
        let (second, _t2) = echo_upstream().await;
        let mut directory = ServiceDirectory::default();
        directory.add_service_port(
            "aura-api",
            "default",
            "cluster.local",
            80,
            vec![first, second],
        );
        let proxy = start_proxy(directory).await;
        let mut served_by = BTreeMap::new();
        for _ in 0..6 {
            let response = exchange(
                proxy,
                b"GET http://aura-api/ HTTP/1.1\r\nHost: aura-api\r\n\r\n",
            )
            .await;
            let upstream = response
                .lines()
                .find_map(|l| l.strip_prefix("X-Upstream: "))
                .unwrap()
                .to_string();
            *served_by.entry(upstream).or_insert(0) += 1;
        }
        assert_eq!(served_by.len(), 2, "{served_by:?}");
        assert!(served_by.values().all(|&n| n == 3), "{served_by:?}");
    }

    #[tokio::test]
    async fn unknown_host_gets_502_naming_it() {
        let proxy = start_proxy(ServiceDirectory::default()).await;
        let response = exchange(
            proxy,
            b"GET http://payroll/ HTTP/1.1\r\nHost: payroll\r\n\r\n",
        )
        .await;
        assert!(
            response.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
            "{response}"
        );
        assert!(
            response.ends_with("\r\n\r\nward: no service named payroll in the mesh\n"),
            "{response}"
        );
    }

    /// A loopback address where nothing listens.
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    #[tokio::test]
    async fn connection_failure_gets_502_with_the_error() {
        let dead = closed_port().await;
        let mut directory = ServiceDirectory::default();
        directory.add_service_port("broken", "default", "cluster.local", 80, vec![dead]);
        let proxy = start_proxy(directory).await;
        let response = exchange(
            proxy,
            b"GET http://broken/ HTTP/1.1\r\nHost: broken\r\n\r\n",
        )
        .await;
        assert!(
            response.starts_with("HTTP/1.1 502 Bad Gateway\r\n"),
            "{response}"
        );
        assert!(
            response.contains(&format!("ward: cannot connect to broken:80: {dead}: ")),
            "{response}"
        );
    }

    #[tokio::test]
    async fn a_dead_endpoint_is_skipped() {
        let dead = closed_port().await;
        let (alive, _task) = echo_upstream().await;
        let mut directory = ServiceDirectory::default();
        directory.add_service_port("svc", "default", "cluster.local", 80, vec![dead, alive]);
        let proxy = start_proxy(directory).await;
        for _ in 0..4 {
            let response = exchange(proxy, b"GET http://svc/ HTTP/1.1\r\nHost: svc\r\n\r\n").await;
            assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        }
    }

    #[tokio::test]
    async fn connect_tunnels_bytes_both_ways() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_address = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = upstream.accept().await.unwrap();
            let (mut read, mut write) = socket.split();
            tokio::io::copy(&mut read, &mut write).await.unwrap();
        });
        let mut directory = ServiceDirectory::default();
        directory.add_service_port(
            "secure",
            "default",
            "cluster.local",
            443,
            vec![upstream_address],
        );
        let proxy = start_proxy(directory).await;

        let mut client = TcpStream::connect(proxy).await.unwrap();
        // Bytes right behind the head (a TLS client hello, typically) must not be lost.
        client
            .write_all(b"CONNECT secure:443 HTTP/1.1\r\nHost: secure:443\r\n\r\nhello")
            .await
            .unwrap();
        let established = b"HTTP/1.1 200 Connection established\r\n\r\n";
        let mut reply = vec![0u8; established.len() + 5];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply[..established.len()], established);
        assert_eq!(&reply[established.len()..], b"hello");
        client.write_all(b" again").await.unwrap();
        let mut echoed = [0u8; 6];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b" again");
    }

    #[tokio::test]
    async fn malformed_request_gets_400() {
        let proxy = start_proxy(ServiceDirectory::default()).await;
        let response = exchange(proxy, b"GET ftp://a/ HTTP/1.1\r\n\r\n").await;
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{response}"
        );
    }
}
