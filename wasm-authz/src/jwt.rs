//! End-user JWT authentication with Istio's `RequestAuthentication` semantics, as a plain
//! library (no proxy-wasm here, so it is tested natively against Istio's sample tokens).
//!
//! - No token: authentication passes with no request principal (an AuthorizationPolicy that
//!   requires one denies later, with 403).
//! - A token that is malformed, badly signed, expired, not yet valid (`exp` and `nbf` are
//!   numbers, a float counting by its value; any other type is refused), from an issuer no
//!   rule names, for the wrong audience, or with a `kid` the JWKS lacks: 401, with Envoy
//!   `jwt_authn`'s message (what Istio users see).
//! - Tokens are looked for in the rules' headers, query parameters and cookies, or in
//!   `Authorization: Bearer` and `access_token` for a rule that names none.
//! - More than one token: 401.
//! - `alg: none` and HMAC algorithms are refused: the keys are public, and accepting HS256
//!   with a public RSA key as the secret is the classic algorithm-confusion attack.
//!
//! Signatures: RS256/384/512, PS256/384/512, ES256, ES384 and EdDSA (Ed25519, an `OKP` key).

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rsa::signature::Verifier;
use rsa::{BigUint, RsaPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Sha256, Sha384, Sha512};

/// Seconds of clock difference tolerated on `exp` and `nbf` (Envoy's default).
pub const CLOCK_SKEW_SECONDS: i64 = 60;

/// One `jwtRules` entry of a RequestAuthentication, resolved: the JWKS is inline by now
/// (xds-server fetches `jwksUri`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtRule {
    pub issuer: String,
    /// Accepted `aud` values; empty accepts any.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The JWKS document, as JSON text.
    pub jwks: String,
    /// Where the control plane fetched `jwks` from (absent for inline keys): a token whose
    /// `kid` it lacks makes the filter ask the control plane to fetch it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// Where the token is: `(header, prefix)`; default `Authorization: Bearer `.
    #[serde(default)]
    pub from_headers: Vec<(String, String)>,
    /// Query parameters holding the token; default `access_token`.
    #[serde(default)]
    pub from_params: Vec<String>,
    /// Cookies holding the token. Like Envoy's `jwt_authn`, the cookie stays in the request
    /// (`forwardOriginalToken` does not apply to it).
    #[serde(default)]
    pub from_cookies: Vec<String>,
    /// Keep the token for the app; by default (as in Istio) the header is removed once the
    /// token is verified.
    #[serde(default)]
    pub forward_original_token: bool,
    /// Send the verified payload (base64url JSON, as in the token) to the app in this header.
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    /// Send claims to the app: `(header, claim)`; a claim may be nested (`a.b`).
    #[serde(default)]
    pub output_claim_to_headers: Vec<(String, String)>,
}

impl JwtRule {
    /// Whether the rule names no location, so its tokens are in `Authorization: Bearer`
    /// or `access_token` (Envoy's default).
    pub fn default_locations(&self) -> bool {
        self.from_headers.is_empty() && self.from_params.is_empty() && self.from_cookies.is_empty()
    }

    /// Headers that carry this rule's tokens, lower case.
    pub fn token_headers(&self) -> Vec<String> {
        if self.default_locations() {
            return vec!["authorization".to_string()];
        }
        self.from_headers
            .iter()
            .map(|(h, _)| h.to_ascii_lowercase())
            .collect()
    }

    /// The headers this rule writes for the app, lower case. A client must not be able to
    /// send them itself, so they are removed from every request first.
    pub fn output_header_names(&self) -> Vec<String> {
        self.output_payload_to_header
            .iter()
            .chain(self.output_claim_to_headers.iter().map(|(h, _)| h))
            .map(|h| h.to_ascii_lowercase())
            .collect()
    }
}

