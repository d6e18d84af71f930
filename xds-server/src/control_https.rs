//! xds-server's HTTPS port beside xDS (`--https-address`), serving with a certificate from
//! its CA (no client certificate asked: its callers have none yet):
//! - `POST /inject`: the mutating admission webhook. An `AdmissionReview` for a Pod gets the
//!   JSON Patch of [`ward_inject::pod_patch`], the same sidecar `wardctl inject` writes.
//! - `POST /v1/credential`: the bootstrap-credential exchange. A pod's init container sends
//!   its projected service-account token (audience [`TOKEN_AUDIENCE`]); xds-server checks it
//!   with a TokenReview and answers the certificate of that service account's SPIFFE
//!   identity, which the sidecar then presents on the xDS port.

use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use ward_config::SpiffeId;
use ward_identity::CertificateAuthority;
use ward_inject::InjectOptions;

/// The audience the pods' projected tokens are minted for.
pub const TOKEN_AUDIENCE: &str = "ward-xds";
/// Largest request body read (an AdmissionReview of a big Pod is tens of KB).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Why a service-account token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefused {
    #[error("TokenReview failed: {0}")]
    ReviewFailed(String),
    /// The API server's own reason.
    #[error("{0}")]
    NotAuthenticated(String),
    #[error("the token is not for audience {TOKEN_AUDIENCE}")]
    WrongAudience,
    #[error("{0} is not a service account")]
    NotServiceAccount(String),
}

/// Who a token belongs to: Ok((namespace, service account)), or why it is refused.
pub type TokenReviewer = Arc<
    dyn Fn(String) -> futures::future::BoxFuture<'static, Result<(String, String), TokenRefused>>
        + Send
        + Sync,
>;

pub struct Handlers {
    pub inject: InjectOptions,
    pub ca: Arc<dyn Fn() -> Arc<CertificateAuthority> + Send + Sync>,
    pub trust_domain: String,
    /// None without `--kubernetes`: the exchange answers 503.
    pub reviewer: Option<TokenReviewer>,
}

/// The TokenReview of `token` through the API server.
pub fn kubernetes_reviewer(client: kube::Client) -> TokenReviewer {
    Arc::new(move |token: String| {
        let client = client.clone();
        Box::pin(async move {
            use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
            let api: kube::Api<TokenReview> = kube::Api::all(client);
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token),
                    audiences: Some(vec![TOKEN_AUDIENCE.to_string()]),
                },
                ..Default::default()
            };
            let reviewed = api
                .create(&kube::api::PostParams::default(), &review)
                .await
                .map_err(|e| TokenRefused::ReviewFailed(e.to_string()))?;
            let status = reviewed.status.unwrap_or_default();
            if status.authenticated != Some(true) {
                return Err(TokenRefused::NotAuthenticated(
                    status
                        .error
                        .unwrap_or_else(|| "the token is not valid".to_string()),
                ));
            }
            if !status
                .audiences
                .unwrap_or_default()
                .iter()
                .any(|a| a == TOKEN_AUDIENCE)
            {
                return Err(TokenRefused::WrongAudience);
            }
            let username = status.user.and_then(|u| u.username).unwrap_or_default();
            service_account_of(&username)
                .ok_or_else(|| TokenRefused::NotServiceAccount(username.clone()))
        })
    })
}

/// `system:serviceaccount:<ns>:<name>` → (ns, name).
pub fn service_account_of(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':'))
        .then(|| (ns.to_string(), name.to_string()))
}

