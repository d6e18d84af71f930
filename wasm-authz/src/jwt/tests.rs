//! Istio's sample tokens and keys (`../shared/peer-tests/istio-jwt/`), and tokens minted with
//! its published test key for every refusal case.

use std::path::PathBuf;

use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use serde_json::json;

use super::*;

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/peer-tests/istio-jwt")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(samples().join(name)).unwrap()
}

/// 2026-11-25: after TokenExpired's 2019, before demo.jwt's 2118.
const NOW: i64 = 1_795_600_000;
const ISSUER: &str = "testing@secure.istio.io";
const KID: &str = "DHFbpoIUqrY8t2zpA2qXfCmr5VO5ZEr4RzHU_-envvQ";

fn rule(audiences: &[&str]) -> JwtRule {
    JwtRule {
        issuer: ISSUER.into(),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        jwks: read("jwks.json"),
        from_headers: vec![],
        from_params: vec![],
        forward_original_token: false,
        output_payload_to_header: None,
        output_claim_to_headers: vec![],
        jwks_uri: None,
    }
}

fn test_issuer_rule(n: u8) -> JwtRule {
    JwtRule {
        issuer: format!("test-issuer-{n}@istio.io"),
        audiences: vec![],
        jwks: read("test-issuers/jwks.json"),
        from_headers: vec![],
        from_params: vec![],
        forward_original_token: false,
        output_payload_to_header: None,
        output_claim_to_headers: vec![],
        jwks_uri: None,
    }
}

