//! The supervisor process of a local mesh: starts xds-server, one Envoy per workload instance
//! and the apps behind them; keeps them in step with the config directory (instances added or
//! removed on reload; a crashed process is restarted); tears everything down on SIGTERM.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tracing::{error, info, info_span, warn, Instrument};

use crate::apps::{stand_in_for, StandIn};
use crate::runner::admin_client;
use crate::runner::no_mesh_proxy::{serve_no_mesh_proxy, ServiceDirectory};
use crate::runner::state::{self, InstanceState, RunnerState};
use ward_config::model::{Instance, Mesh, Workload};
use ward_config::wellknown::{ADMIN_PORT, OUTBOUND_PORT};
use ward_identity::CaOptions;
use ward_sources::watch::{watch_debounced, DebounceWindow};
use ward_xds::bootstrap::{self, AdsProtocol, BootstrapParams};

/// Annotation naming a local command to run for an image Ward has no stand-in for.
pub const LOCAL_COMMAND_ANNOTATION: &str = "ward.dev/local-command";

#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    pub envoy: PathBuf,
    pub wasm: Option<PathBuf>,
    pub xds_address: SocketAddr,
    pub xds_admin_address: SocketAddr,
    pub no_mesh_address: SocketAddr,
    pub protocol: AdsProtocol,
    pub envoy_log_level: String,
    /// Passed to xds-server: lifetime of workload certificates (e.g. `24h`, `90s`).
    pub workload_cert_ttl: Option<String>,
    /// Passed to xds-server: maximum age of an xDS connection (e.g. `30m`, `2s`).
    pub max_connection_age: Option<String>,
    /// Plugged-in CA (Istio's cacerts layout) for xds-server and the bootstrap credentials.
    pub ca_dir: Option<PathBuf>,
}

/// What runs for one instance: its Envoy and, unless client-only, its app.
struct RunningInstance {
    spec: InstanceState,
    /// Changes when the app must be restarted (image, command, env, ports).
    app_fingerprint: String,
    envoy: Option<Child>,
    app: Option<Child>,
    app_command: Option<Vec<String>>,
}

/// How the app of a workload is run locally.
enum AppPlan {
    /// Nothing listens behind the sidecar (a curl pod running `sleep`).
    None,
    /// `argv` run with `env`; it listens on `listen`.
    Process {
        argv: Vec<String>,
        listen: Option<SocketAddr>,
        description: String,
    },
}

pub async fn run(options: SupervisorOptions) -> anyhow::Result<()> {
    let logs = state::logs_dir(&options.state_dir);
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    std::fs::create_dir_all(options.state_dir.join("bootstrap"))?;

    let loaded = ward_config::load_path(&options.config_dir)?;
    for warning in &loaded.warnings {
        warn!(%warning, "config");
    }
    let mut mesh = loaded.mesh;

    let mut supervisor = Supervisor {
        options: options.clone(),
        instances: BTreeMap::new(),
        xds: None,
        directory: Arc::new(RwLock::new(ServiceDirectory::from_mesh(&mesh))),
        last_error: None,
        ca: None,
    };
    supervisor.start_xds_server().await?;

    let listener = tokio::net::TcpListener::bind(options.no_mesh_address)
        .await
        .with_context(|| format!("binding the no-mesh proxy on {}", options.no_mesh_address))?;
    let directory = supervisor.directory.clone();
    tokio::spawn(async move {
        if let Err(e) = serve_no_mesh_proxy(listener, directory).await {
            error!(error = %e, "no-mesh proxy stopped");
        }
    });

    let (changes_tx, mut changes) = mpsc::channel(4);
    let _watcher = watch_debounced(&options.config_dir, DebounceWindow::default(), changes_tx)?;

    let outcome = async {
        supervisor.reconcile(&mesh).await?;
        supervisor.wait_ready(&mesh, Duration::from_secs(60)).await?;
        supervisor.write_state(true)?;
        info!("local mesh ready");

        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = sigterm.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                Some(()) = changes.recv() => {
                    match ward_config::load_path(&options.config_dir) {
                        Ok(loaded) => {
                            mesh = loaded.mesh;
                            supervisor.last_error = None;
                            *supervisor.directory.write().expect("directory lock") =
                                ServiceDirectory::from_mesh(&mesh);
                            if let Err(e) = supervisor.reconcile(&mesh).await {
                                warn!(error = %e, "could not start every instance of the new config");
                                supervisor.last_error = Some(format!("{e:#}"));
                            }
                            supervisor.write_state(false)?;
                            let ready = supervisor.wait_ready(&mesh, Duration::from_secs(30)).await;
                            if let Err(e) = &ready {
                                warn!(error = %e, "mesh not ready after reload");
                            }
                            supervisor.write_state(ready.is_ok())?;
                        }
                        Err(e) => {
                            // Keep everything running on the last good config.
                            warn!(error = %e, "invalid config; keeping the last good one");
                            supervisor.last_error = Some(e.to_string());
                            supervisor.write_state(true)?;
                        }
                    }
                }
                _ = tick.tick() => supervisor.restart_exited().await?,
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;

    supervisor.shutdown().await;
    outcome
}

struct Supervisor {
    options: SupervisorOptions,
    instances: BTreeMap<String, RunningInstance>,
    xds: Option<Child>,
    directory: Arc<RwLock<ServiceDirectory>>,
    last_error: Option<String>,
    /// xds-server's CA, loaded once (after xds-server created it) to sign credentials.
    ca: Option<Arc<ward_identity::CertificateAuthority>>,
}

/// xds-server's own state (the CA root) inside the runner's state directory.
fn xds_state_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("xds-server")
}

