//! The helloworld, echo-basic and Istio echo stand-ins: the pod specs of their manifests are
//! accepted, and each answers, on port 0, in exactly the format a user or a test reads.
//!
//! Deliberate differences from the real apps (see each module's docs): no TLS listeners, no
//! WebSocket echo, no gRPC `ForwardEcho` or reflection, `/hello` burns no CPU, and the pod
//! facts Kubernetes gives (`HOSTNAME`, `POD_NAME`, `NAMESPACE`) come from the container's env or
//! the runner's process env.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::echo_basic::{self, go};
use super::istio_echo;
use super::tests::{env, strings};
use super::*;

fn listen() -> SocketAddr {
    "127.0.0.9:5000".parse().unwrap()
}

async fn port0() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `head` (request line and headers, `\r\n`-separated, without the blank line) on a
/// fresh connection and reads until the server closes. `None`: closed or reset unanswered.
async fn exchange(address: SocketAddr, head: &str) -> Option<Raw> {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("the server answers or closes within 10 s");
    if read.is_err() || raw.is_empty() {
        return None;
    }
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    Some(Raw {
        status: head.split(' ').nth(1).unwrap().parse().unwrap(),
        head: head.to_string(),
        body: body.to_string(),
    })
}

async fn get(address: SocketAddr, path: &str) -> Raw {
    exchange(address, &format!("GET {path} HTTP/1.1\r\nHost: test"))
        .await
        .expect("an answer")
}

/// One HTTP/2 request with prior knowledge (h2c); the status, headers, body and trailers.
async fn h2(
    address: SocketAddr,
    request: hyper::Request<Full<Bytes>>,
) -> (
    hyper::http::response::Parts,
    Bytes,
    Option<hyper::HeaderMap>,
) {
    let stream = TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (parts, collected.to_bytes(), trailers)
}

/// A unary gRPC call with `message` (already encoded) over h2c.
async fn grpc_call(
    address: SocketAddr,
    path: &str,
    message: Vec<u8>,
) -> (
    hyper::http::response::Parts,
    Bytes,
    Option<hyper::HeaderMap>,
) {
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let request = hyper::Request::post(format!("http://grpc.test:7070{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-custom", "yes")
        .body(Full::new(Bytes::from(framed)))
        .unwrap();
    h2(address, request).await
}

fn unframe(body: &Bytes) -> Bytes {
    assert_eq!(body[0], 0, "uncompressed");
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    body.slice(5..5 + length)
}

// ---------------------------------------------------------------- helloworld

fn helloworld(image: &str, env_pairs: &[(&str, &str)]) -> StandIn {
    stand_in_for(image, &[], &[], &env(env_pairs), listen())
        .unwrap()
        .expect("a helloworld stand-in")
}

#[test]
fn helloworld_images_and_versions() {
    // samples/helloworld/helloworld.yaml: no command, args or env.
    assert_eq!(
        helloworld(
            "registry.istio.io/release/examples-helloworld-v1:1.0",
            &[("HOSTNAME", "helloworld-v1-6b9d7c8f4-x2x7q")]
        ),
        StandIn::Helloworld {
            listen: listen(),
            version: "v1".into(),
            hostname: Some("helloworld-v1-6b9d7c8f4-x2x7q".into()),
        }
    );
    for image in [
        "registry.istio.io/release/examples-helloworld-v2:1.0",
        "docker.io/istio/examples-helloworld-v2:latest",
        "istio/examples-helloworld-v2",
    ] {
        match helloworld(image, &[("HOSTNAME", "h")]) {
            StandIn::Helloworld { version, .. } => assert_eq!(version, "v2", "{image}"),
            other => panic!("{image}: {other:?}"),
        }
    }
    // gen-helloworld.sh runs the v1 image with SERVICE_VERSION set.
    match helloworld(
        "registry.istio.io/release/examples-helloworld-v1",
        &[("SERVICE_VERSION", "v3"), ("HOSTNAME", "h")],
    ) {
        StandIn::Helloworld { version, .. } => assert_eq!(version, "v3"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        stand_in_for(
            "registry.istio.io/release/examples-helloworld-v3",
            &[],
            &[],
            &[],
            listen()
        ),
        Ok(None)
    );
}

#[test]
fn helloworld_commands() {
    let spec = |command: &[&str], args: &[&str]| {
        stand_in_for(
            "registry.istio.io/release/examples-helloworld-v1:1.0",
            &strings(command),
            &strings(args),
            &[],
            listen(),
        )
    };
    // The Dockerfile's CMD, and its suggested IPv4 variant.
    assert!(spec(
        &["gunicorn", "-b", "[::]:5000", "app:app", "-k", "gevent"],
        &[]
    )
    .is_ok());
    assert!(spec(
        &[],
        &[
            "gunicorn",
            "-b",
            "[0.0.0.0]:5000",
            "app:app",
            "-k",
            "gevent"
        ]
    )
    .is_ok());
    assert!(spec(&["python", "app.py"], &[]).is_ok());
    assert!(matches!(
        spec(&["sleep", "3600"], &[]),
        Err(AppError::UnexpectedArgument { .. })
    ));
    assert!(matches!(
        spec(&["gunicorn", "--reload", "app:app"], &[]),
        Err(AppError::UnknownFlag { .. })
    ));
    assert!(matches!(
        spec(&["gunicorn", "app:app", "-b"], &[]),
        Err(AppError::MissingFlagValue { .. })
    ));
}

#[tokio::test]
async fn helloworld_answers_like_flask() {
    let (listener, address) = port0().await;
    tokio::spawn(serve_stand_in(
        StandIn::Helloworld {
            listen: listen(),
            version: "v2".into(),
            hostname: Some("helloworld-v2-7d5b8b6c9-pq4kz".into()),
        },
        listener,
    ));
    let hello = get(address, "/hello?ignored=1").await;
    assert_eq!(hello.status, 200);
    assert_eq!(
        hello.body,
        "Hello version: v2, instance: helloworld-v2-7d5b8b6c9-pq4kz\n"
    );
    assert_eq!(
        hello.header("content-type"),
        Some("text/html; charset=utf-8")
    );

    let health = get(address, "/health").await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, "Helloworld is healthy")
    );

    let not_found = "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n\
                     <h1>Not Found</h1>\n<p>The requested URL was not found on the server. If \
                     you entered the URL manually please check your spelling and try again.</p>\n";
    for path in ["/", "/hello/", "/productpage"] {
        let response = get(address, path).await;
        assert_eq!(
            (response.status, response.body.as_str()),
            (404, not_found),
            "{path}"
        );
    }

    let post = exchange(
        address,
        "POST /hello HTTP/1.1\r\nHost: test\r\nContent-Length: 0",
    )
    .await
    .unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(
        post.body,
        "<!doctype html>\n<html lang=en>\n<title>405 Method Not Allowed</title>\n\
         <h1>Method Not Allowed</h1>\n<p>The method is not allowed for the requested URL.</p>\n"
    );
    assert_eq!(post.header("allow"), Some("GET, HEAD, OPTIONS"));

    let options = exchange(address, "OPTIONS /hello HTTP/1.1\r\nHost: test")
        .await
        .unwrap();
    assert_eq!((options.status, options.body.as_str()), (200, ""));
    assert_eq!(options.header("allow"), Some("GET, HEAD, OPTIONS"));

    let head = exchange(address, "HEAD /hello HTTP/1.1\r\nHost: test")
        .await
        .unwrap();
    assert_eq!((head.status, head.body.as_str()), (200, ""));
}

