//! `wardctl bench retry-budget`: how many retries the sidecar's budget allows, next to what
//! Linkerd's own budget allows and the formula's bound, over a range of error rates, loads
//! and latencies. The budget code is the filter's own (`wasm_authz::retry_budget`), driven
//! by a discrete-event model of the load, so the numbers are exact and repeatable.

use serde::Serialize;
use wasm_authz::retry_budget::simulation::{simulate, Load, Policy};
use wasm_authz::retry_budget::RetryBudgetConfig;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub requests_per_second: f64,
    pub latency_ms: (u64, u64),
    pub error_rate: f64,
    pub requests: u64,
    pub bound: f64,
    pub linkerd_retries: u64,
    pub ward_retries: u64,
    pub linkerd_success: f64,
    pub ward_success: f64,
    pub ward_worst_window: u64,
    pub worst_window_bound: f64,
}

/// The grid: loads × latencies × error rates, `seconds` each, route cap `route_max`.
pub fn run(config: &RetryBudgetConfig, seconds: u64, route_max: u32) -> Vec<Row> {
    let mut rows = Vec::new();
    for requests_per_second in [10.0, 100.0, 1000.0] {
        for latency_ms in [(5, 50), (200, 3000)] {
            for error_rate in [0.1, 0.4, 0.6, 0.9, 1.0] {
                let load = Load {
                    requests_per_second,
                    error_rate,
                    latency_ms,
                    seconds,
                    route_max,
                    seed: 42,
                };
                let ward = simulate(config, &load, Policy::Ward);
                let linkerd = simulate(config, &load, Policy::Linkerd);
                rows.push(Row {
                    requests_per_second,
                    latency_ms,
                    error_rate,
                    requests: ward.requests,
                    bound: ward.bound,
                    linkerd_retries: linkerd.retries,
                    ward_retries: ward.retries,
                    linkerd_success: linkerd.successes as f64 / linkerd.requests.max(1) as f64,
                    ward_success: ward.successes as f64 / ward.requests.max(1) as f64,
                    ward_worst_window: ward.worst_window_retries,
                    worst_window_bound: ward.worst_window_bound,
                });
            }
        }
    }
    rows
}

pub fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| rps | latency ms | error rate | requests | bound | Linkerd retries | Ward retries | Ward/Linkerd | Linkerd success | Ward success | worst 10 s window (bound) |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {}–{} | {:.1} | {} | {:.0} | {} | {} | {:.2} | {:.1} % | {:.1} % | {} ({:.0}) |\n",
            r.requests_per_second,
            r.latency_ms.0,
            r.latency_ms.1,
            r.error_rate,
            r.requests,
            r.bound,
            r.linkerd_retries,
            r.ward_retries,
            r.ward_retries as f64 / r.linkerd_retries.max(1) as f64,
            r.linkerd_success * 100.0,
            r.ward_success * 100.0,
            r.ward_worst_window,
            r.worst_window_bound,
        ));
    }
    out
}
