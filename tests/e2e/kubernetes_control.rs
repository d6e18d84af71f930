//! xds-server's HTTPS port on Kubernetes, end to end with the real binaries and a real Envoy:
//! a pod's service-account token is exchanged (TokenReview) for its sidecar's bootstrap
//! credential, the sidecar then gets its configuration over mutual TLS, and the admission
//! webhook answers an AdmissionReview with the sidecar's JSON Patch. The API server is the
//! HTTP-level stand-in of `ward_e2e::fake_api_server` (none can run on these machines).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ward_e2e::{
    binary, envoy_binary, eventually, fake_api_server, free_port, workspace_root, write_kubeconfig,
};

/// A child process stopped when the test ends, passing or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pod_bootstrap(
    dir: &Path,
    token: &str,
    url: &str,
    root: &Path,
    xds: &str,
) -> std::process::Output {
    std::fs::create_dir_all(dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).unwrap();
    Command::new(binary("xds-server"))
        .arg("pod-bootstrap")
        .args(["--xds-address", xds, "--credential-url", url])
        .arg("--token-file")
        .arg(&token_file)
        .arg("--root-cert")
        .arg(root)
        .arg("--credentials-dir")
        .arg(dir.join("credentials"))
        .arg("--out")
        .arg(dir.join("envoy.json"))
        .envs([
            ("POD_NAME", "exam-scheduler-0"),
            ("POD_NAMESPACE", "default"),
            ("POD_IP", "127.78.0.1"),
            ("SERVICE_ACCOUNT", "exam-scheduler-sa"),
            ("WARD_WORKLOAD", "exam-scheduler"),
        ])
        .output()
        .unwrap()
}

