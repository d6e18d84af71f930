//! Ward's end-to-end tests: real xds-server, wardctl and Envoy processes, one module per
//! area. One test binary, so the suite links once (`scripts/test.sh` builds the binaries
//! and the wasm module the tests start).

// Shared fixtures.
mod istio_jwt;
mod static_envoy;

// Areas.
mod authorization;
mod capture;
mod deploy;
mod engines_differential;
mod istio_golden;
mod kubernetes_control;
mod local_mesh;
mod mutual_tls;
mod reconnect_storm;
mod request_authentication;
mod resilience;
mod traffic_management;
