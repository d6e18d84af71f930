//! Istio's Bookinfo traffic-management samples, unchanged (`../shared/peer-tests/
//! istio-samples/`), loaded with the sample app: what each task's YAML becomes in the model.

use std::path::PathBuf;

use crate::load_sources;
use crate::model::{
    FaultStatus, HashKey, LoadBalancer, Mesh, RouteDestination, StringMatch, PER_MILLION,
};

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/peer-tests/istio-samples")
}

fn sample(path: &str) -> (String, String) {
    let text =
        std::fs::read_to_string(samples().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    (path.to_string(), text)
}

/// Bookinfo, its DestinationRules and `extra` samples, loaded.
fn bookinfo_with(extra: &[&str]) -> (Mesh, Vec<String>) {
    let mut files = vec![
        sample("bookinfo/platform/kube/bookinfo.yaml"),
        sample("bookinfo/networking/destination-rule-all.yaml"),
    ];
    files.extend(extra.iter().map(|f| sample(f)));
    let loaded = load_sources(&files).unwrap_or_else(|e| panic!("{e}"));
    let warnings = loaded.warnings.iter().map(ToString::to_string).collect();
    (loaded.mesh, warnings)
}

fn to(host: &str, subset: &str, weight: u32) -> RouteDestination {
    RouteDestination {
        host: format!("{host}.default.svc.cluster.local"),
        port: None,
        subset: Some(subset.to_string()),
        weight,
        headers: Default::default(),
    }
}

#[test]
fn destination_rule_all_gives_each_service_its_version_subsets() {
    let (mesh, warnings) = bookinfo_with(&[]);
    let reviews = mesh.services.iter().find(|s| s.name == "reviews").unwrap();
    let names: Vec<&str> = mesh
        .subsets_of(reviews)
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["v1", "v2", "v3"]);
    // ratings v2, v2-mysql, v2-mysql-vm and details v2 have no Deployment in bookinfo.yaml:
    // routes to them would fail, and the user is told where.
    let no_pod: Vec<&String> = warnings
        .iter()
        .filter(|w| w.contains("selects no pod"))
        .collect();
    assert_eq!(no_pod.len(), 4, "{warnings:#?}");
    assert!(
        no_pod[0].starts_with(
            "bookinfo/networking/destination-rule-all.yaml:39:5: spec.subsets[1]: subset `v2` (version=v2) selects no pod of ratings.default.svc.cluster.local"
        ),
        "{no_pod:#?}"
    );
}

#[test]
fn request_routing_sends_jason_to_v2_and_everyone_else_to_v1() {
    let (mesh, _) = bookinfo_with(&["bookinfo/networking/virtual-service-reviews-test-v2.yaml"]);
    let reviews = mesh.services.iter().find(|s| s.name == "reviews").unwrap();
    let vs = mesh.virtual_service(reviews).unwrap();
    assert_eq!(vs.http.len(), 2);
    assert_eq!(
        vs.http[0].matches[0].headers,
        vec![("end-user".to_string(), StringMatch::Exact("jason".into()))]
    );
    assert_eq!(vs.http[0].destinations, vec![to("reviews", "v2", 100)]);
    assert_eq!(vs.http[1].destinations, vec![to("reviews", "v1", 100)]);
}

#[test]
fn traffic_shifting_weights_and_faults_load_as_written() {
    let (mesh, _) = bookinfo_with(&["bookinfo/networking/virtual-service-reviews-80-20.yaml"]);
    let vs = &mesh.virtual_services[0];
    assert_eq!(
        vs.http[0].destinations,
        vec![to("reviews", "v1", 80), to("reviews", "v2", 20)]
    );

    let (mesh, _) = bookinfo_with(&["bookinfo/networking/virtual-service-ratings-test-delay.yaml"]);
    let delay = mesh.virtual_services[0].http[0]
        .fault
        .as_ref()
        .unwrap()
        .delay
        .unwrap();
    assert_eq!((delay.fixed_ms, delay.per_million), (7000, PER_MILLION));

    let (mesh, _) = bookinfo_with(&["bookinfo/networking/virtual-service-ratings-test-abort.yaml"]);
    let abort = mesh.virtual_services[0].http[0]
        .fault
        .clone()
        .unwrap()
        .abort
        .unwrap();
    assert_eq!(abort.status, FaultStatus::Http(500));
    assert_eq!(abort.per_million, PER_MILLION);
}