/// How every sidecar Envoy is started.
fn envoy_argv(options: &SupervisorOptions, bootstrap: &Path) -> Vec<String> {
    [
        options.envoy.display().to_string(),
        "-c".to_string(),
        bootstrap.display().to_string(),
        // Several Envoys on one host: no shared-memory hot restart between them.
        "--disable-hot-restart".to_string(),
        "--concurrency".to_string(),
        "1".to_string(),
        "--log-level".to_string(),
        options.envoy_log_level.clone(),
        "--drain-time-s".to_string(),
        "2".to_string(),
        // Access logs reach `wardctl logs` within a fraction of a second.
        "--file-flush-interval-msec".to_string(),
        "200".to_string(),
    ]
    .to_vec()
}

/// Makes a child die with the supervisor even if the supervisor is killed with SIGKILL.
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and only affects the child being spawned.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// How a started process is grouped, which decides how it is stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    /// Stays in the supervisor's process group (Envoy, xds-server: no children of their own).
    Inherit,
    /// Leads a process group of its own (an app: a `sh -c` local command may start children),
    /// so stopping it stops everything it started.
    Own,
}

fn spawn_logged(
    argv: &[String],
    env: &[(String, String)],
    log: &Path,
    group: Group,
) -> anyhow::Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true);
    if group == Group::Own {
        command.process_group(0);
    }
    die_with_parent(&mut command);
    command
        .spawn()
        .with_context(|| format!("starting {}", argv.join(" ")))
}

async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: plain signal to a child we own.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM)
        };
    }
    if tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Stops an app started with [`Group::Own`] and whatever it started: SIGTERM to the whole
/// group, then SIGKILL to what is left of it once the leader is gone (a background child
/// that ignored SIGTERM, or one the leader left behind when it exited by itself).
async fn terminate_group(child: &mut Child, pid: Option<u32>) {
    let Some(pid) = child.id().or(pid) else {
        return;
    };
    // SAFETY: signals to the process group this app leads.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(-(pid as libc::pid_t), libc::SIGTERM)
    };
    if tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    kill_group(pid);
}

/// SIGKILL to what remains of the process group `pid` led. The group id is not reused while
/// any member lives, so this reaches only the app's own descendants.
pub fn kill_group(pid: u32) {
    // SAFETY: plain signal to a process group; ESRCH when it is already empty.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(-(pid as libc::pid_t), libc::SIGKILL)
    };
}

