//! Prometheus metrics of xds-server, served as text on its admin port. A leaf: the crates
//! that count (identity, ads, the daemon) depend on it, it depends on none of them.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// One workload certificate: the proxy holding it and the identity it proves.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabel {
    pub node: String,
    pub identity: String,
}

#[derive(Debug)]
pub struct Metrics {
    /// Incremented on every push; read to tell a busy server from an idle one.
    push_activity: AtomicU64,
    pub certificates_issued: Family<ReasonLabel, Counter>,
    pub certificate_expiry_seconds: Family<CertificateLabel, Gauge>,
    pub certificate_expiry_timestamp: Family<CertificateLabel, Gauge>,
    pub xds_refused_streams: Family<ReasonLabel, Counter>,
    /// JWKS fetches by result (ok, error).
    pub jwks_fetches: Family<ResultLabel, Counter>,
    /// Sidecars' requests for keys they lack, by result (fetch, known).
    pub jwks_unknown_keys: Family<ResultLabel, Counter>,
    /// Cluster objects the loader refused and the mesh is served without, by kind.
    pub kubernetes_objects_left_out: Family<KindLabel, Gauge>,
    registry: Registry,
    pub connected_proxies: Gauge,
    pub pushes: Family<TypeLabel, Counter>,
    pub acks: Family<TypeLabel, Counter>,
    pub nacks: Family<TypeLabel, Counter>,
    pub push_bytes: Family<TypeLabel, Counter<u64, AtomicU64>>,
    pub config_reloads: Family<ResultLabel, Counter>,
    pub config_last_reload_success: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ward");
        let connected_proxies = Gauge::default();
        let pushes = Family::<TypeLabel, Counter>::default();
        let acks = Family::<TypeLabel, Counter>::default();
        let nacks = Family::<TypeLabel, Counter>::default();
        let push_bytes = Family::<TypeLabel, Counter<u64, AtomicU64>>::default();
        let config_reloads = Family::<ResultLabel, Counter>::default();
        let config_last_reload_success = Gauge::default();
        registry.register(
            "xds_connected_proxies",
            "Proxies with an open ADS stream",
            connected_proxies.clone(),
        );
        registry.register("xds_pushes", "xDS responses sent, by type", pushes.clone());
        registry.register(
            "xds_acks",
            "xDS responses ACKed by proxies, by type",
            acks.clone(),
        );
        registry.register(
            "xds_nacks",
            "xDS responses NACKed (rejected) by proxies, by type",
            nacks.clone(),
        );
        registry.register(
            "xds_push_bytes",
            "Encoded bytes of xDS responses sent, by type",
            push_bytes.clone(),
        );
        registry.register(
            "config_reloads",
            "Config loads, by result (ok or error)",
            config_reloads.clone(),
        );
        registry.register(
            "config_last_reload_success",
            "1 if the last config load succeeded, 0 if the last good config is serving after an error",
            config_last_reload_success.clone(),
        );
        let certificates_issued = Family::<ReasonLabel, Counter>::default();
        let certificate_expiry_seconds = Family::<CertificateLabel, Gauge>::default();
        let certificate_expiry_timestamp = Family::<CertificateLabel, Gauge>::default();
        let xds_refused_streams = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "certificates_issued",
            "Workload certificates signed, by reason (initial, renewal, identity-changed)",
            certificates_issued.clone(),
        );
        registry.register(
            "workload_certificate_expiry_seconds",
            "Seconds until each workload certificate expires (as of the scrape)",
            certificate_expiry_seconds.clone(),
        );
        registry.register(
            "workload_certificate_expiry_timestamp_seconds",
            "Unix time at which each workload certificate expires",
            certificate_expiry_timestamp.clone(),
        );
        registry.register(
            "xds_refused_streams",
            "ADS streams or requests refused, by reason (no client certificate, identity mismatch, ...)",
            xds_refused_streams.clone(),
        );
        let jwks_fetches = Family::<ResultLabel, Counter>::default();
        registry.register(
            "jwks_fetches",
            "Fetches of RequestAuthentication jwksUri documents, by result (ok, error; an error keeps the last good keys)",
            jwks_fetches.clone(),
        );
        let jwks_unknown_keys = Family::<ResultLabel, Counter>::default();
        registry.register(
            "jwks_unknown_keys",
            "Sidecars' requests to fetch a jwksUri again for a token signed with a key they lack, by result (fetch: a fetch was started; known: xds-server has that key, the sidecar's config is on its way)",
            jwks_unknown_keys.clone(),
        );
        let kubernetes_objects_left_out = Family::<KindLabel, Gauge>::default();
        registry.register(
            "kubernetes_objects_left_out",
            "Cluster objects the last load refused and left out (the rest of the cluster is applied), by kind",
            kubernetes_objects_left_out.clone(),
        );
        Metrics {
            kubernetes_objects_left_out,
            jwks_unknown_keys,
            jwks_fetches,
            push_activity: AtomicU64::new(0),
            certificates_issued,
            certificate_expiry_seconds,
            certificate_expiry_timestamp,
            xds_refused_streams,
            registry,
            connected_proxies,
            pushes,
            acks,
            nacks,
            push_bytes,
            config_reloads,
            config_last_reload_success,
        }
    }

    pub fn record_push_activity(&self) {
        self.push_activity
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn push_activity(&self) -> u64 {
        self.push_activity
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn by_type(type_short: &str) -> TypeLabel {
        TypeLabel {
            r#type: type_short.to_string(),
        }
    }

    pub fn record_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.config_reloads
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
        self.config_last_reload_success.set(i64::from(ok));
    }

    /// A workload certificate issued (`reason`: first, renewal, ...) for `identity` on `node`.
    pub fn record_certificate(
        &self,
        reason: &str,
        node: &str,
        identity: &str,
        not_after: std::time::SystemTime,
    ) {
        self.certificates_issued
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
        let label = CertificateLabel {
            node: node.to_string(),
            identity: identity.to_string(),
        };
        self.certificate_expiry_timestamp
            .get_or_create(&label)
            .set(unix(not_after));
        self.set_certificate_remaining(node, identity, not_after, std::time::SystemTime::now());
    }

    pub fn set_certificate_remaining(
        &self,
        node: &str,
        identity: &str,
        not_after: std::time::SystemTime,
        now: std::time::SystemTime,
    ) {
        let label = CertificateLabel {
            node: node.to_string(),
            identity: identity.to_string(),
        };
        self.certificate_expiry_seconds
            .get_or_create(&label)
            .set(unix(not_after) - unix(now));
    }

    pub fn forget_certificate(&self, node: &str, identity: &str) {
        let label = CertificateLabel {
            node: node.to_string(),
            identity: identity.to_string(),
        };
        self.certificate_expiry_seconds.remove(&label);
        self.certificate_expiry_timestamp.remove(&label);
    }

    pub fn refuse(&self, reason: &str) {
        self.xds_refused_streams
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String");
        text
    }
}

fn unix(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
