//! Built-in stand-ins for the container images the seed labs use, so their manifests run
//! unchanged on `wardctl up` without a container runtime. Each behaves as the lab shows.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use rand::Rng;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{image}: invalid argument `{argument}`: {reason}")]
    BadArgument {
        image: String,
        argument: String,
        reason: String,
    },
    #[error("{image}: environment variable {name}={value:?} is not a number")]
    BadEnv { image: String, name: String, value: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum StandIn {
    /// `hashicorp/http-echo`: answers every request with `text`.
    HttpEcho { text: String, listen: SocketAddr },
    /// `alepispi/exam-scheduler`: POST registers an exam, GET lists them.
    ExamScheduler { listen: SocketAddr },
    /// `servicemeshncs/aura-api`: `/aura` fails at `error_rate` after a random delay.
    AuraApi {
        listen: SocketAddr,
        error_rate: f64,
        min_delay_s: f64,
        max_delay_s: f64,
    },
    /// `curlimages/curl`, `radial/busyboxplus:curl`: a client-only pod, nothing listens.
    ClientOnly,
}

/// `docker.io/hashicorp/http-echo:1.0` → `hashicorp/http-echo`.
fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    let without_tag = match without_digest[last_slash..].find(':') {
        Some(i) => &without_digest[..last_slash + i],
        None => without_digest,
    };
    without_tag
        .strip_prefix("docker.io/")
        .or_else(|| without_tag.strip_prefix("index.docker.io/"))
        .unwrap_or(without_tag)
}

fn env_f64(image: &str, env: &[(String, String)], name: &str, default: f64) -> Result<f64, AppError> {
    match env.iter().rev().find(|(k, _)| k == name) {
        None => Ok(default),
        Some((_, value)) => value.trim().parse().map_err(|_| AppError::BadEnv {
            image: image.to_string(),
            name: name.to_string(),
            value: value.clone(),
        }),
    }
}

/// The stand-in for `image`, or None if Ward has none.
pub fn stand_in_for(
    image: &str,
    command: &[String],
    args: &[String],
    env: &[(String, String)],
    listen: SocketAddr,
) -> Result<Option<StandIn>, AppError> {
    let stand_in = match image_name(image) {
        "hashicorp/http-echo" => {
            let mut text = None;
            let mut words = command.iter().chain(args).peekable();
            while let Some(word) = words.next() {
                let flag = word.trim_start_matches('-');
                if let Some(value) = flag.strip_prefix("text=") {
                    text = Some(value.to_string());
                } else if flag == "text" {
                    text = words.next().cloned();
                }
            }
            let text = text.ok_or_else(|| AppError::BadArgument {
                image: image.to_string(),
                argument: args.join(" "),
                reason: "http-echo needs -text=...".to_string(),
            })?;
            StandIn::HttpEcho { text, listen }
        }
        "alepispi/exam-scheduler" => StandIn::ExamScheduler { listen },
        "servicemeshncs/aura-api" => StandIn::AuraApi {
            listen,
            error_rate: env_f64(image, env, "ERROR_RATE", 0.0)?,
            min_delay_s: env_f64(image, env, "MIN_DELAY_S", 0.0)?,
            max_delay_s: env_f64(image, env, "MAX_DELAY_S", 0.0)?,
        },
        "curlimages/curl" | "radial/busyboxplus" | "busybox" | "alpine" => StandIn::ClientOnly,
        _ => return Ok(None),
    };
    Ok(Some(stand_in))
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}

/// Serves `app` until the process ends.
pub async fn run_stand_in(app: StandIn) -> anyhow::Result<()> {
    match app {
        StandIn::ClientOnly => std::future::pending().await,
        StandIn::HttpEcho { text, listen } => {
            let body = Bytes::from(format!("{text}\n"));
            serve(listen, move |_request, _body| {
                let body = body.clone();
                async move {
                    let mut response = reply(StatusCode::OK, "text/plain; charset=utf-8", body);
                    response
                        .headers_mut()
                        .insert("x-app-name", "http-echo".parse().expect("header"));
                    response
                }
            })
            .await
        }
        StandIn::ExamScheduler { listen } => {
            let exams: Arc<Mutex<Vec<serde_json::Map<String, serde_json::Value>>>> = Arc::default();
            serve(listen, move |request, body| {
                let exams = exams.clone();
                async move { exam_scheduler(&exams, request.method(), &body) }
            })
            .await
        }
        StandIn::AuraApi {
            listen,
            error_rate,
            min_delay_s,
            max_delay_s,
        } => {
            serve(listen, move |request, _body| async move {
                let mut response = aura(request.uri().path(), error_rate, min_delay_s, max_delay_s).await;
                response
                    .headers_mut()
                    .insert("x-served-by", listen.to_string().parse().expect("header"));
                response
            })
            .await
        }
    }
}

