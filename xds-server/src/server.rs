//! The xds-server daemon: loads the config, keeps per-proxy snapshots up to date as the
//! config directory changes (the last good config keeps serving when an edit is invalid), and
//! serves ADS plus an admin endpoint (`/metrics`, `/status`, `/healthz`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use ward_ads::AdsServer;

use ward_ads::listener::{self, XdsLimits};
use ward_ads::proxy_status::ProxyStatusRegistry;
use ward_config::model::Mesh;
use ward_identity::{CaOptions, CertificateAuthority, CertificatePolicy, WorkloadCertificates};
use ward_metrics::Metrics;
use ward_snapshot::SnapshotCache;
use ward_sources::watch::{watch_debounced, DebounceWindow};
use ward_xds::{mesh_snapshots, secret_layer, TranslateOptions};

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub config_path: PathBuf,
    pub xds_address: SocketAddr,
    pub admin_address: SocketAddr,
    pub translate: TranslateOptions,
    pub debounce: DebounceWindow,
    pub ca: CaOptions,
    pub certificates: CertificatePolicy,
    /// Serve xDS without TLS and without authenticating proxies (local debugging only).
    pub plaintext_xds: bool,
    pub xds_limits: XdsLimits,
    /// sha256 of the wasm module sidecars must report having (None: not pinned).
    pub wasm_module_sha256: Option<String>,
    /// Also read the mesh from the Kubernetes API server (in-cluster or kubeconfig).
    pub kubernetes: bool,
    /// The HTTPS port: admission webhook and bootstrap-credential exchange.
    pub https_address: Option<SocketAddr>,
    /// DNS names of the HTTPS port's certificate (the Service's names).
    pub https_names: Vec<String>,
    /// What the admission webhook injects.
    pub inject: ward_inject::InjectOptions,
}

/// What `/status` reports about the configuration.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigStatus {
    pub path: String,
    /// Incremented on every successful load.
    pub generation: u64,
    pub loaded_at_unix: u64,
    pub warnings: Vec<String>,
    /// The last reload's error, when the last good config is still serving.
    pub last_error: Option<String>,
    /// Node ids the current mesh expects.
    pub expected_nodes: Vec<String>,
}

