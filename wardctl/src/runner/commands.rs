//! `wardctl` commands that act on a running local mesh: up, down, exec, status, logs, apply.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::runner::admin_client;
use crate::runner::objects;
use crate::runner::state::{self, RunnerState};
use crate::runner::supervisor::{self, proxy_env, SupervisorOptions};

/// Starts the supervisor in the background and waits until the mesh is ready.
pub async fn up_detached(
    options: &SupervisorOptions,
    forwarded_args: &[String],
) -> anyhow::Result<RunnerState> {
    refuse_if_running(&options.state_dir)?;
    std::fs::create_dir_all(state::logs_dir(&options.state_dir))?;
    let log_path = state::logs_dir(&options.state_dir).join("supervisor.log");
    let log = std::fs::File::create(&log_path)?;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .arg("up")
        .args(forwarded_args)
        .arg("--supervise")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own session: the supervisor outlives this command and the terminal.
    // SAFETY: setsid is async-signal-safe.
    #[allow(unsafe_code)]
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn().context("starting the supervisor")?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!(
                "the local mesh failed to start ({status}):\n{}",
                tail(&log, 40)
            );
        }
        if let Ok(state) = state::read_state(&options.state_dir) {
            if state.ready {
                return Ok(state);
            }
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!(
                "the local mesh is not ready after 90 s (still running; `wardctl down` stops it):\n{}",
                tail(&log, 40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the supervisor in this process (foreground `wardctl up`, or the detached child).
pub async fn up_foreground(options: SupervisorOptions) -> anyhow::Result<()> {
    refuse_if_running(&options.state_dir)?;
    std::fs::create_dir_all(&options.state_dir)?;
    supervisor::run(options).await
}

fn refuse_if_running(state_dir: &Path) -> anyhow::Result<()> {
    if let Ok(state) = state::read_state(state_dir) {
        if state.supervisor_pid != std::process::id() && state::process_alive(state.supervisor_pid)
        {
            bail!(
                "a local mesh is already running (supervisor pid {}, config {}); `wardctl down` first",
                state.supervisor_pid,
                state.config_dir.display()
            );
        }
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn print_instances(state: &RunnerState) {
    println!(
        "{:<20} {:<10} {:<22} {:<16} {:<24} {:<48} APP",
        "WORKLOAD", "NAMESPACE", "INSTANCE", "ADDRESS", "PORTS", "IDENTITY"
    );
    for i in &state.instances {
        let ports: Vec<String> = i.ports.iter().map(u16::to_string).collect();
        println!(
            "{:<20} {:<10} {:<22} {:<16} {:<24} {:<48} {}",
            i.workload,
            i.namespace,
            i.instance,
            i.address,
            format!("{} (out :{})", ports.join(","), i.outbound_port),
            i.identity,
            i.app
        );
    }
    println!(
        "xds-server: {} (admin http://{}); clients without a sidecar: http_proxy=http://{}",
        state.xds_address, state.xds_admin_address, state.no_mesh_proxy
    );
}

/// Stops the supervisor, which stops everything it started; waits until all are gone.
pub async fn down(state_dir: &Path) -> anyhow::Result<()> {
    let state = match state::read_state(state_dir) {
        Ok(state) => state,
        Err(_) => {
            println!("no local mesh is running");
            return Ok(());
        }
    };
    let mut pids: Vec<u32> = vec![state.supervisor_pid];
    for i in &state.instances {
        pids.extend(i.envoy_pid);
        pids.extend(i.app_pid);
    }
    // SAFETY: plain signal.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(state.supervisor_pid as libc::pid_t, libc::SIGTERM)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while pids.iter().any(|p| state::process_alive(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Whatever survived the orderly shutdown is killed: `down` must leave nothing behind.
    if state::process_alive(state.supervisor_pid) {
        // The supervisor did not get to stop the apps' process groups (what a `sh -c` local
        // command started): done here.
        for pid in state.instances.iter().filter_map(|i| i.app_pid) {
            supervisor::kill_group(pid);
        }
    }
    for pid in pids.iter().filter(|p| state::process_alive(**p)) {
        // SAFETY: plain signal.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(*pid as libc::pid_t, libc::SIGKILL)
        };
    }
    let _ = std::fs::remove_file(state::state_file(state_dir));
    println!("local mesh stopped ({} processes)", pids.len());
    Ok(())
}

/// Runs `command` as if inside `workload`'s pod (through its sidecar), or with no sidecar.
/// Returns the command's exit code.
pub fn exec(
    state_dir: &Path,
    workload: Option<&str>,
    namespace: &str,
    instance: u32,
    command: &[String],
) -> anyhow::Result<i32> {
    let state = state::read_state(state_dir)?;
    let env = match workload {
        None => {
            let proxy = format!("http://{}", state.no_mesh_proxy);
            vec![
                ("http_proxy".to_string(), proxy.clone()),
                ("HTTP_PROXY".to_string(), proxy),
                ("no_proxy".to_string(), String::new()),
                ("NO_PROXY".to_string(), String::new()),
            ]
        }
        Some(name) => {
            let target = state
                .instances
                .iter()
                .filter(|i| i.workload == name && i.namespace == namespace)
                .nth(instance as usize)
                .with_context(|| {
                    let known: Vec<&str> = state.instances.iter().map(|i| i.instance.as_str()).collect();
                    format!(
                        "no instance {instance} of workload {namespace}/{name} is running (running: {})",
                        known.join(", ")
                    )
                })?;
            let mut env = target.env.clone();
            env.retain(|(k, _)| {
                !k.eq_ignore_ascii_case("http_proxy") && !k.eq_ignore_ascii_case("no_proxy")
            });
            env.extend(proxy_env(target.address));
            env
        }
    };
    let (program, args) = command.split_first().context("no command given after --")?;
    let status = std::process::Command::new(program)
        .args(args)
        .envs(env)
        .status()
        .with_context(|| format!("running {program}"))?;
    Ok(status.code().unwrap_or(128))
}

/// `wardctl inject -f FILE`: the manifests with Ward's sidecar, on standard output; what was
/// left alone, and why, on standard error.
pub fn inject(file: &Path, options: &ward_inject::InjectOptions) -> anyhow::Result<()> {
    use std::io::Read;
    let (text, name) = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        (text, "<stdin>".to_string())
    } else {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        (text, file.display().to_string())
    };
    let out = ward_inject::inject(&text, &name, options)?;
    print!("{}", out.text);
    for note in &out.notes {
        eprintln!("{note}");
    }
    if out.injected.is_empty() && out.notes.is_empty() {
        eprintln!("{name}: no pod template to inject (or injected already)");
    }
    Ok(())
}

/// Prints one line per proxy, like `istioctl proxy-status`.
pub async fn status(state_dir: &Path) -> anyhow::Result<()> {
    let state = state::read_state(state_dir)?;
    let status = admin_client::get_json(state.xds_admin_address, "/status").await?;
    print!("{}", ward_ads::proxy_status::render_table(&status));
    if let Some(error) = status["config"]["last_error"].as_str() {
        println!("\nconfig: the last reload FAILED; the last good config is serving:\n{error}");
    } else {
        println!(
            "\nconfig: generation {} from {} ({} warnings)",
            status["config"]["generation"],
            status["config"]["path"].as_str().unwrap_or("?"),
            status["config"]["warnings"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0)
        );
    }
    // The wasm filters' health, from each sidecar's own counters: Envoy reloads a VM that
    // failed (a panic), refusing requests until the new one is up.
    let mut failures = Vec::new();
    for instance in &state.instances {
        let address = std::net::SocketAddr::from((instance.address, instance.admin_port));
        let Ok((200, stats)) = admin_client::get(address, "/stats?filter=vm_reload").await else {
            continue;
        };
        // wasm.<plugin>.vm_reload_{success,failure,backoff}
        let mut by_plugin: BTreeMap<&str, [u64; 3]> = BTreeMap::new();
        for (name, value) in stats.lines().filter_map(|l| l.split_once(": ")) {
            let Some((plugin, counter)) = name
                .strip_prefix("wasm.")
                .and_then(|n| n.rsplit_once(".vm_reload_"))
            else {
                continue;
            };
            let slot = match counter {
                "success" => 0,
                "failure" => 1,
                "backoff" => 2,
                _ => continue,
            };
            by_plugin.entry(plugin).or_default()[slot] = value.trim().parse().unwrap_or(0);
        }
        for (plugin, [reloaded, failed, refused]) in by_plugin {
            if reloaded + failed + refused > 0 {
                failures.push(format!(
                    "  {} {plugin}: the VM failed; {} reloads ({reloaded} ok, {failed} failed), {refused} requests refused while it was down",
                    instance.node_id,
                    reloaded + failed
                ));
            }
        }
    }
    if !failures.is_empty() {
        println!(
            "
WASM FAILURES (see `wardctl logs WORKLOAD --only proxy`):"
        );
        for line in failures {
            println!("{line}");
        }
    }
    // RequestAuthentication keys, as xds-server last fetched them.
    if let Some(jwks) = status["jwks"].as_object().filter(|j| !j.is_empty()) {
        println!(
            "
JWKS (jwksUri):"
        );
        for (uri, state) in jwks {
            let keys = state["keys"].as_u64().unwrap_or(0);
            let fetched = match state["fetched_at_unix"].as_u64() {
                Some(_) => format!("{keys} keys"),
                None => "never fetched: its tokens are refused".to_string(),
            };
            match state["last_error"].as_str() {
                Some(error) => println!("  {uri}: {fetched}; last fetch FAILED: {error}"),
                None => println!("  {uri}: {fetched}"),
            }
        }
    }
    Ok(())
}

pub fn logs(state_dir: &Path, workload: &str, kind: LogKind) -> anyhow::Result<()> {
    let dir = state::logs_dir(state_dir);
    let files: Vec<PathBuf> = if workload == "xds-server" {
        vec![dir.join("xds-server.log")]
    } else {
        let state = state::read_state(state_dir)?;
        let instances: Vec<_> = state
            .instances
            .iter()
            .filter(|i| i.workload == workload)
            .collect();
        if instances.is_empty() {
            bail!("no workload named {workload} is running");
        }
        instances
            .iter()
            .flat_map(|i| {
                let mut files = Vec::new();
                if kind != LogKind::App {
                    files.push(state::envoy_log(state_dir, &i.node_id));
                }
                if kind != LogKind::Proxy {
                    files.push(state::app_log(state_dir, &i.node_id));
                }
                files
            })
            .collect()
    };
    for file in files.iter().filter(|f| f.exists()) {
        println!("==> {} <==", file.display());
        print!("{}", std::fs::read_to_string(file)?);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogKind {
    All,
    Proxy,
    App,
}

/// `kubectl apply -f`: validates `file` together with the running config and writes it into
/// the config directory, where the watchers pick it up. An object it names (kind, namespace,
/// name) that another file defines is taken out of that file: the applied one replaces it.
/// An invalid result is refused and nothing changes.
pub async fn apply(state_dir: &Path, file: &Path) -> anyhow::Result<()> {
    let state = state::read_state(state_dir)?;
    let before = config_generation(state.xds_admin_address).await;
    let name = file
        .file_name()
        .with_context(|| format!("{} is not a file", file.display()))?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let applied_name = file.display().to_string();
    let applied = objects::split(&applied_name, &text)?;
    let target = state.config_dir.join(name);
    let existing = objects::read_dir(&state.config_dir)?;
    let changes = objects::apply_changes(&existing, &target, &text, &applied);
    // Validate what will be written, the target under the applied file's name so messages
    // point at the file the user gave (its documents come first in the target, so lines
    // match).
    let target_name = target.display().to_string();
    let mut sources: Vec<(String, String)> = objects::sources_after(&existing, &changes)
        .into_iter()
        .map(|(f, t)| {
            if f == target_name {
                (applied_name.clone(), t)
            } else {
                (f, t)
            }
        })
        .collect();
    sources.sort();
    let loaded = match ward_config::load_sources(&sources) {
        Ok(loaded) => loaded,
        Err(e) => bail!("{} not applied:\n{e}", file.display()),
    };
    // Like `kubectl apply`: warnings about the applied file go to the user, not only the log.
    for warning in loaded.warnings.iter().filter(|w| w.file == applied_name) {
        eprintln!("warning: {warning}");
    }
    write_changes(&changes)?;
    for document in &applied {
        if let Some(key) = &document.key {
            let replaced = existing.iter().any(|(path, documents)| {
                path != &target && documents.iter().any(|d| d.key.as_ref() == Some(key))
            });
            println!("{key} {}", if replaced { "configured" } else { "applied" });
        }
    }
    println!("{} applied to {}", file.display(), target.display());
    wait_for_generation_after(state.xds_admin_address, before).await
}

/// Writes each file through a temporary one, so the watcher never reads half a file.
fn write_changes(changes: &[objects::FileChange]) -> anyhow::Result<()> {
    for change in changes {
        match change {
            objects::FileChange::Write(path, text) => {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                let tmp = path.with_file_name(format!(".{name}.tmp"));
                std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
                std::fs::rename(&tmp, path)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            objects::FileChange::Remove(path) => std::fs::remove_file(path)
                .with_context(|| format!("removing {}", path.display()))?,
        }
    }
    Ok(())
}

/// `kubectl delete -f`: removes every object `file` names from the config directory,
/// wherever it is defined, once the config without them is valid. Objects found nowhere are
/// reported (and make the command fail) after the others are deleted.
pub async fn delete(state_dir: &Path, file: &Path) -> anyhow::Result<()> {
    let state = state::read_state(state_dir)?;
    let before = config_generation(state.xds_admin_address).await;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let deleted = objects::split(&file.display().to_string(), &text)?;
    let existing = objects::read_dir(&state.config_dir)?;
    let (changes, missing) = objects::delete_changes(&existing, &deleted);
    if !changes.is_empty() {
        let sources = objects::sources_after(&existing, &changes);
        if let Err(e) = ward_config::load_sources(&sources) {
            bail!(
                "{} not deleted: the config without it is invalid:\n{e}",
                file.display()
            );
        }
        write_changes(&changes)?;
        for key in deleted.iter().filter_map(|d| d.key.as_ref()) {
            if !missing.contains(key) {
                println!("{key} deleted");
            }
        }
    }
    for key in &missing {
        eprintln!(
            "Error: {key} not found in the running config ({})",
            state.config_dir.display()
        );
    }
    if changes.is_empty() {
        bail!("nothing deleted");
    }
    wait_for_generation_after(state.xds_admin_address, before).await?;
    if !missing.is_empty() {
        bail!("{} object(s) not found", missing.len());
    }
    Ok(())
}

/// `kubectl get KIND [NAME] [-n NS | -A] [-o yaml]`: the objects of the running config, with
/// the file and line each is defined at.
pub fn get(
    state_dir: &Path,
    kind: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    yaml: bool,
) -> anyhow::Result<()> {
    let state = state::read_state(state_dir)?;
    let kind = objects::kind_named(kind)
        .with_context(|| format!("the server doesn't have a resource type \"{kind}\""))?;
    let existing = objects::read_dir(&state.config_dir)?;
    let mut found = Vec::new();
    for (path, documents) in &existing {
        for document in documents {
            let Some(key) = &document.key else { continue };
            let namespace_ok =
                namespace.is_none_or(|ns| key.namespace.as_deref().is_none_or(|k| k == ns));
            if key.kind == kind && name.is_none_or(|n| n == key.name) && namespace_ok {
                found.push((key, path, document));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(b.0));
    if found.is_empty() {
        match name {
            Some(name) => bail!("{} \"{name}\" not found", kind.to_ascii_lowercase()),
            None => {
                eprintln!("No resources found.");
                return Ok(());
            }
        }
    }
    if yaml {
        let documents: Vec<objects::Document> =
            found.iter().map(|(_, _, d)| (*d).clone()).collect();
        print!("{}", objects::join(&documents));
        return Ok(());
    }
    let rows: Vec<[String; 3]> = found
        .iter()
        .map(|(key, path, document)| {
            let file = path
                .strip_prefix(&state.config_dir)
                .unwrap_or(path)
                .display()
                .to_string();
            [
                key.namespace.clone().unwrap_or_default(),
                key.name.clone(),
                format!("{file}:{}", document.line),
            ]
        })
        .collect();
    let width = |i: usize, title: &str| {
        rows.iter()
            .map(|r| r[i].len())
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let (ns_width, name_width) = (width(0, "NAMESPACE"), width(1, "NAME"));
    println!("{:ns_width$}   {:name_width$}   FILE", "NAMESPACE", "NAME");
    for [ns, name, file] in rows {
        println!("{ns:ns_width$}   {name:name_width$}   {file}");
    }
    Ok(())
}

async fn config_generation(admin: SocketAddr) -> Option<u64> {
    admin_client::get_json(admin, "/status")
        .await
        .ok()
        .and_then(|s| s["config"]["generation"].as_u64())
}

/// Like `istioctl x wait`: returns once a config generation after `before` is serving, so
/// the next command sees it.
async fn wait_for_generation_after(admin: SocketAddr, before: Option<u64>) -> anyhow::Result<()> {
    let Some(before) = before else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = admin_client::get_json(admin, "/status").await?;
        if status["config"]["generation"]
            .as_u64()
            .is_some_and(|g| g > before)
        {
            break;
        }
        if let Some(error) = status["config"]["last_error"].as_str() {
            bail!("xds-server refused the new config (the last good one keeps serving):\n{error}");
        }
        if Instant::now() > deadline {
            bail!(
                "xds-server did not load the new config within 10 s; see `wardctl logs xds-server`"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_synced(admin, Duration::from_secs(10)).await?;
    println!("every proxy has the new config");
    Ok(())
}

/// Waits until xds-server has loaded a new config generation and every proxy is SYNCED.
pub async fn wait_synced(admin: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let status = admin_client::get_json(admin, "/status").await?;
        let synced = ward_ads::proxy_status::synced_node_ids(&status);
        let expected: Vec<String> = status["config"]["expected_nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if expected.iter().all(|n| synced.contains(n)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("proxies not synced after {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
