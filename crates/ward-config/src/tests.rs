use std::net::Ipv4Addr;

use super::*;

// The seed labs' manifests, as the labs give them.
const EXAM_SCHEDULER: &str = r#"# ServiceAccount
apiVersion: v1
kind: ServiceAccount
metadata:
  name: exam-scheduler-sa
---
# Deployment
apiVersion: apps/v1
kind: Deployment
metadata:
  name: exam-scheduler
spec:
  replicas: 1
  selector:
    matchLabels:
      app: exam-scheduler
  template:
    metadata:
      labels:
        app: exam-scheduler
    spec:
      serviceAccountName: exam-scheduler-sa
      containers:
        - name: exam-scheduler
          image: alepispi/exam-scheduler:latest
          ports:
            - containerPort: 8080
---
# Service
apiVersion: v1
kind: Service
metadata:
  name: exam-scheduler
spec:
  selector:
    app: exam-scheduler
  ports:
    - port: 80
      targetPort: 8080
"#;

/// professor-tools and student-portal: client-only curl pods without container ports.
fn curl_client(name: &str) -> String {
    format!(
        r#"# ServiceAccount
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {name}-sa
---
# Deployment
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      serviceAccountName: {name}-sa
      containers:
      - name: {name}
        image: curlimages/curl
        command: [ "sleep", "3600" ]
---
# Service
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  selector:
    app: {name}
  ports:
  - port: 80
    targetPort: 8080
"#
    )
}

const AURA_API: &str = r#"# Deployment
apiVersion: apps/v1
kind: Deployment
metadata:
  name: aura-api
spec:
  replicas: 3
  selector:
    matchLabels:
      app: aura-api
  template:
    metadata:
      labels:
        app: aura-api
    spec:
      containers:
      - name: aura-api
        image: servicemeshncs/aura-api:latest
        ports:
        - containerPort: 8080
        env:
        - name: ERROR_RATE
          value: "0.4"
        - name: MIN_DELAY_S
          value: "0.2"
        - name: MAX_DELAY_S
          value: "3.0"
---
# Service
apiVersion: v1
kind: Service
metadata:
  name: aura-api
spec:
  selector:
    app: aura-api
  ports:
  - port: 80
    targetPort: 8080
"#;

fn exam_lab() -> Vec<(String, String)> {
    vec![
        ("exam-scheduler.yaml".into(), EXAM_SCHEDULER.into()),
        (
            "professor-tools.yaml".into(),
            curl_client("professor-tools"),
        ),
        ("student-portal.yaml".into(), curl_client("student-portal")),
    ]
}

/// A Deployment `web` with a named port, 14 lines; its container starts on line 12.
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

fn service(selector: &str, target: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  selector: {{app: {selector}}}\n  ports:\n  - port: 80\n    targetPort: {target}\n")
}

fn sources(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect()
}

fn errors_of(files: &[(&str, &str)]) -> Vec<Diagnostic> {
    match load_sources(&sources(files)) {
        Err(ConfigError::Invalid(d)) => d,
        other => panic!("expected errors, got {other:#?}"),
    }
}

fn warnings_of(files: &[(&str, &str)]) -> Vec<String> {
    match load_sources(&sources(files)) {
        Ok(loaded) => loaded.warnings.iter().map(ToString::to_string).collect(),
        Err(e) => panic!("expected success, got:\n{e}"),
    }
}

#[test]
fn the_exam_lab_loads_unchanged() {
    let loaded = load_sources(&exam_lab()).unwrap();
    let mesh = &loaded.mesh;
    assert_eq!(mesh.trust_domain, "cluster.local");
    assert_eq!(mesh.root_namespace, "istio-system");
    assert_eq!(mesh.namespaces, vec!["default"]);
    assert_eq!(mesh.service_accounts.len(), 3);
    let names: Vec<&str> = mesh.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["exam-scheduler", "professor-tools", "student-portal"]
    );
    let services: Vec<&str> = mesh.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(services, names);
    for w in &mesh.workloads {
        assert_eq!(
            mesh.identity(w).to_string(),
            format!("spiffe://cluster.local/ns/default/sa/{}-sa", w.name)
        );
        assert_eq!(w.instances.len(), 1);
        assert_eq!(w.instances[0].name, format!("{}-0", w.name));
        assert_eq!(mesh.inbound_ports(w), vec![8080]);
    }
    let scheduler = mesh.workload("default", "exam-scheduler").unwrap();
    assert_eq!(
        scheduler.containers[0].image,
        "alepispi/exam-scheduler:latest"
    );
    assert_eq!(scheduler.source.line, 8);
    let tools = mesh.workload("default", "professor-tools").unwrap();
    assert_eq!(tools.containers[0].command, vec!["sleep", "3600"]);
    let service = &mesh.services[0];
    assert_eq!(
        service.backends,
        vec![("default".into(), "exam-scheduler".into())]
    );
    assert_eq!(
        (service.ports[0].port, service.ports[0].target_port),
        (80, 8080)
    );
    assert_eq!(service.ports[0].protocol, "TCP");

    // Only the two client-only pods' undeclared targetPorts are worth a warning.
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec![
            "professor-tools.yaml:38:17: spec.ports[0].targetPort: targetPort 8080: no container declares it; the sidecar will accept on it and the app must listen there",
            "student-portal.yaml:38:17: spec.ports[0].targetPort: targetPort 8080: no container declares it; the sidecar will accept on it and the app must listen there",
        ]
    );
}

#[test]
fn the_aura_lab_loads_with_three_instances() {
    let loaded = load_str("aura-api.yaml", AURA_API).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let mesh = &loaded.mesh;
    let api = mesh.workload("default", "aura-api").unwrap();
    assert_eq!(api.service_account, "default");
    assert_eq!(
        mesh.identity(api).to_string(),
        "spiffe://cluster.local/ns/default/sa/default"
    );
    assert_eq!(
        api.containers[0].env,
        vec![
            ("ERROR_RATE".to_string(), "0.4".to_string()),
            ("MIN_DELAY_S".to_string(), "0.2".to_string()),
            ("MAX_DELAY_S".to_string(), "3.0".to_string()),
        ]
    );
    let names: Vec<&str> = api.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec!["aura-api-0", "aura-api-1", "aura-api-2"]);
    let [a, b, _, _] = api.instances[0].address.octets();
    for (i, instance) in api.instances.iter().enumerate() {
        let i = i as u8;
        assert_eq!(instance.index, u32::from(i));
        assert_eq!(
            instance.address,
            Ipv4Addr::new(a, b, api.instances[0].address.octets()[2], i + 1)
        );
        assert_eq!(
            instance.app_address,
            Ipv4Addr::new(a, b, api.instances[0].address.octets()[2], i + 129)
        );
    }
    assert_eq!(a, 127);
    assert!(b >= 10);
}