struct ControlPlane {
    options: ServerOptions,
    cache: Arc<SnapshotCache>,
    metrics: Arc<Metrics>,
    config_status: RwLock<ConfigStatus>,
    /// Layers of the last translation, reused where unchanged.
    shared_layers: std::sync::Mutex<Option<ward_xds::SharedLayers>>,
    certificates: Arc<WorkloadCertificates>,
    /// The mesh now serving, re-translated when certificates are renewed. Its lock is held
    /// while a mesh is applied.
    current_mesh: std::sync::Mutex<Option<Arc<Mesh>>>,
    /// Wakes the renewal task when the set of certificates changed.
    renewals: tokio::sync::Notify,
    /// Keys fetched from RequestAuthentications' `jwksUri`s.
    jwks: ward_sources::jwks::JwksCache,
    /// Wakes the JWKS task when a new config may name new URIs.
    jwks_wanted: tokio::sync::Notify,
    /// Wakes the JWKS task when a sidecar saw a token signed with a key it lacks.
    keys_unknown: tokio::sync::Notify,
    /// The cluster's objects as loader sources (`--kubernetes`), merged with the files.
    cluster_sources: std::sync::Mutex<Vec<(String, String)>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ControlPlane {
    /// Translates the mesh into snapshots; nodes that left the mesh lose theirs.
    fn apply(&self, mesh: &Mesh) {
        // The keys fetched so far join the mesh here, so the loader stays free of I/O.
        let with_keys;
        let mesh = if mesh.jwks_uris().is_empty() {
            mesh
        } else {
            let mut filled = mesh.clone();
            filled.fetched_jwks = self.jwks.documents();
            with_keys = filled;
            &with_keys
        };
        let mut shared = self.shared_layers.lock().expect("shared layers lock");
        let bundle = self.certificates.ca().trust_bundle_pem().to_string();
        let secrets = |w: &ward_config::model::Workload, i: &ward_config::model::Instance| {
            let node_id = Mesh::node_id(w, i);
            match self.certificates.get_or_issue(&node_id, &mesh.identity(w)) {
                Ok(cert) => Some(secret_layer(&cert, &bundle)),
                Err(e) => {
                    error!(node = %node_id, error = %e, "could not sign a workload certificate; the proxy gets no new one");
                    None
                }
            }
        };
        let (snapshots, layers) =
            mesh_snapshots(mesh, &self.options.translate, shared.as_ref(), secrets);
        *shared = Some(layers);
        drop(shared);
        let expected: Vec<String> = snapshots.iter().map(|(id, _)| id.clone()).collect();
        let expected_set: std::collections::HashSet<&String> = expected.iter().collect();
        let mut changed = 0;
        for (node_id, snapshot) in snapshots {
            if self.cache.set(&node_id, snapshot) {
                changed += 1;
            }
        }
        for node_id in self.cache.node_ids() {
            if !expected_set.contains(&node_id) {
                self.cache.clear(&node_id);
            }
        }
        self.certificates.retain(&expected_set);
        self.renewals.notify_one();
        info!(proxies = expected.len(), changed, "snapshots updated");
        drop(expected_set);
        let mut status = self.config_status.write().expect("config status lock");
        status.expected_nodes = expected;
    }

    /// Reloads, and records the outcome (an invalid config keeps the last good one serving).
    /// xds-server's own identity in the loaded mesh's trust domain and root namespace.
    fn server_identity(&self) -> ward_config::SpiffeId {
        let mesh = self.current_mesh.lock().expect("mesh lock");
        let mesh = mesh.as_ref().expect("a mesh is loaded before serving");
        ward_config::SpiffeId::xds_server(&mesh.trust_domain, &mesh.root_namespace)
    }

    fn reload_reporting(&self, cause: &str) {
        match self.reload() {
            Ok(()) => {
                self.metrics.record_reload(true);
                info!(cause, "config reloaded");
            }
            Err(e) => {
                self.metrics.record_reload(false);
                error!(cause, error = %e, "invalid config; the last good config keeps serving");
                self.config_status
                    .write()
                    .expect("config status lock")
                    .last_error = Some(e.to_string());
            }
        }
    }

    fn reload(&self) -> Result<(), ward_config::ConfigError> {
        let files = ward_config::read_sources(&self.options.config_path)?;
        let cluster = self
            .cluster_sources
            .lock()
            .expect("cluster sources lock")
            .clone();
        let (loaded, left_out) = crate::discovery::load(&files, &cluster)?;
        for warning in &loaded.warnings {
            warn!(%warning, "config");
        }
        let mut warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        warnings.extend(crate::discovery::report_left_out(&self.metrics, &left_out));
        if self.options.translate.wasm_module.is_none() {
            let budgets = ward_xds::resilience::outbound_filter_config(&loaded.mesh);
            for destination in budgets.budgets.keys() {
                let warning = format!(
                    "ServiceProfile {destination}: retries are not budgeted (retryBudget ignored): xds-server runs without --wasm-module, and the budget is kept by the wasm filter; each retryable request is retried up to {} times",
                    ward_xds::resilience::PROFILE_MAX_RETRIES
                );
                warn!(%warning, "config");
                warnings.push(warning);
            }
        }
        // Held across the translation, so a renewal never re-applies the mesh being replaced.
        let mut current = self.current_mesh.lock().expect("mesh lock");
        let mesh = Arc::new(loaded.mesh);
        self.apply(&mesh);
        *current = Some(mesh);
        drop(current);
        self.jwks_wanted.notify_one();
        let mut status = self.config_status.write().expect("config status lock");
        status.generation += 1;
        status.loaded_at_unix = unix_now();
        status.warnings = warnings;
        status.last_error = None;
        Ok(())
    }
}

/// How often `jwksUri`s are fetched again (key rotation reaches the proxies within this, or
/// at once when a sidecar sees a token signed with a key it lacks).
const JWKS_REFRESH: std::time::Duration = std::time::Duration::from_secs(300);
/// Fetches asked for by sidecars (unknown `kid`s) are at least this far apart, so tokens
/// nobody can verify cannot make xds-server hammer an issuer.
const UNKNOWN_KEY_REFETCH: std::time::Duration = std::time::Duration::from_secs(5);

impl ControlPlane {
    /// A sidecar saw a token from `issuer` whose `kid` its keys lack: fetch the issuer's
    /// `jwksUri`s again, unless the key is already here (the sidecar's config is on its way).
    fn on_unknown_key(&self, issuer: &str, kid: &str) -> Result<bool, tonic::Status> {
        let mesh = self.current_mesh.lock().expect("mesh lock").clone();
        let uris = mesh.map(|m| m.jwks_uris_of(issuer)).unwrap_or_default();
        if uris.is_empty() {
            return Err(tonic::Status::not_found(format!(
                "no RequestAuthentication fetches keys for issuer {issuer}"
            )));
        }
        let known = uris.iter().any(|uri| self.jwks.has_key(uri, kid));
        let result = if known { "known" } else { "fetch" };
        self.metrics
            .jwks_unknown_keys
            .get_or_create(&ward_metrics::ResultLabel {
                result: result.to_string(),
            })
            .inc();
        info!(%issuer, %kid, result, "a sidecar lacks a key");
        if !known {
            self.keys_unknown.notify_one();
        }
        Ok(!known)
    }
}

/// Fetches the JWKS URIs the current mesh names: at start, after every config change, and
/// every [`JWKS_REFRESH`]; re-translates when a document changed.
async fn refresh_jwks(control: Arc<ControlPlane>) {
    loop {
        let mesh = control.current_mesh.lock().expect("mesh lock").clone();
        if let Some(mesh) = mesh {
            let uris = mesh.jwks_uris();
            if !uris.is_empty()
                && control
                    .jwks
                    .refresh(&uris, unix_now(), &control.metrics)
                    .await
            {
                info!(uris = uris.len(), "JWKS changed; updating the proxies");
                let current = control.current_mesh.lock().expect("mesh lock");
                if let Some(mesh) = current.as_ref() {
                    control.apply(mesh);
                }
            }
        }
        let fetched = tokio::time::Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(JWKS_REFRESH) => {}
            _ = control.jwks_wanted.notified() => {}
            _ = control.keys_unknown.notified() => {
                tokio::time::sleep_until(fetched + UNKNOWN_KEY_REFETCH).await;
            }
        }
    }
}

