//! Injection over the seed labs' manifests (`config/`), checked against golden files
//! (`testdata/`; `WARD_UPDATE_GOLDEN=1 cargo test -p xds-server inject` rewrites them).

use std::path::PathBuf;

use super::*;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn options() -> InjectOptions {
    InjectOptions {
        init_image: "ward/xds-server:test".into(),
        wasm_image: "ward/wasm-authz:test".into(),
        ..InjectOptions::default()
    }
}

/// The seed manifests with a pod template.
const SEEDS: [&str; 5] = [
    "config/exam-lab/exam-scheduler.yaml",
    "config/exam-lab/professor-tools.yaml",
    "config/exam-lab/student-portal.yaml",
    "config/aura-lab/aura-api.yaml",
    "config/aura-lab/web-frontend.yaml",
];

/// True if `original`'s lines all appear in `injected`, in order.
fn keeps_every_line(original: &str, injected: &str) -> bool {
    let mut rest = injected.lines();
    original.lines().all(|line| rest.any(|l| l == line))
}

#[test]
fn seed_manifests_match_their_golden_injection_and_keep_every_line() {
    for seed in SEEDS {
        let text = std::fs::read_to_string(workspace().join(seed)).unwrap();
        let out = inject(&text, seed, &options()).unwrap();
        assert!(!out.injected.is_empty(), "{seed}: nothing injected");
        assert!(keeps_every_line(&text, &out.text), "{seed}:\n{}", out.text);
        let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/testdata")
            .join(
                seed.rsplit('/')
                    .next()
                    .unwrap()
                    .replace(".yaml", ".injected.yaml"),
            );
        if std::env::var_os("WARD_UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &out.text).unwrap();
        }
        let expected = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{}: run with WARD_UPDATE_GOLDEN=1", golden.display()));
        assert_eq!(out.text, expected, "{seed}");
        // Injecting twice changes nothing.
        let again = inject(&out.text, seed, &options()).unwrap();
        assert_eq!(again.text, out.text, "{seed}: not idempotent");
        assert!(again.injected.is_empty());
    }
}

#[test]
fn the_injected_pod_has_the_sidecar_the_capture_and_the_bootstrap() {
    let text = std::fs::read_to_string(workspace().join("config/aura-lab/aura-api.yaml")).unwrap();
    let out = inject(&text, "aura-api.yaml", &options()).unwrap();
    assert_eq!(out.injected, vec!["Deployment aura-api".to_string()]);
    let (documents, _) = yaml::parse_documents(&out.text).unwrap();
    let deployment = documents
        .iter()
        .find(|d| text_of(d, "kind") == Some("Deployment"))
        .unwrap();
    let template = get(get(deployment, "spec").unwrap(), "template").unwrap();
    let spec = get(template, "spec").unwrap();
    let names = |key: &str| -> Vec<String> {
        match &get(spec, key).unwrap().value {
            Value::Sequence(items) => items
                .iter()
                .map(|i| text_of(i, "name").unwrap().to_string())
                .collect(),
            _ => panic!("{key} is not a list"),
        }
    };
    assert_eq!(names("initContainers"), ["ward-init", "ward-bootstrap"]);
    assert_eq!(names("containers")[0], "ward-proxy");
    assert_eq!(names("containers").len(), 2, "the app container stays");
    assert_eq!(
        names("volumes"),
        [
            "ward-bootstrap",
            "ward-wasm",
            "ward-credentials",
            "ward-token",
            "ward-root-cert"
        ]
    );
    let annotations = string_map(get(get(template, "metadata").unwrap(), "annotations"));
    assert_eq!(
        annotations.get(INJECTED_ANNOTATION).map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(out
        .text
        .contains("-A WARD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"));
}

#[test]
fn opted_out_and_host_network_pods_are_left_alone_with_a_note() {
    for (extra, why) in [
        (
            "      annotations:\n        sidecar.istio.io/inject: \"false\"\n",
            "sidecar.istio.io/inject: false",
        ),
        (
            "      annotations:\n        linkerd.io/inject: disabled\n",
            "linkerd.io/inject: disabled",
        ),
    ] {
        let text = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n{extra}      labels:\n        app: web\n    spec:\n      containers:\n      - name: web\n        image: nginx\n"
        );
        let out = inject(&text, "web.yaml", &options()).unwrap();
        assert_eq!(out.text, text);
        assert_eq!(
            out.notes,
            vec![format!("web.yaml: Deployment web: not injected ({why})")]
        );
    }
    let host = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: agent\nspec:\n  hostNetwork: true\n  containers:\n  - name: agent\n    image: agent\n";
    let out = inject(host, "agent.yaml", &options()).unwrap();
    assert_eq!(out.text, host);
    assert!(out.notes[0].contains("hostNetwork"), "{:?}", out.notes);
}