#[test]
fn every_bookinfo_virtual_service_sample_loads() {
    // The samples meant for sidecars; the gateway's and the egress ones come with gateways.
    for file in [
        "virtual-service-all-v1.yaml",
        "virtual-service-details-v2.yaml",
        "virtual-service-ratings-db.yaml",
        "virtual-service-ratings-mysql.yaml",
        "virtual-service-ratings-mysql-vm.yaml",
        "virtual-service-ratings-test-abort.yaml",
        "virtual-service-ratings-test-delay.yaml",
        "virtual-service-reviews-50-v3.yaml",
        "virtual-service-reviews-80-20.yaml",
        "virtual-service-reviews-90-10.yaml",
        "virtual-service-reviews-jason-v2-v3.yaml",
        "virtual-service-reviews-test-v2.yaml",
        "virtual-service-reviews-v2-v3.yaml",
        "virtual-service-reviews-v3.yaml",
    ] {
        let (mesh, _) = bookinfo_with(&[&format!("bookinfo/networking/{file}")]);
        assert!(!mesh.virtual_services.is_empty(), "{file}");
    }
}

#[test]
fn subset_policies_override_the_rules_field_by_field() {
    let rule = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
    connectionPool:
      tcp:
        maxConnections: 10
    portLevelSettings:
    - port:
        number: 9080
      loadBalancer:
        consistentHash:
          httpCookie:
            name: user
            ttl: 0s
  subsets:
  - name: v1
    labels:
      version: v1
    trafficPolicy:
      loadBalancer:
        consistentHash:
          httpHeaderName: End-User
  - name: v2
    labels:
      version: v2
";
    let mut files = vec![sample("bookinfo/platform/kube/bookinfo.yaml")];
    files.push(("dr.yaml".into(), rule.into()));
    let loaded = load_sources(&files).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let mesh = &loaded.mesh;
    let reviews = mesh.services.iter().find(|s| s.name == "reviews").unwrap();
    let v1 = mesh.traffic_policy(reviews, 9080, Some("v1"));
    assert_eq!(
        v1.load_balancer,
        Some(LoadBalancer::ConsistentHash {
            key: HashKey::Header("end-user".into()),
            minimum_ring_size: 1024
        })
    );
    assert_eq!(v1.connection_pool.unwrap().max_connections, Some(10));
    let v2 = mesh.traffic_policy(reviews, 9080, Some("v2"));
    assert_eq!(
        v2.load_balancer,
        Some(LoadBalancer::ConsistentHash {
            key: HashKey::Cookie {
                name: "user".into(),
                path: None,
                ttl_ms: Some(0)
            },
            minimum_ring_size: 1024
        })
    );
    assert_eq!(
        mesh.traffic_policy(reviews, 80, None).load_balancer,
        Some(LoadBalancer::LeastRequest)
    );
}

#[test]
fn two_rules_for_one_host_merge_their_subsets_and_keep_the_first_policy() {
    let first = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews-a
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: RANDOM
  subsets:
  - name: v1
    labels:
      version: v1
";
    let second = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews-b
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
  subsets:
  - name: v1
    labels:
      version: v3
  - name: v2
    labels:
      version: v2
";
    let files = vec![
        sample("bookinfo/platform/kube/bookinfo.yaml"),
        ("a.yaml".to_string(), first.to_string()),
        ("b.yaml".to_string(), second.to_string()),
    ];
    let loaded = load_sources(&files).unwrap();
    let mesh = &loaded.mesh;
    assert_eq!(mesh.destination_rules.len(), 1);
    let rule = &mesh.destination_rules[0];
    let subsets: Vec<(&str, &str)> = rule
        .subsets
        .iter()
        .map(|s| (s.name.as_str(), s.labels["version"].as_str()))
        .collect();
    assert_eq!(subsets, [("v1", "v1"), ("v2", "v2")]);
    assert_eq!(rule.policy.load_balancer, Some(LoadBalancer::Random));
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    for expected in [
        "b.yaml:7:3: spec.trafficPolicy: ignored: DestinationRule default/reviews-a (a.yaml:1) also sets",
        "b.yaml:11:5: spec.subsets[0]: ignored: DestinationRule default/reviews-a (a.yaml:1) already defines subset `v1`",
    ] {
        assert!(
            warnings.iter().any(|w| w.starts_with(expected)),
            "no {expected:?} in {warnings:#?}"
        );
    }
}

