//! JWT request authentication (Istio's RequestAuthentication) on real Envoys: seed 001's
//! task 6.1 with Istio's sample tokens (`../shared/peer-tests/istio-jwt/`), keys fetched by
//! xds-server from a `jwksUri`, and AuthorizationPolicies on request principals and claims.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ward_e2e::{workspace_root, LocalMesh};

fn sample(name: &str) -> String {
    std::fs::read_to_string(
        workspace_root()
            .join("../shared/peer-tests/istio-jwt")
            .join(name),
    )
    .unwrap()
    .trim()
    .to_string()
}

fn test_issuer_token(name: &str) -> String {
    sample("test-issuers/tokens.txt")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap()
        .trim()
        .to_string()
}

/// A JWKS endpoint on loopback serving whatever `document` holds (the seed's URL is on
/// GitHub; this machine has no internet). Returns its URL.
fn jwks_server(document: Arc<Mutex<String>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buffer = [0u8; 2048];
            let _ = stream.read(&mut buffer);
            let body = document.lock().unwrap().clone();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// `curl` from reviews to productpage with an optional bearer token: (status, body).
fn call(mesh: &LocalMesh, token: Option<&str>, extra: &[&str]) -> (u16, String) {
    let header = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args: Vec<&str> = vec!["http://productpage:9080/"];
    if let Some(h) = &header {
        args.extend(["-H", h]);
    }
    args.extend(extra);
    mesh.curl_from(Some("reviews"), &args).unwrap()
}

/// An ALLOW AuthorizationPolicy on productpage with these `rules` items.
fn productpage_policy(rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: require-jwt
  namespace: default
spec:
  selector:
    matchLabels:
      app: productpage
  rules:
{rules}"
    )
}

/// Seed 001, task 6.1, with the jwksUri pointing at the local copy of Istio's sample JWKS.
fn request_authentication(jwks_uri: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata:
  name: jwt-example
  namespace: default
spec:
  selector:
    matchLabels:
      app: productpage
  jwtRules:
  - issuer: \"testing@secure.istio.io\"
    jwksUri: \"{jwks_uri}\"
"
    )
}

#[test]
fn jwt_tokens_are_verified_and_policies_see_their_principal_and_claims() {
    let mesh = LocalMesh::up("tests/configs/bookinfo").expect("mesh up");
    let document = Arc::new(Mutex::new(sample("jwks.json")));
    let url = jwks_server(document.clone());
    mesh.apply("jwt.yaml", &request_authentication(&url));
    let demo = sample("demo.jwt");
    let groups = sample("groups-scope.jwt");

    // Authentication alone: no token passes, a good token passes, bad ones get 401.
    assert_eq!(call(&mesh, None, &[]).0, 200);
    mesh.eventually(Duration::from_secs(10), || {
        let (status, body) = call(&mesh, Some(&demo), &[]);
        anyhow::ensure!(status == 200, "demo.jwt: {status} {body}");
        Ok(())
    })
    .unwrap();
    let (status, body) = call(&mesh, Some("TokenInvalid"), &["-D", "-"]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("www-authenticate: Bearer"), "{body}");
    assert!(
        body.ends_with(
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
        ),
        "{body}"
    );
    let other_issuer = test_issuer_token("TokenIssuer1");
    assert_eq!(
        call(&mesh, Some(&other_issuer), &[]),
        (401, "Jwt issuer is not configured".to_string())
    );
    let mut tampered: Vec<&str> = demo.split('.').collect();
    let forged_payload = "eyJpc3MiOiJ0ZXN0aW5nQHNlY3VyZS5pc3Rpby5pbyIsInN1YiI6Im1hbGxvcnkifQ";
    tampered[1] = forged_payload;
    assert_eq!(
        call(&mesh, Some(&tampered.join(".")), &[]),
        (401, "Jwt verification fails".to_string())
    );

    // A policy on the request principal: no token is now 403, demo.jwt passes.
    mesh.apply(
        "require-jwt.yaml",
        &productpage_policy(
            "  - from:
    - source:
        requestPrincipals: [\"testing@secure.istio.io/testing@secure.istio.io\"]
",
        ),
    );
    assert_eq!(
        call(&mesh, None, &[]),
        (403, "RBAC: access denied".to_string())
    );
    assert_eq!(call(&mesh, Some(&demo), &[]).0, 200);

    // A claim rule: only tokens with group1 in `groups`.
    mesh.apply(
        "require-jwt.yaml",
        &productpage_policy(
            "  - when:
    - key: request.auth.claims[groups]
      values: [\"group1\"]
",
        ),
    );
    assert_eq!(call(&mesh, Some(&groups), &[]).0, 200);
    assert_eq!(
        call(&mesh, Some(&demo), &[]),
        (403, "RBAC: access denied".to_string())
    );
    // wardctl check agrees, token by token (it fetches the jwksUri as xds-server does).
    for (token, verdict) in [
        (groups.as_str(), "ALLOW"),
        (demo.as_str(), "DENY"),
        ("TokenInvalid", "UNAUTHENTICATED"),
    ] {
        let out = mesh
            .wardctl(&[
                "check",
                "productpage",
                "--from",
                "reviews",
                "--token",
                token,
                "--json",
            ])
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["verdict"], verdict, "{report}");
    }

    // Key rotation: the JWKS loses the key, then gets it back; xds-server fetches again after
    // a config change (and every 5 minutes), no restart.
    *document.lock().unwrap() = r#"{"keys":[]}"#.to_string();
    mesh.apply("jwt.yaml", &request_authentication(&url));
    mesh.eventually(Duration::from_secs(10), || {
        let (status, body) = call(&mesh, Some(&groups), &[]);
        anyhow::ensure!(status == 401, "{status} {body}");
        Ok(())
    })
    .unwrap();
    *document.lock().unwrap() = sample("jwks.json");
    mesh.apply("jwt.yaml", &request_authentication(&url));
    mesh.eventually(Duration::from_secs(10), || {
        let (status, body) = call(&mesh, Some(&groups), &[]);
        anyhow::ensure!(status == 200, "{status} {body}");
        Ok(())
    })
    .unwrap();
    let status = mesh.status_json().unwrap();
    assert_eq!(status["jwks"][&url]["keys"], 1, "{status}");
    let out = mesh.wardctl(&["status"]).unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains(&format!("{url}: 1 keys")), "{printed}");
    assert!(mesh
        .metrics()
        .unwrap()
        .contains("ward_jwks_fetches_total{result=\"ok\"}"));

    // The JWKS endpoint goes away: the last good keys stay, and status says so.
    *document.lock().unwrap() = "not json".to_string();
    mesh.apply("jwt.yaml", &request_authentication(&url));
    mesh.eventually(Duration::from_secs(10), || {
        let out = mesh.wardctl(&["status"])?;
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        anyhow::ensure!(printed.contains("last fetch FAILED"), "{printed}");
        Ok(())
    })
    .unwrap();
    assert_eq!(call(&mesh, Some(&groups), &[]).0, 200);
}

