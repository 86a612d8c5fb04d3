//! The server's own backups, into `backup.dir`: on request (`POST /v1/admin/backups` on the
//! storage port) and on `backup.schedule`. One runs at a time; each records its outcome in the
//! metrics the `BackupTooOld` alerts and the system dashboard read, and a good one prunes the
//! oldest backups beyond `backup.retention`.
//!
//! Metrics: `backup_last_success_timestamp_seconds` (also set at start-up from the newest complete
//! backup in the directory, so a restart does not look like a missed backup),
//! `backup_duration_seconds` and `backup_size_bytes` of the last good backup, and
//! `backups_total{trigger, outcome}`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;

use super::{BackupError, MANIFEST_FILE, Manifest, Quiet};
use crate::config::Settings;
use crate::storage::Storage;

/// Held while a backup of this process runs.
fn running() -> &'static tokio::sync::Mutex<()> {
    static RUNNING: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    RUNNING.get_or_init(|| tokio::sync::Mutex::new(()))
}

/// What started a backup (a label of `backups_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Api,
    Schedule,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Api => "api",
            Trigger::Schedule => "schedule",
        }
    }
}

/// A backup the server wrote.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServerBackup {
    /// Its directory on the server.
    pub path: String,
    /// Bytes of its files.
    pub bytes: u64,
    pub manifest: Manifest,
    /// Older backups removed by `backup.retention`.
    pub pruned: Vec<String>,
}

/// Takes a backup into a new directory of `backup.dir`; `Busy` while another one runs.
pub async fn run(
    storage: &Storage,
    settings: &Settings,
    trigger: Trigger,
) -> Result<ServerBackup, BackupError> {
    let Ok(_running) = running().try_lock() else {
        return Err(BackupError::Busy);
    };
    let root = settings.backup.dir(&settings.storage.data_dir);
    std::fs::create_dir_all(&root).map_err(|e| BackupError::io(&root, e))?;
    let name = format!("doc-rag-{}", Utc::now().format("%Y%m%dT%H%M%S%.3fZ"));
    let dir = root.join(&name);
    let started = Instant::now();
    let result = super::backup(storage, settings, &dir, &Quiet).await;
    let outcome = if result.is_ok() { "success" } else { "failure" };
    metrics::counter!("backups_total", "trigger" => trigger.as_str(), "outcome" => outcome)
        .increment(1);
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(module = "storage", error = %e, dir = %dir.display(), "backup failed");
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let bytes: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    metrics::gauge!("backup_last_success_timestamp_seconds")
        .set(manifest.completed_at.timestamp() as f64);
    metrics::gauge!("backup_duration_seconds").set(started.elapsed().as_secs_f64());
    metrics::gauge!("backup_size_bytes").set(bytes as f64);
    let retention = settings.backup.retention;
    let pruned = tokio::task::spawn_blocking(move || prune(&root, retention))
        .await
        .unwrap_or_default();
    tracing::info!(
        module = "storage",
        dir = %dir.display(),
        documents = manifest.counts.documents,
        bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        trigger = trigger.as_str(),
        "backup written"
    );
    Ok(ServerBackup {
        path: dir.display().to_string(),
        bytes,
        manifest,
        pruned,
    })
}

/// The complete backups in `root` (those with a manifest), oldest first.
fn complete_backups(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("doc-rag-"))
                && p.join(MANIFEST_FILE).is_file()
        })
        .collect();
    // The names carry the time, so their order is the backups' order.
    dirs.sort();
    dirs
}

/// Removes the oldest complete backups beyond `keep` (0 keeps all).
fn prune(root: &Path, keep: usize) -> Vec<String> {
    let dirs = complete_backups(root);
    if keep == 0 || dirs.len() <= keep {
        return Vec::new();
    }
    let mut pruned = Vec::new();
    for dir in &dirs[..dirs.len() - keep] {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => pruned.push(dir.display().to_string()),
            Err(e) => {
                tracing::warn!(module = "storage", dir = %dir.display(), error = %e, "cannot remove an old backup")
            }
        }
    }
    pruned
}

/// Sets the last-success gauge from the newest complete backup in `backup.dir`, at start-up.
pub fn record_existing(settings: &Settings) {
    let root = settings.backup.dir(&settings.storage.data_dir);
    let newest = complete_backups(&root).into_iter().rev().find_map(|dir| {
        let manifest = super::archive::read_manifest(&dir).ok()?;
        Some(manifest)
    });
    if let Some(m) = newest {
        metrics::gauge!("backup_last_success_timestamp_seconds")
            .set(m.completed_at.timestamp() as f64);
        metrics::gauge!("backup_size_bytes")
            .set(m.files.iter().map(|f| f.bytes).sum::<u64>() as f64);
        metrics::gauge!("backup_duration_seconds").set(
            (m.completed_at - m.started_at)
                .to_std()
                .unwrap_or_default()
                .as_secs_f64(),
        );
    }
    for trigger in [Trigger::Api, Trigger::Schedule] {
        for outcome in ["success", "failure"] {
            metrics::counter!("backups_total", "trigger" => trigger.as_str(), "outcome" => outcome)
                .increment(0);
        }
    }
}

/// Runs `backup.schedule` until the process stops.
pub fn spawn_schedule(
    storage: Storage,
    settings: Settings,
    schedule: cron::Schedule,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Some(next) = schedule.upcoming(Utc).next() else {
                return;
            };
            let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            if let Err(e) = run(&storage, &settings, Trigger::Schedule).await {
                tracing::error!(module = "storage", error = %e, "scheduled backup failed");
            }
        }
    })
}
