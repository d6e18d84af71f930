//! The real `xds-server` binary, through its flags: new ADS streams past the admission rate
//! are refused with UNAVAILABLE (and counted) until tokens refill, and a connection past its
//! maximum age is closed so the client reconnects on a new connection and resyncs; and the
//! process runs its allocator as configured.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Streaming};
use ward_snapshot::CLUSTER;
use wardctl::runner::admin_client;

/// An xds-server child process, killed when dropped.
struct Server {
    child: tokio::process::Child,
    xds: SocketAddr,
    admin: SocketAddr,
    node_id: String,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn write_mesh(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("mesh.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: app\n        image: hashicorp/http-echo\n        ports:\n        - containerPort: 8080\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports:\n  - port: 80\n    targetPort: 8080\n",
    )
    .unwrap();
}

async fn start(name: &str, flags: &[&str]) -> Server {
    let dir = std::env::temp_dir().join(format!("ward-storm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = dir.join("config");
    write_mesh(&config);
    let mesh = ward_config::load_path(&config).unwrap().mesh;
    let workload = &mesh.workloads[0];
    let node_id = ward_config::model::Mesh::node_id(workload, &workload.instances[0]);
    let xds = wardctl::loopback_port::unused_loopback_address().unwrap();
    let admin = wardctl::loopback_port::unused_loopback_address().unwrap();
    let log = std::fs::File::create(dir.join("xds-server.log")).unwrap();
    let child = tokio::process::Command::new(ward_e2e::binary("xds-server"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--xds-address", &xds.to_string()])
        .args(["--admin-address", &admin.to_string()])
        .arg("--plaintext-xds")
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(flags)
        .env("WARD_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if admin_client::get(admin, "/healthz").await.is_ok() {
            return Server {
                child,
                xds,
                admin,
                node_id,
                _dir: tempdir::Dir(dir),
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("xds-server did not start; see {}", dir.display());
}

/// Dials the xDS port, counting the TCP connections a channel makes.
#[derive(Clone)]
struct CountingConnector {
    address: SocketAddr,
    dialed: Arc<AtomicUsize>,
}

impl tonic::codegen::Service<Uri> for CountingConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let address = self.address;
        let dialed = self.dialed.clone();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(address).await?;
            dialed.fetch_add(1, Ordering::SeqCst);
            Ok(TokioIo::new(stream))
        })
    }
}

async fn channel(address: SocketAddr, dialed: Arc<AtomicUsize>) -> Channel {
    Endpoint::from_static("http://xds-server")
        .connect_with_connector(CountingConnector { address, dialed })
        .await
        .unwrap()
}

type Opened = (
    mpsc::Sender<DeltaDiscoveryRequest>,
    Streaming<DeltaDiscoveryResponse>,
);

/// A delta stream subscribing to clusters as `node_id`: the server's answer to opening it.
async fn open(channel: Channel, node_id: &str) -> Result<Opened, tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(DeltaDiscoveryRequest {
        node: Some(Node {
            id: node_id.to_string(),
            ..Default::default()
        }),
        type_url: CLUSTER.to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    let streaming = AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, streaming))
}

/// Opens a stream as Envoy does after its stream ended: retrying with back-off while the
/// channel finds out its old connection is gone.
async fn reopen(channel: &Channel, node_id: &str) -> Opened {
    let mut last = None;
    for _ in 0..20 {
        match open(channel.clone(), node_id).await {
            Ok(opened) => return opened,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                last = Some(status);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("no stream after 20 tries: {last:?}");
}

/// Reads the first clusters response and ACKs it.
/// Reads `opened` until the server ends it: with a status (Some), or cleanly (None).
async fn stream_end(opened: &mut Opened) -> Option<tonic::Status> {
    loop {
        match opened.1.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return None,
            Err(status) => return Some(status),
        }
    }
}

async fn sync(opened: &mut Opened) {
    let response = tokio::time::timeout(Duration::from_secs(10), opened.1.message())
        .await
        .expect("clusters within 10 s")
        .expect("the stream is open")
        .expect("a response");
    assert_eq!(response.type_url, CLUSTER);
    assert!(!response.resources.is_empty(), "the node's clusters");
    opened
        .0
        .send(DeltaDiscoveryRequest {
            type_url: CLUSTER.to_string(),
            response_nonce: response.nonce,
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn metric(admin: SocketAddr, line_start: &str) -> Option<f64> {
    let (_, text) = admin_client::get(admin, "/metrics").await.unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

const RATE_LIMITED: &str = "ward_xds_refused_streams_total{reason=\"rate-limit\"}";

#[tokio::test]
async fn streams_past_the_admission_rate_are_refused_with_unavailable_until_tokens_refill() {
    // A burst of 3, then one stream every 10 s: 6 streams opened together find 3 tokens
    // (opening them takes milliseconds; 10 s leaves a loaded machine room).
    let server = start(
        "rate",
        &[
            "--max-new-streams-per-second",
            "0.1",
            "--new-stream-burst",
            "3",
        ],
    )
    .await;
    let dialed = Arc::new(AtomicUsize::new(0));
    let mut attempts = Vec::new();
    for _ in 0..6 {
        // One connection each, as every Envoy has its own.
        let channel = channel(server.xds, dialed.clone()).await;
        let node_id = server.node_id.clone();
        attempts.push(tokio::spawn(async move { open(channel, &node_id).await }));
    }
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(opened) => admitted.push(opened),
            Err(status) => refused.push(status),
        }
    }
    assert_eq!(admitted.len(), 3, "the burst is admitted");
    assert_eq!(refused.len(), 3, "the rest is refused");
    for status in &refused {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("--max-new-streams-per-second"),
            "the refusal says why: {}",
            status.message()
        );
    }
    assert_eq!(metric(server.admin, RATE_LIMITED).await, Some(3.0));
    // The admitted streams are served.
    for opened in &mut admitted {
        sync(opened).await;
    }

    // A client retrying with back-off is admitted once a token has refilled.
    let channel = channel(server.xds, dialed.clone()).await;
    let mut retried = None;
    for _ in 0..60 {
        match open(channel.clone(), &server.node_id).await {
            Ok(opened) => {
                retried = Some(opened);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let mut retried = retried.expect("admitted within 30 s at one token per 10 s");
    sync(&mut retried).await;
    let refused_total = metric(server.admin, RATE_LIMITED).await.unwrap();
    assert!(refused_total >= 3.0);
}

#[tokio::test]
async fn a_connection_past_its_maximum_age_is_closed_and_the_client_resyncs_on_a_new_one() {
    let server = start("age", &["--max-connection-age", "1s"]).await;
    let dialed = Arc::new(AtomicUsize::new(0));
    let channel = channel(server.xds, dialed.clone()).await;
    for round in 1..=3 {
        let mut opened = reopen(&channel, &server.node_id).await;
        sync(&mut opened).await;
        // Each stream is on a connection of its own: the previous one sent GOAWAY.
        assert_eq!(dialed.load(Ordering::SeqCst), round);
        // The stream is ended by the server when its connection reaches its age (1 s ±10 %).
        let end = tokio::time::timeout(Duration::from_secs(15), stream_end(&mut opened))
            .await
            .expect("the stream ends within 15 s");
        let status = end.expect("the stream ends with a status, not a clean end");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("maximum connection age"),
            "{}",
            status.message()
        );
    }
    // The fourth stream is opened on a fourth connection, and is synced.
    let mut opened = reopen(&channel, &server.node_id).await;
    sync(&mut opened).await;
    assert_eq!(dialed.load(Ordering::SeqCst), 4);
    // The server reports the node's clusters as SYNCED on the new stream (the only type this
    // client asked for).
    let mut synced = false;
    for _ in 0..50 {
        let status = admin_client::get_json(server.admin, "/status")
            .await
            .unwrap();
        synced = status["proxies"].as_array().into_iter().flatten().any(|p| {
            p["node_id"] == server.node_id.as_str() && p["types"]["CDS"]["state"] == "SYNCED"
        });
        if synced {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(synced, "the node's clusters are SYNCED after reconnecting");
}

#[tokio::test]
async fn on_sigterm_streams_end_with_unavailable_and_the_server_exits() {
    let mut server = start("term", &[]).await;
    let dialed = Arc::new(AtomicUsize::new(0));
    let mut opened = open(channel(server.xds, dialed).await, &server.node_id)
        .await
        .unwrap();
    sync(&mut opened).await;
    let pid = server.child.id().expect("running") as libc::pid_t;
    // SAFETY: plain signal to our own child.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGTERM)
    };
    // The proxy is told to go elsewhere rather than left on a dead connection.
    let status = tokio::time::timeout(Duration::from_secs(10), stream_end(&mut opened))
        .await
        .expect("the stream ends within 10 s")
        .expect("with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("closing this connection"),
        "{}",
        status.message()
    );
    let exit = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .expect("xds-server exits once its connections are drained")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// jemalloc's options are compiled into the binary (`_rjem_malloc_conf`). Were they ignored
/// (say, the symbol renamed by a jemalloc upgrade), there would be no purge thread, and memory
/// freed after a mass reconnect would stay in RSS (docs/benchmarks.md). `scripts/setup.sh`
/// builds xds-server with its default features, jemalloc among them.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn jemalloc_runs_its_background_purge_thread() {
    let server = start("allocator", &[]).await;
    let pid = server.child.id().expect("xds-server runs");
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect();
    assert!(
        threads.iter().any(|name| name == "jemalloc_bg_thd"),
        "{threads:?}"
    );
}
