//! `wardctl bench xds`: how fast a config change reaches every proxy, and what each connected
//! proxy costs the server. The real `xds-server` binary runs as a child process on a
//! generated config (so its CPU and memory are its own), and N simulated delta-ADS clients
//! subscribe as Envoy does (CDS and LDS wildcard, EDS by cluster name, RDS, SDS and ECDS by
//! the names their listeners and clusters give) and ACK every response. They connect as
//! Envoy does in production, over mutual TLS with a bootstrap credential for their workload's
//! identity (plaintext only when asked, as for xds-server itself).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use prost::Message;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::runner::admin_client;
use ward_snapshot::{CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, SECRET};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub proxies: usize,
    pub services: usize,
    pub xds_server: PathBuf,
    pub work_dir: PathBuf,
    /// Also measure a certificate renewal wave: certificates are issued with a lifetime such
    /// that every proxy's comes due this long after the server starts.
    pub renew_after: Option<Duration>,
    /// More `xds-server serve` flags (e.g. `--max-new-streams-per-second 100`). Without a
    /// `--max-new-streams-per-second` of its own the server admits every stream at once, so
    /// the initial sync measures the server, not its admission rate.
    pub server_args: Vec<String>,
    /// The proxies and the server speak plaintext gRPC instead of mutual TLS.
    pub plaintext: bool,
    /// Every service also gets a DestinationRule with 3 subsets and a VirtualService with
    /// 5 routes (Istio's traffic tasks at scale).
    pub traffic_rules: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub proxies: usize,
    pub services: usize,
    /// Each service with a DestinationRule (3 subsets) and a VirtualService (5 routes).
    pub traffic_rules: bool,
    /// "mutual TLS" or "plaintext".
    pub xds_transport: &'static str,
    /// All proxies connected and SYNCED on every type they subscribe to, from the first connect.
    pub initial_sync_ms: f64,
    /// From the config file write until each proxy ACKed the changed endpoints.
    pub change_to_ack: Percentiles,
    pub server_cpu_seconds_initial_sync: f64,
    pub server_cpu_seconds_change: f64,
    pub server_rss_before_clients_mib: f64,
    pub server_rss_synced_mib: f64,
    pub server_peak_rss_mib: f64,
    pub server_kib_per_proxy: f64,
    pub bytes_received_per_proxy_initial: u64,
    pub bytes_received_per_proxy_change: u64,
    /// Stream openings refused with UNAVAILABLE (admission rate limit), or connections that
    /// failed, retried with Envoy's back-off during the initial sync.
    pub streams_refused_initial: u64,
    pub renewal: Option<RenewalReport>,
}

/// Every proxy's certificate renewed at once, and pushed over SDS.
#[derive(Debug, Clone, Serialize)]
pub struct RenewalReport {
    /// From the moment the certificates came due until each proxy received its new one.
    pub due_to_received: Percentiles,
    pub server_cpu_seconds: f64,
    pub bytes_received_per_proxy: u64,
}

/// A DestinationRule with subsets v1–v3 (the service's pods are one of them) and a
/// VirtualService with 5 routes: a header match, a prefix, a timeout with retries, an 90/10
/// split and the default.
fn traffic_rules(i: usize) -> String {
    let rule = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: svc-{i}\nspec:\n  host: svc-{i}\n  subsets:\n  - name: v1\n    labels: {{version: v1}}\n  - name: v2\n    labels: {{version: v2}}\n  - name: v3\n    labels: {{version: v3}}\n---\n"
    );
    let to = |subset: &str| format!("{{destination: {{host: svc-{i}, subset: {subset}}}}}");
    let routes = [
        format!(
            "  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: [{}]\n",
            to("v2")
        ),
        format!(
            "  - match: [{{uri: {{prefix: /api/v3}}}}]\n    route: [{}]\n",
            to("v3")
        ),
        format!(
            "  - match: [{{uri: {{prefix: /slow}}}}]\n    timeout: 2s\n    retries: {{attempts: 2, perTryTimeout: 1s}}\n    route: [{}]\n",
            to("v1")
        ),
        format!(
            "  - match: [{{uri: {{exact: /canary}}}}]\n    route:\n    - {{destination: {{host: svc-{i}, subset: v1}}, weight: 90}}\n    - {{destination: {{host: svc-{i}, subset: v2}}, weight: 10}}\n"
        ),
        format!("  - route: [{}]\n", to("v1")),
    ];
    format!(
        "{rule}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: svc-{i}\nspec:\n  hosts: [svc-{i}]\n  http:\n{}---\n",
        routes.concat()
    )
}