#[tokio::test]
async fn helloworld_without_hostname_prints_none() {
    let (listener, address) = port0().await;
    tokio::spawn(serve_stand_in(
        StandIn::Helloworld {
            listen: listen(),
            version: "v1".into(),
            hostname: None,
        },
        listener,
    ));
    assert_eq!(
        get(address, "/hello").await.body,
        "Hello version: v1, instance: None\n"
    );
}

// ---------------------------------------------------------------- echo-basic

const ECHO_BASIC: &str = "registry.k8s.io/gateway-api/conformance/echo-basic:v0.1.0";

fn echo_basic_spec(env_pairs: &[(&str, &str)]) -> EchoBasic {
    match stand_in_for(ECHO_BASIC, &[], &[], &env(env_pairs), listen()) {
        Ok(Some(StandIn::EchoBasic(app))) => app,
        other => panic!("{other:?}"),
    }
}

/// The containers of the suite's base manifests as Ward reads them: the `valueFrom`
/// variables (POD_NAME, NAMESPACE) are not in the container env.
#[test]
fn echo_basic_accepts_the_conformance_manifests() {
    let listen = listen();
    // infra-backend-v1..3, app-backend-v1/v2, web-backend
    let http = echo_basic_spec(&[]);
    assert_eq!(
        http.mode,
        EchoBasicMode::Http {
            http_port: 3000,
            h2c_port: 3001,
            http_port_text: "3000".into()
        }
    );
    assert_eq!(http.listen, listen);
    // tls-backend, tls-backend-2: the HTTPS listener is not opened, the rest runs.
    let tls = echo_basic_spec(&[
        ("TLS_SERVER_CERT", "/etc/secret-volume/crt"),
        ("TLS_SERVER_PRIVKEY", "/etc/secret-volume/key"),
    ]);
    assert_eq!(tls.mode, http.mode);
    // grpc-infra-backend-v1 (with TLS variables), -v2, -v3
    for extra in [
        &[
            ("TLS_SERVER_CERT", "/etc/secret-volume/crt"),
            ("TLS_SERVER_PRIV_KEY", "/etc/secret-volume/key"),
        ][..],
        &[],
    ] {
        let mut pairs = vec![("GRPC_ECHO_SERVER", "1")];
        pairs.extend_from_slice(extra);
        assert_eq!(
            echo_basic_spec(&pairs).mode,
            EchoBasicMode::Grpc { http_port: 3000 }
        );
    }
    // tcp-backend
    assert_eq!(
        echo_basic_spec(&[
            ("TLS_SERVER_CERT", "/etc/secret-volume/crt"),
            ("TLS_SERVER_PRIV_KEY", "/etc/secret-volume/key"),
            ("TCP_ECHO_SERVER", "1"),
        ])
        .mode,
        EchoBasicMode::Tcp {
            tcp_port: 3000,
            tcp_port_text: "3000".into(),
            tls_port_text: "8443".into()
        }
    );
    // The pod facts, when the runner provides them.
    let app = echo_basic_spec(&[
        ("POD_NAME", "infra-backend-v1-5f6d8b7c9-abcde"),
        ("NAMESPACE", "gateway-conformance-infra"),
        ("HTTP_PORT", "8080"),
    ]);
    assert_eq!(app.context.pod, "infra-backend-v1-5f6d8b7c9-abcde");
    assert_eq!(app.context.namespace, "gateway-conformance-infra");
    assert!(matches!(
        app.mode,
        EchoBasicMode::Http {
            http_port: 8080,
            ..
        }
    ));

    for image in [
        "gcr.io/k8s-staging-gateway-api/echo-basic:v20240412-v1.0.0-394-g40c666fd",
        "registry.k8s.io/gateway-api/echo-basic:v1.1.0",
    ] {
        assert!(matches!(
            stand_in_for(image, &[], &[], &[], listen),
            Ok(Some(StandIn::EchoBasic(_)))
        ));
    }
    assert!(matches!(
        stand_in_for(ECHO_BASIC, &[], &[], &env(&[("HTTP_PORT", "http")]), listen),
        Err(AppError::BadEnv {
            name: "HTTP_PORT",
            ..
        })
    ));
    assert!(matches!(
        stand_in_for(
            ECHO_BASIC,
            &[],
            &[],
            &env(&[("UDP_ECHO_SERVER", "1")]),
            listen
        ),
        Err(AppError::Unsupported { .. })
    ));
    assert!(matches!(
        stand_in_for(ECHO_BASIC, &strings(&["sh"]), &[], &[], listen),
        Err(AppError::UnexpectedArgument { .. })
    ));
}

