//! The traffic capture a pod's init container installs: iptables `nat` rules that send the
//! pod's inbound TCP to the sidecar's inbound port and its outbound TCP to the outbound port,
//! with the exclusions Istio's `istio-iptables` has (the proxy's own user, its admin port,
//! loopback, and ports and CIDRs the pod's annotations exclude).
//!
//! The rules are written out in full in the injected manifest (an `iptables-restore` input),
//! so what a pod runs is what its YAML says.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use thiserror::Error;

/// The uid and gid the sidecar runs as; its own traffic is never captured (Istio's 1337).
pub const PROXY_UID: u32 = 1337;
/// Where redirected inbound connections arrive (Envoy's inbound capture listener).
pub const INBOUND_CAPTURE_PORT: u16 = ward_config::wellknown::INBOUND_CAPTURE_PORT;
/// Where redirected outbound connections arrive.
pub const OUTBOUND_CAPTURE_PORT: u16 = ward_config::wellknown::OUTBOUND_PORT;
/// The sidecar's admin port: probes and scrapes reach it directly.
pub const ADMIN_PORT: u16 = ward_config::wellknown::ADMIN_PORT;

/// What to capture, from the pod's annotations.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CaptureOptions {
    /// Inbound ports left alone (the proxy's admin port is always among them).
    pub exclude_inbound_ports: Vec<u16>,
    /// `Some(ports)`: capture only these inbound ports (`includeInboundPorts`); None: all.
    pub include_inbound_ports: Option<Vec<u16>>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<(Ipv4Addr, u8)>,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("annotation {annotation}: {message}")]
pub struct AnnotationError {
    pub annotation: String,
    pub message: String,
}

/// Annotations read, with the names Istio and Linkerd users already write.
pub const EXCLUDE_INBOUND_PORTS: [&str; 2] = [
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "config.linkerd.io/skip-inbound-ports",
];
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
pub const EXCLUDE_OUTBOUND_PORTS: [&str; 2] = [
    "traffic.sidecar.istio.io/excludeOutboundPorts",
    "config.linkerd.io/skip-outbound-ports",
];
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";

impl CaptureOptions {
    /// Reads the capture annotations of a pod template.
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
    ) -> Result<Self, AnnotationError> {
        let mut options = CaptureOptions::default();
        for name in EXCLUDE_INBOUND_PORTS {
            if let Some(value) = annotations.get(name) {
                options.exclude_inbound_ports.extend(ports(name, value)?);
            }
        }
        if let Some(value) = annotations.get(INCLUDE_INBOUND_PORTS) {
            if value.trim() != "*" {
                options.include_inbound_ports = Some(ports(INCLUDE_INBOUND_PORTS, value)?);
            }
        }
        for name in EXCLUDE_OUTBOUND_PORTS {
            if let Some(value) = annotations.get(name) {
                options.exclude_outbound_ports.extend(ports(name, value)?);
            }
        }
        if let Some(value) = annotations.get(EXCLUDE_OUTBOUND_CIDRS) {
            for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                options
                    .exclude_outbound_cidrs
                    .push(cidr(item).ok_or_else(|| AnnotationError {
                        annotation: EXCLUDE_OUTBOUND_CIDRS.to_string(),
                        message: format!("`{item}` is not an IPv4 CIDR (like 10.0.0.0/8)"),
                    })?);
            }
        }
        Ok(options)
    }

    /// The `iptables-restore --noflush` input that installs the capture.
    pub fn iptables_restore(&self) -> String {
        let mut exclude_inbound = self.exclude_inbound_ports.clone();
        exclude_inbound.push(ADMIN_PORT);
        exclude_inbound.sort_unstable();
        exclude_inbound.dedup();
        let mut rules = String::from(
            "*nat\n:WARD_INBOUND - [0:0]\n:WARD_IN_REDIRECT - [0:0]\n:WARD_OUTPUT - [0:0]\n:WARD_REDIRECT - [0:0]\n",
        );
        let mut rule = |line: String| {
            rules.push_str(&line);
            rules.push('\n');
        };
        rule(format!(
            "-A WARD_IN_REDIRECT -p tcp -j REDIRECT --to-ports {INBOUND_CAPTURE_PORT}"
        ));
        rule(format!(
            "-A WARD_REDIRECT -p tcp -j REDIRECT --to-ports {OUTBOUND_CAPTURE_PORT}"
        ));
        // Inbound: every TCP connection to the pod, except the excluded ports.
        rule("-A PREROUTING -p tcp -j WARD_INBOUND".to_string());
        match &self.include_inbound_ports {
            Some(ports) => {
                for port in ports.iter().filter(|p| !exclude_inbound.contains(p)) {
                    rule(format!(
                        "-A WARD_INBOUND -p tcp --dport {port} -j WARD_IN_REDIRECT"
                    ));
                }
            }
            None => {
                for port in &exclude_inbound {
                    rule(format!("-A WARD_INBOUND -p tcp --dport {port} -j RETURN"));
                }
                rule("-A WARD_INBOUND -p tcp -j WARD_IN_REDIRECT".to_string());
            }
        }
        // Outbound: everything the app sends, except the proxy's own traffic (by uid and
        // gid), loopback, and the excluded ports and ranges.
        rule("-A OUTPUT -p tcp -j WARD_OUTPUT".to_string());
        rule(format!(
            "-A WARD_OUTPUT -m owner --uid-owner {PROXY_UID} -j RETURN"
        ));
        rule(format!(
            "-A WARD_OUTPUT -m owner --gid-owner {PROXY_UID} -j RETURN"
        ));
        rule("-A WARD_OUTPUT -d 127.0.0.1/32 -j RETURN".to_string());
        rule("-A WARD_OUTPUT -o lo -j RETURN".to_string());
        let mut exclude_outbound = self.exclude_outbound_ports.clone();
        exclude_outbound.sort_unstable();
        exclude_outbound.dedup();
        for port in exclude_outbound {
            rule(format!("-A WARD_OUTPUT -p tcp --dport {port} -j RETURN"));
        }
        for (address, prefix) in &self.exclude_outbound_cidrs {
            rule(format!("-A WARD_OUTPUT -d {address}/{prefix} -j RETURN"));
        }
        rule("-A WARD_OUTPUT -j WARD_REDIRECT".to_string());
        let _ = writeln!(rules, "COMMIT");
        rules
    }
}

