use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

fn listen() -> SocketAddr {
    "127.0.0.9:8080".parse().unwrap()
}

pub(super) fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn echo_text(
    command: &[&str],
    args: &[&str],
    env_pairs: &[(&str, &str)],
) -> Result<String, AppError> {
    match stand_in_for(
        "hashicorp/http-echo",
        &strings(command),
        &strings(args),
        &env(env_pairs),
        listen(),
    )? {
        Some(StandIn::HttpEcho { text, listen: l }) => {
            assert_eq!(l, listen(), "the runner's address wins");
            Ok(text)
        }
        other => panic!("not http-echo: {other:?}"),
    }
}

#[test]
fn image_names_match_with_or_without_registry_tag_and_digest() {
    for image in [
        "hashicorp/http-echo",
        "hashicorp/http-echo:1.0",
        "hashicorp/http-echo:latest",
        "docker.io/hashicorp/http-echo",
        "docker.io/hashicorp/http-echo:0.2.3",
        "localhost:5000/hashicorp/http-echo:1.0",
        "registry.example.com:443/hashicorp/http-echo@sha256:0123abcd",
        "HashiCorp/http-echo",
    ] {
        assert_eq!(image_repository(image), "hashicorp/http-echo", "{image}");
    }
    assert_eq!(
        image_repository("radial/busyboxplus:curl"),
        "radial/busyboxplus"
    );
    assert_eq!(image_repository("docker.io/library/nginx:1.27"), "nginx");
}

#[test]
fn http_echo_text_in_every_flag_spelling() {
    assert_eq!(echo_text(&[], &["-text=hello"], &[]).unwrap(), "hello");
    assert_eq!(echo_text(&[], &["-text", "hello"], &[]).unwrap(), "hello");
    assert_eq!(echo_text(&[], &["--text=hello"], &[]).unwrap(), "hello");
    assert_eq!(
        echo_text(&[], &["-text=hello world"], &[]).unwrap(),
        "hello world"
    );
    assert_eq!(echo_text(&[], &["-text=a=b"], &[]).unwrap(), "a=b");
    assert_eq!(
        echo_text(&[], &["-listen=:5678", "-text=Hello from backend"], &[]).unwrap(),
        "Hello from backend"
    );
    assert_eq!(
        echo_text(&["/http-echo"], &["-text=hi"], &[]).unwrap(),
        "hi"
    );
    assert_eq!(
        echo_text(&["/http-echo", "-text", "hi"], &[], &[]).unwrap(),
        "hi"
    );
    assert_eq!(
        echo_text(&[], &[], &[("ECHO_TEXT", "from env")]).unwrap(),
        "from env"
    );
    assert_eq!(
        echo_text(&[], &["-text=flag"], &[("ECHO_TEXT", "env")]).unwrap(),
        "flag"
    );
}

#[test]
fn http_echo_argument_errors() {
    assert_eq!(
        echo_text(&[], &[], &[]),
        Err(AppError::MissingText { image: HTTP_ECHO })
    );
    assert_eq!(
        echo_text(&[], &["-text"], &[]),
        Err(AppError::MissingFlagValue {
            image: HTTP_ECHO,
            flag: "-text".into()
        })
    );
    assert!(matches!(
        echo_text(&[], &["-status-code=404", "-text=x"], &[]),
        Err(AppError::UnknownFlag { .. })
    ));
    assert!(matches!(
        echo_text(&[], &["-text=x", "extra"], &[]),
        Err(AppError::UnexpectedArgument { .. })
    ));
    let message = echo_text(&[], &["-bogus"], &[]).unwrap_err().to_string();
    assert_eq!(message, "hashicorp/http-echo: unknown flag `-bogus`");
}

#[test]
fn other_images() {
    let none: &[String] = &[];
    assert_eq!(
        stand_in_for("alepispi/exam-scheduler:latest", none, none, &[], listen()).unwrap(),
        Some(StandIn::ExamScheduler { listen: listen() })
    );
    for image in [
        "curlimages/curl",
        "curlimages/curl:8.10.1",
        "radial/busyboxplus:curl",
    ] {
        assert_eq!(
            stand_in_for(image, none, none, &[], listen()).unwrap(),
            Some(StandIn::ClientOnly),
            "{image}"
        );
    }
    assert_eq!(
        stand_in_for("nginx:1.27", none, none, &[], listen()).unwrap(),
        None
    );
    assert_eq!(
        stand_in_for("hashicorp/consul", none, none, &[], listen()).unwrap(),
        None
    );
}

#[test]
fn aura_api_settings_from_env() {
    let none: &[String] = &[];
    let aura = |pairs: &[(&str, &str)]| {
        stand_in_for(
            "servicemeshncs/aura-api:latest",
            none,
            none,
            &env(pairs),
            listen(),
        )
    };
    assert_eq!(
        aura(&[
            ("ERROR_RATE", "0.4"),
            ("MIN_DELAY_S", "0.2"),
            ("MAX_DELAY_S", "3.0")
        ])
        .unwrap(),
        Some(StandIn::AuraApi {
            listen: listen(),
            error_rate: 0.4,
            min_delay_s: 0.2,
            max_delay_s: 3.0
        })
    );
    assert_eq!(
        aura(&[]).unwrap(),
        Some(StandIn::AuraApi {
            listen: listen(),
            error_rate: 0.0,
            min_delay_s: 0.0,
            max_delay_s: 0.0
        })
    );
    assert!(matches!(
        aura(&[("ERROR_RATE", "lots")]),
        Err(AppError::BadEnv {
            name: "ERROR_RATE",
            ..
        })
    ));
    assert!(matches!(
        aura(&[("ERROR_RATE", "1.5")]),
        Err(AppError::BadEnv {
            name: "ERROR_RATE",
            ..
        })
    ));
    assert!(matches!(
        aura(&[("MAX_DELAY_S", "-1")]),
        Err(AppError::BadEnv {
            name: "MAX_DELAY_S",
            ..
        })
    ));
}