/// The AdmissionReview answer for `review`.
pub fn admission_response(review: &Value, options: &InjectOptions) -> Value {
    let uid = review["request"]["uid"].clone();
    let object = &review["request"]["object"];
    let response = if review["request"]["kind"]["kind"] != json!("Pod") {
        json!({"uid": uid, "allowed": true})
    } else {
        match ward_inject::pod_patch(object, options) {
            Ok(Some(patch)) => {
                let patch = serde_json::to_vec(&patch).unwrap_or_default();
                json!({"uid": uid, "allowed": true, "patchType": "JSONPatch",
                    "patch": base64::engine::general_purpose::STANDARD.encode(patch)})
            }
            Ok(None) => json!({"uid": uid, "allowed": true}),
            // A pod whose capture Ward cannot set up is refused, not run unmeshed.
            Err(e) => json!({"uid": uid, "allowed": false,
                "status": {"code": 400, "message": format!("Ward cannot inject this pod: {e}")}}),
        }
    };
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

impl Handlers {
    async fn credential(&self, body: &[u8]) -> (u16, Value) {
        let Some(reviewer) = &self.reviewer else {
            return (
                503,
                json!({"error": "xds-server runs without --kubernetes: no TokenReview"}),
            );
        };
        let Some(token) = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v["token"].as_str().map(str::to_string))
        else {
            return (400, json!({"error": "expected {\"token\": \"...\"}"}));
        };
        let (namespace, account) = match reviewer(token).await {
            Ok(who) => who,
            Err(why) => {
                warn!(%why, "refused a bootstrap credential");
                return (403, json!({ "error": why.to_string() }));
            }
        };
        let identity = SpiffeId::new(&self.trust_domain, &namespace, &account);
        let ca = (self.ca)();
        match ca.issue(
            &identity,
            ward_identity::credentials::BOOTSTRAP_CREDENTIAL_LIFETIME,
        ) {
            Ok(cert) => {
                info!(%identity, serial = %cert.serial_hex, "bootstrap credential issued for a service-account token");
                (
                    200,
                    json!({
                        "identity": identity.to_string(),
                        "cert_chain": cert.cert_chain_pem,
                        "private_key": cert.private_key_pem,
                        "root": ca.trust_bundle_pem(),
                    }),
                )
            }
            Err(e) => (500, json!({"error": e.to_string()})),
        }
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        let post = request.method() == hyper::Method::POST;
        let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return reply(413, json!({"error": "request too large"})),
        };
        match (post, path.as_str()) {
            (true, "/inject") => match serde_json::from_slice::<Value>(&body) {
                Ok(review) => reply(200, admission_response(&review, &self.inject)),
                Err(e) => reply(
                    400,
                    json!({"error": format!("not an AdmissionReview: {e}")}),
                ),
            },
            (true, "/v1/credential") => {
                let (code, answer) = self.credential(&body).await;
                reply(code, answer)
            }
            _ => reply(404, json!({"error": "not found"})),
        }
    }
}

