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

/// A token signed with Istio's published test key (`key.pem`), under key id `kid`.
fn mint(kid: &str, claims: serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::signature::{SignatureEncoding, Signer};
    let key = rsa::RsaPrivateKey::from_pkcs1_pem(&sample("key.pem")).unwrap();
    let signing = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key);
    let header = serde_json::json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = signing.sign(message.as_bytes()).to_bytes();
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Keys rotated at the issuer: a token signed with a key the sidecar lacks is refused, the
/// sidecar asks xds-server to fetch the `jwksUri` again, and the same token then passes. No
/// config change and no restart: the periodic fetch is 5 minutes away.
#[test]
fn a_token_signed_with_a_new_key_makes_xds_server_fetch_the_keys_again() {
    let mesh = LocalMesh::up("tests/configs/bookinfo").expect("mesh up");
    let document = Arc::new(Mutex::new(sample("jwks.json")));
    let url = jwks_server(document.clone());
    mesh.apply("jwt.yaml", &request_authentication(&url));
    let demo = sample("demo.jwt");
    mesh.eventually(Duration::from_secs(10), || {
        let (status, body) = call(&mesh, Some(&demo), &[]);
        anyhow::ensure!(status == 200, "demo.jwt: {status} {body}");
        Ok(())
    })
    .unwrap();

    // The issuer publishes a new key (its test key under a new id) and signs with it.
    let mut jwks: serde_json::Value = serde_json::from_str(&sample("jwks.json")).unwrap();
    let mut rotated = jwks["keys"][0].clone();
    rotated["kid"] = "rotated-2026-11".into();
    jwks["keys"].as_array_mut().unwrap().push(rotated);
    *document.lock().unwrap() = jwks.to_string();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = mint(
        "rotated-2026-11",
        serde_json::json!({"iss": "testing@secure.istio.io", "sub": "rotated", "exp": exp}),
    );
    assert_eq!(
        call(&mesh, Some(&token), &[]),
        (
            401,
            "Jwks doesn't have key to match kid or alg from Jwt".to_string()
        ),
        "the sidecar does not have the new key yet"
    );
    mesh.eventually(Duration::from_secs(15), || {
        let (status, body) = call(&mesh, Some(&token), &[]);
        anyhow::ensure!(status == 200, "token with the new key: {status} {body}");
        Ok(())
    })
    .unwrap();
    let metrics = mesh.metrics().unwrap();
    assert!(
        metrics.contains("ward_jwks_unknown_keys_total{result=\"fetch\"}"),
        "{metrics}"
    );

    // A key nobody publishes stays refused; the sidecar's requests to fetch are rate-limited
    // (one per key per 10 s), and xds-server fetches at most every 5 s.
    let unknown = mint(
        "never-published",
        serde_json::json!({"iss": "testing@secure.istio.io", "sub": "x", "exp": exp}),
    );
    for _ in 0..20 {
        assert_eq!(call(&mesh, Some(&unknown), &[]).0, 401);
    }
    std::thread::sleep(Duration::from_secs(1));
    let fetch_requests = mesh
        .metrics()
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("ward_jwks_unknown_keys_total{result=\"fetch\"} ")
                .map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap();
    assert!(
        fetch_requests <= 3.0,
        "20 requests with an unknown key asked for {fetch_requests} fetches in all"
    );
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