/// One Deployment (with `proxies / services` replicas, at least 1) and one Service per
/// service index; the last Deployment takes the remainder so that there are `proxies`
/// instances in all. With `rules`, each service's [`traffic_rules`] too.
fn write_mesh(
    dir: &Path,
    proxies: usize,
    services: usize,
    rules: bool,
    extra_replica: bool,
) -> anyhow::Result<()> {
    // Replicas per Deployment first; the extra replica (the config change) adds an instance
    // to svc-0 and moves no other, so every simulated proxy stays in the mesh.
    let base = (proxies / services).max(1);
    let mut counts = Vec::with_capacity(services);
    let mut instances = 0;
    for i in 0..services {
        let replicas = if i + 1 == services {
            proxies.saturating_sub(instances).max(1)
        } else {
            base.min(proxies.saturating_sub(instances)).max(1)
        };
        instances += replicas;
        counts.push(replicas);
    }
    if extra_replica {
        counts[0] += 1;
    }
    let mut text = String::new();
    for (i, replicas) in counts.into_iter().enumerate() {
        text.push_str(&format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: svc-{i}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: svc-{i}}}\n  template:\n    metadata:\n      labels: {{app: svc-{i}, version: v{}}}\n    spec:\n      containers:\n      - name: app\n        image: hashicorp/http-echo\n        args: [\"-text=svc-{i}\"]\n        ports:\n        - containerPort: 8080\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\nspec:\n  selector: {{app: svc-{i}}}\n  ports:\n  - port: 80\n    targetPort: 8080\n---\n",
            1 + i % 3
        ));
        if rules {
            text.push_str(&traffic_rules(i));
        }
    }
    let tmp = dir.join(".mesh.yaml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join("mesh.yaml"))?;
    Ok(())
}

fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// `pid` or the first process under it (children first, then theirs) whose command name is
/// `name`.
fn descendant_named(pid: u32, name: &str) -> Option<u32> {
    let comm_of =
        |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm_of(pid).trim_end() == name {
        return Some(pid);
    }
    let mut queue = std::collections::VecDeque::from([pid]);
    while let Some(parent) = queue.pop_front() {
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            if comm_of(child).trim_end() == name {
                return Some(child);
            }
            queue.push_back(child);
        }
    }
    None
}

/// User + system CPU seconds of a process, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or(&stat);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// What a simulated proxy reports to the bench.
#[derive(Debug, Clone, Copy, Default)]
struct ClientProgress {
    /// When it ACKed endpoints of the watched cluster with a version other than the first.
    changed_at: Option<Instant>,
    /// When it received a `default` secret other than its first.
    renewed_at: Option<Instant>,
}

struct ClientCounters {
    bytes: AtomicU64,
    refused: AtomicU64,
}

/// Envoy's reconnect back-off for xDS streams: jittered exponential, 500 ms base, 30 s max
/// (`JitteredExponentialBackOffStrategy`: a delay drawn in [0, interval), the interval
/// doubling up to the max).
struct EnvoyBackOff {
    interval: Duration,
}

impl EnvoyBackOff {
    const BASE: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    fn new() -> Self {
        EnvoyBackOff {
            interval: Self::BASE,
        }
    }