#[test]
fn duplicate_key_is_an_error_with_its_line() {
    let text = "apiVersion: ward.dev/v1alpha1
kind: MeshConfig
metadata:
  name: mesh
spec:
  defaults:
    retry:
      condition: connect-failure
      attempts: 2
      condition: 5xx
";
    let errors = errors_of(&[("mesh.yaml", text)]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!((errors[0].line, errors[0].column), (10, 7));
    assert_eq!(errors[0].field, "spec.defaults.retry.condition");
    assert!(
        errors[0].to_string().starts_with(
            "mesh.yaml:10:7: spec.defaults.retry.condition: duplicate key `condition` (first at line 8)"
        ),
        "{}",
        errors[0]
    );
}

#[test]
fn bad_yaml_names_line_and_column_and_other_files_still_report() {
    let bad = "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n   bad: indentation\n";
    let other = DEPLOYMENT.replace("containerPort: 5678", "containerPort: abc");
    let errors = errors_of(&[("bad.yaml", bad), ("d.yaml", &other)]);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_eq!(
        errors[0].to_string(),
        "bad.yaml:5:7: metadata: invalid YAML: mapping values are not allowed in this context"
    );
    assert_eq!(errors[1].file, "d.yaml");

    let errors = errors_of(&[("tab.yaml", "a: [1, 2\nb: 3\n")]);
    assert_eq!((errors[0].line, errors[0].column), (2, 2));
}

#[test]
fn wrong_types_name_the_field_and_the_value() {
    let text = DEPLOYMENT.replace("containerPort: 5678", "containerPort: \"abc\"");
    let errors = errors_of(&[("d.yaml", &text)]);
    assert_eq!(
        errors[0].to_string(),
        "d.yaml:16:26: spec.template.spec.containers[0].ports[0].containerPort: expected an integer, found the string \"abc\""
    );

    let text = DEPLOYMENT.replace("spec:\n  selector", "spec:\n  replicas: -1\n  selector");
    let errors = errors_of(&[("d.yaml", &text)]);
    assert_eq!(
        errors[0].to_string(),
        "d.yaml:6:13: spec.replicas: -1 is out of range: expected 0 to 2147483647"
    );

    let text = DEPLOYMENT.replace("spec:\n  selector", "spec:\n  replicas: \"3\"\n  selector");
    let errors = errors_of(&[("d.yaml", &text)]);
    assert!(
        errors[0].message.contains("found the string \"3\""),
        "{}",
        errors[0]
    );

    // A number where Kubernetes wants a string is refused, with the fix.
    let text = AURA_API.replace("value: \"0.4\"", "value: 0.4");
    let errors = errors_of(&[("a.yaml", &text)]);
    assert_eq!(
        errors[0].to_string(),
        "a.yaml:23:18: spec.template.spec.containers[0].env[0].value: expected a string, found the number 0.4; quote it (\"0.4\") to make it one"
    );

    let text =
        service("web", "http").replace("  - port: 80\n    targetPort: http\n", "    port: 80\n");
    let errors = errors_of(&[("d.yaml", DEPLOYMENT), ("s.yaml", &text)]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        errors[0].to_string(),
        "s.yaml:8:5: spec.ports: expected a list, found a mapping"
    );
}

#[test]
fn missing_required_fields_are_all_reported() {
    let text = "apiVersion: apps/v1
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
        ports:
        - name: http
---
apiVersion: v1
kind: Service
metadata:
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - targetPort: 80
";
    let errors = errors_of(&[("x.yaml", text)]);
    let found: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        vec![
            "x.yaml:13:9: spec.template.spec.containers[0].image: required field is missing",
            "x.yaml:15:11: spec.template.spec.containers[0].ports[0].containerPort: required field is missing",
            "x.yaml:20:3: metadata.name: required field is missing",
            "x.yaml:24:5: spec.ports[0].port: required field is missing",
        ]
    );
}

#[test]
fn selector_matching_nothing_is_an_error_at_the_selector() {
    let errors = errors_of(&[("d.yaml", DEPLOYMENT), ("s.yaml", &service("nobody", "80"))]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        errors[0].to_string(),
        "s.yaml:6:3: spec.selector: Service default/s: selector {app=nobody} matches no Deployment's pod template labels in namespace default"
    );

    // Same labels in another namespace do not count.
    let elsewhere = DEPLOYMENT.replace("  name: web\n", "  name: web\n  namespace: other\n");
    let errors = errors_of(&[("d.yaml", &elsewhere), ("s.yaml", &service("web", "http"))]);
    assert!(errors[0].message.contains("matches no Deployment"));
}

#[test]
fn a_deployment_with_errors_does_not_also_fail_its_service() {
    let text = DEPLOYMENT.replace("spec:\n  selector", "spec:\n  replicas: many\n  selector");
    let errors = errors_of(&[("d.yaml", &text), ("s.yaml", &service("web", "http"))]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].field, "spec.replicas");

    let errors = errors_of(&[
        ("d.yaml", "kind: [Deployment\n"),
        ("s.yaml", &service("web", "80")),
    ]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].file, "d.yaml");
}

#[test]
fn target_ports_resolve_by_name_and_are_checked() {
    let loaded = load_sources(&sources(&[
        ("d.yaml", DEPLOYMENT),
        ("s.yaml", &service("web", "http")),
    ]))
    .unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.mesh.services[0].ports[0].target_port, 5678);
    assert_eq!(
        loaded.mesh.services[0].backends,
        vec![("default".into(), "web".into())]
    );

    let errors = errors_of(&[("d.yaml", DEPLOYMENT), ("s.yaml", &service("web", "grpc"))]);
    assert_eq!(
        errors[0].to_string(),
        "s.yaml:9:17: spec.ports[0].targetPort: no container of the selected workloads has a port named `grpc`"
    );

    let errors = errors_of(&[("d.yaml", DEPLOYMENT), ("s.yaml", &service("web", "9090"))]);
    assert_eq!(
        errors[0].message,
        "targetPort 9090 is not exposed by any container of the selected workloads (they expose 5678)"
    );

    // A named targetPort cannot fall back to "the sidecar accepts it" on a pod without ports.
    let curl = curl_client("client");
    let errors = errors_of(&[
        ("c.yaml", &curl),
        (
            "s.yaml",
            &service("client", "http").replace("name: s\n", "name: t\n"),
        ),
    ]);
    assert!(
        errors[0].message.contains("port named `http`"),
        "{}",
        errors[0]
    );

    // A quoted number is a name, and an invalid one.
    let errors = errors_of(&[
        ("d.yaml", DEPLOYMENT),
        ("s.yaml", &service("web", "\"5678\"")),
    ]);
    assert!(
        errors[0].message.contains("without quotes"),
        "{}",
        errors[0]
    );

    // targetPort defaults to port.
    let text = service("web", "x")
        .replace("    targetPort: x\n", "")
        .replace("port: 80", "port: 5678");
    let loaded = load_sources(&sources(&[("d.yaml", DEPLOYMENT), ("s.yaml", &text)])).unwrap();
    assert_eq!(loaded.mesh.services[0].ports[0].target_port, 5678);
}