#[test]
fn routes_bound_only_to_a_gateway_leave_the_sidecars_alone() {
    let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  gateways:
  - bookinfo-gateway
  http:
  - route:
    - destination:
        host: reviews
        subset: v3
";
    let mut files = vec![
        sample("bookinfo/platform/kube/bookinfo.yaml"),
        sample("bookinfo/networking/destination-rule-all.yaml"),
    ];
    files.push(("vs.yaml".into(), vs.into()));
    let loaded = load_sources(&files).unwrap();
    let mesh = &loaded.mesh;
    assert_eq!(
        mesh.virtual_services[0].gateways,
        ["default/bookinfo-gateway"]
    );
    let reviews = mesh.services.iter().find(|s| s.name == "reviews").unwrap();
    assert!(mesh.virtual_service(reviews).is_none());
}

#[test]
fn every_http_route_field_of_istios_tasks_loads() {
    let vs = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - name: canary
    match:
    - headers:
        end-user:
          exact: Marco
        x-debug: {}
      withoutHeaders:
        x-skip:
          prefix: "1"
      queryParams:
        v:
          regex: "[0-9]+"
      authority:
        prefix: reviews
      sourceNamespace: default
      sourceLabels:
        app: productpage
    rewrite:
      uri: /reviews
      authority: reviews.internal
    headers:
      request:
        set:
          X-Canary: "true"
        remove:
        - x-legacy
      response:
        add:
          x-served-by: v3
    fault:
      abort:
        grpcStatus: UNAVAILABLE
        percentage:
          value: 12.5
    mirror:
      host: reviews
      subset: v1
    mirrorPercentage:
      value: 50
    corsPolicy:
      allowOrigins:
      - exact: https://example.com
      allowMethods: [GET, POST]
      maxAge: 24h
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: gateway-error,connect-failure,unavailable
    timeout: 10s
    route:
    - destination:
        host: reviews
        subset: v3
      headers:
        request:
          add:
            x-subset: v3
  - match:
    - uri:
        exact: /old
    redirect:
      uri: /new
      redirectCode: 302
  - match:
    - uri:
        prefix: /teapot
    directResponse:
      status: 418
      body:
        string: "I'm a teapot"
  - route:
    - destination:
        host: reviews
        subset: v1
"#;
    let mut files = vec![
        sample("bookinfo/platform/kube/bookinfo.yaml"),
        sample("bookinfo/networking/destination-rule-all.yaml"),
    ];
    files.push(("vs.yaml".into(), vs.into()));
    let loaded = load_sources(&files).unwrap_or_else(|e| panic!("{e}"));
    let from_vs: Vec<String> = loaded
        .warnings
        .iter()
        .filter(|w| w.file == "vs.yaml")
        .map(ToString::to_string)
        .collect();
    assert!(from_vs.is_empty(), "{from_vs:#?}");
    let http = &loaded.mesh.virtual_services[0].http;
    let m = &http[0].matches[0];
    assert!(m
        .headers
        .contains(&("x-debug".into(), StringMatch::Present)));
    assert_eq!(
        m.without_headers,
        [("x-skip".into(), StringMatch::Prefix("1".into()))]
    );
    assert_eq!(m.source_labels["app"], "productpage");
    assert_eq!(
        http[0].headers.request.set,
        [("x-canary".into(), "true".into())]
    );
    assert_eq!(
        http[0]
            .fault
            .as_ref()
            .unwrap()
            .abort
            .as_ref()
            .unwrap()
            .status,
        FaultStatus::Grpc(14)
    );
    assert_eq!(http[0].mirrors[0].per_million, PER_MILLION / 2);
    assert_eq!(http[0].cors.as_ref().unwrap().max_age_seconds, Some(86_400));
    assert_eq!(http[1].redirect.as_ref().unwrap().code, 302);
    assert_eq!(http[2].direct_response.as_ref().unwrap().status, 418);
}

#[test]
fn protocols_are_selected_as_istio_selects_them() {
    use crate::model::{port_protocol, PortProtocol, ServicePort};
    let port = |name: Option<&str>, app: Option<&str>| ServicePort {
        name: name.map(str::to_string),
        port: 80,
        target_port: 80,
        protocol: "TCP".into(),
        app_protocol: app.map(str::to_string),
    };
    for (name, app, expected) in [
        (Some("http"), None, PortProtocol::Http),
        (Some("http-web"), None, PortProtocol::Http),
        (Some("grpc"), None, PortProtocol::Http2),
        (Some("grpc-echo"), None, PortProtocol::Http2),
        (Some("grpc-web"), None, PortProtocol::Http),
        (Some("grpc-web-ui"), None, PortProtocol::Http),
        (Some("http2-api"), None, PortProtocol::Http2),
        (Some("tcp-db"), None, PortProtocol::Tcp),
        (Some("mongo"), None, PortProtocol::Tcp),
        (Some("https"), None, PortProtocol::Tcp),
        (Some("web"), None, PortProtocol::Http),
        (None, None, PortProtocol::Http),
        (Some("http"), Some("grpc"), PortProtocol::Http2),
        (Some("tcp"), Some("kubernetes.io/h2c"), PortProtocol::Http2),
        (Some("grpc"), Some("tcp"), PortProtocol::Tcp),
    ] {
        assert_eq!(
            port_protocol(&port(name, app)),
            expected,
            "{name:?} {app:?}"
        );
    }
}

