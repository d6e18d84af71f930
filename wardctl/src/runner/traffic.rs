//! `wardctl routes` and `wardctl tap`: per-route success rates, request rates and latencies
//! of one client workload's calls to one Service, and a live feed of those calls, like
//! `linkerd viz routes -o wide` and `linkerd viz tap`.
//!
//! Linkerd reads these from its own proxies. Stock Envoy keeps no per-route retry counts in
//! its stats, but every sidecar already writes one access-log line per HTTP request (see
//! `ward_xds::access_log`) with the route, the final status, the upstream attempt count and
//! the latency, and the local runner keeps each sidecar's log in the state directory. So both
//! commands read the client sidecars' outbound lines: the client side is where retries
//! happen and where requests that never reached the server (no healthy upstream, timeouts)
//! are seen.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::Serialize;

use ward_xds::access_log::AccessLogEntry;

use super::state::{self, InstanceState};

/// How Linkerd shows requests that matched no named route; Ward's catch-all route is named
/// `default`.
pub const DEFAULT_ROUTE: &str = "[DEFAULT]";

/// The Service an outbound cluster sends to, `(name, namespace)`:
/// `outbound|80||aura-api.default.svc.cluster.local` is `("aura-api", "default")`.
pub fn cluster_service(cluster: &str) -> Option<(&str, &str)> {
    let mut parts = cluster.split('|');
    if parts.next()? != "outbound" {
        return None;
    }
    let host = parts.nth(2)?;
    let mut labels = host.splitn(4, '.');
    let name = labels.next()?;
    let namespace = labels.next()?;
    (labels.next()? == "svc").then_some((name, namespace))
}

/// The Service `--to` names: `name` (in the client's namespace) or `name.namespace`
/// (`svc/name` and a full `name.namespace.svc.cluster.local` are taken too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTarget {
    pub name: String,
    pub namespace: String,
}

impl ServiceTarget {
    pub fn parse(to: &str, client_namespace: &str) -> anyhow::Result<ServiceTarget> {
        let host = to
            .strip_prefix("svc/")
            .or_else(|| to.strip_prefix("service/"))
            .unwrap_or(to);
        let mut labels = host.split('.');
        let name = labels.next().unwrap_or_default();
        let namespace = labels.next().unwrap_or(client_namespace);
        if name.is_empty() || namespace.is_empty() || name.contains(['/', ':', ' ']) {
            bail!("`{to}` is not a Service: give `name` or `name.namespace`");
        }
        Ok(ServiceTarget {
            name: name.to_string(),
            namespace: namespace.to_string(),
        })
    }

    /// True for a client sidecar's line about a request routed to this Service.
    pub fn matches(&self, entry: &AccessLogEntry) -> bool {
        entry.direction == "outbound"
            && entry
                .cluster
                .as_deref()
                .and_then(cluster_service)
                .is_some_and(|(name, namespace)| name == self.name && namespace == self.namespace)
    }
}

impl std::fmt::Display for ServiceTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

/// Numbers for one route of one Service, over one window, as `linkerd viz routes -o wide`
/// shows them. Effective numbers count what the client saw (one per request, its final
/// status); actual numbers count what reached the server (every attempt, retries included).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteStats {
    /// The route name; `[DEFAULT]` for Ward's catch-all route and requests matching none.
    pub route: String,
    /// The Service's short name.
    pub service: String,
    pub requests: u64,
    /// Requests whose final status was 1xx-4xx (Linkerd: not 5xx, not a reset).
    pub successes: u64,
    /// Upstream attempts; local replies (no healthy upstream...) made none.
    pub attempts: u64,
    /// Attempts that succeeded: at most one per request, the last (retries follow failures).
    pub actual_successes: u64,
    pub effective_success: Option<f64>,
    pub effective_rps: f64,
    pub actual_success: Option<f64>,
    pub actual_rps: f64,
    pub latency_p50_ms: Option<u64>,
    pub latency_p95_ms: Option<u64>,
    pub latency_p99_ms: Option<u64>,
    /// The seconds the rates are over (see [`route_stats`]).
    pub rate_seconds: f64,
}

impl RouteStats {
    /// A row with no traffic, shown as `-` everywhere.
    pub fn empty(route: &str, service: &str) -> RouteStats {
        RouteStats {
            route: route.to_string(),
            service: service.to_string(),
            requests: 0,
            successes: 0,
            attempts: 0,
            actual_successes: 0,
            effective_success: None,
            effective_rps: 0.0,
            actual_success: None,
            actual_rps: 0.0,
            latency_p50_ms: None,
            latency_p95_ms: None,
            latency_p99_ms: None,
            rate_seconds: 0.0,
        }
    }
}

/// Linkerd's success: a response that is neither a 5xx nor missing (a reset is status 0).
pub fn is_success(status: u16) -> bool {
    (1..=499).contains(&status)
}

/// How many upstream attempts a request made: Envoy's count, or 1 if it wrote `-` although
/// an upstream host answered. Local replies (no upstream) made none.
fn actual_attempts(entry: &AccessLogEntry) -> u32 {
    if entry.attempts == 0 && entry.upstream.is_some() {
        1
    } else {
        entry.attempts
    }
}

