//! Per-workload bootstrap credentials: the client certificate a proxy presents to xds-server.
//! Written next to its bootstrap by `xds-server bootstrap` and `wardctl up` (on Kubernetes,
//! exchanged for a service-account token; see the Kubernetes issue).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ward_config::SpiffeId;

use crate::ca::{write_private as write, CaError, CertificateAuthority, IssuedCertificate};

/// Bootstrap credentials outlive workload certificates: Envoy reads them once at start.
pub const BOOTSTRAP_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// A certificate, its key and the trust bundle, written as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert_chain: PathBuf,
    pub private_key: PathBuf,
    pub trust_bundle: PathBuf,
}

/// Where a proxy's bootstrap credential files are, and whom it expects xds-server to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapCredentials {
    pub files: CertificateFiles,
    /// The SPIFFE id xds-server must present.
    pub server_identity: SpiffeId,
}

/// Signs a certificate for `spiffe_id` valid for `lifetime` and writes `cert.pem`, `key.pem`
/// (owner-only) and `root.pem` into `dir` (created if missing; paths are absolute).
pub fn write_certificate_files(
    ca: &CertificateAuthority,
    spiffe_id: &SpiffeId,
    lifetime: Duration,
    dir: &Path,
) -> Result<(CertificateFiles, IssuedCertificate), CaError> {
    let io = |source| CaError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let dir = std::fs::canonicalize(dir).map_err(io)?;
    let cert = ca.issue(spiffe_id, lifetime)?;
    let files = CertificateFiles {
        cert_chain: dir.join("cert.pem"),
        private_key: dir.join("key.pem"),
        trust_bundle: dir.join("root.pem"),
    };
    write(&files.private_key, &cert.private_key_pem, 0o600)?;
    write(&files.cert_chain, &cert.cert_chain_pem, 0o644)?;
    write(&files.trust_bundle, ca.trust_bundle_pem(), 0o644)?;
    Ok((files, cert))
}

/// Signs a proxy's bootstrap credential for `spiffe_id` into `dir`.
pub fn write_bootstrap_credentials(
    ca: &CertificateAuthority,
    spiffe_id: &SpiffeId,
    server_identity: &SpiffeId,
    dir: &Path,
) -> Result<BootstrapCredentials, CaError> {
    let (files, _) = write_certificate_files(ca, spiffe_id, BOOTSTRAP_CREDENTIAL_LIFETIME, dir)?;
    Ok(BootstrapCredentials {
        files,
        server_identity: server_identity.clone(),
    })
}