/// Starts `app` on a free loopback port.
async fn start(app: StandIn) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(serve_stand_in(app, listener));
    address
}

struct RawResponse {
    status: u16,
    head: String,
    body: String,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.1 request over a fresh connection, read until the server closes it.
async fn request(address: SocketAddr, method: &str, path: &str, body: &str) -> RawResponse {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response within 10 s")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    RawResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

#[tokio::test]
async fn http_echo_answers_text_and_newline() {
    let address = start(StandIn::HttpEcho {
        text: "hello world".into(),
        listen: listen(),
    })
    .await;
    for path in ["/", "/anything/else?x=1"] {
        let response = request(address, "GET", path, "").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "hello world\n");
        assert_eq!(response.header("x-app-name"), Some("http-echo"));
    }
    let response = request(address, "POST", "/", "{}").await;
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, "hello world\n")
    );
}

#[tokio::test]
async fn exam_scheduler_post_then_get_exact_output() {
    let address = start(StandIn::ExamScheduler { listen: listen() }).await;

    let response = request(address, "GET", "/", "").await;
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, r#"{"exams":[]}"#)
    );

    let response = request(
        address,
        "POST",
        "/",
        r#"{"matricola": "s123456", "exam": "NCS"}"#,
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.body,
        "✅ Exam received: {'matricola': 's123456', 'exam': 'NCS'}"
    );
    assert!(response
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));

    let response = request(address, "GET", "/", "").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.body,
        r#"{"exams":[{"exam":"NCS","matricola":"s123456"}]}"#
    );
    assert_eq!(response.header("content-type"), Some("application/json"));

    let response = request(
        address,
        "POST",
        "/exams",
        r#"{"matricola":"s654321","exam":"ISS"}"#,
    )
    .await;
    assert_eq!(
        response.body,
        "✅ Exam received: {'matricola': 's654321', 'exam': 'ISS'}"
    );
    let response = request(address, "GET", "/", "").await;
    assert_eq!(
        response.body,
        r#"{"exams":[{"exam":"NCS","matricola":"s123456"},{"exam":"ISS","matricola":"s654321"}]}"#
    );
}

#[tokio::test]
async fn exam_scheduler_rejects_bad_json() {
    let address = start(StandIn::ExamScheduler { listen: listen() }).await;
    let response = request(address, "POST", "/", "{matricola: s1").await;
    assert_eq!(response.status, 400);
    assert!(
        response.body.starts_with("Bad Request"),
        "{}",
        response.body
    );
    let response = request(address, "GET", "/", "").await;
    assert_eq!(response.body, r#"{"exams":[]}"#, "nothing was stored");
}

fn aura(error_rate: f64) -> StandIn {
    StandIn::AuraApi {
        listen: listen(),
        error_rate,
        min_delay_s: 0.0,
        max_delay_s: 0.01,
    }
}

#[tokio::test]
async fn aura_error_rate_zero_never_fails_and_one_always_fails() {
    let healthy = start(aura(0.0)).await;
    let broken = start(aura(1.0)).await;
    for _ in 0..25 {
        let response = request(healthy, "GET", "/aura", "").await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.body, r#"{"status":"ok","aura":"stable"}"#);
        let response = request(broken, "GET", "/aura", "").await;
        assert_eq!(response.status, 500);
        assert_eq!(response.body, r#"{"error":"aura disturbance"}"#);
    }
}

#[tokio::test]
async fn aura_error_rate_is_roughly_honoured() {
    let address = start(aura(0.5)).await;
    let mut failures = 0;
    for _ in 0..200 {
        if request(address, "GET", "/aura", "").await.status == 500 {
            failures += 1;
        }
    }
    // Binomial(200, 0.5) falls outside [50, 150] with probability below 1e-12.
    assert!((50..=150).contains(&failures), "{failures} of 200 failed");
}

#[tokio::test]
async fn aura_routes_and_served_by_header() {
    let address = start(aura(0.0)).await;
    for (path, status) in [
        ("/", 200),
        ("/healthz", 200),
        ("/chaos", 500),
        ("/nope", 404),
    ] {
        let response = request(address, "GET", path, "").await;
        assert_eq!(response.status, status, "{path}");
        assert_eq!(
            response.header("x-served-by"),
            Some(address.to_string().as_str()),
            "{path}"
        );
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn aura_delay_is_within_bounds() {
    let address = start(StandIn::AuraApi {
        listen: listen(),
        error_rate: 0.0,
        min_delay_s: 0.2,
        max_delay_s: 0.3,
    })
    .await;
    let started = std::time::Instant::now();
    assert_eq!(request(address, "GET", "/aura", "").await.status, 200);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[test]
fn slow_delay_is_two_to_four_seconds() {
    for _ in 0..1000 {
        let delay = aura_api::random_delay(aura_api::SLOW_DELAY_S.0, aura_api::SLOW_DELAY_S.1);
        assert!((2.0..=4.0).contains(&delay.as_secs_f64()), "{delay:?}");
    }
    assert_eq!(aura_api::random_delay(0.5, 0.5), Duration::from_millis(500));
    assert!(
        aura_api::random_delay(3.0, 1.0) >= Duration::from_secs(1),
        "bounds in either order"
    );
}