#[test]
fn unsupported_fields_are_warned_about_one_by_one() {
    // imagePullPolicy means nothing without images to pull: read past without a word.
    let text = DEPLOYMENT.replace(
        "        image: hashicorp/http-echo\n",
        "        image: hashicorp/http-echo
        imagePullPolicy: Always
        livenessProbe:
          httpGet: {path: /, port: 5678}
        resources:
          limits: {cpu: 100m}
        env:
        - name: SECRET
          valueFrom:
            secretKeyRef: {name: s, key: k}
",
    );
    let warnings = warnings_of(&[("d.yaml", &text)]);
    assert_eq!(
        warnings,
        vec![
            "d.yaml:16:9: spec.template.spec.containers[0].livenessProbe: ignored: not supported by Ward",
            "d.yaml:18:9: spec.template.spec.containers[0].resources: ignored: not supported by Ward",
            "d.yaml:23:13: spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef: ignored: not supported by Ward: Ward cannot read Secrets, so the variable is not set",
        ]
    );
    let mesh = load_str("d.yaml", &text).unwrap().mesh;
    assert!(mesh.workloads[0].containers[0].env.is_empty());
}

#[test]
fn the_downward_api_fills_pod_fields_per_pod() {
    // As the Gateway API's echo manifests set POD_NAME and NAMESPACE.
    let text = DEPLOYMENT.replace(
        "        image: hashicorp/http-echo\n",
        "        image: hashicorp/http-echo
        env:
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: APP
          valueFrom:
            fieldRef:
              fieldPath: metadata.labels['app']
        - name: LIMIT
          valueFrom:
            fieldRef:
              fieldPath: metadata.generation
",
    );
    let loaded = load_str("d.yaml", &text).unwrap();
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("d.yaml:31:15: spec.template.spec.containers[0].env[3].valueFrom.fieldRef.fieldPath: ignored"),
        "{warnings:?}"
    );
    let workload = &loaded.mesh.workloads[0];
    let instance = &workload.instances[0];
    let values: Vec<(String, Option<String>)> = workload.containers[0]
        .field_env
        .iter()
        .map(|(name, field)| (name.clone(), workload.pod_field(instance, field)))
        .collect();
    assert_eq!(
        values,
        [
            ("POD_NAME".to_string(), Some(instance.name.clone())),
            ("NAMESPACE".to_string(), Some("default".to_string())),
            ("APP".to_string(), workload.labels.get("app").cloned()),
        ]
    );
}

#[test]
fn kubernetes_bookkeeping_and_status_are_ignored_quietly() {
    let text = DEPLOYMENT.replace(
        "  name: web\n",
        "  name: web
  uid: 0b6c5e1a-1111-2222-3333-444455556666
  resourceVersion: \"1234\"
  generation: 2
  creationTimestamp: \"2024-01-01T00:00:00Z\"
  managedFields:
  - manager: kubectl
",
    ) + "status:\n  replicas: 1\n  conditions: []\n";
    assert_eq!(warnings_of(&[("d.yaml", &text)]), Vec::<String>::new());
}

#[test]
fn service_type_and_cluster_ip_are_warned_about() {
    let text = service("web", "http").replace(
        "spec:\n",
        "spec:\n  type: NodePort\n  clusterIP: 10.96.0.10\n",
    );
    let warnings = warnings_of(&[("d.yaml", DEPLOYMENT), ("s.yaml", &text)]);
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].starts_with("s.yaml:6:3: spec.type: ignored: type NodePort"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].starts_with("s.yaml:7:3: spec.clusterIP: ignored"),
        "{}",
        warnings[1]
    );
}

#[test]
fn unsupported_kinds_are_warned_about_and_empty_documents_skipped() {
    let text = "# nothing here\n---\napiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: default
spec:
  hosts: []
---
---
apiVersion: apps/v1beta1
kind: Deployment
metadata: {name: old}
";
    let warnings = warnings_of(&[("p.yaml", text)]);
    assert_eq!(
        warnings,
        vec![
            "p.yaml:4:1: kind ServiceEntry (apiVersion networking.istio.io/v1) is not supported by Ward; document ignored",
            "p.yaml:12:1: kind Deployment (apiVersion apps/v1beta1) is not supported by Ward (Ward reads it as apps/v1); document ignored",
        ]
    );
}

#[test]
fn duplicate_objects_and_mesh_configs_are_refused() {
    let errors = errors_of(&[("a.yaml", DEPLOYMENT), ("b.yaml", DEPLOYMENT)]);
    assert_eq!(
        errors[0].to_string(),
        "b.yaml:4:9: metadata.name: duplicate Deployment default/web (first defined at a.yaml:1)"
    );

    // Same name, different kind or namespace: fine.
    let other_ns = DEPLOYMENT.replace("  name: web\n", "  name: web\n  namespace: other\n");
    let sa = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web}\n";
    load_sources(&sources(&[
        ("a.yaml", DEPLOYMENT),
        ("b.yaml", &other_ns),
        ("c.yaml", sa),
    ]))
    .unwrap();

    let mesh_config =
        "apiVersion: ward.dev/v1alpha1\nkind: MeshConfig\nspec: {trustDomain: example.org}\n";
    let errors = errors_of(&[("m.yaml", mesh_config), ("n.yaml", mesh_config)]);
    assert_eq!(
        errors[0].to_string(),
        "n.yaml:1:1: a second MeshConfig (first at m.yaml:1); a mesh has at most one"
    );
}

#[test]
fn mesh_config_sets_trust_domain_and_root_namespace() {
    let mesh_config = "apiVersion: ward.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec:
  trustDomain: example.org
  rootNamespace: ward-system
  defaults:
    retries: 3
";
    let loaded =
        load_sources(&sources(&[("d.yaml", DEPLOYMENT), ("m.yaml", mesh_config)])).unwrap();
    assert_eq!(loaded.mesh.trust_domain, "example.org");
    assert_eq!(loaded.mesh.root_namespace, "ward-system");
    assert_eq!(
        loaded.mesh.identity(&loaded.mesh.workloads[0]).to_string(),
        "spiffe://example.org/ns/default/sa/default"
    );
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec!["m.yaml:8:5: spec.defaults.retries: ignored: not supported by Ward"]
    );

    let bad = mesh_config.replace("example.org", "Example/Org");
    let errors = errors_of(&[("m.yaml", &bad)]);
    assert_eq!(errors[0].field, "spec.trustDomain");
}