fn reply(code: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

/// A pod's side of the exchange: POSTs `token` to `url` (xds-server's `/v1/credential`),
/// trusting only `root_pem`, and writes the answer as `cert.pem`, `key.pem` (owner only) and
/// `root.pem` into `dir`. Returns the identity it got.
pub async fn fetch_credential(
    url: &str,
    root_pem: &str,
    token: &str,
    dir: &std::path::Path,
) -> anyhow::Result<String> {
    use anyhow::{bail, Context};
    use rustls_pki_types::pem::PemObject;
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("`{url}` is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        bail!("{url}: the credential exchange is https only (the token is a secret)");
    }
    let host = uri.host().context("no host in the URL")?.to_string();
    let port = uri.port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.context("reading the root certificate")?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let name = rustls_pki_types::ServerName::try_from(host.clone())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS with {host} (is --root-cert xds-server's root?)"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::post(uri.path())
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            json!({ "token": token }).to_string(),
        )))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body: Value = serde_json::from_slice(&response.into_body().collect().await?.to_bytes())
        .context("the answer is not JSON")?;
    if !status.is_success() {
        bail!(
            "xds-server refused the token ({status}): {}",
            body["error"].as_str().unwrap_or("")
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let field = |name: &str| {
        body[name]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no `{name}` in the answer"))
    };
    ward_identity::ca::write_private(&dir.join("cert.pem"), &field("cert_chain")?, 0o644)?;
    ward_identity::ca::write_private(&dir.join("key.pem"), &field("private_key")?, 0o600)?;
    ward_identity::ca::write_private(&dir.join("root.pem"), &field("root")?, 0o644)?;
    field("identity")
}

/// TLS for the HTTPS port: a serving certificate from the CA for `names`, no client auth.
pub fn tls_config(
    ca: &CertificateAuthority,
    identity: &SpiffeId,
    names: &[&str],
    ips: &[std::net::IpAddr],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let cert = ca.issue_with_names(
        identity,
        names,
        ips,
        ward_ads::listener::SERVING_CERT_LIFETIME,
    )?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_chain_pem.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(cert.private_key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves the HTTPS port until the process ends.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, handlers: Arc<Handlers>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let handlers = handlers.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(stream) => stream,
                Err(e) => {
                    debug!(%peer, error = %e, "TLS handshake on the HTTPS port failed");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |request| {
                let handlers = handlers.clone();
                async move { Ok::<_, Infallible>(handlers.handle(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_accounts_are_read_from_token_review_usernames() {
        assert_eq!(
            service_account_of("system:serviceaccount:shop:web"),
            Some(("shop".into(), "web".into()))
        );
        assert_eq!(service_account_of("system:node:worker-1"), None);
        assert_eq!(service_account_of("system:serviceaccount:shop:"), None);
        assert_eq!(service_account_of("system:serviceaccount:a:b:c"), None);
    }

    /// The webhook's patch, applied, gives the pod the same sidecar, init containers and
    /// volumes as `wardctl inject` gives the manifest.
    #[test]
    fn the_webhook_patch_adds_what_the_text_injection_adds() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-7d9f-", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"serviceAccountName": "web", "containers": [{"name": "web", "image": "nginx"}]}
        });
        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "42", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "object": pod}});
        let options = InjectOptions::default();
        let answer = admission_response(&review, &options);
        assert_eq!(answer["response"]["uid"], "42");
        assert_eq!(answer["response"]["allowed"], true);
        let patch: Vec<Value> = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(answer["response"]["patch"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        // Apply the `add` operations.
        let mut patched = pod.clone();
        for op in &patch {
            assert_eq!(op["op"], "add");
            let path = op["path"].as_str().unwrap().replace("~1", "/");
            let (parent, last) = path.rsplit_once('/').unwrap();
            let target = patched
                .pointer_mut(parent)
                .unwrap_or_else(|| panic!("{parent}"));
            match target {
                Value::Array(items) => items.insert(last.parse().unwrap(), op["value"].clone()),
                Value::Object(map) => {
                    // `ward.dev/injected` was escaped as one key.
                    let key = if parent == "/metadata/annotations" {
                        "ward.dev/injected".to_string()
                    } else {
                        last.to_string()
                    };
                    map.insert(key, op["value"].clone());
                }
                other => panic!("cannot add to {other}"),
            }
        }
        let names = |key: &str| -> Vec<String> {
            patched["spec"][key]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(names("initContainers"), ["ward-init", "ward-bootstrap"]);
        assert_eq!(names("containers"), ["ward-proxy", "web"]);
        assert_eq!(
            names("volumes"),
            [
                "ward-bootstrap",
                "ward-wasm",
                "ward-credentials",
                "ward-token",
                "ward-root-cert"
            ]
        );
        assert_eq!(
            patched["metadata"]["annotations"]["ward.dev/injected"],
            env!("CARGO_PKG_VERSION")
        );
        // Typed as Kubernetes reads them: numbers are numbers.
        assert_eq!(
            patched["spec"]["containers"][0]["securityContext"]["runAsUser"],
            1337
        );
        assert_eq!(
            patched["spec"]["initContainers"][1]["env"][4]["value"],
            "web"
        );
        // Injected already, or opted out: allowed, no patch.
        let mut again = review.clone();
        again["request"]["object"] = patched;
        assert_eq!(
            admission_response(&again, &options)["response"].get("patch"),
            None
        );
    }
}
