use super::*;

fn lab_sources() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/exam-lab");
    [
        "exam-scheduler.yaml",
        "professor-tools.yaml",
        "student-portal.yaml",
    ]
    .iter()
    .map(|f| {
        (
            f.to_string(),
            std::fs::read_to_string(format!("{dir}/{f}")).unwrap(),
        )
    })
    .collect()
}

fn errors_of(sources: &[(String, String)]) -> Vec<Diagnostic> {
    match load_sources(sources) {
        Err(ConfigError::Invalid(d)) => d,
        other => panic!("expected errors, got {other:?}"),
    }
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: hashicorp/http-echo
        ports:
        - containerPort: 5678
          name: http
";

#[test]
fn the_exam_lab_loads_unchanged() {
    let loaded = load_sources(&lab_sources()).unwrap();
    let mesh = &loaded.mesh;
    assert_eq!(mesh.workloads.len(), 3);
    assert_eq!(mesh.services.len(), 3);
    let scheduler = mesh.workload("default", "exam-scheduler").unwrap();
    assert_eq!(
        mesh.identity(scheduler),
        "spiffe://cluster.local/ns/default/sa/exam-scheduler-sa"
    );
    assert_eq!(mesh.inbound_ports(scheduler), vec![8080]);
    let portal = mesh.workload("default", "student-portal").unwrap();
    assert_eq!(
        mesh.inbound_ports(portal),
        vec![8080],
        "Service targetPort accepted without a container port"
    );
    // Only the two client-only pods' undeclared targetPorts are worth a warning.
    assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
    assert!(loaded
        .warnings
        .iter()
        .all(|w| w.field == "spec.ports[0].targetPort"));
    assert_eq!(loaded.warnings[0].to_string(), "professor-tools.yaml:38:5: spec.ports[0].targetPort: targetPort 8080: no container declares it; the sidecar will accept on it and the app must listen there");
}

#[test]
fn duplicate_key_is_an_error_with_its_line() {
    let text = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: a\n  name: b\n";
    let errors = errors_of(&[("sa.yaml".into(), text.into())]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].line, 5);
    assert_eq!(errors[0].field, "metadata.name");
    assert!(errors[0]
        .to_string()
        .starts_with("sa.yaml:5:3: metadata.name: duplicate key `name` (first at line 4)"));
}

#[test]
fn bad_yaml_names_line_and_column() {
    let errors = errors_of(&[(
        "bad.yaml".into(),
        "kind: [Service\nmetadata: {name: x}\n".into(),
    )]);
    assert_eq!(errors[0].file, "bad.yaml");
    assert!(errors[0].message.starts_with("invalid YAML"));
    assert!(errors[0].line >= 1 && errors[0].column >= 1);
}

#[test]
fn wrong_type_names_the_field() {
    let text = DEPLOYMENT.replace("containerPort: 5678", "containerPort: \"abc\"");
    let errors = errors_of(&[("d.yaml".into(), text)]);
    assert_eq!(
        errors[0].field,
        "spec.template.spec.containers[0].ports[0].containerPort"
    );
    assert_eq!(errors[0].line, 16);
    assert!(
        errors[0].message.contains("expected an integer"),
        "{}",
        errors[0]
    );
}

#[test]
fn replicas_must_be_a_sane_number() {
    let text = DEPLOYMENT.replace("spec:\n  selector", "spec:\n  replicas: -1\n  selector");
    let errors = errors_of(&[("d.yaml".into(), text)]);
    assert_eq!(errors[0].field, "spec.replicas");
}

#[test]
fn selector_matching_nothing_is_an_error() {
    let service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  selector:\n    app: nobody\n  ports:\n  - port: 80\n";
    let errors = errors_of(&[
        ("d.yaml".into(), DEPLOYMENT.into()),
        ("s.yaml".into(), service.into()),
    ]);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        (
            errors[0].file.as_str(),
            errors[0].line,
            errors[0].field.as_str()
        ),
        ("s.yaml", 6, "spec.selector")
    );
    assert!(errors[0].message.contains("matches no Deployment"));
}

#[test]
fn target_ports_resolve_by_name_and_are_checked() {
    let service = |target: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  selector: {{app: web}}\n  ports:\n  - port: 80\n    targetPort: {target}\n")
    };
    let loaded = load_sources(&[
        ("d.yaml".into(), DEPLOYMENT.into()),
        ("s.yaml".into(), service("http")),
    ])
    .unwrap();
    assert_eq!(loaded.mesh.services[0].ports[0].target_port, 5678);

    let errors = errors_of(&[
        ("d.yaml".into(), DEPLOYMENT.into()),
        ("s.yaml".into(), service("grpc")),
    ]);
    assert_eq!(errors[0].line, 9);
    assert!(errors[0].message.contains("port named `grpc`"));

    let errors = errors_of(&[
        ("d.yaml".into(), DEPLOYMENT.into()),
        ("s.yaml".into(), service("9090")),
    ]);
    assert!(
        errors[0].message.contains("targetPort 9090 is not exposed"),
        "{}",
        errors[0]
    );
}

#[test]
fn unsupported_fields_and_kinds_are_reported_not_dropped() {
    let text = DEPLOYMENT.replace("        image: hashicorp/http-echo\n", "        image: hashicorp/http-echo\n        livenessProbe:\n          httpGet: {path: /, port: 5678}\n");
    let peer = "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\nspec:\n  mtls: {mode: STRICT}\n";
    let loaded = load_sources(&[("d.yaml".into(), format!("{text}{peer}"))]).unwrap();
    let messages: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(messages.contains(&"d.yaml:15:9: spec.template.spec.containers[0].livenessProbe: ignored: not supported by Ward".to_string()), "{messages:#?}");
    assert!(messages.iter().any(|m| m.starts_with("d.yaml:22:1: kind: kind PeerAuthentication (apiVersion security.istio.io/v1) is not supported")), "{messages:#?}");
}

#[test]
fn duplicate_objects_are_refused() {
    let errors = errors_of(&[
        ("a.yaml".into(), DEPLOYMENT.into()),
        ("b.yaml".into(), DEPLOYMENT.into()),
    ]);
    assert!(
        errors[0]
            .to_string()
            .contains("duplicate Deployment default/web (first defined at a.yaml:1)"),
        "{}",
        errors[0]
    );
}

#[test]
fn mesh_config_sets_trust_domain() {
    let mesh_config = "apiVersion: ward.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec:\n  trustDomain: example.org\n  rootNamespace: ward-system\n";
    let loaded = load_sources(&[
        ("d.yaml".into(), DEPLOYMENT.into()),
        ("m.yaml".into(), mesh_config.into()),
    ])
    .unwrap();
    assert_eq!(loaded.mesh.trust_domain, "example.org");
    assert_eq!(loaded.mesh.root_namespace, "ward-system");
    assert_eq!(
        loaded.mesh.identity(&loaded.mesh.workloads[0]),
        "spiffe://example.org/ns/default/sa/default"
    );
}

#[test]
fn addresses_are_stable_when_workloads_are_added() {
    let before = load_sources(&lab_sources()).unwrap().mesh;
    let mut sources = lab_sources();
    sources.push(("d.yaml".into(), DEPLOYMENT.into()));
    let after = load_sources(&sources).unwrap().mesh;
    for w in &before.workloads {
        let a = after.workload(&w.namespace, &w.name).unwrap();
        assert_eq!(w.instances, a.instances);
    }
    let mut all: Vec<_> = after
        .workloads
        .iter()
        .flat_map(|w| w.instances.iter().map(|i| i.address))
        .collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "addresses are unique");
}
