//! Helpers for end-to-end tests that drive the real `wardctl`, `xds-server` and Envoy
//! processes. A [`LocalMesh`] is one `wardctl up --detach` in a private state directory, on a
//! private copy of a config directory (so tests can edit it), torn down with `wardctl down`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Meshes of one test binary share loopback addresses derived from their config: one at a time.
static ONE_MESH_AT_A_TIME: Mutex<()> = Mutex::new(());

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// A built binary of the workspace (`scripts/test.sh` builds them before the tests run).
pub fn binary(name: &str) -> PathBuf {
    let path = target_dir().join("debug").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup.sh (or cargo build -p xds-server --bins) first",
        path.display()
    );
    path
}

pub fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(path);
    }
    let path = workspace_root().join(".ward-tools/envoy/envoy/_bin/envoy");
    assert!(
        path.is_file(),
        "Envoy missing: run scripts/setup.sh or set ENVOY_BIN"
    );
    path
}

pub fn wasm_module() -> PathBuf {
    let path = target_dir().join("wasm32-wasip1/release/wasm_authz.wasm");
    assert!(
        path.is_file(),
        "wasm-authz module missing: run scripts/setup.sh"
    );
    path
}

/// A module that panics on `x-ward-fault: panic` (wasm-authz's `fault_module` example), for
/// the fail-closed test.
pub fn fault_module() -> PathBuf {
    let path = target_dir().join("wasm32-wasip1/release/examples/fault_module.wasm");
    assert!(
        path.is_file(),
        "the fault module is missing: run scripts/setup.sh"
    );
    path
}

