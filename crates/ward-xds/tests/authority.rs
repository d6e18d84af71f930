//! Which host names reach which service through a client's outbound route, as Kubernetes
//! DNS would resolve them: `name` only from the service's own namespace, `name.ns`,
//! `name.ns.svc` and `name.ns.svc.cluster.local` from anywhere, each with `:port`, and
//! without a port only for port 80 (what an HTTP client sends for a default port).

use envoy_types::pb::envoy::config::route::v3::{route, route_action, RouteConfiguration};
use prost::Message;
use ward_snapshot::ROUTE;
use ward_xds::{mesh_snapshots, service_domains, OUTBOUND_ROUTE};

const GRADING: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: grading}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: grader, namespace: grading}
spec:
  replicas: 1
  selector: {matchLabels: {app: grader}}
  template:
    metadata: {labels: {app: grader}}
    spec:
      containers:
      - name: grader
        image: hashicorp/http-echo
        ports: [{containerPort: 9090}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: grading-client, namespace: grading}
spec:
  replicas: 1
  selector: {matchLabels: {app: grading-client}}
  template:
    metadata: {labels: {app: grading-client}}
    spec:
      containers:
      - name: curl
        image: curlimages/curl
        command: ["sleep", "3600"]
---
# A port other than 80.
apiVersion: v1
kind: Service
metadata: {name: grader, namespace: grading}
spec:
  selector: {app: grader}
  ports: [{port: 8080, targetPort: 9090}]
---
# The same short name as a Service in default.
apiVersion: v1
kind: Service
metadata: {name: exam-scheduler, namespace: grading}
spec:
  selector: {app: grader}
  ports: [{port: 80, targetPort: 9090}]
"#;

fn mesh() -> ward_config::model::Mesh {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/exam-lab");
    let mut sources: Vec<(String, String)> =
        ["exam-scheduler", "professor-tools", "student-portal"]
            .iter()
            .map(|n| {
                let path = format!("{dir}/{n}.yaml");
                (path.clone(), std::fs::read_to_string(path).unwrap())
            })
            .collect();
    sources.push(("grading.yaml".to_string(), GRADING.to_string()));
    ward_config::load_sources(&sources).unwrap().mesh
}

/// The outbound route configuration the proxy `node` gets.
fn outbound_routes(mesh: &ward_config::model::Mesh, node: &str) -> RouteConfiguration {
    let (snapshots, _) = mesh_snapshots(mesh, &Default::default(), None, |_, _| None);
    let (_, snapshot) = snapshots
        .iter()
        .find(|(id, _)| id == node)
        .unwrap_or_else(|| panic!("no snapshot for {node}"));
    let resource = snapshot.set(ROUTE).unwrap().get(OUTBOUND_ROUTE).unwrap();
    RouteConfiguration::decode(resource.any().value.as_slice()).unwrap()
}

/// The cluster a request with `Host: host` is routed to, choosing the virtual host as Envoy
/// does for these domains (exact match of the whole authority, port
/// included; else the `*` catch-all); None for the catch-all's 404.
fn routed_to(routes: &RouteConfiguration, host: &str) -> Option<String> {
    let host = host.to_ascii_lowercase();
    let exact: Vec<_> = routes
        .virtual_hosts
        .iter()
        .filter(|v| v.domains.iter().any(|d| d.to_ascii_lowercase() == host))
        .collect();
    assert!(exact.len() <= 1, "{host} is in several virtual hosts");
    let virtual_host = match exact.first() {
        Some(v) => v,
        None => routes
            .virtual_hosts
            .iter()
            .find(|v| v.domains == ["*"])
            .expect("a catch-all"),
    };
    let action = virtual_host.routes.last()?.action.as_ref()?;
    match action {
        route::Action::Route(r) => match &r.cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(c)) => Some(c.clone()),
            other => panic!("{other:?}"),
        },
        route::Action::DirectResponse(d) => {
            assert_eq!(d.status, 404);
            None
        }
        other => panic!("{other:?}"),
    }
}

