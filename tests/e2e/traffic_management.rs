//! Istio's traffic-management tasks on Bookinfo, with Istio's own files unchanged
//! (`../shared/peer-tests/istio-samples/bookinfo/`), through real Envoys: request routing (the
//! user jason sees reviews v2, everyone else v1), fault injection (the 7 s delay that makes
//! reviews unavailable to jason, the abort that hides his ratings), traffic shifting (judged
//! statistically), request timeouts; then what `wardctl apply` and `delete` do to the running
//! mesh, and the errors a user gets for a route to nowhere.
//!
//! Deliberate differences from Istio's pages: requests go from productpage's own sidecar
//! (`wardctl exec productpage -- curl`) rather than through the ingress gateway, which comes
//! with gateways.

use std::time::{Duration, Instant};

use ward_e2e::{workspace_root, LocalMesh};

fn sample(path: &str) -> String {
    let path = workspace_root()
        .join("../shared/peer-tests/istio-samples/bookinfo")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `wardctl apply -f` of one of Istio's Bookinfo files, under its own name.
fn apply_sample(mesh: &LocalMesh, path: &str) -> String {
    let name = path.rsplit('/').next().unwrap();
    mesh.apply(name, &sample(path))
}

/// productpage's page as `user` (None: not logged in): (status, body, seconds).
fn product_page(mesh: &LocalMesh, user: Option<&str>) -> (u16, String, f64) {
    let jar = mesh
        .state_dir
        .join(format!("cookies-{}", user.unwrap_or("anonymous")));
    if let Some(user) = user {
        let (code, body) = mesh
            .curl_from(
                Some("productpage-v1"),
                &[
                    "-c",
                    jar.to_str().unwrap(),
                    "-d",
                    &format!("username={user}&passwd=password"),
                    "http://productpage:9080/login",
                ],
            )
            .unwrap();
        assert!(matches!(code, 200 | 302), "login as {user}: {code} {body}");
    }
    let started = Instant::now();
    let mut args = vec!["-m", "20"];
    if user.is_some() {
        args.extend(["-b", jar.to_str().unwrap()]);
    }
    args.push("http://productpage:9080/productpage");
    let (code, body) = mesh.curl_from(Some("productpage-v1"), &args).unwrap();
    (code, body, started.elapsed().as_secs_f64())
}

/// Which reviews version rendered the page: by its stars, as a user tells them apart (the
/// Bookinfo 1.20 page colours them with `text-black-500` or `text-red-500`).
fn reviews_version(page: &str) -> &'static str {
    if page.contains("text-red-500") {
        "v3"
    } else if page.contains("text-black-500") {
        "v2"
    } else if page.contains("glyphicon-star") {
        "unknown stars"
    } else {
        "v1"
    }
}

