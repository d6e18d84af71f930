//! Names and ports that several crates must agree on: the sidecar's ports, the Envoy resource
//! names the bootstrap and the translation share, the annotations injection writes and the
//! loader reads. One home each, so no crate reaches into another's internals for a constant.

/// Envoy admin port on every instance address (Istio's is 15000 too).
pub const ADMIN_PORT: u16 = 15000;
/// Port of the outbound listener on every instance address (Istio uses 15001 too).
pub const OUTBOUND_PORT: u16 = 15001;
/// The inbound capture listener's port (Istio's `virtualInbound` on 15006).
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// xds-server's ADS port (Istio's istiod serves plaintext xDS on 15010).
pub const XDS_PORT: u16 = 15010;
/// xds-server's credential exchange and webhook port (istiod's 15012).
pub const CREDENTIAL_PORT: u16 = 15012;
/// xds-server's admin port: `/status`, `/metrics` (istiod's monitoring port is 15014).
pub const CONTROL_ADMIN_PORT: u16 = 15014;

/// Kubernetes cluster DNS domain used for service host names.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The trust domain when MeshConfig names none.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The namespace whose policies apply mesh-wide when MeshConfig names none.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
/// The service account xds-server runs as (its SPIFFE identity's last segment).
pub const XDS_SERVER_SERVICE_ACCOUNT: &str = "xds-server";

/// The bootstrap's static cluster that reaches xds-server.
pub const XDS_CLUSTER: &str = "ward-xds";
/// Node metadata key carrying the sha256 of the wasm module a proxy loaded.
pub const WASM_SHA256_METADATA: &str = "WASM_MODULE_SHA256";

/// Set on pods `wardctl inject` (or the webhook) gave a sidecar.
pub const INJECTED_ANNOTATION: &str = "ward.dev/injected";
/// The ConfigMap with the mesh's trust bundle, in every injected namespace.
pub const ROOT_CERT_CONFIG_MAP: &str = "ward-root-cert";
