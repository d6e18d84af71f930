//! The Kubernetes install manifests in `deploy/kubernetes/`: every one valid against the
//! Kubernetes OpenAPI schema (`kubernetes-validate`, offline, strict: unknown fields refused),
//! the kustomization naming exactly the files there, and the xds-server Deployment's own
//! command line and mesh ConfigMap starting the real xds-server (no cluster runs on these
//! machines: the paths it mounts are stood in for by temporary directories).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ward_e2e::{binary, free_port, workspace_root};
use yaml_rust2::{Yaml, YamlLoader};

/// The Kubernetes version the manifests are checked against.
const KUBERNETES_VERSION: &str = "1.34.0";

fn manifests_dir() -> PathBuf {
    workspace_root().join("deploy/kubernetes")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> Vec<Yaml> {
    YamlLoader::load_from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `kubernetes-validate --strict` on `files`: (succeeded, its report).
fn validate(files: &[PathBuf]) -> (bool, String) {
    let tools = workspace_root().join(".ward-tools/kubernetes-validate");
    assert!(
        tools.is_dir(),
        "kubernetes-validate missing: run scripts/setup.sh"
    );
    let out = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "-k",
            KUBERNETES_VERSION,
        ])
        .args(files)
        .env("PYTHONPATH", &tools)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

/// A validation that passed, each of the `documents` checked (none skipped).
fn assert_all_valid((valid, report): (bool, String), documents: usize) {
    assert!(valid, "{report}");
    assert_eq!(
        report.matches(" passed for resource ").count(),
        documents,
        "{report}"
    );
}

#[test]
fn every_manifest_is_valid_kubernetes() {
    let files = manifests();
    assert!(files.len() >= 7, "{files:?}");
    let documents: usize = files.iter().map(|f| load(f).len()).sum();
    assert_all_valid(validate(&files), documents);

    // A misspelt field is caught: the check is not vacuous.
    let bad = std::env::temp_dir().join(format!("ward-bad-deployment-{}.yaml", std::process::id()));
    std::fs::write(
        &bad,
        std::fs::read_to_string(manifests_dir().join("deployment.yaml"))
            .unwrap()
            .replace("  replicas: 2", "  replicaz: 2"),
    )
    .unwrap();
    let (valid, report) = validate(std::slice::from_ref(&bad));
    let _ = std::fs::remove_file(&bad);
    assert!(!valid);
    assert!(report.contains("'replicaz' was unexpected"), "{report}");
}

/// `wardctl inject` over every seed manifest with a pod, and over the other controller kinds
/// (StatefulSet, DaemonSet, Job, CronJob: `crates/ward-inject/src/testdata/workloads.yaml`) and a `kubectl
/// get -o yaml` List: the output is valid Kubernetes (strict schema; a List's items one by
/// one, since the schema has no List), and injecting it again through standard input
/// changes nothing.
#[test]
fn injected_seed_manifests_are_valid_kubernetes_and_injection_is_idempotent() {
    let dir = std::env::temp_dir().join(format!("ward-inject-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    let mut documents = 0;
    for seed in [
        "config/exam-lab/exam-scheduler.yaml",
        "config/exam-lab/professor-tools.yaml",
        "config/exam-lab/student-portal.yaml",
        "config/aura-lab/aura-api.yaml",
        "config/aura-lab/web-frontend.yaml",
        "crates/ward-inject/src/testdata/workloads.yaml",
        "crates/ward-inject/src/testdata/kubectl-get-list.yaml",
    ] {
        let out = ward_e2e::run_ok(
            Command::new(binary("wardctl"))
                .args(["inject", "-f"])
                .arg(workspace_root().join(seed)),
        );
        let injected = String::from_utf8(out.stdout).unwrap();
        assert!(injected.contains("name: ward-proxy"), "{seed}: {injected}");
        // Again, from standard input: nothing changes.
        let mut again = Command::new(binary("wardctl"))
            .args(["inject", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            again
                .stdin
                .take()
                .unwrap()
                .write_all(injected.as_bytes())
                .unwrap();
        }
        let again = again.wait_with_output().unwrap();
        assert_eq!(String::from_utf8(again.stdout).unwrap(), injected, "{seed}");
        let file = dir.join(seed.replace('/', "_"));
        let mut objects = Vec::new();
        for document in YamlLoader::load_from_str(&injected).unwrap() {
            match &document["kind"] {
                Yaml::String(kind) if kind == "List" => {
                    objects.extend(document["items"].as_vec().unwrap().iter().cloned())
                }
                _ => objects.push(document),
            }
        }
        let mut text = String::new();
        for object in &objects {
            yaml_rust2::YamlEmitter::new(&mut text)
                .dump(object)
                .unwrap();
            text.push('\n');
        }
        std::fs::write(&file, text).unwrap();
        documents += objects.len();
        files.push(file);
    }
    let result = validate(&files);
    let _ = std::fs::remove_dir_all(&dir);
    assert_all_valid(result, documents);
}

/// A manifest `wardctl inject` cannot handle: it says where and why, writes nothing on
/// standard output, and exits non-zero.
#[test]
fn inject_names_the_file_line_and_field_of_a_bad_annotation() {
    let bad = std::env::temp_dir().join(format!("ward-bad-pod-{}.yaml", std::process::id()));
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations:\n    traffic.sidecar.istio.io/excludeOutboundPorts: \"5432,db\"\nspec:\n  containers:\n  - name: web\n    image: nginx\n",
    )
    .unwrap();
    let out = Command::new(binary("wardctl"))
        .args(["inject", "-f"])
        .arg(&bad)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&bad);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: {}:6:52: metadata.annotations: annotation traffic.sidecar.istio.io/excludeOutboundPorts: `db` is not a port (1-65535)\n",
            bad.display()
        )
    );
}