#[test]
fn service_accounts_and_namespaces() {
    let text = DEPLOYMENT.replace(
        "    spec:\n      containers",
        "    spec:\n      serviceAccountName: web-sa\n      containers",
    );
    let warnings = warnings_of(&[("d.yaml", &text)]);
    assert_eq!(
        warnings,
        vec!["d.yaml:12:27: spec.template.spec.serviceAccountName: ServiceAccount default/web-sa is not declared (Kubernetes would not start the pod); the identity uses that name anyway"]
    );
    let mesh = load_str("d.yaml", &text).unwrap().mesh;
    assert_eq!(
        mesh.identity(&mesh.workloads[0]).to_string(),
        "spiffe://cluster.local/ns/default/sa/web-sa"
    );

    let declared = "apiVersion: v1\nkind: Namespace\nmetadata: {name: empty}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web-sa, namespace: team}\n";
    let text = text.replace("  name: web\n", "  name: web\n  namespace: team\n");
    let loaded = load_sources(&sources(&[("d.yaml", &text), ("n.yaml", declared)])).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.mesh.namespaces, vec!["empty", "team"]);
    assert_eq!(loaded.mesh.service_accounts[0].namespace, "team");
}

#[test]
fn deployment_rules_follow_kubernetes() {
    let text = DEPLOYMENT.replace("spec:\n  selector", "spec:\n  replicas: 101\n  selector");
    let errors = errors_of(&[("d.yaml", &text)]);
    assert_eq!(errors[0].field, "spec.replicas");
    assert!(errors[0].message.contains("at most 100"), "{}", errors[0]);

    let text = DEPLOYMENT.replace("matchLabels: {app: web}", "matchLabels: {app: other}");
    let errors = errors_of(&[("d.yaml", &text)]);
    assert_eq!(errors[0].field, "spec.selector.matchLabels");
    assert!(
        errors[0].message.contains("app=other does not match"),
        "{}",
        errors[0]
    );

    let text = DEPLOYMENT.replace("  name: web\n", "  name: Web_1\n");
    let errors = errors_of(&[("d.yaml", &text)]);
    assert_eq!(errors[0].field, "metadata.name");
    assert!(errors[0].message.starts_with("`Web_1` is not a valid name"));

    let text = DEPLOYMENT.replace("spec:\n  selector", "spec:\n  replicas: 0\n  selector");
    let mesh = load_str("d.yaml", &text).unwrap().mesh;
    assert!(mesh.workloads[0].instances.is_empty());
}

#[test]
fn aliases_and_merge_keys_work_as_in_kubectl() {
    let text = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: &labels {app: web}
spec:
  selector:
    matchLabels: *labels
  template:
    metadata:
      labels:
        <<: *labels
        tier: front
    spec:
      containers:
      - name: web
        image: hashicorp/http-echo
";
    let mesh = load_str("d.yaml", text).unwrap().mesh;
    assert_eq!(mesh.workloads[0].labels.len(), 2);
}

#[test]
fn errors_display_one_per_line() {
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n  name: y\n";
    let error = load_str("broken.yaml", text).unwrap_err();
    let shown = error.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(
        lines,
        vec![
            "broken.yaml:1:1: spec: required field is missing",
            "broken.yaml:5:3: metadata.name: duplicate key `name` (first at line 4); YAML allows each key once per mapping",
        ]
    );
}

#[test]
fn load_path_reads_yaml_files_of_a_directory_in_order() {
    let dir = std::env::temp_dir().join(format!("ward-config-test-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("nested")).unwrap();
    std::fs::write(dir.join("b.yml"), service("web", "http")).unwrap();
    std::fs::write(dir.join("a.yaml"), DEPLOYMENT).unwrap();
    std::fs::write(dir.join("notes.txt"), "not yaml: [").unwrap();
    std::fs::write(dir.join(".a.yaml.tmp"), "not yaml: [").unwrap();
    std::fs::write(dir.join("nested/c.yaml"), "not yaml: [").unwrap();
    let loaded = load_path(&dir);
    let single = load_path(&dir.join("a.yaml"));
    let missing = load_path(&dir.join("missing.yaml"));
    std::fs::remove_dir_all(&dir).unwrap();

    let mesh = loaded.unwrap().mesh;
    assert_eq!(mesh.services[0].ports[0].target_port, 5678);
    assert!(mesh.workloads[0].source.file.ends_with("a.yaml"));
    assert_eq!(single.unwrap().mesh.workloads.len(), 1);
    assert!(matches!(missing, Err(ConfigError::Io { .. })));
}

#[test]
fn addresses_are_stable_when_workloads_are_added() {
    let before = load_sources(&exam_lab()).unwrap().mesh;
    let mut more = exam_lab();
    more.push(("aura-api.yaml".into(), AURA_API.into()));
    more.push(("d.yaml".into(), DEPLOYMENT.into()));
    let after = load_sources(&more).unwrap().mesh;
    for w in &before.workloads {
        let a = after.workload(&w.namespace, &w.name).unwrap();
        assert_eq!(w.instances, a.instances, "{} moved", w.name);
    }
    let mut all: Vec<Ipv4Addr> = after
        .workloads
        .iter()
        .flat_map(|w| w.instances.iter().flat_map(|i| [i.address, i.app_address]))
        .collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "addresses are unique");
    // The same input always gives the same addresses.
    assert_eq!(load_sources(&more).unwrap().mesh, after);
}

fn peer_authentication(namespace: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{spec}")
}

fn mesh_with(extra: &[(&str, &str)]) -> crate::model::Mesh {
    let mut files = exam_lab();
    files.extend(sources(extra));
    match load_sources(&files) {
        Ok(loaded) => loaded.mesh,
        Err(e) => panic!("expected success, got:\n{e}"),
    }
}

#[test]
fn peer_authentication_follows_istios_precedence() {
    use crate::model::MtlsMode;
    let mode = |mesh: &crate::model::Mesh, workload: &str, port: u16| {
        let w = mesh.workload("default", workload).unwrap();
        mesh.effective_mtls(w, port)
    };
    // Nothing configured: PERMISSIVE.
    let mesh = mesh_with(&[]);
    assert_eq!(
        mode(&mesh, "exam-scheduler", 8080).mode,
        MtlsMode::Permissive
    );
    assert_eq!(mode(&mesh, "exam-scheduler", 8080).decided_by, None);

    // Mesh-wide STRICT (root namespace), namespace PERMISSIVE wins over it, a workload
    // policy over both, its port-level setting over it; UNSET inherits.
    let mesh_wide = peer_authentication("istio-system", "default", "  mtls:\n    mode: STRICT\n");
    let mesh = mesh_with(&[("mesh.yaml", &mesh_wide)]);
    assert_eq!(mode(&mesh, "exam-scheduler", 8080).mode, MtlsMode::Strict);
    assert_eq!(
        mode(&mesh, "exam-scheduler", 8080).decided_by.as_deref(),
        Some("istio-system/default")
    );
    let namespace = peer_authentication("default", "ns", "  mtls:\n    mode: PERMISSIVE\n");
    let workload = peer_authentication(
        "default",
        "scheduler",
        "  selector:\n    matchLabels:\n      app: exam-scheduler\n  mtls:\n    mode: UNSET\n  portLevelMtls:\n    9090:\n      mode: DISABLE\n",
    );
    let mesh = mesh_with(&[
        ("mesh.yaml", &mesh_wide),
        ("ns.yaml", &namespace),
        ("w.yaml", &workload),
    ]);
    assert_eq!(
        mode(&mesh, "student-portal", 8080).mode,
        MtlsMode::Permissive
    );
    // UNSET on the workload: the namespace decides.
    assert_eq!(
        mode(&mesh, "exam-scheduler", 8080).mode,
        MtlsMode::Permissive
    );
    assert_eq!(
        mode(&mesh, "exam-scheduler", 8080).decided_by.as_deref(),
        Some("default/ns")
    );
    assert_eq!(mode(&mesh, "exam-scheduler", 9090).mode, MtlsMode::Disable);
    assert_eq!(
        mode(&mesh, "exam-scheduler", 9090).decided_by.as_deref(),
        Some("default/scheduler")
    );
}

#[test]
fn peer_authentication_mistakes_are_located() {
    let bad_mode = peer_authentication("default", "default", "  mtls:\n    mode: STRICTLY\n");
    let errors = errors_of(&[("pa.yaml", &bad_mode)]);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].to_string(),
        "pa.yaml:8:5: spec.mtls.mode: unknown mTLS mode `STRICTLY`: expected UNSET, DISABLE, PERMISSIVE or STRICT"
    );
    // Istio refuses portLevelMtls without a selector.
    let port_level = peer_authentication(
        "default",
        "default",
        "  portLevelMtls:\n    8080:\n      mode: DISABLE\n",
    );
    let errors = errors_of(&[("pa.yaml", &port_level)]);
    assert!(
        errors[0].to_string().starts_with(
            "pa.yaml:8:5: spec.portLevelMtls: portLevelMtls needs a workload selector"
        ),
        "{errors:?}"
    );
    // A selector matching nothing, two namespace-wide policies, an unknown field: warnings.
    let nothing = peer_authentication(
        "default",
        "ghost",
        "  selector:\n    matchLabels:\n      app: ghost\n  mtls:\n    mode: STRICT\n",
    );
    let second = peer_authentication("default", "zz", "  mtls:\n    mode: STRICT\n  extra: 1\n");
    let first = peer_authentication("default", "aa", "  mtls:\n    mode: STRICT\n");
    let mut files = exam_lab();
    files.extend(sources(&[
        ("a.yaml", &first),
        ("g.yaml", &nothing),
        ("z.yaml", &second),
    ]));
    let warnings: Vec<String> = load_sources(&files)
        .unwrap()
        .warnings
        .iter()
        .map(ToString::to_string)
        .collect();
    let joined = warnings.join("\n");
    assert!(
        joined.contains("g.yaml:7:3: spec.selector: selects no workload in namespace default"),
        "{joined}"
    );
    assert!(joined.contains("z.yaml:4:9: metadata.name: a second namespace-wide in default PeerAuthentication (first: aa)"), "{joined}");
    assert!(
        joined.contains("z.yaml:9:3: spec.extra: ignored: not supported by Ward"),
        "{joined}"
    );
}