/// A second mesh with the same workloads would get the same addresses: say so plainly.
fn address_free(address: Ipv4Addr, port: u16) -> anyhow::Result<()> {
    std::net::TcpListener::bind((address, port))
        .map(drop)
        .with_context(|| {
            format!(
            "{address}:{port} is already in use: is another local mesh with the same workloads \
             running? (`wardctl down`, with its --state-dir)"
        )
        })
}

async fn port_open(address: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(address)
        )
        .await,
        Ok(Ok(_))
    )
}

impl Supervisor {
    async fn start_xds_server(&mut self) -> anyhow::Result<()> {
        let binary = crate::runner::tools::sibling_binary("xds-server")?;
        let mut argv = vec![
            binary.display().to_string(),
            "serve".to_string(),
            "--config".to_string(),
            self.options.config_dir.display().to_string(),
            "--xds-address".to_string(),
            self.options.xds_address.to_string(),
            "--admin-address".to_string(),
            self.options.xds_admin_address.to_string(),
            // The CA root persists here: restarts and `wardctl down/up` keep the trust root.
            "--state-dir".to_string(),
            self.options
                .state_dir
                .join("xds-server")
                .display()
                .to_string(),
        ];
        if let Some(dir) = &self.options.ca_dir {
            argv.push("--ca-dir".to_string());
            argv.push(dir.display().to_string());
        }
        if let Some(ttl) = &self.options.workload_cert_ttl {
            argv.push("--workload-cert-ttl".to_string());
            argv.push(ttl.clone());
        }
        if let Some(age) = &self.options.max_connection_age {
            argv.push("--max-connection-age".to_string());
            argv.push(age.clone());
        }
        if let Some(wasm) = &self.options.wasm {
            argv.push("--wasm-module".to_string());
            argv.push(wasm.display().to_string());
        }
        let log = state::logs_dir(&self.options.state_dir).join("xds-server.log");
        let mut child = spawn_logged(&argv, &[], &log, Group::Inherit)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) =
                admin_client::get(self.options.xds_admin_address, "/healthz").await
            {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "xds-server exited ({status}) during start-up; see {}",
                    log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "xds-server did not become healthy in 20 s; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.xds = Some(child);
        Ok(())
    }

    /// Starts what the mesh has and we don't run; stops what we run and the mesh no longer has.
    async fn reconcile(&mut self, mesh: &Mesh) -> anyhow::Result<()> {
        let mut desired = BTreeMap::new();
        for workload in &mesh.workloads {
            for instance in &workload.instances {
                desired.insert(Mesh::node_id(workload, instance), (workload, instance));
            }
        }
        let gone: Vec<String> = self
            .instances
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for node_id in gone {
            if let Some(mut running) = self.instances.remove(&node_id) {
                info!(%node_id, "stopping removed instance");
                if let Some(app) = running.app.as_mut() {
                    terminate_group(app, running.spec.app_pid).await;
                }
                if let Some(envoy) = running.envoy.as_mut() {
                    terminate(envoy).await;
                }
            }
        }
        for (node_id, (workload, instance)) in desired {
            let (plan, fingerprint) = self.app_plan(mesh, workload, instance)?;
            let spec = self.instance_state(mesh, workload, instance, &plan);
            match self.instances.get_mut(&node_id) {
                Some(running) if running.app_fingerprint == fingerprint => {
                    running.spec.ports = spec.ports.clone();
                }
                Some(running) => {
                    info!(%node_id, "app changed; restarting it");
                    if let Some(app) = running.app.as_mut() {
                        terminate_group(app, running.spec.app_pid).await;
                    }
                    running.app = None;
                    running.app_command = None;
                    running.spec = spec;
                    running.app_fingerprint = fingerprint;
                    self.start_app(&node_id, plan)?;
                }
                None => {
                    address_free(instance.address, OUTBOUND_PORT)?;
                    self.instances.insert(
                        node_id.clone(),
                        RunningInstance {
                            spec,
                            app_fingerprint: fingerprint,
                            envoy: None,
                            app: None,
                            app_command: None,
                        },
                    );
                    self.start_envoy(mesh, workload, instance)?;
                    self.start_app(&node_id, plan)?;
                }
            }
        }
        Ok(())
    }

