//! The data path a Kubernetes pod gets, for real: network namespaces stand in for pods (veth
//! on a bridge, their own addresses), the capture rules are the ones `wardctl inject` writes
//! into the pod's init container, run with real iptables, and the sidecars are real Envoys
//! running as uid 1337 with bootstraps from `xds-server pod-bootstrap`. xds-server reads the
//! pods as Kubernetes reports them (`v1 Pod` with `status.podIP`).
//!
//! Needs root (as CI runs), `ip`, `iptables`, `setpriv`, `/usr/bin/python3` (the app, run as
//! an unprivileged user) and `curl`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ward_e2e::{binary, envoy_binary, eventually, free_port, wasm_module};

/// Network namespaces, the bridge and what runs in them; removed on drop.
struct Pods {
    id: u32,
    dir: PathBuf,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Pods {
    fn new() -> Pods {
        let uid = Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "the capture test runs as root (network namespaces and iptables), as CI does"
        );
        // A /24 of its own per run.
        let id = 10 + std::process::id() % 200;
        let dir = std::env::temp_dir().join(format!("ward-capture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pods = Pods {
            id,
            dir,
            namespaces: Vec::new(),
            children: Vec::new(),
        };
        pods.run(&["ip", "link", "add", &pods.bridge(), "type", "bridge"]);
        pods.run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", pods.host_ip()),
            "dev",
            &pods.bridge(),
        ]);
        pods.run(&["ip", "link", "set", &pods.bridge(), "up"]);
        pods
    }

    fn bridge(&self) -> String {
        format!("wardbr{}", self.id)
    }

    fn host_ip(&self) -> String {
        format!("10.213.{}.1", self.id)
    }

    fn ip(&self, n: u8) -> String {
        format!("10.213.{}.{n}", self.id)
    }

    fn run(&self, argv: &[&str]) {
        let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A namespace `name` at `.n` on the bridge, with `hosts` as its /etc/hosts.
    fn add(&mut self, name: &str, n: u8, hosts: &str) -> String {
        let ns = format!("ward{}-{name}", self.id);
        let host_end = format!("w{}{name}", self.id);
        self.run(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        self.run(&[
            "ip", "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        self.run(&["ip", "link", "set", &host_end, "master", &self.bridge()]);
        self.run(&["ip", "link", "set", &host_end, "up"]);
        let ip = self.ip(n);
        for argv in [
            vec!["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            vec!["ip", "link", "set", "eth0", "up"],
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "route", "add", "default", "via", &self.host_ip()],
        ] {
            let mut full = vec!["ip", "netns", "exec", &ns];
            full.extend(argv.iter().copied());
            self.run(&full);
        }
        // `ip netns exec` mounts /etc/netns/<ns>/* over /etc.
        let etc = PathBuf::from("/etc/netns").join(&ns);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("hosts"), format!("127.0.0.1 localhost\n{hosts}")).unwrap();
        ns
    }

    /// Runs `argv` in `ns` as `uid` in the background, output to `log`.
    fn spawn(&mut self, ns: &str, uid: u32, argv: &[&str], log: &Path) {
        let file = std::fs::File::create(log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .args(argv)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    /// Polls [`Pods::curl`] (up to 30 s) until it answers 200; returns the output. The
    /// error names xds-server's log, where a sidecar that never got its config shows.
    fn curl_until_200(&self, ns: &str, url: &str, server_log: &std::path::Path) -> String {
        eventually(Duration::from_secs(30), || {
            let (code, out) = self.curl(ns, url);
            if code == 0 && out.starts_with("HTTP/1.1 200") {
                Ok(out)
            } else {
                Err(anyhow::anyhow!(
                    "curl {code}: {out}\nxds-server: {}",
                    std::fs::read_to_string(server_log).unwrap_or_default()
                ))
            }
        })
        .unwrap()
    }

    /// curl in `ns` as uid 1000 (an app): (exit code, output with headers).
    fn curl(&self, ns: &str, url: &str) -> (i32, String) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "setpriv",
                "--reuid=1000",
                "--regid=1000",
                "--clear-groups",
            ])
            .args(["curl", "-s", "-i", "--max-time", "5", url])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(ns));
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .output();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A pod as the manifest has it (`reported` false: what `wardctl inject` is given) or as
/// Kubernetes reports it once injected and running (`ward.dev/injected`, its Ready condition).
fn pod_yaml(
    name: &str,
    service_account: &str,
    ip: &str,
    port: Option<u16>,
    reported: Option<bool>,
) -> String {
    // A port served comes with the kubelet's readiness probe on it.
    let ports = port
        .map(|p| {
            format!(
                "    ports:\n    - containerPort: {p}\n    readinessProbe:\n      httpGet:\n        path: /healthz\n        port: {p}\n"
            )
        })
        .unwrap_or_default();
    let (annotations, conditions) = match reported {
        Some(ready) => (
            "  annotations:\n    ward.dev/injected: \"0.1.0\"\n".to_string(),
            format!(
                "  conditions:\n  - type: Ready\n    status: \"{}\"\n",
                if ready { "True" } else { "False" }
            ),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
{annotations}  labels:
    app: {name}
spec:
  serviceAccountName: {service_account}
  containers:
  - name: {name}
    image: example/{name}:1
{ports}status:
  podIP: {ip}
{conditions}"
    )
}

const SERVER_SERVICE: &str = "---
apiVersion: v1
kind: Service
metadata:
  name: server
  namespace: default
spec:
  selector:
    app: server
  ports:
  - port: 80
    targetPort: 8080
";

/// The `ward-init` script `wardctl inject` puts into the pod's init container.
fn injected_init_script(pod: &Path) -> String {
    let out = ward_e2e::run_ok(
        Command::new(binary("wardctl"))
            .args(["inject", "-f"])
            .arg(pod),
    );
    let injected = String::from_utf8(out.stdout).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&injected).unwrap();
    let init = docs[0]["spec"]["initContainers"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some("ward-init"))
        .unwrap()
        .clone();
    assert_eq!(init["command"][0].as_str(), Some("sh"));
    init["args"][0].as_str().unwrap().to_string()
}

#[test]
fn captured_pods_reach_each_other_only_through_their_sidecars() {
    let mut pods = Pods::new();
    let dir = pods.dir.clone();
    let (server_ip, client_ip) = (pods.ip(2), pods.ip(3));
    let config = dir.join("config");
    std::fs::create_dir_all(&config).unwrap();
    // The server pod starts not Ready: its sidecar must get its config all the same, or the
    // kubelet's probe (captured) could never reach the app and make it Ready.
    std::fs::write(
        config.join("server.yaml"),
        pod_yaml("server", "server-sa", &server_ip, Some(8080), Some(false)) + SERVER_SERVICE,
    )
    .unwrap();
    std::fs::write(
        config.join("client.yaml"),
        pod_yaml("client", "client-sa", &client_ip, None, Some(true)),
    )
    .unwrap();
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    for (name, sa, ip, port) in [
        ("server", "server-sa", &server_ip, Some(8080)),
        ("client", "client-sa", &client_ip, None),
    ] {
        std::fs::write(
            manifests.join(format!("{name}.yaml")),
            pod_yaml(name, sa, ip, port, None),
        )
        .unwrap();
    }

    // The pods' network namespaces; the client resolves the Service to a virtual IP, which
    // only its sidecar knows how to reach.
    let server_ns = pods.add("server", 2, "");
    let client_ns = pods.add("client", 3, "10.96.0.10 server\n");
    let outside_ns = pods.add("outside", 4, "");

    // xds-server on the host, on the bridge, serving mTLS.
    let state = dir.join("state");
    let xds = format!("{}:{}", pods.host_ip(), free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let module = wasm_module();
    let credentials = |sa: &str, name: &str| {
        let out_dir = dir.join(format!("{name}-credentials"));
        ward_e2e::run_ok(
            Command::new(binary("xds-server"))
                .args(["certificate", "--identity"])
                .arg(format!("spiffe://cluster.local/ns/default/sa/{sa}"))
                .arg("--out")
                .arg(&out_dir)
                .arg("--state-dir")
                .arg(&state),
        );
        pods.run(&["chown", "-R", "1337:1337", out_dir.to_str().unwrap()]);
        out_dir
    };
    let server_credentials = credentials("server-sa", "server");
    let client_credentials = credentials("client-sa", "client");
    let server_log = dir.join("xds-server.log");
    let xds_server = Command::new(binary("xds-server"))
        .args(["serve", "--config"])
        .arg(&config)
        .args([
            "--xds-address",
            &xds,
            "--admin-address",
            &admin,
            "--debounce-ms",
            "50",
        ])
        .arg("--state-dir")
        .arg(&state)
        .arg("--wasm-module")
        .arg(&module)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&server_log).unwrap())
        .spawn()
        .unwrap();
    pods.children.push(xds_server);

    // Each pod: its init container's capture rules, its bootstrap, its sidecar (uid 1337).
    for (name, ns, ip, sa, creds) in [
        (
            "server",
            &server_ns,
            &server_ip,
            "server-sa",
            &server_credentials,
        ),
        (
            "client",
            &client_ns,
            &client_ip,
            "client-sa",
            &client_credentials,
        ),
    ] {
        let script = injected_init_script(&manifests.join(format!("{name}.yaml")));
        pods.run(&["ip", "netns", "exec", ns, "sh", "-c", &script]);
        let bootstrap = dir.join(format!("{name}-envoy.json"));
        ward_e2e::run_ok(
            Command::new(binary("xds-server"))
                .arg("pod-bootstrap")
                .args([
                    "--xds-address",
                    &xds,
                    "--credentials-from",
                    creds.to_str().unwrap(),
                ])
                .arg("--wasm-module")
                .arg(&module)
                .arg("--out")
                .arg(&bootstrap)
                .envs([
                    ("POD_NAME", name),
                    ("POD_NAMESPACE", "default"),
                    ("POD_IP", ip.as_str()),
                    ("SERVICE_ACCOUNT", sa),
                    ("WARD_WORKLOAD", name),
                ]),
        );
        let log = dir.join(format!("{name}-envoy.log"));
        std::fs::File::create(&log).unwrap();
        pods.run(&["chown", "1337:1337", log.to_str().unwrap()]);
        let envoy = envoy_binary();
        pods.spawn(
            ns,
            1337,
            &[
                envoy.to_str().unwrap(),
                "-c",
                bootstrap.to_str().unwrap(),
                "--disable-hot-restart",
                "-l",
                "warning",
            ],
            &log,
        );
    }
    // The server app: listens on every address of its pod, port 8080, as uid 1000.
    let site = dir.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("index.html"), "hello from the server pod\n").unwrap();
    std::fs::write(site.join("healthz"), "ok\n").unwrap();
    pods.spawn(
        &server_ns,
        1000,
        &[
            "/usr/bin/python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "0.0.0.0",
            "--directory",
            site.to_str().unwrap(),
        ],
        &dir.join("app.log"),
    );

    // The kubelet's readiness probe, plaintext from outside the pod to the app's port, is
    // captured and served through the not-ready pod's sidecar (PERMISSIVE by default).
    let probe = pods.curl_until_200(
        &outside_ns,
        &format!("http://{server_ip}:8080/"),
        &server_log,
    );
    assert!(
        probe.contains("x-ward-wasm: server.default"),
        "through the sidecar: {probe}"
    );
    // Not ready: no endpoint of the Service yet, so a meshed client gets no answer from it.
    let out = eventually(Duration::from_secs(30), || {
        let (code, out) = pods.curl(&client_ns, "http://server/");
        if code == 0 && out.starts_with("HTTP/1.1 503") {
            Ok(out)
        } else {
            Err(anyhow::anyhow!("curl {code}: {out}"))
        }
    })
    .unwrap();
    assert!(out.contains("no healthy upstream"), "{out}");
    // The kubelet marks it Ready: it becomes an endpoint.
    std::fs::write(
        config.join("server.yaml"),
        pod_yaml("server", "server-sa", &server_ip, Some(8080), Some(true)) + SERVER_SERVICE,
    )
    .unwrap();

    // Outbound capture: the client app calls the Service by name; its sidecar routes it,
    // over mTLS, to the server pod, whose sidecar (inbound capture) hands it to the app.
    let response = pods.curl_until_200(&client_ns, "http://server/", &server_log);
    assert!(response.contains("hello from the server pod"), "{response}");
    assert!(
        response.contains("x-ward-wasm: server.default"),
        "the server's sidecar handled it: {response}"
    );
    assert!(
        response.contains("x-envoy-upstream-service-time"),
        "{response}"
    );

    // Inbound capture: a client outside the mesh, plaintext to the pod's address and the
    // app's own port, still goes through the sidecar (PERMISSIVE by default).
    let (code, out) = pods.curl(&outside_ns, &format!("http://{server_ip}:8080/"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("x-ward-wasm: server.default"),
        "through the sidecar: {out}"
    );
    // A port the pod does not serve is refused by the capture listener.
    let (code, _) = pods.curl(&outside_ns, &format!("http://{server_ip}:9999/"));
    assert_ne!(code, 0, "an undeclared port is not passed through");

    // STRICT mTLS: the plaintext client is refused; the meshed client still gets through.
    std::fs::write(
        config.join("strict.yaml"),
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
",
    )
    .unwrap();
    let refused = eventually(Duration::from_secs(15), || {
        let (code, out) = pods.curl(&outside_ns, &format!("http://{server_ip}:8080/"));
        if code == 0 && out.starts_with("HTTP/1.1 403") {
            Ok(out)
        } else {
            Err(anyhow::anyhow!("still served in plaintext: {code} {out}"))
        }
    })
    .unwrap();
    assert!(
        refused.contains("STRICT mTLS: plaintext is served only on the pod's probe paths")
            && !refused.contains("hello"),
        "{refused}"
    );
    // The kubelet's readiness probe (its path, plaintext) is still served, by the app.
    let (code, probe) = pods.curl(&outside_ns, &format!("http://{server_ip}:8080/healthz"));
    assert_eq!(code, 0, "{probe}");
    assert!(
        probe.starts_with("HTTP/1.1 200") && probe.ends_with("\r\n\r\nok\n"),
        "{probe}"
    );
    assert!(probe.contains("x-envoy-upstream-service-time"), "{probe}");
    // Only that path: another one with the same prefix is refused.
    let (_, other) = pods.curl(&outside_ns, &format!("http://{server_ip}:8080/healthz/x"));
    assert!(other.starts_with("HTTP/1.1 403"), "{other}");
    let (code, out) = pods.curl(&client_ns, "http://server/");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("hello from the server pod"),
        "{out}"
    );
}