#[test]
fn destination_rules_from_seed_001_resolve_their_hosts() {
    use crate::model::ClientTlsMode;
    let rule = "apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: exam-scheduler
spec:
  host: exam-scheduler
  trafficPolicy:
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
";
    let mut files = exam_lab();
    files.push(("dr.yaml".into(), rule.into()));
    let loaded = load_sources(&files).unwrap();
    let mesh = &loaded.mesh;
    let service = &mesh.services[0];
    let fqdn = "exam-scheduler.default.svc.cluster.local";
    let found = mesh.destination_rule_for(service, fqdn).unwrap();
    assert_eq!(found.host, fqdn);
    assert_eq!(
        mesh.traffic_policy(service, 80, None).tls.unwrap().mode,
        ClientTlsMode::IstioMutual
    );
    assert_eq!(found.subsets[0].name, "v1");
    // The lab's pods carry no version label: routes to the subset would get 503s.
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings.iter().any(|w| w.starts_with(
            "dr.yaml:11:5: spec.subsets[0]: subset `v1` (version=v1) selects no pod of exam-scheduler.default.svc.cluster.local"
        )),
        "{warnings:?}"
    );
    assert_eq!(
        crate::resolve::qualify_host("reviews.prod", "default"),
        "reviews.prod.svc.cluster.local"
    );
    assert_eq!(
        crate::resolve::qualify_host("*.prod.svc.cluster.local", "x"),
        "*.prod.svc.cluster.local"
    );
    // MUTUAL without files is refused with its location.
    let mutual = rule.replace("ISTIO_MUTUAL", "MUTUAL");
    let errors = errors_of(&[("dr.yaml", &mutual)]);
    assert!(
        errors[0].to_string().starts_with("dr.yaml:9:7: spec.trafficPolicy.tls.mode: MUTUAL needs clientCertificate and privateKey"),
        "{errors:?}"
    );
}

fn authorization_policy(name: &str, spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{spec}")
}

fn lab_with(policy: &str) -> Vec<(String, String)> {
    let mut files = exam_lab();
    files.push(("authz.yaml".into(), policy.into()));
    files
}

fn lab_warnings(policy: &str) -> Vec<String> {
    match load_sources(&lab_with(policy)) {
        Ok(loaded) => loaded
            .warnings
            .iter()
            .filter(|w| w.file == "authz.yaml")
            .map(ToString::to_string)
            .collect(),
        Err(e) => panic!("expected success, got:\n{e}"),
    }
}

fn lab_errors(policy: &str) -> Vec<String> {
    match load_sources(&lab_with(policy)) {
        Err(ConfigError::Invalid(d)) => d.iter().map(ToString::to_string).collect(),
        other => panic!("expected errors, got {other:#?}"),
    }
}

#[test]
fn the_labs_authorization_policies_load_with_their_scopes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/exam-lab");
    let mut files = exam_lab();
    for name in [
        "authz-scheduler.yaml",
        "authz-professor.yaml",
        "authz-student.yaml",
    ] {
        let text = std::fs::read_to_string(root.join("policies").join(name)).unwrap();
        files.push((name.to_string(), text));
    }
    let loaded = load_sources(&files).unwrap();
    let mesh = &loaded.mesh;
    let names = |workload: &str| -> Vec<String> {
        let w = mesh.workload("default", workload).unwrap();
        mesh.authorization_policies_for(w)
            .iter()
            .map(|p| p.name.clone())
            .collect()
    };
    // matchLabels beside selector: namespace-wide, as Kubernetes would prune it.
    assert_eq!(
        names("exam-scheduler"),
        [
            "allow-scheduler-access",
            "deny-professor-inbound",
            "deny-student-inbound"
        ]
    );
    assert_eq!(
        names("student-portal"),
        ["deny-professor-inbound", "deny-student-inbound"]
    );
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert!(warnings.iter().any(|w| w.starts_with(
        "authz-professor.yaml:8:4: spec.matchLabels: unknown field, ignored as Kubernetes prunes it: did you mean spec.selector.matchLabels"
    )), "{warnings:#?}");
    let scheduler = mesh
        .authorization_policies
        .iter()
        .find(|p| p.policy.name == "allow-scheduler-access")
        .unwrap();
    assert_eq!(scheduler.policy.rules.len(), 2);
    assert_eq!(
        scheduler.policy.rules[0].from[0].principals,
        ["cluster.local/ns/default/sa/student-portal-sa"]
    );
}