fn display_route(route: Option<&str>) -> String {
    match route {
        None | Some("default") => DEFAULT_ROUTE.to_string(),
        Some(name) => name.to_string(),
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], percent: usize) -> Option<u64> {
    let rank = (percent * sorted.len())
        .div_ceil(100)
        .clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

#[derive(Default)]
struct RouteCounts {
    requests: u64,
    successes: u64,
    attempts: u64,
    actual_successes: u64,
    durations_ms: Vec<u64>,
}

/// Per-route numbers for the entries (one client's requests to one Service) that started
/// within `[window_end - window, window_end]`. Rows are sorted by route name, `[DEFAULT]`
/// last.
///
/// Rates are per second of the window, like Linkerd's fixed window, except while the log
/// does not reach back that far: if the earliest entry given started after the window
/// began (a mesh up for less than the window), they are over the time from that entry to
/// `window_end` instead (at least one second), so a fresh mesh's rate is not understated.
pub fn route_stats(
    entries: &[AccessLogEntry],
    window_end: SystemTime,
    window: Duration,
) -> Vec<RouteStats> {
    let window_start = window_end.checked_sub(window).unwrap_or(UNIX_EPOCH);
    let rate_span = match entries.iter().map(|e| e.start_time).min() {
        Some(earliest) if earliest > window_start => window_end
            .duration_since(earliest)
            .unwrap_or_default()
            .max(Duration::from_secs(1))
            .min(window),
        _ => window,
    };
    let rate_seconds = rate_span.as_secs_f64();
    let per_second = |count: u64| {
        if rate_seconds > 0.0 {
            count as f64 / rate_seconds
        } else {
            0.0
        }
    };
    // Keyed so that `[DEFAULT]` sorts last.
    let mut routes: BTreeMap<(bool, String, String), RouteCounts> = BTreeMap::new();
    let in_window = entries
        .iter()
        .filter(|e| e.start_time >= window_start && e.start_time <= window_end);
    for entry in in_window {
        let route = display_route(entry.route.as_deref());
        let service = entry
            .cluster
            .as_deref()
            .and_then(cluster_service)
            .map_or("-", |(name, _)| name)
            .to_string();
        let counts = routes
            .entry((route == DEFAULT_ROUTE, route, service))
            .or_default();
        let attempts = actual_attempts(entry);
        let success = is_success(entry.status);
        counts.requests += 1;
        counts.successes += u64::from(success);
        counts.attempts += u64::from(attempts);
        counts.actual_successes += u64::from(success && attempts >= 1);
        counts.durations_ms.push(entry.duration_ms);
    }
    let ratio = |part: u64, whole: u64| (whole > 0).then(|| part as f64 / whole as f64);
    routes
        .into_iter()
        .map(|((_, route, service), mut counts)| {
            counts.durations_ms.sort_unstable();
            RouteStats {
                route,
                service,
                requests: counts.requests,
                successes: counts.successes,
                attempts: counts.attempts,
                actual_successes: counts.actual_successes,
                effective_success: ratio(counts.successes, counts.requests),
                effective_rps: per_second(counts.requests),
                actual_success: ratio(counts.actual_successes, counts.attempts),
                actual_rps: per_second(counts.attempts),
                latency_p50_ms: percentile(&counts.durations_ms, 50),
                latency_p95_ms: percentile(&counts.durations_ms, 95),
                latency_p99_ms: percentile(&counts.durations_ms, 99),
                rate_seconds,
            }
        })
        .collect()
}

/// The instances of WORKLOAD in NAMESPACE, or an error listing what is running.
fn client_instances(
    state_dir: &Path,
    workload: &str,
    namespace: &str,
) -> anyhow::Result<Vec<InstanceState>> {
    let state = state::read_state(state_dir)?;
    let instances: Vec<InstanceState> = state
        .instances
        .iter()
        .filter(|i| i.workload == workload && i.namespace == namespace)
        .cloned()
        .collect();
    if instances.is_empty() {
        let mut running: Vec<String> = state
            .instances
            .iter()
            .map(|i| format!("{}/{}", i.namespace, i.workload))
            .collect();
        running.sort();
        running.dedup();
        bail!(
            "no workload {namespace}/{workload} is running (running: {})",
            if running.is_empty() {
                "none".to_string()
            } else {
                running.join(", ")
            }
        );
    }
    Ok(instances)
}

/// Every outbound request to TO (`name` in NAMESPACE, or `name.namespace`) in the access logs
/// of every sidecar of WORKLOAD, oldest first.
pub fn read_outbound_entries(
    state_dir: &Path,
    workload: &str,
    namespace: &str,
    to_service: &str,
) -> anyhow::Result<Vec<AccessLogEntry>> {
    let target = ServiceTarget::parse(to_service, namespace)?;
    let instances = client_instances(state_dir, workload, namespace)?;
    let mut entries = Vec::new();
    let mut missing = Vec::new();
    for instance in &instances {
        let path = state::envoy_log(state_dir, &instance.node_id);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing.push(path.display().to_string());
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // Only whole lines: Envoy may be writing the last one.
        let whole = match bytes.iter().rposition(|b| *b == b'\n') {
            Some(end) => &bytes[..=end],
            None => &[][..],
        };
        entries.extend(
            String::from_utf8_lossy(whole)
                .lines()
                .filter_map(AccessLogEntry::parse)
                .filter(|e| target.matches(e)),
        );
    }
    if missing.len() == instances.len() {
        bail!(
            "no access log yet for {namespace}/{workload}: {} not found (has its sidecar started?)",
            missing.join(", ")
        );
    }
    entries.sort_by_key(|e| e.start_time);
    Ok(entries)
}

/// `wardctl routes`: the per-route numbers of WORKLOAD's calls to TO over the window ending
/// at `window_end`. With no traffic at all, one `[DEFAULT]` row of `-`, as Linkerd shows.
pub fn routes(
    state_dir: &Path,
    workload: &str,
    namespace: &str,
    to: &str,
    window_end: SystemTime,
    window: Duration,
) -> anyhow::Result<Vec<RouteStats>> {
    if window.is_zero() {
        bail!("the window must be longer than 0 s");
    }
    let target = ServiceTarget::parse(to, namespace)?;
    let entries = read_outbound_entries(state_dir, workload, namespace, to)?;
    let mut rows = route_stats(&entries, window_end, window);
    if rows.is_empty() {
        rows.push(RouteStats::empty(DEFAULT_ROUTE, &target.name));
    }
    Ok(rows)
}

fn format_success(ratio: Option<f64>) -> String {
    ratio.map_or("-".to_string(), |r| format!("{:.2}%", r * 100.0))
}

fn format_rps(rps: f64, requests: u64) -> String {
    if requests == 0 {
        "-".to_string()
    } else {
        format!("{rps:.1}rps")
    }
}

fn format_latency(ms: Option<u64>) -> String {
    ms.map_or("-".to_string(), |ms| format!("{ms}ms"))
}

/// The table `linkerd viz routes` prints; `wide` adds the actual (per-attempt) columns.
pub fn render_routes(rows: &[RouteStats], wide: bool) -> String {
    let header: &[&str] = if wide {
        &[
            "ROUTE",
            "SERVICE",
            "EFFECTIVE_SUCCESS",
            "EFFECTIVE_RPS",
            "ACTUAL_SUCCESS",
            "ACTUAL_RPS",
            "LATENCY_P50",
            "LATENCY_P95",
            "LATENCY_P99",
        ]
    } else {
        &[
            "ROUTE",
            "SERVICE",
            "SUCCESS",
            "RPS",
            "LATENCY_P50",
            "LATENCY_P95",
            "LATENCY_P99",
        ]
    };
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for row in rows {
        let mut cells = vec![
            row.route.clone(),
            row.service.clone(),
            format_success(row.effective_success),
            format_rps(row.effective_rps, row.requests),
        ];
        if wide {
            cells.push(format_success(row.actual_success));
            cells.push(format_rps(row.actual_rps, row.requests));
        }
        cells.push(format_latency(row.latency_p50_ms));
        cells.push(format_latency(row.latency_p95_ms));
        cells.push(format_latency(row.latency_p99_ms));
        table.push(cells);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            table
                .iter()
                .map(|cells| cells[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for cells in &table {
        let mut line = String::new();
        for (column, cell) in cells.iter().enumerate() {
            if column > 0 {
                line.push_str("   ");
            }
            // Names left-aligned, numbers right-aligned, as Linkerd prints them.
            let padding = " ".repeat(widths[column] - cell.chars().count());
            if column < 2 {
                line.push_str(cell);
                line.push_str(&padding);
            } else {
                line.push_str(&padding);
                line.push_str(cell);
            }
        }
        let _ = writeln!(text, "{}", line.trim_end());
    }
    text
}

/// One request as `wardctl tap` prints it, Linkerd-tap style, on one line.
pub fn format_tap_line(entry: &AccessLogEntry) -> String {
    format!(
        "req proxy=out src={} dst={} tls={} :method={} :authority={} :path={} :status={} \
         latency={}ms attempts={} route={}",
        entry.src,
        entry.upstream.as_deref().unwrap_or("-"),
        entry.tls.is_some(),
        entry.method,
        entry.authority,
        entry.path,
        entry.status,
        entry.duration_ms,
        entry.attempts,
        display_route(entry.route.as_deref()),
    )
}

/// When `wardctl tap` stops (without either: at Ctrl-C).
#[derive(Debug, Clone, Default)]
pub struct TapOptions {
    /// Stop after printing this many requests.
    pub max_requests: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
}

/// An access log being followed like `tail -f`: what was read so far, and the start of a
/// line Envoy has not finished writing.
struct FollowedLog {
    path: PathBuf,
    offset: u64,
    partial_line: Vec<u8>,
}

impl FollowedLog {
    /// Follows from the current end of the file (from its start once it is created).
    fn at_end(path: PathBuf) -> FollowedLog {
        let offset = std::fs::metadata(&path).map_or(0, |m| m.len());
        FollowedLog {
            path,
            offset,
            partial_line: Vec::new(),
        }
    }

    /// The lines completed since the last call.
    fn new_lines(&mut self) -> std::io::Result<Vec<String>> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len < self.offset {
            // Truncated or replaced: follow the new content.
            self.offset = 0;
            self.partial_line.clear();
        }
        if len == self.offset {
            return Ok(Vec::new());
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let read = file
            .take(len - self.offset)
            .read_to_end(&mut self.partial_line)?;
        self.offset += read as u64;
        let Some(end) = self.partial_line.iter().rposition(|b| *b == b'\n') else {
            return Ok(Vec::new());
        };
        let complete: Vec<u8> = self.partial_line.drain(..=end).collect();
        Ok(String::from_utf8_lossy(&complete)
            .lines()
            .map(str::to_string)
            .collect())
    }
}

const TAP_POLL: Duration = Duration::from_millis(200);
/// How often tap looks for instances started after it (a scale-up, a reload).
const TAP_REFRESH_POLLS: u32 = 5;

/// `wardctl tap`: prints each outbound request of WORKLOAD's sidecars to TO as their access
/// logs record it, until `options` says stop (or Ctrl-C). Announces on stderr when it is
/// following the logs, so requests sent after that line are seen.
pub async fn tap(
    state_dir: &Path,
    workload: &str,
    namespace: &str,
    to: &str,
    options: &TapOptions,
) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    tap_into(state_dir, workload, namespace, to, options, &mut stdout).await?;
    Ok(())
}

/// [`tap`] writing to `out`; returns how many requests it printed.
pub async fn tap_into(
    state_dir: &Path,
    workload: &str,
    namespace: &str,
    to: &str,
    options: &TapOptions,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let target = ServiceTarget::parse(to, namespace)?;
    let started = Instant::now();
    let mut logs: BTreeMap<String, FollowedLog> = BTreeMap::new();
    for instance in client_instances(state_dir, workload, namespace)? {
        logs.insert(
            instance.node_id.clone(),
            FollowedLog::at_end(state::envoy_log(state_dir, &instance.node_id)),
        );
    }
    eprintln!(
        "tapping {} sidecar(s) of {namespace}/{workload} for requests to {target}",
        logs.len()
    );
    let mut printed = 0u64;
    let mut polls = 0u32;
    loop {
        if options.max_requests.is_some_and(|max| printed >= max) {
            return Ok(printed);
        }
        let remaining = match options.duration {
            Some(limit) => match limit.checked_sub(started.elapsed()) {
                Some(remaining) if !remaining.is_zero() => Some(remaining),
                _ => return Ok(printed),
            },
            None => None,
        };
        tokio::time::sleep(remaining.map_or(TAP_POLL, |r| r.min(TAP_POLL))).await;
        polls += 1;
        if polls.is_multiple_of(TAP_REFRESH_POLLS) {
            // The mesh may be reloading or gone; keep following what is known.
            if let Ok(instances) = client_instances(state_dir, workload, namespace) {
                for instance in instances {
                    logs.entry(instance.node_id.clone()).or_insert_with(|| {
                        FollowedLog::at_end(state::envoy_log(state_dir, &instance.node_id))
                    });
                }
            }
        }
        let mut requests = Vec::new();
        for log in logs.values_mut() {
            let lines = log
                .new_lines()
                .with_context(|| format!("reading {}", log.path.display()))?;
            requests.extend(
                lines
                    .iter()
                    .filter_map(|l| AccessLogEntry::parse(l))
                    .filter(|e| target.matches(e)),
            );
        }
        // In the order the sidecars logged them: as requests complete.
        for entry in &requests {
            if options.max_requests.is_some_and(|max| printed >= max) {
                break;
            }
            writeln!(out, "{}", format_tap_line(entry))?;
            printed += 1;
        }
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK_WITH_RETRY: &str = r#"[2026-11-25T13:28:24.123Z] outbound "GET /aura HTTP/1.1" 200 - via_upstream 0 31 1234ms "aura-api" src=127.77.2.1:40112 upstream=127.77.1.2:8080 cluster=outbound|80||aura-api.default.svc.cluster.local route="GET /aura" attempts=2 peer=spiffe://cluster.local/ns/default/sa/default tls=TLSv1.3"#;
    const NO_HEALTHY_UPSTREAM: &str = r#"[2026-11-25T13:28:25.001Z] outbound "GET /chaos HTTP/1.1" 503 UH no_healthy_upstream 0 19 0ms "aura-api" src=127.77.2.1:40114 upstream=- cluster=outbound|80||aura-api.default.svc.cluster.local route="default" attempts=0 peer=- tls=-"#;
    const TIMEOUT: &str = r#"[2026-11-25T13:28:26.500Z] outbound "GET /slow HTTP/1.1" 504 UT response_timeout 0 24 1001ms "aura-api:80" src=127.77.2.1:40116 upstream=127.77.1.3:8080 cluster=outbound|80||aura-api.default.svc.cluster.local route="GET /slow" attempts=1 peer=spiffe://cluster.local/ns/default/sa/default tls=TLSv1.3"#;
    const INBOUND: &str = r#"[2026-11-25T13:28:24.200Z] inbound "POST /orders?id=7 HTTP/2" 403 - rbac_access_denied_matched_policy[none] 12 19 3ms "orders.shop:8080" src=127.77.2.1:50110 upstream=- cluster=inbound|8080|| route="-" attempts=- peer=spiffe://cluster.local/ns/default/sa/sleep tls=TLSv1.3 rbac={"shadow_engine_result":"denied", "x": 1}"#;

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).expect("test timestamp")
    }

    fn parsed(line: &str) -> AccessLogEntry {
        AccessLogEntry::parse(line).unwrap_or_else(|| panic!("did not parse: {line}"))
    }

    /// An outbound line to aura-api `seconds` after 13:28:00.
    fn request(seconds: u32, route: &str, status: u16, attempts: &str, upstream: &str) -> String {
        format!(
            "[2026-11-25T13:28:{seconds:02}.000Z] outbound \"GET /x HTTP/1.1\" {status} - d 0 1 \
             {}ms \"aura-api\" src=127.0.0.1:1 upstream={upstream} \
             cluster=outbound|80||aura-api.default.svc.cluster.local route=\"{route}\" \
             attempts={attempts} peer=- tls=-",
            seconds * 10
        )
    }

    #[test]
    fn parses_an_outbound_line_with_retries() {
        let entry = parsed(OK_WITH_RETRY);
        assert_eq!(entry.start_time, at("2026-11-25T13:28:24.123Z"));
        assert_eq!(
            entry
                .start_time
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis()
                % 1000,
            123
        );
        assert_eq!(entry.direction, "outbound");
        assert_eq!(
            (
                entry.method.as_str(),
                entry.path.as_str(),
                entry.protocol.as_str()
            ),
            ("GET", "/aura", "HTTP/1.1")
        );
        assert_eq!(entry.status, 200);
        assert_eq!(entry.flags, "-");
        assert_eq!(entry.details, "via_upstream");
        assert_eq!((entry.bytes_received, entry.bytes_sent), (0, 31));
        assert_eq!(entry.duration_ms, 1234);
        assert_eq!(entry.authority, "aura-api");
        assert_eq!(entry.src, "127.77.2.1:40112");
        assert_eq!(entry.upstream.as_deref(), Some("127.77.1.2:8080"));
        assert_eq!(
            entry.cluster.as_deref(),
            Some("outbound|80||aura-api.default.svc.cluster.local")
        );
        assert_eq!(entry.route.as_deref(), Some("GET /aura"));
        assert_eq!(entry.attempts, 2);
        assert_eq!(
            entry.peer.as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/default")
        );
        assert_eq!(entry.tls.as_deref(), Some("TLSv1.3"));
    }

    #[test]
    fn parses_a_local_reply_with_absent_values() {
        let entry = parsed(NO_HEALTHY_UPSTREAM);
        assert_eq!(entry.status, 503);
        assert_eq!(entry.flags, "UH");
        assert_eq!(entry.details, "no_healthy_upstream");
        assert_eq!(entry.duration_ms, 0);
        assert_eq!(entry.upstream, None);
        assert_eq!(entry.route.as_deref(), Some("default"));
        assert_eq!(entry.attempts, 0);
        assert_eq!((entry.peer, entry.tls), (None, None));

        let timeout = parsed(TIMEOUT);
        assert_eq!((timeout.status, timeout.flags.as_str()), (504, "UT"));
        assert_eq!(timeout.authority, "aura-api:80");
        assert_eq!(timeout.attempts, 1);
    }

    #[test]
    fn parses_an_inbound_line() {
        let entry = parsed(INBOUND);
        assert_eq!(entry.direction, "inbound");
        assert_eq!(
            (
                entry.method.as_str(),
                entry.path.as_str(),
                entry.protocol.as_str()
            ),
            ("POST", "/orders?id=7", "HTTP/2")
        );
        assert_eq!(entry.status, 403);
        assert_eq!(entry.cluster.as_deref(), Some("inbound|8080||"));
        assert_eq!(entry.route, None);
        assert_eq!(entry.attempts, 0);
        assert_eq!(
            entry.peer.as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/sleep")
        );
        assert_eq!(cluster_service("inbound|8080||"), None);
        assert!(!ServiceTarget::parse("orders", "shop")
            .unwrap()
            .matches(&entry));
    }

    #[test]
    fn parses_dashes_everywhere_and_refuses_other_lines() {
        let reset = parsed(
            r#"[2026-11-25T13:28:24.000Z] outbound "- - -" - DC downstream_remote_disconnect - - -ms "-" src=- upstream=- cluster=- route="-" attempts=- peer=- tls=-"#,
        );
        assert_eq!((reset.status, reset.duration_ms, reset.attempts), (0, 0, 0));
        assert_eq!(reset.method, "-");
        assert_eq!((reset.cluster, reset.route), (None, None));
        // Envoy's own log lines share the file.
        assert_eq!(
            AccessLogEntry::parse(
                "[2026-11-25 13:28:24.123][12][warning][config] gRPC config stream closed"
            ),
            None
        );
        assert_eq!(AccessLogEntry::parse(""), None);
        // A line Envoy has not finished writing.
        assert_eq!(AccessLogEntry::parse(&OK_WITH_RETRY[..60]), None);
    }

    #[test]
    fn finds_the_service_of_a_cluster_and_of_to() {
        assert_eq!(
            cluster_service("outbound|80||aura-api.default.svc.cluster.local"),
            Some(("aura-api", "default"))
        );
        assert_eq!(
            cluster_service("outbound|9080|v1|reviews.shop.svc.cluster.local"),
            Some(("reviews", "shop"))
        );
        assert_eq!(cluster_service("outbound|80||example.com"), None);
        let short = ServiceTarget::parse("aura-api", "default").unwrap();
        assert!(short.matches(&parsed(OK_WITH_RETRY)));
        assert!(ServiceTarget::parse("aura-api.default", "shop")
            .unwrap()
            .matches(&parsed(OK_WITH_RETRY)));
        assert!(!ServiceTarget::parse("aura-api", "shop")
            .unwrap()
            .matches(&parsed(OK_WITH_RETRY)));
        assert!(!ServiceTarget::parse("aura", "default")
            .unwrap()
            .matches(&parsed(OK_WITH_RETRY)));
        assert_eq!(
            ServiceTarget::parse("svc/aura-api.default.svc.cluster.local", "x").unwrap(),
            short
        );
        assert!(ServiceTarget::parse("", "default").is_err());
        assert!(ServiceTarget::parse("ns/name", "default").is_err());
    }

    #[test]
    fn counts_effective_and_actual_requests_per_route() {
        let lines = [
            request(10, "GET /aura", 200, "1", "10.0.0.1:80"),
            // Two failed attempts, then a success.
            request(11, "GET /aura", 200, "3", "10.0.0.1:80"),
            // Retries exhausted.
            request(12, "GET /aura", 503, "3", "10.0.0.1:80"),
            // Client error: a success for Linkerd.
            request(13, "GET /aura", 404, "1", "10.0.0.1:80"),
            // A local reply: no healthy upstream, no attempt.
            request(14, "default", 503, "0", "-"),
            // Attempts `-` although an upstream answered: one attempt.
            request(15, "default", 200, "-", "10.0.0.2:80"),
            // A reset: status 0 is a failure.
            request(16, "default", 0, "1", "10.0.0.2:80"),
        ];
        let entries: Vec<AccessLogEntry> = lines.iter().map(|l| parsed(l)).collect();
        let end = at("2026-11-25T13:28:20Z");
        let window = Duration::from_secs(15);
        let rows = route_stats(&entries, end, window);
        assert_eq!(rows.len(), 2);
        let aura = &rows[0];
        assert_eq!(
            (aura.route.as_str(), aura.service.as_str()),
            ("GET /aura", "aura-api")
        );
        assert_eq!((aura.requests, aura.successes), (4, 3));
        assert_eq!((aura.attempts, aura.actual_successes), (8, 3));
        assert_eq!(aura.effective_success, Some(0.75));
        assert_eq!(aura.actual_success, Some(3.0 / 8.0));
        assert_eq!(rows[1].route, DEFAULT_ROUTE);
        assert_eq!((rows[1].requests, rows[1].successes), (3, 1));
        assert_eq!((rows[1].attempts, rows[1].actual_successes), (2, 1));
        assert_eq!(rows[1].actual_success, Some(0.5));
        // The earliest entry (13:28:10) is after the window start (13:28:05): rates are
        // over the 10 s the log covers.
        assert_eq!(aura.rate_seconds, 10.0);
        assert_eq!(aura.effective_rps, 0.4);
        assert_eq!(aura.actual_rps, 0.8);
        assert_eq!(rows[1].effective_rps, 0.3);
        // Once the log reaches back past the window start, over the whole window; the older
        // request itself is outside it.
        let mut all = entries.clone();
        all.insert(0, parsed(&request(0, "GET /aura", 200, "1", "10.0.0.1:80")));
        let rows = route_stats(&all, end, window);
        assert_eq!(rows[0].rate_seconds, 15.0);
        assert_eq!(rows[0].requests, 4);
        assert_eq!(rows[0].effective_rps, 4.0 / 15.0);
    }

    #[test]
    fn only_local_replies_have_no_actual_success_rate() {
        let entries = vec![parsed(NO_HEALTHY_UPSTREAM)];
        let rows = route_stats(
            &entries,
            at("2026-11-25T13:28:30Z"),
            Duration::from_secs(60),
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].route, DEFAULT_ROUTE);
        assert_eq!((rows[0].requests, rows[0].attempts), (1, 0));
        assert_eq!(rows[0].effective_success, Some(0.0));
        assert_eq!(rows[0].actual_success, None);
        assert_eq!(rows[0].actual_rps, 0.0);
    }

    #[test]
    fn cuts_the_window_on_both_ends() {
        let entries: Vec<AccessLogEntry> = [5, 10, 20, 30, 31]
            .iter()
            .map(|s| parsed(&request(*s, "r", 200, "1", "h:1")))
            .collect();
        let rows = route_stats(
            &entries,
            at("2026-11-25T13:28:30Z"),
            Duration::from_secs(20),
        );
        // 13:28:10 through 13:28:30, both ends included.
        assert_eq!(rows[0].requests, 3);
        assert_eq!(rows[0].rate_seconds, 20.0);
        assert_eq!(rows[0].effective_rps, 3.0 / 20.0);
        let rows = route_stats(
            &entries,
            at("2026-11-25T13:29:00Z"),
            Duration::from_secs(10),
        );
        assert!(rows.is_empty());
        // A fresh log: from its first request (13:28:30) to the window end.
        let rows = route_stats(
            &entries[3..],
            at("2026-11-25T13:28:31.200Z"),
            Duration::from_secs(60),
        );
        assert_eq!(rows[0].rate_seconds, 1.2);
        assert_eq!(rows[0].requests, 2);
        // ...but at least one second.
        let rows = route_stats(
            &entries[4..],
            at("2026-11-25T13:28:31.200Z"),
            Duration::from_secs(60),
        );
        assert_eq!(rows[0].rate_seconds, 1.0);
        assert_eq!(rows[0].effective_rps, 1.0);
    }

    #[test]
    fn takes_nearest_rank_latency_percentiles() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50), Some(50));
        assert_eq!(percentile(&sorted, 95), Some(95));
        assert_eq!(percentile(&sorted, 99), Some(99));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 50), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4], 50), Some(2));
        assert_eq!(percentile(&[], 50), None);
        // Durations 10 ms x second: 100 ms .. 160 ms.
        let entries: Vec<AccessLogEntry> = (10..=16)
            .map(|s| parsed(&request(s, "r", 200, "1", "h:1")))
            .collect();
        let rows = route_stats(
            &entries,
            at("2026-11-25T13:28:20Z"),
            Duration::from_secs(60),
        );
        assert_eq!(rows[0].latency_p50_ms, Some(130));
        assert_eq!(rows[0].latency_p95_ms, Some(160));
        assert_eq!(rows[0].latency_p99_ms, Some(160));
    }

    #[test]
    fn sorts_routes_by_name_with_default_last() {
        let entries: Vec<AccessLogEntry> = [("default", 1), ("b", 2), ("-", 3), ("a", 4)]
            .iter()
            .map(|(route, s)| parsed(&request(*s, route, 200, "1", "h:1")))
            .collect();
        let rows = route_stats(
            &entries,
            at("2026-11-25T13:28:10Z"),
            Duration::from_secs(60),
        );
        let names: Vec<&str> = rows.iter().map(|r| r.route.as_str()).collect();
        // No route name at all counts as the default route too.
        assert_eq!(names, ["a", "b", DEFAULT_ROUTE]);
        assert_eq!(rows[2].requests, 2);
    }

    fn sample_rows() -> Vec<RouteStats> {
        let mut aura = RouteStats::empty("GET /aura", "aura-api");
        aura.requests = 10;
        aura.successes = 9;
        aura.attempts = 12;
        aura.actual_successes = 9;
        aura.effective_success = Some(0.995);
        aura.effective_rps = 100.24;
        aura.actual_success = Some(0.75);
        aura.actual_rps = 120.0;
        aura.latency_p50_ms = Some(5);
        aura.latency_p95_ms = Some(123);
        aura.latency_p99_ms = Some(1234);
        vec![aura, RouteStats::empty(DEFAULT_ROUTE, "aura-api")]
    }

    #[test]
    fn renders_the_table_like_linkerd() {
        let rows = sample_rows();
        assert_eq!(
            render_routes(&rows, false),
            "\
ROUTE       SERVICE    SUCCESS        RPS   LATENCY_P50   LATENCY_P95   LATENCY_P99
GET /aura   aura-api    99.50%   100.2rps           5ms         123ms        1234ms
[DEFAULT]   aura-api         -          -             -             -             -
"
        );
        assert_eq!(
            render_routes(&rows, true),
            "\
ROUTE       SERVICE    EFFECTIVE_SUCCESS   EFFECTIVE_RPS   ACTUAL_SUCCESS   ACTUAL_RPS   LATENCY_P50   LATENCY_P95   LATENCY_P99
GET /aura   aura-api              99.50%        100.2rps           75.00%     120.0rps           5ms         123ms        1234ms
[DEFAULT]   aura-api                   -               -                -            -             -             -             -
"
        );
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["requests"], 10);
        assert_eq!(json[0]["attempts"], 12);
        assert_eq!(json[1]["effective_success"], serde_json::Value::Null);
    }

    #[test]
    fn formats_a_tap_line() {
        assert_eq!(
            format_tap_line(&parsed(OK_WITH_RETRY)),
            "req proxy=out src=127.77.2.1:40112 dst=127.77.1.2:8080 tls=true :method=GET \
             :authority=aura-api :path=/aura :status=200 latency=1234ms attempts=2 route=GET /aura"
        );
        assert_eq!(
            format_tap_line(&parsed(NO_HEALTHY_UPSTREAM)),
            "req proxy=out src=127.77.2.1:40114 dst=- tls=false :method=GET \
             :authority=aura-api :path=/chaos :status=503 latency=0ms attempts=0 route=[DEFAULT]"
        );
    }

    /// A state directory with one `sleep` instance in `default` and its log path.
    fn fake_mesh(name: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("ward-traffic-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(state::logs_dir(&dir)).unwrap();
        let instance = InstanceState {
            workload: "sleep".to_string(),
            namespace: "default".to_string(),
            instance: "sleep-0".to_string(),
            node_id: "sidecar~127.77.2.1~sleep-0.default~default.svc.cluster.local".to_string(),
            identity: "spiffe://cluster.local/ns/default/sa/sleep".to_string(),
            address: "127.77.2.1".parse().unwrap(),
            app_address: "127.77.2.2".parse().unwrap(),
            ports: vec![80],
            outbound_port: 15001,
            admin_port: 15000,
            envoy_pid: None,
            app_pid: None,
            app: "sleep".to_string(),
            env: Vec::new(),
        };
        let log = state::envoy_log(&dir, &instance.node_id);
        let runner = state::RunnerState {
            supervisor_pid: 0,
            config_dir: dir.clone(),
            xds_address: "127.0.0.1:1".parse().unwrap(),
            xds_admin_address: "127.0.0.1:2".parse().unwrap(),
            no_mesh_proxy: "127.0.0.1:3".parse().unwrap(),
            ready: true,
            last_error: None,
            instances: vec![instance],
        };
        state::write_state(&dir, &runner).unwrap();
        (dir, log)
    }

    #[test]
    fn reads_outbound_entries_of_a_workload() {
        let (dir, log) = fake_mesh("read");
        let error = read_outbound_entries(&dir, "sleep", "default", "aura-api").unwrap_err();
        assert!(
            format!("{error:#}").contains("no access log yet"),
            "{error:#}"
        );
        let error = read_outbound_entries(&dir, "nope", "default", "aura-api").unwrap_err();
        assert!(
            format!("{error:#}")
                .contains("no workload default/nope is running (running: default/sleep)"),
            "{error:#}"
        );
        let other = OK_WITH_RETRY.replace("aura-api.default", "other.default");
        let text = format!(
            "[2026-11-25 13:28:24.000][1][info][main] starting\n{TIMEOUT}\n{other}\n{INBOUND}\n\
             {OK_WITH_RETRY}\n{NO_HEALTHY_UPSTREAM}\n{}",
            &OK_WITH_RETRY[..80]
        );
        std::fs::write(&log, text).unwrap();
        let entries = read_outbound_entries(&dir, "sleep", "default", "aura-api").unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["/aura", "/chaos", "/slow"]);
        let rows = routes(
            &dir,
            "sleep",
            "default",
            "aura-api.default",
            at("2026-11-25T13:30:00Z"),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(rows, vec![RouteStats::empty(DEFAULT_ROUTE, "aura-api")]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn taps_requests_appended_after_it_starts() {
        let (dir, log) = fake_mesh("tap");
        std::fs::write(&log, format!("{OK_WITH_RETRY}\n")).unwrap();
        let writer = {
            let log = log.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
                // Half a line first, as Envoy may flush it.
                let (head, tail) = TIMEOUT.split_at(70);
                write!(file, "{INBOUND}\n{head}").unwrap();
                file.flush().unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                write!(file, "{tail}\n{NO_HEALTHY_UPSTREAM}\n{OK_WITH_RETRY}\n").unwrap();
            })
        };
        let options = TapOptions {
            max_requests: Some(2),
            duration: Some(Duration::from_secs(10)),
        };
        let mut out = Vec::new();
        let started = Instant::now();
        let printed = tap_into(&dir, "sleep", "default", "aura-api", &options, &mut out)
            .await
            .unwrap();
        writer.await.unwrap();
        assert_eq!(printed, 2);
        assert!(started.elapsed() < Duration::from_secs(5));
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].contains(":path=/slow :status=504"), "{out}");
        assert!(lines[1].contains(":path=/chaos :status=503"), "{out}");

        // --duration alone stops it.
        let options = TapOptions {
            max_requests: None,
            duration: Some(Duration::from_millis(300)),
        };
        let mut out = Vec::new();
        let printed = tap_into(&dir, "sleep", "default", "aura-api", &options, &mut out)
            .await
            .unwrap();
        assert_eq!((printed, out.len()), (0, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
