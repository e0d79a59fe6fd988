//! Hot model reload: watch the model file (and take explicit requests, which is what SIGHUP
//! does in the CLI), load and check a new version off the run loop, and hand it over to be
//! swapped in between batches. A file that fails to load or does not fit the configured
//! formats is reported and the current model keeps serving.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use super::serving::Serving;
use super::PipelineConfig;

/// Asks a running pipeline to reload its model file now, whether or not it changed on disk.
///
/// Cheap to clone; requests made while a reload is under way are merged into one more.
///
/// ```no_run
/// # async fn demo(pipeline: streamtract::pipeline::Pipeline) {
/// let reload = pipeline.reload_handle();
/// tokio::spawn(pipeline.run());
/// // ... after replacing the model file:
/// reload.request();
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ReloadHandle(Arc<Notify>);

impl ReloadHandle {
    /// Requests a reload.
    pub fn request(&self) {
        self.0.notify_one();
    }
}

/// What the watcher saw of the file: a change shows as a different modification time or size.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &PathBuf) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Starts the watcher. New models arrive on the returned channel; the task ends when the
/// receiver is dropped.
pub(super) fn watch(
    config: PipelineConfig,
    current_sha: String,
    requests: ReloadHandle,
) -> (mpsc::Receiver<Serving>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(async move {
        let path = config.model.clone();
        let mut current_sha = current_sha;
        let mut loaded = stamp(&path);
        let mut seen = loaded;
        // Polling is off when no interval is set: then only requests reload.
        let interval = config.model_check_interval;
        loop {
            let requested = tokio::select! {
                _ = requests.0.notified() => true,
                _ = tokio::time::sleep(interval.unwrap_or(Duration::MAX)), if interval.is_some() => false,
                _ = tx.closed() => return,
            };
            let now = stamp(&path);
            if !requested {
                // Load only once the file has stopped changing for one interval, so a copy in
                // progress is not read half-written.
                let stable = now == seen;
                seen = now;
                if !stable || now == loaded || now.is_none() {
                    continue;
                }
            }
            loaded = now;
            seen = now;
            match Serving::load(&config, &path).await {
                Ok(next) if next.sha256() == current_sha => {
                    config.metrics.model_reload("unchanged");
                    tracing::info!(model = %path.display(), sha256 = %current_sha,
                        "model file unchanged (same SHA-256); nothing to reload");
                }
                Ok(next) => {
                    config.metrics.model_reload("loaded");
                    current_sha = next.sha256().to_string();
                    if tx.send(next).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    config.metrics.model_reload("failed");
                    tracing::warn!(model = %path.display(), error = %e,
                        "model reload failed; the current model keeps serving");
                }
            }
        }
    });
    (rx, task)
}