#[test]
fn a_pod_token_buys_its_sidecar_a_credential_and_the_webhook_injects() {
    let dir = std::env::temp_dir().join(format!("ward-kube-control-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (api, patches) = fake_api_server(
        vec![
            (
                "token-of-exam-scheduler".to_string(),
                "system:serviceaccount:default:exam-scheduler-sa".to_string(),
            ),
            // A real user's token, valid for the API server but no service account's.
            (
                "token-of-alice".to_string(),
                "alice@example.com".to_string(),
            ),
            // The pod's own account, but minted for the API server's audience, not Ward's.
            (
                "other-audience-token-of-exam-scheduler".to_string(),
                "system:serviceaccount:default:exam-scheduler-sa".to_string(),
            ),
        ],
        &["default", "shop"],
    );
    let kubeconfig = dir.join("kubeconfig");
    write_kubeconfig(&kubeconfig, &api);
    let state = dir.join("state");
    let xds = format!("127.0.0.1:{}", free_port());
    let https = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let log = dir.join("xds-server.log");
    let server = Command::new(binary("xds-server"))
        .args(["serve", "--kubernetes", "--config"])
        .arg(workspace_root().join("config/exam-lab"))
        .args([
            "--xds-address",
            &xds,
            "--https-address",
            &https,
            "--admin-address",
            &admin,
        ])
        .arg("--state-dir")
        .arg(&state)
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Stopped however the test ends.
    let server = KillOnDrop(server);
    let root = state.join("ca/root-cert.pem");
    let url = format!("https://{https}/v1/credential");
    eventually(Duration::from_secs(20), || {
        std::net::TcpStream::connect(&https)
            .map(|_| ())
            .map_err(|e| {
                anyhow::anyhow!("{e}: {}", std::fs::read_to_string(&log).unwrap_or_default())
            })
    })
    .unwrap();
    assert!(root.is_file(), "the CA root is in the state directory");
    // The root is published in every namespace, for the injected pods to trust xds-server.
    let root_pem = std::fs::read_to_string(&root).unwrap();
    eventually(Duration::from_secs(10), || {
        let patches = patches.lock().unwrap();
        let published: Vec<&str> = patches
            .iter()
            .filter(|(_, cm)| cm["data"]["root-cert.pem"] == root_pem.as_str())
            .map(|(path, _)| path.as_str())
            .collect();
        if published.contains(&"/api/v1/namespaces/shop/configmaps/ward-root-cert")
            && published.contains(&"/api/v1/namespaces/default/configmaps/ward-root-cert")
        {
            Ok(())
        } else {
            Err(anyhow::anyhow!("published: {published:?}"))
        }
    })
    .unwrap();
    // And it is the webhook's caBundle, for the API server to trust the injector.
    let webhook_patch = eventually(Duration::from_secs(10), || {
        patches
            .lock()
            .unwrap()
            .iter()
            .find(|(path, _)| {
                path.ends_with("/mutatingwebhookconfigurations/ward-sidecar-injector")
            })
            .map(|(_, patch)| patch.clone())
            .ok_or_else(|| anyhow::anyhow!("no caBundle patch"))
    })
    .unwrap();
    use base64::Engine;
    let bundle = base64::engine::general_purpose::STANDARD.encode(&root_pem);
    assert_eq!(
        webhook_patch,
        serde_json::json!([
            {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle},
            {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": bundle},
        ])
    );

    // A refused token: the bootstrap fails with `words` and writes no credential.
    let refused = |name: &str, token: &str, words: &str| {
        let out = pod_bootstrap(&dir.join(name), token, &url, &root, &xds);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(words), "{stderr}");
        assert!(!dir.join(name).join("credentials/key.pem").exists());
    };
    // A token the API server does not vouch for gets nothing.
    refused(
        "stranger",
        "stolen",
        "xds-server refused the token (403 Forbidden): invalid bearer token",
    );
    // Authenticated, but not a service account: no workload identity to give it.
    refused(
        "user",
        "token-of-alice",
        "alice@example.com is not a service account",
    );
    // The right service account, but a token minted for another audience (one stolen from
    // a pod's default API token, say): refused.
    refused(
        "audience",
        "other-audience-token-of-exam-scheduler",
        "the token is not for audience ward-xds",
    );

    // The pod's own token: a credential for its service account, then a bootstrap.
    let pod = dir.join("pod");
    let out = pod_bootstrap(&pod, "token-of-exam-scheduler", &url, &root, &xds);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "bootstrap credential for spiffe://cluster.local/ns/default/sa/exam-scheduler-sa written to"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(pod.join("credentials/key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the key is the owner's only");

    // The sidecar with that credential is served over mutual TLS and syncs.
    let envoy = Command::new(envoy_binary())
        .arg("-c")
        .arg(pod.join("envoy.json"))
        .args(["--disable-hot-restart", "-l", "warning"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("envoy.log")).unwrap())
        .spawn()
        .unwrap();
    let envoy = KillOnDrop(envoy);
    let synced = eventually(Duration::from_secs(20), || {
        let out = Command::new("curl")
            .args(["-s", &format!("http://{admin}/status")])
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let proxy = status["proxies"]
            .as_array()
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p["node_id"] == "exam-scheduler-0.default")
                    .cloned()
            })
            .ok_or_else(|| anyhow::anyhow!("not connected: {status}"))?;
        if proxy["synced"] == true {
            Ok(proxy)
        } else {
            Err(anyhow::anyhow!("not synced: {proxy}"))
        }
    })
    .unwrap();
    drop(envoy);
    assert_eq!(synced["types"]["SDS"]["state"], "SYNCED", "{synced}");

    // The admission webhook, over the same HTTPS port, trusted through the same root.
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "7", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "web-", "namespace": "shop", "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}
    });
    let out = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(&root)
        .args([
            "-H",
            "content-type: application/json",
            "-d",
            &review.to_string(),
        ])
        .arg(format!("https://{https}/inject"))
        .output()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(answer["response"]["uid"], "7", "{answer}");
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert_eq!(answer["response"]["patchType"], "JSONPatch", "{answer}");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    drop(server);
    assert!(
        log_text.contains("bootstrap credential issued for a service-account token"),
        "{log_text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
