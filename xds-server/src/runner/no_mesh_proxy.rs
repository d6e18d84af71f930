//! What a pod without a sidecar has in Kubernetes: names resolve (kube-dns) and a connection to
//! a Service goes straight to one of its pods on the targetPort (kube-proxy), where that pod's
//! sidecar listens; no identity, plaintext. `wardctl exec --no-mesh` points `http_proxy` here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::model::Mesh;
use crate::translate::CLUSTER_DOMAIN;

/// Service host names and ports → the instance addresses behind them.
#[derive(Debug, Default)]
pub struct ServiceDirectory {
    endpoints: HashMap<(String, u16), Vec<SocketAddr>>,
    next: AtomicUsize,
}

impl ServiceDirectory {
    /// Names as a pod in `default` resolves them: `name` (default namespace only), `name.ns`,
    /// `name.ns.svc`, `name.ns.svc.cluster.local`.
    pub fn from_mesh(mesh: &Mesh) -> Self {
        let mut endpoints: HashMap<(String, u16), Vec<SocketAddr>> = HashMap::new();
        for service in &mesh.services {
            let mut hosts = vec![
                format!("{}.{}", service.name, service.namespace),
                format!("{}.{}.svc", service.name, service.namespace),
                format!("{}.{}.svc.{CLUSTER_DOMAIN}", service.name, service.namespace),
            ];
            if service.namespace == "default" {
                hosts.push(service.name.clone());
            }
            for port in &service.ports {
                let addresses: Vec<SocketAddr> = service
                    .backends
                    .iter()
                    .filter_map(|(ns, name)| mesh.workload(ns, name))
                    .flat_map(|w| w.instances.iter())
                    .map(|i| SocketAddr::new(i.address.into(), port.target_port))
                    .collect();
                for host in &hosts {
                    endpoints.insert((host.clone(), port.port), addresses.clone());
                }
            }
        }
        ServiceDirectory { endpoints, next: AtomicUsize::new(0) }
    }

    /// One endpoint for host:port, round robin.
    pub fn pick(&self, host: &str, port: u16) -> Option<SocketAddr> {
        let addresses = self.endpoints.get(&(host.to_ascii_lowercase(), port))?;
        if addresses.is_empty() {
            return None;
        }
        Some(addresses[self.next.fetch_add(1, Ordering::Relaxed) % addresses.len()])
    }
}

pub async fn serve_no_mesh_proxy(
    listener: TcpListener,
    directory: Arc<RwLock<ServiceDirectory>>,
) -> anyhow::Result<()> {
    loop {
        let (client, _) = listener.accept().await?;
        let directory = directory.clone();
        tokio::spawn(async move {
            if let Err(e) = forward(client, &directory).await {
                debug!(error = %e, "no-mesh connection ended");
            }
        });
    }
}

/// Reads the request head (at most 64 KiB).
async fn read_head(client: &mut TcpStream) -> anyhow::Result<(Vec<u8>, usize)> {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            anyhow::bail!("client closed before sending a request");
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok((buffer, end + 4));
        }
        if buffer.len() > 64 * 1024 {
            anyhow::bail!("request head too large");
        }
    }
}

fn split_host_port(authority: &str, default_port: u16) -> (String, u16) {
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) && !port.is_empty() => {
            (host.to_string(), port.parse().unwrap_or(default_port))
        }
        _ => (authority.to_string(), default_port),
    }
}

async fn refuse(client: &mut TcpStream, message: &str) -> anyhow::Result<()> {
    let response = format!(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{message}",
        message.len()
    );
    client.write_all(response.as_bytes()).await?;
    Ok(())
}

async fn forward(mut client: TcpStream, directory: &RwLock<ServiceDirectory>) -> anyhow::Result<()> {
    let (buffer, head_end) = read_head(&mut client).await?;
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.splitn(3, ' ');
    let (method, target, version) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or("HTTP/1.1"),
    );
    let connect = method.eq_ignore_ascii_case("CONNECT");
    let (authority, path) = if connect {
        (target.to_string(), String::new())
    } else if let Some(rest) = target.strip_prefix("http://") {
        match rest.find('/') {
            Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
            None => (rest.to_string(), "/".to_string()),
        }
    } else {
        refuse(&mut client, "ward: only http:// URLs and CONNECT are proxied\n").await?;
        return Ok(());
    };
    let (host, port) = split_host_port(&authority, if connect { 443 } else { 80 });
    let picked = directory.read().expect("directory lock").pick(&host, port);
    let Some(endpoint) = picked else {
        refuse(&mut client, &format!("ward: no service named {host} (port {port}) in the mesh\n")).await?;
        return Ok(());
    };
    let mut upstream = match TcpStream::connect(endpoint).await {
        Ok(stream) => stream,
        Err(e) => {
            refuse(&mut client, &format!("ward: connecting to {endpoint}: {e}\n")).await?;
            return Ok(());
        }
    };
    if connect {
        client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await?;
    } else {
        let mut rewritten = format!("{method} {path} {version}\r\n");
        for line in lines.filter(|l| !l.is_empty()) {
            if !line.to_ascii_lowercase().starts_with("proxy-connection:") {
                rewritten.push_str(line);
                rewritten.push_str("\r\n");
            }
        }
        rewritten.push_str("\r\n");
        upstream.write_all(rewritten.as_bytes()).await?;
    }
    upstream.write_all(&buffer[head_end..]).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forwards_to_an_endpoint_in_origin_form() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_address = upstream.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = upstream.accept().await.unwrap();
            let mut received = vec![0u8; 1024];
            let n = socket.read(&mut received).await.unwrap();
            socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
            String::from_utf8_lossy(&received[..n]).into_owned()
        });
        let mut directory = ServiceDirectory::default();
        directory.endpoints.insert(("exam-scheduler".into(), 80), vec![upstream_address]);
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_address = proxy.local_addr().unwrap();
        tokio::spawn(serve_no_mesh_proxy(proxy, Arc::new(RwLock::new(directory))));

        let mut client = TcpStream::connect(proxy_address).await.unwrap();
        client
            .write_all(b"GET http://exam-scheduler/exams?x=1 HTTP/1.1\r\nHost: exam-scheduler\r\nProxy-Connection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let mut response = Vec::new();
        client.read_to_end(&mut response).await.unwrap();
        assert!(String::from_utf8_lossy(&response).ends_with("ok"));
        let received = server.await.unwrap();
        assert!(received.starts_with("GET /exams?x=1 HTTP/1.1\r\nHost: exam-scheduler\r\n"), "{received}");
        assert!(!received.contains("Proxy-Connection"));

        let mut client = TcpStream::connect(proxy_address).await.unwrap();
        client.write_all(b"GET http://payroll/ HTTP/1.1\r\nHost: payroll\r\n\r\n").await.unwrap();
        let mut response = Vec::new();
        client.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 502"), "{response}");
        assert!(response.contains("no service named payroll"));
    }
}
