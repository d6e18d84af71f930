//! Per-workload bootstrap credentials: the client certificate a proxy presents to xds-server.
//! Written next to its bootstrap by `xds-server bootstrap` and `wardctl up` (on Kubernetes,
//! exchanged for a service-account token; see the Kubernetes issue).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ca::{write_private as write, CaError, CertificateAuthority};

/// Bootstrap credentials outlive workload certificates: Envoy reads them once at start.
pub const BOOTSTRAP_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Where a proxy's bootstrap credential files are, and whom it expects xds-server to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapCredentials {
    pub cert_chain: PathBuf,
    pub private_key: PathBuf,
    pub trust_bundle: PathBuf,
    /// The SPIFFE id xds-server must present.
    pub server_identity: String,
}

/// Signs a credential for `spiffe_id` and writes `cert.pem`, `key.pem` (owner-only) and
/// `root.pem` into `dir`.
pub fn write_bootstrap_credentials(
    ca: &CertificateAuthority,
    spiffe_id: &str,
    server_identity: &str,
    dir: &Path,
) -> Result<BootstrapCredentials, CaError> {
    std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let dir = std::fs::canonicalize(dir).map_err(|source| CaError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let cert = ca.issue(spiffe_id, BOOTSTRAP_CREDENTIAL_LIFETIME)?;
    let credentials = BootstrapCredentials {
        cert_chain: dir.join("cert.pem"),
        private_key: dir.join("key.pem"),
        trust_bundle: dir.join("root.pem"),
        server_identity: server_identity.to_string(),
    };
    write(&credentials.private_key, &cert.private_key_pem, 0o600)?;
    write(&credentials.cert_chain, &cert.cert_chain_pem, 0o644)?;
    write(&credentials.trust_bundle, ca.trust_bundle_pem(), 0o644)?;
    Ok(credentials)
}
