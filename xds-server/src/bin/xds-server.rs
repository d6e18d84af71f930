//! `xds-server`: Ward's control plane daemon, and the bootstrap renderer for its proxies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ward_ads::listener::XdsLimits;
use ward_identity::ca::write_private;
use ward_identity::{
    write_bootstrap_credentials, write_certificate_files, CaOptions, CertificateAuthority,
    CertificatePolicy, KeyAlgorithm,
};
use ward_sources::watch::DebounceWindow;
use ward_xds::bootstrap::{self, AdsProtocol, BootstrapParams};
use ward_xds::TranslateOptions;
use xds_server::server::{self, ServerOptions};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts: a background thread returns pages unused for about
/// a second to the system (`MADV_DONTNEED`, so RSS shows it at once), instead of waiting for
/// the next allocation in their arena, which may never come to an idle server.
// SAFETY: jemalloc reads this NUL-terminated string once, at start; nothing writes it.
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals, unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(
    name = "xds-server",
    version,
    about = "Ward's xDS control plane for Envoy sidecars"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ADS (state-of-the-world and delta) for the mesh described in --config.
    Serve {
        /// A YAML file or a directory of YAML files; watched for changes.
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, default_value = "127.0.0.1:15010")]
        xds_address: SocketAddr,
        /// Prometheus metrics (/metrics), proxy status (/status), /healthz.
        #[arg(long, default_value = "127.0.0.1:15014")]
        admin_address: SocketAddr,
        /// Path of the wasm-authz module as the proxies see it.
        #[arg(long)]
        wasm_module: Option<PathBuf>,
        /// Also read the mesh from the Kubernetes API server (in-cluster credentials, or
        /// KUBECONFIG): Namespaces, ServiceAccounts, Services, ready Pods and the Istio and
        /// Linkerd policy kinds, merged with --config's files.
        #[arg(long)]
        kubernetes: bool,
        /// The HTTPS port (certificate from the CA): the mutating admission webhook
        /// (`POST /inject`) and, with --kubernetes, the exchange of a pod's service-account
        /// token for its sidecar's bootstrap credential (`POST /v1/credential`).
        #[arg(long)]
        https_address: Option<SocketAddr>,
        /// DNS names on the HTTPS port's certificate (its Service's names).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "xds-server.ward-system.svc,xds-server.ward-system.svc.cluster.local"
        )]
        https_names: Vec<String>,
        /// The module's sha256 (hex): sidecars reporting another module (bootstrap node
        /// metadata WASM_MODULE_SHA256) are refused. Default: the sha256 of --wasm-module if
        /// that file is readable here.
        #[arg(long)]
        wasm_module_sha256: Option<String>,
        /// Quiet period before a burst of config changes is applied.
        #[arg(long, default_value_t = 100)]
        debounce_ms: u64,
        /// Longest a burst of changes can delay a reload.
        #[arg(long, default_value_t = 500)]
        debounce_max_ms: u64,
        /// Where the server keeps what must survive a restart (the built-in CA's root).
        #[arg(long, env = "WARD_XDS_STATE_DIR", default_value = ".ward-xds")]
        state_dir: PathBuf,
        /// Plugged-in intermediate CA: a directory with Istio's file names (ca-cert.pem,
        /// ca-key.pem, root-cert.pem, cert-chain.pem). Without it the built-in root is used.
        #[arg(long, env = "WARD_CA_DIR")]
        ca_dir: Option<PathBuf>,
        /// Key type of a new built-in root and of workload certificates.
        #[arg(long, value_enum, env = "WARD_CA_KEY_ALGORITHM", default_value_t = KeyAlgorithm::EcdsaP256)]
        key_algorithm: KeyAlgorithm,
        /// More roots to trust (PEM files), e.g. the next root while rotating.
        #[arg(long = "trust-bundle")]
        trust_bundle: Vec<PathBuf>,
        /// Lifetime of workload certificates (Istio's DEFAULT_WORKLOAD_CERT_TTL), e.g. 24h, 90s.
        #[arg(long, env = "WARD_WORKLOAD_CERT_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
        workload_cert_ttl: Duration,
        /// Renew a workload certificate once this fraction of its lifetime has passed.
        #[arg(long, env = "WARD_CERT_RENEW_FRACTION", default_value_t = 0.8)]
        renew_fraction: f64,
        /// Serve xDS in plaintext with no proxy authentication. For local debugging only:
        /// anyone who can connect gets any proxy's config and private keys.
        #[arg(long)]
        plaintext_xds: bool,
        /// Open xDS connections at most; more are closed on accept.
        #[arg(long, default_value_t = 20_000)]
        max_xds_connections: usize,
        /// Drop xDS clients that have not finished their TLS handshake within this time.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        tls_handshake_timeout: Duration,
        /// New ADS streams admitted per second (0: no limit); past it (and the burst) a stream
        /// is refused with UNAVAILABLE and the proxy retries with back-off. Bounds the CPU of a
        /// reconnect storm: a proxy's first sync costs ~4 ms of CPU.
        #[arg(long, default_value_t = 100.0)]
        max_new_streams_per_second: f64,
        /// New ADS streams admitted at once before --max-new-streams-per-second applies.
        #[arg(long, default_value_t = 200)]
        new_stream_burst: u32,
        /// Close each xDS connection gracefully after this long (±10 %, drawn per connection;
        /// 0 keeps connections forever): the proxy reconnects, so after a rollout its stream can
        /// land on another replica. It serves its last config meanwhile.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        max_connection_age: Duration,
    },
    /// Sign a certificate with the mesh CA (for a client outside the mesh that must speak mTLS
    /// to a STRICT workload, or for tests): writes cert.pem, key.pem and root.pem.
    Certificate {
        /// The SPIFFE id, e.g. spiffe://cluster.local/ns/default/sa/batch-job.
        #[arg(long)]
        identity: String,
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, env = "WARD_XDS_STATE_DIR", default_value = ".ward-xds")]
        state_dir: PathBuf,
        #[arg(long, env = "WARD_CA_DIR")]
        ca_dir: Option<PathBuf>,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Sign an intermediate CA with this server's CA and write it in Istio's plug-in layout
    /// (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem), for another xds-server's
    /// --ca-dir: meshes whose intermediates share a root trust each other.
    CaIntermediate {
        /// A name for the intermediate (its common name), e.g. cluster1.
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "3650d", value_parser = humantime::parse_duration)]
        ttl: Duration,
        #[arg(long, env = "WARD_XDS_STATE_DIR", default_value = ".ward-xds")]
        state_dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Write the bootstrap of a Kubernetes pod's sidecar (run by the init container
    /// `wardctl inject` adds; the pod's identity comes from the downward API).
    PodBootstrap {
        #[arg(long, env = "POD_NAME")]
        pod_name: String,
        #[arg(long, env = "POD_NAMESPACE")]
        pod_namespace: String,
        #[arg(long, env = "POD_IP")]
        pod_ip: String,
        #[arg(long, env = "SERVICE_ACCOUNT", default_value = "default")]
        service_account: String,
        /// The pod's owner (a Deployment's name), as `wardctl inject` wrote it.
        #[arg(long, env = "WARD_WORKLOAD")]
        workload: String,
        #[arg(long, env = "WARD_TRUST_DOMAIN", default_value = "cluster.local")]
        trust_domain: String,
        /// The mesh's root namespace (MeshConfig `rootNamespace`): xds-server's identity is
        /// `spiffe://<trust domain>/ns/<root namespace>/sa/xds-server`.
        #[arg(long, env = "WARD_ROOT_NAMESPACE", default_value = "istio-system")]
        root_namespace: String,
        /// xds-server's Service, `host:port`.
        #[arg(long, default_value = "xds-server.ward-system.svc:15010")]
        xds_address: String,
        /// The sidecar's bootstrap credential (cert.pem, key.pem, root.pem), mounted from
        /// a Secret.
        #[arg(long, conflicts_with_all = ["plaintext_xds", "token_file"])]
        credentials_from: Option<PathBuf>,
        /// Get the credential from xds-server instead: this projected service-account
        /// token (audience ward-xds) is exchanged at --credential-url, and the credential
        /// written into --credentials-dir.
        #[arg(long, requires_all = ["credential_url", "root_cert", "credentials_dir"], conflicts_with = "plaintext_xds")]
        token_file: Option<PathBuf>,
        /// xds-server's `/v1/credential` (https).
        #[arg(
            long,
            default_value = "https://xds-server.ward-system.svc:15012/v1/credential"
        )]
        credential_url: Option<String>,
        /// The mesh's root certificate, to trust xds-server with.
        #[arg(long)]
        root_cert: Option<PathBuf>,
        #[arg(long)]
        credentials_dir: Option<PathBuf>,
        #[arg(long)]
        plaintext_xds: bool,
        /// The wasm module file the sidecar will load (its sha256 goes into the metadata).
        #[arg(long)]
        wasm_module: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a ready Envoy bootstrap (JSON) for one workload instance.
    Bootstrap {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        workload: String,
        #[arg(long, short, default_value = "default")]
        namespace: String,
        #[arg(long, default_value_t = 0)]
        instance: u32,
        #[arg(long, default_value = "127.0.0.1:15010")]
        xds_address: SocketAddr,
        #[arg(long, value_enum, default_value_t = AdsProtocol::Delta)]
        protocol: AdsProtocol,
        /// The xds-server's state directory, to sign the proxy's bootstrap credential with
        /// its CA.
        #[arg(long, env = "WARD_XDS_STATE_DIR", default_value = ".ward-xds")]
        state_dir: PathBuf,
        #[arg(long, env = "WARD_CA_DIR")]
        ca_dir: Option<PathBuf>,
        /// Where to write the credential (cert.pem, key.pem, root.pem) the bootstrap names
        /// [default: ./<node-id>.credentials].
        #[arg(long)]
        credentials_dir: Option<PathBuf>,
        /// For an xds-server started with --plaintext-xds: no credential, no TLS.
        #[arg(long)]
        plaintext_xds: bool,
        /// The wasm module file this sidecar will load: its sha256 goes into the node
        /// metadata, and xds-server serves the sidecar only if it is the module it pins.
        #[arg(long)]
        wasm_module: Option<PathBuf>,
    },
}

fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    // Errors reach users as one readable message with its causes, not a backtrace.
    if let Err(error) = runtime.block_on(run(cli)) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

/// The sha256 a sidecar's bootstrap reports for the wasm module file it will load.
fn module_sha256(module: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    module
        .map(|m| {
            bootstrap::file_sha256(m)
                .with_context(|| format!("reading the wasm module {}", m.display()))
        })
        .transpose()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            xds_address,
            admin_address,
            wasm_module,
            kubernetes,
            https_address,
            https_names,
            wasm_module_sha256,
            debounce_ms,
            debounce_max_ms,
            state_dir,
            ca_dir,
            key_algorithm,
            trust_bundle,
            workload_cert_ttl,
            renew_fraction,
            plaintext_xds,
            max_xds_connections,
            tls_handshake_timeout,
            max_new_streams_per_second,
            new_stream_burst,
            max_connection_age,
        } => {
            init_tracing();
            if !(max_new_streams_per_second >= 0.0 && max_new_streams_per_second.is_finite()) {
                anyhow::bail!("--max-new-streams-per-second {max_new_streams_per_second}: expected a number >= 0");
            }
            if !(0.1..=0.95).contains(&renew_fraction) {
                anyhow::bail!("--renew-fraction {renew_fraction}: expected 0.1 to 0.95");
            }
            // The trust domain comes from the config; a bad config is reported by the server.
            let trust_domain = ward_config::load_path(&config)
                .map(|c| c.mesh.trust_domain)
                .unwrap_or_else(|_| ward_config::DEFAULT_TRUST_DOMAIN.to_string());
            let wasm_module_sha256 = match (wasm_module_sha256, &wasm_module) {
                (Some(pin), _) => {
                    let pin = pin.to_ascii_lowercase();
                    if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                        anyhow::bail!("--wasm-module-sha256 {pin}: expected 64 hex digits");
                    }
                    Some(pin)
                }
                (None, Some(module)) => match bootstrap::file_sha256(module) {
                    Ok(pin) => Some(pin),
                    Err(e) => {
                        tracing::warn!(module = %module.display(), error = %e, "the wasm module is not readable here: sidecars' modules are not pinned (give --wasm-module-sha256)");
                        None
                    }
                },
                (None, None) => None,
            };
            server::run(ServerOptions {
                kubernetes,
                https_address,
                https_names,
                inject: ward_inject::InjectOptions {
                    trust_domain: trust_domain.clone(),
                    ..Default::default()
                },
                wasm_module_sha256,
                config_path: config,
                xds_address,
                admin_address,
                translate: TranslateOptions {
                    wasm_module: wasm_module.map(|p| p.display().to_string()),
                },
                debounce: DebounceWindow {
                    quiet: Duration::from_millis(debounce_ms),
                    max_delay: Duration::from_millis(debounce_max_ms),
                },
                ca: CaOptions {
                    state_dir,
                    plugged_in_dir: ca_dir,
                    algorithm: key_algorithm,
                    extra_trust_roots: trust_bundle,
                    trust_domain,
                },
                certificates: CertificatePolicy {
                    lifetime: workload_cert_ttl,
                    renew_fraction,
                },
                plaintext_xds,
                xds_limits: XdsLimits {
                    max_connections: max_xds_connections,
                    handshake_timeout: tls_handshake_timeout,
                    new_streams_per_second: max_new_streams_per_second,
                    new_stream_burst,
                    max_connection_age: (!max_connection_age.is_zero())
                        .then_some(max_connection_age),
                },
            })
            .await
        }
        Command::CaIntermediate {
            name,
            out,
            ttl,
            state_dir,
            trust_domain,
        } => {
            let ca = CertificateAuthority::load_or_create(&CaOptions::signing(
                state_dir,
                None,
                &trust_domain,
            ))?;
            let (cert, key) = ca.issue_intermediate(&name, ttl)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let root = ca.trust_bundle_pem();
            // The intermediate's key, like the root's, is readable by its owner only.
            write_private(&out.join("ca-key.pem"), &key, 0o600)?;
            write_private(&out.join("ca-cert.pem"), &cert, 0o644)?;
            write_private(&out.join("root-cert.pem"), root, 0o644)?;
            write_private(&out.join("cert-chain.pem"), &format!("{cert}{root}"), 0o644)?;
            println!("intermediate CA {name} written to {}", out.display());
            Ok(())
        }
        Command::Certificate {
            identity,
            ttl,
            out,
            state_dir,
            ca_dir,
            trust_domain,
        } => {
            let identity: ward_config::SpiffeId = identity.parse().context("--identity")?;
            let ca = CertificateAuthority::load_or_create(&CaOptions::signing(
                state_dir,
                ca_dir,
                &trust_domain,
            ))?;
            let (_, cert) = write_certificate_files(&ca, &identity, ttl, &out)?;
            println!(
                "{identity}: serial {} valid until {} in {}",
                cert.serial_hex,
                humantime::format_rfc3339_seconds(cert.not_after),
                out.display()
            );
            Ok(())
        }
        Command::PodBootstrap {
            pod_name,
            pod_namespace,
            pod_ip,
            service_account,
            workload,
            trust_domain,
            root_namespace,
            xds_address,
            credentials_from,
            token_file,
            credential_url,
            root_cert,
            credentials_dir,
            plaintext_xds,
            wasm_module,
            out,
        } => {
            // Exchange the pod's token for its credential first, if asked to.
            let credentials_from = match (token_file, credentials_from) {
                (Some(token_file), _) => {
                    let token = std::fs::read_to_string(&token_file)
                        .with_context(|| format!("reading {}", token_file.display()))?;
                    let root_cert = root_cert.context("--root-cert is required")?;
                    let root = std::fs::read_to_string(&root_cert)
                        .with_context(|| format!("reading {}", root_cert.display()))?;
                    let dir = credentials_dir.context("--credentials-dir is required")?;
                    let url = credential_url.context("--credential-url is required")?;
                    let identity = xds_server::control_https::fetch_credential(
                        &url,
                        &root,
                        token.trim(),
                        &dir,
                    )
                    .await?;
                    eprintln!(
                        "bootstrap credential for {identity} written to {}",
                        dir.display()
                    );
                    Some(dir)
                }
                (None, from) => from,
            };
            let (host, port) = xds_address
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .with_context(|| format!("--xds-address {xds_address}: expected host:port"))?;
            let credentials = match (credentials_from, plaintext_xds) {
                (Some(dir), false) => Some(ward_identity::BootstrapCredentials {
                    files: ward_identity::CertificateFiles {
                        cert_chain: dir.join("cert.pem"),
                        private_key: dir.join("key.pem"),
                        trust_bundle: dir.join("root.pem"),
                    },
                    server_identity: ward_config::SpiffeId::xds_server(
                        &trust_domain,
                        &root_namespace,
                    ),
                }),
                (None, true) => None,
                _ => anyhow::bail!("give --credentials-from DIR, or --plaintext-xds"),
            };
            let wasm_module_sha256 = module_sha256(wasm_module.as_deref())?;
            let node = bootstrap::ProxyNode::pod(
                &pod_name,
                &pod_namespace,
                &workload,
                &service_account,
                &pod_ip,
                &trust_domain,
            );
            let params = BootstrapParams {
                // Replaced by the Service name below.
                xds_address: SocketAddr::from(([127, 0, 0, 1], port)),
                protocol: AdsProtocol::Delta,
                credentials,
                wasm_module_sha256,
            };
            let mut rendered = bootstrap::render_node(&node, &params);
            bootstrap::use_xds_hostname(&mut rendered, host, port);
            std::fs::write(&out, serde_json::to_vec_pretty(&rendered)?)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "bootstrap for {} written to {}",
                node.node_id,
                out.display()
            );
            Ok(())
        }
        Command::Bootstrap {
            config,
            workload,
            namespace,
            instance,
            xds_address,
            protocol,
            state_dir,
            ca_dir,
            credentials_dir,
            plaintext_xds,
            wasm_module,
        } => {
            let loaded = ward_config::load_path(&config)?;
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            let mesh = &loaded.mesh;
            let (w, i) = bootstrap::find_instance(mesh, &namespace, &workload, instance)?;
            let credentials = if plaintext_xds {
                None
            } else {
                let ca = CertificateAuthority::load_or_create(&CaOptions::signing(
                    state_dir,
                    ca_dir,
                    &mesh.trust_domain,
                ))
                .context("loading the CA to sign the proxy's bootstrap credential")?;
                let node_id = ward_config::model::Mesh::node_id(w, i);
                let dir = credentials_dir
                    .unwrap_or_else(|| PathBuf::from(format!("{node_id}.credentials")));
                let server =
                    ward_config::SpiffeId::xds_server(&mesh.trust_domain, &mesh.root_namespace);
                let written = write_bootstrap_credentials(&ca, &mesh.identity(w), &server, &dir)?;
                eprintln!(
                    "bootstrap credential for {} written to {}",
                    mesh.identity(w),
                    dir.display()
                );
                Some(written)
            };
            let wasm_module_sha256 = module_sha256(wasm_module.as_deref())?;
            let params = BootstrapParams {
                xds_address,
                protocol,
                credentials,
                wasm_module_sha256,
            };
            let rendered = bootstrap::render(mesh, w, i, &params);
            println!("{}", serde_json::to_string_pretty(&rendered)?);
            Ok(())
        }
    }
}