/// Re-translates the current mesh whenever a certificate is due, so renewed certificates
/// reach their proxies over SDS before the old ones expire.
async fn renew_certificates(control: Arc<ControlPlane>) {
    loop {
        let wait = control
            .certificates
            .next_renewal()
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default())
            .unwrap_or(std::time::Duration::from_secs(3600))
            .clamp(
                std::time::Duration::from_millis(200),
                std::time::Duration::from_secs(3600),
            );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = control.renewals.notified() => continue,
        }
        let due = control
            .certificates
            .next_renewal()
            .is_some_and(|at| at <= SystemTime::now());
        if !due {
            continue;
        }
        let current = control.current_mesh.lock().expect("mesh lock");
        if let Some(mesh) = current.as_ref() {
            info!("renewing workload certificates");
            control.apply(mesh);
        }
    }
}

pub async fn run(options: ServerOptions) -> anyhow::Result<()> {
    ward_ads::listener::raise_fd_limit();
    let status = ProxyStatusRegistry::new();
    let control = control_plane(&options)?;
    tokio::spawn(refresh_jwks(control.clone()));
    #[cfg(not(feature = "jemalloc"))]
    tokio::spawn(release_freed_memory(control.metrics.clone()));

    let kubernetes = match options.kubernetes {
        true => Some(follow_kubernetes(&control).await?),
        false => None,
    };
    // The first load must succeed: there is no last good config to fall back to.
    control.reload()?;
    control.metrics.record_reload(true);
    tokio::spawn(renew_certificates(control.clone()));
    let _watcher = reload_on_changes(&control, kubernetes.as_ref().map(|k| k.sources.clone()))?;

    let admin = tokio::net::TcpListener::bind(options.admin_address)
        .await
        .with_context(|| format!("binding the admin endpoint on {}", options.admin_address))?;
    tokio::spawn(serve_admin(admin, control.clone(), status.clone()));
    if let Some(address) = options.https_address {
        serve_https(&control, address, kubernetes.map(|k| k.client)).await?;
    }
    serve_xds(control, status).await
}

