//! End to end through real Envoy: the exam lab on `wardctl up`, replicas, hot reload, invalid
//! edits, NACKs, an xds-server crash, and `wardctl down` leaving nothing behind.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ward_e2e::{process_gone, processes_mentioning, LocalMesh, POST_EXAM};

fn proxy_states(mesh: &LocalMesh) -> anyhow::Result<Vec<(String, bool)>> {
    let status = mesh.status_json()?;
    Ok(status["proxies"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no proxies in {status}"))?
        .iter()
        .map(|p| {
            (
                p["node_id"].as_str().unwrap_or_default().to_string(),
                p["synced"].as_bool().unwrap_or(false),
            )
        })
        .collect())
}

#[test]
fn exam_lab_post_then_get_through_both_sidecars() {
    let mesh = LocalMesh::up("config/exam-lab").expect("mesh up");
    assert!(mesh
        .up_output
        .contains("spiffe://cluster.local/ns/default/sa/exam-scheduler-sa"));

    let (code, body) = mesh.curl_from(Some("student-portal"), POST_EXAM).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        "✅ Exam received: {'matricola': 's123456', 'exam': 'NCS'}"
    );

    let (code, body) = mesh
        .curl_from(Some("professor-tools"), &["http://exam-scheduler"])
        .unwrap();
    assert_eq!(code, 200);
    assert_eq!(body, r#"{"exams":[{"exam":"NCS","matricola":"s123456"}]}"#);

    // Every other name Kubernetes DNS would resolve works too, with and without the port.
    for host in [
        "exam-scheduler:80",
        "exam-scheduler.default",
        "exam-scheduler.default:80",
        "exam-scheduler.default.svc",
        "exam-scheduler.default.svc.cluster.local",
        "exam-scheduler.default.svc.cluster.local:80",
    ] {
        let (code, _) = mesh.curl_from(Some("professor-tools"), &[host]).unwrap();
        assert_eq!(code, 200, "{host}");
    }

    // The request crossed the client's sidecar (outbound) and the server's sidecar (inbound),
    // and the server's sidecar ran the wasm-authz module.
    let (code, headers) = mesh
        .curl_from(
            Some("professor-tools"),
            &["-D", "-", "-o", "/dev/null", "exam-scheduler"],
        )
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("x-ward-wasm: exam-scheduler.default"),
        "{headers}"
    );
    mesh.eventually(Duration::from_secs(5), || {
        let client = mesh.log("professor-tools-0.default.envoy.log");
        let server = mesh.log("exam-scheduler-0.default.envoy.log");
        anyhow::ensure!(
            client.contains("outbound \"GET / HTTP/1.1\" 200"),
            "client log: {client}"
        );
        anyhow::ensure!(
            server.contains("inbound \"GET / HTTP/1.1\" 200"),
            "server log: {server}"
        );
        anyhow::ensure!(
            server.contains("cluster=inbound|8080||"),
            "server log: {server}"
        );
        Ok(())
    })
    .unwrap();

    // `wardctl logs`: the sidecar's access log line of a request just made, the app's output.
    let probe = format!("/?probe={}", std::process::id());
    mesh.curl_from(
        Some("professor-tools"),
        &[&format!("http://exam-scheduler{probe}")],
    )
    .unwrap();
    let access_line = format!("inbound \"GET {probe} HTTP/1.1\"");
    let logs = |args: &[&str]| {
        let out = mesh
            .wardctl(&[&["logs", "exam-scheduler"], args].concat())
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let all = mesh
        .eventually(Duration::from_secs(5), || {
            let all = logs(&[]);
            anyhow::ensure!(all.contains(&access_line), "{all}");
            Ok(all)
        })
        .unwrap();
    assert!(all.contains("stand-in listening"), "{all}");
    let app = logs(&["--only", "app"]);
    assert!(app.contains("stand-in listening"), "{app}");
    assert!(!app.contains(&access_line), "{app}");
    let proxy = logs(&["--only", "proxy"]);
    assert!(proxy.contains(&access_line), "{proxy}");
    assert!(!proxy.contains("stand-in listening"), "{proxy}");

    // A pod without a sidecar reaches the destination's sidecar directly (no PeerAuthentication yet).
    let (code, body) = mesh.curl_from(None, &["exam-scheduler"]).unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("s123456"));

    // A host no Service answers to is refused by the client's sidecar, not hung.
    let (code, body) = mesh
        .curl_from(Some("student-portal"), &["http://payroll"])
        .unwrap();
    assert_eq!(code, 404);
    assert!(body.contains("no service in the mesh"), "{body}");

    // Exit status is the command's.
    let status = mesh
        .wardctl(&["exec", "student-portal", "--", "sh", "-c", "exit 7"])
        .unwrap()
        .status;
    assert_eq!(status.code(), Some(7));

    let states = proxy_states(&mesh).unwrap();
    assert_eq!(states.len(), 3, "{states:?}");
    assert!(states.iter().all(|(_, synced)| *synced), "{states:?}");
    let status_table = mesh.wardctl(&["status"]).unwrap();
    let table = String::from_utf8_lossy(&status_table.stdout);
    // Every type, the wasm filters' configuration (ECDS) included, is SYNCED.
    let line = table
        .lines()
        .find(|l| l.starts_with("exam-scheduler-0.default"))
        .unwrap_or_else(|| panic!("{table}"));
    assert_eq!(line.matches("SYNCED").count(), 6, "{table}");

    // `down` leaves no process behind: none the runner started (supervisor, Envoys, apps,
    // whatever their command lines say), and none naming the mesh's directories (xds-server).
    let state_dir = mesh.state_dir.display().to_string();
    let config_dir = mesh.config_dir.display().to_string();
    assert!(!processes_mentioning(&state_dir).is_empty());
    let started = mesh.runner_pids();
    // The supervisor, 3 Envoys, and exam-scheduler's app (the two others are curl pods).
    assert_eq!(started.len(), 5, "{started:?}");
    assert!(started.iter().all(|p| !process_gone(*p)), "{started:?}");
    let down = mesh.wardctl(&["down"]).unwrap();
    assert!(down.status.success());
    let running: Vec<u32> = started.into_iter().filter(|p| !process_gone(*p)).collect();
    assert!(
        running.is_empty(),
        "started by the runner, left after down: {running:?}"
    );
    let left: Vec<u32> = processes_mentioning(&state_dir)
        .into_iter()
        .chain(processes_mentioning(&config_dir))
        .collect();
    assert!(left.is_empty(), "processes left after down: {left:?}");
}