/// Why a request's token was refused: each renders as Envoy's `jwt_authn` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    Malformed,
    BadHeader,
    BadPayload,
    /// `none`, HMAC, or an algorithm Ward does not verify.
    UnsupportedAlgorithm(String),
    UnknownIssuer,
    /// No key of the issuer's JWKS matches the token's `kid` and algorithm.
    UnknownKid {
        issuer: String,
        kid: Option<String>,
    },
    BadSignature,
    Expired,
    NotYetValid,
    /// `exp`, `nbf` or `iat` is present but not a number (Envoy refuses the token rather
    /// than ignore the claim).
    TimeNotNumeric(&'static str),
    WrongAudience,
    MultipleTokens,
    /// The configured JWKS cannot be used.
    BadJwks(String),
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Malformed => f.write_str(
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
            ),
            JwtError::BadHeader => f.write_str("Jwt header is an invalid JSON"),
            JwtError::BadPayload => f.write_str("Jwt payload is an invalid JSON"),
            JwtError::UnsupportedAlgorithm(alg) => {
                write!(f, "Jwt algorithm `{alg}` is not supported")
            }
            JwtError::UnknownIssuer => f.write_str("Jwt issuer is not configured"),
            JwtError::UnknownKid { .. } => {
                f.write_str("Jwks doesn't have key to match kid or alg from Jwt")
            }
            JwtError::BadSignature => f.write_str("Jwt verification fails"),
            JwtError::Expired => f.write_str("Jwt is expired"),
            JwtError::NotYetValid => f.write_str("Jwt not yet valid"),
            JwtError::TimeNotNumeric(claim) => {
                write!(f, "Jwt payload [{claim}] field is not an integer")
            }
            JwtError::WrongAudience => f.write_str("Audiences in Jwt are not allowed"),
            JwtError::MultipleTokens => f.write_str("Jwt is duplicated: more than one token"),
            JwtError::BadJwks(why) => write!(f, "Jwks is invalid: {why}"),
        }
    }
}

impl std::error::Error for JwtError {}

/// A token whose signature, issuer, audience and times were checked.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedJwt {
    pub issuer: String,
    pub subject: String,
    /// The payload, with space-delimited `scope` and `permission` split into lists, as Istio
    /// configures Envoy's `jwt_authn` to do.
    pub claims: Map<String, Value>,
    /// The payload as the token carries it (base64url).
    pub payload_b64: String,
}

impl VerifiedJwt {
    /// Istio's request principal: `<iss>/<sub>`.
    pub fn principal(&self) -> String {
        format!("{}/{}", self.issuer, self.subject)
    }

    /// The headers `rule` (`outputPayloadToHeader`, `outputClaimToHeaders`) gives the app, as
    /// Envoy's `jwt_authn` writes them: the payload as in the token; a claim that is a string,
    /// number or boolean as text, a list of them joined with commas; other claims not at all.
    pub fn output_headers(&self, rule: &JwtRule) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        if let Some(header) = &rule.output_payload_to_header {
            headers.push((header.to_ascii_lowercase(), self.payload_b64.clone()));
        }
        if rule.output_claim_to_headers.is_empty() {
            return headers;
        }
        // The claims as issued (`scope` not split).
        let Some(Value::Object(original)) =
            decode_part(&self.payload_b64).and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        else {
            return headers;
        };
        let scalar = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        for (header, claim) in &rule.output_claim_to_headers {
            let mut value = None;
            let mut scope = &original;
            let parts: Vec<&str> = claim.split('.').collect();
            for (i, part) in parts.iter().enumerate() {
                match scope.get(*part) {
                    Some(Value::Object(inner)) if i + 1 < parts.len() => scope = inner,
                    Some(found) if i + 1 == parts.len() => value = Some(found),
                    _ => break,
                }
            }
            let text = match value {
                Some(Value::Array(items)) => {
                    let texts: Option<Vec<String>> = items.iter().map(scalar).collect();
                    texts.map(|t| t.join(","))
                }
                Some(v) => scalar(v),
                None => None,
            };
            if let Some(text) = text {
                headers.push((header.to_ascii_lowercase(), text));
            }
        }
        headers
    }
}

#[derive(Debug, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

/// A time claim (`exp`, `nbf`, `iat`) in Unix seconds: absent is `None`; any JSON number counts
/// by its value (`1.7e9` too; a fraction is truncated, as Envoy's `jwt_authn` does); anything
/// else refuses the token, since ignoring a string `exp` would make the token never expire.
fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        // `as` saturates, so 1e300 is i64::MAX rather than a wrap.
        Some(Value::Number(n)) => Ok(n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))),
        Some(_) => Err(JwtError::TimeNotNumeric(name)),
    }
}

fn is_expired(exp: Option<i64>, now: i64) -> bool {
    exp.is_some_and(|exp| now > exp.saturating_add(CLOCK_SKEW_SECONDS))
}

