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
        from_cookies: vec![],
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
        from_cookies: vec![],
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

fn istio_key() -> rsa::RsaPrivateKey {
    rsa::RsaPrivateKey::from_pkcs1_pem(&read("key.pem")).unwrap()
}

/// A token signed with Istio's published test key (`key.pem`, the key of `jwks.json`).
fn mint(header: serde_json::Value, payload: serde_json::Value) -> String {
    mint_rsa("RS256", &istio_key(), header, payload)
}

/// Deterministic randomness for PSS salts and a second RSA key: these need no secrecy, and
/// a test should not depend on the OS's entropy (splitmix64).
struct TestRng(u64);

impl rsa::rand_core::RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rsa::rand_core::CryptoRng for TestRng {}

/// A token signed by `key` with the RSA algorithm `alg` (RS* is PKCS#1 v1.5, PS* is PSS with
/// a salt as long as the hash, as JWS specifies).
fn mint_rsa(
    alg: &str,
    key: &rsa::RsaPrivateKey,
    header: serde_json::Value,
    payload: serde_json::Value,
) -> String {
    use rsa::signature::RandomizedSigner;
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    );
    let key = key.clone();
    let bytes = message.as_bytes();
    let rng = &mut TestRng(1);
    let signature = match alg {
        "RS256" => rsa::pkcs1v15::SigningKey::<Sha256>::new(key)
            .sign(bytes)
            .to_vec(),
        "RS384" => rsa::pkcs1v15::SigningKey::<Sha384>::new(key)
            .sign(bytes)
            .to_vec(),
        "RS512" => rsa::pkcs1v15::SigningKey::<Sha512>::new(key)
            .sign(bytes)
            .to_vec(),
        "PS256" => rsa::pss::SigningKey::<Sha256>::new(key)
            .sign_with_rng(rng, bytes)
            .to_vec(),
        "PS384" => rsa::pss::SigningKey::<Sha384>::new(key)
            .sign_with_rng(rng, bytes)
            .to_vec(),
        "PS512" => rsa::pss::SigningKey::<Sha512>::new(key)
            .sign_with_rng(rng, bytes)
            .to_vec(),
        _ => panic!("not an RSA algorithm: {alg}"),
    };
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

#[test]
fn every_rsa_algorithm_is_verified_and_forgeries_are_refused() {
    let rules = [rule(&[])];
    // Another 2048-bit key, signing under the kid of Istio's key.
    let other = rsa::RsaPrivateKey::new(&mut TestRng(7), 2048).unwrap();
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        let header = json!({"alg": alg, "kid": KID, "typ": "JWT"});
        let token = mint_rsa(alg, &istio_key(), header.clone(), claims(json!({})));
        assert_eq!(
            verify(&token, &rules, NOW).map(|v| v.subject),
            Ok("alice".to_string()),
            "{alg}"
        );
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        parts[1] = b64(claims(json!({"sub": "mallory"})).to_string().as_bytes());
        assert_eq!(
            verify(&parts.join("."), &rules, NOW),
            Err(JwtError::BadSignature),
            "{alg}: payload changed under the signature"
        );
        let forged = mint_rsa(alg, &other, header, claims(json!({})));
        assert_eq!(
            verify(&forged, &rules, NOW),
            Err(JwtError::BadSignature),
            "{alg}: signed by another key"
        );
    }
    // The header's `alg` decides the scheme: a PSS signature under `alg: RS256` is refused.
    let ps = mint_rsa("PS256", &istio_key(), valid_header(), claims(json!({})));
    assert_eq!(verify(&ps, &rules, NOW), Err(JwtError::BadSignature));
}

#[test]
fn nbf_is_accepted_within_the_skew_and_refused_beyond_it() {
    let rules = [rule(&[])];
    let soon = mint(valid_header(), claims(json!({"nbf": NOW + 59})));
    assert!(verify(&soon, &rules, NOW).is_ok());
    let edge = mint(valid_header(), claims(json!({"nbf": NOW + 60})));
    assert!(verify(&edge, &rules, NOW).is_ok());
    let later = mint(valid_header(), claims(json!({"nbf": NOW + 61})));
    assert_eq!(verify(&later, &rules, NOW), Err(JwtError::NotYetValid));
    // The same token is valid once the clock catches up.
    assert!(verify(&later, &rules, NOW + 1).is_ok());
}

