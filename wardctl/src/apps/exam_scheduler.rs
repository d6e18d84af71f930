//! `alepispi/exam-scheduler`, the Flask app of the exam lab: POST stores an exam and echoes it
//! as a Python dict, GET lists every exam stored so far (in memory, like the original).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use super::python_value::PyValue;
use super::{respond, HttpResponse};

type ResponseFuture = Pin<Box<dyn Future<Output = HttpResponse> + Send>>;

pub(super) fn handler(
) -> impl Fn(Request<Incoming>) -> ResponseFuture + Clone + Send + Sync + 'static {
    let exams: Arc<Mutex<Vec<PyValue>>> = Arc::default();
    move |request| {
        let exams = exams.clone();
        Box::pin(async move { handle(request, &exams).await })
    }
}

async fn handle(request: Request<Incoming>, exams: &Mutex<Vec<PyValue>>) -> HttpResponse {
    match *request.method() {
        Method::POST => {
            let body = match request.into_body().collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    return respond(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        format!("Bad Request: {e}\n"),
                    );
                }
            };
            match serde_json::from_slice::<PyValue>(&body) {
                Ok(exam) => {
                    let answer = format!("✅ Exam received: {}", exam.repr());
                    exams.lock().expect("exams lock").push(exam);
                    respond(StatusCode::OK, "text/html; charset=utf-8", answer)
                }
                Err(e) => respond(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    format!("Bad Request: the body is not valid JSON ({e})\n"),
                ),
            }
        }
        Method::GET | Method::HEAD => {
            let list = PyValue::List(exams.lock().expect("exams lock").clone());
            let body = format!(r#"{{"exams":{}}}"#, list.to_flask_json());
            respond(StatusCode::OK, "application/json", body)
        }
        _ => respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "Method Not Allowed\n",
        ),
    }
}