fn decode_part(part: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()
}

/// EdDSA over Ed25519 (RFC 8037): an `OKP` key with `crv: Ed25519`; Ed448 is refused.
fn verify_ed25519(jwk: &Jwk, message: &[u8], signature: &[u8]) -> Result<bool, JwtError> {
    if jwk.crv.as_deref() != Some("Ed25519") {
        return Err(JwtError::BadJwks(format!(
            "OKP curve {:?} is not supported (Ed25519 is)",
            jwk.crv.as_deref().unwrap_or("")
        )));
    }
    let key: [u8; 32] = jwk
        .x
        .as_deref()
        .and_then(decode_part)
        .and_then(|x| x.try_into().ok())
        .ok_or_else(|| JwtError::BadJwks("an Ed25519 key without a 32-byte x".into()))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|e| JwtError::BadJwks(e.to_string()))?;
    let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
        return Ok(false);
    };
    Ok(key.verify_strict(message, &signature).is_ok())
}

fn rsa_key(jwk: &Jwk) -> Result<RsaPublicKey, JwtError> {
    let n = jwk.n.as_deref().and_then(decode_part);
    let e = jwk.e.as_deref().and_then(decode_part);
    let (Some(n), Some(e)) = (n, e) else {
        return Err(JwtError::BadJwks("an RSA key without n or e".into()));
    };
    RsaPublicKey::new(BigUint::from_bytes_be(&n), BigUint::from_bytes_be(&e))
        .map_err(|e| JwtError::BadJwks(e.to_string()))
}

fn verify_rsa(alg: &str, key: RsaPublicKey, message: &[u8], signature: &[u8]) -> bool {
    macro_rules! check {
        ($scheme:ident, $hash:ty) => {{
            let Ok(signature) = rsa::$scheme::Signature::try_from(signature) else {
                return false;
            };
            rsa::$scheme::VerifyingKey::<$hash>::new(key)
                .verify(message, &signature)
                .is_ok()
        }};
    }
    match alg {
        "RS256" => check!(pkcs1v15, Sha256),
        "RS384" => check!(pkcs1v15, Sha384),
        "RS512" => check!(pkcs1v15, Sha512),
        "PS256" => check!(pss, Sha256),
        "PS384" => check!(pss, Sha384),
        "PS512" => check!(pss, Sha512),
        _ => false,
    }
}

/// ECDSA with the JWK's curve point; the JWS signature is `r || s`.
fn verify_ec(alg: &str, jwk: &Jwk, message: &[u8], signature: &[u8]) -> Result<bool, JwtError> {
    use p256::ecdsa::signature::Verifier as _;
    let x = jwk.x.as_deref().and_then(decode_part);
    let y = jwk.y.as_deref().and_then(decode_part);
    let (Some(x), Some(y)) = (x, y) else {
        return Err(JwtError::BadJwks("an EC key without x or y".into()));
    };
    let bad_key = |e: &dyn fmt::Display| JwtError::BadJwks(format!("EC key: {e}"));
    Ok(match (alg, jwk.crv.as_deref()) {
        ("ES256", Some("P-256")) if x.len() == 32 && y.len() == 32 => {
            let point = p256::EncodedPoint::from_affine_coordinates(
                p256::FieldBytes::from_slice(&x),
                p256::FieldBytes::from_slice(&y),
                false,
            );
            let key =
                p256::ecdsa::VerifyingKey::from_encoded_point(&point).map_err(|e| bad_key(&e))?;
            p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(message, &sig).is_ok())
        }
        ("ES384", Some("P-384")) if x.len() == 48 && y.len() == 48 => {
            let point = p384::EncodedPoint::from_affine_coordinates(
                p384::FieldBytes::from_slice(&x),
                p384::FieldBytes::from_slice(&y),
                false,
            );
            let key =
                p384::ecdsa::VerifyingKey::from_encoded_point(&point).map_err(|e| bad_key(&e))?;
            p384::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(message, &sig).is_ok())
        }
        _ => false,
    })
}

/// Checks one token against the rules: signature with the issuer's JWKS, then times and
/// audience. `now` is Unix seconds.
pub fn verify(token: &str, rules: &[JwtRule], now: i64) -> Result<VerifiedJwt, JwtError> {
    verify_against(token, &rules.iter().collect::<Vec<_>>(), now)
}

