//! SPIFFE workload identities (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`): the one type every
//! crate builds, prints and parses them with. Reading them out of certificates is
//! `ward-identity`'s job.

use std::fmt;
use std::str::FromStr;

use crate::wellknown;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// Why a string is not a workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("`{0}` is not a SPIFFE id (spiffe://...)")]
    NotSpiffe(String),
    #[error("`{0}` is not a workload identity (spiffe://<trust-domain>/ns/<ns>/sa/<sa>)")]
    NotWorkload(String),
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }

    /// xds-server's own identity: the service account `xds-server` in the root namespace.
    pub fn xds_server(trust_domain: &str, root_namespace: &str) -> Self {
        SpiffeId::new(
            trust_domain,
            root_namespace,
            wellknown::XDS_SERVER_SERVICE_ACCOUNT,
        )
    }
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
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::NotSpiffe(s.to_string()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(SpiffeId::new(td, ns, sa))
            }
            _ => Err(SpiffeIdError::NotWorkload(s.to_string())),
        }
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

    #[test]
    fn xds_server_identity_is_in_the_root_namespace() {
        assert_eq!(
            SpiffeId::xds_server("cluster.local", "istio-system").to_string(),
            "spiffe://cluster.local/ns/istio-system/sa/xds-server"
        );
    }
}
