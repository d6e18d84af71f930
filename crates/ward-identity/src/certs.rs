//! Workload certificates per proxy: issued on first need, renewed ahead of expiry (at a
//! fraction of the lifetime, 4/5 by default), forgotten when the proxy leaves the mesh.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use ward_config::SpiffeId;
use ward_metrics::Metrics;

use crate::ca::{CaError, CertificateAuthority, IssuedCertificate};

/// Istio's and Kuma's default workload certificate lifetime.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Renew when this fraction of the lifetime has passed (Kuma and Istio renew at 4/5).
pub const DEFAULT_RENEW_FRACTION: f64 = 0.8;

#[derive(Debug, Clone, Copy)]
pub struct CertificatePolicy {
    pub lifetime: Duration,
    pub renew_fraction: f64,
}

impl Default for CertificatePolicy {
    fn default() -> Self {
        CertificatePolicy {
            lifetime: DEFAULT_LIFETIME,
            renew_fraction: DEFAULT_RENEW_FRACTION,
        }
    }
}

/// Why a certificate was signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueReason {
    Initial,
    Renewal,
    IdentityChanged,
}

impl IssueReason {
    fn label(self) -> &'static str {
        match self {
            IssueReason::Initial => "initial",
            IssueReason::Renewal => "renewal",
            IssueReason::IdentityChanged => "identity-changed",
        }
    }
}

pub struct WorkloadCertificates {
    ca: RwLock<Arc<CertificateAuthority>>,
    policy: CertificatePolicy,
    by_node: Mutex<HashMap<String, Arc<IssuedCertificate>>>,
    metrics: Arc<Metrics>,
}

impl WorkloadCertificates {
    pub fn new(ca: CertificateAuthority, policy: CertificatePolicy, metrics: Arc<Metrics>) -> Self {
        WorkloadCertificates {
            ca: RwLock::new(Arc::new(ca)),
            policy,
            by_node: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    pub fn ca(&self) -> Arc<CertificateAuthority> {
        self.ca.read().expect("ca lock").clone()
    }

    pub fn policy(&self) -> CertificatePolicy {
        self.policy
    }

    /// When `cert` is due for renewal.
    pub fn renew_at(&self, cert: &IssuedCertificate) -> SystemTime {
        cert.not_before + cert.lifetime().mul_f64(self.policy.renew_fraction)
    }

    /// The node's certificate, signed now if it has none, its identity changed, or it is due.
    pub fn get_or_issue(
        &self,
        node_id: &str,
        spiffe_id: &SpiffeId,
    ) -> Result<Arc<IssuedCertificate>, CaError> {
        let reason = {
            let by_node = self.by_node.lock().expect("certificates lock");
            match by_node.get(node_id) {
                None => IssueReason::Initial,
                Some(cert) if cert.spiffe_id != *spiffe_id => IssueReason::IdentityChanged,
                Some(cert) if SystemTime::now() >= self.renew_at(cert) => IssueReason::Renewal,
                Some(cert) => return Ok(cert.clone()),
            }
        };
        let cert = Arc::new(self.ca().issue(spiffe_id, self.policy.lifetime)?);
        tracing::info!(
            node = node_id,
            identity = %spiffe_id,
            serial = %cert.serial_hex,
            reason = reason.label(),
            "issued a workload certificate"
        );
        let previous = self
            .by_node
            .lock()
            .expect("certificates lock")
            .insert(node_id.to_string(), cert.clone());
        if let Some(old) = previous.filter(|old| old.spiffe_id != cert.spiffe_id) {
            self.metrics
                .forget_certificate(node_id, &old.spiffe_id.to_string());
        }
        self.metrics.record_certificate(
            reason.label(),
            node_id,
            &cert.spiffe_id.to_string(),
            cert.not_after,
        );
        Ok(cert)
    }

    /// The earliest time a held certificate is due.
    pub fn next_renewal(&self) -> Option<SystemTime> {
        self.by_node
            .lock()
            .expect("certificates lock")
            .values()
            .map(|c| self.renew_at(c))
            .min()
    }

    /// Forgets the certificates of nodes no longer in the mesh.
    pub fn retain(&self, node_ids: &HashSet<&String>) {
        let mut by_node = self.by_node.lock().expect("certificates lock");
        by_node.retain(|node, cert| {
            let keep = node_ids.contains(node);
            if !keep {
                self.metrics
                    .forget_certificate(node, &cert.spiffe_id.to_string());
            }
            keep
        });
    }

    /// Every held certificate, by node id.
    pub fn all(&self) -> Vec<(String, Arc<IssuedCertificate>)> {
        let mut all: Vec<_> = self
            .by_node
            .lock()
            .expect("certificates lock")
            .iter()
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Refreshes the seconds-until-expiry gauges (called before each scrape).
    pub fn update_expiry_gauges(&self) {
        let now = SystemTime::now();
        for (node, cert) in self.all() {
            self.metrics.set_certificate_remaining(
                &node,
                &cert.spiffe_id.to_string(),
                cert.not_after,
                now,
            );
        }
    }
}
