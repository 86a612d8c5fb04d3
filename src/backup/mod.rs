//! Backup and restore of every store at once: one consistent, checksummed copy of the relational
//! data, the documents and chunks, and the vector index, restorable into any backend.
//!
//! **One logical format for every backend.** A backup is read through the storage traits, not
//! with each engine's own dump tool, so a backup of the embedded defaults (SQLite, the in-process
//! vector engine) restores into PostgreSQL + MongoDB + a Qdrant server and back: it is also the
//! migration path from one container to production servers. A backup is a directory:
//!
//! - `documents.jsonl.gz`: one line per document: its row, its original upload, and for an
//!   indexed document the chunks of its live version.
//! - `vectors.jsonl.gz`: the live version's points of each indexed document (dense vector, BM25
//!   sparse vector, payload), in the same document order, so a restore streams both files in step.
//! - `security.jsonl.gz`: users (with password hashes), API keys (hashes), grants, IP blocks, the
//!   audit log and run-time rate limits. JWT signing keys and refresh tokens are left out: a
//!   restored service issues new ones, and sessions end (users log in again; API keys keep
//!   working).
//! - `manifest.json`, written last: format version, doc-rag version, backend kinds, embedding model
//!   (file, SHA-256, dimension), the snapshot time, counts, and each file's items, size and
//!   SHA-256.
//!
//! **Consistent while ingestion runs.** The snapshot time is a barrier: documents created after
//! it are left out. Each document is copied whole or not at all: an indexed document's chunks and
//! points are read by their ids, which name the version (`chunk_id`), and the document is read
//! again afterwards; if it moved on meanwhile (replaced, re-indexed, deleted) it is read again, and
//! a document still changing after three tries is backed up with its original only and re-indexed
//! after the restore, as are documents queued or indexing at the barrier. So a restore never holds
//! half a version, and `verify` comes out clean.
//!
//! **Where**: a directory, or S3-compatible storage through a local staging directory
//! ([`remote`]).
//!
//! **Restore** checks the manifest and every file's size and SHA-256 before it writes anything,
//! refuses a target that holds documents or vectors unless forced, writes each page of documents
//! to the stores in the order ingestion does (original, staged chunks, vectors, the metadata
//! transaction, publish), then runs `verify`.

mod archive;
mod export;
mod import;
pub mod remote;
pub mod service;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Settings;
use crate::storage::answers::{AnswerRecord, ConversationRecord, FeedbackRecord};
use crate::storage::security::{ApiKeyRecord, AuditRecord, GrantRecord, IpBlockRecord, UserRecord};
use crate::storage::vector::ChunkPayload;
use crate::storage::{Document, StorageError};

pub use export::backup;
pub use import::{RestoreOptions, RestoreReport, restore};

/// The manifest's `format`.
pub const FORMAT: &str = "doc-rag-backup";
/// The newest format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
const DOCUMENTS_FILE: &str = "documents.jsonl.gz";
const VECTORS_FILE: &str = "vectors.jsonl.gz";
const SECURITY_FILE: &str = "security.jsonl.gz";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Reading or writing a backup file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not a backup, or one whose manifest or layout is wrong.
    #[error("invalid backup: {0}")]
    Invalid(String),
    /// A file does not match the manifest (truncated, altered, missing).
    #[error("corrupt backup: {0}")]
    Corrupt(String),
    /// Written by a newer doc-rag, or for another embedding model.
    #[error("incompatible backup: {0}")]
    Incompatible(String),
    /// The target already holds data and `--force` was not given.
    #[error("the target is not empty: {0}")]
    NotEmpty(String),
    /// The output directory holds files already.
    #[error("{0}")]
    OutputExists(String),
    /// S3 refused or failed a request, or its configuration is incomplete.
    #[error("S3: {0}")]
    Remote(String),
    /// Another backup of this process is running.
    #[error("a backup is running already; try again when it has finished")]
    Busy,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl BackupError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        BackupError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Manifest {
    /// Always `doc-rag-backup`.
    pub format: String,
    pub format_version: u32,
    pub doc_rag_version: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// The barrier: the backup holds the documents created up to this time.
    pub snapshot_at: chrono::DateTime<chrono::Utc>,
    pub completed_at: chrono::DateTime<chrono::Utc>,
    pub backends: Backends,
    pub embedding: EmbeddingModel,
    pub counts: Counts,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Backends {
    pub metadata: String,
    pub documents: String,
    pub vectors: String,
}

/// The model the vectors were made with: restoring them for another model would rank nonsense.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingModel {
    pub file: String,
    pub sha256: String,
    pub dimension: usize,
}