fn echo_basic_app(mode: EchoBasicMode) -> EchoBasic {
    EchoBasic {
        listen: listen(),
        mode,
        context: PodContext {
            namespace: "gateway-conformance-infra".into(),
            ingress: String::new(),
            service: String::new(),
            pod: "infra-backend-v1-5f6d8b7c9-abcde".into(),
        },
    }
}

fn http_mode() -> EchoBasicMode {
    EchoBasicMode::Http {
        http_port: 3000,
        h2c_port: 3001,
        http_port_text: "3000".into(),
    }
}

/// echo-basic in HTTP mode: the addresses of its HTTP and h2c ports.
async fn start_echo_basic() -> (SocketAddr, SocketAddr) {
    let (http, http_address) = port0().await;
    let (h2c, h2c_address) = port0().await;
    tokio::spawn(echo_basic::serve(
        echo_basic_app(http_mode()),
        vec![(echo_basic::Role::Http, http), (echo_basic::Role::H2c, h2c)],
    ));
    (http_address, h2c_address)
}

#[tokio::test]
async fn echo_basic_echoes_the_request_as_indented_json() {
    let (http, _) = start_echo_basic().await;
    let response = exchange(
        http,
        "GET /backend/v1?x=1&y=%3C HTTP/1.1\r\nHost: gateway.example:8080\r\n\
         x-header-set: first\r\nX-Header-Set: second\r\nUser-Agent: <go>",
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        response.body,
        r#"{
 "path": "/backend/v1?x=1\u0026y=%3C",
 "host": "gateway.example:8080",
 "method": "GET",
 "proto": "HTTP/1.1",
 "headers": {
  "Connection": [
   "close"
  ],
  "User-Agent": [
   "\u003cgo\u003e"
  ],
  "X-Header-Set": [
   "first",
   "second"
  ]
 },
 "httpPort": "3000",
 "namespace": "gateway-conformance-infra",
 "ingress": "",
 "service": "",
 "pod": "infra-backend-v1-5f6d8b7c9-abcde"
}"#
    );
}