const SCHEDULER: &str = "outbound|80||exam-scheduler.default.svc.cluster.local";
const GRADING_SCHEDULER: &str = "outbound|80||exam-scheduler.grading.svc.cluster.local";
const GRADER: &str = "outbound|8080||grader.grading.svc.cluster.local";

#[test]
fn every_kubernetes_dns_form_reaches_the_service_with_and_without_port() {
    let mesh = mesh();
    let routes = outbound_routes(&mesh, "professor-tools-0.default");
    for host in [
        "exam-scheduler",
        "exam-scheduler:80",
        "exam-scheduler.default",
        "exam-scheduler.default:80",
        "exam-scheduler.default.svc",
        "exam-scheduler.default.svc:80",
        "exam-scheduler.default.svc.cluster.local",
        "exam-scheduler.default.svc.cluster.local:80",
    ] {
        assert_eq!(
            routed_to(&routes, host).as_deref(),
            Some(SCHEDULER),
            "{host}"
        );
    }
    // Port 8080 is no port of the service: nothing listens there in Kubernetes either.
    assert_eq!(routed_to(&routes, "exam-scheduler:8080"), None);
    assert_eq!(routed_to(&routes, "exam-scheduler.default:8080"), None);
}

#[test]
fn a_port_other_than_80_needs_the_port_in_the_authority() {
    let mesh = mesh();
    let routes = outbound_routes(&mesh, "grading-client-0.grading");
    for host in [
        "grader:8080",
        "grader.grading:8080",
        "grader.grading.svc:8080",
        "grader.grading.svc.cluster.local:8080",
    ] {
        assert_eq!(routed_to(&routes, host).as_deref(), Some(GRADER), "{host}");
    }
    // Without a port an HTTP client means 80, which the service does not have.
    for host in [
        "grader",
        "grader:80",
        "grader.grading",
        "grader.grading.svc.cluster.local",
    ] {
        assert_eq!(routed_to(&routes, host), None, "{host}");
    }
}

#[test]
fn short_names_resolve_in_the_clients_own_namespace_only() {
    let mesh = mesh();
    let in_default = outbound_routes(&mesh, "professor-tools-0.default");
    let in_grading = outbound_routes(&mesh, "grading-client-0.grading");
    // The same short name means each client's own namespace's service.
    assert_eq!(
        routed_to(&in_default, "exam-scheduler").as_deref(),
        Some(SCHEDULER)
    );
    assert_eq!(
        routed_to(&in_grading, "exam-scheduler").as_deref(),
        Some(GRADING_SCHEDULER)
    );
    assert_eq!(
        routed_to(&in_grading, "exam-scheduler:80").as_deref(),
        Some(GRADING_SCHEDULER)
    );
    // Another namespace's service needs its namespace in the name.
    assert_eq!(routed_to(&in_default, "grader:8080"), None);
    assert_eq!(routed_to(&in_grading, "student-portal"), None);
    assert_eq!(
        routed_to(&in_default, "grader.grading:8080").as_deref(),
        Some(GRADER)
    );
    assert_eq!(
        routed_to(&in_grading, "exam-scheduler.default").as_deref(),
        Some(SCHEDULER)
    );
    assert_eq!(
        routed_to(&in_grading, "exam-scheduler.default.svc.cluster.local:80").as_deref(),
        Some(SCHEDULER)
    );
}

#[test]
fn service_domains_lists_each_form_once() {
    let mesh = mesh();
    let grader = mesh.services.iter().find(|s| s.name == "grader").unwrap();
    let domains = service_domains(grader, 8080, "default");
    assert_eq!(
        domains,
        vec![
            "grader.grading:8080",
            "grader.grading.svc:8080",
            "grader.grading.svc.cluster.local:8080",
        ]
    );
    let mut unique = domains.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), domains.len());
}
