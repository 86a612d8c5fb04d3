//! Ingestion: accepting documents durably and turning them into indexed chunks.
//!
//! `submit` stores the original and a job row in one transaction and returns at once; the job
//! table is the truth. Workers (a few per process, and any number of replicas sharing a
//! PostgreSQL database) claim jobs with a lease, parse, chunk (token-aware, Markdown-aware),
//! embed in batches and index. An in-process channel (`Notify`) only wakes idle workers early.
//! Every step is idempotent — chunk ids are deterministic and a document's chunks are replaced as
//! a whole — so a job retried after a crash never duplicates anything. At start-up, jobs a dead
//! process left running are queued again.

pub mod chunk;
pub mod parse;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Map, Value};
use tokio::sync::{Notify, broadcast, watch};
use tracing::Instrument;
use uuid::Uuid;

use self::chunk::Chunker;
use self::parse::{ContentKind, ParseError};
use crate::config::{IngestSettings, LimitsSettings};
use crate::embedder::{Bm25Encoder, EmbedError, Embedder, Priority};
use crate::limits::{LimitError, check_bytes, check_count, check_metadata, validate_collection};
use crate::storage::vector::{ChunkPayload, IndexPoint};
use crate::storage::{
    ClaimedJob, Document, Job, JobStatus, NewDocument, Storage, StorageError, StoredChunk,
    Submitted, chunk_id,
};

pub const DEFAULT_COLLECTION: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    UnsupportedType(String),
    #[error("{0}")]
    Unparseable(String),
    #[error("{0}")]
    Conflict(String),
    #[error("no job {0}")]
    JobNotFound(Uuid),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Storage(StorageError),
}

impl From<StorageError> for IngestError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Conflict(m) => IngestError::Conflict(m),
            other => IngestError::Storage(other),
        }
    }
}

/// A document as the API received it, before validation.
#[derive(Debug, Clone)]
pub struct Upload {
    pub title: Option<String>,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    pub content: Vec<u8>,
    pub collection: Option<String>,
    pub external_id: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    pub request_id: Option<String>,
}

/// What other modules call.
#[async_trait]
pub trait Ingestor: Send + Sync + 'static {
    async fn submit(&self, upload: Upload) -> Result<Submitted, IngestError>;
    /// The job once it is final, or as it stands when `timeout` passes.
    async fn wait(&self, job_id: Uuid, timeout: Duration) -> Result<Job, IngestError>;
    /// Removes a document from every store and the cache.
    async fn delete(&self, document_id: Uuid) -> Result<Option<Document>, IngestError>;
}

pub struct IngestService {
    storage: Storage,
    embedder: Arc<dyn Embedder>,
    bm25: Arc<Bm25Encoder>,
    chunker: Arc<Chunker>,
    settings: IngestSettings,
    limits: LimitsSettings,
    wake: Notify,
    done: broadcast::Sender<Uuid>,
    worker_id: String,
}

/// Why a job attempt failed, and whether trying again can help.
struct JobFailure {
    message: String,
    retry: bool,
}

impl JobFailure {
    fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: false,
        }
    }
    fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retry: true,
        }
    }
}

impl From<StorageError> for JobFailure {
    fn from(e: StorageError) -> Self {
        JobFailure::transient(e.to_string())
    }
}

/// How long a failed job waits before its next attempt: doubling from `retry_base_ms` with each
/// attempt up to `retry_max_ms`, then a random half of it taken off, so jobs that failed together
/// (an outage) do not all come back at once.
pub fn retry_delay(attempt: i32, s: &IngestSettings) -> Duration {
    let exponent = attempt.clamp(1, 31) as u32 - 1;
    let full = s
        .retry_base_ms
        .saturating_mul(1u64 << exponent.min(30))
        .min(s.retry_max_ms);
    let mut bytes = [0u8; 8];
    let jitter = match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes) % (full / 2 + 1),
        Err(_) => 0,
    };
    Duration::from_millis(full - jitter)
}

impl IngestService {
    pub fn new(
        storage: Storage,
        embedder: Arc<dyn Embedder>,
        bm25: Arc<Bm25Encoder>,
        settings: IngestSettings,
        limits: LimitsSettings,
    ) -> anyhow::Result<Self> {
        let chunker = Chunker::new(
            embedder.tokenizer(),
            settings.chunk_max_tokens,
            settings.chunk_overlap_tokens,
        )?;
        let (done, _) = broadcast::channel(1024);
        Ok(Self {
            storage,
            embedder,
            bm25,
            chunker: Arc::new(chunker),
            settings,
            limits,
            wake: Notify::new(),
            done,
            worker_id: format!("{}-{}", hostname(), Uuid::new_v4().simple()),
        })
    }

