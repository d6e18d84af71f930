//! Workload identity and mutual TLS on a local mesh of real Envoys: the lab's section 4.2.1
//! (seed 000) and Istio's mesh-wide form (seed 001, subtask 1.5), PERMISSIVE and DISABLE,
//! certificates visible from the Envoys, rotation under load, restart with the same root.

use std::time::{Duration, Instant};

use ward_e2e::{processes_mentioning, LocalMesh, POST_EXAM};

const PEER_AUTH_STRICT: &str = "\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
";

const MESH_WIDE_STRICT: &str = "\
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
";

/// `wardctl exec CLIENT -- curl http://exam-scheduler`: (status, body).
fn get_scheduler(mesh: &LocalMesh, client: &str) -> (u16, String) {
    mesh.curl_from(Some(client), &["http://exam-scheduler"])
        .unwrap()
}

/// The runner's state: instances, addresses, the xDS port.
fn runner_state(mesh: &LocalMesh) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(mesh.state_dir.join("state.json")).unwrap()).unwrap()
}

/// The address (instance address and port 8080) of exam-scheduler's sidecar.
fn scheduler_address(mesh: &LocalMesh) -> String {
    format!("{}:8080", mesh.instance_address("exam-scheduler"))
}

/// `wardctl exec --no-mesh -- curl exam-scheduler`: (curl exit code, body).
fn no_mesh_get(mesh: &LocalMesh) -> (i32, String) {
    mesh.no_mesh_get("exam-scheduler")
}

fn apply(mesh: &LocalMesh, name: &str, text: &str) {
    mesh.apply(name, text);
}

fn certs_json(mesh: &LocalMesh, workload: &str) -> Vec<serde_json::Value> {
    let out = mesh.wardctl(&["certs", workload, "--json"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

#[test]
fn strict_peer_authentication_refuses_clients_without_a_sidecar() {
    let mesh = LocalMesh::up("config/exam-lab").expect("mesh up");

    // Before the policy: PERMISSIVE by default. The meshed client talks mTLS (the server's
    // sidecar logs the client's SPIFFE identity), the client without a sidecar plaintext.
    let (code, body) = no_mesh_get(&mesh);
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("exams"), "{body}");
    let (code, _) = get_scheduler(&mesh, "professor-tools");
    assert_eq!(code, 200);
    mesh.eventually(Duration::from_secs(5), || {
        let server = mesh.log("exam-scheduler-0.default.envoy.log");
        anyhow::ensure!(
            server.contains(
                "peer=spiffe://cluster.local/ns/default/sa/professor-tools-sa tls=TLSv1.3"
            ),
            "server log: {server}"
        );
        anyhow::ensure!(server.contains("peer=- tls=-"), "server log: {server}");
        Ok(())
    })
    .unwrap();

    // `wardctl edges` tells the two apart, from the Envoys' own connection counters.
    let out = mesh.wardctl(&["edges", "--json"]).unwrap();
    let edges: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let edge = |src: &str| {
        edges
            .iter()
            .find(|e| e["src"] == src && e["dst"] == "exam-scheduler")
            .cloned()
            .unwrap_or_else(|| panic!("no edge from {src}: {edges:?}"))
    };
    let meshed = edge("professor-tools");
    assert!(
        meshed["mtls_connections"].as_u64().unwrap() >= 1,
        "{meshed}"
    );
    assert_eq!(meshed["plaintext_connections"], 0, "{meshed}");
    let plain = edge("(no sidecar)");
    assert!(
        plain["plaintext_connections"].as_u64().unwrap() >= 1,
        "{plain}"
    );
    let table = mesh.wardctl(&["edges"]).unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("SECURED"), "{table}");

    // A mistyped mode is refused with its place, and nothing changes.
    let bad = mesh.root.join("peer-auth-typo.yaml");
    std::fs::write(&bad, PEER_AUTH_STRICT.replace("STRICT", "STRICTLY")).unwrap();
    let out = mesh
        .wardctl(&["apply", "-f", bad.to_str().unwrap()])
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("peer-auth-typo.yaml:8:5: spec.mtls.mode: unknown mTLS mode `STRICTLY`"),
        "{said}"
    );
    let (code, _) = no_mesh_get(&mesh);
    assert_eq!(code, 0, "the refused edit changed nothing");

    // The lab's peer-auth.yaml: the client without a sidecar is cut off...
    apply(&mesh, "peer-auth.yaml", PEER_AUTH_STRICT);
    let (code, body) = no_mesh_get(&mesh);
    assert!(
        code == 52 || code == 56,
        "curl should see the connection closed or reset, got exit {code}: {body}"
    );
    assert!(body.is_empty(), "{body}");

    // ...while the meshed clients keep working, over mTLS.
    let (code, body) = mesh.curl_from(Some("student-portal"), POST_EXAM).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("Exam received"), "{body}");
    let (code, body) = get_scheduler(&mesh, "professor-tools");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("s123456"), "{body}");

    // DISABLE on the workload's port wins over the namespace's STRICT (Istio's precedence):
    // plaintext again, for both kinds of client.
    apply(
        &mesh,
        "scheduler-port.yaml",
        "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: scheduler-plaintext
  namespace: default
spec:
  selector:
    matchLabels:
      app: exam-scheduler
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
",
    );
    let (code, body) = no_mesh_get(&mesh);
    assert_eq!(code, 0, "{body}");
    // Meshed clients follow (auto mTLS: plaintext to a DISABLE port; connections they
    // already hold drain as Envoy drains the old listener).
    let (code, _) = get_scheduler(&mesh, "professor-tools");
    assert_eq!(code, 200);
    let (code, _) = get_scheduler(&mesh, "student-portal");
    assert_eq!(code, 200);
}

