//! Istio's helloworld sample (`registry.istio.io/release/examples-helloworld-v1`/`-v2`): the
//! Flask app `samples/helloworld/src/app.py` under gunicorn on port 5000. `/hello` names the
//! version and the pod, `/health` says it is healthy, and anything else gets Werkzeug's error
//! pages. The real `/hello` burns CPU (a million square roots in Python) for the autoscaling
//! demo; the stand-in answers at once.

use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, Request, StatusCode};

use super::{respond, AppError, HttpResponse};

const IMAGE: &str = "examples-helloworld";
const HTML: &str = "text/html; charset=utf-8";
/// Flask answers HEAD and OPTIONS itself for every GET route.
const ALLOWED: &str = "GET, HEAD, OPTIONS";

/// `…/examples-helloworld-v2` → `v2`: the images are built from one Dockerfile with the
/// build argument `service_version` (`samples/builder/docker-bake.hcl`), which becomes
/// `ENV SERVICE_VERSION`.
pub(super) fn image_version(repository: &str) -> Option<&'static str> {
    match repository.rsplit('/').next()? {
        "examples-helloworld-v1" => Some("v1"),
        "examples-helloworld-v2" => Some("v2"),
        _ => None,
    }
}

/// What the app prints: `SERVICE_VERSION` (the container's env overrides the image's) and
/// `HOSTNAME`, the pod name. Python prints `None` for a variable that is not set.
pub(super) fn settings(
    image_version: &str,
    command: &[String],
    args: &[String],
    env: &[(String, String)],
) -> Result<(String, Option<String>), AppError> {
    check_argv(command, args)?;
    let version = super::container_env(env, "SERVICE_VERSION")
        .unwrap_or(image_version)
        .to_string();
    Ok((version, super::pod_env(env, "HOSTNAME")))
}

/// The image's command is `gunicorn -b [::]:5000 app:app -k gevent`; a pod may restate it
/// (the Dockerfile suggests `-b [0.0.0.0]:5000` for IPv4) or run `python app.py`. Anything
/// else would run some other program, which the stand-in cannot.
fn check_argv(command: &[String], args: &[String]) -> Result<(), AppError> {
    let argv: Vec<&str> = command.iter().chain(args).map(String::as_str).collect();
    let Some((program, rest)) = argv.split_first() else {
        return Ok(());
    };
    let program = program.rsplit('/').next().unwrap_or(program);
    if program.starts_with("python") {
        return match rest {
            ["app.py"] => Ok(()),
            [arg, ..] => Err(AppError::UnexpectedArgument {
                image: IMAGE,
                arg: arg.to_string(),
            }),
            [] => Err(AppError::UnexpectedArgument {
                image: IMAGE,
                arg: program.to_string(),
            }),
        };
    }
    if program != "gunicorn" {
        return Err(AppError::UnexpectedArgument {
            image: IMAGE,
            arg: program.to_string(),
        });
    }
    // gunicorn options that change how it serves, not what the app answers.
    const WITH_VALUE: &[&str] = &[
        "-b",
        "--bind",
        "-k",
        "--worker-class",
        "-w",
        "--workers",
        "--threads",
        "-t",
        "--timeout",
    ];
    let mut rest = rest.iter();
    let mut app = false;
    while let Some(arg) = rest.next() {
        let inline_value = WITH_VALUE
            .iter()
            .any(|flag| flag.starts_with("--") && arg.starts_with(&format!("{flag}=")));
        if *arg == "app:app" {
            app = true;
        } else if WITH_VALUE.contains(arg) {
            if rest.next().is_none() {
                return Err(AppError::MissingFlagValue {
                    image: IMAGE,
                    flag: arg.to_string(),
                });
            }
        } else if inline_value {
            continue;
        } else if arg.starts_with('-') {
            return Err(AppError::UnknownFlag {
                image: IMAGE,
                flag: arg.to_string(),
            });
        } else {
            return Err(AppError::UnexpectedArgument {
                image: IMAGE,
                arg: arg.to_string(),
            });
        }
    }
    if app {
        Ok(())
    } else {
        Err(AppError::UnexpectedArgument {
            image: IMAGE,
            arg: "gunicorn without app:app".to_string(),
        })
    }
}

/// Werkzeug's HTML error page (`HTTPException.get_body`, Werkzeug 3.0).
fn werkzeug_error(status: StatusCode, description: &str) -> HttpResponse {
    let code = status.as_u16();
    let name = status.canonical_reason().unwrap_or("Unknown Error");
    respond(
        status,
        HTML,
        format!(
            "<!doctype html>\n<html lang=en>\n<title>{code} {name}</title>\n<h1>{name}</h1>\n\
             <p>{description}</p>\n"
        ),
    )
}

pub(super) fn answer(
    request: &Request<Incoming>,
    version: &str,
    hostname: Option<&str>,
) -> HttpResponse {
    // Werkzeug routes on the percent-decoded path and ignores the query.
    let path = super::percent_decode(request.uri().path());
    let body = match path.as_str() {
        "/hello" => format!(
            "Hello version: {version}, instance: {}\n",
            hostname.unwrap_or("None")
        ),
        "/health" => "Helloworld is healthy".to_string(),
        _ => {
            return werkzeug_error(
                StatusCode::NOT_FOUND,
                "The requested URL was not found on the server. If you entered the URL \
                 manually please check your spelling and try again.",
            )
        }
    };
    let mut response = match *request.method() {
        // hyper drops the body of a HEAD answer and keeps its length, as Werkzeug does.
        Method::GET | Method::HEAD => respond(StatusCode::OK, HTML, body),
        Method::OPTIONS => respond(StatusCode::OK, HTML, ""),
        _ => werkzeug_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "The method is not allowed for the requested URL.",
        ),
    };
    if *request.method() != Method::GET && *request.method() != Method::HEAD {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(ALLOWED));
    }
    response
}