    /// Queues jobs a previous run of this process left running. Only an embedded (single-process)
    /// database may requeue every running job; a shared one waits for their leases to expire.
    pub async fn recover(&self) -> Result<u64, StorageError> {
        let single_process = self.storage.metadata.backend() == "sqlite";
        let n = self
            .storage
            .metadata
            .requeue_running(single_process)
            .await?;
        if n > 0 {
            tracing::info!(module = "ingest", jobs = n, "requeued unfinished jobs");
        }
        Ok(n)
    }

    /// Starts the worker tasks; they stop when `shutdown` turns true.
    pub fn spawn_workers(
        self: &Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.settings.workers)
            .map(|n| {
                let this = Arc::clone(self);
                let shutdown = shutdown.clone();
                tokio::spawn(async move { this.worker_loop(n, shutdown).await })
            })
            .collect()
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
                .claim_job(&self.worker_id, lease)
                .await
            {
                Ok(Some(job)) if job.attempts > self.settings.max_attempts => {
                    self.give_up(job).await;
                }
                Ok(Some(job)) => {
                    let span = tracing::info_span!(
                        "job",
                        module = "ingest",
                        worker = n,
                        job_id = %job.job_id,
                        document_id = %job.document_id,
                        request_id = job.request_id.as_deref().unwrap_or("-"),
                    );
                    self.run_job(job).instrument(span).await;
                }
                Ok(None) => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(poll) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                // The runtime is shutting down.
                Err(StorageError::Join(_)) => return,
                Err(e) => {
                    // Every worker sees the same outage; one report is enough.
                    if n == 0 {
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
        match self
            .storage
            .metadata
            .fail_job(&job, &message, None, self.settings.max_attempts)
            .await
        {
            Ok(_) => {
                metrics::counter!("ingest_documents_total", "status" => "failed").increment(1);
                tracing::warn!(module = "ingest", job_id = %job.job_id, document_id = %job.document_id, "{message}");
            }
            Err(e) => {
                tracing::error!(module = "ingest", error = %e, "cannot record the job failure")
            }
        }
        let _ = self.done.send(job.job_id);
    }

    async fn run_job(&self, job: ClaimedJob) {
        let started = Instant::now();
        let lease = Duration::from_secs(self.settings.lease_secs);
        // Keep the lease while working so no other worker takes the job over.
        let renew = async {
            loop {
                tokio::time::sleep(lease / 3).await;
                match self
                    .storage
                    .metadata
                    .renew_lease(job.job_id, &self.worker_id, lease)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => tracing::warn!(error = %e, "cannot renew the job lease"),
                }
            }
        };
        let outcome = tokio::select! {
            r = self.process(&job) => r,
            _ = renew => Err(JobFailure::transient("lost the job lease")),
        };
        match outcome {
            Ok(chunks) => {
                metrics::counter!("ingest_documents_total", "status" => "done").increment(1);
                metrics::counter!("ingest_chunks_total").increment(chunks as u64);
                metrics::histogram!("ingest_job_seconds").record(started.elapsed().as_secs_f64());
                tracing::info!(
                    chunks,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "document indexed"
                );
            }
            Err(failure) => {
                let status = self
                    .storage
                    .metadata
                    .fail_job(
                        &job,
                        &failure.message,
                        failure
                            .retry
                            .then(|| retry_delay(job.attempts, &self.settings)),
                        self.settings.max_attempts,
                    )
                    .await;
                match status {
                    Ok(JobStatus::Queued) => {
                        tracing::warn!(error = %failure.message, attempt = job.attempts, "job failed; will retry");
                    }
                    Ok(_) => {
                        metrics::counter!("ingest_documents_total", "status" => "failed")
                            .increment(1);
                        tracing::warn!(error = %failure.message, "job failed");
                    }
                    Err(e) => tracing::error!(error = %e, "cannot record the job failure"),
                }
            }
        }
        let _ = self.done.send(job.job_id);
    }

    /// One attempt at a job; returns the number of chunks indexed.
    async fn process(&self, job: &ClaimedJob) -> Result<usize, JobFailure> {
        let storage = &self.storage;
        let Some(doc) = storage.metadata.get_document(job.document_id).await? else {
            return Err(JobFailure::permanent("the document was deleted"));
        };
        if doc.version != job.document_version {
            storage.metadata.complete_job(job, doc.chunk_count).await?;
            return Ok(0);
        }
        let Some(bytes) = storage.documents.get_original(job.document_id).await? else {
            return Err(JobFailure::permanent("the document's content is missing"));
        };
        let kind = ContentKind::from_mime(&doc.content_type).ok_or_else(|| {
            JobFailure::permanent(format!("unsupported content type {}", doc.content_type))
        })?;
        let chunker = Arc::clone(&self.chunker);
        let max_text = self.limits.extracted_text_max_bytes;
        let chunks = tokio::task::spawn_blocking(move || {
            let parsed = parse::parse(kind, &bytes)
                .map_err(|e| format!("cannot parse the document: {e}"))?;
            check_bytes(
                "the extracted text",
                "extracted_text_max_bytes",
                max_text,
                parsed.text.len(),
            )
            .map_err(|e| e.to_string())?;
            Ok::<_, String>(chunker.chunk(&parsed.text, parsed.markdown))
        })
        .await
        .map_err(|e| JobFailure::transient(e.to_string()))?
        .map_err(JobFailure::permanent)?;
        check_count(
            "the document's chunks",
            "chunks_per_document_max",
            self.limits.chunks_per_document_max,
            chunks.len(),
        )
        .map_err(|e| JobFailure::permanent(e.to_string()))?;
        if chunks.is_empty() {
            return Err(JobFailure::permanent("the document has no text"));
        }

        // The title gives each chunk its context (a chunk deep in a document rarely names its
        // subject), for both retrievers.
        let indexed_texts: Vec<String> = chunks
            .iter()
            .map(|c| format!("{}\n{}", doc.title, c.text))
            .collect();
        // In requests no larger than the embedder takes, so a long document indexes, slowly.
        let mut dense = Vec::with_capacity(indexed_texts.len());
        for batch in indexed_texts.chunks(self.embedder.max_texts().max(1)) {
            let vectors = self
                .embedder
                .embed(batch.to_vec(), Priority::Ingest)
                .await
                .map_err(|e| match e {
                    EmbedError::TooMany(..) => JobFailure::permanent(e.to_string()),
                    other => JobFailure::transient(other.to_string()),
                })?;
            dense.extend(vectors);
        }
        let bm25 = Arc::clone(&self.bm25);
        let sparse = tokio::task::spawn_blocking(move || {
            indexed_texts
                .iter()
                .map(|t| bm25.document(t))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| JobFailure::transient(e.to_string()))?;

        let points: Vec<IndexPoint> = chunks
            .iter()
            .zip(dense)
            .zip(sparse)
            .map(|((c, dense), sparse)| IndexPoint {
                id: chunk_id(doc.id, c.index),
                dense,
                sparse,
                payload: ChunkPayload {
                    document_id: doc.id,
                    collection: doc.collection.clone(),
                    chunk_index: c.index,
                    title: doc.title.clone(),
                    metadata: doc.metadata.clone(),
                },
            })
            .collect();
        let stored: Vec<StoredChunk> = chunks
            .iter()
            .map(|c| StoredChunk {
                id: chunk_id(doc.id, c.index),
                document_id: doc.id,
                chunk_index: c.index as i32,
                text: c.text.clone(),
                token_count: c.token_count as i32,
            })
            .collect();
        let n = points.len();

        // Points of an earlier version (or of an earlier attempt) must not survive. A first
        // attempt at a first version has none, and skipping the delete saves an index flush.
        if doc.version > 1 || job.attempts > 1 {
            storage.vectors.delete_document(doc.id).await?;
        }
        for batch in points.chunks(256) {
            storage.vectors.upsert(batch.to_vec()).await?;
        }
        storage.documents.replace_chunks(doc.id, stored).await?;
        let current = storage.metadata.complete_job(job, n as i64).await?;
        if !current && storage.metadata.get_document(doc.id).await?.is_none() {
            // Deleted while we worked: remove what we just wrote.
            storage.vectors.delete_document(doc.id).await?;
        }
        storage.cache.invalidate_collection(&doc.collection).await;
        Ok(n)
    }

    fn validate(&self, upload: Upload) -> Result<NewDocument, IngestError> {
        let collection = upload
            .collection
            .unwrap_or_else(|| DEFAULT_COLLECTION.to_string());
        validate_collection(&collection).map_err(IngestError::Invalid)?;
        if let Some(ext) = &upload.external_id {
            if ext.is_empty() {
                return Err(IngestError::Invalid("external_id must not be empty".into()));
            }
            check_bytes(
                "external_id",
                "external_id_max_bytes",
                self.limits.external_id_max_bytes,
                ext.len(),
            )?;
        }
        if let Some(metadata) = &upload.metadata {
            check_metadata(metadata, &self.limits)?;
        }
        let kind = match (&upload.content_type, &upload.file_name) {
            (Some(ct), _) if !ct.trim().is_empty() && !ct.starts_with("application/octet-stream") => {
                ContentKind::from_mime(ct).ok_or_else(|| {
                    IngestError::UnsupportedType(format!(
                        "unsupported content type {ct:?}; supported: text/plain, text/markdown, text/html, application/pdf"
                    ))
                })?
            }
            (_, Some(name)) => ContentKind::from_file_name(name).ok_or_else(|| {
                IngestError::UnsupportedType(format!(
                    "cannot tell the type of {name:?}; use a .txt, .md, .html or .pdf file or set its content type"
                ))
            })?,
            _ => ContentKind::Text,
        };
        if matches!(kind, ContentKind::Text | ContentKind::Markdown) {
            // For text, the upload is the extracted text: refuse it now rather than in the job.
            check_bytes(
                "the extracted text",
                "extracted_text_max_bytes",
                self.limits.extracted_text_max_bytes,
                upload.content.len(),
            )?;
        }
        parse::precheck(kind, &upload.content).map_err(|e| match e {
            ParseError::Empty => IngestError::Invalid("the document is empty".into()),
            ParseError::NotUtf8 => IngestError::Invalid("text documents must be UTF-8".into()),
            ParseError::Malformed(m) => IngestError::Unparseable(m),
        })?;
        let title = upload
            .title
            .filter(|t| !t.trim().is_empty())
            .or(upload.file_name)
            .ok_or_else(|| IngestError::Invalid("title is required".into()))?;
        check_bytes(
            "title",
            "title_max_bytes",
            self.limits.title_max_bytes,
            title.len(),
        )?;
        Ok(NewDocument {
            collection,
            external_id: upload.external_id,
            title: title.trim().to_string(),
            content_type: kind.mime().to_string(),
            metadata: upload.metadata.unwrap_or_default(),
            content: upload.content,
            request_id: upload.request_id,
        })
    }
}

#[async_trait]
impl Ingestor for IngestService {
    async fn submit(&self, upload: Upload) -> Result<Submitted, IngestError> {
        let doc = self.validate(upload)?;
        let collection = doc.collection.clone();
        let submitted = self.storage.metadata.submit_document(doc).await?;
        metrics::counter!("ingest_documents_submitted_total").increment(1);
        if submitted.replaced {
            self.storage.cache.invalidate_collection(&collection).await;
        }
        self.wake.notify_one();
        Ok(submitted)
    }

    async fn wait(&self, job_id: Uuid, timeout: Duration) -> Result<Job, IngestError> {
        let mut done = self.done.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let job = self
                .storage
                .metadata
                .get_job(job_id)
                .await?
                .ok_or(IngestError::JobNotFound(job_id))?;
            if job.status.is_final() || tokio::time::Instant::now() >= deadline {
                return Ok(job);
            }
            // Another replica may run the job, so poll as well as listen.
            tokio::select! {
                _ = async { while let Ok(id) = done.recv().await { if id == job_id { break } } } => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn delete(&self, document_id: Uuid) -> Result<Option<Document>, IngestError> {
        let Some(doc) = self.storage.metadata.delete_document(document_id).await? else {
            return Ok(None);
        };
        self.storage.vectors.delete_document(document_id).await?;
        self.storage
            .cache
            .invalidate_collection(&doc.collection)
            .await;
        Ok(Some(doc))
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "doc-rag".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn retry_delays_double_up_to_the_cap_with_up_to_half_taken_off() {
        let s = Settings::defaults_with(&[
            ("ingest.retry_base_ms".into(), "1000".into()),
            ("ingest.retry_max_ms".into(), "10000".into()),
        ])
        .unwrap()
        .ingest;
        for (attempt, full) in [
            (1, 1000),
            (2, 2000),
            (3, 4000),
            (4, 8000),
            (5, 10000),
            (40, 10000),
        ] {
            for _ in 0..50 {
                let d = retry_delay(attempt, &s).as_millis() as u64;
                assert!((full / 2..=full).contains(&d), "attempt {attempt}: {d} ms");
            }
        }
        let spread: std::collections::HashSet<u128> =
            (0..50).map(|_| retry_delay(4, &s).as_millis()).collect();
        assert!(spread.len() > 10, "jittered: {spread:?}");
    }
}
