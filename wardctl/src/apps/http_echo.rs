//! `hashicorp/http-echo`: every request gets the configured text and a newline.

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};

use super::{respond, AppError, HttpResponse, HTTP_ECHO};

/// The `-text` value from the container's argv (Go `flag` syntax: `-text=x`, `-text x`,
/// `--text=x`), else `$ECHO_TEXT` as http-echo 1.0 reads it. `-listen` is accepted and
/// ignored because the runner picks the address.
pub(super) fn parse_text(argv: &[String], env: &[(String, String)]) -> Result<String, AppError> {
    let mut args = argv.iter().peekable();
    // The container command may name the binary itself (`command: ["/http-echo"]`).
    if args
        .peek()
        .is_some_and(|first| !first.starts_with('-') && first.ends_with("http-echo"))
    {
        args.next();
    }
    let mut text = None;
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(AppError::UnexpectedArgument {
                image: HTTP_ECHO,
                arg: arg.clone(),
            });
        };
        let (name, inline_value) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (flag, None),
        };
        if name != "text" && name != "listen" {
            return Err(AppError::UnknownFlag {
                image: HTTP_ECHO,
                flag: arg.clone(),
            });
        }
        let value = match inline_value {
            Some(value) => value,
            None => args
                .next()
                .cloned()
                .ok_or_else(|| AppError::MissingFlagValue {
                    image: HTTP_ECHO,
                    flag: arg.clone(),
                })?,
        };
        if name == "text" {
            text = Some(value);
        }
    }
    if let Some(rest) = args.next() {
        return Err(AppError::UnexpectedArgument {
            image: HTTP_ECHO,
            arg: rest.clone(),
        });
    }
    let text = text.or_else(|| {
        env.iter()
            .find(|(name, _)| name == "ECHO_TEXT")
            .map(|(_, value)| value.clone())
    });
    match text {
        Some(text) if !text.is_empty() => Ok(text),
        _ => Err(AppError::MissingText { image: HTTP_ECHO }),
    }
}

/// Like http-echo 1.0, `/health` answers its own JSON instead of the text.
pub(super) fn handler(
    text: String,
) -> impl Fn(Request<Incoming>) -> std::future::Ready<HttpResponse> + Clone + Send + Sync + 'static
{
    let body = format!("{text}\n");
    move |request: Request<Incoming>| {
        let mut response = if request.uri().path() == "/health" {
            respond(StatusCode::OK, "application/json", r#"{"status":"ok"}"#)
        } else {
            respond(StatusCode::OK, "text/plain; charset=utf-8", body.clone())
        };
        response
            .headers_mut()
            .insert("x-app-name", HeaderValue::from_static("http-echo"));
        std::future::ready(response)
    }
}
