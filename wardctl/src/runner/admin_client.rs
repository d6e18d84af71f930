//! A minimal HTTP/1.1 GET for the local admin endpoints of xds-server and Envoy. Loopback
//! only, small bodies: not worth a full HTTP client dependency.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Returns (status, body).
pub async fn get(address: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let fetch = async {
        let mut stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        // HTTP/1.1: Envoy's admin refuses 1.0 on some endpoints (426).
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .with_context(|| format!("malformed HTTP response from {address}{path}"))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("malformed status line from {address}{path}"))?;
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let body = if chunked {
            dechunk(body).with_context(|| format!("malformed chunked body from {address}{path}"))?
        } else {
            body.to_string()
        };
        Ok::<_, anyhow::Error>((status, body))
    };
    match tokio::time::timeout(Duration::from_secs(5), fetch).await {
        Ok(result) => result,
        Err(_) => bail!("timed out fetching http://{address}{path}"),
    }
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size_line, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// GET that must answer 200, with its body parsed as JSON.
pub async fn get_json(address: SocketAddr, path: &str) -> anyhow::Result<serde_json::Value> {
    let (status, body) = get(address, path).await?;
    if status != 200 {
        bail!("http://{address}{path} answered {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("invalid JSON from http://{address}{path}"))
}