#[tokio::test]
async fn echo_basic_sets_the_response_headers_asked_for() {
    let (http, _) = start_echo_basic().await;
    let response = exchange(
        http,
        "GET / HTTP/1.1\r\nHost: test\r\n\
         X-Echo-Set-Header: X-Header-Set-1:set-1, X-Header-Set-2:set-2\r\n\
         X-Echo-Set-Header: X-Header-Set-1: again",
    )
    .await
    .unwrap();
    assert_eq!(response.header("x-header-set-1"), Some("set-1,again"));
    assert_eq!(response.header("x-header-set-2"), Some("set-2"));
    // The conformance client always sends the header, empty unless it wants something.
    let plain = exchange(http, "GET / HTTP/1.1\r\nHost: test\r\nX-Echo-Set-Header: ")
        .await
        .unwrap();
    assert_eq!(plain.status, 200);
    let echoed: serde_json::Value = serde_json::from_str(&plain.body).unwrap();
    assert_eq!(echoed["headers"]["X-Echo-Set-Header"][0], "");
}

#[tokio::test]
async fn echo_basic_health_status_and_go_mux_redirects() {
    let (http, _) = start_echo_basic().await;
    let health = get(http, "/health").await;
    assert_eq!((health.status, health.body.as_str()), (200, "OK"));
    // preserveSlashes folds `//` before the mux sees the path.
    assert_eq!(get(http, "//health").await.body, "OK");
    assert_eq!(get(http, "/status/503").await.status, 503);
    assert_eq!(get(http, "/status/418").await.status, 418);
    // The status regexp runs on the whole request URI.
    assert_eq!(get(http, "/status/503?x=1").await.status, 400);
    assert_eq!(get(http, "/status/5030").await.status, 400);

    let into_subtree = get(http, "/status").await;
    assert_eq!(into_subtree.status, 301);
    assert_eq!(into_subtree.header("location"), Some("/status/"));
    assert_eq!(
        into_subtree.body,
        "<a href=\"/status/\">Moved Permanently</a>.\n\n"
    );
    let cleaned = get(http, "/a/../health?x=1").await;
    assert_eq!(cleaned.status, 301);
    assert_eq!(cleaned.header("location"), Some("/health?x=1"));

    let websocket = get(http, "/ws").await;
    assert_eq!(
        (websocket.status, websocket.body.as_str()),
        (400, "not websocket protocol")
    );
}

