//! Loopback ports for servers that another process will bind (the bench's xds-server, the
//! test meshes' xds-server and no-mesh proxy).
//!
//! Binding port 0 and handing its number on is racy: the number comes from the kernel's
//! ephemeral range, so between the release and the new server's bind any outgoing connection
//! on the machine (an Envoy, a curl) may take it as its source port, and the bind fails with
//! "Address already in use". Ports below that range are never handed out as source ports.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out; below it are the well-known and commonly configured ports.
const FIRST: u32 = 10_000;

/// Calls so far in this process: each call starts its search one port further on.
static CALLS: AtomicU32 = AtomicU32::new(0);

/// A port on 127.0.0.1 below the ephemeral range that nothing listens on now and that no
/// earlier call in this process returned. Processes start their search at different
/// places (by pid), so two running at once rarely try the same ports.
pub fn unused_loopback_port() -> std::io::Result<u16> {
    let end = ephemeral_range_start().max(FIRST + 1_000);
    let span = end - FIRST;
    let start = std::process::id().wrapping_mul(7_919) % span;
    let candidates =
        (0..span).map(|_| FIRST + (start + CALLS.fetch_add(1, Ordering::Relaxed)) % span);
    first_unused(candidates.map(|port| port as u16)).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("no free loopback port in {FIRST}..{end}"),
        )
    })
}

/// [`unused_loopback_port`] as an address on 127.0.0.1.
pub fn unused_loopback_address() -> std::io::Result<SocketAddr> {
    Ok(SocketAddr::from((
        Ipv4Addr::LOCALHOST,
        unused_loopback_port()?,
    )))
}

fn first_unused(mut candidates: impl Iterator<Item = u16>) -> Option<u16> {
    candidates.find(|&port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok())
}

/// The first port the kernel may pick as a source port (Linux's default is 32768).
fn ephemeral_range_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
        .min(u16::MAX as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let first = unused_loopback_port().unwrap();
        let second = unused_loopback_port().unwrap();
        assert_ne!(first, second);
        for port in [first, second] {
            assert!(
                (FIRST..ephemeral_range_start()).contains(&(port as u32)),
                "{port}"
            );
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        }
    }

    #[test]
    fn a_port_in_use_is_skipped() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let held = listener.local_addr().unwrap().port();
        let free = unused_loopback_port().unwrap();
        assert_eq!(first_unused([held, free].into_iter()), Some(free));
        assert_eq!(first_unused([held].into_iter()), None);
    }
}
