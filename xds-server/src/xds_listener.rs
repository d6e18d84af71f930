//! The xDS port. Proxies authenticate with client certificates from the mesh CA (mutual TLS,
//! plaintext only behind an explicit flag); connections are bounded in number and TLS
//! handshakes in time, so a flood of unauthenticated or slow clients is refused cheaply and
//! the connected proxies keep getting their pushes.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::identity::{CaError, CertificateAuthority};
use crate::metrics::Metrics;

/// Lifetime of xds-server's own serving certificate (re-issued at every start).
pub const SERVING_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, Clone, Copy)]
pub struct XdsLimits {
    /// Open connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A client that has not completed its TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
}

impl Default for XdsLimits {
    fn default() -> Self {
        XdsLimits {
            max_connections: 20_000,
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// The identity xds-server presents to proxies: `spiffe://<td>/ns/<root-ns>/sa/xds-server`.
pub fn server_identity(trust_domain: &str, root_namespace: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{root_namespace}/sa/xds-server")
}

/// TLS for the xDS port: a serving certificate from the CA (for `xds-server`, `localhost` and
/// the bind address) and client certificates required, verified against the trust bundle.
pub fn tls_config(
    ca: &CertificateAuthority,
    identity: &str,
    bind: SocketAddr,
    limits: XdsLimits,
) -> Result<ServerTlsConfig, CaError> {
    let cert = ca.issue_with_names(
        identity,
        &["xds-server", "localhost"],
        &[bind.ip()],
        SERVING_CERT_LIFETIME,
    )?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(
            &cert.cert_chain_pem,
            &cert.private_key_pem,
        ))
        .client_ca_root(Certificate::from_pem(ca.trust_bundle_pem()))
        .timeout(limits.handshake_timeout))
}

/// A connection holding one of the listener's slots until it closes.
pub struct LimitedStream {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Connected for LimitedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accepted connections, at most `limits.max_connections` open at once; past that, new ones
/// are closed at once (and counted) rather than queued.
pub fn incoming(
    listener: TcpListener,
    limits: XdsLimits,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = io::Result<LimitedStream>> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    futures::stream::unfold(
        (listener, slots, metrics),
        |(listener, slots, metrics)| async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!(error = %e, "accepting an xDS connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let _ = stream.set_nodelay(true);
                        let item = LimitedStream {
                            inner: stream,
                            _slot: slot,
                        };
                        return Some((Ok(item), (listener, slots, metrics)));
                    }
                    Err(_) => {
                        metrics.refuse("connection-limit");
                        tracing::debug!(%peer, "xDS connection limit reached; closing");
                        drop(stream);
                    }
                }
            }
        },
    )
}
