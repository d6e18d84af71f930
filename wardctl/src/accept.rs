//! The accept loop's one step that every server here shares (stand-ins, the no-mesh proxy).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// The next connection. A failed accept (usually out of file descriptors) is logged, as
/// `server`'s, and retried after a pause instead of spinning.
pub async fn next_connection(listener: &TcpListener, server: &str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                warn!(error = %e, "{server}: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
