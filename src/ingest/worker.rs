//! The worker loop: claim a job with a lease, keep the lease while working, record the outcome.
//!
//! Workers are supervised: a worker task that ends (a panic in a dependency, say) is logged and
//! restarted, and [`IngestService::health`](super::Ingestor::health) reports fewer live workers
//! than configured until it is. Attempts are counted when a job is claimed, so a job whose every
//! attempt kills its worker is failed after `max_attempts` (a poison job) instead of looping.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::Instrument;

use super::IngestService;
use crate::config::IngestSettings;
use crate::storage::{ClaimedJob, JobStatus, StorageError};

/// Why a job attempt failed, and whether trying again can help.
#[derive(Clone)]
pub(super) struct JobFailure {
    pub message: String,
    pub retry: bool,
    /// A store was unreachable: retried without counting the attempt, however long it lasts.
    pub outage: bool,
    /// The `reason` label of `ingest_jobs_failed_total`.
    pub reason: FailureReason,
}

/// Why a job failed, as `ingest_jobs_failed_total{reason}` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    Parse,
    Empty,
    TooLarge,
    Deleted,
    Dependency,
    Other,
}

impl FailureReason {
    pub const ALL: [FailureReason; 6] = [
        Self::Parse,
        Self::Empty,
        Self::TooLarge,
        Self::Deleted,
        Self::Dependency,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Parse => "parse",
            Self::Empty => "empty",
            Self::TooLarge => "too_large",
            Self::Deleted => "deleted",
            Self::Dependency => "dependency",
            Self::Other => "other",
        }
    }
}

impl JobFailure {
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: false,
            outage: false,
            reason: FailureReason::Other,
        }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: true,
            outage: false,
            reason: FailureReason::Other,
        }
    }
    pub fn because(mut self, reason: FailureReason) -> Self {
        self.reason = reason;
        self
    }
}

impl From<StorageError> for JobFailure {
    fn from(e: StorageError) -> Self {
        let outage = matches!(e, StorageError::Unavailable { .. } | StorageError::Pool(_));
        JobFailure {
            outage,
            ..JobFailure::transient(e.to_string()).because(FailureReason::Dependency)
        }
    }
}

/// How long a failed job waits before its next attempt (`ingest.retry_base_ms` doubling up to
/// `ingest.retry_max_ms`, jittered; see [`crate::retry`]).
pub fn retry_delay(attempt: i32, s: &IngestSettings) -> Duration {
    crate::retry::jittered_backoff(attempt, s.retry_base_ms, s.retry_max_ms)
}

impl IngestService {
    /// Starts the supervisor of the worker tasks; everything stops when `shutdown` turns true.
    pub fn spawn_workers(
        self: &Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let this = Arc::clone(self);
        // Counted before the supervisor first runs, so /ready is right from the start.
        this.alive.store(this.settings.workers, Ordering::SeqCst);
        vec![tokio::spawn(async move { this.supervise(shutdown).await })]
    }

    async fn supervise(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let this = Arc::clone(&self);
        let rx = shutdown.clone();
        supervise(self.settings.workers, &self.alive, shutdown, move |n| {
            Arc::clone(&this).worker_loop(n, rx.clone())
        })
        .await;
    }

