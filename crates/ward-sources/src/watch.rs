//! Watching the config directory. Editors save in bursts (write, rename, chmod), so events are
//! debounced: a change is reported once the directory has been quiet for a short while, or at
//! the latest after a bounded delay, so a steady stream of writes cannot starve reloads.

use std::path::Path;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

/// Watches a directory until dropped.
pub type DirectoryWatcher = RecommendedWatcher;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct DebounceWindow {
    /// Report once no event came for this long.
    pub quiet: Duration,
    /// Report at the latest this long after the first event of a burst.
    pub max_delay: Duration,
}

impl Default for DebounceWindow {
    fn default() -> Self {
        DebounceWindow {
            quiet: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
        }
    }
}

/// Why a directory could not be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("creating a file watcher: {0}")]
    Create(notify::Error),
    #[error("watching {}: {source}", path.display())]
    Watch {
        path: std::path::PathBuf,
        source: notify::Error,
    },
}

/// Sends `()` on `changes` after each debounced burst of changes under `path`. The returned
/// watcher stops watching when dropped.
pub fn watch_debounced(
    path: &Path,
    window: DebounceWindow,
    changes: mpsc::Sender<()>,
) -> Result<RecommendedWatcher, WatchError> {
    let (raw_tx, raw_rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if !event.kind.is_access() {
                let _ = raw_tx.send(());
            }
        }
    })
    .map_err(WatchError::Create)?;
    watcher
        .watch(path, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError::Watch {
            path: path.to_path_buf(),
            source,
        })?;

    tokio::spawn(debounce(raw_rx, window, changes));
    Ok(watcher)
}

/// Turns raw events into debounced changes; ends when either side closes.
async fn debounce(
    mut raw: mpsc::UnboundedReceiver<()>,
    window: DebounceWindow,
    changes: mpsc::Sender<()>,
) {
    while raw.recv().await.is_some() {
        let burst_start = Instant::now();
        loop {
            let deadline = (Instant::now() + window.quiet).min(burst_start + window.max_delay);
            match tokio::time::timeout_at(deadline, raw.recv()).await {
                Ok(Some(())) if Instant::now() < burst_start + window.max_delay => continue,
                Ok(None) => return,
                _ => break,
            }
        }
        if changes.send(()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `debounce` one raw event at each offset of `events` (from the start, in order),
    /// closes the input at `run_for`, and returns the offsets at which changes were reported.
    async fn reports_for(
        events: Vec<Duration>,
        window: DebounceWindow,
        run_for: Duration,
    ) -> Vec<Duration> {
        let start = Instant::now();
        let (raw_tx, raw_rx) = mpsc::unbounded_channel();
        let (changes_tx, mut changes) = mpsc::channel(16);
        tokio::spawn(debounce(raw_rx, window, changes_tx));
        tokio::spawn(async move {
            for at in events {
                tokio::time::sleep_until(start + at).await;
                raw_tx.send(()).unwrap();
            }
            // Keep the sender (and so the debouncer) alive until the end of the run.
            tokio::time::sleep_until(start + run_for).await;
            drop(raw_tx);
        });
        let mut reports = Vec::new();
        while let Some(()) = changes.recv().await {
            reports.push(Instant::now() - start);
        }
        reports
    }

    // Time is paused: tokio advances the clock only when every task waits, so these check
    // the order of events and reports exactly, not how fast a machine is.

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_one_change_reported_after_the_quiet_period() {
        let window = DebounceWindow::default();
        // An editor's save: write, rename, chmod, 10 ms apart.
        let events: Vec<Duration> = (0..5).map(|i| Duration::from_millis(10 * i)).collect();
        let last = *events.last().unwrap();
        let reports = reports_for(events, window, Duration::from_secs(2)).await;
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert!(reports[0] >= last + window.quiet, "{reports:?}");
        assert!(reports[0] < window.max_delay, "{reports:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn separate_bursts_are_separate_changes() {
        let window = DebounceWindow::default();
        let events = vec![
            Duration::ZERO,
            Duration::from_millis(20),
            Duration::from_millis(1000),
            Duration::from_millis(1030),
        ];
        let reports = reports_for(events, window, Duration::from_secs(3)).await;
        assert_eq!(reports.len(), 2, "{reports:?}");
        assert!(
            reports[0] >= Duration::from_millis(120) && reports[0] < Duration::from_millis(1000)
        );
        assert!(reports[1] >= Duration::from_millis(1130), "{reports:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn constant_writes_cannot_starve_reloads() {
        let window = DebounceWindow::default();
        // A write every 50 ms for 2 s: never quiet for 100 ms.
        let writes_end = Duration::from_secs(2);
        let events: Vec<Duration> = (0..40).map(|i| Duration::from_millis(50 * i)).collect();
        let reports = reports_for(events, window, Duration::from_secs(3)).await;
        let during: Vec<&Duration> = reports.iter().filter(|r| **r < writes_end).collect();
        assert!(during.len() >= 2, "{reports:?}");
        // The first comes at the latest max_delay after the first write.
        assert!(reports[0] <= window.max_delay, "{reports:?}");
        // And one more once the writes stop: the last ones are not lost.
        assert!(*reports.last().unwrap() >= writes_end, "{reports:?}");
    }

    #[tokio::test]
    async fn file_writes_in_the_watched_directory_are_reported_once() {
        let dir = std::env::temp_dir().join(format!("ward-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (tx, mut changes) = mpsc::channel(16);
        // A wide quiet period: the writes below are one burst however slow the machine is.
        let window = DebounceWindow {
            quiet: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
        };
        let _watcher = watch_debounced(&dir, window, tx).unwrap();
        for i in 0..10 {
            std::fs::write(dir.join(format!("f{i}.yaml")), "a: 1\n").unwrap();
        }
        tokio::time::timeout(Duration::from_secs(10), changes.recv())
            .await
            .expect("a change is reported")
            .unwrap();
        // Nothing more for that burst.
        assert!(tokio::time::timeout(Duration::from_secs(1), changes.recv())
            .await
            .is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
