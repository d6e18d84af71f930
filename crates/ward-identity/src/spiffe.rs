//! Reading SPIFFE identities out of X.509 certificates (the type itself is
//! `ward_config::SpiffeId`).

use ward_config::SpiffeId;

/// Why no workload identity could be read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("not an X.509 certificate: {0}")]
    NotX509(String),
    #[error("the certificate carries no SPIFFE workload identity")]
    NoIdentity,
    #[error("the certificate carries more than one SPIFFE identity")]
    SeveralIdentities,
}

/// The URI subject alternative names of a DER certificate.
pub fn uri_sans(der: &[u8]) -> Result<Vec<String>, PeerIdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PeerIdentityError::NotX509(e.to_string()))?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                uris.push(uri.to_string());
            }
        }
    }
    Ok(uris)
}

/// The one SPIFFE workload identity in a DER certificate.
pub fn identity_of(der: &[u8]) -> Result<SpiffeId, PeerIdentityError> {
    let uris = uri_sans(der)?;
    let ids: Vec<SpiffeId> = uris.iter().filter_map(|u| u.parse().ok()).collect();
    match ids.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(PeerIdentityError::NoIdentity),
        _ => Err(PeerIdentityError::SeveralIdentities),
    }
}
