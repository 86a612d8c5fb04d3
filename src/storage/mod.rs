//! Storage: everything doc-rag persists, behind traits so each store can run embedded (one machine,
//! nothing installed) or against a production server.
//!
//! - [`MetadataStore`]: documents, jobs and collections (diesel; SQLite by default, PostgreSQL when
//!   `database.url` is `postgres://…`). The job table is the truth for ingestion work.
//! - [`DocumentStore`]: original uploads, parsed text and chunk text (the SQL store, inside its
//!   own transactions; or MongoDB when `documents.mongodb_url` is set).
//! - [`vector::VectorIndex`]: dense + BM25 vectors per chunk (in-process Qdrant, or a Qdrant
//!   server when `vectors.qdrant_url` is set).
//! - [`cache::Cache`]: query results, invalidated per collection when content changes.
//! - [`security::SecurityStore`]: users, keys, grants, blocks and the audit log (the SQL store).
//! - [`answers::AnswerStore`]: answers given, conversations and feedback (the SQL store).
//! - [`webhooks::WebhookStore`]: webhook subscriptions and the delivery queue and log (the SQL
//!   store, which records deliveries in the transactions of the changes they report).
//!
//! The storage module also serves its own port with `/v1/stats`.

pub mod answers;
pub mod breaker;
pub mod cache;
pub mod http;
pub mod mongo;
pub mod redis;
pub mod security;
pub mod sql;
pub mod vector;
pub mod verify;
pub mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

pub use cache::Cache;
pub use vector::VectorIndex;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Database(String),
    #[error("connection pool error: {0}")]
    Pool(String),
    #[error("vector index error: {0}")]
    Vector(String),
    #[error("migration error: {0}")]
    Migration(String),
    #[error("invalid database url: {0}")]
    BadUrl(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("background task failed: {0}")]
    Join(String),
    /// A server-backed store does not answer (down, timing out, or its circuit is open).
    #[error("{dependency} is unavailable: {message}")]
    Unavailable {
        dependency: Dependency,
        message: String,
    },
}

/// The external servers doc-rag depends on, for errors, metrics and `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dependency {
    Redis,
    MongoDb,
    Qdrant,
}

impl Dependency {
    pub fn as_str(self) -> &'static str {
        match self {
            Dependency::Redis => "redis",
            Dependency::MongoDb => "mongodb",
            Dependency::Qdrant => "qdrant",
        }
    }
}

impl std::fmt::Display for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dependency::Redis => "Redis",
            Dependency::MongoDb => "MongoDB",
            Dependency::Qdrant => "the Qdrant server",
        })
    }
}

impl From<diesel::result::Error> for StorageError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                StorageError::Conflict(info.message().to_string())
            }
            other => StorageError::Database(other.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for StorageError {
    fn from(e: tokio::task::JoinError) -> Self {
        StorageError::Join(e.to_string())
    }
}

/// Life cycle of a document's content in the indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DocumentStatus {
    Queued,
    Indexing,
    Indexed,
    Failed,
}

impl DocumentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentStatus::Queued => "queued",
            DocumentStatus::Indexing => "indexing",
            DocumentStatus::Indexed => "indexed",
            DocumentStatus::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        Ok(match s {
            "queued" => DocumentStatus::Queued,
            "indexing" => DocumentStatus::Indexing,
            "indexed" => DocumentStatus::Indexed,
            "failed" => DocumentStatus::Failed,
            other => return Err(StorageError::Corrupt(format!("document status {other:?}"))),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Done,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        Ok(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "done" => JobStatus::Done,
            "failed" => JobStatus::Failed,
            other => return Err(StorageError::Corrupt(format!("job status {other:?}"))),
        })
    }
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Done | JobStatus::Failed)
    }
}

