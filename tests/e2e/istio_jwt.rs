//! Istio's published JWT test material (`../shared/peer-tests/istio-jwt/`) and tokens minted
//! with its key, for the tests that send JWTs through Envoy (`request_authentication`,
//! `engines_differential`).

#![allow(dead_code)] // each test binary uses its own part

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ward_e2e::workspace_root;

/// The key id of Istio's test key (`key.pem`, published in `jwks.json`).
pub const ISTIO_KID: &str = "DHFbpoIUqrY8t2zpA2qXfCmr5VO5ZEr4RzHU_-envvQ";

/// A file of the peer test data, trimmed.
pub fn sample(name: &str) -> String {
    std::fs::read_to_string(
        workspace_root()
            .join("../shared/peer-tests/istio-jwt")
            .join(name),
    )
    .unwrap()
    .trim()
    .to_string()
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token signed (RS256) with Istio's published test key (`key.pem`), under key id `kid`.
pub fn mint(kid: &str, claims: &serde_json::Value) -> String {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::signature::{SignatureEncoding, Signer};
    let key = rsa::RsaPrivateKey::from_pkcs1_pem(&sample("key.pem")).unwrap();
    let signing = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key);
    let header = serde_json::json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = signing.sign(message.as_bytes()).to_bytes();
    format!("{message}.{}", b64(&signature))
}

/// HMAC-SHA256 (RFC 2104) by hand: only the algorithm-confusion tokens need it.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}
