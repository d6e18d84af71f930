//! Benches an operator runs with `wardctl bench`: `xds` (thousands of simulated proxies on
//! one xds-server), `http` (load through the mesh, with latency percentiles), and
//! `retry_budget` (Linkerd's retry budget in simulation).

pub mod http;
pub mod retry_budget;
pub mod xds;
