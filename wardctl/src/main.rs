//! `wardctl`: run a local mesh on real Envoy (up, exec, status, logs, routes, tap, apply,
//! down) and benchmark the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ward_xds::bootstrap::AdsProtocol;
use wardctl::runner::commands::{self, LogKind};
use wardctl::runner::supervisor::SupervisorOptions;
use wardctl::runner::{state, tools};

#[derive(Parser)]
#[command(name = "wardctl", version, about = "Operate a Ward service mesh")]
struct Cli {
    /// Where the local runner keeps its state and logs [default: $WARD_STATE_DIR or ~/.ward/run]
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a local mesh from a config directory: xds-server, one Envoy per instance, the apps.
    Up(UpArgs),
    /// Stop everything `wardctl up` started.
    Down,
    /// Run a command as if inside WORKLOAD's pod: its HTTP traffic goes through that sidecar.
    Exec {
        /// The workload (Deployment) name; omit with --no-mesh.
        #[arg(required_unless_present = "no_mesh")]
        workload: Option<String>,
        /// Run as a client with no sidecar (Kubernetes' `kubectl run` without injection).
        #[arg(long, conflicts_with = "workload")]
        no_mesh: bool,
        #[arg(long, short, default_value = "default")]
        namespace: String,
        /// Which replica.
        #[arg(long, default_value_t = 0)]
        instance: u32,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Every proxy and its config state per type (SYNCED, STALE, NACKED).
    Status,
    /// The certificates each proxy holds (SDS `default` and `ROOTCA`), read from its Envoy,
    /// like `istioctl proxy-config secret`.
    Certs {
        /// Only this workload's proxies.
        workload: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Which workloads talk to which, and whether over mTLS, from the Envoys' connection
    /// counters (like `linkerd viz edges`).
    Edges {
        #[arg(long)]
        json: bool,
    },
    /// Predict the authorization decision for a request, and explain it (like
    /// `istioctl x authz check`): ALLOW, DENY or REFUSED, the rule that decided, the
    /// policies considered.
    Check(CheckArgs),
    /// Per-route success rate, request rate and latency of WORKLOAD's requests to a Service,
    /// from its sidecars' access logs (like `linkerd viz routes deploy/WORKLOAD --to svc/TO`).
    /// `-o wide` adds the actual numbers: every attempt, retries included.
    Routes {
        /// The client workload, whose sidecars logged the requests.
        workload: String,
        /// The Service called: `name` (in the client's namespace) or `name.namespace`.
        #[arg(long)]
        to: String,
        /// The client workload's namespace.
        #[arg(long, short, default_value = "default")]
        namespace: String,
        #[arg(long, short = 'o', value_enum, default_value_t = RoutesOutput::Table)]
        output: RoutesOutput,
        /// The window the numbers are over, ending now (rates: per second of it, or of the
        /// part the logs cover if they started later).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
        window: std::time::Duration,
        /// Print the rows as JSON, raw counts included (same as `-o json`).
        #[arg(long)]
        json: bool,
    },
    /// Print WORKLOAD's requests to a Service as its sidecars log them, one line each (like
    /// `linkerd viz tap deploy/WORKLOAD --to svc/TO`); runs until Ctrl-C.
    Tap {
        /// The client workload, whose sidecars log the requests.
        workload: String,
        /// The Service called: `name` (in the client's namespace) or `name.namespace`.
        #[arg(long)]
        to: String,
        /// The client workload's namespace.
        #[arg(long, short, default_value = "default")]
        namespace: String,
        /// Stop after this many requests.
        #[arg(long)]
        max_requests: Option<u64>,
        /// Stop after this long, e.g. 10s.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
    },
    /// Logs of a workload's sidecars and apps (or `xds-server`).
    Logs {
        workload: String,
        #[arg(long, value_enum, default_value_t = LogKind::All)]
        only: LogKind,
    },
    /// Apply a YAML file to the running mesh, like `kubectl apply -f`: each object (kind,
    /// namespace, name) replaces the one of the same identity wherever it is defined.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// List the running mesh's objects of a kind, and the file each is defined in, like
    /// `kubectl get` (`wardctl get vs`, `wardctl get destinationrule reviews -o yaml`).
    Get {
        /// A kind, as kubectl names it: `virtualservices`, `vs`, `dr`, `deploy`, `svc`…
        kind: String,
        name: Option<String>,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Every namespace (the default when no -n is given).
        #[arg(short = 'A', long = "all-namespaces")]
        all_namespaces: bool,
        /// `yaml`: the objects as written.
        #[arg(short = 'o', long = "output")]
        output: Option<GetOutput>,
    },
    /// Add Ward's sidecar to the pods of Kubernetes manifests and print them
    /// (`wardctl inject -f app.yaml | kubectl apply -f -`).
    Inject {
        /// A YAML file, or `-` for standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// xds-server's Service, `host:port`.
        #[arg(long, default_value = "xds-server.ward-system.svc:15010")]
        xds_address: String,
        /// xds-server's credential exchange (its HTTPS port).
        #[arg(
            long,
            default_value = "https://xds-server.ward-system.svc:15012/v1/credential"
        )]
        credential_url: String,
        #[arg(long, default_value = "envoyproxy/envoy:v1.40.0")]
        proxy_image: String,
        /// Image with xds-server and iptables (deploy/docker/xds-server.Dockerfile).
        #[arg(long)]
        init_image: Option<String>,
        /// Image with the wasm module at /plugin.wasm (deploy/docker/wasm-authz.Dockerfile).
        #[arg(long)]
        wasm_image: Option<String>,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Remove the objects a YAML file names from the running mesh (like `kubectl delete -f`).
    Delete {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Internal: run a built-in stand-in for a container image.
    #[command(hide = true)]
    App {
        #[arg(long)]
        image: String,
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long = "env")]
        env: Vec<String>,
        #[arg(last = true)]
        args: Vec<String>,
    },
}