#[test]
fn mesh_wide_strict_from_the_root_namespace_and_certificates_from_the_envoys() {
    let mesh = LocalMesh::up("config/exam-lab").expect("mesh up");
    apply(&mesh, "mesh-wide.yaml", MESH_WIDE_STRICT);
    let (code, body) = no_mesh_get(&mesh);
    assert!(code == 52 || code == 56, "exit {code}: {body}");
    let (code, _) = get_scheduler(&mesh, "professor-tools");
    assert_eq!(code, 200);

    // Each proxy holds its own certificate (SPIFFE URI SAN of its service account, 24 h by
    // default) and the trust bundle, as istioctl proxy-config secret would show.
    let certs = certs_json(&mesh, "exam-scheduler");
    let own: Vec<_> = certs
        .iter()
        .filter(|c| c["resource"] == "default" && c["status"] == "ACTIVE")
        .collect();
    assert_eq!(own.len(), 1, "{certs:?}");
    assert_eq!(
        own[0]["spiffe_id"],
        "spiffe://cluster.local/ns/default/sa/exam-scheduler-sa"
    );
    assert_eq!(own[0]["valid"], true);
    assert!(certs
        .iter()
        .any(|c| c["resource"] == "ROOTCA" && c["kind"] == "CA"));
    let table = mesh.wardctl(&["certs"]).unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    for workload in ["exam-scheduler-0", "professor-tools-0", "student-portal-0"] {
        assert!(table.contains(workload), "{table}");
    }

    // Seconds until expiry per workload certificate, and the issuance count, as metrics.
    let metrics = mesh.metrics().unwrap();
    assert!(
        metrics.contains("ward_certificates_issued_total{reason=\"initial\"} 3"),
        "{metrics}"
    );
    let remaining = metrics
        .lines()
        .find(|l| {
            l.starts_with("ward_workload_certificate_expiry_seconds{")
                && l.contains("exam-scheduler-sa")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    let seconds: i64 = remaining.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((86_000..=86_400).contains(&seconds), "{remaining}");
}

#[test]
fn certificates_rotate_under_load_with_no_failed_request() {
    // 6 s certificates renewed at 4/5 of their lifetime: several rotations in the window.
    let mesh =
        LocalMesh::up_with("config/exam-lab", &["--workload-cert-ttl", "6s"]).expect("mesh up");
    apply(&mesh, "peer-auth.yaml", PEER_AUTH_STRICT);
    let serial = |mesh: &LocalMesh| {
        certs_json(mesh, "exam-scheduler")
            .into_iter()
            .find(|c| c["resource"] == "default" && c["status"] == "ACTIVE")
            .map(|c| c["serial"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    let first = serial(&mesh);
    let mut serials = vec![first.clone()];
    let (mut ok, mut failed) = (0, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(16);
    while Instant::now() < deadline {
        // A fresh connection each time, so every request does a new mTLS handshake with
        // whatever certificates the Envoys hold now.
        for client in ["student-portal", "professor-tools"] {
            match mesh.curl_from(
                Some(client),
                &["-H", "Connection: close", "http://exam-scheduler"],
            ) {
                Ok((200, _)) => ok += 1,
                other => failed.push(format!("{other:?}")),
            }
        }
        let now = serial(&mesh);
        if serials.last() != Some(&now) {
            serials.push(now);
        }
    }
    assert!(failed.is_empty(), "{} ok, failed: {failed:?}", ok);
    assert!(
        serials.len() >= 3,
        "expected at least two renewals in 16 s of 6 s certificates, saw serials {serials:?}"
    );
    let metrics = mesh.metrics().unwrap();
    assert!(
        metrics.contains("ward_certificates_issued_total{reason=\"renewal\"}"),
        "{metrics}"
    );
}

#[test]
fn restarted_xds_server_keeps_the_root_and_proxies_keep_mtls() {
    let mesh = LocalMesh::up("config/exam-lab").expect("mesh up");
    apply(&mesh, "peer-auth.yaml", PEER_AUTH_STRICT);
    let root_of = |mesh: &LocalMesh| {
        certs_json(mesh, "professor-tools")
            .into_iter()
            .find(|c| c["resource"] == "ROOTCA")
            .map(|c| c["serial"].as_str().unwrap_or_default().to_string())
            .unwrap()
    };
    let root = root_of(&mesh);
    let root_file = mesh.state_dir.join("xds-server/ca/root-cert.pem");
    let root_pem = std::fs::read_to_string(&root_file).unwrap();

    // Kill xds-server; the supervisor restarts it. Traffic keeps flowing meanwhile.
    let config_dir = mesh.config_dir.display().to_string();
    let pids: Vec<u32> = processes_mentioning("xds-server serve")
        .into_iter()
        .filter(|pid| processes_mentioning(&config_dir).contains(pid))
        .collect();
    assert_eq!(pids.len(), 1, "{pids:?}");
    for pid in &pids {
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    }
    let (code, _) = get_scheduler(&mesh, "professor-tools");
    assert_eq!(code, 200);
    mesh.eventually(Duration::from_secs(30), || {
        let status = mesh.status_json()?;
        let proxies = status["proxies"].as_array().cloned().unwrap_or_default();
        let synced = proxies.iter().filter(|p| p["synced"] == true).count();
        anyhow::ensure!(synced == 3, "{status}");
        Ok(())
    })
    .unwrap();
    assert_eq!(std::fs::read_to_string(&root_file).unwrap(), root_pem);
    assert_eq!(root_of(&mesh), root);
    let (code, _) = get_scheduler(&mesh, "professor-tools");
    assert_eq!(code, 200);
    let (code, _) = no_mesh_get(&mesh);
    assert!(code == 52 || code == 56);
}

/// The xDS port of a running mesh.
fn xds_address(mesh: &LocalMesh) -> String {
    runner_state(mesh)["xds_address"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_proxy_cannot_get_another_workloads_config_with_its_own_credential() {
    let mesh = LocalMesh::up("config/exam-lab").expect("mesh up");
    // An impostor: professor-tools' node id (and bootstrap), student-portal's credential.
    let (mut impostor, admin_port) =
        mesh.start_edited_sidecar("professor-tools-0.default", |bootstrap| {
            let text = bootstrap.to_string().replace(
                "credentials/professor-tools-0.default",
                "credentials/student-portal-0.default",
            );
            *bootstrap = serde_json::from_str(&text).unwrap();
        });

    let refused = mesh.eventually(Duration::from_secs(15), || {
        let metrics = mesh.metrics()?;
        anyhow::ensure!(
            metrics.contains("ward_xds_refused_streams_total{reason=\"identity-mismatch\"}"),
            "no refusal counted yet"
        );
        Ok(metrics)
    });
    // What the impostor holds: no secrets, no clusters, no listeners from xds-server.
    let dump = std::process::Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{admin_port}/config_dump")])
        .output()
        .unwrap();
    impostor.kill().unwrap();
    let _ = impostor.wait();
    refused.unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("ward-xds"), "the admin answered: {dump}");
    for leaked in [
        "dynamic_active_secrets",
        "dynamic_active_clusters",
        "dynamic_listeners",
        "BEGIN CERTIFICATE",
    ] {
        assert!(!dump.contains(leaked), "the impostor got {leaked}");
    }
    let log = mesh.log("xds-server.log");
    assert!(
        log.contains("refused an ADS stream")
            && log.contains("professor-tools-0.default runs as spiffe://cluster.local/ns/default/sa/professor-tools-sa; this credential is spiffe://cluster.local/ns/default/sa/student-portal-sa"),
        "{log}"
    );
    // The real proxies are unaffected.
    let (code, _) = get_scheduler(&mesh, "professor-tools");
    assert_eq!(code, 200);
}

/// The wasm module is pinned: a sidecar whose bootstrap reports another module file (a
/// tampered or stale copy) gets no configuration at all, so it serves nothing rather than
/// running unknown code on its traffic; `wardctl status` says why.
#[test]
fn a_sidecar_with_another_wasm_module_is_refused_its_configuration() {
    let mesh = LocalMesh::up("config/exam-lab").expect("mesh up");
    let mut pinned = String::new();
    let mut reported = String::new();
    let tampered_path = mesh.root.join("tampered.wasm");
    let (mut sidecar, admin_port) =
        mesh.start_edited_sidecar("professor-tools-0.default", |bootstrap| {
            pinned = bootstrap["node"]["metadata"]["WASM_MODULE_SHA256"]
                .as_str()
                .expect("the sidecar reports its module's sha256")
                .to_string();
            // The module with one byte appended, as `xds-server bootstrap --wasm-module`
            // reports it.
            let mut tampered = std::fs::read(ward_e2e::wasm_module()).unwrap();
            tampered.push(0);
            std::fs::write(&tampered_path, &tampered).unwrap();
            reported = ward_xds::bootstrap::file_sha256(&tampered_path).unwrap();
            bootstrap["node"]["metadata"]["WASM_MODULE_SHA256"] = reported.clone().into();
        });
    assert_ne!(reported, pinned);
    let printed = mesh.eventually(Duration::from_secs(15), || {
        let out = mesh.wardctl(&["status"])?;
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(printed.contains("REFUSED"), "{printed}");
        Ok(printed)
    });
    let dump = std::process::Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{admin_port}/config_dump")])
        .output()
        .unwrap();
    sidecar.kill().unwrap();
    let _ = sidecar.wait();
    let printed = printed.unwrap();
    assert!(
        printed.contains(&format!(
            "REFUSED professor-tools-0.default: its wasm module has sha256 {reported}; xds-server pins {pinned}"
        )),
        "{printed}"
    );
    assert!(mesh
        .metrics()
        .unwrap()
        .contains("ward_xds_refused_streams_total{reason=\"wasm-module-mismatch\"}"));
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("ward-xds"), "the admin answered: {dump}");
    assert!(
        !dump.contains("dynamic_listeners"),
        "the sidecar got listeners"
    );
    // The real sidecars, with the pinned module, are unaffected.
    let (code, _) = get_scheduler(&mesh, "professor-tools");
    assert_eq!(code, 200);
}

#[test]
fn xds_refuses_clients_without_a_certificate_and_survives_a_connection_flood() {
    use std::io::{Read, Write};
    let mesh = LocalMesh::up("config/exam-lab").expect("mesh up");
    let xds = xds_address(&mesh);
    // Plaintext gRPC (an HTTP/2 preface) is not spoken to: the server wants a TLS handshake.
    let mut plain = std::net::TcpStream::connect(&xds).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    let n = plain.read(&mut buf).unwrap_or(0);
    assert!(
        n == 0 || !buf[..n].starts_with(b"\x00\x00"),
        "a plaintext client got an HTTP/2 answer"
    );
    // A TLS client without a certificate is refused at the handshake.
    let out = std::process::Command::new("curl")
        .args(["-sk", "--http2-prior-knowledge", "-m", "5"])
        .arg(format!("https://{xds}/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"))
        .output()
        .unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "a client without a certificate got through"
    );

    // A flood: 1,500 connections that never finish a TLS handshake, opened at once.
    let mut idle = Vec::new();
    for _ in 0..1500 {
        if let Ok(stream) = std::net::TcpStream::connect(&xds) {
            idle.push(stream);
        }
    }
    assert!(idle.len() >= 1000, "only {} connections opened", idle.len());
    // During it, a change reaches every proxy.
    mesh.write_config(
        "greeter.yaml",
        "apiVersion: apps/v1
kind: Deployment
metadata: {name: greeter}
spec:
  selector: {matchLabels: {app: greeter}}
  template:
    metadata: {labels: {app: greeter}}
    spec:
      containers:
      - name: greeter
        image: hashicorp/http-echo
        args: [\"-text=hello\"]
        ports: [{containerPort: 5678}]
---
apiVersion: v1
kind: Service
metadata: {name: greeter}
spec:
  selector: {app: greeter}
  ports: [{port: 80, targetPort: 5678}]
",
    )
    .unwrap();
    mesh.eventually(Duration::from_secs(20), || {
        let (code, body) = mesh.curl_from(Some("professor-tools"), &["http://greeter"])?;
        anyhow::ensure!(
            code == 200 && body.contains("hello"),
            "greeter: {code} {body}"
        );
        Ok(())
    })
    .unwrap();
    // The handshake timeout (5 s) closes the flood's connections.
    std::thread::sleep(Duration::from_secs(7));
    let mut closed = 0;
    for stream in &mut idle {
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            _ => {}
        }
    }
    assert!(
        closed * 10 >= idle.len() * 9,
        "{closed} of {} closed",
        idle.len()
    );
}

/// Signs a certificate with `xds-server certificate` into `out`.
fn certificate(state_dir: &std::path::Path, identity: &str, ttl: &str, out: &std::path::Path) {
    let status = std::process::Command::new(ward_e2e::binary("xds-server"))
        .args(["certificate", "--identity", identity, "--ttl", ttl])
        .arg("--out")
        .arg(out)
        .arg("--state-dir")
        .arg(state_dir)
        .status()
        .unwrap();
    assert!(status.success());
}

/// curl straight to a sidecar's inbound port over TLS with a client certificate from `dir`:
/// (curl exit code, HTTP status).
fn curl_with_certificate(address: &str, dir: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new("curl")
        .args(["-sk", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--cert")
        .arg(dir.join("cert.pem"))
        .arg("--key")
        .arg(dir.join("key.pem"))
        .arg(format!("https://{address}/"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn strict_sidecars_refuse_certificates_from_another_ca_and_expired_ones() {
    let mesh = LocalMesh::up("config/exam-lab").expect("mesh up");
    apply(&mesh, "peer-auth.yaml", PEER_AUTH_STRICT);
    let address = scheduler_address(&mesh);
    let mesh_ca = mesh.state_dir.join("xds-server");
    let identity = "spiffe://cluster.local/ns/default/sa/batch-job";

    // A client outside the sidecars, with a certificate from the mesh's CA: accepted.
    let good = mesh.root.join("good");
    certificate(&mesh_ca, identity, "1h", &good);
    assert_eq!(
        curl_with_certificate(&address, &good),
        (0, "200".to_string())
    );

    // The same identity signed by another CA: refused at the handshake.
    let other = mesh.root.join("other");
    certificate(&mesh.root.join("other-ca"), identity, "1h", &other);
    let (code, status) = curl_with_certificate(&address, &other);
    assert!(
        code != 0 && status != "200",
        "another CA's certificate got {code} {status}"
    );

    // A certificate of the mesh's CA that has expired: refused.
    let expired = mesh.root.join("expired");
    certificate(&mesh_ca, identity, "1s", &expired);
    std::thread::sleep(Duration::from_secs(2));
    let (code, status) = curl_with_certificate(&address, &expired);
    assert!(
        code != 0 && status != "200",
        "an expired certificate got {code} {status}"
    );

    // No certificate at all over TLS: refused too.
    let out = std::process::Command::new("curl")
        .args(["-sk", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{address}/"))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn plugged_in_intermediates_under_one_root_trust_each_other() {
    let root = std::env::temp_dir().join(format!("ward-e2e-root-{}", ward_e2e::free_port()));
    let xds_server = |args: &[&str]| {
        ward_e2e::run_ok(std::process::Command::new(ward_e2e::binary("xds-server")).args(args));
    };
    let root_state = root.join("root-ca");
    let (cluster1, cluster2) = (root.join("cluster1"), root.join("cluster2"));
    for (name, dir) in [("cluster1", &cluster1), ("cluster2", &cluster2)] {
        xds_server(&[
            "ca-intermediate",
            "--name",
            name,
            "--out",
            dir.to_str().unwrap(),
            "--state-dir",
            root_state.to_str().unwrap(),
        ]);
    }
    // The exam lab runs under cluster1's intermediate.
    let mesh = LocalMesh::up_with("config/exam-lab", &["--ca-dir", cluster1.to_str().unwrap()])
        .expect("mesh up");
    apply(&mesh, "peer-auth.yaml", PEER_AUTH_STRICT);
    let (code, _) = get_scheduler(&mesh, "professor-tools");
    assert_eq!(code, 200);
    let certs = certs_json(&mesh, "exam-scheduler");
    assert!(
        certs.iter().filter(|c| c["resource"] == "default").count() >= 2,
        "the proxy's chain carries the intermediate: {certs:?}"
    );

    let address = scheduler_address(&mesh);
    // A workload of the other cluster (its certificate signed by cluster2's intermediate,
    // with that intermediate in its chain) is accepted by cluster1's STRICT sidecar...
    let client = root.join("client2");
    ward_e2e::run_ok(
        std::process::Command::new(ward_e2e::binary("xds-server")).args([
            "certificate",
            "--identity",
            "spiffe://cluster.local/ns/default/sa/remote-client",
            "--ca-dir",
            cluster2.to_str().unwrap(),
            "--out",
            client.to_str().unwrap(),
        ]),
    );
    assert_eq!(
        curl_with_certificate(&address, &client),
        (0, "200".to_string())
    );
    // ...and the other cluster verifies cluster1's server chain against the shared root.
    let verify = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &address,
            "-verify_return_error",
            "-brief",
        ])
        .arg("-CAfile")
        .arg(client.join("root.pem"))
        .arg("-cert")
        .arg(client.join("cert.pem"))
        .arg("-key")
        .arg(client.join("key.pem"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(said.contains("Verification: OK"), "{said}");
    // A certificate from an unrelated root is not.
    let stranger = root.join("stranger");
    certificate(
        &root.join("stranger-ca"),
        "spiffe://cluster.local/ns/default/sa/x",
        "1h",
        &stranger,
    );
    let (code, _) = curl_with_certificate(&address, &stranger);
    assert_ne!(code, 0);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn destination_rule_tls_mode_decides_what_the_client_sends() {
    let mesh = LocalMesh::up("config/exam-lab").expect("mesh up");
    apply(&mesh, "peer-auth.yaml", PEER_AUTH_STRICT);
    let rule = |mode: &str| {
        format!(
            "apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: exam-scheduler
spec:
  host: exam-scheduler
  trafficPolicy:
    tls:
      mode: {mode}
"
        )
    };
    // Seed 001's ISTIO_MUTUAL: mTLS, as auto mTLS would do anyway.
    apply(&mesh, "dr.yaml", &rule("ISTIO_MUTUAL"));
    let (code, _) = get_scheduler(&mesh, "professor-tools");
    assert_eq!(code, 200);
    // DISABLE against a STRICT server: the client sends plaintext and the server refuses
    // it, as it would under Istio; Envoy answers 503 to the app.
    apply(&mesh, "dr.yaml", &rule("DISABLE"));
    let (code, body) = get_scheduler(&mesh, "professor-tools");
    assert_eq!(code, 503, "{body}");
    // Back to ISTIO_MUTUAL: working again.
    apply(&mesh, "dr.yaml", &rule("ISTIO_MUTUAL"));
    let (code, _) = get_scheduler(&mesh, "professor-tools");
    assert_eq!(code, 200);
}

#[test]
fn a_client_refuses_a_server_with_the_wrong_spiffe_identity() {
    let mesh = LocalMesh::up("config/exam-lab").expect("mesh up");
    apply(&mesh, "peer-auth.yaml", PEER_AUTH_STRICT);
    // Client certificate files on the proxy's file system, from the mesh CA.
    let files = mesh.root.join("client-files");
    certificate(
        &mesh.state_dir.join("xds-server"),
        "spiffe://cluster.local/ns/default/sa/professor-tools-sa",
        "1h",
        &files,
    );
    let rule = |san: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: exam-scheduler
spec:
  host: exam-scheduler
  trafficPolicy:
    tls:
      mode: MUTUAL
      clientCertificate: {dir}/cert.pem
      privateKey: {dir}/key.pem
      caCertificates: {dir}/root.pem
      subjectAltNames: [\"{san}\"]
",
            dir = files.display()
        )
    };
    // The identity that runs exam-scheduler: the handshake succeeds.
    apply(
        &mesh,
        "dr.yaml",
        &rule("spiffe://cluster.local/ns/default/sa/exam-scheduler-sa"),
    );
    let (code, body) = get_scheduler(&mesh, "professor-tools");
    assert_eq!(code, 200, "{body}");
    // The client expects another identity: the same server is refused by the client.
    apply(
        &mesh,
        "dr.yaml",
        &rule("spiffe://cluster.local/ns/default/sa/payments"),
    );
    let (code, body) = get_scheduler(&mesh, "professor-tools");
    assert_eq!(code, 503, "{body}");
    mesh.eventually(Duration::from_secs(5), || {
        let client = mesh.log("professor-tools-0.default.envoy.log");
        anyhow::ensure!(
            client.contains("CERTIFICATE_VERIFY_FAILED") || client.contains("TLS_error"),
            "client log: {client}"
        );
        Ok(())
    })
    .unwrap();
}
