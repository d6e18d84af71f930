//! Publishes the mesh's root certificate where Kubernetes needs it, as istiod does:
//! - ConfigMap `ward-root-cert` (`root-cert.pem`) in every namespace: injected pods mount it
//!   to trust xds-server when they exchange their service-account token for a credential
//!   (server-side apply, field manager `ward-xds-server`, when a namespace appears or the
//!   root changes);
//! - the `caBundle` of the sidecar injector's webhooks (MutatingWebhookConfiguration
//!   [`WEBHOOK_CONFIGURATION`]), so the API server trusts the webhook it calls.
//!
//! Nothing else is ever written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;
use tracing::{debug, info, warn};

use ward_config::wellknown::ROOT_CERT_CONFIG_MAP;

/// The sidecar injector's webhook configuration (deploy/kubernetes/webhook.yaml).
pub const WEBHOOK_CONFIGURATION: &str = "ward-sidecar-injector";

/// Sets every webhook's `caBundle` of [`WEBHOOK_CONFIGURATION`] to `pem`. Ok(false) if the
/// configuration is not installed.
async fn publish_ca_bundle(client: &Client, pem: &str) -> Result<bool, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(configuration) = api.get_opt(WEBHOOK_CONFIGURATION).await? else {
        return Ok(false);
    };
    let bundle = base64::engine::general_purpose::STANDARD.encode(pem);
    let patch: Vec<serde_json::Value> = (0..configuration.webhooks.map_or(0, |w| w.len()))
        .map(|i| json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle}))
        .collect();
    if patch.is_empty() {
        return Ok(true);
    }
    let patch: json_patch::Patch = serde_json::from_value(json!(patch)).expect("a JSON Patch");
    api.patch(
        WEBHOOK_CONFIGURATION,
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await?;
    Ok(true)
}

/// The root's PEM, read each time (plugged-in CAs can change it).
pub type RootPem = Arc<dyn Fn() -> String + Send + Sync>;

pub async fn run(client: Client, root: RootPem) {
    let writer = reflector::store::Writer::<Namespace>::default();
    let namespaces = writer.as_reader();
    let changed = Arc::new(tokio::sync::Notify::new());
    let notify = changed.clone();
    let stream = reflector::reflector(
        writer,
        watcher(Api::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if event.is_ok() {
                notify.notify_one();
            }
        }
    });
    // Namespace → the root last applied there.
    let mut applied: BTreeMap<String, String> = BTreeMap::new();
    let mut webhook_bundle: Option<String> = None;
    loop {
        let pem = root();
        if webhook_bundle.as_ref() != Some(&pem) {
            match publish_ca_bundle(&client, &pem).await {
                Ok(true) => {
                    info!(
                        configuration = WEBHOOK_CONFIGURATION,
                        "webhook caBundle set to the mesh root"
                    );
                    webhook_bundle = Some(pem.clone());
                }
                Ok(false) => debug!(
                    configuration = WEBHOOK_CONFIGURATION,
                    "no webhook configuration installed"
                ),
                Err(e) => warn!(error = %e, "could not set the webhook's caBundle; retrying"),
            }
        }
        for ns in namespaces.state() {
            let Some(name) = ns.metadata.name.clone() else {
                continue;
            };
            if applied.get(&name) == Some(&pem) {
                continue;
            }
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &name);
            let config_map = json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": ROOT_CERT_CONFIG_MAP,
                    "labels": {"app.kubernetes.io/part-of": "ward"},
                },
                "data": {"root-cert.pem": pem},
            });
            match api
                .patch(
                    ROOT_CERT_CONFIG_MAP,
                    &PatchParams::apply("ward-xds-server").force(),
                    &Patch::Apply(&config_map),
                )
                .await
            {
                Ok(_) => {
                    info!(namespace = %name, "root certificate published");
                    applied.insert(name, pem.clone());
                }
                Err(e) => {
                    warn!(namespace = %name, error = %e, "could not publish the root certificate; retrying")
                }
            }
        }
        // A new namespace, or a minute (a failed write, a rotated root).
        let _ = tokio::time::timeout(Duration::from_secs(60), changed.notified()).await;
    }
}