#[test]
fn authorization_references_to_nothing_are_warned_about() {
    let policy = authorization_policy(
        "p",
        "  selector: {matchLabels: {app: nothing}}\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/default/sa/ghost\", \"other.td/ns/default/sa/student-portal-sa\"]\n        namespaces: [\"nowhere\"]\n",
    );
    let warnings = lab_warnings(&policy);
    assert_eq!(warnings.len(), 4, "{warnings:#?}");
    assert!(warnings[0]
        .starts_with("authz.yaml:7:3: spec.selector: selects no workload in namespace default"));
    assert!(warnings[1].contains(
        "spec.rules[0].from[0].source.principals[0]: service account default/ghost does not exist"
    ));
    assert!(warnings[2]
        .contains("principals[1]: trust domain other.td is not this mesh's (cluster.local)"));
    assert!(warnings[3].contains("source.namespaces[0]: namespace nowhere does not exist"));
}

#[test]
fn a_dash_too_many_splitting_one_rule_is_warned_about() {
    let policy = authorization_policy(
        "p",
        "  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/default/sa/student-portal-sa\"]\n  - to:\n    - operation:\n        methods: [\"GET\"]\n",
    );
    let warnings = lab_warnings(&policy);
    assert_eq!(
        warnings,
        ["authz.yaml:11:5: spec.rules[1]: spec.rules[0] has only `from` and spec.rules[1] only `to`: if they are one rule, remove the `-` before `to`; as written, spec.rules[1] allows its `to` to every source"]
    );
}

#[test]
fn what_istio_rejects_or_ward_cannot_enforce_is_an_error() {
    let errors = lab_errors(&authorization_policy(
        "p",
        "  action: CUSTOM\n  provider: {name: opa}\n  rules:\n  - to:\n    - operation:\n        ports: [\"http\"]\n        paths: [\"/a/{x}\", \"/a*b\"]\n    when:\n    - key: source.ip\n      values: [\"10.0.0.300\"]\n    - key: request.headers\n      values: [a]\n    - key: destination.port\n",
    ));
    let expected = [
        "authz.yaml:7:3: spec.action: CUSTOM (external authorizers) is not supported by Ward",
        "authz.yaml:12:17: spec.rules[0].to[0].operation.ports[0]: `http` is not a port number",
        "authz.yaml:13:17: spec.rules[0].to[0].operation.paths[0]: `/a/{x}`: a path template needs",
        "authz.yaml:13:27: spec.rules[0].to[0].operation.paths[1]: `/a*b`: `*` may only be",
        "authz.yaml:16:16: spec.rules[0].when[0].values[0]: `10.0.0.300` is not an IP address",
        "authz.yaml:17:7: spec.rules[0].when[1].key: unknown condition key `request.headers`",
        "authz.yaml:19:7: spec.rules[0].when[2]: a condition needs `values` or `notValues`",
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (error, want) in errors.iter().zip(expected) {
        assert!(error.starts_with(want), "{errors:#?}\nwanted: {want}");
    }
}

#[test]
fn jwt_fields_without_authentication_are_warned_about_and_dry_run_is_read() {
    let policy = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  annotations: {istio.io/dry-run: \"true\"}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source:\n        notRequestPrincipals: [\"*\"]\n";
    let warnings = lab_warnings(policy);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].starts_with("authz.yaml:1:1: spec.rules: uses request principals or JWT claims, but no RequestAuthentication applies to exam-scheduler, professor-tools, student-portal"),
        "{warnings:#?}"
    );
    // With a RequestAuthentication for the namespace, the warning goes.
    let jwt = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\nspec:\n  jwtRules:\n  - issuer: a\n    jwksUri: https://a.example/jwks.json\n";
    assert!(lab_warnings(&format!("{policy}---\n{jwt}")).is_empty());
    let mesh = load_sources(&lab_with(policy)).unwrap().mesh;
    assert!(mesh.authorization_policies[0].policy.dry_run);
}

#[test]
fn fields_beside_operation_instead_of_under_it_are_pointed_at() {
    // Seed 002, section 7.3, as printed: `methods` at the level of `operation`.
    let errors = lab_errors(&authorization_policy(
        "productpage-login",
        "  action: ALLOW\n  rules:\n  - to:\n    - operation:\n      methods: [\"GET\"]\n",
    ));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("authz.yaml:10:7: spec.rules[0].to[0].operation: required field is missing or empty: `methods` is written beside `operation:`, not under it"),
        "{errors:#?}"
    );
}