/// The CA, the workload certificates and the (empty) control plane state.
fn control_plane(options: &ServerOptions) -> anyhow::Result<Arc<ControlPlane>> {
    let metrics = Arc::new(Metrics::new());
    let ca = CertificateAuthority::load_or_create(&options.ca).context("starting the CA")?;
    info!(source = ?ca.source, "CA ready");
    let certificates = Arc::new(WorkloadCertificates::new(
        ca,
        options.certificates,
        metrics.clone(),
    ));
    Ok(Arc::new(ControlPlane {
        options: options.clone(),
        cache: Arc::new(SnapshotCache::new()),
        metrics,
        config_status: RwLock::new(ConfigStatus {
            path: options.config_path.display().to_string(),
            ..Default::default()
        }),
        shared_layers: Default::default(),
        certificates,
        current_mesh: Default::default(),
        renewals: tokio::sync::Notify::new(),
        jwks: Default::default(),
        jwks_wanted: tokio::sync::Notify::new(),
        keys_unknown: tokio::sync::Notify::new(),
        cluster_sources: Default::default(),
    }))
}

/// What `--kubernetes` adds: the API client, and the cluster's objects as discovery sees them.
struct Kubernetes {
    client: kube::Client,
    sources: tokio::sync::watch::Receiver<Option<crate::discovery::Sources>>,
}

/// Publishes the trust bundle, starts discovery and waits for its first listing, which the
/// first load includes.
async fn follow_kubernetes(control: &Arc<ControlPlane>) -> anyhow::Result<Kubernetes> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API server (in-cluster, or KUBECONFIG)")?;
    let root_control = control.clone();
    tokio::spawn(crate::root_cert::run(
        client.clone(),
        Arc::new(move || {
            root_control
                .certificates
                .ca()
                .trust_bundle_pem()
                .to_string()
        }),
    ));
    let (tx, mut rx) = tokio::sync::watch::channel(None);
    tokio::spawn(crate::discovery::run(
        client.clone(),
        control.options.debounce.quiet,
        tx,
    ));
    let first = rx
        .wait_for(Option::is_some)
        .await
        .context("Kubernetes discovery stopped before listing the cluster")?
        .clone()
        .unwrap_or_default();
    *control
        .cluster_sources
        .lock()
        .expect("cluster sources lock") = first;
    Ok(Kubernetes {
        client,
        sources: rx,
    })
}

/// Reloads on every debounced change of the config directory and of the cluster; the
/// returned watcher stops watching the directory when dropped.
fn reload_on_changes(
    control: &Arc<ControlPlane>,
    cluster: Option<tokio::sync::watch::Receiver<Option<crate::discovery::Sources>>>,
) -> anyhow::Result<ward_sources::watch::DirectoryWatcher> {
    let (changes_tx, mut changes) = mpsc::channel(4);
    let watcher = watch_debounced(
        &control.options.config_path,
        control.options.debounce,
        changes_tx,
    )?;
    let reloader = control.clone();
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            reloader.reload_reporting("files");
        }
    });
    if let Some(mut cluster) = cluster {
        let reloader = control.clone();
        tokio::spawn(async move {
            while cluster.changed().await.is_ok() {
                let sources = cluster.borrow_and_update().clone().unwrap_or_default();
                *reloader
                    .cluster_sources
                    .lock()
                    .expect("cluster sources lock") = sources;
                reloader.reload_reporting("kubernetes");
            }
        });
    }
    Ok(watcher)
}

/// The admission webhook and the credential exchange, on their own TLS port.
async fn serve_https(
    control: &Arc<ControlPlane>,
    address: SocketAddr,
    kube_client: Option<kube::Client>,
) -> anyhow::Result<()> {
    let options = &control.options;
    let identity = control.server_identity();
    let mut names: Vec<&str> = options.https_names.iter().map(String::as_str).collect();
    names.extend(["xds-server", "localhost"]);
    let tls = crate::control_https::tls_config(
        &control.certificates.ca(),
        &identity,
        &names,
        &[address.ip()],
    )
    .context("issuing the HTTPS port's serving certificate")?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the HTTPS port on {address}"))?;
    let ca_control = control.clone();
    let handlers = Arc::new(crate::control_https::Handlers {
        inject: options.inject.clone(),
        ca: Arc::new(move || ca_control.certificates.ca()),
        trust_domain: identity.trust_domain,
        reviewer: kube_client.map(crate::control_https::kubernetes_reviewer),
    });
    info!(https = %address, "admission webhook (/inject) and credential exchange (/v1/credential) serving");
    tokio::spawn(crate::control_https::serve(listener, tls, handlers));
    Ok(())
}