/// `wardctl get -o`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum GetOutput {
    Yaml,
}

/// `wardctl routes -o`: Linkerd's table, its wide table, or JSON.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RoutesOutput {
    Table,
    Wide,
    Json,
}

/// The request `wardctl check` predicts and `wardctl bench http` sends, in curl's words.
#[derive(clap::Args)]
struct RequestArgs {
    #[arg(long, short = 'X', default_value = "GET")]
    method: String,
    #[arg(long, default_value = "/")]
    path: String,
    /// `Name: value`, as curl's -H.
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// N simulated delta-ADS proxies on a generated mesh against a real xds-server: time from
    /// a config change until every proxy ACKed, server CPU, memory and bytes per proxy.
    Xds(XdsBenchArgs),
    /// Closed-loop HTTP load on the running local mesh (like Locust users): requests per
    /// second and latency percentiles, from a workload's sidecar or straight to the app.
    Http(HttpBenchArgs),
    /// Retries the sidecar's retry budget allows next to Linkerd's budget and the formula's
    /// bound, over error rates, loads and latencies (the filter's own budget code on a
    /// simulated load).
    RetryBudget {
        #[arg(long, default_value_t = 0.2)]
        retry_ratio: f64,
        #[arg(long, default_value_t = 10)]
        min_retries_per_second: u32,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        ttl: std::time::Duration,
        /// Simulated seconds per case.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// The route's retry cap.
        #[arg(long, default_value_t = ward_xds::resilience::PROFILE_MAX_RETRIES)]
        route_max: u32,
        #[arg(long)]
        json: bool,
    },
    /// Workload certificate issuance rate, and renewing N certificates at once.
    Certs {
        #[arg(long, default_value_t = 5000)]
        count: usize,
        #[arg(long, value_enum, default_value_t = ward_identity::KeyAlgorithm::EcdsaP256)]
        algorithm: ward_identity::KeyAlgorithm,
    },
}

