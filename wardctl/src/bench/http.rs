//! A closed-loop HTTP load generator for `wardctl bench http`: N users, each on its own
//! keep-alive connection, each sending its next request when the previous one is answered
//! (plus an optional think time), as Locust's users do in seed 002's chapter 9. Reports
//! requests per second and latency percentiles after a warm-up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the users connect: a sidecar's outbound listener, or the app itself.
    pub target: SocketAddr,
    /// The Host header (the Service name, as `curl SERVICE` sends it).
    pub host: String,
    pub method: Method,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub users: usize,
    pub duration: Duration,
    /// Measured requests start after this.
    pub warmup: Duration,
    /// Pause between a response and the user's next request.
    pub think_time: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub users: usize,
    pub seconds: f64,
    pub requests: u64,
    /// Connection or protocol failures (not HTTP error statuses).
    pub errors: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub requests_per_second: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LoadReport {
    pub fn render(&self) -> String {
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}×{n}"))
            .collect();
        format!(
            "{} users, {:.0} s: {} requests ({:.1}/s), {} errors, statuses {}; latency ms: mean {:.2}, p50 {:.2}, p95 {:.2}, p99 {:.2}, max {:.2}\n",
            self.users,
            self.seconds,
            self.requests,
            self.requests_per_second,
            self.errors,
            statuses.join(" "),
            self.mean_ms,
            self.p50_ms,
            self.p95_ms,
            self.p99_ms,
            self.max_ms
        )
    }
}

#[derive(Default)]
struct UserResult {
    latencies: Vec<Duration>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(target: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

fn request(options: &LoadOptions) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut builder = Request::builder()
        .method(options.method.clone())
        .uri(&options.path)
        .header(hyper::header::HOST, &options.host);
    for (name, value) in &options.headers {
        builder = builder.header(name, value);
    }
    let body = options.body.clone().unwrap_or_default();
    Ok(builder.body(Full::new(Bytes::from(body)))?)
}

async fn user(options: LoadOptions, measure_from: Instant, end: Instant) -> UserResult {
    let mut result = UserResult::default();
    let mut sender: Option<Sender> = None;
    while Instant::now() < end {
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match connect(options.target).await {
                Ok(s) => sender = Some(s),
                Err(_) => {
                    result.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let Ok(req) = request(&options) else {
            result.errors += 1;
            break;
        };
        let started = Instant::now();
        let outcome = async {
            s.ready().await?;
            let response = s.send_request(req).await?;
            let status = response.status().as_u16();
            response.into_body().collect().await?;
            anyhow::Ok(status)
        }
        .await;
        let measured = started >= measure_from;
        match outcome {
            Ok(status) if measured => {
                result.latencies.push(started.elapsed());
                *result.statuses.entry(status).or_insert(0) += 1;
            }
            Ok(_) => {}
            Err(_) => {
                sender = None;
                if measured {
                    result.errors += 1;
                }
            }
        }
        if !options.think_time.is_zero() {
            tokio::time::sleep(options.think_time).await;
        }
    }
    result
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

pub async fn run(options: &LoadOptions) -> anyhow::Result<LoadReport> {
    // Fail fast on an unreachable target rather than report a run of errors.
    connect(options.target)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", options.target))?;
    let start = Instant::now();
    let measure_from = start + options.warmup;
    let end = measure_from + options.duration;
    let users: Vec<_> = (0..options.users)
        .map(|_| tokio::spawn(user(options.clone(), measure_from, end)))
        .collect();
    let mut latencies = Vec::new();
    let mut statuses = BTreeMap::new();
    let mut errors = 0;
    for handle in users {
        let result = handle.await?;
        latencies.extend(result.latencies);
        errors += result.errors;
        for (status, n) in result.statuses {
            *statuses.entry(status).or_insert(0) += n;
        }
    }
    latencies.sort_unstable();
    let seconds = options.duration.as_secs_f64();
    let total: Duration = latencies.iter().sum();
    let requests = latencies.len() as u64;
    Ok(LoadReport {
        users: options.users,
        seconds,
        requests,
        errors,
        statuses,
        requests_per_second: requests as f64 / seconds,
        mean_ms: if requests == 0 {
            0.0
        } else {
            total.as_secs_f64() * 1000.0 / requests as f64
        },
        p50_ms: percentile(&latencies, 0.50),
        p95_ms: percentile(&latencies, 0.95),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 0.50), 50.0);
        assert_eq!(percentile(&sorted, 0.95), 95.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&sorted[..1], 0.99), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
