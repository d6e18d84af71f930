//! Injection over the seed labs' manifests (`config/`), checked against golden files
//! (`testdata/`; `WARD_UPDATE_GOLDEN=1 cargo test -p xds-server inject` rewrites them).

use std::path::PathBuf;

use super::*;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
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
            .join("src/inject/testdata")
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