/// A `ward.dev/local-command` app whose shell leaves a background child, and writes its pid.
fn local_command_yaml(wardctl: &std::path::Path, child_pid_file: &std::path::Path) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: local-echo
spec:
  replicas: 1
  selector:
    matchLabels: {{app: local-echo}}
  template:
    metadata:
      labels: {{app: local-echo}}
      annotations:
        ward.dev/local-command: "sleep 1000 & echo $! > {pid_file}; exec {wardctl} app --image hashicorp/http-echo --listen $HOST:$PORT -- -text=local"
    spec:
      containers:
      - name: local-echo
        image: example.com/local-echo:dev
        ports:
        - containerPort: 5678
---
apiVersion: v1
kind: Service
metadata:
  name: local-echo
spec:
  selector: {{app: local-echo}}
  ports:
  - port: 80
    targetPort: 5678
"#,
        pid_file = child_pid_file.display(),
        wardctl = wardctl.display(),
    )
}

/// Process group of `pid` (field 5 of /proc/<pid>/stat).
fn process_group_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn down_stops_what_a_local_command_started() {
    let mesh = LocalMesh::up("config/exam-lab").expect("mesh up");
    let child_pid_file = mesh.root.join("child.pid");
    mesh.write_config(
        "local-echo.yaml",
        &local_command_yaml(&ward_e2e::binary("wardctl"), &child_pid_file),
    )
    .unwrap();
    let body = mesh.wait_for_200("professor-tools", "http://local-echo");
    assert_eq!(body.trim(), "local");
    let app = mesh.instance("local-echo")["app_pid"].as_u64().unwrap() as u32;
    assert!(
        mesh.instance("local-echo")["app"]
            .as_str()
            .unwrap()
            .starts_with("local command: sleep 1000 &"),
        "{}",
        mesh.instance("local-echo")
    );
    let child: u32 = std::fs::read_to_string(&child_pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!process_gone(child) && !process_gone(app));
    // The command leads a process group of its own, and its child is in it.
    assert_eq!(process_group_of(app), app);
    assert_eq!(process_group_of(child), app);

    let started = mesh.runner_pids();
    assert!(started.contains(&app), "{started:?}");
    let down = mesh.wardctl(&["down"]).unwrap();
    assert!(down.status.success());
    let running: Vec<u32> = started
        .into_iter()
        .chain([child])
        .filter(|p| !process_gone(*p))
        .collect();
    assert!(running.is_empty(), "left after down: {running:?}");
}

