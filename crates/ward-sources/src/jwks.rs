//! Fetches the JWKS documents RequestAuthentications name by `jwksUri`, so the sidecars never
//! fetch anything: the keys reach them inline in the wasm filter's configuration. A failed
//! fetch keeps the last good keys and is reported (`/status`, the log); a URI never fetched
//! has no keys, so its tokens are refused rather than accepted unverified.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Where the system's CA bundle is on Debian-like machines (https `jwksUri`s).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default, Serialize)]
pub struct JwksState {
    /// The last good document.
    #[serde(skip)]
    pub document: Option<String>,
    pub keys: usize,
    pub fetched_at_unix: Option<u64>,
    pub last_error: Option<String>,
}

/// The last good JWKS per URI.
#[derive(Debug, Default)]
pub struct JwksCache {
    entries: Mutex<BTreeMap<String, JwksState>>,
}

impl JwksCache {
    /// The last good documents, by URI.
    pub fn documents(&self) -> BTreeMap<String, String> {
        let entries = self.entries.lock().expect("jwks lock");
        entries
            .iter()
            .filter_map(|(uri, s)| s.document.clone().map(|d| (uri.clone(), d)))
            .collect()
    }

    /// True if the last good document of `uri` has a key with this `kid`.
    pub fn has_key(&self, uri: &str, kid: &str) -> bool {
        let entries = self.entries.lock().expect("jwks lock");
        let Some(document) = entries.get(uri).and_then(|s| s.document.as_deref()) else {
            return false;
        };
        serde_json::from_str::<serde_json::Value>(document)
            .ok()
            .and_then(|v| v.get("keys")?.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .any(|key| key.get("kid").and_then(|k| k.as_str()) == Some(kid))
    }

    pub fn status(&self) -> BTreeMap<String, JwksState> {
        self.entries.lock().expect("jwks lock").clone()
    }

    /// Fetches every URI; returns whether any document changed.
    pub async fn refresh(
        &self,
        uris: &[String],
        now_unix: u64,
        metrics: &ward_metrics::Metrics,
    ) -> bool {
        let mut changed = false;
        for uri in uris {
            let result = fetch(uri).await;
            let outcome = if result.is_ok() { "ok" } else { "error" };
            metrics
                .jwks_fetches
                .get_or_create(&ward_metrics::ResultLabel {
                    result: outcome.to_string(),
                })
                .inc();
            let mut entries = self.entries.lock().expect("jwks lock");
            let entry = entries.entry(uri.clone()).or_default();
            match result {
                Ok((document, keys)) => {
                    changed |= entry.document.as_deref() != Some(document.as_str());
                    entry.document = Some(document);
                    entry.keys = keys;
                    entry.fetched_at_unix = Some(now_unix);
                    entry.last_error = None;
                }
                Err(e) => {
                    tracing::warn!(%uri, error = %e, "JWKS fetch failed; the last good keys stay");
                    entry.last_error = Some(e.to_string());
                }
            }
        }
        self.entries
            .lock()
            .expect("jwks lock")
            .retain(|uri, _| uris.contains(uri));
        changed
    }
}

/// Why a JWKS document could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("fetching {uri}: no answer within {timeout:?}")]
    Timeout { uri: String, timeout: Duration },
    #[error("`{0}` is not a URL")]
    NotUrl(String),
    #[error("`{0}`: expected http:// or https://")]
    Scheme(String),
    #[error("no host in the URL")]
    NoHost,
    #[error("connecting to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("reading the system CA bundle {SYSTEM_ROOTS}: {0}")]
    SystemRoots(rustls_pki_types::pem::Error),
    #[error("TLS configuration: {0}")]
    TlsConfig(#[from] rustls::Error),
    #[error("`{0}` is not a TLS server name")]
    ServerName(String),
    #[error("TLS with {host}: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Request(#[from] hyper::http::Error),
    #[error("HTTP {0}")]
    Status(hyper::StatusCode),
    #[error("the answer is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("the answer is not a JWKS (no `keys` list)")]
    NotJwks,
}

/// GETs a JWKS document over http or https: (the document, its number of keys).
pub async fn fetch(uri: &str) -> Result<(String, usize), JwksError> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(uri))
        .await
        .map_err(|_| JwksError::Timeout {
            uri: uri.to_string(),
            timeout: FETCH_TIMEOUT,
        })?
}

async fn fetch_inner(uri: &str) -> Result<(String, usize), JwksError> {
    let parsed: hyper::Uri = uri
        .parse()
        .map_err(|_| JwksError::NotUrl(uri.to_string()))?;
    let https = match parsed.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(JwksError::Scheme(uri.to_string())),
    };
    let host = parsed.host().ok_or(JwksError::NoHost)?.to_string();
    let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = parsed
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|source| JwksError::Connect {
            host: host.clone(),
            port,
            source,
        })?;
    let body = if https {
        let mut roots = rustls::RootCertStore::empty();
        use rustls_pki_types::pem::PemObject;
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(SYSTEM_ROOTS)
            .map_err(JwksError::SystemRoots)?
            .flatten()
        {
            let _ = roots.add(cert);
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|_| JwksError::ServerName(host.clone()))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|source| JwksError::Tls {
                host: host.clone(),
                source,
            })?;
        get(tls, &host, &path).await?
    } else {
        get(tcp, &host, &path).await?
    };
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(JwksError::NotJson)?;
    let keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or(JwksError::NotJwks)?
        .len();
    Ok((String::from_utf8_lossy(&body).into_owned(), keys))
}

async fn get<S>(stream: S, host: &str, path: &str) -> Result<Bytes, JwksError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        return Err(JwksError::Status(status));
    }
    Ok(body)
}
