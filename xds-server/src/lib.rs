//! Ward's control plane. Modules follow the data flow: `config` (load and validate YAML) →
//! `model` (the resolved mesh) → `translate` (Envoy resources) → `snapshot` (per-proxy
//! snapshots) → `ads` (the gRPC ADS server). `bootstrap` renders Envoy bootstraps;
//! `runner` is the local mesh runner behind `wardctl up`.

pub mod model;
pub mod snapshot;