    fn instance_state(
        &self,
        mesh: &Mesh,
        workload: &Workload,
        instance: &Instance,
        plan: &AppPlan,
    ) -> InstanceState {
        InstanceState {
            workload: workload.name.clone(),
            namespace: workload.namespace.clone(),
            instance: instance.name.clone(),
            node_id: Mesh::node_id(workload, instance),
            identity: mesh.identity(workload).to_string(),
            address: instance.address,
            app_address: instance.app_address,
            ports: mesh.inbound_ports(workload),
            outbound_port: OUTBOUND_PORT,
            admin_port: ADMIN_PORT,
            envoy_pid: None,
            app_pid: None,
            app: match plan {
                AppPlan::None => "none (client-only)".to_string(),
                AppPlan::Process { description, .. } => description.clone(),
            },
            env: app_env(workload, instance),
        }
    }

    fn app_plan(
        &self,
        mesh: &Mesh,
        workload: &Workload,
        instance: &Instance,
    ) -> anyhow::Result<(AppPlan, String)> {
        let container = workload.containers.first().with_context(|| {
            format!(
                "workload {}/{} has no containers",
                workload.namespace, workload.name
            )
        })?;
        let port = container
            .ports
            .first()
            .map(|p| p.container_port)
            .or_else(|| mesh.inbound_ports(workload).first().copied());
        let listen = port.map(|p| SocketAddr::new(instance.app_address.into(), p));
        let fingerprint = format!(
            "{:?}|{:?}|{:?}",
            workload.containers,
            workload.annotations.get(LOCAL_COMMAND_ANNOTATION),
            listen
        );
        let wardctl = std::env::current_exe()?.display().to_string();
        if let Some(local) = workload.annotations.get(LOCAL_COMMAND_ANNOTATION) {
            let argv = vec!["sh".to_string(), "-c".to_string(), local.clone()];
            return Ok((
                AppPlan::Process {
                    argv,
                    listen,
                    description: format!("local command: {local}"),
                },
                fingerprint,
            ));
        }
        let listen_or_default =
            listen.unwrap_or(SocketAddr::new(instance.app_address.into(), 8080));
        let stand_in = stand_in_for(
            &container.image,
            &container.command,
            &container.args,
            &container.env,
            listen_or_default,
        )
        .map_err(|e| anyhow::anyhow!("workload {}/{}: {e}", workload.namespace, workload.name))?;
        match stand_in {
            Some(StandIn::ClientOnly) => Ok((AppPlan::None, fingerprint)),
            Some(_) => {
                let mut argv = vec![
                    wardctl,
                    "app".to_string(),
                    "--image".to_string(),
                    container.image.clone(),
                    "--listen".to_string(),
                    listen_or_default.to_string(),
                ];
                for (k, v) in &container.env {
                    argv.push("--env".to_string());
                    argv.push(format!("{k}={v}"));
                }
                argv.push("--".to_string());
                argv.extend(container.command.iter().cloned());
                argv.extend(container.args.iter().cloned());
                Ok((
                    AppPlan::Process {
                        argv,
                        listen: Some(listen_or_default),
                        description: format!("built-in {}", container.image),
                    },
                    fingerprint,
                ))
            }
            None => bail!(
                "{}: workload {}/{}: image `{}` has no built-in stand-in; add the annotation \
                 `{LOCAL_COMMAND_ANNOTATION}: \"<command>\"` to the pod template's \
                 metadata.annotations to run a local command instead (it gets $HOST and $PORT \
                 to listen on)",
                image_location(workload),
                workload.namespace,
                workload.name,
                container.image
            ),
        }
    }

