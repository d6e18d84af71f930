//! Outbound HTTP/1.1 GETs from a stand-in to another service of the mesh.
//!
//! The local runner has no iptables capture: it gives the app `http_proxy` pointing at its own
//! sidecar instead. Requests then go to the sidecar in absolute form (`GET http://details:9080/…`,
//! `Host: details:9080`), as Python's `requests` or curl send them to a proxy; without a proxy
//! they go straight to the URL's host. One connection per request: the real Bookinfo apps do
//! not pool either, so load spreads over the destination's replicas the same way.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderMap, HeaderValue, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

/// Bodies past this size are refused rather than buffered (the apps read small JSON).
const MAX_BODY: usize = 16 << 20;

/// Where a stand-in's outbound requests go.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Outbound {
    /// `host:port` of the HTTP proxy (the sidecar), if any.
    pub(super) proxy: Option<String>,
}

/// Like Python's `requests` timeouts: one for the connection, one for each read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Timeouts {
    pub(super) connect: Duration,
    pub(super) read: Duration,
}

impl Timeouts {
    pub(super) fn both(timeout: Duration) -> Self {
        Timeouts {
            connect: timeout,
            read: timeout,
        }
    }
}

/// A complete response.
#[derive(Debug)]
pub(super) struct Fetched {
    pub(super) status: StatusCode,
    pub(super) body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum OutboundError {
    #[error("{url}: not an http:// URL with a host")]
    BadUrl { url: String },
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("connecting to {address}: no connection within {timeout:?}")]
    ConnectTimeout { address: String, timeout: Duration },
    #[error("{url}: nothing read for {timeout:?}")]
    ReadTimeout { url: String, timeout: Duration },
    #[error("{url}: {source}")]
    Http { url: String, source: hyper::Error },
    #[error("{url}: response body over {MAX_BODY} bytes")]
    TooLarge { url: String },
}

/// The `host:port` of an `http_proxy` value (`http://10.1.0.2:15001`, `10.1.0.2:15001/`),
/// `None` if empty or not a plain-HTTP proxy.
pub(super) fn proxy_authority(value: &str) -> Option<String> {
    let value = value.trim();
    let rest = match value.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some(_) => return None,
        None => value,
    };
    let authority = rest.split('/').next().unwrap_or_default();
    // Credentials in the URL are for the proxy, which here is a sidecar that wants none.
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.is_empty() {
        return None;
    }
    let has_port = match authority.rfind(']') {
        Some(bracket) => authority[bracket..].contains(':'),
        None => authority.contains(':'),
    };
    Some(if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    })
}

/// The proxy from the process environment; lowercase wins over uppercase, as in Python's
/// `urllib` and curl.
pub(super) fn proxy_from(lookup: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    ["http_proxy", "HTTP_PROXY"]
        .iter()
        .find_map(|name| lookup(name).filter(|v| !v.trim().is_empty()))
        .and_then(|v| proxy_authority(&v))
}

impl Outbound {
    /// GETs `url` with `headers` (plus `Host`), reading the whole body.
    pub(super) async fn get(
        &self,
        url: &str,
        headers: &HeaderMap,
        timeouts: Timeouts,
    ) -> Result<Fetched, OutboundError> {
        let bad_url = || OutboundError::BadUrl {
            url: url.to_string(),
        };
        let uri: Uri = url.parse().map_err(|_| bad_url())?;
        if uri.scheme_str() != Some("http") {
            return Err(bad_url());
        }
        let host = uri.host().ok_or_else(bad_url)?;
        let port = uri.port_u16().unwrap_or(80);
        // `requests` and Java name the port in Host unless it is the scheme's default.
        let host_header = match uri.port_u16() {
            Some(p) if p != 80 => format!("{host}:{p}"),
            _ => host.to_string(),
        };
        let host_header = HeaderValue::from_str(&host_header).map_err(|_| bad_url())?;
        let (address, target) = match &self.proxy {
            Some(proxy) => (proxy.clone(), uri.clone()),
            None => {
                let origin_form = uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .parse::<Uri>()
                    .map_err(|_| bad_url())?;
                (format!("{host}:{port}"), origin_form)
            }
        };

        let stream =
            match tokio::time::timeout(timeouts.connect, TcpStream::connect(&address)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(source)) => return Err(OutboundError::Connect { address, source }),
                Err(_) => {
                    return Err(OutboundError::ConnectTimeout {
                        address,
                        timeout: timeouts.connect,
                    })
                }
            };
        let _ = stream.set_nodelay(true);
        let http_error = |source| OutboundError::Http {
            url: url.to_string(),
            source,
        };
        let read_timeout = || OutboundError::ReadTimeout {
            url: url.to_string(),
            timeout: timeouts.read,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        let peer = address.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(%peer, error = %e, "outbound connection ended with an error");
            }
        });

        let mut request = Request::new(Empty::<Bytes>::new());
        *request.method_mut() = Method::GET;
        *request.uri_mut() = target;
        request.headers_mut().insert(HOST, host_header);
        for (name, value) in headers {
            request.headers_mut().append(name, value.clone());
        }
        let response = tokio::time::timeout(timeouts.read, sender.send_request(request))
            .await
            .map_err(|_| read_timeout())?
            .map_err(http_error)?;
        let status = response.status();
        let mut body = response.into_body();
        let mut collected = BytesMut::new();
        // A read timeout like a socket's: the limit is on each wait, not on the whole body.
        while let Some(frame) = tokio::time::timeout(timeouts.read, body.frame())
            .await
            .map_err(|_| read_timeout())?
        {
            if let Ok(data) = frame.map_err(http_error)?.into_data() {
                if collected.len() + data.len() > MAX_BODY {
                    return Err(OutboundError::TooLarge {
                        url: url.to_string(),
                    });
                }
                collected.extend_from_slice(&data);
            }
        }
        Ok(Fetched {
            status,
            body: collected.freeze(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_values() {
        assert_eq!(
            proxy_authority("http://10.1.0.2:15001").as_deref(),
            Some("10.1.0.2:15001")
        );
        assert_eq!(
            proxy_authority("HTTP://10.1.0.2:15001/").as_deref(),
            Some("10.1.0.2:15001")
        );
        assert_eq!(
            proxy_authority("10.1.0.2:15001").as_deref(),
            Some("10.1.0.2:15001")
        );
        assert_eq!(
            proxy_authority("http://user:pw@sidecar").as_deref(),
            Some("sidecar:80")
        );
        assert_eq!(
            proxy_authority("http://[::1]:3128").as_deref(),
            Some("[::1]:3128")
        );
        assert_eq!(proxy_authority("http://[::1]").as_deref(), Some("[::1]:80"));
        assert_eq!(proxy_authority(""), None);
        assert_eq!(proxy_authority("https://proxy:443"), None);
    }

    #[test]
    fn lowercase_proxy_variable_wins() {
        let env = |name: &str| match name {
            "http_proxy" => Some("http://a:1".to_string()),
            "HTTP_PROXY" => Some("http://b:2".to_string()),
            _ => None,
        };
        assert_eq!(proxy_from(&env).as_deref(), Some("a:1"));
        let upper_only = |name: &str| (name == "HTTP_PROXY").then(|| "http://b:2".to_string());
        assert_eq!(proxy_from(&upper_only).as_deref(), Some("b:2"));
        assert_eq!(proxy_from(&|_: &str| None), None);
    }
}