#[test]
fn request_authentications_decode_with_istios_rules() {
    let text = "apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata:
  name: jwt-example
spec:
  selector:
    matchLabels:
      app: exam-scheduler
  jwtRules:
  - issuer: \"testing@secure.istio.io\"
    jwksUri: \"https://raw.githubusercontent.com/istio/istio/release-1.20/security/tools/jwt/samples/jwks.json\"
    audiences: [a, b]
    fromHeaders:
    - name: x-jwt
      prefix: \"Bearer \"
    fromParams: [token]
    forwardOriginalToken: true
    outputPayloadToHeader: x-payload
    outputClaimToHeaders:
    - header: x-sub
      claim: sub
";
    let loaded = load_sources(&lab_with(text)).unwrap();
    let warnings: Vec<String> = loaded
        .warnings
        .iter()
        .filter(|w| w.file == "authz.yaml")
        .map(ToString::to_string)
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    let mesh = loaded.mesh;
    let scheduler = mesh.workload("default", "exam-scheduler").unwrap();
    // A RequestAuthentication does not choose the engine: the native one has `jwt_authn`.
    assert!(!mesh.wasm_authorizes(scheduler));
    assert_eq!(mesh.jwks_uris().len(), 1);
    let rules = mesh.jwt_rules_for(scheduler);
    assert_eq!(rules[0].issuer, "testing@secure.istio.io");
    assert_eq!(rules[0].audiences, ["a", "b"]);
    assert_eq!(
        rules[0].from_headers,
        [("x-jwt".to_string(), "Bearer ".to_string())]
    );
    assert!(rules[0].forward_original_token);
    assert_eq!(
        rules[0].output_payload_to_header.as_deref(),
        Some("x-payload")
    );
    assert_eq!(
        rules[0].output_claim_to_headers,
        [("x-sub".to_string(), "sub".to_string())]
    );
    // Never fetched: no keys, so tokens are refused, never accepted unverified.
    assert_eq!(rules[0].jwks, r#"{"keys":[]}"#);

    let errors = lab_errors(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: bad
spec:
  jwtRules:
  - issuer: a
  - issuer: b
    jwks: \"not json\"
  - issuer: c
    jwksUri: ftp://x
",
    );
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(errors[0].contains("spec.jwtRules[0]: set `jwks` or `jwksUri`"));
    assert!(errors[1].contains("spec.jwtRules[1].jwks: not a JWKS"));
    assert!(errors[2]
        .contains("spec.jwtRules[2].jwksUri: `ftp://x`: expected an http:// or https:// URL"));
}

#[test]
fn request_authentication_from_cookies_reaches_the_jwt_rule() {
    let rule = |cookies: &str| {
        format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: cookies
spec:
  selector:
    matchLabels:
      app: exam-scheduler
  jwtRules:
  - issuer: a
    jwksUri: https://a.example/jwks.json
    fromCookies: {cookies}
"
        )
    };
    assert!(lab_warnings(&rule("[session, \"jwt\"]")).is_empty());
    let mesh = load_sources(&lab_with(&rule("[session, jwt]")))
        .unwrap()
        .mesh;
    let rules = mesh.jwt_rules_for(mesh.workload("default", "exam-scheduler").unwrap());
    assert_eq!(rules[0].from_cookies, ["session", "jwt"]);
    // Cookies only: the default Authorization header is not where this rule's tokens are.
    assert!(rules[0].token_headers().is_empty());

    let errors = lab_errors(&rule("session"));
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].starts_with("authz.yaml:12:18: spec.jwtRules[0].fromCookies: expected a list"),
        "{errors:#?}"
    );
    let errors = lab_errors(&rule("[ok, \"\", \"a=b\", 7]"));
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors[0].starts_with(
            "authz.yaml:12:23: spec.jwtRules[0].fromCookies[1]: \"\" is not a cookie name"
        ),
        "{errors:#?}"
    );
    assert!(
        errors[1].starts_with(
            "authz.yaml:12:27: spec.jwtRules[0].fromCookies[2]: \"a=b\" is not a cookie name"
        ),
        "{errors:#?}"
    );
    assert!(
        errors[2]
            .starts_with("authz.yaml:12:34: spec.jwtRules[0].fromCookies[3]: expected a string"),
        "{errors:#?}"
    );
}

/// The lab's aura-profile.yaml exactly as printed: the /chaos route's keys written inside
/// the /slow route.
const LAB_AURA_PROFILE: &str = r#"# Service Profile
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata:
  name: aura-api.default.svc.cluster.local
  namespace: default
spec:
  routes:
  - name: GET /aura
    condition:
      method: GET
      pathRegex: "^/aura$"
    isRetryable: true
  - name: GET /slow
    condition:
      method: GET
      pathRegex: "^/slow$"
    isRetryable: true
    condition:
      method: GET
      pathRegex: "^/chaos$"
    isRetryable: false
  retryBudget:
    retryRatio: 0.2
    minRetriesPerSecond: 10
    ttl: 10s
"#;

#[test]
fn the_labs_profile_with_a_repeated_condition_is_refused_at_its_line() {
    let errors = errors_of(&[
        ("aura-api.yaml", AURA_API),
        ("aura-profile.yaml", LAB_AURA_PROFILE),
    ]);
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        messages.contains(
            &"aura-profile.yaml:19:5: spec.routes[1].condition: duplicate key `condition` (first at line 15); YAML allows each key once per mapping"
                .to_string()
        ),
        "{messages:#?}"
    );
    assert!(messages.iter().any(
        |m| m.starts_with("aura-profile.yaml:22:5: spec.routes[1].isRetryable: duplicate key")
    ));
}

#[test]
fn the_corrected_aura_profile_loads_with_routes_and_budget() {
    let profile = include_str!("../../../config/aura-lab/profiles/aura-profile.yaml");
    let loaded = load_sources(&sources(&[
        ("aura-api.yaml", AURA_API),
        ("aura-profile.yaml", profile),
    ]))
    .unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let mesh = &loaded.mesh;
    let service = &mesh.services[0];
    let profile = mesh.service_profile(service).expect("the profile applies");
    let routes: Vec<(&str, bool)> = profile
        .routes
        .iter()
        .map(|r| (r.name.as_str(), r.is_retryable))
        .collect();
    assert_eq!(
        routes,
        vec![
            ("GET /aura", true),
            ("GET /slow", true),
            ("GET /chaos", false)
        ]
    );
    assert_eq!(
        profile.routes[0].condition,
        crate::model::RequestMatch::All(vec![
            crate::model::RequestMatch::Method("GET".into()),
            crate::model::RequestMatch::PathRegex("^/aura$".into()),
        ])
    );
    assert_eq!(profile.retry_budget.retry_ratio, 0.2);
    assert_eq!(profile.retry_budget.min_retries_per_second, 10);
    assert_eq!(profile.retry_budget.ttl_ms, 10_000);
}

#[test]
fn service_profile_mistakes_name_their_field() {
    let profile = r#"apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata:
  name: aura-api.default.svc.cluster.local
spec:
  routes:
  - name: bad
    condition:
      method: FETCH
      pathRegex: "^/a($"
    timeout: soon
  - name: none
    condition: {}
  retryBudget:
    retryRatio: 0.2
    ttl: 10
"#;
    let errors = errors_of(&[("aura-api.yaml", AURA_API), ("p.yaml", profile)]);
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let expected = [
        "p.yaml:9:15: spec.routes[0].condition.method: `FETCH` is not an HTTP method",
        "p.yaml:10:18: spec.routes[0].condition.pathRegex: `^/a($` is not a valid regular expression: unclosed group",
        "p.yaml:11:14: spec.routes[0].timeout: `soon` is not a duration",
        "p.yaml:13:16: spec.routes[1].condition: a condition needs one of method, pathRegex, all, any or not",
        "p.yaml:15:5: spec.retryBudget.minRetriesPerSecond: required field is missing",
        "p.yaml:16:10: spec.retryBudget.ttl: `10` is not a duration",
    ];
    for prefix in expected {
        assert!(
            messages.iter().any(|m| m.starts_with(prefix)),
            "no error starting {prefix:?} in {messages:#?}"
        );
    }
}

