//! Workload identity: the CA (`ca`), per-proxy workload certificates and their renewal
//! (`certs`), proxies' bootstrap credentials for the xDS channel (`credentials`), and reading
//! SPIFFE identities out of peer certificates (`spiffe`). Beside the data flow: the
//! translation puts its certificates into snapshots, the xDS port checks peers with it.

pub mod ca;
pub mod certs;
pub mod credentials;
pub mod spiffe;

pub use ca::{CaError, CaOptions, CaSource, CertificateAuthority, IssuedCertificate, KeyAlgorithm};
pub use certs::{CertificatePolicy, WorkloadCertificates};
pub use credentials::{
    write_bootstrap_credentials, write_certificate_files, BootstrapCredentials, CertificateFiles,
    BOOTSTRAP_CREDENTIAL_LIFETIME,
};
pub use spiffe::{identity_of, uri_sans, PeerIdentityError};