/// The xDS port (ADS and the key refresh service) until shutdown.
async fn serve_xds(control: Arc<ControlPlane>, status: ProxyStatusRegistry) -> anyhow::Result<()> {
    let options = &control.options;
    let metrics = control.metrics.clone();
    let mut ads = AdsServer::new(control.cache.clone(), status, metrics.clone());
    if let Some(pin) = &options.wasm_module_sha256 {
        info!(sha256 = %pin, "serving only sidecars whose wasm module has this sha256");
        ads = ads.pinning_module(pin.clone());
    }
    if let Some(bucket) = options.xds_limits.admission() {
        ads = ads.admitting(bucket);
    }
    let mut tls = None;
    if options.plaintext_xds {
        warn!("xDS is served in plaintext and proxies are not authenticated (--plaintext-xds): for local debugging only");
    } else {
        let identity = control.server_identity();
        tls = Some(
            listener::tls_config(&control.certificates.ca(), &identity, options.xds_address)
                .context("issuing xds-server's serving certificate")?,
        );
        let lookup = control.clone();
        ads = ads.authenticating(Arc::new(move |node_id: &str| {
            let mesh = lookup.current_mesh.lock().expect("mesh lock").clone()?;
            let (workload, _) = mesh.instance_by_node_id(node_id)?;
            Some(mesh.identity(workload))
        }));
    }
    let listener = tokio::net::TcpListener::bind(options.xds_address)
        .await
        .with_context(|| format!("binding xDS on {}", options.xds_address))?;
    info!(
        xds = %options.xds_address,
        admin = %options.admin_address,
        tls = !options.plaintext_xds,
        max_connections = options.xds_limits.max_connections,
        new_streams_per_second = options.xds_limits.new_streams_per_second,
        new_stream_burst = options.xds_limits.new_stream_burst,
        max_connection_age = ?options.xds_limits.max_connection_age,
        "xds-server serving"
    );
    let key_control = control.clone();
    let routes = tonic::service::Routes::new(ads.into_service())
        .add_service(crate::key_refresh::KeyRefreshService::new(Arc::new(
            move |issuer: &str, kid: &str| key_control.on_unknown_key(issuer, kid),
        )))
        .prepare();
    listener::serve(
        listener::incoming(listener, options.xds_limits, metrics),
        tls,
        options.xds_limits,
        routes,
        shutdown_signal(),
    )
    .await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    info!("shutting down");
}

async fn serve_admin(
    listener: tokio::net::TcpListener,
    control: Arc<ControlPlane>,
    status: ProxyStatusRegistry,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let control = control.clone();
        let status = status.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let response = admin_response(&control, &status, request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

fn admin_response(
    control: &ControlPlane,
    status: &ProxyStatusRegistry,
    path: &str,
) -> Response<Full<Bytes>> {
    let (code, content_type, body) = match path {
        "/healthz" => (200, "text/plain", "ok\n".to_string()),
        "/metrics" => {
            control.certificates.update_expiry_gauges();
            (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                control.metrics.encode(),
            )
        }
        "/status" => {
            let config = control
                .config_status
                .read()
                .expect("config status lock")
                .clone();
            let body = serde_json::json!({
                "config": config,
                "proxies": status.snapshot_json(&control.cache),
                // Streams refused (wrong credential, another wasm module), by node.
                "refused": status.refused(),
                // Per jwksUri: keys, last good fetch, last error.
                "jwks": control.jwks.status(),
            });
            (200, "application/json", body.to_string())
        }
        _ => (404, "text/plain", "not found\n".to_string()),
    };
    Response::builder()
        .status(code)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

/// Pushes build large responses briefly; glibc keeps freed memory mapped unless asked, which
/// would make a burst of pushes look like a permanent cost in RSS. Trimming walks the whole
/// heap under the allocator's locks, so it waits for a second with no push after a burst.
/// (jemalloc, the default allocator, returns unused pages by itself.)
#[cfg(not(feature = "jemalloc"))]
async fn release_freed_memory(metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut seen = metrics.push_activity();
    let mut trimmed = false;
    loop {
        tick.tick().await;
        let now = metrics.push_activity();
        if now != seen {
            seen = now;
            trimmed = false;
            continue;
        }
        if trimmed {
            continue;
        }
        trimmed = true;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free memory to the OS.
        #[allow(unsafe_code)]
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