    async fn worker_loop(self: Arc<Self>, n: usize, mut shutdown: watch::Receiver<bool>) {
        let lease = Duration::from_secs(self.settings.lease_secs);
        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self
                .storage
                .metadata
                .claim_jobs(&self.worker_id, lease, self.settings.claim_batch.max(1))
                .await
            {
                Ok(jobs) if !jobs.is_empty() => {
                    let (poison, jobs): (Vec<_>, Vec<_>) = jobs
                        .into_iter()
                        .partition(|job| job.attempts > self.settings.max_attempts);
                    for job in poison {
                        self.give_up(job).await;
                    }
                    if !jobs.is_empty() {
                        let span = match jobs.as_slice() {
                            [job] => tracing::info_span!(
                                "job",
                                module = "ingest",
                                worker = n,
                                job_id = %job.job_id,
                                document_id = %job.document_id,
                                request_id = job.request_id.as_deref().unwrap_or("-"),
                            ),
                            _ => tracing::info_span!(
                                "jobs",
                                module = "ingest",
                                worker = n,
                                jobs = jobs.len()
                            ),
                        };
                        self.run_jobs(jobs).instrument(span).await;
                    }
                }
                Ok(_) => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(poll) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(e) => {
                    // Every worker sees the same outage; one report is enough. A cancelled
                    // blocking task means the runtime is stopping: nothing to report.
                    if n == 0 && !matches!(e, StorageError::Join(_)) {
                        tracing::warn!(module = "ingest", error = %e, "cannot claim a job");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(poll * 2) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    /// A job claimed more often than `max_attempts` lost every earlier worker (crash, kill,
    /// lease lost) before it could record a failure: a poison job. Fail it instead of looping.
    async fn give_up(&self, job: ClaimedJob) {
        let message = format!(
            "gave up after {} attempts: each attempt ended without finishing (the worker died or \
             lost its lease)",
            job.attempts - 1
        );
        self.record_failure(&job, JobFailure::permanent(message))
            .await;
        let _ = self.done.send(job.job_id);
    }

    async fn run_jobs(&self, jobs: Vec<ClaimedJob>) {
        let started = Instant::now();
        let lease = Duration::from_secs(self.settings.lease_secs);
        // Keep the leases while working so no other worker takes the jobs over. A lease lost
        // anyway (a long stall) is caught by the fenced finish.
        let process = self.process_batch(&jobs);
        tokio::pin!(process);
        let outcomes = loop {
            tokio::select! {
                outcomes = &mut process => break outcomes,
                () = tokio::time::sleep(lease / 3) => {
                    for job in &jobs {
                        if let Err(e) = self
                            .storage
                            .metadata
                            .renew_lease(job.job_id, &self.worker_id, lease)
                            .await
                        {
                            tracing::warn!(job_id = %job.job_id, error = %e, "cannot renew the job lease");
                        }
                    }
                }
            }
        };
        let elapsed = started.elapsed();
        for (job, outcome) in jobs.iter().zip(outcomes) {
            match outcome {
                Ok(chunks) => {
                    metrics::counter!("ingest_documents_total", "status" => "done").increment(1);
                    metrics::counter!("ingest_chunks_total").increment(chunks as u64);
                    metrics::histogram!("ingest_job_seconds").record(elapsed.as_secs_f64());
                    tracing::info!(
                        job_id = %job.job_id,
                        document_id = %job.document_id,
                        request_id = job.request_id.as_deref().unwrap_or("-"),
                        chunks,
                        elapsed_ms = elapsed.as_millis() as u64,
                        "document indexed"
                    );
                }
                Err(failure) => self.record_failure(job, failure).await,
            }
            let _ = self.done.send(job.job_id);
        }
    }

    /// Records a failed attempt (fenced: only while this worker holds the job). A final failure
    /// also removes the document's chunks and vectors: a failed document is not searchable.
    async fn record_failure(&self, job: &ClaimedJob, failure: JobFailure) {
        if failure.outage {
            // The first retry's delay, every time: an outage does not make the job any worse.
            let retry_in = retry_delay(1, &self.settings);
            match self
                .storage
                .metadata
                .postpone_job(job, &self.worker_id, &failure.message, retry_in)
                .await
            {
                Ok(true) => {
                    metrics::counter!("ingest_jobs_postponed_total").increment(1);
                    // The dependency's breaker logs the outage once; one line per job would flood.
                    tracing::debug!(error = %failure.message, retry_in_ms = retry_in.as_millis() as u64, "a store is unavailable; job postponed");
                    return;
                }
                Ok(false) => return,
                // The database itself is down: the lease runs out and the job is claimed again.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot postpone the job; its lease will expire");
                    return;
                }
            }
        }
        let retry_in = failure
            .retry
            .then(|| retry_delay(job.attempts, &self.settings));
        let status = self
            .storage
            .metadata
            .fail_job(
                job,
                &self.worker_id,
                &failure.message,
                retry_in,
                self.settings.max_attempts,
            )
            .await;
        match status {
            Ok(Some(JobStatus::Queued)) => {
                tracing::warn!(error = %failure.message, attempt = job.attempts, "job failed; will retry");
            }
            Ok(Some(_)) => {
                metrics::counter!("ingest_documents_total", "status" => "failed").increment(1);
                metrics::counter!("ingest_jobs_failed_total", "reason" => failure.reason.as_str())
                    .increment(1);
                tracing::warn!(error = %failure.message, "job failed");
                if let Err(e) = self.drop_failed_vectors(job).await {
                    tracing::warn!(error = %e, "cannot remove the failed document's vectors; verify --repair removes them");
                }
            }
            Ok(None) => {
                tracing::info!(error = %failure.message, "job failed after it was taken over; nothing recorded");
            }
            Err(e) => tracing::error!(error = %e, "cannot record the job failure"),
        }
    }
}

/// Runs `workers` tasks made by `start(n)`, restarting any that ends (returns or panics) until
/// `shutdown` turns true, then waits for all of them. `alive` counts the running ones for /ready.
pub(super) async fn supervise<F, Fut>(
    workers: usize,
    alive: &AtomicUsize,
    mut shutdown: watch::Receiver<bool>,
    start: F,
) where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut set = JoinSet::new();
    let mut ids = HashMap::new();
    for n in 0..workers {
        ids.insert(set.spawn(start(n)).id(), n);
    }
    loop {
        let ended = tokio::select! {
            ended = set.join_next_with_id() => ended,
            _ = shutdown.changed() => None,
        };
        if *shutdown.borrow() {
            // Let each worker finish its step; they watch the same signal.
            while set.join_next().await.is_some() {}
            alive.store(0, Ordering::SeqCst);
            return;
        }
        let Some(ended) = ended else { continue };
        alive.fetch_sub(1, Ordering::SeqCst);
        let (id, why) = match ended {
            Ok((id, ())) => (id, "returned".to_string()),
            Err(e) if e.is_panic() => (e.id(), "panicked".to_string()),
            Err(e) => (e.id(), e.to_string()),
        };
        let n = ids.remove(&id).unwrap_or(0);
        metrics::counter!("ingest_worker_restarts_total").increment(1);
        tracing::error!(
            module = "ingest",
            worker = n,
            why,
            "ingest worker ended; restarting it"
        );
        // A worker that dies at once would spin: pause a moment first.
        tokio::time::sleep(RESTART_PAUSE).await;
        alive.fetch_add(1, Ordering::SeqCst);
        ids.insert(set.spawn(start(n)).id(), n);
    }
}

const RESTART_PAUSE: Duration = Duration::from_millis(500);

impl IngestService {
    /// Points of the failed version go; when that version is still the document's, every point of
    /// the document goes (earlier versions' too: the failed document is not searchable). A newer
    /// version's points are never touched.
    async fn drop_failed_vectors(&self, job: &ClaimedJob) -> Result<(), StorageError> {
        let current = self.storage.metadata.get_document(job.document_id).await?;
        let (doc, version) = (job.document_id, job.document_version);
        let storage = &self.storage;
        match current {
            Some(current) if current.version == version => {
                storage.documents.discard(doc, None).await?;
                storage.vectors.delete_document(doc).await.map(drop)
            }
            _ => {
                storage.documents.discard(doc, Some(version)).await?;
                storage.vectors.delete_version(doc, version).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    /// A worker that panics is restarted; the count of live workers dips and comes back; on
    /// shutdown every worker is awaited.
    #[tokio::test]
    async fn the_supervisor_restarts_a_worker_that_panics() {
        let alive = Arc::new(AtomicUsize::new(3));
        let starts = Arc::new(AtomicUsize::new(0));
        let (stop, shutdown) = watch::channel(false);
        let supervisor = {
            let (alive, starts, shutdown) = (alive.clone(), starts.clone(), shutdown.clone());
            tokio::spawn(async move {
                let rx = shutdown.clone();
                supervise(3, &alive, shutdown, move |n| {
                    let first = starts.fetch_add(1, Ordering::SeqCst) < 3;
                    let mut rx = rx.clone();
                    async move {
                        if n == 1 && first {
                            panic!("worker {n} dies");
                        }
                        let _ = rx.wait_for(|stop| *stop).await;
                    }
                })
                .await
            })
        };
        tokio::time::sleep(RESTART_PAUSE / 5).await;
        assert_eq!(
            alive.load(Ordering::SeqCst),
            2,
            "the dead worker is not counted"
        );
        tokio::time::sleep(RESTART_PAUSE * 2).await;
        assert_eq!(alive.load(Ordering::SeqCst), 3, "restarted");
        assert_eq!(starts.load(Ordering::SeqCst), 4);
        stop.send(true).unwrap();
        supervisor.await.unwrap();
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn retry_delays_follow_the_ingest_settings() {
        let s = Settings::defaults_with(&[
            ("ingest.retry_base_ms".into(), "1000".into()),
            ("ingest.retry_max_ms".into(), "3000".into()),
        ])
        .unwrap()
        .ingest;
        let d = retry_delay(5, &s).as_millis();
        assert!((1500..=3000).contains(&d), "capped at retry_max_ms: {d} ms");
    }
}