    fn next(&mut self) -> Duration {
        use rand::Rng;
        let delay = self.interval.mul_f64(rand::rng().random_range(0.0..1.0));
        self.interval = (self.interval * 2).min(Self::MAX);
        delay
    }
}

fn request(
    type_url: &str,
    node: Option<Node>,
    subscribe: Vec<String>,
    nonce: &str,
) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node,
        type_url: type_url.to_string(),
        resource_names_subscribe: subscribe,
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

/// One simulated Envoy: subscribes like Envoy does and ACKs everything. A connection that
/// fails (refused, or reset by a server too busy to accept it), a stream refused with
/// UNAVAILABLE (the admission rate limit), and a stream that ends (the connection's maximum
/// age, a server restart) are tried again after Envoy's back-off, as Envoy does, on a new
/// stream that subscribes afresh. Only the server's own refusals (permission, node) are final.
async fn simulated_proxy(
    endpoint: Endpoint,
    node_id: String,
    watched_cluster: String,
    counters: Arc<ClientCounters>,
    progress: watch::Sender<ClientProgress>,
) -> anyhow::Result<()> {
    let node = Node {
        id: node_id,
        ..Default::default()
    };
    let retryable = |status: &tonic::Status| {
        use tonic::Code;
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
        )
    };
    let mut back_off = EnvoyBackOff::new();
    let mut seen = FirstVersions::default();
    loop {
        let status = match open_stream(&endpoint, &node).await {
            // A stream that got its first response resets the back-off, as in Envoy.
            Ok(stream) => {
                back_off = EnvoyBackOff::new();
                follow_stream(stream, &watched_cluster, &counters, &progress, &mut seen).await
            }
            Err(status) => status,
        };
        if !retryable(&status) {
            return Err(status.into());
        }
        tracing::debug!(node = %node.id, %status, "the stream failed or ended; retrying");
        counters.refused.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(back_off.next()).await;
    }
}

/// An open ADS stream: its requests, its responses and the first response.
type OpenStream = (
    mpsc::Sender<DeltaDiscoveryRequest>,
    tonic::Streaming<DeltaDiscoveryResponse>,
    DeltaDiscoveryResponse,
);

/// Connects, opens a delta ADS stream subscribing to CDS and LDS, and waits for the first
/// response. A failed connection is UNAVAILABLE, as in gRPC.
async fn open_stream(endpoint: &Endpoint, node: &Node) -> Result<OpenStream, tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    for first in [
        request(CLUSTER, Some(node.clone()), vec![], ""),
        request(LISTENER, None, vec![], ""),
    ] {
        tx.try_send(first).expect("room for the first two requests");
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connecting: {e}")))?;
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    match responses.message().await? {
        Some(first) => Ok((tx, responses, first)),
        None => Err(tonic::Status::unavailable(
            "the stream ended before a response",
        )),
    }
}

/// The versions a proxy first received of what the bench watches; a later, other version
/// is the change (kept across reconnections).
#[derive(Default)]
struct FirstVersions {
    watched_endpoints: Option<String>,
    certificate: Option<String>,
}

/// Whether `version` differs from the first one seen (which it becomes if there is none yet).
fn is_change(first: &mut Option<String>, version: String) -> bool {
    match first {
        None => {
            *first = Some(version);
            false
        }
        Some(first) => *first != version,
    }
}