/// Istio's JWT task on httpbin (namespace foo): the verified payload and a claim reach the
/// app in the headers the rule names, the token does not, and a client cannot forge them.
#[test]
fn verified_payload_and_claims_reach_the_app_and_cannot_be_forged() {
    let mesh = LocalMesh::up("tests/configs/httpbin").expect("mesh up");
    let jwks: String = sample("jwks.json")
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    mesh.apply(
        "jwt.yaml",
        &format!(
            "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt-example
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  jwtRules:
  - issuer: \"testing@secure.istio.io\"
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders:
    - header: x-jwt-iss
      claim: iss
    jwks: |
{jwks}"
        ),
    );
    let demo = sample("demo.jwt");
    // `kubectl exec -n foo deploy/sleep -- curl ...`: (status, body).
    let curl = |args: &[&str]| mesh.curl_from_in(Some("sleep"), "foo", args).unwrap();
    let headers = |extra: &[&str]| {
        let mut args = vec!["http://httpbin.foo:8000/headers"];
        args.extend(extra);
        let (status, body) = curl(&args);
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        json["headers"].clone()
    };
    let bearer = format!("Authorization: Bearer {demo}");
    let seen = headers(&["-H", &bearer]);
    assert_eq!(
        seen["X-Jwt-Payload"],
        demo.split('.').nth(1).unwrap(),
        "{seen}"
    );
    assert_eq!(seen["X-Jwt-Iss"], "testing@secure.istio.io", "{seen}");
    assert!(
        seen.get("Authorization").is_none(),
        "the token is not forwarded: {seen}"
    );

    // Without a token, headers a client writes itself do not reach the app.
    let seen = headers(&[
        "-H",
        "x-jwt-iss: testing@secure.istio.io",
        "-H",
        "X-Jwt-Payload: e30",
    ]);
    assert!(seen.get("X-Jwt-Iss").is_none(), "{seen}");
    assert!(seen.get("X-Jwt-Payload").is_none(), "{seen}");

    // Istio's task: an invalid token is refused.
    let (status, body) = curl(&[
        "http://httpbin.foo:8000/headers",
        "-H",
        "Authorization: Bearer invalidToken",
    ]);
    assert_eq!(status, 401, "{body}");
}
