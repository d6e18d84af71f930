//! Ward's control plane. Modules follow the data flow: `config` (load and validate YAML) →
//! `model` (the resolved mesh) → `translate` (Envoy resources) → `snapshot` (per-proxy
//! snapshots) → `ads` (the gRPC ADS server), wired together by `server`. Beside them:
//! `identity` is the CA and the workload certificates, `bootstrap` renders Envoy bootstraps,
//! `jwks` fetches `jwksUri`s (and `key_refresh` lets sidecars ask for a fetch), `runner` is
//! the local mesh behind `wardctl up`,
//! `inject` adds the sidecar to Kubernetes manifests (`wardctl inject`),
//! `loopback_port` picks ports for servers another process binds, `apps` holds the built-in stand-ins for the seed labs' container images, and `check`
//! predicts authorization decisions for `wardctl check`.

pub mod ads;
pub mod apps;
pub mod bench;
pub mod bootstrap;
pub mod check;
pub mod config;
pub mod control_https;
pub mod discovery;
pub mod identity;
pub mod inject;
pub mod jwks;
pub mod key_refresh;
pub mod loadgen;
pub mod loopback_port;
pub mod metrics;
pub mod model;
pub mod proxy_status;
pub mod retry_budget_bench;
pub mod root_cert;
pub mod runner;
pub mod server;
pub mod snapshot;
pub mod translate;
pub mod watch;
pub mod xds_listener;