#[derive(clap::Args)]
struct UpArgs {
    dir: PathBuf,
    /// Return once every Envoy has ACKed its config and every app listens.
    #[arg(long)]
    detach: bool,
    #[arg(long)]
    envoy: Option<PathBuf>,
    #[arg(long)]
    wasm: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_address: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:15014")]
    xds_admin_address: SocketAddr,
    /// Where clients without a sidecar (`exec --no-mesh`) send their HTTP traffic.
    #[arg(long, default_value = "127.0.0.1:15080")]
    no_mesh_address: SocketAddr,
    #[arg(long, value_enum, default_value_t = AdsProtocol::Delta)]
    protocol: AdsProtocol,
    #[arg(long, default_value = "warning")]
    envoy_log_level: String,
    /// Lifetime of workload certificates (default 24h; xds-server renews at 4/5 of it).
    #[arg(long)]
    workload_cert_ttl: Option<String>,
    /// Passed to xds-server: close each Envoy's xDS connection after this long, ±10 %
    /// (default 30m; Envoy reconnects and keeps serving meanwhile).
    #[arg(long)]
    max_connection_age: Option<String>,
    /// Plugged-in intermediate CA: Istio's ca-cert.pem, ca-key.pem, root-cert.pem and
    /// cert-chain.pem (default: a root generated and kept in the state directory).
    #[arg(long, env = "WARD_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// Internal: run the supervisor in this process (what --detach starts).
    #[arg(long, hide = true)]
    supervise: bool,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The destination workload: `name` or `namespace/name`.
    to: String,
    /// The client workload: `name` or `namespace/name`.
    #[arg(long, required_unless_present = "no_mesh")]
    from: Option<String>,
    /// A client with no sidecar.
    #[arg(long, conflicts_with = "from")]
    no_mesh: bool,
    #[command(flatten)]
    request: RequestArgs,
    /// The Service port called (default: the first).
    #[arg(long)]
    port: Option<u16>,
    /// The Host header (default: the Service name).
    #[arg(long)]
    host: Option<String>,
    /// A JWT, sent as `Authorization: Bearer` (keys from `jwksUri` are fetched).
    #[arg(long)]
    token: Option<String>,
    /// Check against this config instead of the running mesh's.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct XdsBenchArgs {
    #[arg(long, default_value_t = 1000)]
    proxies: usize,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Also print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also measure a renewal wave: every certificate comes due this long after the
    /// server starts (it must be after the initial sync and the change), e.g. 60s.
    #[arg(long, value_parser = humantime::parse_duration)]
    renew_after: Option<std::time::Duration>,
    /// A flag for the xds-server under test, repeated for each word, e.g.
    /// `--server-arg=--max-new-streams-per-second --server-arg=100` (without one, the
    /// server admits every new stream at once).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// The proxies and xds-server speak plaintext gRPC (by default mutual TLS, as in
    /// production: each proxy presents a certificate for its workload's identity).
    #[arg(long)]
    plaintext_xds: bool,
    /// Give every service a DestinationRule with 3 subsets and a VirtualService with 5
    /// routes.
    #[arg(long)]
    traffic_rules: bool,
}

#[derive(clap::Args)]
struct HttpBenchArgs {
    /// The Service to call (the Host header): `name` in the client's namespace.
    to: String,
    /// The client workload, whose sidecar sends the requests.
    #[arg(long, required_unless_present_any = ["direct", "target"])]
    from: Option<String>,
    /// No mesh at all: connect straight to the destination app, past every sidecar.
    #[arg(long, conflicts_with = "from")]
    direct: bool,
    /// Any HTTP/1.1 listener, `host:port`, mesh or not (the Host header is still TO).
    #[arg(long, conflicts_with_all = ["from", "direct"])]
    target: Option<SocketAddr>,
    #[arg(long, default_value_t = 20)]
    users: usize,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    duration: std::time::Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    warmup: std::time::Duration,
    /// Pause between a response and the user's next request (seed 002 used 100ms).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    think_time: std::time::Duration,
    #[command(flatten)]
    request: RequestArgs,
    #[arg(long, short = 'd')]
    data: Option<String>,
    #[arg(long)]
    json: bool,
}