#[test]
fn replicas_are_load_balanced() {
    let mesh = LocalMesh::up("config/aura-lab").expect("mesh up");
    let mut served_by = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (code, headers) = mesh
            .curl_from(
                Some("web-frontend"),
                &["-D", "-", "-o", "/dev/null", "http://aura-api/healthz"],
            )
            .unwrap();
        assert_eq!(code, 200);
        let line = headers
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("x-served-by:"))
            .expect("x-served-by header")
            .to_string();
        served_by.insert(line);
    }
    assert_eq!(served_by.len(), 3, "{served_by:?}");
}

const ECHO_YAML: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: greeter
spec:
  replicas: 1
  selector:
    matchLabels: {app: greeter}
  template:
    metadata:
      labels: {app: greeter}
    spec:
      containers:
      - name: greeter
        image: hashicorp/http-echo
        args: ["-text=hello from greeter"]
        ports:
        - containerPort: 5678
---
apiVersion: v1
kind: Service
metadata:
  name: greeter
spec:
  selector: {app: greeter}
  ports:
  - port: 80
    targetPort: 5678
"#;

/// Steady GETs professor-tools → exam-scheduler in the background; counts failures.
struct BackgroundLoad {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundLoad {
    fn start(mesh: &LocalMesh) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(0));
        let total = Arc::new(AtomicUsize::new(0));
        let wardctl = ward_e2e::binary("wardctl");
        let state_dir = mesh.state_dir.clone();
        let (s, f, t) = (stop.clone(), failures.clone(), total.clone());
        // One curl process sends many requests in a loop, through the sidecar.
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let output = std::process::Command::new(&wardctl)
                    .arg("--state-dir")
                    .arg(&state_dir)
                    .args([
                        "exec",
                        "professor-tools",
                        "--",
                        "curl",
                        "-s",
                        "-m",
                        "5",
                        "-w",
                        "%{http_code}\\n",
                    ])
                    .args(
                        std::iter::repeat_n(["-o", "/dev/null", "http://exam-scheduler"], 20)
                            .flatten(),
                    )
                    .output()
                    .expect("curl");
                for line in String::from_utf8_lossy(&output.stdout).lines() {
                    t.fetch_add(1, Ordering::Relaxed);
                    if line.trim() != "200" {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        BackgroundLoad {
            stop,
            failures,
            total,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        (
            self.total.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn hot_reload_adds_and_removes_services_without_failing_other_traffic() {
    let mesh = LocalMesh::up("config/exam-lab").expect("mesh up");
    let load = BackgroundLoad::start(&mesh);
    std::thread::sleep(Duration::from_millis(500));

    // Add a service: it becomes reachable from an existing workload.
    mesh.write_config("greeter.yaml", ECHO_YAML).unwrap();
    let body = mesh.wait_for_200("student-portal", "http://greeter");
    assert_eq!(body.trim(), "hello from greeter");

    // Remove one: its name stops resolving in the mesh, its processes are stopped.
    std::fs::remove_file(mesh.config_dir.join("student-portal.yaml")).unwrap();
    mesh.eventually(Duration::from_secs(20), || {
        let (code, _) = mesh.curl_from(Some("professor-tools"), &["http://student-portal"])?;
        anyhow::ensure!(code == 404, "student-portal still routed ({code})");
        let states = proxy_states(&mesh)?;
        anyhow::ensure!(
            !states.iter().any(|(n, _)| n.starts_with("student-portal")),
            "student-portal proxy still connected: {states:?}"
        );
        Ok(())
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let (total, failures) = load.finish();
    assert!(total > 20, "too little background traffic: {total}");
    assert_eq!(
        failures, 0,
        "{failures} of {total} unaffected requests failed during reloads"
    );
}

#[test]
fn invalid_edit_is_reported_and_last_good_config_keeps_serving() {
    let mesh = LocalMesh::up("config/exam-lab").expect("mesh up");
    mesh.write_config(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n  name: y\n",
    )
    .unwrap();
    let error = mesh
        .eventually(Duration::from_secs(10), || {
            let status = mesh.status_json()?;
            status["config"]["last_error"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("no reload error yet: {status}"))
        })
        .unwrap();
    assert!(error.contains("broken.yaml:5"), "{error}");
    assert!(error.contains("duplicate key"), "{error}");

    let (code, _) = mesh
        .curl_from(Some("professor-tools"), &["exam-scheduler"])
        .unwrap();
    assert_eq!(code, 200);
    let status = String::from_utf8_lossy(&mesh.wardctl(&["status"]).unwrap().stdout).into_owned();
    assert!(
        status.contains("FAILED") && status.contains("broken.yaml:5"),
        "{status}"
    );
    assert!(mesh
        .metrics()
        .unwrap()
        .contains("ward_config_reloads_total{result=\"error\"}"));

    // `wardctl apply` refuses an invalid file outright and names its line.
    let bad = mesh.root.join("bad-service.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: Service\nmetadata:\n  name: z\nspec:\n  selector: {app: nobody}\n  ports:\n  - port: 80\n").unwrap();
    let applied = mesh
        .wardctl(&["apply", "-f", bad.to_str().unwrap()])
        .unwrap();
    assert!(!applied.status.success());
    let stderr = String::from_utf8_lossy(&applied.stderr);
    assert!(stderr.contains("bad-service.yaml:6"), "{stderr}");
    assert!(!mesh.config_dir.join("bad-service.yaml").exists());

    // Fixing the edit clears the error.
    std::fs::remove_file(mesh.config_dir.join("broken.yaml")).unwrap();
    mesh.eventually(Duration::from_secs(10), || {
        let status = mesh.status_json()?;
        anyhow::ensure!(status["config"]["last_error"].is_null(), "{status}");
        Ok(())
    })
    .unwrap();
}

#[test]
fn bad_config_at_startup_names_file_line_and_field() {
    let dir = std::env::temp_dir().join(format!("ward-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("app.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: a\nspec:\n  replicas: many\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: a}}\n    spec:\n      containers: [{name: a, image: hashicorp/http-echo}]\n",
    )
    .unwrap();
    let output = std::process::Command::new(ward_e2e::binary("wardctl"))
        .args([
            "--state-dir",
            dir.join("state").to_str().unwrap(),
            "up",
            dir.to_str().unwrap(),
            "--detach",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("app.yaml:6:"), "{stderr}");
    assert!(stderr.contains("spec.replicas"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_image_without_a_stand_in_names_file_line_field_and_the_annotation() {
    let dir = std::env::temp_dir().join(format!("ward-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = ECHO_YAML.replace(
        "image: hashicorp/http-echo",
        "image: example.com/mystery:1.0",
    );
    std::fs::write(dir.join("mystery.yaml"), &text).unwrap();
    // Where the value is written, 1-based, as config errors count.
    let (line, column) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("example.com/mystery").map(|c| (i + 1, c + 1)))
        .unwrap();
    let output = std::process::Command::new(ward_e2e::binary("wardctl"))
        .args([
            "--state-dir",
            dir.join("state").to_str().unwrap(),
            "up",
            dir.to_str().unwrap(),
            "--detach",
            "--envoy",
            ward_e2e::envoy_binary().to_str().unwrap(),
            "--xds-address",
            &format!("127.0.0.1:{}", ward_e2e::free_port()),
            "--xds-admin-address",
            &format!("127.0.0.1:{}", ward_e2e::free_port()),
            "--no-mesh-address",
            &format!("127.0.0.1:{}", ward_e2e::free_port()),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "mystery.yaml:{line}:{column}: spec.template.spec.containers[0].image: "
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("`example.com/mystery:1.0` has no built-in stand-in"),
        "{stderr}"
    );
    assert!(stderr.contains("ward.dev/local-command"), "{stderr}");
    // Nothing stays up after the failed start.
    let state_dir = dir.join("state").display().to_string();
    assert!(ward_e2e::eventually(Duration::from_secs(10), || {
        let left = processes_mentioning(&state_dir);
        anyhow::ensure!(left.is_empty(), "{left:?}");
        Ok(())
    })
    .is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn xds_server_bootstrap_is_a_delta_ads_bootstrap_envoy_accepts() {
    let dir = std::env::temp_dir().join(format!("ward-bootstrap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = ward_e2e::workspace_root().join("config/exam-lab");
    let output = ward_e2e::run_ok(
        std::process::Command::new(ward_e2e::binary("xds-server")).args([
            "bootstrap",
            "--config",
            config.to_str().unwrap(),
            "--workload",
            "exam-scheduler",
            "--state-dir",
            dir.join("xds").to_str().unwrap(),
            "--credentials-dir",
            dir.join("credentials").to_str().unwrap(),
        ]),
    );
    let bootstrap: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(bootstrap["node"]["id"], "exam-scheduler-0.default");
    let ads = &bootstrap["dynamic_resources"]["ads_config"];
    assert_eq!(ads["api_type"], "DELTA_GRPC", "{ads}");
    for config in ["cds_config", "lds_config"] {
        assert!(
            bootstrap["dynamic_resources"][config]["ads"].is_object(),
            "{config}: {bootstrap}"
        );
    }
    assert!(dir.join("credentials").is_dir());
    let file = dir.join("bootstrap.json");
    std::fs::write(&file, &output.stdout).unwrap();
    let validated = std::process::Command::new(ward_e2e::envoy_binary())
        .args(["--mode", "validate", "-c", file.to_str().unwrap()])
        .args(["--log-level", "error"])
        .output()
        .unwrap();
    assert!(
        validated.status.success(),
        "envoy rejects the bootstrap: {}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );
    // A workload the config does not have is an error, not an empty bootstrap.
    let missing = std::process::Command::new(ward_e2e::binary("xds-server"))
        .args(["bootstrap", "--config", config.to_str().unwrap()])
        .args(["--workload", "payroll", "--plaintext-xds"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("payroll"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn nacked_config_is_recorded_and_previous_config_keeps_serving() {
    let mesh = LocalMesh::up("config/exam-lab").expect("mesh up");
    // Port 15001 is the sidecar's own outbound listener: Envoy rejects a second listener on it.
    let text = std::fs::read_to_string(mesh.config_dir.join("exam-scheduler.yaml")).unwrap();
    let text = text.replace(
        "            - containerPort: 8080\n",
        "            - containerPort: 8080\n            - containerPort: 15001\n",
    );
    mesh.write_config("exam-scheduler.yaml", &text).unwrap();
    let nack = mesh
        .eventually(Duration::from_secs(15), || {
            let status = mesh.status_json()?;
            let proxy = status["proxies"]
                .as_array()
                .and_then(|ps| {
                    ps.iter()
                        .find(|p| p["node_id"] == "exam-scheduler-0.default")
                })
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no exam-scheduler proxy"))?;
            let text = proxy.to_string();
            anyhow::ensure!(text.contains("NACKED"), "not NACKed yet: {text}");
            Ok(text)
        })
        .unwrap();
    // Envoy's error_detail, as it wrote it, is in the status, the log line and `wardctl status`.
    let proxy: serde_json::Value = serde_json::from_str(&nack).unwrap();
    let error = proxy["types"]["LDS"]["last_nack"]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no LDS NACK error: {nack}"))
        .trim_end()
        .to_string();
    assert!(error.contains("15001"), "{error}");
    assert!(mesh.metrics().unwrap().contains("ward_xds_nacks_total"));
    let log = mesh.log("xds-server.log");
    let line = log
        .lines()
        .find(|l| l.contains("NACK") && l.contains("exam-scheduler-0.default"))
        .unwrap_or_else(|| panic!("no NACK line: {log}"));
    assert!(line.contains(&error), "{line}");
    let status = String::from_utf8_lossy(&mesh.wardctl(&["status"]).unwrap().stdout).into_owned();
    assert!(
        status.contains(&format!("exam-scheduler-0.default LDS: {error}")),
        "{status}"
    );

    // The proxy kept its last good config.
    let (code, _) = mesh
        .curl_from(Some("professor-tools"), &["exam-scheduler"])
        .unwrap();
    assert_eq!(code, 200);
    let (code, _) = mesh
        .curl_from(Some("exam-scheduler"), &["http://student-portal"])
        .unwrap();
    assert_eq!(
        code, 503,
        "student-portal has no listening app: the sidecar answers 503"
    );
}

#[test]
fn envoys_survive_an_xds_server_crash_and_resync() {
    let mesh = LocalMesh::up("config/exam-lab").expect("mesh up");
    let (code, _) = mesh.curl_from(Some("student-portal"), POST_EXAM).unwrap();
    assert_eq!(code, 200);

    let config_dir = mesh.config_dir.display().to_string();
    let xds: Vec<u32> = processes_mentioning("xds-server serve")
        .into_iter()
        .filter(|pid| processes_mentioning(&config_dir).contains(pid))
        .collect();
    assert_eq!(xds.len(), 1, "{xds:?}");
    std::process::Command::new("kill")
        .args(["-9", &xds[0].to_string()])
        .status()
        .unwrap();

    // Envoys keep serving on their last config while xds-server is away.
    let (code, body) = mesh
        .curl_from(Some("professor-tools"), &["exam-scheduler"])
        .unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("s123456"));

    // The supervisor restarts it; every Envoy reconnects and is SYNCED again.
    mesh.eventually(Duration::from_secs(30), || {
        let states = proxy_states(&mesh)?;
        anyhow::ensure!(
            states.len() == 3 && states.iter().all(|(_, s)| *s),
            "{states:?}"
        );
        Ok(())
    })
    .unwrap();
    // And a change made after the restart reaches them.
    mesh.write_config("greeter.yaml", ECHO_YAML).unwrap();
    mesh.wait_for_200("professor-tools", "http://greeter");
}

#[test]
fn state_of_the_world_ads_serves_the_same_mesh() {
    let mesh = LocalMesh::up_with("config/exam-lab", &["--protocol", "sotw"]).expect("mesh up");
    let (code, body) = mesh.curl_from(Some("student-portal"), POST_EXAM).unwrap();
    assert_eq!(code, 200, "{body}");
    mesh.write_config("greeter.yaml", ECHO_YAML).unwrap();
    mesh.wait_for_200("professor-tools", "http://greeter");
    let status = mesh.status_json().unwrap().to_string();
    assert!(status.to_lowercase().contains("sotw"), "{status}");
}

#[test]
fn envoys_keep_serving_while_xds_server_closes_their_connections_at_the_maximum_age() {
    let mesh =
        LocalMesh::up_with("config/exam-lab", &["--max-connection-age", "2s"]).expect("mesh up");
    // The lab's policy on the scheduler: students may POST, professors may GET.
    mesh.apply(
        "authz-scheduler.yaml",
        include_str!("../../config/exam-lab/policies/authz-scheduler.yaml"),
    );
    let (code, body) = mesh.curl_from(Some("student-portal"), POST_EXAM).unwrap();
    assert_eq!(code, 200, "{body}");
    // Connections to xds-server the professor's sidecar has opened.
    let xds_connections = || {
        mesh.envoy_stat("professor-tools", "cluster.ward-xds.upstream_cx_total")
            .expect("upstream_cx_total stat")
    };
    let first = xds_connections();
    // While xds-server closes each connection at 2 s ±10 % and the sidecars reconnect, the
    // policy keeps being enforced both ways: the professor reads, the student is refused.
    let mut rounds = 0;
    while xds_connections() < first + 3 {
        rounds += 1;
        assert!(
            rounds <= 60,
            "3 reconnects in 60 rounds; {} seen",
            xds_connections() - first
        );
        let (code, body) = mesh
            .curl_from(Some("professor-tools"), &["http://exam-scheduler"])
            .unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("s123456"), "{body}");
        let (code, body) = mesh
            .curl_from(Some("student-portal"), &["http://exam-scheduler"])
            .unwrap();
        assert_eq!((code, body.as_str()), (403, "RBAC: access denied"));
        std::thread::sleep(Duration::from_millis(500));
    }
    // The streams after the reconnects are live: a change reaches the sidecars.
    mesh.write_config("greeter.yaml", ECHO_YAML).unwrap();
    mesh.wait_for_200("professor-tools", "http://greeter");
}
