//! Ingestion: accepting documents durably and turning them into indexed chunks.
//!
//! - [`submit`]: validation and the durable hand-off — the original and a job row are stored in
//!   one transaction; the job table is the truth.
//! - [`worker`]: supervised worker tasks (a few per process, and any number of replicas sharing a
//!   PostgreSQL database) claim jobs with a lease, retry with backoff and give up on poison jobs.
//!   An in-process `Notify` only wakes idle workers early.
//! - [`pipeline`]: one attempt at a job — parse (in a sandboxed child, [`sandbox`]) → chunk →
//!   embed → index — ending in a fenced finish: chunks go live only while the worker holds the
//!   lease and the document is still at the version it processed.
//! - [`removal`]: complete deletes, finished by a sweeper when a store refuses.
//!
//! Every step is idempotent — chunk ids are deterministic per document version, and a document's
//! chunks are replaced as a whole — so a job retried after a crash never duplicates anything.

pub mod chunk;
pub mod parse;
pub mod pipeline;
pub mod reindex;
pub mod removal;
pub mod sandbox;
pub mod submit;
pub mod worker;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{Notify, broadcast};
use uuid::Uuid;

use self::chunk::Chunker;
use self::sandbox::ParserPool;
use crate::config::{IngestSettings, LimitsSettings, ParserSettings};
use crate::embedder::{Bm25Encoder, Embedder};
use crate::limits::LimitError;
use crate::storage::{Document, Job, Storage, StorageError, Submitted};

pub use self::worker::retry_delay;

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

/// The outcome of a bulk submission. Indexes are positions in the submitted list.
#[derive(Debug)]
pub struct BulkSubmitted {
    /// `None` when no upload was valid (nothing was stored).
    pub batch_id: Option<Uuid>,
    pub submitted: Vec<(usize, Submitted)>,
    pub rejected: Vec<(usize, IngestError)>,
}

/// What a delete removed from each store.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Removal {
    /// Chunk rows removed from the text store.
    pub chunks: u64,
    /// Points removed from the vector index.
    pub vectors: u64,
    /// Jobs of the document that were removed.
    pub jobs: u64,
    /// Whether the collection's cached results were invalidated.
    pub cache_invalidated: bool,
    /// True when a store could not finish now: the background sweeper completes the delete.
    pub pending: bool,
}

/// What other modules call.
#[async_trait]
pub trait Ingestor: Send + Sync + 'static {
    async fn submit(&self, upload: Upload) -> Result<Submitted, IngestError>;
    /// Many uploads as one batch (one transaction); invalid ones are reported, not stored.
    async fn submit_batch(&self, uploads: Vec<Upload>) -> Result<BulkSubmitted, IngestError>;
    /// The job once it is final, or as it stands when `timeout` passes.
    async fn wait(&self, job_id: Uuid, timeout: Duration) -> Result<Job, IngestError>;
    /// Removes a document from every store and the cache.
    async fn delete(&self, document_id: Uuid) -> Result<Option<(Document, Removal)>, IngestError>;
    /// `Err` names what is wrong: a worker pool that is not complete, or a dead parser pool.
    fn health(&self) -> Result<(), String>;
    /// A place for one upload in flight, or `None` when `ingest.max_concurrent_uploads` are.
    fn admit_upload(&self) -> Option<tokio::sync::OwnedSemaphorePermit>;
}

pub struct IngestService {
    storage: Storage,
    embedder: Arc<dyn Embedder>,
    bm25: Arc<Bm25Encoder>,
    chunker: Arc<Chunker>,
    parser: ParserPool,
    settings: IngestSettings,
    limits: LimitsSettings,
    wake: Notify,
    done: broadcast::Sender<Uuid>,
    worker_id: String,
    /// Worker tasks running now; the supervisor restarts any that end.
    alive: AtomicUsize,
    uploads: Arc<tokio::sync::Semaphore>,
}

impl IngestService {
    pub fn new(
        storage: Storage,
        embedder: Arc<dyn Embedder>,
        bm25: Arc<Bm25Encoder>,
        settings: IngestSettings,
        parser: ParserSettings,
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
            parser: ParserPool::new(parser)?,
            settings: settings.clone(),
            limits,
            wake: Notify::new(),
            done,
            worker_id: format!("{}-{}", hostname(), Uuid::new_v4().simple()),
            alive: AtomicUsize::new(0),
            uploads: Arc::new(tokio::sync::Semaphore::new(
                settings.max_concurrent_uploads.max(1),
            )),
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

    /// This process's lease-owner name.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }
}

#[async_trait]
impl Ingestor for IngestService {
    async fn submit(&self, upload: Upload) -> Result<Submitted, IngestError> {
        self.submit_upload(upload).await
    }

    async fn submit_batch(&self, uploads: Vec<Upload>) -> Result<BulkSubmitted, IngestError> {
        self.submit_uploads(uploads).await
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

    async fn delete(&self, document_id: Uuid) -> Result<Option<(Document, Removal)>, IngestError> {
        self.remove(document_id).await
    }

    fn admit_upload(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.uploads).try_acquire_owned().ok()
    }

    fn health(&self) -> Result<(), String> {
        let alive = self.alive.load(std::sync::atomic::Ordering::SeqCst);
        if alive < self.settings.workers {
            return Err(format!(
                "{alive} of {} ingest workers running",
                self.settings.workers
            ));
        }
        Ok(())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "doc-rag".into())
}
