//! One attempt at a job: parse (sandboxed) → chunk → embed → index → fenced finish.
//!
//! Vectors are written first, tagged with the document version, under ids unique to that version;
//! the chunk text goes live with the job's completion in one transaction that checks the lease
//! and the version ([`MetadataStore::finish_job`](crate::storage::MetadataStore::finish_job)).
//! Searches return only hits whose chunk text exists, so vectors written by a worker that then
//! loses the race are never served; the loser removes them, and `verify` finds any a crash left.

use std::sync::Arc;

use super::IngestService;
use super::parse::ContentKind;
use super::sandbox::SandboxError;
use super::worker::JobFailure;
use crate::embedder::{EmbedError, Priority};
use crate::limits::check_count;
use crate::storage::vector::{ChunkPayload, IndexPoint};
use crate::storage::{ClaimedJob, Finish, FinishedChunks, StoredChunk, chunk_id};

impl IngestService {
    /// Returns the number of chunks made live.
    pub(super) async fn process(&self, job: &ClaimedJob) -> Result<usize, JobFailure> {
        let storage = &self.storage;
        let Some(doc) = storage.metadata.get_document(job.document_id).await? else {
            return Err(JobFailure::permanent("the document was deleted"));
        };
        if doc.version != job.document_version {
            // A newer upload replaced this version before work began.
            storage
                .metadata
                .finish_job(job, &self.worker_id, FinishedChunks::Inline(Vec::new()))
                .await?;
            return Ok(0);
        }
        let Some(bytes) = storage.documents.get_original(&doc).await? else {
            return Err(JobFailure::permanent("the document's content is missing"));
        };
        let kind = ContentKind::from_mime(&doc.content_type).ok_or_else(|| {
            JobFailure::permanent(format!("unsupported content type {}", doc.content_type))
        })?;
        let parsed = self
            .parser
            .parse(kind, &bytes, self.limits.extracted_text_max_bytes)
            .await
            .map_err(|e| match e {
                SandboxError::Unavailable(_) => JobFailure::transient(e.to_string()),
                SandboxError::Document(_) | SandboxError::Killed(_) => {
                    JobFailure::permanent(e.to_string())
                }
            })?;
        drop(bytes);
        let chunker = Arc::clone(&self.chunker);
        let (text, chunks) = tokio::task::spawn_blocking(move || {
            let chunks = chunker.chunk(&parsed.text, parsed.markdown);
            (parsed.text, chunks)
        })
        .await
        .map_err(|e| JobFailure::transient(e.to_string()))?;
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

        let version = doc.version;
        let points: Vec<IndexPoint> = chunks
            .iter()
            .zip(dense)
            .zip(sparse)
            .map(|((c, dense), sparse)| IndexPoint {
                id: chunk_id(doc.id, version, c.index),
                dense,
                sparse,
                payload: ChunkPayload {
                    document_id: doc.id,
                    collection: doc.collection.clone(),
                    chunk_index: c.index,
                    version,
                    title: doc.title.clone(),
                    metadata: doc.metadata.clone(),
                },
            })
            .collect();
        let stored: Vec<StoredChunk> = chunks
            .iter()
            .map(|c| StoredChunk {
                id: chunk_id(doc.id, version, c.index),
                document_id: doc.id,
                chunk_index: c.index as i32,
                text: c.text.clone(),
                token_count: c.token_count as i32,
                offset: Some(c.start as u64),
            })
            .collect();
        let n = points.len();
        for batch in points.chunks(256) {
            storage.vectors.upsert(batch.to_vec()).await?;
        }
        let chunks = if storage.documents.inline() {
            drop(text);
            FinishedChunks::Inline(stored)
        } else {
            // Staged unserved; the fenced finish decides whether they go live.
            storage
                .documents
                .stage(doc.id, version, text, stored)
                .await?;
            FinishedChunks::Stored(n as i64)
        };
        let finish = storage
            .metadata
            .finish_job(job, &self.worker_id, chunks)
            .await?;
        self.after_finish(job, finish, &doc.collection).await;
        match finish {
            Finish::Live => Ok(n),
            Finish::LeaseLost => Err(JobFailure::transient("lost the job lease")),
            Finish::Superseded => Ok(0),
            Finish::Deleted => Err(JobFailure::permanent("the document was deleted")),
        }
    }

    /// Brings the document store and the vector index in line with what the finish decided. A
    /// failure here leaves only unserved chunks or points behind, which `verify --repair` removes;
    /// a live version that cannot be published is queued again at once.
    async fn after_finish(&self, job: &ClaimedJob, finish: Finish, collection: &str) {
        let documents = &self.storage.documents;
        let (doc, version) = (job.document_id, job.document_version);
        let settled = match finish {
            Finish::Live => match documents.publish(doc, version).await {
                Ok(()) => Ok(()),
                // The version is live in the database but its text is not served: queue the
                // document again (durably), so it is published once the store answers.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot publish the chunks; the document is queued again");
                    self.storage.metadata.reindex(doc).await.map(drop)
                }
            },
            Finish::LeaseLost => Ok(()),
            Finish::Superseded => documents.discard(doc, Some(version)).await,
            Finish::Deleted => documents.delete_document(doc, None).await.map(drop),
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, ?finish, "cannot settle the staged chunks; verify --repair will");
        }
        if finish == Finish::Live {
            // First, before the slower vector clean-up: the job reads "done" from now on, and a
            // client that saw it must not be served a result cached before the new text.
            self.storage.cache.invalidate_collection(collection).await;
        }
        let vectors = &self.storage.vectors;
        let cleaned = match finish {
            // Earlier versions' points (and those of any stale worker) go. A first version on
            // its first attempt has none.
            Finish::Live if version > 1 || job.attempts > 1 => {
                vectors.delete_other_versions(doc, version).await
            }
            Finish::Live => Ok(()),
            // Another worker holds the job and writes the same points: leave them.
            Finish::LeaseLost => Ok(()),
            Finish::Superseded => vectors.delete_version(doc, version).await,
            Finish::Deleted => vectors.delete_document(doc).await.map(drop),
        };
        if let Err(e) = cleaned {
            tracing::warn!(error = %e, ?finish, "cannot remove superseded vectors; verify --repair removes them");
        }
    }
}