/// `exp` and `nbf` written as floats count by their value; a string (or any non-number) is
/// refused rather than ignored, which would make the token never expire.
#[test]
fn time_claims_must_be_numbers_and_count_by_value() {
    let rules = [rule(&[])];
    let token = |extra: serde_json::Value| mint(valid_header(), claims(extra));
    // 1.7e9 is 2023-11: long expired at NOW.
    assert_eq!(
        verify(&token(json!({"exp": 1.7e9})), &rules, NOW),
        Err(JwtError::Expired)
    );
    let float_exp = token(json!({"exp": (NOW + 100) as f64 + 0.5}));
    assert!(verify(&float_exp, &rules, NOW).is_ok());
    assert_eq!(
        verify(&float_exp, &rules, NOW + 161),
        Err(JwtError::Expired)
    );
    assert_eq!(
        verify(&token(json!({"nbf": (NOW + 61) as f64})), &rules, NOW),
        Err(JwtError::NotYetValid)
    );
    // Huge values neither overflow nor wrap.
    assert!(verify(&token(json!({"exp": 1e300})), &rules, NOW).is_ok());
    assert_eq!(
        verify(&token(json!({"nbf": 1e300})), &rules, NOW),
        Err(JwtError::NotYetValid)
    );
    assert_eq!(
        verify(&token(json!({"exp": -1})), &rules, NOW),
        Err(JwtError::Expired)
    );
    for (claim, value) in [
        ("exp", json!("4102444800")),
        ("exp", json!(null)),
        ("exp", json!([NOW + 100])),
        ("nbf", json!("0")),
        ("iat", json!({"at": NOW})),
    ] {
        let bad = token(json!({ claim: value }));
        let error = verify(&bad, &rules, NOW).unwrap_err();
        assert_eq!(error, JwtError::TimeNotNumeric(claim), "{claim}: {value}");
        assert_eq!(
            error.to_string(),
            format!("Jwt payload [{claim}] field is not an integer")
        );
    }

    // The verified-token cache honours a float `exp` too.
    let cache = VerifiedCache::new(2);
    let headers = vec![("authorization".to_string(), format!("Bearer {float_exp}"))];
    assert!(authenticate_cached(&rules, &headers, "/", NOW, Some(&cache)).is_ok());
    assert_eq!(cache.len(), 1);
    assert!(authenticate_cached(&rules, &headers, "/", NOW + 160, Some(&cache)).is_ok());
    assert_eq!(
        authenticate_cached(&rules, &headers, "/", NOW + 161, Some(&cache)),
        Err(JwtError::Expired)
    );
    assert!(cache.is_empty());
}

#[test]
fn tokens_come_from_the_configured_cookies() {
    let token = mint(valid_header(), claims(json!({})));
    let other = mint(valid_header(), claims(json!({"sub": "bob"})));
    let rules = [JwtRule {
        from_cookies: vec!["session".into(), "jwt".into()],
        ..rule(&[])
    }];
    let cookie = |value: String| vec![("Cookie".to_string(), value)];
    let subject = |headers: &[(String, String)]| {
        authenticate(&rules, headers, "/", NOW).map(|t| t.map(|t| t.subject))
    };
    assert_eq!(
        subject(&cookie(format!("theme=dark; session={token}; lang=it"))),
        Ok(Some("alice".into()))
    );
    assert_eq!(
        subject(&cookie(format!("jwt=\"{token}\""))),
        Ok(Some("alice".into())),
        "a quoted cookie value"
    );
    // Another cookie name, or an empty value: no token.
    assert_eq!(subject(&cookie(format!("sessionid={token}"))), Ok(None));
    assert_eq!(subject(&cookie("session=".into())), Ok(None));
    // A rule with only cookies does not read the default locations.
    let bearer = vec![("authorization".to_string(), format!("Bearer {token}"))];
    assert_eq!(subject(&bearer), Ok(None));
    assert_eq!(
        authenticate(&rules, &[], &format!("/?access_token={token}"), NOW),
        Ok(None)
    );
    // The first cookie of a name counts; two names with different tokens are two tokens.
    let two_headers = vec![
        ("cookie".to_string(), format!("session={other}")),
        ("cookie".to_string(), format!("session={token}")),
    ];
    assert_eq!(subject(&two_headers), Ok(Some("bob".into())));
    assert_eq!(
        subject(&cookie(format!("session={token}; jwt={other}"))),
        Err(JwtError::MultipleTokens)
    );
    // A bad token in a cookie is refused like one in a header.
    assert_eq!(
        subject(&cookie("session=x.y.z".into())),
        Err(JwtError::BadHeader)
    );
    // Cookies and the default header, from two rules: a token in each is two tokens.
    let both = [rules[0].clone(), test_issuer_rule(1)];
    let mut headers = cookie(format!("session={token}"));
    headers.push(("authorization".into(), format!("Bearer {other}")));
    assert_eq!(
        authenticate(&both, &headers, "/", NOW),
        Err(JwtError::MultipleTokens)
    );
    // Like Envoy, the cookie is not removed from the request once verified (it may hold
    // other cookies); the token header of a default rule is.
    assert!(rules[0].token_headers().is_empty());
    assert_eq!(test_issuer_rule(1).token_headers(), ["authorization"]);
}