#[tokio::test]
async fn echo_basic_delay_and_its_errors() {
    let (http, _) = start_echo_basic().await;
    let started = Instant::now();
    assert_eq!(get(http, "/?delay=150ms").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    let bad = get(http, "/?delay=soon").await;
    assert_eq!(bad.status, 500);
    assert_eq!(bad.body, r#"{"message":"time: invalid duration \"soon\""}"#);
    assert_eq!(bad.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn echo_basic_retry_simulator() {
    let (http, _) = start_echo_basic().await;
    let path = "/retry/x?responseCode=503&succeedAfter=2&uuid=u-1";
    assert_eq!(get(http, path).await.status, 503);
    assert_eq!(get(http, path).await.status, 503);
    let third = get(http, path).await;
    assert_eq!(third.status, 200);
    let echoed: serde_json::Value = serde_json::from_str(&third.body).unwrap();
    assert_eq!(
        echoed["path"],
        "/retry/x?responseCode=503&succeedAfter=2&uuid=u-1"
    );

    // Without responseCode the failing attempts are TCP resets.
    let reset = "/retry/y?succeedAfter=1&uuid=u-2";
    let mut stream = TcpStream::connect(http).await.unwrap();
    stream
        .write_all(format!("GET {reset} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buffer = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
        .await
        .unwrap();
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    assert_eq!(get(http, reset).await.status, 200);

    let missing = get(http, "/retry/z?succeedAfter=1").await;
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (400, "uuid is required")
    );
    let no_count = get(http, "/retry/z?uuid=u-3").await;
    assert_eq!(
        (no_count.status, no_count.body.as_str()),
        (400, "succeedAfter is required")
    );
}

#[tokio::test]
async fn echo_basic_h2c_port() {
    let (_, h2c) = start_echo_basic().await;
    let refused = get(h2c, "/").await;
    assert_eq!(
        (refused.status, refused.body.as_str()),
        (400, "Expected h2c request")
    );
    // An HTTP/1.1 request that offers the upgrade is echoed (Go never upgrades it).
    let upgrade = exchange(h2c, "GET /h1 HTTP/1.1\r\nHost: test\r\nUpgrade: h2c")
        .await
        .unwrap();
    assert_eq!(upgrade.status, 200);
    assert!(upgrade.body.contains(r#""proto": "HTTP/1.1""#));

    let request = hyper::Request::get("http://h2c.example:8081/health?x=1")
        .header("x-header-set", "h2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (parts, body, _) = h2(h2c, request).await;
    assert_eq!(parts.status, 200);
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    // No mux on this port: /health is echoed too.
    assert_eq!(echoed["path"], "/health?x=1");
    assert_eq!(echoed["host"], "h2c.example:8081");
    assert_eq!(echoed["proto"], "HTTP/2.0");
    assert_eq!(echoed["headers"]["X-Header-Set"][0], "h2");
    assert_eq!(echoed["pod"], "infra-backend-v1-5f6d8b7c9-abcde");
}

#[tokio::test]
async fn echo_basic_tcp_mode() {
    let (listener, address) = port0().await;
    tokio::spawn(serve_stand_in(
        StandIn::EchoBasic(echo_basic_app(EchoBasicMode::Tcp {
            tcp_port: 3000,
            tcp_port_text: "3000".into(),
            tls_port_text: "8443".into(),
        })),
        listener,
    ));
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"PING\nignored\nIS_TLS\r\nTEST\n")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert_eq!(
        answer,
        "Gateway API Test TCP Server\nPONG\nfalse\n\
         {\"namespace\":\"gateway-conformance-infra\",\"ingress\":\"\",\"service\":\"\",\
         \"pod\":\"infra-backend-v1-5f6d8b7c9-abcde\",\"tcpport\":\"3000\",\"tlsport\":\"8443\",\
         \"isTLS\":false}\n"
    );
}

#[tokio::test]
async fn echo_basic_grpc_mode() {
    let (listener, address) = port0().await;
    tokio::spawn(serve_stand_in(
        StandIn::EchoBasic(echo_basic_app(EchoBasicMode::Grpc { http_port: 3000 })),
        listener,
    ));
    let service = "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";
    let (parts, body, trailers) = grpc_call(address, &format!("{service}/EchoTwo"), vec![]).await;
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["content-type"], "application/grpc");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    let response =
        <super::echo_basic::pb::EchoResponse as prost::Message>::decode(unframe(&body)).unwrap();
    let assertions = response.assertions.unwrap();
    assert_eq!(
        assertions.fully_qualified_method,
        format!("{service}/EchoTwo")
    );
    assert_eq!(assertions.authority, "grpc.test:7070");
    let context = assertions.context.unwrap();
    assert_eq!(context.pod, "infra-backend-v1-5f6d8b7c9-abcde");
    assert_eq!(context.namespace, "gateway-conformance-infra");
    let headers: Vec<(String, String)> = assertions
        .headers
        .into_iter()
        .map(|h| (h.key, h.value))
        .collect();
    assert!(headers.contains(&(":authority".into(), "grpc.test:7070".into())));
    assert!(headers.contains(&("x-custom".into(), "yes".into())));
    assert!(!headers
        .iter()
        .any(|(k, _)| k == "content-type" || k == "te"));

    let (parts, _, _) = grpc_call(address, &format!("{service}/EchoThree"), vec![]).await;
    assert_eq!(parts.headers["grpc-status"], "12");
    assert_eq!(
        parts.headers["grpc-message"],
        "method EchoThree not implemented"
    );
    let (parts, _, _) = grpc_call(address, "/other.Service/Echo", vec![]).await;
    assert_eq!(
        parts.headers["grpc-message"],
        "unknown service other.Service"
    );
}

#[tokio::test]
async fn echo_basic_binds_its_ports_on_the_listen_ip() {
    let app = EchoBasic {
        listen: "127.0.0.1:0".parse().unwrap(),
        mode: EchoBasicMode::Http {
            http_port: 0,
            h2c_port: 0,
            http_port_text: "0".into(),
        },
        context: PodContext::default(),
    };
    let listeners = echo_basic::bind_all(&app).await.unwrap();
    let roles: Vec<_> = listeners.iter().map(|(role, _)| *role).collect();
    assert_eq!(roles, [echo_basic::Role::Http, echo_basic::Role::H2c]);
    for (_, listener) in &listeners {
        assert!(listener.local_addr().unwrap().ip().is_loopback());
    }
}

#[test]
fn go_durations() {
    let ok = |text| go::parse_duration(text).unwrap();
    assert_eq!(ok("0"), Duration::ZERO);
    assert_eq!(ok("1s"), Duration::from_secs(1));
    assert_eq!(ok("1.5s"), Duration::from_millis(1500));
    assert_eq!(ok(".5s"), Duration::from_millis(500));
    assert_eq!(ok("1h30m"), Duration::from_secs(5400));
    assert_eq!(ok("300ms"), Duration::from_millis(300));
    assert_eq!(ok("2µs"), Duration::from_micros(2));
    assert_eq!(ok("+1s"), Duration::from_secs(1));
    assert_eq!(ok("-1s"), Duration::ZERO);
    assert_eq!(
        go::parse_duration("1").unwrap_err(),
        r#"time: missing unit in duration "1""#
    );
    assert_eq!(
        go::parse_duration("1x").unwrap_err(),
        r#"time: unknown unit "x" in duration "1x""#
    );
    // Go reads `1.` as a number, then finds no unit.
    assert_eq!(
        go::parse_duration("1..2s").unwrap_err(),
        r#"time: missing unit in duration "1..2s""#
    );
    for bad in ["", "s", ".s", "-", "9999999999999h"] {
        assert_eq!(
            go::parse_duration(bad).unwrap_err(),
            format!("time: invalid duration {bad:?}"),
            "{bad}"
        );
    }
}

#[test]
fn go_query_and_paths() {
    let (pairs, error) = go::parse_query("a=1&b=%zz&c=x+y&d;e=2&a=3");
    assert_eq!(
        pairs,
        [
            ("a".to_string(), "1".to_string()),
            ("c".to_string(), "x y".to_string()),
            ("a".to_string(), "3".to_string()),
        ]
    );
    assert_eq!(error.as_deref(), Some(r#"invalid URL escape "%zz""#));
    assert_eq!(go::form_value(&pairs, "a"), "1");
    assert_eq!(go::clean_path("/a/./b/../c/"), "/a/c/");
    assert_eq!(go::clean_path("/../x"), "/x");
    assert_eq!(
        go::canonical_header_key("x-forwarded-for"),
        "X-Forwarded-For"
    );
    assert_eq!(
        go::atoi("12x").unwrap_err(),
        r#"strconv.Atoi: parsing "12x": invalid syntax"#
    );
}

// ---------------------------------------------------------------- Istio echo

const ECHO_ADVANCED: &str = "registry.k8s.io/gateway-api/conformance/echo-advanced:v0.1.0";

fn istio_echo(command: &[&str], args: &[&str]) -> Result<IstioEcho, AppError> {
    match stand_in_for(
        ECHO_ADVANCED,
        &strings(command),
        &strings(args),
        &env(&[("HOSTNAME", "echo-v1-7d9c6b5f4-zx8kq")]),
        listen(),
    )? {
        Some(StandIn::IstioEcho(app)) => Ok(app),
        other => panic!("{other:?}"),
    }
}

#[test]
fn istio_echo_accepts_the_mesh_manifests() {
    // echo-v1 and echo-v2 of the mesh suite's manifests.
    let app = istio_echo(
        &[],
        &[
            "--tcp=9090",
            "--port=8080",
            "--grpc=7070",
            "--port=8443",
            "--tls=8443",
            "--crt=/cert.crt",
            "--key=/cert.key",
        ],
    )
    .unwrap();
    assert_eq!(app.http_ports, [8080], "8443 is TLS, which is not served");
    assert_eq!(app.grpc_ports, [7070]);
    assert_eq!(app.tcp_ports, [9090]);
    assert_eq!(app.version, "");
    assert_eq!(app.hostname.as_deref(), Some("echo-v1-7d9c6b5f4-zx8kq"));
    // The third Deployment has no args: the flags' defaults.
    let defaults = istio_echo(&[], &[]).unwrap();
    assert_eq!(
        (defaults.http_ports, defaults.grpc_ports, defaults.tcp_ports),
        (vec![8080], vec![7070], vec![9090])
    );
    for image in [
        "gcr.io/istio-release/app:1.30.3",
        "docker.io/istio/app:1.22.0",
        "gcr.io/k8s-staging-gateway-api/echo-advanced:v20240412",
    ] {
        assert!(matches!(
            stand_in_for(image, &[], &[], &[], listen()),
            Ok(Some(StandIn::IstioEcho(_)))
        ));
    }
}

#[test]
fn istio_echo_flags_as_pflag_reads_them() {
    let app = istio_echo(
        &["/usr/local/bin/server"],
        &[
            "--port",
            "80",
            "--port=81,82",
            "--tcp=9000",
            "--server-first=9000",
            "--version=v2",
            "--cluster",
            "cluster-1",
            "--istio-version=1.30",
            "--disable-alpn",
            "--log_as_json=false",
            "--log_output_level=default:info",
            "positional",
        ],
    )
    .unwrap();
    assert_eq!(app.http_ports, [80, 81, 82]);
    assert_eq!(app.grpc_ports, [7070]);
    assert_eq!(app.tcp_ports, [9000]);
    assert_eq!(app.server_first_ports, [9000]);
    assert_eq!(
        (
            app.version.as_str(),
            app.cluster.as_str(),
            app.istio_version.as_str()
        ),
        ("v2", "cluster-1", "1.30")
    );

    let error = |args: &[&str]| istio_echo(&[], args).unwrap_err();
    assert_eq!(
        error(&["--bogus=1"]),
        AppError::UnknownFlag {
            image: "istio/app",
            flag: "--bogus=1".into()
        }
    );
    assert!(matches!(
        error(&["-port=8080"]),
        AppError::UnknownFlag { .. }
    ));
    assert!(matches!(
        error(&["--port"]),
        AppError::MissingFlagValue { .. }
    ));
    assert_eq!(
        error(&["--port=80x"]),
        AppError::BadFlagValue {
            image: "istio/app",
            flag: "--port".into(),
            value: "80x".into(),
            problem: r#"strconv.Atoi: parsing "80x": invalid syntax"#.into()
        }
    );
    assert!(matches!(
        error(&["--port=70000"]),
        AppError::BadFlagValue { .. }
    ));
    assert!(matches!(
        error(&["--disable-alpn=maybe"]),
        AppError::BadFlagValue { .. }
    ));
    for unsupported in [
        &["--udp=5000"][..],
        &["--hbone=15008"],
        &["--mtls=8443"],
        &["--uds=/tmp/s"],
        &["--metrics=15014"],
        &["--bind-localhost=8080"],
        &["-h"],
    ] {
        assert!(
            matches!(error(unsupported), AppError::Unsupported { .. }),
            "{unsupported:?}"
        );
    }
    assert!(matches!(
        istio_echo(&["sh", "-c"], &["sleep 10"]),
        Err(AppError::UnexpectedArgument { .. })
    ));
}

fn istio_app() -> IstioEcho {
    IstioEcho {
        listen: listen(),
        http_ports: vec![8080],
        grpc_ports: vec![7070],
        tcp_ports: vec![9090],
        server_first_ports: vec![],
        version: "v1".into(),
        cluster: String::new(),
        istio_version: String::new(),
        namespace: String::new(),
        hostname: Some("echo-v1-7d9c6b5f4-zx8kq".into()),
    }
}

async fn start_istio_echo(app: IstioEcho) -> (SocketAddr, SocketAddr, SocketAddr) {
    let (http, http_address) = port0().await;
    let (grpc, grpc_address) = port0().await;
    let (tcp, tcp_address) = port0().await;
    tokio::spawn(istio_echo::serve(
        app,
        vec![
            (istio_echo::Role::Http, http),
            (istio_echo::Role::Grpc, grpc),
            (istio_echo::Role::Tcp, tcp),
        ],
    ));
    (http_address, grpc_address, tcp_address)
}

#[tokio::test]
async fn istio_echo_http_lines() {
    let (http, _, _) = start_istio_echo(istio_app()).await;
    let response = exchange(
        http,
        "GET /path?x=1 HTTP/1.1\r\nHost: echo\r\nx-b: 2\r\nX-A: 1\r\nx-a: 0",
    )
    .await
    .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/text"));
    assert_eq!(
        response.body,
        format!(
            "ServiceVersion=v1\nServicePort={}\nHost=echo\nURL=/path?x=1\nMethod=GET\n\
             Proto=HTTP/1.1\nIP=127.0.0.1\nRequestHeader=Connection:close\n\
             RequestHeader=X-A:1\nRequestHeader=X-A:0\nRequestHeader=X-B:2\n\
             Hostname=echo-v1-7d9c6b5f4-zx8kq\n",
            http.port()
        )
    );

    let mut with_namespace = istio_app();
    with_namespace.namespace = "gateway-conformance-mesh".into();
    with_namespace.cluster = "c1".into();
    let (http, _, _) = start_istio_echo(with_namespace).await;
    let body = get(http, "/").await.body;
    assert!(
        body.contains("URL=/\nCluster=c1\nNamespace=gateway-conformance-mesh\nMethod=GET\n"),
        "{body}"
    );
}

#[tokio::test]
async fn istio_echo_codes_headers_and_errors() {
    let (http, _, _) = start_istio_echo(istio_app()).await;
    assert_eq!(get(http, "/?codes=503").await.status, 503);
    assert_eq!(get(http, "/?codes=418:1").await.status, 418);
    let weighted: Vec<u16> = {
        let mut seen = Vec::new();
        for _ in 0..40 {
            seen.push(get(http, "/?codes=500:1,200:1").await.status);
        }
        seen
    };
    assert!(
        weighted.contains(&500) && weighted.contains(&200),
        "{weighted:?}"
    );

    let headers = get(http, "/?headers=X-Reply:yes,Cache-Control:no-store").await;
    assert_eq!(headers.header("x-reply"), Some("yes"));
    assert_eq!(headers.header("cache-control"), Some("no-store"));
    assert_eq!(
        headers.header("content-type"),
        Some("text/plain; charset=utf-8")
    );

    let bad = get(http, "/?codes=abc&headers=oops&delay=soon").await;
    assert_eq!(bad.status, 200);
    assert_eq!(bad.header("content-type"), Some("application/text"));
    assert!(bad.body.starts_with(
        "error delaying response error: time: invalid duration \"soon\"\n\
         response headers error: invalid \"oops\" (want name:value)\n\
         codes error: strconv.Atoi: parsing \"abc\": invalid syntax\n\
         ServiceVersion=v1\n"
    ));
    assert!(get(http, "/?codes=600")
        .await
        .body
        .starts_with("codes error: invalid HTTP response code 600\n"));
    // Zero total weight: the Go handler panics and the connection is dropped.
    assert!(exchange(http, "GET /?codes=500:0 HTTP/1.1\r\nHost: test")
        .await
        .is_none());

    let started = Instant::now();
    assert_eq!(get(http, "/?delay=100ms").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn istio_echo_speaks_h2c_on_http_ports() {
    let (http, _, _) = start_istio_echo(istio_app()).await;
    let request = hyper::Request::get("http://echo:8080/h2?y=2")
        .header("x-test", "h2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (parts, body, _) = h2(http, request).await;
    assert_eq!(parts.status, 200);
    let body = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        body.contains("Host=echo:8080\nURL=/h2?y=2\nMethod=GET\nProto=HTTP/2.0\n"),
        "{body}"
    );
    assert!(body.contains("RequestHeader=X-Test:h2\n"), "{body}");
}

#[tokio::test]
async fn istio_echo_tcp_port() {
    let (_, _, tcp) = start_istio_echo(istio_app()).await;
    let mut stream = TcpStream::connect(tcp).await.unwrap();
    stream.write_all(b"hello tcp\n").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert_eq!(
        answer,
        format!(
            "StatusCode=200\nServiceVersion=v1\nServicePort={}\nIP=127.0.0.1\nProto=TCP\n\
             Hostname=echo-v1-7d9c6b5f4-zx8kq\nhello tcp\n",
            tcp.port()
        )
    );
}

#[tokio::test]
async fn istio_echo_server_first_tcp_port() {
    let (listener, address) = port0().await;
    let mut app = istio_app();
    app.server_first_ports = vec![address.port()];
    tokio::spawn(istio_echo::serve(
        app,
        vec![(istio_echo::Role::Tcp, listener)],
    ));
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut greeting = [0u8; 22];
    stream.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"server-first-protocol\n");
}

#[derive(Clone, PartialEq, prost::Message)]
struct EchoMessage {
    #[prost(string, tag = "1")]
    message: String,
}

#[tokio::test]
async fn istio_echo_grpc_echo() {
    let (_, grpc, _) = start_istio_echo(istio_app()).await;
    let request = prost::Message::encode_to_vec(&EchoMessage {
        message: "hi".into(),
    });
    let (parts, body, trailers) = grpc_call(grpc, "/proto.EchoTestService/Echo", request).await;
    assert_eq!(parts.status, 200);
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    let reply = <EchoMessage as prost::Message>::decode(unframe(&body)).unwrap();
    let lines: Vec<&str> = reply.message.lines().collect();
    assert_eq!(lines[0], "Host=grpc.test:7070");
    assert_eq!(lines[1], "RequestHeader=:authority:grpc.test:7070");
    assert!(lines.contains(&"RequestHeader=x-custom:yes"));
    let tail = format!(
        "StatusCode=200\nServiceVersion=v1\nServicePort={}\nIP=127.0.0.1\nProto=GRPC\n\
         Echo=hi\nHostname=echo-v1-7d9c6b5f4-zx8kq\n",
        grpc.port()
    );
    assert!(reply.message.ends_with(&tail), "{}", reply.message);

    let (parts, _, _) = grpc_call(grpc, "/proto.EchoTestService/ForwardEcho", vec![]).await;
    assert_eq!(parts.headers["grpc-status"], "12");
    let (parts, _, _) = grpc_call(grpc, "/proto.EchoTestService/Nope", vec![]).await;
    assert_eq!(
        parts.headers["grpc-message"],
        "unknown method Nope for service proto.EchoTestService"
    );
}

#[tokio::test]
async fn istio_echo_serves_the_runners_port_when_no_flag_names_it() {
    let mut app = istio_app();
    app.listen = "127.0.0.1:0".parse().unwrap();
    app.http_ports = vec![0];
    app.grpc_ports = vec![];
    app.tcp_ports = vec![];
    let listeners = istio_echo::bind_all(&app).await.unwrap();
    assert_eq!(listeners.len(), 1, "port 0 is the listen port");
    app.http_ports = vec![];
    let listeners = istio_echo::bind_all(&app).await.unwrap();
    let roles: Vec<_> = listeners.iter().map(|(role, _)| *role).collect();
    assert_eq!(roles, [istio_echo::Role::Http]);
}