#[test]
fn a_pod_without_annotations_or_init_containers_gets_them_and_other_kinds_pass_through() {
    let text = "# a comment stays\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels:\n    app: web\nspec:\n  serviceAccountName: web-sa\n  containers:\n    - name: web\n      image: nginx\n  restartPolicy: Always\n";
    let out = inject(text, "pod.yaml", &options()).unwrap();
    assert!(keeps_every_line(text, &out.text), "{}", out.text);
    assert_eq!(out.injected, vec!["Pod web".to_string()]);
    // The list's own style (items indented under the key) is kept for the new lists.
    assert!(
        out.text
            .contains("  initContainers:\n    - name: ward-init\n"),
        "{}",
        out.text
    );
    assert!(
        out.text.contains("  annotations:\n    ward.dev/injected:"),
        "{}",
        out.text
    );
    assert!(out.text.contains("value: \"web-sa\""), "{}", out.text);
    assert!(out.text.contains("audience: ward-xds"), "{}", out.text);
    assert_eq!(
        inject(&out.text, "pod.yaml", &options()).unwrap().text,
        out.text
    );
}

#[test]
fn flow_style_containers_and_bad_capture_annotations_are_refused_with_their_place() {
    let flow = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers: [{name: web, image: nginx}]\n";
    assert_eq!(
        inject(flow, "flow.yaml", &options()).unwrap_err().to_string(),
        "flow.yaml:6:17: spec.containers: written in flow style (`[...]`): inject edits block-style lists only"
    );
    let bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations:\n    traffic.sidecar.istio.io/excludeOutboundPorts: \"5432,db\"\nspec:\n  containers:\n  - name: web\n    image: nginx\n";
    let err = inject(bad, "bad.yaml", &options()).unwrap_err().to_string();
    assert_eq!(
        err,
        "bad.yaml:6:52: metadata.annotations: annotation traffic.sidecar.istio.io/excludeOutboundPorts: `db` is not a port (1-65535)"
    );
}

/// Manifests of `testdata/` (not seeds): their golden injections, every line kept, and
/// injecting twice changes nothing.
#[test]
fn other_kinds_and_kubectl_lists_match_their_golden_injection() {
    for name in ["workloads", "kubectl-get-list"] {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/testdata");
        let text = std::fs::read_to_string(dir.join(format!("{name}.yaml"))).unwrap();
        let out = inject(&text, name, &options()).unwrap();
        assert!(keeps_every_line(&text, &out.text), "{name}:\n{}", out.text);
        let golden = dir.join(format!("{name}.injected.yaml"));
        if std::env::var_os("WARD_UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &out.text).unwrap();
        }
        let expected = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{}: run with WARD_UPDATE_GOLDEN=1", golden.display()));
        assert_eq!(out.text, expected, "{name}");
        let again = inject(&out.text, name, &options()).unwrap();
        assert_eq!(again.text, out.text, "{name}: not idempotent");
        assert!(again.injected.is_empty());
    }
}