/// The engine's cache of verified tokens (4,096) is cleared when full: it never grows past
/// its bound, and every token still gets its own claims. Ed25519 tokens, so that minting
/// and verifying 4,097 of them takes a moment.
#[test]
fn the_verified_token_cache_stays_bounded_and_correct_past_its_bound() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519",
        "x": b64(key.verifying_key().as_bytes())}]});
    let rules = [JwtRule {
        jwks: jwks.to_string(),
        ..rule(&[])
    }];
    // The same issuer with no keys: a token passes only if the cache holds it, so this
    // tells what the cache remembers.
    let keyless = [JwtRule {
        jwks: r#"{"keys":[]}"#.into(),
        ..rule(&[])
    }];
    let mint_ed = |i: usize| {
        let message = format!(
            "{}.{}",
            b64(br#"{"alg":"EdDSA"}"#),
            b64(claims(json!({"sub": format!("user-{i}")}))
                .to_string()
                .as_bytes())
        );
        let signature = ed25519_dalek::Signer::sign(&key, message.as_bytes());
        vec![(
            "authorization".to_string(),
            format!("Bearer {message}.{}", b64(&signature.to_bytes())),
        )]
    };
    let capacity = crate::VERIFIED_TOKENS;
    let cache = VerifiedCache::new(capacity);
    let subject = |rules: &[JwtRule], headers: &[(String, String)]| {
        authenticate_cached(rules, headers, "/", NOW, Some(&cache)).map(|t| t.unwrap().subject)
    };
    let first = mint_ed(0);
    for i in 0..capacity {
        assert_eq!(subject(&rules, &mint_ed(i)), Ok(format!("user-{i}")));
    }
    assert_eq!(cache.len(), capacity);
    assert_eq!(subject(&keyless, &first), Ok("user-0".into()), "cached");

    // One more: the cache is cleared rather than grown, and holds the newest token only.
    let newest = mint_ed(capacity);
    assert_eq!(subject(&rules, &newest), Ok(format!("user-{capacity}")));
    assert_eq!(cache.len(), 1);
    assert_eq!(
        subject(&keyless, &newest),
        Ok(format!("user-{capacity}")),
        "cached"
    );
    assert!(
        matches!(subject(&keyless, &first), Err(JwtError::UnknownKid { .. })),
        "no longer cached"
    );
    // Verified again from scratch, with its own claims, and cached again.
    assert_eq!(subject(&rules, &first), Ok("user-0".into()));
    assert_eq!(cache.len(), 2);
    // Another round past the bound never exceeds it.
    for i in 1..=capacity {
        assert_eq!(subject(&rules, &mint_ed(i)), Ok(format!("user-{i}")));
        assert!(cache.len() <= capacity);
    }
}

/// The engine with Istio's test issuers 1 and 2 and one AuthorizationPolicy (as the control
/// plane sends it): the status each request gets, by test-issuer token name ("" for none).
fn statuses(policy: serde_json::Value, tokens: &[&str]) -> Vec<u32> {
    let engine = crate::Engine::new(crate::FilterConfig {
        workload: "httpbin".into(),
        namespace: "foo".into(),
        identity: "spiffe://cluster.local/ns/foo/sa/httpbin".into(),
        version: "1".into(),
        authorization: Some(crate::AuthorizationConfig {
            policies: vec![serde_json::from_value(policy).unwrap()],
            jwt_rules: vec![test_issuer_rule(1), test_issuer_rule(2)],
            cache_tokens: true,
            key_refresh_cluster: None,
        }),
        outbound: None,
    });
    tokens
        .iter()
        .map(|name| {
            let mut headers = vec![
                (":method".to_string(), "GET".to_string()),
                (":path".to_string(), "/headers".to_string()),
            ];
            if !name.is_empty() {
                headers.push((
                    "authorization".into(),
                    format!("Bearer {}", test_token(name)),
                ));
            }
            let input = crate::HttpInput {
                headers,
                now: NOW,
                ..Default::default()
            };
            match engine.decide(&input).verdict {
                crate::Verdict::Allow => 200,
                crate::Verdict::Deny { status, .. } => status,
            }
        })
        .collect()
}

