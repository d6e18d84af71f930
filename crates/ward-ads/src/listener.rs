//! The xDS port. Proxies authenticate with client certificates from the mesh CA (mutual TLS,
//! plaintext only behind an explicit flag); connections are bounded in number and TLS
//! handshakes in time, so a flood of unauthenticated or slow clients is refused cheaply and
//! the connected proxies keep getting their pushes.
//!
//! Each connection is served here (hyper's HTTP/2 server, tonic's routes) rather than by
//! tonic's `Server`, for one reason: a connection lives at most `max_connection_age`, jittered
//! per connection, then gets a GOAWAY and its ADS streams end with UNAVAILABLE
//! ([`ConnectionDrain`]), so Envoy reconnects on a new connection — after a rollout, that is
//! how streams spread back over the replicas. tonic's own `max_connection_age` is the same for
//! every connection and leaves the (never-ending) ADS streams open until a forced close.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tonic::codegen::Service;
use tonic::service::Routes;
use tonic::transport::server::{Connected, TcpConnectInfo};

use ward_config::SpiffeId;
use ward_identity::{CaError, CertificateAuthority};
use ward_metrics::Metrics;

use crate::admission::TokenBucket;
use crate::drain::ConnectionDrain;

/// Lifetime of xds-server's own serving certificate (re-issued at every start).
pub const SERVING_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, Clone, Copy)]
pub struct XdsLimits {
    /// Open connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A client that has not completed its TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// New ADS streams admitted per second (0: unlimited); the excess is refused with
    /// UNAVAILABLE.
    pub new_streams_per_second: f64,
    /// New ADS streams admitted at once before the rate applies.
    pub new_stream_burst: u32,
    /// A connection is closed gracefully after this long, ±10 % (None: never).
    pub max_connection_age: Option<Duration>,
}

/// What a draining connection gives its streams to end on their own before it is closed.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

impl Default for XdsLimits {
    fn default() -> Self {
        XdsLimits {
            max_connections: 20_000,
            handshake_timeout: Duration::from_secs(5),
            // ~4 ms of CPU per proxy's first sync (docs/benchmarks.md): 100/s is under half
            // of a 2-core replica; the burst covers the start of a local mesh at once.
            new_streams_per_second: 100.0,
            new_stream_burst: 200,
            max_connection_age: Some(Duration::from_secs(30 * 60)),
        }
    }
}

impl XdsLimits {
    /// The admission bucket these limits ask for (None when unlimited).
    pub fn admission(&self) -> Option<Arc<TokenBucket>> {
        (self.new_streams_per_second > 0.0).then(|| {
            Arc::new(TokenBucket::new(
                self.new_streams_per_second,
                self.new_stream_burst.max(1),
                std::time::Instant::now(),
            ))
        })
    }
}

/// `age` ±10 %, drawn per connection, so connections opened together (after a storm) do not
/// all close together.
pub fn jittered_age(age: Duration, rng: &mut impl Rng) -> Duration {
    age.mul_f64(rng.random_range(0.9..=1.1))
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("{what}: {source}")]
    Pem {
        what: &'static str,
        source: rustls_pki_types::pem::Error,
    },
    #[error("TLS configuration of the xDS port: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier of the xDS port: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// TLS for the xDS port: a serving certificate from the CA (for `xds-server`, `localhost` and