/// ACKs every response of an open stream and subscribes to what they name, recording when
/// the watched versions change. Returns how the stream ended.
async fn follow_stream(
    (tx, mut responses, first): OpenStream,
    watched_cluster: &str,
    counters: &ClientCounters,
    progress: &watch::Sender<ClientProgress>,
    seen: &mut FirstVersions,
) -> tonic::Status {
    // The request side closes only when the stream has ended.
    let closed = || tonic::Status::unavailable("the stream ended");
    let mut rds_subscribed = false;
    let mut next = first;
    loop {
        let response = next;
        counters
            .bytes
            .fetch_add(response.encoded_len() as u64, Ordering::Relaxed);
        let type_url = response.type_url.clone();
        let version_of = |name: &str| {
            let resource = response.resources.iter().find(|r| r.name == name);
            resource.map(|r| r.version.clone())
        };
        if type_url == SECRET {
            if let Some(version) = version_of(ward_xds::CERTIFICATE_SECRET) {
                if is_change(&mut seen.certificate, version) {
                    progress.send_modify(|p| {
                        p.renewed_at.get_or_insert_with(Instant::now);
                    });
                }
            }
        }
        if type_url == ENDPOINT {
            if let Some(version) = version_of(watched_cluster) {
                if is_change(&mut seen.watched_endpoints, version) {
                    progress.send_modify(|p| p.changed_at = Some(Instant::now()));
                }
            }
        }
        let ack = request(&type_url, None, vec![], &response.nonce);
        if tx.send(ack).await.is_err()
            || subscribe_children(&response, &tx, &mut rds_subscribed)
                .await
                .is_err()
        {
            return closed();
        }
        next = match responses.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return tonic::Status::unavailable("the server ended the stream"),
            Err(status) => return status,
        };
    }
}

/// Envoy asks for the endpoints of the EDS clusters it learns (from every CDS response: a
/// large set arrives in chunks), and for the route configuration its listeners name.
async fn subscribe_children(
    response: &DeltaDiscoveryResponse,
    tx: &mpsc::Sender<DeltaDiscoveryRequest>,
    rds_subscribed: &mut bool,
) -> anyhow::Result<()> {
    if response.type_url == CLUSTER {
        let names: Vec<String> = response
            .resources
            .iter()
            .map(|r| r.name.clone())
            .filter(|n| n.starts_with("outbound|"))
            .collect();
        if !names.is_empty() {
            tx.send(request(ENDPOINT, None, names, "")).await?;
        }
    }
    if response.type_url == LISTENER && !*rds_subscribed {
        // As Envoy does: the routes its listeners name, the shared outbound table and the
        // sidecar's own inbound route (every generated workload listens on 8080).
        tx.send(request(
            ROUTE,
            None,
            vec![
                ward_xds::OUTBOUND_ROUTE.to_string(),
                ward_xds::inbound_route_name(8080),
            ],
            "",
        ))
        .await?;
        // The mTLS contexts of listeners and clusters name these two SDS secrets.
        tx.send(request(
            SECRET,
            None,
            vec![
                ward_xds::CERTIFICATE_SECRET.to_string(),
                ward_xds::TRUST_BUNDLE_SECRET.to_string(),
            ],
            "",
        ))
        .await?;
        *rds_subscribed = true;
    }
    if response.type_url == LISTENER {
        // The filters whose configuration comes over ECDS (the wasm filters, jwt_authn).
        let names = extension_config_names(response);
        if !names.is_empty() {
            tx.send(request(EXTENSION_CONFIG, None, names, "")).await?;
        }
    }
    Ok(())
}

/// The names of the HTTP filters that the listeners of `response` configure over ECDS, as
/// Envoy subscribes to them.
fn extension_config_names(response: &DeltaDiscoveryResponse) -> Vec<String> {
    use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        http_filter, HttpConnectionManager,
    };
    let mut names = std::collections::BTreeSet::new();
    for resource in &response.resources {
        let Some(listener) = resource
            .resource
            .as_ref()
            .and_then(|any| Listener::decode(&any.value[..]).ok())
        else {
            continue;
        };
        let managers = listener
            .filter_chains
            .iter()
            .flat_map(|chain| &chain.filters)
            .filter_map(|f| match &f.config_type {
                Some(filter::ConfigType::TypedConfig(any))
                    if any.type_url.ends_with(".HttpConnectionManager") =>
                {
                    HttpConnectionManager::decode(&any.value[..]).ok()
                }
                _ => None,
            });
        for manager in managers {
            for http_filter in &manager.http_filters {
                if let Some(http_filter::ConfigType::ConfigDiscovery(_)) = &http_filter.config_type
                {
                    names.insert(http_filter.name.clone());
                }
            }
        }
    }
    names.into_iter().collect()
}