/// `-H 'Name: value'` arguments, as curl takes them.
fn parse_headers(headers: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    headers
        .iter()
        .map(|h| {
            wardctl::check::parse_header(h)
                .with_context(|| format!("header `{h}` is not `Name: value`"))
        })
        .collect()
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let state_dir = state::state_dir(cli.state_dir.as_deref());
    match cli.command {
        Command::Up(args) => up(args, state_dir).await,
        Command::Down => commands::down(&state_dir).await,
        Command::Exec {
            workload,
            no_mesh: _,
            namespace,
            instance,
            command,
        } => {
            let code = commands::exec(
                &state_dir,
                workload.as_deref(),
                &namespace,
                instance,
                &command,
            )?;
            std::process::exit(code);
        }
        Command::Status => commands::status(&state_dir).await,
        Command::Check(args) => check(args, state_dir).await,
        Command::Edges { json } => {
            let edges = wardctl::runner::inspect::edges(&state_dir).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&edges)?);
            } else {
                print!("{}", wardctl::runner::inspect::render_edges(&edges));
            }
            Ok(())
        }
        Command::Certs { workload, json } => {
            let certs = wardctl::runner::inspect::certs(&state_dir, workload.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&certs)?);
            } else {
                print!("{}", wardctl::runner::inspect::render_certs(&certs));
            }
            Ok(())
        }
        Command::Routes {
            workload,
            to,
            namespace,
            output,
            window,
            json,
        } => {
            let rows = wardctl::runner::traffic::routes(
                &state_dir,
                &workload,
                &namespace,
                &to,
                std::time::SystemTime::now(),
                window,
            )?;
            if json || output == RoutesOutput::Json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let wide = output == RoutesOutput::Wide;
                print!("{}", wardctl::runner::traffic::render_routes(&rows, wide));
            }
            Ok(())
        }
        Command::Tap {
            workload,
            to,
            namespace,
            max_requests,
            duration,
        } => {
            let options = wardctl::runner::traffic::TapOptions {
                max_requests,
                duration,
            };
            wardctl::runner::traffic::tap(&state_dir, &workload, &namespace, &to, &options).await
        }
        Command::Logs { workload, only } => commands::logs(&state_dir, &workload, only),
        Command::Apply { file } => commands::apply(&state_dir, &file).await,
        Command::Delete { file } => commands::delete(&state_dir, &file).await,
        Command::Get {
            kind,
            name,
            namespace,
            all_namespaces,
            output,
        } => commands::get(
            &state_dir,
            &kind,
            name.as_deref(),
            namespace.as_deref().filter(|_| !all_namespaces),
            output == Some(GetOutput::Yaml),
        ),
        Command::Inject {
            file,
            xds_address,
            credential_url,
            proxy_image,
            init_image,
            wasm_image,
            trust_domain,
        } => {
            let defaults = ward_inject::InjectOptions::default();
            let options = ward_inject::InjectOptions {
                credential_url,
                xds_address,
                proxy_image,
                init_image: init_image.unwrap_or(defaults.init_image),
                wasm_image: wasm_image.unwrap_or(defaults.wasm_image),
                trust_domain,
            };
            commands::inject(&file, &options)
        }
        Command::Bench(BenchCommand::Xds(args)) => bench_xds(args).await,
        Command::Bench(BenchCommand::Http(args)) => bench_http(args, state_dir).await,
        Command::Bench(BenchCommand::RetryBudget {
            retry_ratio,
            min_retries_per_second,
            ttl,
            seconds,
            route_max,
            json,
        }) => {
            let config = ward_config::model::RetryBudgetConfig {
                retry_ratio,
                min_retries_per_second,
                ttl_ms: ttl.as_millis().max(1) as u64,
            };
            let rows = wardctl::bench::retry_budget::run(&config, seconds, route_max);
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", wardctl::bench::retry_budget::render(&rows));
            }
            Ok(())
        }
        Command::Bench(BenchCommand::Certs { count, algorithm }) => {
            let r = wardctl::bench::xds::run_cert_bench(count, algorithm)?;
            println!(
                "{}: {} certificates issued in {:.2} s ({:.0}/s); renewing all {} at once: {:.2} s, {:.2} CPU s",
                r.algorithm,
                r.certificates,
                r.issue_seconds,
                r.certificates_per_second,
                r.certificates,
                r.renew_all_seconds,
                r.renew_all_cpu_seconds
            );
            Ok(())
        }
        Command::App {
            image,
            listen,
            env,
            args,
        } => {
            init_tracing();
            let env: Vec<(String, String)> = env
                .iter()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k.to_string(), v.to_string())
                })
                .collect();
            let app = wardctl::apps::stand_in_for(&image, &[], &args, &env, listen)?
                .ok_or_else(|| anyhow::anyhow!("no built-in stand-in for image {image}"))?;
            wardctl::apps::run_stand_in(app).await
        }
    }
}

