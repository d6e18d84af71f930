//! Prometheus metrics of xds-server, served as text on the admin port.

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

#[derive(Debug)]
pub struct Metrics {
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
        Metrics {
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

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String");
        text
    }
}
