//! The sidecars' access log line: one type for both ends of the contract. The translation
//! configures Envoy with [`AccessLogEntry::format`]; `wardctl routes`, `tap` and `logs` read
//! the lines back with [`AccessLogEntry::parse`]. Both walk the same field list, and a round
//! trip test holds them together.

use std::fmt;
use std::time::SystemTime;

use envoy_types::pb::envoy::config::accesslog::v3::{access_log, AccessLog};
use envoy_types::pb::envoy::config::core::v3::{
    data_source, substitution_format_string, DataSource, SubstitutionFormatString,
};
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    file_access_log, FileAccessLog,
};

/// Which listener wrote a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The outbound listener: the client side, where retries happen.
    Outbound,
    /// An inbound HTTP listener (with the RBAC filter's metadata).
    Inbound,
    /// An inbound listener for probes or plain TCP (`inbound-<kind>`): no RBAC metadata.
    InboundOther(&'static str),
}

impl Direction {
    pub fn as_str(&self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
            Direction::InboundOther(name) => name,
        }
    }

    fn peer_side(&self) -> &'static str {
        // Who the peer proved to be: the client's identity inbound, the server's outbound.
        match self {
            Direction::Outbound => "UPSTREAM",
            _ => "DOWNSTREAM",
        }
    }
}

/// One line of a sidecar's access log. Values Envoy writes as `-` are `None` (or 0 for
/// numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogEntry {
    pub start_time: SystemTime,
    /// `outbound`, `inbound` or `inbound-<kind>`.
    pub direction: String,
    pub method: String,
    pub path: String,
    pub protocol: String,
    /// The final status sent downstream; 0 when there was none (a reset).
    pub status: u16,
    /// Envoy's response flags, e.g. `UH`, `UT`, or `-`.
    pub flags: String,
    /// Envoy's response code details, e.g. `via_upstream`, `no_healthy_upstream`.
    pub details: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: u64,
    pub authority: String,
    /// The downstream peer address.
    pub src: String,
    /// The upstream host of the last attempt; `None` for local replies.
    pub upstream: Option<String>,
    pub cluster: Option<String>,
    pub route: Option<String>,
    /// Upstream attempts (first try plus retries); 0 when Envoy made none.
    pub attempts: u32,
    /// The peer's URI SAN (the server's outbound, the client's inbound).
    pub peer: Option<String>,
    /// The TLS version of the upstream (outbound) or downstream (inbound) connection.
    pub tls: Option<String>,
    /// The RBAC filter's dynamic metadata (inbound HTTP only): shadow results of AUDIT
    /// policies.
    pub rbac: Option<String>,
}

/// The `key=value` fields after the fixed part, in order: the key, Envoy's command, and
/// whether the value is quoted. `rbac` is last and takes the rest of the line.
fn key_fields(direction: Direction) -> Vec<(&'static str, String, bool)> {
    let side = direction.peer_side();
    let mut fields = vec![
        ("src", "%DOWNSTREAM_REMOTE_ADDRESS%".to_string(), false),
        ("upstream", "%UPSTREAM_HOST%".to_string(), false),
        ("cluster", "%UPSTREAM_CLUSTER%".to_string(), false),
        ("route", "%ROUTE_NAME%".to_string(), true),
        (
            "attempts",
            "%UPSTREAM_REQUEST_ATTEMPT_COUNT%".to_string(),
            false,
        ),
        ("peer", format!("%{side}_PEER_URI_SAN%"), false),
        ("tls", format!("%{side}_TLS_VERSION%"), false),
    ];
    if direction == Direction::Inbound {
        fields.push((
            "rbac",
            "%DYNAMIC_METADATA(envoy.filters.http.rbac)%".to_string(),
            false,
        ));
    }
    fields
}

impl AccessLogEntry {
    /// Envoy's text format for the listener `direction`.
    pub fn format(direction: Direction) -> String {
        let mut line = format!(
            "[%START_TIME%] {} \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" \
             %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_RECEIVED% \
             %BYTES_SENT% %DURATION%ms \"%REQ(:AUTHORITY)%\"",
            direction.as_str()
        );
        for (key, command, quoted) in key_fields(direction) {
            let q = if quoted { "\"" } else { "" };
            line.push_str(&format!(" {key}={q}{command}{q}"));
        }
        line.push('\n');
        line
    }