/// Runs `command` to its end; panics with its standard error unless it succeeds.
pub fn run_ok(command: &mut Command) -> Output {
    let out = command.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A loopback port for a server another process binds (below the ephemeral range, so no
/// outgoing connection takes it in the meantime).
pub fn free_port() -> u16 {
    wardctl::loopback_port::unused_loopback_port().expect("a free loopback port")
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// curl arguments of the exam lab's POST (seed 000, section 4.2), as a student submits it.
pub const POST_EXAM: &[&str] = &[
    "-X",
    "POST",
    "exam-scheduler",
    "-H",
    "Content-Type: application/json",
    "-d",
    r#"{"matricola": "s123456", "exam": "NCS"}"#,
];

pub struct LocalMesh {
    pub root: PathBuf,
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    pub xds_admin: String,
    pub up_output: String,
    _guard: MutexGuard<'static, ()>,
}

impl LocalMesh {
    /// `wardctl up --detach` on a copy of `config` (relative to the workspace root).
    pub fn up(config: &str) -> anyhow::Result<LocalMesh> {
        Self::up_with(config, &[])
    }

    pub fn up_with(config: &str, extra_args: &[&str]) -> anyhow::Result<LocalMesh> {
        let guard = ONE_MESH_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let root =
            std::env::temp_dir().join(format!("ward-e2e-{}-{}", std::process::id(), free_port()));
        let config_dir = root.join("config");
        let state_dir = root.join("state");
        copy_dir(&workspace_root().join(config), &config_dir)?;
        let xds_admin = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = vec![
            "up".into(),
            config_dir.display().to_string(),
            "--detach".into(),
            "--envoy".into(),
            envoy_binary().display().to_string(),
            "--xds-address".into(),
            format!("127.0.0.1:{}", free_port()),
            "--xds-admin-address".into(),
            xds_admin.clone(),
            "--no-mesh-address".into(),
            format!("127.0.0.1:{}", free_port()),
        ];
        if !extra_args.contains(&"--wasm") {
            args.extend(["--wasm".into(), wasm_module().display().to_string()]);
        }
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let mut mesh = LocalMesh {
            root,
            config_dir,
            state_dir,
            xds_admin,
            up_output: String::new(),
            _guard: guard,
        };
        let output = mesh.wardctl(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        mesh.up_output = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            bail!("wardctl up failed:\n{}", mesh.up_output);
        }
        Ok(mesh)
    }

    pub fn wardctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        Command::new(binary("wardctl"))
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args)
            .output()
            .with_context(|| format!("running wardctl {}", args.join(" ")))
    }

    /// `wardctl exec WORKLOAD -- curl -s -w '\n%{http_code}' ARGS...`: (status, body).
    pub fn curl_from(
        &self,
        workload: Option<&str>,
        curl_args: &[&str],
    ) -> anyhow::Result<(u16, String)> {
        self.curl_from_in(workload, "default", curl_args)
    }

    /// [`LocalMesh::curl_from`] for a workload in `namespace`.
    pub fn curl_from_in(
        &self,
        workload: Option<&str>,
        namespace: &str,
        curl_args: &[&str],
    ) -> anyhow::Result<(u16, String)> {
        let mut args = vec!["exec"];
        match workload {
            Some(w) => args.extend([w, "-n", namespace]),
            None => args.push("--no-mesh"),
        }
        args.extend(["--", "curl", "-s", "-m", "10", "-w", "\n%{http_code}"]);
        args.extend(curl_args);
        let output = self.wardctl(&args)?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
        let code: u16 = code.trim().parse().with_context(|| {
            format!(
                "no status from curl (exit {:?}): {stdout}{}",
                output.status.code(),
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
        Ok((code, body.to_string()))
    }

    /// `wardctl exec --no-mesh -- curl -s -m 5 HOST`: (curl exit code, body).
    pub fn no_mesh_get(&self, host: &str) -> (i32, String) {
        let out = self
            .wardctl(&["exec", "--no-mesh", "--", "curl", "-s", "-m", "5", host])
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    pub fn status_json(&self) -> anyhow::Result<serde_json::Value> {
        let output = Command::new("curl")
            .args([
                "-s",
                "-m",
                "5",
                &format!("http://{}/status", self.xds_admin),
            ])
            .output()?;
        serde_json::from_slice(&output.stdout).context("xds-server /status is not JSON")
    }

    pub fn metrics(&self) -> anyhow::Result<String> {
        let output = Command::new("curl")
            .args([
                "-s",
                "-m",
                "5",
                &format!("http://{}/metrics", self.xds_admin),
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Polls `check` until it returns Ok or `limit` passes; returns the last error.
    pub fn eventually<T>(
        &self,
        limit: Duration,
        check: impl FnMut() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        eventually(limit, check)
    }

    /// Waits (up to 20 s) until `workload`'s curl of `url` through its sidecar answers 200;
    /// returns that body.
    pub fn wait_for_200(&self, workload: &str, url: &str) -> String {
        self.eventually(Duration::from_secs(20), || {
            let (code, body) = self.curl_from(Some(workload), &[url])?;
            anyhow::ensure!(code == 200, "{url} answered {workload} {code}: {body}");
            Ok(body)
        })
        .unwrap()
    }

    /// Starts another Envoy with a sidecar's bootstrap (`bootstrap/<node>.json`) changed by
    /// `edit`, its admin on a port of its own: (the process, its admin port).
    pub fn start_edited_sidecar(
        &self,
        node: &str,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> (std::process::Child, u16) {
        let path = self.state_dir.join(format!("bootstrap/{node}.json"));
        let mut bootstrap: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut bootstrap);
        let admin_port = free_port();
        bootstrap["admin"]["address"]["socket_address"] =
            serde_json::json!({"address": "127.0.0.1", "port_value": admin_port});
        bootstrap["cluster_manager"] = serde_json::json!({});
        let edited = self.root.join(format!("edited-{admin_port}.json"));
        std::fs::write(&edited, bootstrap.to_string()).unwrap();
        let child = Command::new(envoy_binary())
            .args(["-c", edited.to_str().unwrap()])
            .args(["--base-id", &admin_port.to_string(), "-l", "warning"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        (child, admin_port)
    }

    /// `wardctl apply -f` of `text` written to `name` under the mesh's scratch directory;
    /// panics unless it is applied. Returns what apply printed (warnings go to stderr).
    pub fn apply(&self, name: &str, text: &str) -> String {
        let path = self.root.join(name);
        std::fs::write(&path, text).unwrap();
        let out = self
            .wardctl(&["apply", "-f", path.to_str().unwrap()])
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "apply {name}: {printed}");
        printed
    }

    /// The runner's state of the first instance of `workload` (addresses, ports, pids).
    pub fn instance(&self, workload: &str) -> serde_json::Value {
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.state_dir.join("state.json")).unwrap())
                .unwrap();
        state["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["workload"] == workload)
            .unwrap_or_else(|| panic!("no instance of {workload}"))
            .clone()
    }

    /// A stat of `workload`'s first sidecar, from its Envoy admin `/stats`; None if Envoy
    /// has no stat of that name.
    pub fn envoy_stat(&self, workload: &str, name: &str) -> Option<u64> {
        let instance = self.instance(workload);
        let url = format!(
            "http://{}:{}/stats?filter=^{name}$",
            instance["address"].as_str().unwrap(),
            instance["admin_port"]
        );
        let out = Command::new("curl").args(["-s", &url]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Every pid the runner's state file names: the supervisor, each Envoy, each app.
    pub fn runner_pids(&self) -> Vec<u32> {
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.state_dir.join("state.json")).unwrap())
                .unwrap();
        let mut pids = vec![state["supervisor_pid"].as_u64().unwrap() as u32];
        for instance in state["instances"].as_array().unwrap() {
            for key in ["envoy_pid", "app_pid"] {
                pids.extend(instance[key].as_u64().map(|p| p as u32));
            }
        }
        pids
    }

    /// The address of the first instance of `workload` (its sidecar's inbound address).
    pub fn instance_address(&self, workload: &str) -> std::net::Ipv4Addr {
        self.instance(workload)["address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn write_config(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let tmp = self.config_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.config_dir.join(name))?;
        Ok(())
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.state_dir.join("logs").join(name)).unwrap_or_default()
    }
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        let _ = self.wardctl(&["down"]);
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        } else {
            eprintln!("mesh state and logs kept in {}", self.root.display());
        }
    }
}

/// Sends `request` as written, byte for byte, to `address` and reads the response: (status,
/// body); status None when the connection closed without one.
pub fn raw_http(address: &str, request: &[u8]) -> (Option<u16>, String) {
    // A listener Envoy just added may take a moment to accept.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect(address) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() > deadline => panic!("connecting to {address}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read to the end of the body (Content-Length), not to the close: Envoy waits a second
    // for the client to close first.
    loop {
        let text = String::from_utf8_lossy(&response).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            });
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Pids of processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// True once `pid` no longer runs: `/proc/<pid>` is gone, or only its zombie is left for
/// init to reap.
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // `pid (comm) S ...`: the state follows the last `)` (comm may hold one).
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Retries `check` until it succeeds or `limit` passes (then its last error).
pub fn eventually<T>(
    limit: Duration,
    mut check: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A kubeconfig at `path` for the API server at `address` (`host:port`, plain http).
pub fn write_kubeconfig(path: &Path, address: &str) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{address}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
        ),
    )
    .unwrap();
}

/// What the stand-in API server of [`fake_api_server`] was asked to write.
pub type Patches = std::sync::Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// A Kubernetes API server at the HTTP level (none can run on these machines): it has the
/// `namespaces` and no other objects, watches stay open with no events, other API groups
/// answer 404, TokenReviews authenticate the `tokens` given as (token, username) for the
/// audiences asked (a token starting `other-audience-` is answered, as by an authenticator
/// that ignores the audiences asked, for the API server's own audience only), the sidecar
/// injector's MutatingWebhookConfiguration (two webhooks)
/// is there, and PATCHes are recorded and answered. Returns `host:port` and the patches.
pub fn fake_api_server(tokens: Vec<(String, String)>, namespaces: &[&str]) -> (String, Patches) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let patches: Patches = Default::default();
    let recorded = patches.clone();
    let tokens = std::sync::Arc::new(tokens);
    let namespaces: std::sync::Arc<Vec<serde_json::Value>> = std::sync::Arc::new(
        namespaces
            .iter()
            .map(|n| {
                serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": n, "resourceVersion": "1"}})
            })
            .collect(),
    );
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (tokens, namespaces, recorded) =
                (tokens.clone(), namespaces.clone(), recorded.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                let reply = |stream: &mut std::net::TcpStream, status: &str, body: &str| {
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                };
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0;
                    let mut line = String::new();
                    while reader.read_line(&mut line).unwrap_or(0) > 2 {
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        line.clear();
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let target = request_line.split(' ').nth(1).unwrap_or("/").to_string();
                    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                    let webhook = serde_json::json!({
                        "apiVersion": "admissionregistration.k8s.io/v1",
                        "kind": "MutatingWebhookConfiguration",
                        "metadata": {"name": "ward-sidecar-injector", "resourceVersion": "1"},
                        "webhooks": ([0, 1].map(|i| serde_json::json!({
                            "name": format!("w{i}.sidecar-injector.ward.dev"),
                            "admissionReviewVersions": ["v1"], "sideEffects": "None",
                            "clientConfig": {"service": {"name": "xds-server", "namespace": "ward-system"}}})))
                    });
                    let webhook_path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/ward-sidecar-injector";
                    if request_line.starts_with("PATCH ") {
                        let mut object: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        recorded
                            .lock()
                            .unwrap()
                            .push((path.to_string(), object.clone()));
                        if object.is_array() {
                            // A JSON Patch: answer the object (unpatched, it is not kept).
                            object = webhook.clone();
                        }
                        object["metadata"]["resourceVersion"] = "2".into();
                        reply(&mut stream, "200 OK", &object.to_string());
                    } else if path == webhook_path {
                        reply(&mut stream, "200 OK", &webhook.to_string());
                    } else if path == "/apis/authentication.k8s.io/v1/tokenreviews" {
                        let review: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        let token = review["spec"]["token"].as_str().unwrap_or("");
                        let status = match tokens.iter().find(|(t, _)| t == token) {
                            Some((_, user)) => {
                                let audiences = if token.starts_with("other-audience-") {
                                    serde_json::json!([
                                        "https://kubernetes.default.svc.cluster.local"
                                    ])
                                } else {
                                    review["spec"]["audiences"].clone()
                                };
                                serde_json::json!({"authenticated": true,
                                    "user": {"username": user}, "audiences": audiences})
                            }
                            None => serde_json::json!({"authenticated": false,
                                "error": "invalid bearer token"}),
                        };
                        let mut answer = review.clone();
                        answer["status"] = status;
                        reply(&mut stream, "201 Created", &answer.to_string());
                    } else if !path.starts_with("/api/v1/") {
                        reply(
                            &mut stream,
                            "404 Not Found",
                            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#,
                        );
                    } else if query.contains("watch=true") || query.contains("watch=1") {
                        // A watch with no events: headers, then silence.
                        let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
                        let _ = stream.flush();
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                        return;
                    } else {
                        let items: &[serde_json::Value] = if path == "/api/v1/namespaces" {
                            &namespaces
                        } else {
                            &[]
                        };
                        let list = serde_json::json!({"kind": "List", "apiVersion": "v1",
                            "metadata": {"resourceVersion": "1"}, "items": items});
                        reply(&mut stream, "200 OK", &list.to_string());
                    }
                }
            });
        }
    });
    (address, patches)
}