#[test]
fn the_kustomization_names_every_manifest() {
    let kustomization = &load(&manifests_dir().join("kustomization.yaml"))[0];
    let mut listed: Vec<String> = kustomization["resources"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut present: Vec<String> = manifests()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    present.sort();
    assert_eq!(listed, present);
}

/// The Deployment's container, with the paths it mounts.
struct Container {
    args: Vec<String>,
    mounts: Vec<(String, String)>,
    probe_path: String,
}

fn xds_server_container() -> Container {
    let deployment = &load(&manifests_dir().join("deployment.yaml"))[0];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args = container["args"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mounts = container["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["mountPath"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    Container {
        args,
        mounts,
        probe_path: container["readinessProbe"]["httpGet"]["path"]
            .as_str()
            .unwrap()
            .to_string(),
    }
}

#[test]
fn the_deployments_command_line_starts_xds_server_with_the_configmap_mesh() {
    let container = xds_server_container();
    let root = std::env::temp_dir().join(format!(
        "ward-deploy-{}-{}",
        std::process::id(),
        free_port()
    ));
    let mount = |name: &str| {
        let path = container
            .mounts
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no mount {name}"))
            .1
            .clone();
        (path, root.join(name))
    };

    // The ConfigMap's files, as Kubernetes mounts them.
    let (config_path, config_dir) = mount("mesh-config");
    std::fs::create_dir_all(&config_dir).unwrap();
    let config_map = &load(&manifests_dir().join("mesh-config.yaml"))[0];
    for (file, text) in config_map["data"].as_hash().unwrap() {
        std::fs::write(
            config_dir.join(file.as_str().unwrap()),
            text.as_str().unwrap(),
        )
        .unwrap();
    }
    // The `cacerts` Secret: an intermediate in Istio's layout, signed by another xds-server.
    let (ca_path, ca_dir) = mount("cacerts");
    ward_e2e::run_ok(
        Command::new(binary("xds-server"))
            .args(["ca-intermediate", "--name", "deploy-test", "--out"])
            .arg(&ca_dir)
            .arg("--state-dir")
            .arg(root.join("root-ca")),
    );
    for file in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        assert!(ca_dir.join(file).is_file(), "{file}");
    }
    let (state_path, state_dir) = mount("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    // The wasm image volume: the module as `wardctl inject`'s pods mount it.
    let (wasm_path, wasm_dir) = mount("wasm");
    std::fs::create_dir_all(&wasm_dir).unwrap();
    std::fs::copy(ward_e2e::wasm_module(), wasm_dir.join("plugin.wasm")).unwrap();
    // `--kubernetes`: the API server is stood in for by one that has nothing yet (empty
    // lists, watches that stay open, no policy CRDs), reached through a kubeconfig.
    let (api, _) = ward_e2e::fake_api_server(Vec::new(), &[]);
    let kubeconfig = root.join("kubeconfig");
    ward_e2e::write_kubeconfig(&kubeconfig, &api);

    let admin = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = container
        .args
        .iter()
        .map(|a| match a.as_str() {
            a if a == config_path => config_dir.display().to_string(),
            a if a == ca_path => ca_dir.display().to_string(),
            a if a == state_path => state_dir.display().to_string(),
            a if a.starts_with(&format!("{wasm_path}/")) => {
                a.replacen(&wasm_path, &wasm_dir.display().to_string(), 1)
            }
            "0.0.0.0:15010" => format!("127.0.0.1:{}", free_port()),
            "0.0.0.0:15014" => admin.clone(),
            "0.0.0.0:15012" => format!("127.0.0.1:{}", free_port()),
            other => other.to_string(),
        })
        .collect();
    assert_ne!(
        args, container.args,
        "the paths and addresses were stood in for"
    );
    assert!(args.iter().any(|a| a == "--kubernetes"), "{args:?}");
    let mut server = Command::new(binary("xds-server"))
        .args(&args)
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let probe = Command::new("curl")
            .args([
                "-s",
                "-m",
                "2",
                &format!("http://{admin}{}", container.probe_path),
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&probe.stdout) == "ok\n" {
            let status = Command::new("curl")
                .args(["-s", "-m", "2", &format!("http://{admin}/status")])
                .output()
                .unwrap();
            break serde_json::from_slice::<serde_json::Value>(&status.stdout).unwrap();
        }
        if let Some(exit) = server.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            server
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            panic!(
                "xds-server exited ({exit}) with the Deployment's arguments {args:?}:\n{stderr}"
            );
        }
        assert!(Instant::now() < deadline, "xds-server never became ready");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&root);
    assert_eq!(status["config"]["generation"], 1, "{status}");
    assert!(status["config"]["last_error"].is_null(), "{status}");
}
