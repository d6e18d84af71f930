//! xds-server, the control plane daemon: wiring only. It reads the mesh from a config
//! directory or from Kubernetes (`discovery`), turns it into snapshots (`ward-xds`), serves
//! them on the xDS port (`ward-ads`), fetches JWKS documents (`ward-sources`), and on
//! Kubernetes also serves the credential exchange and the injection webhook
//! (`control_https`), publishes the trust bundle (`root_cert`), and lets sidecars ask for a
//! JWKS refetch (`key_refresh`). `server` runs them together.

pub mod control_https;
pub mod discovery;
pub mod key_refresh;
pub mod root_cert;
pub mod server;