async fn up(args: UpArgs, state_dir: PathBuf) -> anyhow::Result<()> {
    let UpArgs {
        dir,
        detach,
        envoy,
        wasm,
        xds_address,
        xds_admin_address,
        no_mesh_address,
        protocol,
        envoy_log_level,
        workload_cert_ttl,
        max_connection_age,
        ca_dir,
        supervise,
    } = args;
    let ca_dir = ca_dir
        .map(|d| {
            std::fs::canonicalize(&d).map_err(|e| anyhow::anyhow!("--ca-dir {}: {e}", d.display()))
        })
        .transpose()?;
    let config_dir =
        std::fs::canonicalize(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    // Validate before starting anything, so errors reach the user's terminal.
    let loaded = ward_config::load_path(&config_dir)?;
    if !supervise {
        for warning in &loaded.warnings {
            eprintln!("warning: {warning}");
        }
    }
    let envoy = tools::find_envoy(envoy.as_deref())?;
    let wasm = tools::find_wasm(wasm.as_deref())?;
    if wasm.is_none() && !supervise {
        eprintln!(
            "warning: wasm-authz module not found (build it with scripts/setup.sh or pass \
             --wasm); sidecars run without it"
        );
    }
    let options = SupervisorOptions {
        config_dir: config_dir.clone(),
        state_dir: state_dir.clone(),
        envoy: envoy.clone(),
        wasm: wasm.clone(),
        xds_address,
        xds_admin_address,
        no_mesh_address,
        protocol,
        envoy_log_level: envoy_log_level.clone(),
        workload_cert_ttl: workload_cert_ttl.clone(),
        max_connection_age: max_connection_age.clone(),
        ca_dir: ca_dir.clone(),
    };
    if supervise || !detach {
        init_tracing();
        return commands::up_foreground(options).await;
    }
    let mut forwarded = vec![
        config_dir.display().to_string(),
        "--envoy".to_string(),
        envoy.display().to_string(),
        "--xds-address".to_string(),
        xds_address.to_string(),
        "--xds-admin-address".to_string(),
        xds_admin_address.to_string(),
        "--no-mesh-address".to_string(),
        no_mesh_address.to_string(),
        "--protocol".to_string(),
        match protocol {
            AdsProtocol::Delta => "delta".to_string(),
            AdsProtocol::Sotw => "sotw".to_string(),
        },
        "--envoy-log-level".to_string(),
        envoy_log_level,
        "--state-dir".to_string(),
        state_dir.display().to_string(),
    ];
    if let Some(dir) = &ca_dir {
        forwarded.push("--ca-dir".to_string());
        forwarded.push(dir.display().to_string());
    }
    if let Some(ttl) = &workload_cert_ttl {
        forwarded.push("--workload-cert-ttl".to_string());
        forwarded.push(ttl.clone());
    }
    if let Some(age) = &max_connection_age {
        forwarded.push("--max-connection-age".to_string());
        forwarded.push(age.clone());
    }
    if let Some(wasm) = &wasm {
        forwarded.push("--wasm".to_string());
        forwarded.push(wasm.display().to_string());
    }
    let state = commands::up_detached(&options, &forwarded).await?;
    commands::print_instances(&state);
    Ok(())
}

async fn check(args: CheckArgs, state_dir: PathBuf) -> anyhow::Result<()> {
    let CheckArgs {
        to,
        from,
        no_mesh: _,
        request,
        port,
        host,
        token,
        config,
        json,
    } = args;
    let dir = match config {
        Some(dir) => dir,
        None => state::read_state(&state_dir)?.config_dir,
    };
    let mut mesh = ward_config::load_path(&dir)
        .with_context(|| format!("loading {}", dir.display()))?
        .mesh;
    // The keys the sidecars have: fetched the way xds-server fetches them.
    for uri in mesh.jwks_uris() {
        match ward_sources::jwks::fetch(&uri).await {
            Ok((document, _)) => {
                mesh.fetched_jwks.insert(uri, document);
            }
            Err(e) => eprintln!("warning: {e:#}: tokens of its issuer will be refused"),
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let qualified = |name: &str| match name.split_once('/') {
        Some((ns, n)) => (ns.to_string(), n.to_string()),
        None => ("default".to_string(), name.to_string()),
    };
    let query = wardctl::check::CheckQuery {
        source: from.as_deref().map(qualified),
        destination: qualified(&to),
        headers: parse_headers(&request.headers)?,
        method: request.method,
        path: request.path,
        port,
        host,
        token,
        now,
    };
    let report = wardctl::check::check(&mesh, &query)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

async fn bench_xds(args: XdsBenchArgs) -> anyhow::Result<()> {
    let XdsBenchArgs {
        proxies,
        services,
        json,
        renew_after,
        server_args,
        plaintext_xds,
        traffic_rules,
    } = args;
    init_tracing();
    let work_dir = std::env::temp_dir().join(format!("ward-bench-{}", std::process::id()));
    let options = wardctl::bench::xds::BenchOptions {
        proxies,
        services,
        xds_server: tools::sibling_binary("xds-server")?,
        work_dir: work_dir.clone(),
        renew_after,
        server_args,
        plaintext: plaintext_xds,
        traffic_rules,
    };
    let report = wardctl::bench::xds::run_xds_bench(&options).await;
    let _ = std::fs::remove_dir_all(&work_dir);
    let report = report?;
    print!("{}", report.render());
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

async fn bench_http(args: HttpBenchArgs, state_dir: PathBuf) -> anyhow::Result<()> {
    let HttpBenchArgs {
        to,
        from,
        direct: _,
        target,
        users,
        duration,
        warmup,
        think_time,
        request,
        data,
        json,
    } = args;
    let target = match target {
        Some(target) => target,
        None => {
            let state = state::read_state(&state_dir)?;
            let instance = |workload: &str| {
                state
                    .instances
                    .iter()
                    .find(|i| i.workload == workload)
                    .with_context(|| format!("no workload {workload} in the running mesh"))
            };
            match &from {
                Some(client) => {
                    let i = instance(client)?;
                    SocketAddr::from((i.address, i.outbound_port))
                }
                None => {
                    let i = instance(&to)?;
                    let port = *i
                        .ports
                        .first()
                        .with_context(|| format!("{to} has no port"))?;
                    SocketAddr::from((i.app_address, port))
                }
            }
        }
    };
    let options = wardctl::bench::http::LoadOptions {
        target,
        host: to,
        method: request.method.parse().context("--method")?,
        path: request.path,
        headers: parse_headers(&request.headers)?,
        body: data,
        users,
        duration,
        warmup,
        think_time,
    };
    let report = wardctl::bench::http::run(&options).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}
