//! Gauges sampled every few seconds for the operators' dashboards and alerts: the process
//! (CPU, memory, file descriptors), the data directory's file system, the database pool, the job
//! queue, the webhook delivery queue and the vector index. Counters and histograms are recorded where the work happens; these
//! are states, so they are read on a timer instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use crate::storage::Storage;

const EVERY: Duration = Duration::from_secs(5);

/// Samples until `shutdown` turns true. Nothing here may fail the service: a store that does not
/// answer leaves its gauges at their last value (the dependency gauges say why).
pub async fn sample(storage: Storage, data_dir: PathBuf, mut shutdown: watch::Receiver<bool>) {
    let process = metrics_process::Collector::default();
    process.describe();
    let backend = storage.metadata.backend();
    let vector_dir = data_dir.join("vectors");
    loop {
        process.collect();
        let (open, idle, max) = storage.metadata.pool_state();
        metrics::gauge!("db_pool_connections", "backend" => backend).set(open as f64);
        metrics::gauge!("db_pool_idle_connections", "backend" => backend).set(idle as f64);
        metrics::gauge!("db_pool_max_connections", "backend" => backend).set(max as f64);
        // Server stores report through their circuit breakers; the database (SQLite too) here.
        let db_up = storage.metadata.ping().await.is_ok();
        metrics::gauge!("dependency_up", "dependency" => "database")
            .set(f64::from(u8::from(db_up)));
        metrics::counter!("dependency_errors_total", "dependency" => "database")
            .increment(u64::from(!db_up));
        if let Ok(q) = storage.metadata.queue_state().await {
            metrics::gauge!("ingest_queue_depth", "state" => "queued").set(q.queued as f64);
            metrics::gauge!("ingest_queue_depth", "state" => "running").set(q.running as f64);
            let age = q
                .oldest_queued_at
                .map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            metrics::gauge!("ingest_oldest_queued_job_age_seconds").set(age);
        }
        if let Ok(n) = storage.webhooks.pending_deliveries().await {
            metrics::gauge!("webhook_deliveries_pending").set(n as f64);
        }
        if let Ok(n) = storage.vectors.count().await {
            metrics::gauge!("vector_points").set(n as f64);
        }
        let (dir, vdir) = (data_dir.clone(), vector_dir.clone());
        if let Ok((disk, index_bytes)) =
            tokio::task::spawn_blocking(move || (disk_space(&dir), dir_bytes(&vdir))).await
        {
            if let Some((free, total)) = disk {
                metrics::gauge!("data_dir_free_bytes").set(free as f64);
                metrics::gauge!("data_dir_total_bytes").set(total as f64);
            }
            // The embedded index only; a Qdrant server reports its own disk use.
            if let Some(bytes) = index_bytes {
                metrics::gauge!("vector_index_disk_bytes").set(bytes as f64);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Free (for unprivileged users) and total bytes of the file system holding `dir`.
fn disk_space(dir: &Path) -> Option<(u64, u64)> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some((s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize))
}

/// Bytes of the files under `dir`; `None` when it does not exist.
fn dir_bytes(dir: &Path) -> Option<u64> {
    let mut total = 0;
    let mut stack = vec![std::fs::read_dir(dir).ok()?];
    while let Some(entries) = stack.pop() {
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => {
                    if let Ok(sub) = std::fs::read_dir(entry.path()) {
                        stack.push(sub);
                    }
                }
                Ok(_) => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    Some(total)
}

/// `build_info{version, git_sha}`: which build is running (the image's `REVISION` build argument,
/// or `unknown` for a build outside it).
pub fn record_build_info() {
    let sha = option_env!("DOCRAG_GIT_SHA").unwrap_or("unknown");
    metrics::gauge!("build_info", "version" => env!("CARGO_PKG_VERSION"), "git_sha" => sha)
        .set(1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_bytes_adds_nested_files_and_knows_a_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("x"), [0u8; 100]).unwrap();
        std::fs::write(dir.path().join("a/b/y"), [0u8; 23]).unwrap();
        assert_eq!(dir_bytes(dir.path()), Some(123));
        assert_eq!(dir_bytes(&dir.path().join("missing")), None);
        let (free, total) = disk_space(dir.path()).unwrap();
        assert!(total > 0 && free <= total);
    }
}