fn percentiles(mut samples: Vec<f64>) -> Percentiles {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        let index = ((samples.len() as f64 * q).ceil() as usize).saturating_sub(1);
        samples.get(index).copied().unwrap_or(f64::NAN)
    };
    Percentiles {
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

async fn wait_until(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out after {} s waiting for {what}", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

pub async fn run_xds_bench(options: &BenchOptions) -> anyhow::Result<BenchReport> {
    ward_ads::listener::raise_fd_limit();
    let config_dir = options.work_dir.join("config");
    std::fs::create_dir_all(&config_dir)?;
    write_mesh(
        &config_dir,
        options.proxies,
        options.services,
        options.traffic_rules,
        false,
    )?;
    let mesh = ward_config::load_path(&config_dir)?.mesh;
    let node_ids: Vec<String> = mesh
        .workloads
        .iter()
        .flat_map(|w| {
            w.instances
                .iter()
                .map(move |i| ward_config::model::Mesh::node_id(w, i))
        })
        .collect();

    // Certificates are backdated 60 s and renewed at 4/5 of their lifetime: a lifetime of
    // (renew_after + 12 s) / 0.8 makes them due `renew_after` after issuance.
    let renewal_ttl = options
        .renew_after
        .map(|after| (after + Duration::from_secs(12)).div_f64(0.8));
    let xds_address = crate::loopback_port::unused_loopback_address()?;
    let admin_address = crate::loopback_port::unused_loopback_address()?;
    let log = std::fs::File::create(options.work_dir.join("xds-server.log"))?;
    // WARD_BENCH_WRAP runs the server under a profiler (e.g. `heaptrack`).
    let mut server = match std::env::var_os("WARD_BENCH_WRAP") {
        Some(wrapper) => {
            let mut command = tokio::process::Command::new(wrapper);
            command.arg(&options.xds_server);
            command
        }
        None => tokio::process::Command::new(&options.xds_server),
    };
    let mut server = server
        .args(["serve", "--config"])
        .arg(&config_dir)
        .args(["--xds-address", &xds_address.to_string()])
        .args(["--admin-address", &admin_address.to_string()])
        .args(options.plaintext.then_some("--plaintext-xds"))
        .args(renewal_ttl.iter().flat_map(|ttl| {
            [
                "--workload-cert-ttl".to_string(),
                format!("{}ms", ttl.as_millis()),
            ]
        }))
        .arg("--state-dir")
        .arg(options.work_dir.join("xds-state"))
        .args(&options.server_args)
        .args(
            (!options
                .server_args
                .iter()
                .any(|a| a.starts_with("--max-new-streams-per-second")))
            .then_some(["--max-new-streams-per-second", "0"])
            .into_iter()
            .flatten(),
        )
        .env("WARD_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", options.xds_server.display()))?;
    let launched_pid = server.id().context("xds-server pid")?;
    let server_started = Instant::now();
    let started = Instant::now();
    while admin_client::get(admin_address, "/healthz").await.is_err() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "xds-server did not start; see {}",
                options.work_dir.join("xds-server.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Under a wrapper, measure (and at the end kill) the server itself, not the wrapper.
    let wrapped = std::env::var_os("WARD_BENCH_WRAP").is_some();
    let pid = if wrapped {
        descendant_named(launched_pid, "xds-server")
            .context("no xds-server process under WARD_BENCH_WRAP's wrapper")?
    } else {
        launched_pid
    };
    let rss_before = proc_status_kib(pid, "VmRSS:")?;
    let cpu_before = cpu_seconds(pid)?;
    let endpoints = proxy_endpoints(options, &mesh, xds_address)?;

    let watched_cluster = "outbound|80||svc-0.default.svc.cluster.local".to_string();
    let counters = Arc::new(ClientCounters {
        bytes: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    let mut progress = Vec::new();
    let connect_start = Instant::now();
    for (node_id, endpoint) in node_ids.iter().zip(endpoints) {
        let (sender, receiver) = watch::channel(ClientProgress::default());
        progress.push(receiver);
        let counters = counters.clone();
        let node_id = node_id.clone();
        let watched = watched_cluster.clone();
        tokio::spawn(async move {
            if let Err(e) =
                simulated_proxy(endpoint, node_id.clone(), watched, counters, sender).await
            {
                tracing::debug!(%node_id, error = %e, "simulated proxy ended");
            }
        });
    }
    // Synced is the server's word: every type ACKed at its current version (a large set
    // arrives in several chunks, so a client's first ACK says little).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        // A busy server may answer slowly: a slow answer is not a failure here.
        if let Ok(status) = admin_client::get_json(admin_address, "/status").await {
            if ward_ads::proxy_status::synced_node_ids(&status).len() == node_ids.len() {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("timed out after 600 s waiting for every proxy to sync");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let initial_sync_ms = connect_start.elapsed().as_secs_f64() * 1000.0;
    // Steady state: the server returns memory freed after the burst once it has been quiet
    // for a second.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let rss_synced = proc_status_kib(pid, "VmRSS:")?;
    let cpu_synced = cpu_seconds(pid)?;
    let bytes_initial = counters.bytes.load(Ordering::Relaxed);
    let streams_refused_initial = counters.refused.load(Ordering::Relaxed);

    // One config change: svc-0 gets one more replica, so every proxy's endpoints change.
    let change_start = Instant::now();
    write_mesh(
        &config_dir,
        options.proxies,
        options.services,
        options.traffic_rules,
        true,
    )?;
    wait_until(
        Duration::from_secs(300),
        "every proxy to ACK the change",
        || progress.iter().all(|p| p.borrow().changed_at.is_some()),
    )
    .await?;
    let samples: Vec<f64> = progress
        .iter()
        .filter_map(|p| p.borrow().changed_at)
        .map(|t| (t - change_start).as_secs_f64() * 1000.0)
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu_changed = cpu_seconds(pid)?;
    let bytes_change = counters.bytes.load(Ordering::Relaxed) - bytes_initial;
    let renewal = match options.renew_after {
        None => None,
        Some(after) => {
            let due = server_started + after;
            if Instant::now() > due {
                bail!("the renewal came due before the change was measured: use a larger --renew-after");
            }
            let cpu_before_renewal = cpu_seconds(pid)?;
            let bytes_before_renewal = counters.bytes.load(Ordering::Relaxed);
            wait_until(
                after + Duration::from_secs(300),
                "every proxy to receive its renewed certificate",
                || progress.iter().all(|p| p.borrow().renewed_at.is_some()),
            )
            .await?;
            let samples: Vec<f64> = progress
                .iter()
                .filter_map(|p| p.borrow().renewed_at)
                .map(|t| t.saturating_duration_since(due).as_secs_f64() * 1000.0)
                .collect();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let n = node_ids.len().max(1) as u64;
            Some(RenewalReport {
                due_to_received: percentiles(samples),
                server_cpu_seconds: cpu_seconds(pid)? - cpu_before_renewal,
                bytes_received_per_proxy: (counters.bytes.load(Ordering::Relaxed)
                    - bytes_before_renewal)
                    / n,
            })
        }
    };
    let peak = proc_status_kib(pid, "VmHWM:")?;
    if std::env::var_os("WARD_BENCH_METRICS").is_some() {
        if let Ok((_, metrics)) = admin_client::get(admin_address, "/metrics").await {
            for line in metrics.lines().filter(|l| l.starts_with("ward_xds_push")) {
                eprintln!("{line}");
            }
        }
    }
    if wrapped {
        // Killed while every proxy is still connected, so what a heap profiler reports as
        // never freed is what the connected proxies hold.
        // SAFETY: kill(2) on a pid we found among our own child's descendants.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL)
        };
        // The wrapper may take its time writing its profile; it is not waited for long.
        let _ = tokio::time::timeout(Duration::from_secs(10), server.wait()).await;
    }
    let _ = server.kill().await;

    let n = node_ids.len().max(1) as f64;
    Ok(BenchReport {
        proxies: node_ids.len(),
        services: options.services,
        traffic_rules: options.traffic_rules,
        xds_transport: if options.plaintext {
            "plaintext"
        } else {
            "mutual TLS"
        },
        initial_sync_ms,
        change_to_ack: percentiles(samples),
        server_cpu_seconds_initial_sync: cpu_synced - cpu_before,
        server_cpu_seconds_change: cpu_changed - cpu_synced,
        server_rss_before_clients_mib: rss_before as f64 / 1024.0,
        server_rss_synced_mib: rss_synced as f64 / 1024.0,
        server_peak_rss_mib: peak as f64 / 1024.0,
        server_kib_per_proxy: (rss_synced.saturating_sub(rss_before)) as f64 / n,
        bytes_received_per_proxy_initial: (bytes_initial as f64 / n) as u64,
        bytes_received_per_proxy_change: (bytes_change as f64 / n) as u64,
        streams_refused_initial,
        renewal,
    })
}

/// Each node's way to xds-server, in the order of the mesh's instances (as `node_ids`): over
/// mutual TLS, a client certificate for its workload's identity signed by the CA the server
/// created in its state directory (one per workload, as `wardctl up` writes them), checking
/// the server's certificate against the trust bundle.
fn proxy_endpoints(
    options: &BenchOptions,
    mesh: &ward_config::model::Mesh,
    xds: SocketAddr,
) -> anyhow::Result<Vec<Endpoint>> {
    let instances = mesh.workloads.iter().map(|w| (w, w.instances.len()));
    if options.plaintext {
        let endpoint = Endpoint::from_shared(format!("http://{xds}"))?;
        return Ok(vec![endpoint; instances.map(|(_, n)| n).sum()]);
    }
    let ca =
        ward_identity::CertificateAuthority::load_or_create(&ward_identity::CaOptions::signing(
            options.work_dir.join("xds-state"),
            None,
            &mesh.trust_domain,
        ))
        .context("loading the CA xds-server created, to sign the proxies' credentials")?;
    let root = Certificate::from_pem(ca.trust_bundle_pem());
    let mut endpoints = Vec::new();
    for (workload, n) in instances {
        let credential = ca.issue(
            &mesh.identity(workload),
            ward_identity::BOOTSTRAP_CREDENTIAL_LIFETIME,
        )?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(root.clone())
            .identity(Identity::from_pem(
                &credential.cert_chain_pem,
                &credential.private_key_pem,
            ))
            .domain_name("localhost");
        let endpoint = Endpoint::from_shared(format!("https://{xds}"))?.tls_config(tls)?;
        endpoints.extend(std::iter::repeat_n(endpoint, n));
    }
    Ok(endpoints)
}

impl BenchReport {
    pub fn render(&self) -> String {
        let renewal = self.renewal.as_ref().map_or(String::new(), |r| {
            format!(
                "certificate renewal (all due at once) -> received: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; server CPU {:.2} s; {} bytes per proxy\n",
                r.due_to_received.p50_ms,
                r.due_to_received.p99_ms,
                r.due_to_received.max_ms,
                r.server_cpu_seconds,
                r.bytes_received_per_proxy
            )
        });
        let base = format!(
            "proxies {} services {}{} (xDS over {})\n\
             initial sync (all proxies SYNCED on every type they subscribe to): {:.0} ms\n\
             config change -> ACK: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (includes the 100 ms debounce)\n\
             server CPU: {:.2} s initial sync, {:.2} s for the change\n\
             server RSS: {:.1} MiB before clients, {:.1} MiB synced, peak {:.1} MiB; {:.1} KiB per proxy\n\
             bytes per proxy: {} initial, {} for the change\n\
             stream openings refused (rate limit) or failed, and retried, during the initial sync: {}\n",
            self.proxies,
            self.services,
            if self.traffic_rules {
                ", each with a DestinationRule (3 subsets) and a VirtualService (5 routes)"
            } else {
                ""
            },
            self.xds_transport,
            self.initial_sync_ms,
            self.change_to_ack.p50_ms,
            self.change_to_ack.p99_ms,
            self.change_to_ack.max_ms,
            self.server_cpu_seconds_initial_sync,
            self.server_cpu_seconds_change,
            self.server_rss_before_clients_mib,
            self.server_rss_synced_mib,
            self.server_peak_rss_mib,
            self.server_kib_per_proxy,
            self.bytes_received_per_proxy_initial,
            self.bytes_received_per_proxy_change,
            self.streams_refused_initial,
        );
        format!("{base}{renewal}")
    }
}

/// What `wardctl bench certs` measures for one key algorithm.
#[derive(Debug, Clone, Serialize)]
pub struct CertBenchReport {
    pub algorithm: String,
    pub certificates: usize,
    pub issue_seconds: f64,
    pub certificates_per_second: f64,
    /// Renewing every one of `certificates` proxies' certificates at once: signing plus
    /// building their SDS resources, as the renewal task does before pushing.
    pub renew_all_seconds: f64,
    pub renew_all_cpu_seconds: f64,
}

fn process_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// Issuance rate of workload certificates, and the cost of renewing `count` of them at once.
pub fn run_cert_bench(
    count: usize,
    algorithm: ward_identity::KeyAlgorithm,
) -> anyhow::Result<CertBenchReport> {
    use ward_identity::{CaOptions, CertificateAuthority, CertificatePolicy, WorkloadCertificates};
    let dir = std::env::temp_dir().join(format!("ward-cert-bench-{}", std::process::id()));
    let ca = CertificateAuthority::load_or_create(&CaOptions {
        state_dir: dir.clone(),
        plugged_in_dir: None,
        algorithm,
        extra_trust_roots: Vec::new(),
        trust_domain: "cluster.local".into(),
    })?;
    let start = Instant::now();
    for i in 0..count {
        ca.issue(
            &ward_config::SpiffeId::new("cluster.local", "default", &format!("sa-{i}")),
            Duration::from_secs(86400),
        )?;
    }
    let issue_seconds = start.elapsed().as_secs_f64();

    // Renewal: certificates that are all due at once (a 2 s lifetime, renewed at 4/5).
    let certs = WorkloadCertificates::new(
        ca,
        CertificatePolicy {
            lifetime: Duration::from_secs(2),
            renew_fraction: 0.8,
        },
        Arc::new(ward_metrics::Metrics::new()),
    );
    let ids: Vec<(String, ward_config::SpiffeId)> = (0..count)
        .map(|i| {
            (
                format!("proxy-{i}.default"),
                ward_config::SpiffeId::new("cluster.local", "default", &format!("sa-{}", i % 1000)),
            )
        })
        .collect();
    for (node, id) in &ids {
        certs.get_or_issue(node, id)?;
    }
    // Backdating makes the lifetime 62 s; wait until every certificate is due.
    while certs
        .next_renewal()
        .is_some_and(|t| t > std::time::SystemTime::now())
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let bundle = certs.ca().trust_bundle_pem().to_string();
    let cpu_before = process_cpu_seconds();
    let start = Instant::now();
    for (node, id) in &ids {
        let cert = certs.get_or_issue(node, id)?;
        let _layer = ward_xds::secret_layer(&cert, &bundle);
    }
    let renew_all_seconds = start.elapsed().as_secs_f64();
    let renew_all_cpu_seconds = process_cpu_seconds() - cpu_before;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(CertBenchReport {
        algorithm: format!("{algorithm:?}"),
        certificates: count,
        issue_seconds,
        certificates_per_second: count as f64 / issue_seconds,
        renew_all_seconds,
        renew_all_cpu_seconds,
    })
}
