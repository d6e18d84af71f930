//! Publishes the mesh's root certificate as ConfigMap `ward-root-cert` (`root-cert.pem`) in
//! every namespace, as istiod does with `istio-ca-root-cert`: injected pods mount it to trust
//! xds-server when they exchange their service-account token for a credential. Applied
//! (server-side apply, field manager `ward-xds-server`) when a namespace appears and when the
//! root changes; nothing else is ever written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Client;
use serde_json::json;
use tracing::{info, warn};

use crate::inject::ROOT_CERT_CONFIG_MAP;

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
    loop {
        let pem = root();
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