/// `n` calls from productpage to `reviews/0`: how many each version answered (by the pod
/// name it reports).
fn reviews_versions(mesh: &LocalMesh, n: usize) -> (usize, usize, usize) {
    let (mut v1, mut v2, mut v3) = (0, 0, 0);
    for _ in 0..n {
        let (code, body) = mesh
            .curl_from(Some("productpage-v1"), &["http://reviews:9080/reviews/0"])
            .unwrap();
        assert_eq!(code, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let pod = json["podname"].as_str().unwrap_or_default();
        match pod {
            p if p.starts_with("reviews-v1") => v1 += 1,
            p if p.starts_with("reviews-v2") => v2 += 1,
            p if p.starts_with("reviews-v3") => v3 += 1,
            other => panic!("reviews answered from {other:?}: {body}"),
        }
    }
    (v1, v2, v3)
}

#[test]
fn bookinfo_request_routing_faults_shifting_and_timeouts() {
    let mesh = LocalMesh::up("config/bookinfo").expect("mesh up");
    // config/bookinfo is Istio's file as shipped.
    assert_eq!(
        std::fs::read_to_string(workspace_root().join("config/bookinfo/bookinfo.yaml")).unwrap(),
        sample("platform/kube/bookinfo.yaml")
    );
    mesh.eventually(Duration::from_secs(30), || {
        let (code, page, _) = product_page(&mesh, None);
        anyhow::ensure!(code == 200, "{code}: {page}");
        anyhow::ensure!(page.contains("The Comedy of Errors"), "{page}");
        anyhow::ensure!(!page.contains("unavailable"), "{page}");
        Ok(())
    })
    .unwrap();

    // Before any route: reviews round robin over its three versions.
    let (v1, v2, v3) = reviews_versions(&mesh, 30);
    assert!(v1 > 0 && v2 > 0 && v3 > 0, "{v1} {v2} {v3}");

    // Request routing: everything to v1.
    apply_sample(&mesh, "networking/destination-rule-all.yaml");
    apply_sample(&mesh, "networking/virtual-service-all-v1.yaml");
    assert_eq!(reviews_versions(&mesh, 20), (20, 0, 0));
    for _ in 0..5 {
        let (code, page, _) = product_page(&mesh, None);
        assert_eq!((code, reviews_version(&page)), (200, "v1"), "{page}");
    }

    // `reviews-test-v2` replaces the `reviews` VirtualService all-v1 defined (kubectl's
    // semantics): jason, logged in through productpage, sees v2's black stars.
    let printed = apply_sample(&mesh, "networking/virtual-service-reviews-test-v2.yaml");
    assert!(
        printed.contains("virtualservice/reviews (namespace default) configured"),
        "{printed}"
    );
    let get = mesh.wardctl(&["get", "vs", "reviews"]).unwrap();
    let listed = String::from_utf8_lossy(&get.stdout);
    assert!(
        listed.contains("virtual-service-reviews-test-v2.yaml:1"),
        "{listed}"
    );
    for _ in 0..3 {
        let (code, page, _) = product_page(&mesh, Some("jason"));
        assert_eq!(code, 200);
        assert!(page.contains("jason"), "{page}");
        assert_eq!(reviews_version(&page), "v2", "{page}");
        let (_, page, _) = product_page(&mesh, None);
        assert_eq!(reviews_version(&page), "v1", "{page}");
        let (_, page, _) = product_page(&mesh, Some("alice"));
        assert_eq!(reviews_version(&page), "v1", "{page}");
    }

    // Fault injection: 7 s on ratings for jason. productpage gives up on reviews after its
    // own timeout (3 s, one retry), so jason sees the famous error, in about 6 s.
    apply_sample(&mesh, "networking/virtual-service-ratings-test-delay.yaml");
    let (code, page, seconds) = product_page(&mesh, Some("jason"));
    assert_eq!(code, 200);
    assert!(
        page.contains("Sorry, product reviews are currently unavailable for this book."),
        "{page}"
    );
    // 6 s and some, however loaded the machine (the content above is the proof).
    assert!((5.5..12.0).contains(&seconds), "{seconds} s");
    let (_, page, seconds) = product_page(&mesh, None);
    assert_eq!(reviews_version(&page), "v1");
    assert!(seconds < 5.0, "{seconds} s");

    // The abort: ratings answers jason 500, reviews v2 shows it.
    apply_sample(&mesh, "networking/virtual-service-ratings-test-abort.yaml");
    let (code, page, _) = product_page(&mesh, Some("jason"));
    assert_eq!(code, 200);
    assert!(
        page.contains("Ratings service is currently unavailable"),
        "{page}"
    );
    let (_, page, _) = product_page(&mesh, None);
    assert!(!page.contains("currently unavailable"), "{page}");

    // Traffic shifting, judged statistically: 50/50 over 100 requests falls within 30..70
    // except with probability < 1e-4; 80/20 over 200 within 20..60 for v2 (±3.5 σ).
    apply_sample(&mesh, "networking/virtual-service-reviews-50-v3.yaml");
    let (v1, v2, v3) = reviews_versions(&mesh, 100);
    assert_eq!(v2, 0);
    assert!((30..=70).contains(&v3), "v1 {v1}, v3 {v3}");
    apply_sample(&mesh, "networking/virtual-service-reviews-80-20.yaml");
    let (v1, v2, v3) = reviews_versions(&mesh, 200);
    assert_eq!(v3, 0);
    assert!((20..=60).contains(&v2), "v1 {v1}, v2 {v2}");

    // Request timeouts (Istio's task, its YAML as the page gives it): reviews v2 with a
    // 0.5 s timeout, ratings delayed 2 s: the page comes back fast, without reviews.
    mesh.apply(
        "reviews-timeout.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
    timeout: 0.5s
",
    );
    mesh.apply(
        "ratings-delay.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - fault:
      delay:
        percent: 100
        fixedDelay: 2s
    route:
    - destination:
        host: ratings
        subset: v1
",
    );
    let (code, page, seconds) = product_page(&mesh, None);
    assert_eq!(code, 200);
    assert!(
        page.contains("Sorry, product reviews are currently unavailable for this book."),
        "{page}"
    );
    // Without the timeout reviews would wait the full 2 s for ratings, and show stars.
    assert!(seconds < 4.0, "{seconds} s");

    // Bad input: a subset nobody defined. Refused with file, line, column and field; the
    // last good config keeps serving.
    let bad =
        sample("networking/virtual-service-reviews-v3.yaml").replace("subset: v3", "subset: v4");
    let path = mesh.state_dir.join("reviews-v4.yaml");
    std::fs::write(&path, &bad).unwrap();
    let out = mesh
        .wardctl(&["apply", "-f", path.to_str().unwrap()])
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reviews-v4.yaml:12:9: spec.http[0].route[0].destination.subset: reviews.default.svc.cluster.local has no subset `v4`: its DestinationRule defines v1, v2, v3"),
        "{stderr}"
    );
    let (code, _, _) = product_page(&mesh, None);
    assert_eq!(code, 200);

    // `wardctl delete -f` takes the routes away again: back to round robin.
    let delete = |name: &str, text: &str| {
        let path = mesh.state_dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = mesh
            .wardctl(&["delete", "-f", path.to_str().unwrap()])
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    delete(
        "all-v1.yaml",
        &sample("networking/virtual-service-all-v1.yaml"),
    );
    let (v1, v2, v3) = reviews_versions(&mesh, 30);
    assert!(v1 > 0 && v2 > 0 && v3 > 0, "{v1} {v2} {v3}");

    // Kuma's TrafficRoute on the same mechanism: 90/10 between version tags. Over 200
    // requests v2 gets 20 ± 3.5 σ (σ 4.2): 6..34.
    mesh.apply(
        "reviews-kuma.yaml",
        "apiVersion: kuma.io/v1alpha1
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
",
    );
    let (v1, v2, v3) = reviews_versions(&mesh, 200);
    assert_eq!(v3, 0, "v1 {v1}, v2 {v2}");
    assert!((6..=34).contains(&v2), "v1 {v1}, v2 {v2}");
}

/// The VirtualService routes of the feature test below, on httpbin v1 and v2.
const HTTPBIN_ROUTES: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - httpbin
  http:
  - name: teapot
    match:
    - uri:
        prefix: /teapot
    directResponse:
      status: 418
      body:
        string: "short and stout\n"
  - name: moved
    match:
    - uri:
        exact: /old
    redirect:
      uri: /headers
      authority: httpbin.example
      redirectCode: 302
  - name: api
    match:
    - uri:
        prefix: /api/
    rewrite:
      uri: /anything/
    route:
    - destination:
        host: httpbin
        subset: v1
  - name: canary
    match:
    - headers:
        x-canary:
          exact: "yes"
      withoutHeaders:
        x-skip: {}
    route:
    - destination:
        host: httpbin
        subset: v2
      headers:
        request:
          set:
            x-subset: v2
  - name: slow
    match:
    - uri:
        prefix: /delay/
    timeout: 1s
    route:
    - destination:
        host: httpbin
        subset: v1
  - name: flaky
    match:
    - uri:
        prefix: /status/
      queryParams:
        retry:
          exact: "yes"
    retries:
      attempts: 3
      retryOn: 5xx
    route:
    - destination:
        host: httpbin
        subset: v1
  - name: default
    headers:
      request:
        set:
          x-route: default
        remove:
        - x-remove-me
      response:
        add:
          x-served-by: ward
    mirror:
      host: httpbin
      subset: v2
    mirrorPercentage:
      value: 100
    corsPolicy:
      allowOrigins:
      - exact: https://example.com
      allowMethods:
      - GET
      maxAge: 1h
    route:
    - destination:
        host: httpbin
        subset: v1
"#;

/// `curl -i` from sleep: (status, headers and body).
fn from_sleep(mesh: &LocalMesh, args: &[&str]) -> (u16, String) {
    let mut all = vec!["-i"];
    all.extend(args);
    mesh.curl_from(Some("sleep"), &all).unwrap()
}

#[test]
fn virtual_service_features_through_real_envoys() {
    let mesh = LocalMesh::up("tests/configs/httpbin-versions").expect("mesh up");
    mesh.wait_for_200("sleep", "http://httpbin:8000/headers");
    mesh.apply("httpbin-routes.yaml", HTTPBIN_ROUTES);

    // A direct response: the sidecar answers, httpbin never sees the request.
    let (code, out) = from_sleep(&mesh, &["http://httpbin:8000/teapot"]);
    assert_eq!(code, 418, "{out}");
    assert!(out.ends_with("short and stout\n"), "{out}");

    // A redirect.
    let (code, out) = from_sleep(&mesh, &["http://httpbin:8000/old"]);
    assert_eq!(code, 302, "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("location: http://httpbin.example/headers"),
        "{out}"
    );

    // A rewrite: /api/x reaches httpbin as /anything/x.
    let (code, out) = from_sleep(&mesh, &["http://httpbin:8000/api/books?id=7"]);
    assert_eq!(code, 200, "{out}");
    assert!(out.contains("/anything/books?id=7"), "{out}");

    // Header matches, with `withoutHeaders` narrowing: the canary goes to v2 and gets the
    // destination's header; with x-skip it falls through to the default route.
    let (code, out) = from_sleep(
        &mesh,
        &["-H", "x-canary: yes", "http://httpbin:8000/headers"],
    );
    assert_eq!(code, 200, "{out}");
    assert!(out.contains("\"X-Subset\""), "{out}");
    let (_, out) = from_sleep(
        &mesh,
        &[
            "-H",
            "x-canary: yes",
            "-H",
            "x-skip: 1",
            "http://httpbin:8000/headers",
        ],
    );
    assert!(
        !out.contains("\"X-Subset\"") && out.contains("\"X-Route\""),
        "{out}"
    );

    // Header changes on the default route, both ways.
    let (code, out) = from_sleep(
        &mesh,
        &[
            "-H",
            "x-remove-me: secret",
            "http://httpbin:8000/headers?mirror-probe=1",
        ],
    );
    assert_eq!(code, 200, "{out}");
    assert!(out.contains("\"X-Route\": \"default\""), "{out}");
    assert!(!out.to_ascii_lowercase().contains("x-remove-me"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("x-served-by: ward"),
        "{out}"
    );

    // The mirror: v2 saw a copy of that request (Envoy adds `-shadow` to the host).
    mesh.eventually(Duration::from_secs(10), || {
        let out = mesh.wardctl(&["logs", "httpbin-v2", "--only", "proxy"])?;
        let log = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(log.contains("mirror-probe=1"), "{log}");
        Ok(())
    })
    .unwrap();

    // A timeout: httpbin's /delay/3 takes 3 s, the route allows 1.
    let started = Instant::now();
    let (code, out) = from_sleep(&mesh, &["http://httpbin:8000/delay/3"]);
    assert_eq!(code, 504, "{out}");
    assert!(out.ends_with("upstream request timeout"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Retries: 1 request, 4 attempts (`wardctl routes` counts them from the client's log).
    let (code, _) = from_sleep(&mesh, &["http://httpbin:8000/status/503?retry=yes"]);
    assert_eq!(code, 503);
    std::thread::sleep(Duration::from_millis(500));
    let out = mesh
        .wardctl(&[
            "routes", "sleep", "--to", "httpbin", "--window", "60s", "--json",
        ])
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let flaky = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "flaky")
        .unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(
        (flaky["requests"].as_u64(), flaky["attempts"].as_u64()),
        (Some(1), Some(4)),
        "{flaky}"
    );
    // Without the query parameter the route does not match: one attempt.
    let (code, _) = from_sleep(&mesh, &["http://httpbin:8000/status/503"]);
    assert_eq!(code, 503);

    // CORS: a preflight from the allowed origin is answered by the sidecar; another origin
    // gets no allow header.
    let preflight = |origin: &str| {
        from_sleep(
            &mesh,
            &[
                "-X",
                "OPTIONS",
                "-H",
                &format!("origin: {origin}"),
                "-H",
                "access-control-request-method: GET",
                "http://httpbin:8000/headers",
            ],
        )
        .1
        .to_ascii_lowercase()
    };
    let allowed = preflight("https://example.com");
    assert!(
        allowed.contains("access-control-allow-origin: https://example.com"),
        "{allowed}"
    );
    assert!(
        allowed.contains("access-control-max-age: 3600"),
        "{allowed}"
    );
    assert!(
        !preflight("https://evil.example").contains("access-control-allow-origin"),
        "CORS allowed another origin"
    );

    // Routes bound only to a gateway never touch the sidecars.
    mesh.apply(
        "gateway-only.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
  - httpbin
  gateways:
  - httpbin-gateway
  http:
  - directResponse:
      status: 500
",
    );
    let (code, out) = from_sleep(&mesh, &["http://httpbin:8000/headers"]);
    assert_eq!(code, 200, "{out}");
}

/// The Gateway API's mesh conformance manifests, unchanged: Istio's echo app behind Services
/// whose ports Istio's protocol selection reads (`http`, `grpc`, `tcp`).
const CONFORMANCE_MESH: &str = "../shared/peer-tests/gateway-api/manifests/mesh";

/// The sidecar address of `workload`'s first instance in `namespace`.
fn sidecar_address(mesh: &LocalMesh, workload: &str, namespace: &str) -> String {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mesh.state_dir.join("state.json")).unwrap()).unwrap();
    state["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["workload"] == workload && i["namespace"] == namespace)
        .and_then(|i| i["address"].as_str())
        .unwrap_or_else(|| panic!("no {namespace}/{workload}"))
        .to_string()
}

#[test]
fn http2_and_grpc_ports_are_http2_end_to_end() {
    let mesh = LocalMesh::up(CONFORMANCE_MESH).expect("mesh up");
    let consumer = "gateway-conformance-mesh-consumer";
    let echo = |url: &str| {
        mesh.eventually(Duration::from_secs(20), || {
            let (code, body) = mesh.curl_from_in(Some("echo-v1"), consumer, &[url])?;
            anyhow::ensure!(code == 200, "{code}: {body}");
            Ok(body)
        })
        .unwrap()
    };
    // An `http` port: HTTP/1.1 all the way to the app.
    let body = echo("http://echo.gateway-conformance-mesh/");
    assert!(body.contains("Proto=HTTP/1.1"), "{body}");
    assert!(body.contains("Hostname=echo-v"), "{body}");

    // The `grpc` port: a gRPC call (h2c from the client into its sidecar) reaches the
    // app's gRPC server over HTTP/2, through both sidecars and their mTLS.
    let sidecar = sidecar_address(&mesh, "echo-v1", consumer);
    let frame = mesh.state_dir.join("echo-request.bin");
    // EchoRequest{message: "ward"}: field 1, length 4, in a gRPC frame (uncompressed, 6 bytes).
    std::fs::write(&frame, b"\x00\x00\x00\x00\x06\x0a\x04ward").unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-i",
            "-m",
            "10",
            "--http2-prior-knowledge",
            "-H",
            "host: echo.gateway-conformance-mesh:7070",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
        ])
        .arg(format!("@{}", frame.display()))
        .arg(format!("http://{sidecar}:15001/proto.EchoTestService/Echo"))
        .output()
        .unwrap();
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(reply.starts_with("HTTP/2 200"), "{reply}");
    assert!(reply.contains("content-type: application/grpc"), "{reply}");
    assert!(reply.contains("Echo=ward"), "{reply}");
    assert!(reply.contains("Hostname=echo-v"), "{reply}");
    assert!(!reply.contains("grpc-status: 1"), "{reply}");
}