/// An ALLOW policy with one rule of one `when` condition.
fn allow_when(key: &str, values: &[&str], not_values: &[&str]) -> serde_json::Value {
    json!({"name": "p", "namespace": "foo", "action": "ALLOW", "rules": [{"when": [
        {"key": key, "values": values, "notValues": not_values}]}]})
}

#[test]
fn when_conditions_on_the_principal_audiences_and_presenter() {
    let tokens = ["TokenIssuer1", "TokenIssuer2", "", "TokenExpired"];
    let principal = allow_when(
        "request.auth.principal",
        &["test-issuer-1@istio.io/sub-1"],
        &[],
    );
    assert_eq!(statuses(principal, &tokens), [200, 403, 403, 401]);
    let not_issuer2 = allow_when("request.auth.principal", &[], &["test-issuer-2@istio.io/*"]);
    assert_eq!(statuses(not_issuer2, &tokens[..2]), [200, 403]);

    // `aud: "foo"`, `aud: ["foo", "buzz"]`, no `aud`.
    let tokens = [
        "TokenIssuer1WithAud",
        "TokenIssuer1WithAudList",
        "TokenIssuer1",
        "",
    ];
    let foo = allow_when("request.auth.audiences", &["foo"], &[]);
    assert_eq!(statuses(foo, &tokens), [200, 200, 403, 403]);
    let buzz = allow_when("request.auth.audiences", &["buzz"], &[]);
    assert_eq!(statuses(buzz, &tokens), [403, 200, 403, 403]);
    let not_buzz = allow_when("request.auth.audiences", &[], &["buzz"]);
    assert_eq!(statuses(not_buzz, &tokens), [200, 403, 200, 200]);

    // `azp: "bar"`.
    let tokens = ["TokenIssuer1WithAzp", "TokenIssuer1"];
    let bar = allow_when("request.auth.presenter", &["bar"], &[]);
    assert_eq!(statuses(bar, &tokens), [200, 403]);
    let glob = allow_when("request.auth.presenter", &["b*"], &[]);
    assert_eq!(statuses(glob, &tokens), [200, 403]);
}

#[test]
fn not_request_principals_in_allow_and_deny_policies() {
    let tokens = ["TokenIssuer1", "TokenIssuer2", ""];
    let policy = |action: &str, not: &[&str]| {
        json!({"name": "p", "namespace": "foo", "action": action,
            "rules": [{"from": [{"notRequestPrincipals": not}]}]})
    };
    // ALLOW anyone but issuer 2: no principal is not issuer 2's.
    assert_eq!(
        statuses(policy("ALLOW", &["test-issuer-2@istio.io/*"]), &tokens),
        [200, 403, 200]
    );
    // Istio's "require a JWT": DENY when there is no request principal.
    assert_eq!(statuses(policy("DENY", &["*"]), &tokens), [200, 200, 403]);
    // Both fields: any principal but issuer 2's sub-2.
    let both = json!({"name": "p", "namespace": "foo", "action": "ALLOW",
        "rules": [{"from": [{"requestPrincipals": ["*"],
            "notRequestPrincipals": ["test-issuer-2@istio.io/sub-2"]}]}]});
    assert_eq!(statuses(both, &tokens), [200, 403, 403]);
}