fn test_token(name: &str) -> String {
    read("test-issuers/tokens.txt")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no token {name}"))
        .trim()
        .to_string()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token signed with Istio's published test key (`key.pem`, the key of `jwks.json`).
fn mint(header: serde_json::Value, payload: serde_json::Value) -> String {
    let key = rsa::RsaPrivateKey::from_pkcs1_pem(&read("key.pem")).unwrap();
    let signing = rsa::pkcs1v15::SigningKey::<Sha256>::new(key);
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let signature = signing.sign(message.as_bytes()).to_bytes();
    format!("{message}.{}", b64(&signature))
}

fn valid_header() -> serde_json::Value {
    json!({"alg": "RS256", "kid": KID, "typ": "JWT"})
}

fn claims(extra: serde_json::Value) -> serde_json::Value {
    let mut payload = json!({"iss": ISSUER, "sub": "alice", "exp": NOW + 3600});
    payload
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    payload
}

#[test]
fn istios_sample_tokens_are_accepted() {
    let demo = verify(read("demo.jwt").trim(), &[rule(&[])], NOW).unwrap();
    assert_eq!(
        demo.principal(),
        "testing@secure.istio.io/testing@secure.istio.io"
    );
    assert_eq!(demo.claims["foo"], "bar");
    let groups = verify(read("groups-scope.jwt").trim(), &[rule(&[])], NOW).unwrap();
    assert_eq!(groups.claims["groups"], json!(["group1", "group2"]));
    assert_eq!(groups.claims["scope"], json!(["scope1", "scope2"]));
}

#[test]
fn istios_test_issuer_tokens() {
    let issuer1 = [test_issuer_rule(1)];
    let ok = verify(&test_token("TokenIssuer1"), &issuer1, NOW).unwrap();
    assert_eq!(ok.principal(), "test-issuer-1@istio.io/sub-1");
    assert_eq!(
        verify(&test_token("TokenExpired"), &issuer1, NOW),
        Err(JwtError::Expired)
    );
    assert_eq!(
        verify(&test_token("TokenInvalid"), &issuer1, NOW),
        Err(JwtError::Malformed)
    );
    // Only issuer 1 configured: issuer 2's token is refused.
    assert_eq!(
        verify(&test_token("TokenIssuer2"), &issuer1, NOW),
        Err(JwtError::UnknownIssuer)
    );
    let nested = verify(&test_token("TokenIssuer1WithNestedClaims1"), &issuer1, NOW).unwrap();
    assert!(nested.claims["nested"].is_object(), "{:?}", nested.claims);
    let issuer2 = [test_issuer_rule(2)];
    let scope = verify(
        &test_token("TokenIssuer2WithSpaceDelimitedScope"),
        &issuer2,
        NOW,
    )
    .unwrap();
    assert!(scope.claims["scope"].is_array(), "{:?}", scope.claims);
    let permission = verify(
        &test_token("TokenIssuer2WithSpaceDelimitedPermission"),
        &issuer2,
        NOW,
    )
    .unwrap();
    assert!(permission.claims["permission"].is_array());
}

#[test]
fn audiences_are_checked_when_configured() {
    let issuer1 = |aud: &[&str]| {
        let mut r = test_issuer_rule(1);
        r.audiences = aud.iter().map(|a| a.to_string()).collect();
        [r]
    };
    // `aud: "foo"`, and `aud: ["foo", "buzz"]`.
    let token = test_token("TokenIssuer1WithAud");
    assert!(verify(&token, &issuer1(&["foo"]), NOW).is_ok());
    assert_eq!(
        verify(&token, &issuer1(&["buzz"]), NOW),
        Err(JwtError::WrongAudience)
    );
    let list = test_token("TokenIssuer1WithAudList");
    assert!(verify(&list, &issuer1(&["buzz"]), NOW).is_ok());
    assert!(verify(&list, &issuer1(&["other", "foo"]), NOW).is_ok());
    assert_eq!(
        verify(&list, &issuer1(&["other"]), NOW),
        Err(JwtError::WrongAudience)
    );
}

#[test]
fn minted_tokens_for_every_refusal() {
    let rules = [rule(&[])];
    let good = mint(valid_header(), claims(json!({})));
    assert_eq!(
        verify(&good, &rules, NOW).unwrap().principal(),
        format!("{ISSUER}/alice")
    );

    // alg none, with or without a signature.
    let payload = b64(claims(json!({})).to_string().as_bytes());
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none"}"#));
    assert_eq!(
        verify(&none, &rules, NOW),
        Err(JwtError::UnsupportedAlgorithm("none".into()))
    );
    // HS256 "signed" with the public key: algorithm confusion.
    let hs = format!(
        "{}.{payload}.{}",
        b64(br#"{"alg":"HS256","kid":"x"}"#),
        b64(b"mac")
    );
    assert_eq!(
        verify(&hs, &rules, NOW),
        Err(JwtError::UnsupportedAlgorithm("HS256".into()))
    );
    // A kid the JWKS lacks.
    let unknown_kid = mint(json!({"alg": "RS256", "kid": "nope"}), claims(json!({})));
    assert!(matches!(
        verify(&unknown_kid, &rules, NOW),
        Err(JwtError::UnknownKid { .. })
    ));
    // A changed payload under the original signature.
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[1] = b64(claims(json!({"sub": "mallory"})).to_string().as_bytes());
    assert_eq!(
        verify(&parts.join("."), &rules, NOW),
        Err(JwtError::BadSignature)
    );
    // Times, with 60 s of skew either way.
    let expired = mint(valid_header(), claims(json!({"exp": NOW - 61})));
    assert_eq!(verify(&expired, &rules, NOW), Err(JwtError::Expired));
    let just_expired = mint(valid_header(), claims(json!({"exp": NOW - 59})));
    assert!(verify(&just_expired, &rules, NOW).is_ok());
    let future = mint(valid_header(), claims(json!({"nbf": NOW + 61})));
    assert_eq!(verify(&future, &rules, NOW), Err(JwtError::NotYetValid));
    // An issuer no rule names.
    let stranger = mint(valid_header(), claims(json!({"iss": "evil@example.com"})));
    assert_eq!(verify(&stranger, &rules, NOW), Err(JwtError::UnknownIssuer));
    // The wrong audience.
    let aud = mint(valid_header(), claims(json!({"aud": ["other"]})));
    assert_eq!(
        verify(&aud, &[rule(&["bookinfo"])], NOW),
        Err(JwtError::WrongAudience)
    );
    let right = mint(
        valid_header(),
        claims(json!({"aud": ["other", "bookinfo"]})),
    );
    assert!(verify(&right, &[rule(&["bookinfo"])], NOW).is_ok());
    // Not base64 / not JSON.
    assert_eq!(verify("a.b.c", &rules, NOW), Err(JwtError::BadHeader));
}

#[test]
fn tokens_come_from_bearer_or_access_token_and_never_two() {
    let rules = [rule(&[])];
    let token = mint(valid_header(), claims(json!({})));
    let bearer = vec![("Authorization".to_string(), format!("Bearer {token}"))];
    assert!(authenticate(&rules, &bearer, "/", NOW).unwrap().is_some());
    let query = format!("/x?a=1&access_token={token}");
    assert!(authenticate(&rules, &[], &query, NOW).unwrap().is_some());
    assert_eq!(authenticate(&rules, &[], "/", NOW), Ok(None));
    let other = mint(valid_header(), claims(json!({"sub": "bob"})));
    let two = vec![
        ("authorization".to_string(), format!("Bearer {token}")),
        ("authorization".to_string(), format!("Bearer {other}")),
    ];
    assert_eq!(
        authenticate(&rules, &two, "/", NOW),
        Err(JwtError::MultipleTokens)
    );
    let custom = [JwtRule {
        from_headers: vec![("x-jwt".into(), "".into())],
        ..rule(&[])
    }];
    let header = vec![("X-Jwt".to_string(), token.clone())];
    assert!(authenticate(&custom, &header, "/", NOW).unwrap().is_some());
    // The default location is not read when the rule names its own.
    assert_eq!(authenticate(&custom, &bearer, "/", NOW), Ok(None));
}

#[test]
fn verified_tokens_are_cached_until_they_expire() {
    let rules = [rule(&[])];
    let cache = VerifiedCache::new(2);
    let token = mint(valid_header(), claims(json!({"exp": NOW + 100})));
    let headers = vec![("authorization".to_string(), format!("Bearer {token}"))];
    let first = authenticate_cached(&rules, &headers, "/", NOW, Some(&cache)).unwrap();
    assert_eq!(cache.len(), 1);
    let again = authenticate_cached(&rules, &headers, "/", NOW + 50, Some(&cache)).unwrap();
    assert_eq!(first, again);
    // Past exp + skew the cached entry is not used: the token is verified again, and refused.
    assert_eq!(
        authenticate_cached(&rules, &headers, "/", NOW + 161, Some(&cache)),
        Err(JwtError::Expired)
    );
    assert!(cache.is_empty());
    // A refused token is never cached.
    let bad = vec![("authorization".to_string(), "Bearer x.y.z".to_string())];
    assert!(authenticate_cached(&rules, &bad, "/", NOW, Some(&cache)).is_err());
    assert!(cache.is_empty());
}

#[test]
fn es256_and_es384_tokens_are_verified() {
    use p256::ecdsa::signature::Signer as _;
    let payload = b64(claims(json!({})).to_string().as_bytes());

    let key256 = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let point = key256.verifying_key().to_encoded_point(false);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "ec1",
        "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())}]});
    let rules = [JwtRule {
        jwks: jwks.to_string(),
        ..rule(&[])
    }];
    let header = b64(br#"{"alg":"ES256","kid":"ec1"}"#);
    let message = format!("{header}.{payload}");
    let signature: p256::ecdsa::Signature = key256.sign(message.as_bytes());
    let token = format!("{message}.{}", b64(&signature.to_bytes()));
    assert_eq!(verify(&token, &rules, NOW).unwrap().subject, "alice");
    let forged = format!(
        "{header}.{}.{}",
        b64(claims(json!({"sub": "mallory"})).to_string().as_bytes()),
        b64(&signature.to_bytes())
    );
    assert_eq!(verify(&forged, &rules, NOW), Err(JwtError::BadSignature));
    // An ES256 header against an RSA-only JWKS: no key to match.
    assert!(matches!(
        verify(&token, &[rule(&[])], NOW),
        Err(JwtError::UnknownKid { .. })
    ));

    let key384 = p384::ecdsa::SigningKey::from_slice(&[9u8; 48]).unwrap();
    let point = key384.verifying_key().to_encoded_point(false);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-384",
        "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())}]});
    let rules = [JwtRule {
        jwks: jwks.to_string(),
        ..rule(&[])
    }];
    let message = format!("{}.{payload}", b64(br#"{"alg":"ES384"}"#));
    let signature: p384::ecdsa::Signature = key384.sign(message.as_bytes());
    let token = format!("{message}.{}", b64(&signature.to_bytes()));
    assert!(verify(&token, &rules, NOW).is_ok());

    // EdDSA (Ed25519, RFC 8037's OKP key).
    let ed = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519",
        "x": b64(ed.verifying_key().as_bytes())}]});
    let rules = [JwtRule {
        jwks: jwks.to_string(),
        ..rule(&[])
    }];
    let message = format!("{}.{payload}", b64(br#"{"alg":"EdDSA"}"#));
    let signature = ed25519_dalek::Signer::sign(&ed, message.as_bytes());
    let token = format!("{message}.{}", b64(&signature.to_bytes()));
    assert!(verify(&token, &rules, NOW).is_ok());
    // Signed by another key, or the payload changed: refused.
    let other = ed25519_dalek::SigningKey::from_bytes(&[6u8; 32]);
    let forged = format!(
        "{message}.{}",
        b64(&ed25519_dalek::Signer::sign(&other, message.as_bytes()).to_bytes())
    );
    assert_eq!(verify(&forged, &rules, NOW), Err(JwtError::BadSignature));
    let short = format!("{message}.{}", b64(b"sig"));
    assert_eq!(verify(&short, &rules, NOW), Err(JwtError::BadSignature));
    // An Ed448 key is not one Ward verifies with.
    let ed448 = json!({"keys": [{"kty": "OKP", "crv": "Ed448", "x": b64(&[1u8; 57])}]});
    let rules = [JwtRule {
        jwks: ed448.to_string(),
        ..rule(&[])
    }];
    assert!(matches!(
        verify(&token, &rules, NOW),
        Err(JwtError::BadJwks(_))
    ));
}

#[test]
fn verified_claims_and_payload_go_to_the_app_in_the_configured_headers() {
    let token = read("demo.jwt").trim().to_string();
    let rule = JwtRule {
        output_payload_to_header: Some("X-Jwt-Payload".into()),
        output_claim_to_headers: vec![
            ("x-jwt-iss".into(), "iss".into()),
            ("x-jwt-exp".into(), "exp".into()),
            ("x-jwt-nested".into(), "foo.bar".into()),
            ("x-jwt-absent".into(), "nope".into()),
        ],
        ..rule(&[])
    };
    let verified = verify(&token, std::slice::from_ref(&rule), NOW).unwrap();
    let headers = verified.output_headers(&rule);
    assert_eq!(
        headers[0],
        (
            "x-jwt-payload".to_string(),
            token.split('.').nth(1).unwrap().to_string()
        )
    );
    assert_eq!(headers[1], ("x-jwt-iss".to_string(), ISSUER.to_string()));
    assert_eq!(headers[2].0, "x-jwt-exp");
    assert!(headers[2].1.parse::<i64>().is_ok(), "{headers:?}");
    // demo.jwt has no `foo` claim and no `nope`: no header rather than an empty one.
    assert_eq!(headers.len(), 3, "{headers:?}");
    assert_eq!(
        rule.output_header_names(),
        [
            "x-jwt-payload",
            "x-jwt-iss",
            "x-jwt-exp",
            "x-jwt-nested",
            "x-jwt-absent"
        ]
    );
}

/// A token whose `kid` the fetched JWKS lacks asks the control plane for fresh keys; inline
/// keys (nothing to fetch) and other refusals do not.
#[test]
fn an_unknown_kid_from_a_fetched_jwks_asks_for_a_refresh() {
    let rotated = mint(
        json!({"alg": "RS256", "kid": "rotated-1", "typ": "JWT"}),
        json!({"iss": ISSUER, "sub": "alice", "exp": NOW + 3600}),
    );
    let engine = |jwks_uri: Option<&str>| {
        let mut fetched = rule(&[]);
        fetched.jwks_uri = jwks_uri.map(str::to_string);
        crate::Engine::new(crate::FilterConfig {
            workload: "productpage".into(),
            namespace: "default".into(),
            identity: "spiffe://cluster.local/ns/default/sa/productpage".into(),
            version: "1".into(),
            authorization: Some(crate::AuthorizationConfig {
                policies: vec![],
                jwt_rules: vec![fetched],
                cache_tokens: true,
                key_refresh_cluster: Some("xds_cluster".into()),
            }),
            outbound: None,
        })
    };
    let input = |token: &str| crate::HttpInput {
        headers: vec![
            (":path".into(), "/".into()),
            ("authorization".into(), format!("Bearer {token}")),
        ],
        now: NOW,
        ..Default::default()
    };
    let decision = engine(Some("http://keys.example/jwks.json")).decide(&input(&rotated));
    assert!(matches!(
        decision.verdict,
        crate::Verdict::Deny { status: 401, .. }
    ));
    let refresh = decision.refresh_keys.expect("a refresh request");
    assert_eq!(
        refresh,
        crate::KeyRefresh {
            cluster: "xds_cluster".into(),
            issuer: ISSUER.into(),
            kid: "rotated-1".into(),
        }
    );
    // Field 1 (issuer) then field 2 (kid), length-delimited.
    let encoded = refresh.encode_request();
    assert_eq!(encoded[0], 0x0a);
    assert_eq!(encoded[1] as usize, ISSUER.len());
    assert_eq!(&encoded[2..2 + ISSUER.len()], ISSUER.as_bytes());
    assert_eq!(&encoded[2 + ISSUER.len()..], b"\x12\x09rotated-1");

    assert_eq!(engine(None).decide(&input(&rotated)).refresh_keys, None);
    let expired = mint(
        valid_header(),
        json!({"iss": ISSUER, "sub": "a", "exp": NOW - 3600}),
    );
    let decision = engine(Some("http://keys.example/jwks.json")).decide(&input(&expired));
    assert_eq!(decision.refresh_keys, None);
}