    fn start_envoy(
        &mut self,
        mesh: &Mesh,
        workload: &Workload,
        instance: &Instance,
    ) -> anyhow::Result<()> {
        let node_id = Mesh::node_id(workload, instance);
        let credentials = self.bootstrap_credentials(mesh, workload, &node_id)?;
        let wasm_module_sha256 = match &self.options.wasm {
            Some(module) => Some(
                bootstrap::file_sha256(module)
                    .with_context(|| format!("reading the wasm module {}", module.display()))?,
            ),
            None => None,
        };
        let params = BootstrapParams {
            xds_address: self.options.xds_address,
            protocol: self.options.protocol,
            credentials: Some(credentials),
            wasm_module_sha256,
        };
        let bootstrap = bootstrap::render(mesh, workload, instance, &params);
        let path = self
            .options
            .state_dir
            .join("bootstrap")
            .join(format!("{node_id}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&bootstrap)?)?;
        let argv = envoy_argv(&self.options, &path);
        let log = state::envoy_log(&self.options.state_dir, &node_id);
        let child = spawn_logged(&argv, &[], &log, Group::Inherit)?;
        let running = self
            .instances
            .get_mut(&node_id)
            .expect("instance registered");
        running.spec.envoy_pid = child.id();
        running.envoy = Some(child);
        info!(%node_id, address = %instance.address, "started envoy");
        Ok(())
    }

    /// The proxy's client certificate for the xDS channel, signed by the CA xds-server uses
    /// (the built-in root in the state directory, or `$WARD_CA_DIR`).
    fn bootstrap_credentials(
        &mut self,
        mesh: &Mesh,
        workload: &Workload,
        node_id: &str,
    ) -> anyhow::Result<ward_identity::BootstrapCredentials> {
        let ca = match &self.ca {
            Some(ca) => ca.clone(),
            None => {
                let ca = ward_identity::CertificateAuthority::load_or_create(&CaOptions::signing(
                    xds_state_dir(&self.options.state_dir),
                    self.options.ca_dir.clone(),
                    &mesh.trust_domain,
                ))
                .context("loading the CA for bootstrap credentials")?;
                self.ca.insert(Arc::new(ca)).clone()
            }
        };
        let dir = self.options.state_dir.join("credentials").join(node_id);
        let server = ward_config::SpiffeId::xds_server(&mesh.trust_domain, &mesh.root_namespace);
        Ok(ward_identity::write_bootstrap_credentials(
            &ca,
            &mesh.identity(workload),
            &server,
            &dir,
        )?)
    }

    fn start_app(&mut self, node_id: &str, plan: AppPlan) -> anyhow::Result<()> {
        let AppPlan::Process { argv, listen, .. } = plan else {
            return Ok(());
        };
        let running = self
            .instances
            .get_mut(node_id)
            .expect("instance registered");
        let mut env = running.spec.env.clone();
        if let Some(listen) = listen {
            env.push(("HOST".to_string(), listen.ip().to_string()));
            env.push(("PORT".to_string(), listen.port().to_string()));
        }
        let log = state::app_log(&self.options.state_dir, node_id);
        let child = spawn_logged(&argv, &env, &log, Group::Own)?;
        running.spec.app_pid = child.id();
        running.app = Some(child);
        running.app_command = Some(argv);
        Ok(())
    }

    /// Like a kubelet: a process that exited is started again.
    async fn restart_exited(&mut self) -> anyhow::Result<()> {
        if let Some(xds) = self.xds.as_mut() {
            if let Some(status) = xds.try_wait()? {
                warn!(%status, "xds-server exited; restarting it");
                self.xds = None;
                self.start_xds_server().await?;
            }
        }
        let mut changed = false;
        for (node_id, running) in self.instances.iter_mut() {
            if let Some(envoy) = running.envoy.as_mut() {
                if let Some(status) = envoy.try_wait()? {
                    warn!(%node_id, %status, "envoy exited; restarting it");
                    let bootstrap = self
                        .options
                        .state_dir
                        .join("bootstrap")
                        .join(format!("{node_id}.json"));
                    let argv = envoy_argv(&self.options, &bootstrap);
                    let log = state::envoy_log(&self.options.state_dir, node_id);
                    let child = spawn_logged(&argv, &[], &log, Group::Inherit)?;
                    running.spec.envoy_pid = child.id();
                    running.envoy = Some(child);
                    changed = true;
                }
            }
            if let (Some(app), Some(argv)) = (running.app.as_mut(), running.app_command.clone()) {
                if let Some(status) = app.try_wait()? {
                    warn!(%node_id, %status, "app exited; restarting it");
                    // What it started may still hold its port: stopped with it.
                    if let Some(pid) = running.spec.app_pid {
                        kill_group(pid);
                    }
                    let mut env = running.spec.env.clone();
                    if let Some(port) = running.spec.ports.first() {
                        env.push(("HOST".to_string(), running.spec.app_address.to_string()));
                        env.push(("PORT".to_string(), port.to_string()));
                    }
                    let log = state::app_log(&self.options.state_dir, node_id);
                    let child = spawn_logged(&argv, &env, &log, Group::Own)?;
                    running.spec.app_pid = child.id();
                    running.app = Some(child);
                    changed = true;
                }
            }
        }
        if changed {
            self.write_state(true)?;
        }
        Ok(())
    }

    /// Every Envoy has ACKed its config (xds-server says SYNCED) and listens; every app listens.
    async fn wait_ready(&mut self, mesh: &Mesh, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            // Waiting must not stop the supervising: a process that dies meanwhile (xds-server
            // included) is restarted now, not after the wait.
            self.restart_exited().await?;
            let pending = self.not_ready(mesh).await;
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "not ready after {} s: {}; see the logs in {}",
                    limit.as_secs(),
                    pending.join("; "),
                    state::logs_dir(&self.options.state_dir).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn not_ready(&self, mesh: &Mesh) -> Vec<String> {
        let mut pending = Vec::new();
        let synced: Vec<String> =
            match admin_client::get_json(self.options.xds_admin_address, "/status").await {
                Ok(status) => ward_ads::proxy_status::synced_node_ids(&status),
                Err(e) => {
                    pending.push(format!("xds-server status: {e}"));
                    return pending;
                }
            };
        for workload in &mesh.workloads {
            for instance in &workload.instances {
                let node_id = Mesh::node_id(workload, instance);
                if !synced.contains(&node_id) {
                    pending.push(format!("{node_id}: envoy has not ACKed its config"));
                    continue;
                }
                let Some(running) = self.instances.get(&node_id) else {
                    continue;
                };
                // Asked of Envoy's admin, not by connecting: a probe connection would count as
                // a client without a sidecar in the proxy's own statistics (`wardctl edges`).
                let admin = SocketAddr::new(instance.address.into(), ADMIN_PORT);
                let listeners = match admin_client::get(admin, "/listeners").await {
                    Ok((200, body)) => body,
                    _ => String::new(),
                };
                for port in std::iter::once(OUTBOUND_PORT).chain(running.spec.ports.iter().copied())
                {
                    if !listeners.contains(&format!("::{}:{port}", instance.address)) {
                        pending.push(format!(
                            "{node_id}: envoy not listening on {}:{port}",
                            instance.address
                        ));
                    }
                }
                if let Some(argv) = &running.app_command {
                    let _ = argv;
                    if let Some(port) = running.spec.ports.first() {
                        let app = SocketAddr::new(instance.app_address.into(), *port);
                        if running.spec.app.starts_with("built-in") && !port_open(app).await {
                            pending.push(format!("{node_id}: app not listening on {app}"));
                        }
                    }
                }
            }
        }
        pending
    }

    fn write_state(&self, ready: bool) -> anyhow::Result<()> {
        let state = RunnerState {
            supervisor_pid: std::process::id(),
            config_dir: self.options.config_dir.clone(),
            xds_address: self.options.xds_address,
            xds_admin_address: self.options.xds_admin_address,
            no_mesh_proxy: self.options.no_mesh_address,
            ready,
            last_error: self.last_error.clone(),
            instances: self.instances.values().map(|r| r.spec.clone()).collect(),
        };
        state::write_state(&self.options.state_dir, &state)
    }

    async fn shutdown(&mut self) {
        for (node_id, running) in self.instances.iter_mut() {
            let span = info_span!("stop", %node_id);
            async {
                if let Some(app) = running.app.as_mut() {
                    terminate_group(app, running.spec.app_pid).await;
                }
                if let Some(envoy) = running.envoy.as_mut() {
                    terminate(envoy).await;
                }
            }
            .instrument(span)
            .await;
        }
        if let Some(xds) = self.xds.as_mut() {
            terminate(xds).await;
        }
        let _ = std::fs::remove_file(state::state_file(&self.options.state_dir));
        info!("local mesh stopped");
    }
}

/// Where the first container's image of `workload` is written, as config errors say it:
/// `FILE:LINE:COLUMN: FIELD`. The model keeps only where each resource starts, so the field
/// is looked up again in the file; the resource's own line if that fails.
fn image_location(workload: &Workload) -> String {
    let source = &workload.source;
    let (documents, _) = std::fs::read_to_string(&source.file)
        .ok()
        .and_then(|text| ward_config::yaml::parse_documents(&text).ok())
        .unwrap_or_default();
    let get = |node: &ward_config::yaml::Node, key: &str| match &node.value {
        ward_config::yaml::Value::Mapping(entries) => entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, v)| v.clone()),
        _ => None,
    };
    let first = |node: Option<ward_config::yaml::Node>| match node.map(|n| n.value) {
        Some(ward_config::yaml::Value::Sequence(items)) => items.into_iter().next(),
        _ => None,
    };
    // The document of this workload: its kind, name and namespace, the one nearest above the
    // line the resource starts at.
    let document = documents
        .iter()
        .filter(|d| d.position.line <= source.line)
        .filter(|d| {
            let meta = get(d, "metadata");
            let text =
                |n: Option<ward_config::yaml::Node>| n.and_then(|n| n.text().map(str::to_string));
            text(meta.as_ref().and_then(|m| get(m, "name"))).as_deref()
                == Some(workload.name.as_str())
                && text(meta.as_ref().and_then(|m| get(m, "namespace")))
                    .is_none_or(|ns| ns == workload.namespace)
        })
        .max_by_key(|d| d.position.line);
    let is_pod = document
        .and_then(|d| get(d, "kind"))
        .is_some_and(|k| k.text() == Some("Pod"));
    let (spec, field) = match is_pod {
        true => (
            document.and_then(|d| get(d, "spec")),
            "spec.containers[0].image",
        ),
        false => (
            document
                .and_then(|d| get(d, "spec"))
                .and_then(|s| get(&s, "template"))
                .and_then(|t| get(&t, "spec")),
            "spec.template.spec.containers[0].image",
        ),
    };
    let image = first(spec.and_then(|s| get(&s, "containers"))).and_then(|c| get(&c, "image"));
    match image {
        Some(node) => format!(
            "{}:{}:{}: {field}",
            source.file, node.position.line, node.position.column
        ),
        None => format!("{}:{}: {field}", source.file, source.line),
    }
}

/// The app's environment: the container's env, plus `http_proxy` pointing at its own sidecar,
/// which stands in for the iptables capture a Kubernetes pod would have.
pub fn app_env(workload: &Workload, instance: &Instance) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = workload
        .containers
        .first()
        .map(|c| c.env.clone())
        .unwrap_or_default();
    // The downward API (`POD_NAME`, `NAMESPACE` in the Gateway API's echo manifests).
    for (name, field) in workload
        .containers
        .first()
        .into_iter()
        .flat_map(|c| &c.field_env)
    {
        if let Some(value) = workload.pod_field(instance, field) {
            env.push((name.clone(), value));
        }
    }
    // Kubernetes sets the pod name as the hostname; apps report it (Bookinfo's reviews
    // `podname`, helloworld's `instance`).
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        env.push(("HOSTNAME".to_string(), instance.name.clone()));
    }
    env.extend(proxy_env(instance.address));
    env
}

/// Environment that sends a command's HTTP traffic through the sidecar at `address`.
pub fn proxy_env(address: Ipv4Addr) -> Vec<(String, String)> {
    let proxy = format!("http://{address}:{OUTBOUND_PORT}");
    vec![
        ("http_proxy".to_string(), proxy.clone()),
        ("HTTP_PROXY".to_string(), proxy),
        ("no_proxy".to_string(), String::new()),
        ("NO_PROXY".to_string(), String::new()),
    ]
}