/// Python's `repr` of a JSON value, as the lab's Flask app prints the dict it received.
fn python_repr(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "None".to_string(),
        serde_json::Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        serde_json::Value::Array(items) => {
            format!("[{}]", items.iter().map(python_repr).collect::<Vec<_>>().join(", "))
        }
        serde_json::Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("'{k}': {}", python_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn exam_scheduler(
    exams: &Mutex<Vec<serde_json::Map<String, serde_json::Value>>>,
    method: &Method,
    body: &[u8],
) -> Reply {
    if method == Method::POST {
        return match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(exam)) => {
                let text = format!("✅ Exam received: {}", python_repr(&serde_json::Value::Object(exam.clone())));
                exams.lock().expect("exams lock").push(exam);
                reply(StatusCode::OK, "text/html; charset=utf-8", text)
            }
            _ => reply(StatusCode::BAD_REQUEST, "text/plain", "❌ Invalid JSON: expected an object\n"),
        };
    }
    // Flask's jsonify sorts keys.
    let list: Vec<serde_json::Value> = exams
        .lock()
        .expect("exams lock")
        .iter()
        .map(|exam| {
            let sorted: BTreeMap<&String, &serde_json::Value> = exam.iter().collect();
            serde_json::Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        })
        .collect();
    let body = serde_json::json!({ "exams": list }).to_string();
    reply(StatusCode::OK, "application/json", body)
}

async fn random_sleep(min_s: f64, max_s: f64) {
    let (low, high) = (min_s.max(0.0), max_s.max(min_s).max(0.0));
    let seconds = if high > low { rand::rng().random_range(low..high) } else { low };
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
}

async fn aura(path: &str, error_rate: f64, min_delay_s: f64, max_delay_s: f64) -> Reply {
    match path {
        "/aura" => {
            random_sleep(min_delay_s, max_delay_s).await;
            if rand::rng().random_bool(error_rate.clamp(0.0, 1.0)) {
                reply(StatusCode::INTERNAL_SERVER_ERROR, "application/json", r#"{"error":"aura disturbance"}"#)
            } else {
                reply(StatusCode::OK, "application/json", r#"{"status":"ok","aura":"calm"}"#)
            }
        }
        "/slow" => {
            random_sleep(2.0, 4.0).await;
            reply(StatusCode::OK, "application/json", r#"{"status":"ok","aura":"slow"}"#)
        }
        "/chaos" => reply(StatusCode::INTERNAL_SERVER_ERROR, "application/json", r#"{"error":"chaos"}"#),
        "/" | "/healthz" => reply(StatusCode::OK, "application/json", r#"{"status":"ok"}"#),
        _ => reply(StatusCode::NOT_FOUND, "application/json", r#"{"error":"not found"}"#),
    }
}

/// A minimal HTTP/1.1 server: `handler` gets the request head and the whole body.
async fn serve<F, Fut>(listen: SocketAddr, handler: F) -> anyhow::Result<()>
where
    F: Fn(Request<()>, Bytes) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Reply> + Send,
{
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("binding {listen}: {e}"))?;
    tracing::info!(%listen, "app listening");
    loop {
        let (stream, _) = listener.accept().await?;
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    Ok::<_, Infallible>(handler(Request::from_parts(parts, ()), body).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    #[test]
    fn images_are_recognised_with_registry_and_tag() {
        let args = vec!["-text=hello world".to_string()];
        for image in ["hashicorp/http-echo", "hashicorp/http-echo:1.0", "docker.io/hashicorp/http-echo:latest"] {
            assert_eq!(
                stand_in_for(image, &[], &args, &[], listen()).unwrap(),
                Some(StandIn::HttpEcho { text: "hello world".into(), listen: listen() })
            );
        }
        let split = vec!["-text".to_string(), "hi".to_string()];
        assert!(matches!(stand_in_for("hashicorp/http-echo", &[], &split, &[], listen()).unwrap(), Some(StandIn::HttpEcho { text, .. }) if text == "hi"));
        assert_eq!(stand_in_for("radial/busyboxplus:curl", &[], &[], &[], listen()).unwrap(), Some(StandIn::ClientOnly));
        assert_eq!(stand_in_for("nginx:1.25", &[], &[], &[], listen()).unwrap(), None);
        assert!(stand_in_for("hashicorp/http-echo", &[], &[], &[], listen()).is_err());
        let env = vec![("ERROR_RATE".to_string(), "x".to_string())];
        assert!(stand_in_for("servicemeshncs/aura-api:latest", &[], &[], &env, listen()).is_err());
    }

    #[test]
    fn exam_scheduler_answers_like_the_lab() {
        let exams = Mutex::new(Vec::new());
        let posted = exam_scheduler(&exams, &Method::POST, br#"{"matricola": "s123456", "exam": "NCS"}"#);
        assert_eq!(posted.status(), StatusCode::OK);
        let body = futures::executor::block_on(posted.into_body().collect()).unwrap().to_bytes();
        assert_eq!(body, "✅ Exam received: {'matricola': 's123456', 'exam': 'NCS'}");
        let listed = exam_scheduler(&exams, &Method::GET, b"");
        let body = futures::executor::block_on(listed.into_body().collect()).unwrap().to_bytes();
        assert_eq!(body, r#"{"exams":[{"exam":"NCS","matricola":"s123456"}]}"#);
        let bad = exam_scheduler(&exams, &Method::POST, b"{matricola");
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn aura_error_rate_bounds() {
        for _ in 0..20 {
            assert_eq!(aura("/aura", 0.0, 0.0, 0.0).await.status(), StatusCode::OK);
            assert_eq!(aura("/aura", 1.0, 0.0, 0.0).await.status(), StatusCode::INTERNAL_SERVER_ERROR);
        }
        assert_eq!(aura("/chaos", 0.0, 0.0, 0.0).await.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(aura("/nope", 0.0, 0.0, 0.0).await.status(), StatusCode::NOT_FOUND);
    }
}