/// A document as submitted, before it has an id.
#[derive(Debug, Clone)]
pub struct NewDocument {
    pub collection: String,
    pub external_id: Option<String>,
    pub title: String,
    pub content_type: String,
    pub metadata: Map<String, Value>,
    /// The original bytes (the SQL store keeps them unless `content_ref` is set; size and hash
    /// are always taken from them).
    pub content: Vec<u8>,
    /// Set when the bytes were already stored in a separate [`DocumentStore`] under this id.
    pub content_ref: Option<Uuid>,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Document {
    pub id: Uuid,
    pub collection: String,
    pub external_id: Option<String>,
    pub title: String,
    pub content_type: String,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub status: DocumentStatus,
    /// Bumped each time the document is replaced; a job indexes one version.
    pub version: i64,
    pub chunk_count: i64,
    pub size_bytes: i64,
    pub sha256: String,
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Where a separate document store keeps the original (internal; never sent to clients).
    #[serde(skip)]
    #[schema(ignore)]
    pub content_ref: Option<Uuid>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    pub id: Uuid,
    pub document_id: Uuid,
    pub document_version: i64,
    pub status: JobStatus,
    pub attempts: i32,
    pub error: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// The outcome of [`MetadataStore::submit_document`].
#[derive(Debug, Clone)]
pub struct Submitted {
    pub document_id: Uuid,
    pub job_id: Uuid,
    /// True when an existing document with the same `external_id` was replaced.
    pub replaced: bool,
    /// The replaced upload's `content_ref`, which nothing refers to any more.
    pub previous_content_ref: Option<Uuid>,
}

/// The row of a bulk upload, stored with its documents.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub id: Uuid,
    /// Every collection the batch writes to.
    pub collections: Vec<String>,
    /// Documents in the whole batch (it may be stored in several transactions).
    pub total: i64,
}

/// A job a worker holds the lease of.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub job_id: Uuid,
    pub document_id: Uuid,
    pub document_version: i64,
    pub attempts: i32,
    pub request_id: Option<String>,
}

/// A chunk's text as stored for citing.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredChunk {
    pub id: Uuid,
    pub document_id: Uuid,
    pub chunk_index: i32,
    pub text: String,
    pub token_count: i32,
    /// Byte offset of the chunk in the parsed text, where the store keeps it (MongoDB).
    pub offset: Option<u64>,
}