    /// Envoy's file access logger to stdout in [`AccessLogEntry::format`].
    pub fn envoy_access_log(direction: Direction) -> AccessLog {
        let file = FileAccessLog {
            path: "/dev/stdout".to_string(),
            access_log_format: Some(file_access_log::AccessLogFormat::LogFormat(
                SubstitutionFormatString {
                    format: Some(substitution_format_string::Format::TextFormatSource(
                        DataSource {
                            specifier: Some(data_source::Specifier::InlineString(Self::format(
                                direction,
                            ))),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                },
            )),
        };
        AccessLog {
            name: "envoy.access_loggers.file".to_string(),
            config_type: Some(access_log::ConfigType::TypedConfig(crate::any(&file))),
            ..Default::default()
        }
    }

    /// Parses one access-log line; `None` for anything else the file holds (Envoy's own log
    /// lines go to the same file) and for lines cut short.
    pub fn parse(line: &str) -> Option<AccessLogEntry> {
        let line = line.trim_end_matches(['\r', '\n']);
        let (time, rest) = line.strip_prefix('[')?.split_once("] ")?;
        let start_time = humantime::parse_rfc3339(time).ok()?;
        let (direction, rest) = rest.split_once(' ')?;
        // The request line ends at the first `" `: paths are percent-encoded, so hold neither.
        let (request, rest) = rest.strip_prefix('"')?.split_once("\" ")?;
        let (method, request) = request.split_once(' ')?;
        let (path, protocol) = request.rsplit_once(' ')?;
        let mut fields = rest.splitn(7, ' ');
        let status = number(fields.next()?)?;
        let flags = fields.next()?.to_string();
        let details = fields.next()?.to_string();
        let bytes_received = number(fields.next()?)?;
        let bytes_sent = number(fields.next()?)?;
        let duration_ms = number(fields.next()?.strip_suffix("ms")?)?;
        let (authority, rest) = fields.next()?.strip_prefix('"')?.split_once('"')?;
        let mut entry = AccessLogEntry {
            start_time,
            direction: direction.to_string(),
            method: method.to_string(),
            path: path.to_string(),
            protocol: protocol.to_string(),
            status,
            flags,
            details,
            bytes_received,
            bytes_sent,
            duration_ms,
            authority: authority.to_string(),
            src: "-".to_string(),
            upstream: None,
            cluster: None,
            route: None,
            attempts: 0,
            peer: None,
            tls: None,
            rbac: None,
        };
        // Every format has `src` first and `tls` (nearly) last: both seen, the line is whole.
        let (mut saw_src, mut saw_tls) = (false, false);
        for (key, value) in key_values(rest) {
            match key {
                "src" => {
                    saw_src = true;
                    entry.src = value.to_string();
                }
                "upstream" => entry.upstream = present(value),
                "cluster" => entry.cluster = present(value),
                "route" => entry.route = present(value),
                "attempts" => entry.attempts = number(value).unwrap_or(0),
                "peer" => entry.peer = present(value),
                "tls" => {
                    saw_tls = true;
                    entry.tls = present(value);
                }
                "rbac" => entry.rbac = present(value),
                _ => {}
            }
        }
        (saw_src && saw_tls).then_some(entry)
    }
}

/// The line Envoy writes for this entry with [`AccessLogEntry::format`] (absent values as
/// `-`, as Envoy writes them).
impl fmt::Display for AccessLogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
        let or_dash = |n: u64| {
            if n == 0 {
                "-".to_string()
            } else {
                n.to_string()
            }
        };
        write!(
            f,
            "[{}] {} \"{} {} {}\" {} {} {} {} {} {}ms \"{}\"",
            humantime::format_rfc3339_millis(self.start_time),
            self.direction,
            self.method,
            self.path,
            self.protocol,
            or_dash(u64::from(self.status)),
            self.flags,
            self.details,
            self.bytes_received,
            self.bytes_sent,
            self.duration_ms,
            self.authority,
        )?;
        let direction = match self.direction.as_str() {
            "outbound" => Direction::Outbound,
            "inbound" => Direction::Inbound,
            _ => Direction::InboundOther("inbound-other"),
        };
        for (key, _, quoted) in key_fields(direction) {
            let value = match key {
                "src" => self.src.clone(),
                "upstream" => dash(&self.upstream),
                "cluster" => dash(&self.cluster),
                "route" => dash(&self.route),
                "attempts" => or_dash(u64::from(self.attempts)),
                "peer" => dash(&self.peer),
                "tls" => dash(&self.tls),
                "rbac" => dash(&self.rbac),
                _ => unreachable!("key_fields lists only these keys"),
            };
            let q = if quoted { "\"" } else { "" };
            write!(f, " {key}={q}{value}{q}")?;
        }
        Ok(())
    }
}

/// `None` for Envoy's "no value" (`-`) and for empty values.
fn present(value: &str) -> Option<String> {
    (!value.is_empty() && value != "-").then(|| value.to_string())
}

/// A number, or 0 when Envoy wrote `-`.
fn number<T: std::str::FromStr + Default>(value: &str) -> Option<T> {
    if value == "-" {
        Some(T::default())
    } else {
        value.parse().ok()
    }
}

/// The `key=value` fields at the end of a line; `"quoted"` values may hold spaces, and `rbac`
/// (always last, inbound only) takes the rest of the line whatever it holds.
fn key_values(mut text: &str) -> Vec<(&str, &str)> {
    let mut fields = Vec::new();
    loop {
        text = text.trim_start();
        let Some((key, rest)) = text.split_once('=') else {
            return fields;
        };
        if key == "rbac" {
            fields.push((key, rest.trim_end()));
            return fields;
        }
        let (value, rest) = match rest.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
            None => rest.split_once(' ').unwrap_or((rest, "")),
        };
        fields.push((key, value));
        text = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(direction: &str) -> AccessLogEntry {
        AccessLogEntry {
            start_time: humantime::parse_rfc3339("2026-11-25T13:28:24.123Z").unwrap(),
            direction: direction.to_string(),
            method: "GET".into(),
            path: "/aura?x=1".into(),
            protocol: "HTTP/1.1".into(),
            status: 200,
            flags: "-".into(),
            details: "via_upstream".into(),
            bytes_received: 3,
            bytes_sent: 31,
            duration_ms: 1234,
            authority: "aura-api".into(),
            src: "127.77.2.1:40112".into(),
            upstream: Some("127.77.1.2:8080".into()),
            cluster: Some("outbound|80||aura-api.default.svc.cluster.local".into()),
            route: Some("GET /aura".into()),
            attempts: 2,
            peer: Some("spiffe://cluster.local/ns/default/sa/default".into()),
            tls: Some("TLSv1.3".into()),
            rbac: None,
        }
    }

    #[test]
    fn the_outbound_format_is_the_one_envoy_has_always_been_given() {
        assert_eq!(
            AccessLogEntry::format(Direction::Outbound),
            "[%START_TIME%] outbound \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" \
             %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_RECEIVED% %BYTES_SENT% \
             %DURATION%ms \"%REQ(:AUTHORITY)%\" src=%DOWNSTREAM_REMOTE_ADDRESS% \
             upstream=%UPSTREAM_HOST% cluster=%UPSTREAM_CLUSTER% route=\"%ROUTE_NAME%\" \
             attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT% peer=%UPSTREAM_PEER_URI_SAN% tls=%UPSTREAM_TLS_VERSION%\n"
        );
        let inbound = AccessLogEntry::format(Direction::Inbound);
        assert!(inbound.ends_with(
            " peer=%DOWNSTREAM_PEER_URI_SAN% tls=%DOWNSTREAM_TLS_VERSION% rbac=%DYNAMIC_METADATA(envoy.filters.http.rbac)%\n"
        ));
        assert!(
            AccessLogEntry::format(Direction::InboundOther("inbound-tcp"))
                .ends_with(" peer=%DOWNSTREAM_PEER_URI_SAN% tls=%DOWNSTREAM_TLS_VERSION%\n")
        );
    }

    #[test]
    fn lines_round_trip_through_format_and_parse() {
        let outbound = entry("outbound");
        assert_eq!(AccessLogEntry::parse(&outbound.to_string()), Some(outbound));

        let mut inbound = entry("inbound");
        inbound.route = None;
        inbound.upstream = None;
        inbound.status = 403;
        inbound.rbac = Some(r#"{"shadow_engine_result":"denied", "x": 1}"#.into());
        assert_eq!(AccessLogEntry::parse(&inbound.to_string()), Some(inbound));

        let mut reset = entry("inbound-tcp");
        reset.status = 0;
        reset.attempts = 0;
        reset.peer = None;
        reset.tls = None;
        assert_eq!(AccessLogEntry::parse(&reset.to_string()), Some(reset));
    }

    #[test]
    fn every_command_of_the_format_has_a_field_in_the_line() {
        // Same number of space-separated parts: a command added to one side only fails here.
        for direction in [
            Direction::Outbound,
            Direction::Inbound,
            Direction::InboundOther("inbound-tcp"),
        ] {
            let format = AccessLogEntry::format(direction);
            let mut e = entry(direction.as_str());
            e.path = "/aura".into();
            e.rbac = (direction == Direction::Inbound).then(|| "-".into());
            let keys = |s: &str| {
                s.split(' ')
                    .filter_map(|p| p.split_once('=').map(|(k, _)| k.to_string()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(keys(format.trim_end()), keys(&e.to_string()), "{format}");
        }
    }
}