fn ports(annotation: &str, value: &str) -> Result<Vec<u16>, AnnotationError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            item.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| AnnotationError {
                    annotation: annotation.to_string(),
                    message: format!("`{item}` is not a port (1-65535)"),
                })
        })
        .collect()
}

fn cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (address, prefix) = text.split_once('/').unwrap_or((text, "32"));
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((address.parse().ok()?, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn rules_capture_everything_but_the_proxy_and_the_exclusions() {
        let options = CaptureOptions::from_annotations(&annotations(&[
            ("traffic.sidecar.istio.io/excludeInboundPorts", "9090, 9091"),
            ("config.linkerd.io/skip-outbound-ports", "5432"),
            (
                "traffic.sidecar.istio.io/excludeOutboundIPRanges",
                "169.254.169.254/32,10.96.0.0/12",
            ),
        ]))
        .unwrap();
        let rules = options.iptables_restore();
        for expected in [
            "-A WARD_INBOUND -p tcp --dport 9090 -j RETURN",
            "-A WARD_INBOUND -p tcp --dport 15000 -j RETURN",
            "-A WARD_INBOUND -p tcp -j WARD_IN_REDIRECT",
            "-A WARD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-A WARD_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A WARD_OUTPUT -p tcp --dport 5432 -j RETURN",
            "-A WARD_OUTPUT -d 10.96.0.0/12 -j RETURN",
            "-A WARD_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        ] {
            assert!(rules.lines().any(|l| l == expected), "{expected}\n{rules}");
        }
        assert!(rules.starts_with("*nat\n") && rules.ends_with("COMMIT\n"));
    }

    #[test]
    fn include_inbound_ports_captures_only_those() {
        let options = CaptureOptions::from_annotations(&annotations(&[(
            "traffic.sidecar.istio.io/includeInboundPorts",
            "8080",
        )]))
        .unwrap();
        let rules = options.iptables_restore();
        assert!(rules.contains("-A WARD_INBOUND -p tcp --dport 8080 -j WARD_IN_REDIRECT\n"));
        assert!(!rules.contains("-A WARD_INBOUND -p tcp -j WARD_IN_REDIRECT"));
    }

    #[test]
    fn bad_annotations_are_named() {
        let err = CaptureOptions::from_annotations(&annotations(&[(
            "traffic.sidecar.istio.io/excludeOutboundPorts",
            "5432,http",
        )]))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "annotation traffic.sidecar.istio.io/excludeOutboundPorts: `http` is not a port (1-65535)"
        );
    }
}