/// What a finished job makes live in the metadata store.
#[derive(Debug, Clone)]
pub enum FinishedChunks {
    /// The chunks themselves: the metadata store keeps their text (SQL documents).
    Inline(Vec<StoredChunk>),
    /// Only their number: a separate [`DocumentStore`] holds them, staged before the finish.
    Stored(i64),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobCounts {
    pub queued: i64,
    pub running: i64,
    pub done: i64,
    pub failed: i64,
}

/// `GET /v1/batches/{id}`: one bulk upload's progress, from its jobs.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchView {
    pub batch_id: Uuid,
    /// Documents accepted into the batch.
    pub total: i64,
    /// The batch's jobs by state; a replaced or deleted document's job counts as done or failed
    /// as it ended.
    pub counts: JobCounts,
    /// True when every job is done or failed.
    pub finished: bool,
    /// Failed documents with the reason (at most [`BATCH_FAILURES_SHOWN`]).
    pub failures: Vec<BatchFailure>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Failures listed in a [`BatchView`]; `counts.failed` has the full number.
pub const BATCH_FAILURES_SHOWN: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchFailure {
    pub document_id: Uuid,
    pub external_id: Option<String>,
    pub title: String,
    pub error: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MetadataStats {
    pub documents: i64,
    pub documents_indexed: i64,
    pub chunks: i64,
    /// Sum of `chunk_count` over indexed documents.
    pub indexed_chunks: i64,
    pub collections: i64,
    pub jobs: JobCounts,
}

/// See [`MetadataStore::queue_state`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueState {
    pub queued: i64,
    pub running: i64,
    pub oldest_queued_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CollectionInfo {
    pub name: String,
    pub documents: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Relational metadata: documents, jobs, collections.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    async fn ping(&self) -> Result<(), StorageError>;
    /// Stores the document and a queued job in one transaction. A document with the same
    /// `(collection, external_id)` is replaced: same id, next version, new content.
    /// The SQL backend also stores the original bytes in that transaction.
    async fn submit_document(&self, doc: NewDocument) -> Result<Submitted, StorageError> {
        let mut submitted = self.submit_documents(vec![doc], None).await?;
        submitted
            .pop()
            .ok_or_else(|| StorageError::Database("no document was stored".into()))
    }
    /// [`submit_document`](Self::submit_document) for many documents in one transaction, in
    /// order; with `batch`, the batch row too, and every job belongs to it.
    async fn submit_documents(
        &self,
        docs: Vec<NewDocument>,
        batch: Option<NewBatch>,
    ) -> Result<Vec<Submitted>, StorageError>;
    /// A bulk upload's progress and the collections it wrote to (for access checks).
    async fn get_batch(&self, id: Uuid) -> Result<Option<(BatchView, Vec<String>)>, StorageError>;
    async fn get_document(&self, id: Uuid) -> Result<Option<Document>, StorageError>;
    /// Newest first; in `collection` when given, and only in `within` collections when given.
    async fn list_documents(
        &self,
        collection: Option<String>,
        within: Option<Vec<String>>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Document>, StorageError>;
    /// Removes the document, its jobs, content and chunks, and records a [`Deletion`] in the same
    /// transaction so the other stores are swept even if this process dies next.
    async fn delete_document(&self, id: Uuid) -> Result<Option<DeletedDocument>, StorageError>;
    /// Deletions not yet finished in every store, oldest first.
    async fn pending_deletions(&self, limit: i64) -> Result<Vec<Deletion>, StorageError>;
    /// Records the outcome of sweeping one deletion: `Ok` forgets it, `Err` notes the error.
    async fn settle_deletion(
        &self,
        id: Uuid,
        outcome: Result<(), String>,
    ) -> Result<(), StorageError>;
    async fn get_job(&self, id: Uuid) -> Result<Option<Job>, StorageError>;
    /// Takes the oldest queued job (or one whose lease expired) and leases it to `worker`.
    async fn claim_job(
        &self,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedJob>, StorageError> {
        Ok(self.claim_jobs(worker, lease, 1).await?.pop())
    }
    /// Up to `limit` of the oldest claimable jobs, leased to `worker` in one transaction.
    async fn claim_jobs(
        &self,
        worker: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedJob>, StorageError>;
    /// Extends a lease this worker holds; false when it no longer holds it.
    async fn renew_lease(
        &self,
        job_id: Uuid,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, StorageError>;
    /// Makes a job's chunks live, fenced: only while `worker` still holds the job's lease and the
    /// document is still at the job's version. In one transaction it replaces the document's
    /// chunks (the SQL backend keeps chunk text), marks the document indexed and the job done.
    /// A job whose document moved on is marked failed; a lost lease changes nothing.
    async fn finish_job(
        &self,
        job: &ClaimedJob,
        worker: &str,
        chunks: FinishedChunks,
    ) -> Result<Finish, StorageError> {
        let mut finished = self
            .finish_jobs(worker, vec![(job.clone(), chunks)])
            .await?;
        finished
            .pop()
            .ok_or_else(|| StorageError::Database("no job was finished".into()))
    }
    /// [`finish_job`](Self::finish_job) for many jobs in one transaction: they go live together
    /// (one cache invalidation covers them all). One outcome per job, in order.
    async fn finish_jobs(
        &self,
        worker: &str,
        jobs: Vec<(ClaimedJob, FinishedChunks)>,
    ) -> Result<Vec<Finish>, StorageError>;
    /// Records a failure of a job `worker` holds. `retry_in` puts the job back in the queue,
    /// claimable after that delay (unless attempts are used up); `None`, or no attempts left,
    /// marks it and its document failed with `error` and drops the document's chunks (a failed
    /// document is not searchable). `None` when the worker no longer holds the job.
    async fn fail_job(
        &self,
        job: &ClaimedJob,
        worker: &str,
        error: &str,
        retry_in: Option<Duration>,
        max_attempts: i32,
    ) -> Result<Option<JobStatus>, StorageError>;
    /// Puts a job `worker` holds back in the queue, claimable after `retry_in`, without counting
    /// the attempt: a dependency outage is nobody's fault, and jobs must outlive it. False when
    /// the worker no longer holds the job.
    async fn postpone_job(
        &self,
        job: &ClaimedJob,
        worker: &str,
        error: &str,
        retry_in: Duration,
    ) -> Result<bool, StorageError>;
    /// Every document's indexing state and stored chunk count, for `verify`.
    async fn inventory(&self) -> Result<Inventory, StorageError>;
    /// Queues a fresh job for the document's current version (`verify --repair`).
    async fn reindex(&self, id: Uuid) -> Result<bool, StorageError>;
    /// Up to `limit` documents in id order, after `after`: a backup pages through them.
    async fn export_documents(
        &self,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<Document>, StorageError>;
    /// Inserts backed-up documents as they were (ids, versions, states, times) in one
    /// transaction, with their collections, inline originals and chunks, and a queued job for
    /// each one that is to be indexed again. `Conflict` when an id or `(collection, external_id)`
    /// is taken.
    async fn restore_documents(&self, docs: Vec<RestoredDocument>) -> Result<(), StorageError>;
    /// Removes chunk rows whose document is gone; returns how many.
    async fn delete_orphan_chunks(&self) -> Result<u64, StorageError>;
    /// Puts jobs left running by a process that is gone back in the queue. Embedded (single process)
    /// deployments call it at start-up with `all = true`; shared databases rely on lease expiry.
    async fn requeue_running(&self, all: bool) -> Result<u64, StorageError>;
    async fn list_collections(&self) -> Result<Vec<CollectionInfo>, StorageError>;
    async fn stats(&self) -> Result<MetadataStats, StorageError>;
    /// The job queue for the operators' gauges: jobs queued and running, and when the oldest
    /// queued job was submitted.
    async fn queue_state(&self) -> Result<QueueState, StorageError>;
    /// Returns freed space to the file system and drops old page images (SQLite: checkpoint and
    /// truncate the WAL, whose frames still hold deleted text; PostgreSQL: autovacuum's job).
    async fn compact(&self) -> Result<(), StorageError>;
    /// Connections of the pool now: (open, idle, maximum).
    fn pool_state(&self) -> (u32, u32, u32);
    fn backend(&self) -> &'static str;
}

/// A document read back from a backup, for [`MetadataStore::restore_documents`].
#[derive(Debug, Clone)]
pub struct RestoredDocument {
    /// As backed up; `status` is what it was unless `queue_job` is set (then `queued`).
    pub document: Document,
    /// The original bytes, when the metadata store keeps them (no `content_ref`).
    pub content: Option<Vec<u8>>,
    /// The live version's chunks, when the metadata store keeps chunk text.
    pub chunks: Vec<StoredChunk>,
    /// Index it again: the backup holds its original but no complete indexed version.
    pub queue_job: bool,
}

/// What [`MetadataStore::finish_job`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The chunks are live and the job is done.
    Live,
    /// Another worker holds the job now; nothing was written.
    LeaseLost,
    /// The document was replaced by a newer version; the job is failed.
    Superseded,
    /// The document was deleted.
    Deleted,
}

/// A removed document and what went with it.
#[derive(Debug, Clone)]
pub struct DeletedDocument {
    pub document: Document,
    pub chunks: u64,
    pub jobs: u64,
    /// Whether a job was queued or running for it (a worker may still write vectors).
    pub was_indexing: bool,
}

/// A deletion not yet finished in every store.
#[derive(Debug, Clone)]
pub struct Deletion {
    pub document_id: Uuid,
    pub collection: String,
    pub deleted_at: chrono::DateTime<chrono::Utc>,
    pub attempts: i32,
}

/// One document's state as the metadata store sees it.
#[derive(Debug, Clone)]
pub struct DocumentState {
    pub id: Uuid,
    pub collection: String,
    pub version: i64,
    pub status: DocumentStatus,
    pub chunk_count: i64,
    /// Chunk rows stored for it.
    pub stored_chunks: i64,
    /// Queued or running jobs for it.
    pub active_jobs: i64,
    /// Where a separate document store keeps its original.
    pub content_ref: Option<Uuid>,
}

/// What `verify` compares against the other stores.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub documents: Vec<DocumentState>,
    /// Documents that chunk rows point at but that do not exist.
    pub orphan_chunk_documents: Vec<Uuid>,
    /// Running jobs whose lease expired more than a lease ago (no worker is on them).
    pub stuck_jobs: Vec<Uuid>,
}

/// Original uploads, parsed text and chunk text.
///
/// The metadata store is the truth for which version of a document is live. The SQL backend
/// writes originals and chunks inside the metadata store's own transactions, so its write calls
/// here have nothing left to do ([`DocumentStore::inline`] is true). A separate store (MongoDB)
/// is written around those transactions: the original before the document row that refers to it,
/// a version's chunks staged (unserved) before the fenced finish and published after it. A crash
/// between the two leaves only unreferenced or unpublished data, which `verify` finds.
#[async_trait]
pub trait DocumentStore: Send + Sync + 'static {
    /// True when the metadata store keeps originals and chunks itself (SQL).
    fn inline(&self) -> bool;
    /// Stores an upload under `content_ref`, before the metadata store refers to it.
    async fn put_original(&self, content_ref: Uuid, content: Vec<u8>) -> Result<(), StorageError>;
    /// The original bytes of `doc`.
    async fn get_original(&self, doc: &Document) -> Result<Option<Vec<u8>>, StorageError>;
    /// Removes an upload nothing refers to (a replaced one, or one whose submit failed).
    async fn delete_original(&self, content_ref: Uuid) -> Result<(), StorageError>;
    /// Writes a version's parsed text and chunks, not served until [`DocumentStore::publish`].
    async fn stage(
        &self,
        document_id: Uuid,
        version: i64,
        text: String,
        chunks: Vec<StoredChunk>,
    ) -> Result<(), StorageError>;
    /// Serves `version`'s chunks and drops those of earlier versions. A later version's staged
    /// chunks stay: its worker may be about to publish them.
    async fn publish(&self, document_id: Uuid, version: i64) -> Result<(), StorageError>;
    /// Drops the chunks and text of one version, or of every version (a failed document).
    async fn discard(&self, document_id: Uuid, version: Option<i64>) -> Result<(), StorageError>;
    /// Removes everything of a deleted document: chunks, texts and its original.
    async fn delete_document(
        &self,
        document_id: Uuid,
        content_ref: Option<Uuid>,
    ) -> Result<u64, StorageError>;
    /// The served chunks with these ids that exist, in no particular order.
    async fn get_chunks(&self, ids: Vec<Uuid>) -> Result<Vec<StoredChunk>, StorageError>;
    /// Served chunks per document, for `verify` (a separate store only; SQL counts its own rows
    /// in [`MetadataStore::inventory`]).
    async fn chunk_counts(&self) -> Result<HashMap<Uuid, i64>, StorageError>;
    /// Every stored upload id with its age, for `verify` to find unreferenced ones.
    async fn original_refs(
        &self,
    ) -> Result<Vec<(Uuid, chrono::DateTime<chrono::Utc>)>, StorageError>;
    /// Whether the store answers; `Err` names what is wrong.
    async fn health(&self) -> Result<(), StorageError>;
    fn backend(&self) -> &'static str;
}

/// Handles to every store, built once and shared by the modules.
#[derive(Clone)]
pub struct Storage {
    pub metadata: Arc<dyn MetadataStore>,
    pub security: Arc<dyn security::SecurityStore>,
    pub answers: Arc<dyn answers::AnswerStore>,
    pub webhooks: Arc<dyn webhooks::WebhookStore>,
    pub documents: Arc<dyn DocumentStore>,
    pub vectors: Arc<dyn VectorIndex>,
    pub cache: Arc<dyn Cache>,
    /// The Redis connection when `cache.redis_url` is set (the cache and the rate limiter use it).
    pub redis: Option<Arc<redis::RedisClient>>,
}

/// Deterministic chunk id: the same document version and chunk index always give the same id, so
/// a retried job overwrites its points instead of duplicating them, while two versions never share
/// an id (a stale worker cannot overwrite the live version's points).
pub fn chunk_id(document_id: Uuid, version: i64, chunk_index: u32) -> Uuid {
    let mut name = [0u8; 12];
    name[..8].copy_from_slice(&version.to_be_bytes());
    name[8..].copy_from_slice(&chunk_index.to_be_bytes());
    Uuid::new_v5(&document_id, &name)
}
