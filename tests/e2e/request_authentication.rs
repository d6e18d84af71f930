//! JWT request authentication (Istio's RequestAuthentication) on real Envoys: seed 001's
//! task 6.1 with Istio's sample tokens (`../shared/peer-tests/istio-jwt/`), keys fetched by
//! xds-server from a `jwksUri`, and AuthorizationPolicies on request principals and claims.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::istio_jwt::{b64, hmac_sha256, mint, sample, ISTIO_KID};
use ward_e2e::LocalMesh;

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

/// Keys rotated at the issuer: a token signed with a key the sidecar lacks is refused, the
/// sidecar asks xds-server to fetch the `jwksUri` again, and the same token then passes. No
/// config change and no restart: the periodic fetch is 5 minutes away. The wasm engine's
/// filter asks; Envoy's `jwt_authn` (native engine) waits for the periodic fetch, as Istio's.
#[test]
fn a_token_signed_with_a_new_key_makes_xds_server_fetch_the_keys_again() {
    let mesh = LocalMesh::up("tests/configs/bookinfo").expect("mesh up");
    use_engine(&mesh, "wasm");
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
        &serde_json::json!({"iss": "testing@secure.istio.io", "sub": "rotated", "exp": exp}),
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
        &serde_json::json!({"iss": "testing@secure.istio.io", "sub": "x", "exp": exp}),
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

/// MeshConfig `authorizationEngine`: where tokens are verified and policies enforced.
fn use_engine(mesh: &LocalMesh, engine: &str) {
    mesh.apply(
        "mesh.yaml",
        &format!(
            "apiVersion: ward.dev/v1alpha1\nkind: MeshConfig\nspec:\n  authorizationEngine: {engine}\n"
        ),
    );
}

#[test]
fn jwt_tokens_are_verified_and_policies_see_their_principal_and_claims_native() {
    tokens_are_verified_and_policies_see_their_principal_and_claims("native");
}

#[test]
fn jwt_tokens_are_verified_and_policies_see_their_principal_and_claims_wasm() {
    tokens_are_verified_and_policies_see_their_principal_and_claims("wasm");
}

/// Seed 001's task 6.1 with `engine`: the same statuses and bodies from both. Natively,
/// Envoy's `jwt_authn` refuses the bad tokens and RBAC reads what it verified; with wasm,
/// Ward's filter does both. Either way RequestAuthentication, key and policy changes replace
/// no listener (they travel over ECDS and RDS).
fn tokens_are_verified_and_policies_see_their_principal_and_claims(engine: &str) {
    let mesh = LocalMesh::up("tests/configs/bookinfo").expect("mesh up");
    use_engine(&mesh, engine);
    const MODIFIED: &str = "listener_manager.listener_modified";
    let listeners_modified = mesh.envoy_stat("productpage", MODIFIED);
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

    // A CORS preflight's token is not looked at (Istio's jwt_authn, and the wasm engine):
    // a bad one is no 401, the policy decides without a principal; wardctl check agrees.
    let preflight = [
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://app.example",
        "-H",
        "Access-Control-Request-Method: GET",
    ];
    assert_eq!(
        call(&mesh, Some("TokenInvalid"), &preflight),
        (403, "RBAC: access denied".to_string())
    );
    for (extra, verdict, status) in [
        (&preflight[..], "DENY", 403),
        (&[][..], "UNAUTHENTICATED", 401),
    ] {
        let mut args = vec![
            "check",
            "productpage",
            "--from",
            "reviews",
            "--token",
            "TokenInvalid",
            "--json",
        ];
        args.extend(extra);
        let out = mesh.wardctl(&args).unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (&report["verdict"], &report["status"]),
            (&verdict.into(), &status.into()),
            "{report}"
        );
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
    let metrics = mesh.metrics().unwrap();
    let errors = metrics.lines().find_map(|l| {
        l.strip_prefix("ward_jwks_fetches_total{result=\"error\"} ")
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    assert!(errors.is_some_and(|n| n >= 1.0), "{metrics}");
    assert_eq!(call(&mesh, Some(&groups), &[]).0, 200);

    // The engine that was asked for decided: jwt_authn refused the bad tokens natively, and
    // is not in the wasm engine's chain.
    let refused = mesh.envoy_stat("productpage", "http.inbound_5678.jwt_authn.denied");
    match engine {
        "native" => assert!(refused.is_some_and(|n| n >= 4), "{refused:?}"),
        // (The counter stays from the native listeners the sidecar started with.)
        _ => assert_eq!(refused.unwrap_or(0), 0),
    }
    // Every configuration was accepted: a refused one (no keys, say) keeps the old in force.
    let metrics = mesh.metrics().unwrap();
    let nacked: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("ward_xds_nacks_total") && !l.ends_with(" 0"))
        .collect();
    assert!(nacked.is_empty(), "{engine}: {nacked:?}");
    assert!(listeners_modified.is_some());
    assert_eq!(
        mesh.envoy_stat("productpage", MODIFIED),
        listeners_modified,
        "{engine}: a RequestAuthentication, key or policy change replaced a listener"
    );
}

#[test]
fn verified_payload_and_claims_reach_the_app_and_cannot_be_forged_native() {
    verified_payload_and_claims_reach_the_app_and_cannot_be_forged("native");
}

#[test]
fn verified_payload_and_claims_reach_the_app_and_cannot_be_forged_wasm() {
    verified_payload_and_claims_reach_the_app_and_cannot_be_forged("wasm");
}

/// Istio's JWT task on httpbin (namespace foo), with `engine`: the verified payload and a
/// claim reach the app in the headers the rule names, the token does not, and a client
/// cannot forge them.
fn verified_payload_and_claims_reach_the_app_and_cannot_be_forged(engine: &str) {
    let mesh = LocalMesh::up("tests/configs/httpbin").expect("mesh up");
    use_engine(&mesh, engine);
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

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token of Istio's test issuer (`testing@secure.istio.io`) signed with its key, with
/// `claims` over a sub and an hour of validity.
fn testing_token(claims: serde_json::Value) -> String {
    let mut payload = serde_json::json!({
        "iss": "testing@secure.istio.io", "sub": "minted", "exp": now() + 3600,
    });
    payload
        .as_object_mut()
        .unwrap()
        .extend(claims.as_object().unwrap().clone());
    mint(ISTIO_KID, &payload)
}

/// Unsigned tokens of the testing issuer: `alg: none`, and HS256 keyed with the issuer's
/// public key as PEM (the algorithm-confusion attack on verifiers that take the JWKS key as
/// an HMAC secret).
fn forged_tokens() -> (String, String) {
    use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPublicKey, LineEnding};
    let payload = b64(serde_json::json!({
        "iss": "testing@secure.istio.io", "sub": "forged", "aud": "bookinfo", "exp": now() + 3600,
    })
    .to_string()
    .as_bytes());
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    let public_pem = rsa::RsaPrivateKey::from_pkcs1_pem(&sample("key.pem"))
        .unwrap()
        .to_public_key()
        .to_pkcs1_pem(LineEnding::LF)
        .unwrap();
    let header = b64(format!(r#"{{"alg":"HS256","kid":"{ISTIO_KID}","typ":"JWT"}}"#).as_bytes());
    let message = format!("{header}.{payload}");
    let mac = hmac_sha256(public_pem.as_bytes(), message.as_bytes());
    (none, format!("{message}.{}", b64(&mac)))
}

/// A JWKS document as a YAML block scalar under `jwks: |` (indented for a jwtRules item).
fn jwks_block(file: &str) -> String {
    sample(file)
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect()
}

/// The RequestAuthentication of the table test on httpbin. `second`: issuer 1 now requires
/// audience `foo`, and issuer 2 is configured too.
fn table_request_authentication(second: bool) -> String {
    let test_jwks = jwks_block("test-issuers/jwks.json");
    let (issuer1_audiences, issuer2) = if second {
        (
            "    audiences: [foo]\n".to_string(),
            format!("  - issuer: test-issuer-2@istio.io\n    jwks: |\n{test_jwks}"),
        )
    } else {
        (String::new(), String::new())
    };
    format!(
        "apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata:
  name: jwt-table
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  jwtRules:
  - issuer: test-issuer-1@istio.io
{issuer1_audiences}    jwks: |
{test_jwks}  - issuer: test-issuer-3@istio.io
    forwardOriginalToken: true
    jwks: |
{test_jwks}  - issuer: testing@secure.istio.io
    audiences: [ward-e2e, bookinfo]
    fromHeaders:
    - name: x-ward-jwt
      prefix: \"Token \"
    fromParams: [jwt]
    fromCookies: [session]
    jwks: |
{jwks}{issuer2}",
        jwks = jwks_block("jwks.json"),
    )
}

/// On httpbin: any path but two needs only authentication; /anything/nested needs
/// `nested.key1` to hold valueA, /anything/scope needs `read` in the space-delimited scope.
const TABLE_POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: claims
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  rules:
  - to:
    - operation:
        notPaths: [\"/anything/nested\", \"/anything/scope\"]
  - to:
    - operation:
        paths: [\"/anything/nested\"]
    when:
    - key: request.auth.claims[nested][key1]
      values: [\"valueA\"]
  - to:
    - operation:
        paths: [\"/anything/scope\"]
    when:
    - key: request.auth.claims[scope]
      values: [\"read\"]
";

/// One request from sleep to httpbin and what it must get.
struct Row {
    what: &'static str,
    path: String,
    /// `Name: value` request headers.
    headers: Vec<String>,
    status: u16,
    /// A refused token: jwt_authn's message; 403: RBAC's; 200 on /headers: not checked.
    body: &'static str,
    /// A refused token (jwt_authn's answer): `www-authenticate: Bearer ...`.
    www_authenticate: bool,
    /// 200 on /headers: request headers the app must see, and must not see.
    app_sees: &'static [&'static str],
    app_lacks: &'static [&'static str],
}

fn row(what: &'static str, path: &str, headers: Vec<String>, status: u16) -> Row {
    let body = match status {
        403 => "RBAC: access denied",
        _ => "",
    };
    Row {
        what,
        path: path.to_string(),
        headers,
        status,
        body,
        www_authenticate: false,
        app_sees: &[],
        app_lacks: &[],
    }
}

fn refused(what: &'static str, headers: Vec<String>, message: &'static str) -> Row {
    Row {
        body: message,
        www_authenticate: true,
        ..row(what, "/headers", headers, 401)
    }
}

/// A valid token meant for another audience: jwt_authn answers 403, not 401.
fn wrong_audience(what: &'static str, headers: Vec<String>) -> Row {
    Row {
        status: 403,
        ..refused(what, headers, "Audiences in Jwt are not allowed")
    }
}

fn bearer(token: &str) -> Vec<String> {
    vec![format!("Authorization: Bearer {token}")]
}

fn ward_header(token: &str) -> Vec<String> {
    vec![format!("x-ward-jwt: Token {token}")]
}

/// Sends `row`'s request; `None` if it got what it must, else what went wrong.
fn check_row(mesh: &LocalMesh, row: &Row) -> Option<String> {
    let url = format!("http://httpbin.foo:8000{}", row.path);
    let mut args: Vec<&str> = vec!["-D", "-", &url];
    for header in &row.headers {
        args.extend(["-H", header]);
    }
    let (status, output) = match mesh.curl_from_in(Some("sleep"), "foo", &args) {
        Ok(reply) => reply,
        Err(e) => return Some(format!("{}: {e:#}", row.what)),
    };
    let (head, body) = output
        .split_once("\r\n\r\n")
        .unwrap_or(("", output.as_str()));
    let problem = |why: String| Some(format!("{}: {why}\n{output}", row.what));
    if status != row.status {
        return problem(format!("status {status}, expected {}", row.status));
    }
    if !row.body.is_empty() && body != row.body {
        return problem(format!("body {body:?}, expected {:?}", row.body));
    }
    let www_authenticate = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("www-authenticate: ")
            .map(str::to_string)
    });
    match (row.www_authenticate, www_authenticate) {
        (true, Some(value))
            if value.starts_with("bearer ") && value.contains("error=\"invalid_token\"") => {}
        (true, other) => return problem(format!("www-authenticate {other:?}")),
        (false, Some(value)) => return problem(format!("www-authenticate {value:?}")),
        (false, None) => {}
    }
    if status == 200 && row.path.starts_with("/headers") {
        let seen: serde_json::Value = match serde_json::from_str(body) {
            Ok(json) => json,
            Err(e) => return problem(format!("not httpbin's JSON: {e}")),
        };
        for name in row.app_sees {
            if seen["headers"].get(*name).is_none() {
                return problem(format!("the app did not see {name}"));
            }
        }
        for name in row.app_lacks {
            if let Some(value) = seen["headers"].get(*name) {
                return problem(format!("the app saw {name}: {value}"));
            }
        }
    }
    None
}

/// Runs every row; fails with all the rows that did not get what they must.
fn check_table(mesh: &LocalMesh, rows: &[Row]) {
    let failures: Vec<String> = rows.iter().filter_map(|r| check_row(mesh, r)).collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n\n")
    );
}

/// Istio's RequestAuthentication cases through real Envoys with the wasm engine, on one
/// mesh (httpbin in namespace foo, called from sleep): Istio's test-issuer tokens and tokens
/// minted with its test key, every token location, forwarding, audiences, and policies on
/// nested and space-delimited claims. A 401 carries `www-authenticate` and jwt_authn's
/// message; a 403 RBAC's.
#[test]
fn request_authentication_cases_through_envoy_with_the_wasm_engine() {
    let mesh = LocalMesh::up("tests/configs/httpbin").expect("mesh up");
    mesh.apply(
        "mesh.yaml",
        "apiVersion: ward.dev/v1alpha1\nkind: MeshConfig\nspec:\n  authorizationEngine: wasm\n",
    );
    mesh.apply("jwt.yaml", &table_request_authentication(false));
    mesh.apply("policy.yaml", TABLE_POLICY);

    let issuer = test_issuer_token;
    let good = testing_token(serde_json::json!({"aud": "bookinfo"}));
    let other_good = testing_token(serde_json::json!({"aud": "bookinfo", "sub": "other"}));
    let (none, hs256) = forged_tokens();
    let scope_read = testing_token(serde_json::json!({"aud": "bookinfo", "scope": "write read"}));
    let expired = testing_token(serde_json::json!({"aud": "bookinfo", "exp": now() - 3600}));
    // In force once the policy and the testing issuer's own locations are.
    let probes = [
        row(
            "nested claim without valueA",
            "/anything/nested",
            bearer(&issuer("TokenIssuer1WithNestedClaims2")),
            403,
        ),
        refused(
            "testing issuer's token in Authorization, which its rule does not read",
            bearer(&good),
            "Jwt issuer is not configured",
        ),
    ];
    mesh.eventually(Duration::from_secs(20), || {
        match probes.iter().find_map(|r| check_row(&mesh, r)) {
            Some(failure) => anyhow::bail!("{failure}"),
            None => Ok(()),
        }
    })
    .unwrap();

    let mut cookie_row = row(
        "fromCookies, among other cookies",
        "/headers",
        vec![format!("Cookie: theme=dark; session={good}")],
        200,
    );
    // jwt_authn leaves a cookie in place (it may carry other cookies).
    cookie_row.app_sees = &["Cookie"];
    let rows = vec![
        Row {
            app_lacks: &["Authorization"],
            ..row("no token", "/headers", vec![], 200)
        },
        Row {
            app_lacks: &["Authorization"],
            ..row(
                "issuer 1: the token is removed before the app",
                "/headers",
                bearer(&issuer("TokenIssuer1")),
                200,
            )
        },
        Row {
            app_sees: &["Authorization"],
            ..row(
                "issuer 3, forwardOriginalToken: the app sees the token",
                "/headers",
                bearer(&issuer("TokenIssuer3")),
                200,
            )
        },
        refused(
            "TokenExpired",
            bearer(&issuer("TokenExpired")),
            "Jwt is expired",
        ),
        refused(
            "TokenInvalid",
            bearer("TokenInvalid"),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        refused(
            "issuer 2, not configured",
            bearer(&issuer("TokenIssuer2")),
            "Jwt issuer is not configured",
        ),
        Row {
            app_lacks: &["X-Ward-Jwt"],
            ..row(
                "fromHeaders name and prefix",
                "/headers",
                ward_header(&good),
                200,
            )
        },
        row("fromParams", &format!("/headers?jwt={good}"), vec![], 200),
        cookie_row,
        // Tokens in the custom locations are verified, not just let through.
        row(
            "fromCookies: the cookie's token is the one a policy sees",
            "/anything/scope",
            vec![format!("Cookie: theme=dark; session={scope_read}")],
            200,
        ),
        refused(
            "fromCookies: an expired token",
            vec![format!("Cookie: session={expired}")],
            "Jwt is expired",
        ),
        Row {
            path: format!("/headers?jwt={expired}"),
            ..refused("fromParams: an expired token", vec![], "Jwt is expired")
        },
        Row {
            path: format!("/headers?access_token={good}"),
            ..refused(
                "access_token, a default location the testing issuer's rule does not read",
                vec![],
                "Jwt issuer is not configured",
            )
        },
        row(
            "audiences: the second of the token's audiences is the rule's",
            "/headers",
            ward_header(&testing_token(
                serde_json::json!({"aud": ["other", "ward-e2e"]}),
            )),
            200,
        ),
        wrong_audience(
            "a wrong audience",
            ward_header(&testing_token(serde_json::json!({"aud": "other"}))),
        ),
        wrong_audience(
            "no audience where the rule requires one",
            ward_header(&testing_token(serde_json::json!({}))),
        ),
        refused(
            "alg none",
            ward_header(&none),
            "Jwt algorithm `none` is not supported",
        ),
        refused(
            "HS256 keyed with the public key",
            ward_header(&hs256),
            "Jwt algorithm `HS256` is not supported",
        ),
        refused(
            "expired an hour ago",
            ward_header(&testing_token(
                serde_json::json!({"aud": "bookinfo", "exp": now() - 3600}),
            )),
            "Jwt is expired",
        ),
        refused(
            "nbf in an hour",
            ward_header(&testing_token(
                serde_json::json!({"aud": "bookinfo", "nbf": now() + 3600}),
            )),
            "Jwt not yet valid",
        ),
        refused(
            "exp as a string",
            ward_header(&testing_token(
                serde_json::json!({"aud": "bookinfo", "exp": "99999999999"}),
            )),
            "Jwt payload [exp] field is not an integer",
        ),
        refused(
            "exp as a float, in 2023",
            ward_header(&testing_token(
                serde_json::json!({"aud": "bookinfo", "exp": 1.7e9}),
            )),
            "Jwt is expired",
        ),
        refused(
            "two tokens: a header and a cookie",
            vec![
                format!("x-ward-jwt: Token {good}"),
                format!("Cookie: session={other_good}"),
            ],
            "Jwt is duplicated: more than one token",
        ),
        refused(
            "two tokens of two issuers",
            vec![
                format!("x-ward-jwt: Token {good}"),
                format!("Authorization: Bearer {}", issuer("TokenIssuer1")),
            ],
            "Jwt is duplicated: more than one token",
        ),
        row(
            "nested claim with valueA",
            "/anything/nested",
            bearer(&issuer("TokenIssuer1WithNestedClaims1")),
            200,
        ),
        row(
            "nested claim without valueA",
            "/anything/nested",
            bearer(&issuer("TokenIssuer1WithNestedClaims2")),
            403,
        ),
        row("nested claim, no token", "/anything/nested", vec![], 403),
        row(
            "space-delimited scope with read",
            "/anything/scope",
            ward_header(&testing_token(
                serde_json::json!({"aud": "bookinfo", "scope": "write read"}),
            )),
            200,
        ),
        row(
            "space-delimited scope without read",
            "/anything/scope",
            ward_header(&testing_token(
                serde_json::json!({"aud": "bookinfo", "scope": "write readonly"}),
            )),
            403,
        ),
    ];
    check_table(&mesh, &rows);

    // Issuer 1 now requires audience `foo`, and issuer 2 is configured: its tokens pass,
    // and a policy sees its space-delimited `scope` and `permission` as lists.
    mesh.apply("jwt.yaml", &table_request_authentication(true));
    mesh.eventually(Duration::from_secs(20), || {
        match check_row(
            &mesh,
            &row(
                "issuer 2, configured",
                "/headers",
                bearer(&issuer("TokenIssuer2")),
                200,
            ),
        ) {
            Some(failure) => anyhow::bail!("{failure}"),
            None => Ok(()),
        }
    })
    .unwrap();
    check_table(
        &mesh,
        &[
            row(
                "audiences [foo]: aud foo",
                "/headers",
                bearer(&issuer("TokenIssuer1WithAud")),
                200,
            ),
            row(
                "audiences [foo]: aud [foo, buzz]",
                "/headers",
                bearer(&issuer("TokenIssuer1WithAudList")),
                200,
            ),
            wrong_audience("audiences [foo]: no aud", bearer(&issuer("TokenIssuer1"))),
            row(
                "issuer 2, scope \"write read\"",
                "/anything/scope",
                bearer(&issuer("TokenIssuer2WithSpaceDelimitedScope")),
                200,
            ),
            row(
                "issuer 2, permission \"read write\" but no scope",
                "/anything/scope",
                bearer(&issuer("TokenIssuer2WithSpaceDelimitedPermission")),
                403,
            ),
            row(
                "issuer 2, no scope",
                "/anything/scope",
                bearer(&issuer("TokenIssuer2")),
                403,
            ),
        ],
    );
}
