//! End to end through real Envoy: the exam lab on `wardctl up`, replicas, hot reload, invalid
//! edits, NACKs, an xds-server crash, and `wardctl down` leaving nothing behind.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ward_e2e::{processes_mentioning, LocalMesh, POST_EXAM};

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
        "exam-scheduler.default",
        "exam-scheduler.default.svc",
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

    // `down` leaves no process behind.
    let state_dir = mesh.state_dir.display().to_string();
    let config_dir = mesh.config_dir.display().to_string();
    assert!(!processes_mentioning(&state_dir).is_empty());
    let down = mesh.wardctl(&["down"]).unwrap();
    assert!(down.status.success());
    let left: Vec<u32> = processes_mentioning(&state_dir)
        .into_iter()
        .chain(processes_mentioning(&config_dir))
        .collect();
    assert!(left.is_empty(), "processes left after down: {left:?}");
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
    let body = mesh
        .eventually(Duration::from_secs(20), || {
            let (code, body) = mesh.curl_from(Some("student-portal"), &["http://greeter"])?;
            anyhow::ensure!(code == 200, "greeter answered {code}: {body}");
            Ok(body)
        })
        .unwrap();
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
    assert!(
        nack.contains("15001"),
        "NACK should carry Envoy's error detail: {nack}"
    );
    assert!(mesh.metrics().unwrap().contains("ward_xds_nacks_total"));
    let log = mesh.log("xds-server.log");
    assert!(log.contains("NACK") || log.contains("nack"), "{log}");

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
    mesh.eventually(Duration::from_secs(20), || {
        let (code, _) = mesh.curl_from(Some("professor-tools"), &["http://greeter"])?;
        anyhow::ensure!(code == 200, "greeter answered {code}");
        Ok(())
    })
    .unwrap();
}

#[test]
fn state_of_the_world_ads_serves_the_same_mesh() {
    let mesh = LocalMesh::up_with("config/exam-lab", &["--protocol", "sotw"]).expect("mesh up");
    let (code, body) = mesh.curl_from(Some("student-portal"), POST_EXAM).unwrap();
    assert_eq!(code, 200, "{body}");
    mesh.write_config("greeter.yaml", ECHO_YAML).unwrap();
    mesh.eventually(Duration::from_secs(20), || {
        let (code, _) = mesh.curl_from(Some("professor-tools"), &["http://greeter"])?;
        anyhow::ensure!(code == 200, "greeter answered {code}");
        Ok(())
    })
    .unwrap();
    let status = mesh.status_json().unwrap().to_string();
    assert!(status.to_lowercase().contains("sotw"), "{status}");
}