/// [`verify`] with the rules that may have issued the token (those naming where it was).
fn verify_against(token: &str, rules: &[&JwtRule], now: i64) -> Result<VerifiedJwt, JwtError> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header_b64, payload_b64, signature_b64] = parts.as_slice() else {
        return Err(JwtError::Malformed);
    };
    let header: Header = decode_part(header_b64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::BadHeader)?;
    let mut claims: Map<String, Value> = decode_part(payload_b64)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::BadPayload)?;
    let signature = decode_part(signature_b64).ok_or(JwtError::Malformed)?;
    let key_type = match header.alg.as_str() {
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => "RSA",
        "ES256" | "ES384" => "EC",
        "EdDSA" => "OKP",
        _ => return Err(JwtError::UnsupportedAlgorithm(header.alg)),
    };
    // Checked while parsing, before the signature, in jwt_authn's order (iat, nbf, exp).
    time_claim(&claims, "iat")?;
    let nbf = time_claim(&claims, "nbf")?;
    let exp = time_claim(&claims, "exp")?;
    let issuer = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let rule = rules
        .iter()
        .find(|r| r.issuer == issuer)
        .ok_or(JwtError::UnknownIssuer)?;
    let jwks: Jwks =
        serde_json::from_str(&rule.jwks).map_err(|e| JwtError::BadJwks(e.to_string()))?;
    let candidates: Vec<&Jwk> = jwks
        .keys
        .iter()
        .filter(|k| k.kty == key_type)
        .filter(|k| header.kid.is_none() || k.kid == header.kid)
        .filter(|k| k.alg.as_deref().is_none_or(|a| a == header.alg))
        .collect();
    if candidates.is_empty() {
        return Err(JwtError::UnknownKid {
            issuer,
            kid: header.kid,
        });
    }
    let message = format!("{header_b64}.{payload_b64}");
    let mut verified = false;
    for jwk in candidates {
        let ok = match key_type {
            "RSA" => verify_rsa(&header.alg, rsa_key(jwk)?, message.as_bytes(), &signature),
            "OKP" => verify_ed25519(jwk, message.as_bytes(), &signature)?,
            _ => verify_ec(&header.alg, jwk, message.as_bytes(), &signature)?,
        };
        if ok {
            verified = true;
            break;
        }
    }
    if !verified {
        return Err(JwtError::BadSignature);
    }
    if is_expired(exp, now) {
        return Err(JwtError::Expired);
    }
    if nbf.is_some_and(|nbf| now.saturating_add(CLOCK_SKEW_SECONDS) < nbf) {
        return Err(JwtError::NotYetValid);
    }
    if !rule.audiences.is_empty() {
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !audiences
            .iter()
            .any(|a| rule.audiences.iter().any(|r| r == a))
        {
            return Err(JwtError::WrongAudience);
        }
    }
    for name in ["scope", "permission"] {
        if let Some(Value::String(text)) = claims.get(name) {
            let list = text
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect();
            claims.insert(name.to_string(), Value::Array(list));
        }
    }
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok(VerifiedJwt {
        issuer,
        subject,
        claims,
        payload_b64: payload_b64.to_string(),
    })
}

/// A token a request carries, with the issuers of the rules that look where it was found:
/// only they may have issued it (as Envoy's `jwt_authn` checks), so a token cannot be
/// moved to a header another issuer's rule reads, with that rule's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundToken {
    pub token: String,
    pub issuers: Vec<String>,
}