/// the bind address) and client certificates required, verified against the trust bundle.
pub fn tls_config(
    ca: &CertificateAuthority,
    identity: &SpiffeId,
    bind: SocketAddr,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let pem = |what| move |source| TlsSetupError::Pem { what, source };
    let cert = ca.issue_with_names(
        identity,
        &["xds-server", "localhost"],
        &[bind.ip()],
        SERVING_CERT_LIFETIME,
    )?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(pem("the serving certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(cert.private_key_pem.as_bytes())
        .map_err(pem("the serving key"))?;
    let mut roots = rustls::RootCertStore::empty();
    for root in CertificateDer::pem_slice_iter(ca.trust_bundle_pem().as_bytes()) {
        roots.add(root.map_err(pem("the trust bundle"))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
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

/// Serves `routes` (gRPC over HTTP/2) on the connections of `incoming` until `shutdown`
/// resolves; then every connection drains (GOAWAY, streams end with UNAVAILABLE) and is given
/// [`DRAIN_GRACE`] to close.
pub async fn serve(
    incoming: impl Stream<Item = io::Result<LimitedStream>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: XdsLimits,
    routes: Routes,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Boxed so that dropping it closes the listener.
    let mut incoming = Box::pin(incoming);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            next = incoming.next() => match next {
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "accepting an xDS connection");
                    continue;
                }
                None => break,
            },
        };
        let routes = routes.clone();
        let age = limits
            .max_connection_age
            .map(|age| jittered_age(age, &mut rand::rng()));
        let shutdown_rx = shutdown_rx.clone();
        // One task per connection, sized for its own path: a plaintext connection's task
        // does not carry room for a TLS session, and the handshake's state is boxed so it is
        // freed once done (the task lives as long as the proxy stays connected).
        match acceptor.clone() {
            None => {
                tokio::spawn(serve_connection(stream, routes, age, shutdown_rx));
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let peer = stream.inner.peer_addr().ok();
                    let handshake = Box::pin(tokio::time::timeout(
                        limits.handshake_timeout,
                        acceptor.accept(stream),
                    ));
                    match handshake.await {
                        Ok(Ok(tls)) => serve_connection(tls, routes, age, shutdown_rx).await,
                        Ok(Err(e)) => {
                            tracing::debug!(?peer, error = %e, "xDS TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(?peer, "xDS TLS handshake timed out"),
                    }
                });
            }
        }
    }
    // Stop accepting (the listener closes with `incoming`), drain every connection and wait
    // until they are closed: each holds a receiver of `shutdown_tx`.
    drop(incoming);
    let _ = shutdown_tx.send(true);
    drop(shutdown_rx);
    let _ = tokio::time::timeout(DRAIN_GRACE + Duration::from_secs(1), shutdown_tx.closed()).await;
}

/// One connection: HTTP/2 with keepalive pings; at its age (or shutdown) a GOAWAY, then its
/// streams are told to end ([`ConnectionDrain`]) and it is closed once they have, or after
/// [`DRAIN_GRACE`].
async fn serve_connection<IO>(
    io: IO,
    routes: Routes,
    age: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: Connected + AsyncRead + AsyncWrite + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    // What tonic's `Request::remote_addr` and `peer_certs` read.
    let info = io.connect_info();
    let (drain_tx, drain_rx) = watch::channel(false);
    let service = hyper::service::service_fn(
        move |mut request: tonic::codegen::http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(info.clone());
            request
                .extensions_mut()
                .insert(ConnectionDrain(drain_rx.clone()));
            let mut routes = routes.clone();
            async move { routes.call(request).await }
        },
    );
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // Dead peers (no FIN, e.g. a node lost) are found within a keepalive interval + timeout.
        .keep_alive_interval(Some(Duration::from_secs(10)))
        .serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let expired = async {
        match age {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        result = &mut connection => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "xDS connection ended");
            }
            return;
        }
        () = expired => "maximum age",
        _ = shutdown.wait_for(|s| *s) => "shutdown",
    };
    tracing::debug!(
        reason,
        "closing an xDS connection: GOAWAY, then its streams end"
    );
    connection.as_mut().graceful_shutdown();
    let _ = drain_tx.send(true);
    if tokio::time::timeout(DRAIN_GRACE, connection).await.is_err() {
        tracing::debug!(
            reason,
            "xDS connection still open after the drain grace; closing it"
        );
    }
}

/// One socket per connected proxy: lift the soft file limit to the hard one.
#[allow(unsafe_code)]
pub fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_jittered_within_ten_percent() {
        let mut rng = rand::rng();
        let age = Duration::from_secs(1800);
        let ages: Vec<Duration> = (0..1000).map(|_| jittered_age(age, &mut rng)).collect();
        assert!(ages
            .iter()
            .all(|a| *a >= age.mul_f64(0.9) && *a <= age.mul_f64(1.1)));
        let distinct: std::collections::BTreeSet<_> = ages.iter().collect();
        assert!(distinct.len() > 900, "ages differ between connections");
    }
}