/// The names of the list `key` of the pod spec at `path` in the `index`th object.
fn names_at(objects: &[&Node], index: usize, path: &[&str], key: &str) -> Vec<String> {
    let mut node = objects[index];
    for step in path {
        node = get(node, step).unwrap_or_else(|| panic!("no {step}"));
    }
    match get(node, key).map(|n| &n.value) {
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|i| text_of(i, "name").unwrap().to_string())
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn every_controller_kind_is_injected_and_pods_that_complete_get_a_native_sidecar() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/testdata");
    let text = std::fs::read_to_string(dir.join("workloads.yaml")).unwrap();
    let out = inject(&text, "workloads.yaml", &options()).unwrap();
    assert_eq!(
        out.injected,
        [
            "StatefulSet db",
            "DaemonSet log-shipper",
            "Job migrate",
            "CronJob report"
        ]
    );
    assert_eq!(
        out.notes,
        ["workloads.yaml: Deployment legacy: not injected (ward.dev/inject: false)"]
    );
    let (documents, _) = yaml::parse_documents(&out.text).unwrap();
    let objects: Vec<&Node> = documents.iter().collect();
    let template = ["spec", "template", "spec"];
    let cron = ["spec", "jobTemplate", "spec", "template", "spec"];
    // Long-running pods: the proxy is the first container.
    for i in [0, 1] {
        assert_eq!(
            names_at(&objects, i, &template, "initContainers"),
            ["ward-init", "ward-bootstrap"]
        );
        assert_eq!(
            names_at(&objects, i, &template, "containers")[0],
            "ward-proxy"
        );
    }
    // Pods that run to completion: the proxy is a native sidecar, last of the init
    // containers (after the bootstrap it needs), and not among the containers.
    for (i, path) in [(2, &template[..]), (3, &cron[..])] {
        assert_eq!(
            names_at(&objects, i, path, "initContainers"),
            ["ward-init", "ward-bootstrap", "ward-proxy"]
        );
        assert!(!names_at(&objects, i, path, "containers").contains(&"ward-proxy".to_string()));
    }
    assert_eq!(out.text.matches("  restartPolicy: Always\n").count(), 2);
    // The opted-out Deployment is byte for byte as written.
    let legacy = &text[text.find("kind: Deployment").unwrap()..];
    assert!(out.text.ends_with(legacy), "{}", out.text);
}

#[test]
fn a_kubectl_list_has_each_item_injected() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/testdata");
    let text = std::fs::read_to_string(dir.join("kubectl-get-list.yaml")).unwrap();
    let out = inject(&text, "-", &options()).unwrap();
    assert_eq!(out.injected, ["Deployment a", "Deployment b"]);
    let (documents, _) = yaml::parse_documents(&out.text).unwrap();
    let Some(Value::Sequence(items)) = get(&documents[0], "items").map(|n| &n.value) else {
        panic!("no items")
    };
    let items: Vec<&Node> = items.iter().collect();
    for i in 0..2 {
        let template = ["spec", "template", "spec"];
        assert_eq!(
            names_at(&items, i, &template, "containers")[0],
            "ward-proxy"
        );
        assert_eq!(
            names_at(&items, i, &template, "initContainers"),
            ["ward-init", "ward-bootstrap"]
        );
        let annotations = string_map(get(
            get(
                get(get(items[i], "spec").unwrap(), "template").unwrap(),
                "metadata",
            )
            .unwrap(),
            "annotations",
        ));
        assert!(annotations.contains_key(INJECTED_ANNOTATION));
    }
    // A List whose items are not a list is refused, not passed through.
    let err = inject("apiVersion: v1\nkind: List\nitems: {}\n", "-", &options())
        .unwrap_err()
        .to_string();
    assert_eq!(err, "-:3:8: items: expected a list of objects");
}

#[test]
fn the_webhook_makes_a_job_pod_proxy_a_native_sidecar() {
    let pod = serde_json::json!({
        "metadata": {"generateName": "migrate-", "labels": {"app": "migrate"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "migrate", "image": "m"}]}
    });
    let patch = pod_patch(&pod, &options()).unwrap().unwrap();
    let paths: Vec<&str> = patch.iter().map(|p| p["path"].as_str().unwrap()).collect();
    assert!(
        !paths.iter().any(|p| p.starts_with("/spec/containers")),
        "{paths:?}"
    );
    let init = patch
        .iter()
        .find(|p| p["path"] == "/spec/initContainers")
        .unwrap();
    let names: Vec<&str> = init["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ward-init", "ward-bootstrap", "ward-proxy"]);
    assert_eq!(init["value"][2]["restartPolicy"], "Always");
    // A long-running pod keeps the proxy among its containers.
    let mut web = pod.clone();
    web["spec"]["restartPolicy"] = serde_json::json!("Always");
    let patch = pod_patch(&web, &options()).unwrap().unwrap();
    assert!(patch.iter().any(|p| p["path"] == "/spec/containers/0"));
}
