//! Draining a connection: the xDS port marks each request of a connection with a
//! [`ConnectionDrain`], and the ADS streams end when it turns true.

use tokio::sync::watch;

/// Request extension set on every request of a connection: turns true when the connection
/// has sent GOAWAY and is closing, so long-lived streams (ADS) end and their clients reconnect.
#[derive(Debug, Clone)]
pub struct ConnectionDrain(pub watch::Receiver<bool>);