const KUMA_ROUTE: &str = "apiVersion: kuma.io/v1alpha1
kind: TrafficRoute
mesh: default
metadata:
  name: reviews-canary
spec:
  sources:
  - match:
      kuma.io/service: '*'
  destinations:
  - match:
      kuma.io/service: reviews_default_svc_9080
  conf:
    split:
    - weight: 90
      destination:
        kuma.io/service: reviews_default_svc_9080
        version: v1
    - weight: 10
      destination:
        kuma.io/service: reviews_default_svc_9080
        version: v2
";

#[test]
fn a_kuma_traffic_route_splits_by_version_tags() {
    let files = vec![
        sample("bookinfo/platform/kube/bookinfo.yaml"),
        ("route.yaml".to_string(), KUMA_ROUTE.to_string()),
    ];
    let loaded = load_sources(&files).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let mesh = &loaded.mesh;
    let reviews = mesh.services.iter().find(|s| s.name == "reviews").unwrap();
    let vs = mesh.virtual_service(reviews).unwrap();
    assert_eq!(vs.name, "kuma-reviews-canary");
    let split: Vec<(Option<&str>, u32)> = vs.http[0]
        .destinations
        .iter()
        .map(|d| (d.subset.as_deref(), d.weight))
        .collect();
    assert_eq!(split, [(Some("version-v1"), 90), (Some("version-v2"), 10)]);
    assert_eq!(mesh.subsets_of(reviews)[1].labels["version"], "v2");

    // Kuma's default route-all changes nothing; a tag naming no service is an error.
    let route_all = "apiVersion: kuma.io/v1alpha1
kind: TrafficRoute
mesh: default
metadata:
  name: route-all-default
spec:
  sources:
  - match:
      kuma.io/service: '*'
  destinations:
  - match:
      kuma.io/service: '*'
  conf:
    destination:
      kuma.io/service: '*'
";
    let files = vec![
        sample("bookinfo/platform/kube/bookinfo.yaml"),
        ("all.yaml".to_string(), route_all.to_string()),
    ];
    assert!(load_sources(&files)
        .unwrap()
        .mesh
        .virtual_services
        .is_empty());
    let wrong = KUMA_ROUTE.replace(
        "reviews_default_svc_9080\n  conf",
        "reviews_default_svc_80\n  conf",
    );
    let files = vec![
        sample("bookinfo/platform/kube/bookinfo.yaml"),
        ("route.yaml".to_string(), wrong),
    ];
    let error = load_sources(&files).unwrap_err().to_string();
    assert!(
        error.contains("route.yaml:12:7: spec.destinations[0].match: `reviews_default_svc_80`: Service default/reviews has no port 80"),
        "{error}"
    );
}

#[test]
fn the_closest_destination_rule_applies_exact_then_wildcard_then_root() {
    let rules = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: everything
  namespace: istio-system
spec:
  host: '*'
  trafficPolicy:
    loadBalancer:
      simple: RANDOM
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: namespace-wide
spec:
  host: '*.default.svc.cluster.local'
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
";
    let files = vec![
        sample("bookinfo/platform/kube/bookinfo.yaml"),
        ("rules.yaml".to_string(), rules.to_string()),
    ];
    let mesh = load_sources(&files).unwrap().mesh;
    let lb = |name: &str| {
        let service = mesh.services.iter().find(|s| s.name == name).unwrap();
        mesh.traffic_policy(service, 9080, None).load_balancer
    };
    assert_eq!(lb("reviews"), Some(LoadBalancer::RoundRobin));
    assert_eq!(lb("ratings"), Some(LoadBalancer::LeastRequest));
    let mesh_wide_only = vec![
        sample("bookinfo/platform/kube/bookinfo.yaml"),
        (
            "rules.yaml".to_string(),
            rules.split("---").next().unwrap().to_string(),
        ),
    ];
    let mesh = load_sources(&mesh_wide_only).unwrap().mesh;
    let ratings = mesh.services.iter().find(|s| s.name == "ratings").unwrap();
    assert_eq!(
        mesh.traffic_policy(ratings, 9080, None).load_balancer,
        Some(LoadBalancer::Random)
    );
}
