//! `xds-server`: Ward's control plane daemon, and the bootstrap renderer for its proxies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ward::bootstrap::{self, AdsProtocol, BootstrapParams};
use ward::server::{self, ServerOptions};
use ward::translate::TranslateOptions;
use ward::watch::DebounceWindow;

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
        /// Quiet period before a burst of config changes is applied.
        #[arg(long, default_value_t = 100)]
        debounce_ms: u64,
        /// Longest a burst of changes can delay a reload.
        #[arg(long, default_value_t = 500)]
        debounce_max_ms: u64,
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            xds_address,
            admin_address,
            wasm_module,
            debounce_ms,
            debounce_max_ms,
        } => {
            init_tracing();
            server::run(ServerOptions {
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
            })
            .await
        }
        Command::Bootstrap {
            config,
            workload,
            namespace,
            instance,
            xds_address,
            protocol,
        } => {
            let loaded = ward::config::load_path(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            let (w, i) = bootstrap::find_instance(&loaded.mesh, &namespace, &workload, instance)?;
            let params = BootstrapParams {
                xds_address,
                protocol,
            };
            let rendered = bootstrap::render(&loaded.mesh, w, i, &params);
            println!("{}", serde_json::to_string_pretty(&rendered)?);
            Ok(())
        }
    }
}