impl EmbeddingModel {
    /// The configured model; its hash is read from the model file (on the blocking pool).
    pub async fn configured(settings: &Settings) -> Result<Self, BackupError> {
        use sha2::{Digest, Sha256};
        let path = settings
            .embedder
            .model_dir
            .join(&settings.embedder.model_file);
        let file = settings.embedder.model_file.clone();
        let dimension = settings.embedder.dimension;
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::open(&path).map_err(|e| BackupError::io(&path, e))?;
            let mut sha = Sha256::new();
            std::io::copy(&mut f, &mut sha).map_err(|e| BackupError::io(&path, e))?;
            Ok(Self {
                file,
                sha256: hex::encode(sha.finalize()),
                dimension,
            })
        })
        .await
        .map_err(|e| BackupError::Storage(e.into()))?
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Counts {
    pub documents: u64,
    /// Documents with their live version's chunks and vectors.
    pub indexed: u64,
    /// Documents backed up with their original only, indexed again after a restore.
    pub pending: u64,
    pub failed: u64,
    pub chunks: u64,
    pub vectors: u64,
    /// Documents created after the snapshot time, or deleted while the backup ran.
    pub left_out: u64,
    pub users: u64,
    pub api_keys: u64,
    pub grants: u64,
    pub ip_blocks: u64,
    pub audit_events: u64,
    #[serde(default)]
    pub conversations: u64,
    #[serde(default)]
    pub answers: u64,
    #[serde(default)]
    pub feedback: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileEntry {
    pub name: String,
    /// Lines (items) in the file.
    pub items: u64,
    /// Size of the compressed file.
    pub bytes: u64,
    pub sha256: String,
}

/// How a document is backed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kept {
    /// With its live version's chunks and vectors.
    Indexed,
    /// Original only: indexed again after a restore.
    Pending,
    /// Failed: original and error, no chunks.
    Failed,
}

/// One line of `documents.jsonl.gz`.
#[derive(Debug, Serialize, Deserialize)]
struct DocumentLine {
    document: Document,
    kept: Kept,
    /// The original upload, base64.
    content: String,
    chunks: Vec<ChunkLine>,
    /// Lines of `vectors.jsonl.gz` that belong to this document (they follow the previous
    /// document's).
    points: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChunkLine {
    index: i32,
    text: String,
    token_count: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
}

/// One line of `vectors.jsonl.gz`.
#[derive(Debug, Serialize, Deserialize)]
struct PointLine {
    id: Uuid,
    /// Little-endian f32s, base64: exact and a third of the size of decimal text.
    dense: String,
    sparse_indices: Vec<u32>,
    sparse_values: Vec<f32>,
    payload: ChunkPayload,
}

/// One line of `security.jsonl.gz`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum SecurityLine {
    User(UserLine),
    ApiKey(ApiKeyRecord),
    Grant(GrantRecord),
    IpBlock(IpBlockRecord),
    Audit(AuditRecord),
    RateLimits {
        json: String,
    },
    /// Conversations, the answers given (turns and standalone) and their ratings: the users' own
    /// records, kept with the users.
    Conversation(ConversationRecord),
    Answer(AnswerRecord),
    Feedback(FeedbackRecord),
}

/// A user as backed up: the record, and its password hash, which the record never serializes.
#[derive(Debug, Serialize, Deserialize)]
struct UserLine {
    #[serde(flatten)]
    user: UserRecord,
    password_hash: String,
}

impl From<UserRecord> for UserLine {
    fn from(user: UserRecord) -> Self {
        Self {
            password_hash: user.password_hash.clone(),
            user,
        }
    }
}

impl From<UserLine> for UserRecord {
    fn from(line: UserLine) -> Self {
        UserRecord {
            password_hash: line.password_hash,
            ..line.user
        }
    }
}

/// Progress of a long backup or restore, for a progress bar.
pub trait Progress: Send + Sync {
    /// `total` documents are to be handled (an estimate while a backup runs).
    fn start(&self, total: u64);
    /// `n` more documents were handled.
    fn advance(&self, n: u64);
}

/// No progress reporting (the admin API).
pub struct Quiet;

impl Progress for Quiet {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}
