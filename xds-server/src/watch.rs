//! Watching the config directory. Editors save in bursts (write, rename, chmod), so events are
//! debounced: a change is reported once the directory has been quiet for a short while, or at
//! the latest after a bounded delay, so a steady stream of writes cannot starve reloads.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
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

/// Sends `()` on `changes` after each debounced burst of changes under `path`. The returned
/// watcher stops watching when dropped.
pub fn watch_debounced(
    path: &Path,
    window: DebounceWindow,
    changes: mpsc::Sender<()>,
) -> anyhow::Result<RecommendedWatcher> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if !event.kind.is_access() {
                let _ = raw_tx.send(());
            }
        }
    })
    .context("creating a file watcher")?;
    watcher
        .watch(path, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", path.display()))?;

    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            let burst_start = Instant::now();
            loop {
                let deadline = (Instant::now() + window.quiet).min(burst_start + window.max_delay);
                match tokio::time::timeout_at(deadline, raw_rx.recv()).await {
                    Ok(Some(())) if Instant::now() < burst_start + window.max_delay => continue,
                    Ok(None) => return,
                    _ => break,
                }
            }
            if changes.send(()).await.is_err() {
                return;
            }
        }
    });
    Ok(watcher)
}
