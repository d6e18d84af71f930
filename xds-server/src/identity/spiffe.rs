//! SPIFFE identities (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`) and reading them out of
//! X.509 certificates.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| format!("`{s}` is not a SPIFFE id (spiffe://...)"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(SpiffeId {
                    trust_domain: td.to_string(),
                    namespace: ns.to_string(),
                    service_account: sa.to_string(),
                })
            }
            _ => Err(format!(
                "`{s}` is not a workload identity (spiffe://<trust-domain>/ns/<ns>/sa/<sa>)"
            )),
        }
    }
}

/// The URI subject alternative names of a DER certificate.
pub fn uri_sans(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
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
pub fn identity_of(der: &[u8]) -> Result<SpiffeId, String> {
    let uris = uri_sans(der)?;
    let ids: Vec<SpiffeId> = uris.iter().filter_map(|u| u.parse().ok()).collect();
    match ids.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err("the certificate carries no SPIFFE workload identity".into()),
        _ => Err("the certificate carries more than one SPIFFE identity".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_workload_identities() {
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/exam-scheduler"
            .parse()
            .unwrap();
        assert_eq!(id.namespace, "default");
        assert_eq!(id.service_account, "exam-scheduler");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/exam-scheduler"
        );
        assert!("spiffe://cluster.local/ns/default"
            .parse::<SpiffeId>()
            .is_err());
        assert!("https://cluster.local/ns/a/sa/b"
            .parse::<SpiffeId>()
            .is_err());
    }
}