#[test]
fn when_conditions_on_nested_and_space_delimited_claims() {
    // nested.key1 = [valueA, valueB], nested.nested-2.key1 likewise; the second token has
    // key2 = valueC at both levels.
    let tokens = [
        "TokenIssuer1WithNestedClaims1",
        "TokenIssuer1WithNestedClaims2",
        "TokenIssuer1",
    ];
    let key1 = allow_when("request.auth.claims[nested][key1]", &["valueA"], &[]);
    assert_eq!(statuses(key1, &tokens), [200, 403, 403]);
    let deep = allow_when(
        "request.auth.claims[nested][nested-2][key2]",
        &["valueC"],
        &[],
    );
    assert_eq!(statuses(deep, &tokens), [403, 200, 403]);
    let not_b = allow_when("request.auth.claims[nested][key1]", &[], &["valueB"]);
    assert_eq!(statuses(not_b, &tokens), [403, 200, 200]);
    // An object is not a value: `nested` alone matches nothing.
    let object = allow_when("request.auth.claims[nested]", &["*"], &[]);
    assert_eq!(statuses(object, &tokens), [403, 403, 403]);
    // A claim name with `/`, `@` and `.` inside the brackets.
    let collision = allow_when(
        "request.auth.claims[test-issuer-1@istio.io/nested][nested-2][key1]",
        &["valueC"],
        &[],
    );
    assert_eq!(
        statuses(
            collision,
            &["TokenIssuer1WithCollisionResistantName", "TokenIssuer1"]
        ),
        [200, 403]
    );

    // `scope: "write read"` and `permission: "read write"` are lists of their words.
    let tokens = [
        "TokenIssuer2WithSpaceDelimitedScope",
        "TokenIssuer2WithSpaceDelimitedPermission",
        "TokenIssuer2",
    ];
    let read = allow_when("request.auth.claims[scope]", &["read"], &[]);
    assert_eq!(statuses(read, &tokens), [200, 403, 403]);
    let whole = allow_when("request.auth.claims[scope]", &["write read"], &[]);
    assert_eq!(statuses(whole, &tokens), [403, 403, 403]);
    let admin = allow_when("request.auth.claims[scope]", &["admin"], &[]);
    assert_eq!(statuses(admin, &tokens), [403, 403, 403]);
    let write = allow_when("request.auth.claims[permission]", &["write"], &[]);
    assert_eq!(statuses(write, &tokens), [403, 200, 403]);
    let not_write = allow_when("request.auth.claims[scope]", &[], &["write"]);
    assert_eq!(statuses(not_write, &tokens), [403, 200, 200]);
}

/// As in Envoy's `jwt_authn`, a token counts only where a rule of its issuer looks: moved to
/// another issuer's header it is from an issuer not configured there.
#[test]
fn a_token_counts_only_where_a_rule_of_its_issuer_looks() {
    let rules = [
        JwtRule {
            from_headers: vec![("x-jwt".into(), "Token ".into())],
            ..rule(&[])
        },
        test_issuer_rule(1),
    ];
    let token = mint(valid_header(), claims(json!({})));
    let issuer1 = test_token("TokenIssuer1");
    let at = |name: &str, value: String| vec![(name.to_string(), value)];
    let cache = VerifiedCache::new(8);
    let principal = |headers: &[(String, String)]| {
        authenticate_cached(&rules, headers, "/", NOW, Some(&cache))
            .map(|t| t.map(|t| t.principal()))
    };
    assert_eq!(
        principal(&at("X-Jwt", format!("Token {token}"))),
        Ok(Some(format!("{ISSUER}/alice")))
    );
    assert_eq!(
        principal(&at("authorization", format!("Bearer {issuer1}"))),
        Ok(Some("test-issuer-1@istio.io/sub-1".into()))
    );
    // Swapped, each is refused, though both are cached by now.
    assert_eq!(cache.len(), 2);
    assert_eq!(
        principal(&at("authorization", format!("Bearer {token}"))),
        Err(JwtError::UnknownIssuer)
    );
    assert_eq!(
        principal(&at("x-jwt", format!("Token {issuer1}"))),
        Err(JwtError::UnknownIssuer)
    );
    assert_eq!(
        authenticate(&rules, &[], &format!("/?access_token={token}"), NOW),
        Err(JwtError::UnknownIssuer)
    );
    // The same token in both places is one token, accepted where its issuer's rule looks.
    let both = vec![
        ("x-jwt".to_string(), format!("Token {token}")),
        ("authorization".to_string(), format!("Bearer {token}")),
    ];
    assert_eq!(
        find_tokens(&rules, &both, "/"),
        [FoundToken {
            token: token.clone(),
            issuers: vec![ISSUER.to_string(), "test-issuer-1@istio.io".to_string()],
        }]
    );
    assert_eq!(principal(&both), Ok(Some(format!("{ISSUER}/alice"))));
}