/// The tokens a request carries where the rules look: each rule's headers (prefix
/// stripped), query parameters and cookies, or `Authorization: Bearer` and `access_token`
/// for a rule that names none. A token found in several places is one token.
pub fn find_tokens(rules: &[JwtRule], headers: &[(String, String)], path: &str) -> Vec<FoundToken> {
    let mut found: Vec<FoundToken> = Vec::new();
    let mut add = |token: &str, issuer: &str| match found.iter_mut().find(|f| f.token == token) {
        Some(f) if f.issuers.iter().any(|i| i == issuer) => {}
        Some(f) => f.issuers.push(issuer.to_string()),
        None => found.push(FoundToken {
            token: token.to_string(),
            issuers: vec![issuer.to_string()],
        }),
    };
    let query: Vec<(&str, &str)> = path
        .split_once('?')
        .map(|(_, query)| {
            query
                .split('&')
                .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
                .collect()
        })
        .unwrap_or_default();
    let cookies = cookies(headers);
    for rule in rules {
        let default = rule.default_locations();
        let header_locations = rule
            .from_headers
            .iter()
            .map(|(h, p)| (h.as_str(), p.as_str()))
            .chain(default.then_some(("authorization", "Bearer ")));
        for (header, prefix) in header_locations {
            for (name, value) in headers {
                if name.eq_ignore_ascii_case(header) {
                    if let Some(token) = value.strip_prefix(prefix) {
                        add(token.trim(), &rule.issuer);
                    }
                }
            }
        }
        let params = rule
            .from_params
            .iter()
            .map(String::as_str)
            .chain(default.then_some("access_token"));
        for param in params {
            for (key, value) in &query {
                if *key == param && !value.is_empty() {
                    add(value, &rule.issuer);
                }
            }
        }
        for name in &rule.from_cookies {
            // The first cookie of that name counts, as in Envoy's cookie parser.
            if let Some((_, value)) = cookies.iter().find(|(k, _)| k == name) {
                if !value.is_empty() {
                    add(value, &rule.issuer);
                }
            }
        }
    }
    found
}

/// The tokens of [`find_tokens`], without where they were found.
pub fn extract_tokens(rules: &[JwtRule], headers: &[(String, String)], path: &str) -> Vec<String> {
    find_tokens(rules, headers, path)
        .into_iter()
        .map(|f| f.token)
        .collect()
}

/// The `name=value` pairs of every `Cookie` header, in order; a value in double quotes is
/// unquoted (RFC 6265's cookie-value).
fn cookies(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("cookie"))
        .flat_map(|(_, value)| value.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((name.trim(), value))
        })
        .collect()
}

/// Istio's request authentication for one request: Ok(None) without a token, Ok(Some) with
/// one valid token, Err (401) otherwise.
pub fn authenticate(
    rules: &[JwtRule],
    headers: &[(String, String)],
    path: &str,
    now: i64,
) -> Result<Option<VerifiedJwt>, JwtError> {
    authenticate_cached(rules, headers, path, now, None)
}

/// Tokens already verified against one set of rules, so a client reusing its token costs a
/// lookup instead of an RSA verification (about a millisecond in wasm). Bounded; an entry is
/// used only until the token's `exp` (plus skew). Build a new cache when the rules change.
#[derive(Debug)]
pub struct VerifiedCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, VerifiedJwt>>,
    capacity: usize,
}

impl VerifiedCache {
    pub fn new(capacity: usize) -> Self {
        VerifiedCache {
            entries: Default::default(),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, token: &str, now: i64) -> Option<VerifiedJwt> {
        let mut entries = self.entries.lock().ok()?;
        let verified = entries.get(token)?;
        // `verify` accepted the claims, so a present `exp` is a number.
        let exp = time_claim(&verified.claims, "exp").ok().flatten();
        if is_expired(exp, now) {
            entries.remove(token);
            return None;
        }
        Some(verified.clone())
    }

    fn insert(&self, token: &str, verified: &VerifiedJwt) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= self.capacity {
                entries.clear();
            }
            entries.insert(token.to_string(), verified.clone());
        }
    }
}

/// [`authenticate`], consulting and filling `cache` when given.
pub fn authenticate_cached(
    rules: &[JwtRule],
    headers: &[(String, String)],
    path: &str,
    now: i64,
    cache: Option<&VerifiedCache>,
) -> Result<Option<VerifiedJwt>, JwtError> {
    if rules.is_empty() {
        return Ok(None);
    }
    match find_tokens(rules, headers, path).as_slice() {
        [] => Ok(None),
        [found] => {
            let token = found.token.as_str();
            let here: Vec<&JwtRule> = rules
                .iter()
                .filter(|r| found.issuers.contains(&r.issuer))
                .collect();
            if let Some(verified) = cache.and_then(|c| c.get(token, now)) {
                if here.iter().any(|r| r.issuer == verified.issuer) {
                    return Ok(Some(verified));
                }
            }
            let verified = verify_against(token, &here, now)?;
            if let Some(cache) = cache {
                cache.insert(token, &verified);
            }
            Ok(Some(verified))
        }
        _ => Err(JwtError::MultipleTokens),
    }
}

#[cfg(test)]
mod tests;