#[test]
fn failure_accrual_annotations_are_read_with_linkerds_defaults() {
    let annotated = AURA_API.replace(
        "metadata:\n  name: aura-api\nspec:\n  selector:",
        "metadata:\n  name: aura-api\n  annotations:\n    balancer.linkerd.io/failure-accrual: consecutive\n    balancer.linkerd.io/failure-accrual-consecutive-max-failures: \"4\"\n    balancer.linkerd.io/failure-accrual-consecutive-min-penalty: 30s\nspec:\n  selector:",
    );
    assert_ne!(
        annotated, AURA_API,
        "the Service's metadata is where expected"
    );
    let loaded = load_str("aura-api.yaml", &annotated).unwrap();
    let service = &loaded.mesh.services[0];
    assert_eq!(
        loaded.mesh.failure_accrual(service),
        Some(crate::model::FailureAccrual {
            max_failures: 4,
            min_penalty_ms: 30_000,
            max_penalty_ms: 60_000,
            jitter_permille: 500,
        })
    );

    // With a ServiceProfile, Linkerd turns failure accrual off, and Ward says so.
    let profile = include_str!("../../../config/aura-lab/profiles/aura-profile.yaml");
    let loaded = load_sources(&sources(&[
        ("aura-api.yaml", &annotated),
        ("aura-profile.yaml", profile),
    ]))
    .unwrap();
    assert_eq!(loaded.mesh.failure_accrual(&loaded.mesh.services[0]), None);
    assert!(loaded.warnings.iter().any(|w| w
        .to_string()
        .contains("ignored while ServiceProfile aura-api.default.svc.cluster.local")));

    let bad = annotated.replace("\"4\"", "four");
    let errors = errors_of(&[("aura-api.yaml", &bad)]);
    assert!(
        errors[0].to_string().contains(
            "metadata.annotations.balancer.linkerd.io/failure-accrual-consecutive-max-failures: `four` is not valid"
        ),
        "{errors:#?}"
    );
}

const AURA_VIRTUAL_SERVICE: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: aura-api
spec:
  hosts:
  - aura-api
  http:
  - name: slow
    match:
    - uri:
        exact: /slow
    timeout: 1s
    route:
    - destination:
        host: aura-api
  - match:
    - uri:
        prefix: /aura
      method:
        exact: GET
    retries:
      attempts: 5
      perTryTimeout: 4s
      retryOn: 5xx,reset
    route:
    - destination:
        host: aura-api.default.svc.cluster.local
        port:
          number: 80
"#;

#[test]
fn virtual_service_routes_load_with_qualified_hosts() {
    let loaded = load_sources(&sources(&[
        ("aura-api.yaml", AURA_API),
        ("vs.yaml", AURA_VIRTUAL_SERVICE),
    ]))
    .unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let mesh = &loaded.mesh;
    let vs = mesh
        .virtual_service(&mesh.services[0])
        .expect("routes aura-api");
    assert_eq!(vs.hosts, vec!["aura-api.default.svc.cluster.local"]);
    assert_eq!(vs.http.len(), 2);
    assert_eq!(vs.http[0].timeout_ms, Some(1000));
    assert_eq!(
        vs.http[1].retries,
        Some(crate::model::HttpRetry {
            attempts: 5,
            per_try_timeout_ms: Some(4000),
            retry_on: Some("5xx,reset".into()),
        })
    );
    assert_eq!(
        vs.http[0].destinations[0].host,
        "aura-api.default.svc.cluster.local"
    );
    assert_eq!(vs.http[0].destinations[0].weight, 100);
}

#[test]
fn virtual_service_mistakes_are_refused_at_their_line() {
    let vs = AURA_VIRTUAL_SERVICE
        .replace(
            "    timeout: 1s\n",
            "    timeout: 1s\n    delegate:\n      name: other\n",
        )
        .replace(
            "      method:\n        exact: GET\n",
            "      queryParams:\n        v:\n          regex: \"(\"\n",
        )
        .replace(
            "        port:\n          number: 80\n",
            "        port:\n          number: 8080\n",
        );
    let errors = errors_of(&[("aura-api.yaml", AURA_API), ("vs.yaml", &vs)]);
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    for expected in [
        "vs.yaml:14:5: spec.http[0].delegate: Ward does not support delegation yet",
        "vs.yaml:24:18: spec.http[1].match[0].queryParams.v.regex: `(` is not a valid regular expression",
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(expected)),
            "no {expected:?} in {messages:#?}"
        );
    }
    let vs = AURA_VIRTUAL_SERVICE.replace("number: 80", "number: 8080");
    let errors = errors_of(&[("aura-api.yaml", AURA_API), ("vs.yaml", &vs)]);
    assert!(
        errors[0]
            .to_string()
            .contains("aura-api.default.svc.cluster.local has no port 8080: its ports are 80"),
        "{errors:#?}"
    );
    let vs = AURA_VIRTUAL_SERVICE.replace("        host: aura-api\n", "        host: nowhere\n");
    let errors = errors_of(&[("aura-api.yaml", AURA_API), ("vs.yaml", &vs)]);
    assert!(
        errors[0].to_string().starts_with(
            "vs.yaml:16:9: spec.http[0].route[0].destination.host: nowhere.default.svc.cluster.local is not a service of the mesh"
        ),
        "{errors:#?}"
    );
    let vs = AURA_VIRTUAL_SERVICE.replace(
        "        host: aura-api\n",
        "        host: aura-api\n        subset: v9\n",
    );
    let errors = errors_of(&[("aura-api.yaml", AURA_API), ("vs.yaml", &vs)]);
    assert!(
        errors[0].to_string().starts_with(
            "vs.yaml:17:9: spec.http[0].route[0].destination.subset: aura-api.default.svc.cluster.local has no subset `v9`: no DestinationRule for it defines subsets"
        ),
        "{errors:#?}"
    );
}

#[test]
fn destination_rule_resilience_fields_load_with_istios_defaults() {
    let rule = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: aura-api
spec:
  host: aura-api
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 3
      baseEjectionTime: 3s
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 250ms
      http:
        http1MaxPendingRequests: 10
        maxRetries: 7
    retryBudget:
      percent: 25
      minRetryConcurrency: 5
";
    let loaded = load_sources(&sources(&[("aura-api.yaml", AURA_API), ("dr.yaml", rule)])).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let dr = &loaded.mesh.destination_rules[0];
    assert_eq!(
        dr.policy.outlier_detection,
        Some(crate::model::OutlierDetectionPolicy {
            consecutive_5xx_errors: 3,
            consecutive_gateway_errors: 0,
            interval_ms: 10_000,
            base_ejection_time_ms: 3_000,
            max_ejection_percent: 10,
            min_health_percent: 0,
        })
    );
    let pool = dr.policy.connection_pool.unwrap();
    assert_eq!(pool.max_connections, Some(100));
    assert_eq!(pool.connect_timeout_ms, Some(250));
    assert_eq!(pool.http1_max_pending_requests, Some(10));
    assert_eq!(pool.max_retries, Some(7));
    assert_eq!(
        dr.policy.retry_budget,
        Some(crate::model::ConcurrencyRetryBudget {
            percent_millis: 25_000,
            min_retry_concurrency: 5,
            budget_interval_ms: None,
        })
    );
}
