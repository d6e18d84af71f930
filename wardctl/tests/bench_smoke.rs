//! `wardctl bench xds` is how the foundation targets are measured (docs/benchmarks.md); this
//! runs it small, so a change that stops its simulated proxies from syncing (a new xDS type
//! they do not subscribe to, a refused stream they do not retry) fails here instead of
//! leaving the benchmark waiting forever. No timing is asserted. It runs over mutual TLS (each
//! simulated proxy presenting its workload's credential, which xds-server checks against the
//! node) and over plaintext.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn bench_xds_runs_to_the_end_on_a_small_mesh() {
    let report = small_bench(&[]);
    assert_eq!(report["xds_transport"], "mutual TLS", "{report}");
}

#[test]
fn bench_xds_runs_to_the_end_over_plaintext() {
    let report = small_bench(&["--plaintext-xds"]);
    assert_eq!(report["xds_transport"], "plaintext", "{report}");
}

/// The server closes every connection after about a second (`--max-connection-age`), before
/// and after the change: the simulated proxies reconnect, as Envoy does, and still see it.
#[test]
fn bench_xds_proxies_reconnect_when_the_server_closes_their_connections() {
    let report = small_bench(&["--server-arg=--max-connection-age", "--server-arg=1s"]);
    assert_eq!(report["proxies"], 10, "{report}");
}

/// `wardctl bench xds` on 10 proxies and 5 services, with `extra` flags: its JSON report,
/// checked for a complete run.
fn small_bench(extra: &[&str]) -> serde_json::Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wardctl"))
        .args([
            "bench",
            "xds",
            "--proxies",
            "10",
            "--services",
            "5",
            "--json",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wardctl runs");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("bench xds never finished (its proxies never all synced?):\n{err}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{out}");
    let json = &out[out.find("\n{").expect("a JSON report") + 1..];
    let report: serde_json::Value = serde_json::from_str(json).expect("the JSON report parses");
    assert_eq!(report["proxies"], 10, "{report}");
    assert!(
        report["initial_sync_ms"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["bytes_received_per_proxy_initial"].as_u64().unwrap() > 0,
        "{report}"
    );
    // Every proxy received the changed endpoints.
    assert!(
        report["bytes_received_per_proxy_change"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(
        report["change_to_ack"]["max_ms"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    report
}
