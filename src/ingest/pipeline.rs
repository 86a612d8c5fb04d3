//! One attempt at a batch of jobs: parse (HTML and PDF sandboxed) → chunk → embed → index →
//! fenced finish.
//!
//! Vectors are written first, tagged with the document version, under ids unique to that version;
//! the chunk text goes live with the job's completion in one transaction that checks the lease
//! and the version ([`MetadataStore::finish_job`](crate::storage::MetadataStore::finish_job)).
//! With a separate document store (MongoDB) the text is published just before that transaction,
//! while the version is still the document's, so a job never reads `done` before its text is
//! served (an outage in between postpones the job instead). Searches return only hits whose chunk
//! text exists, so vectors written by a worker that then loses the race are never served; the
//! loser removes them, and `verify` finds any a crash left.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use super::IngestService;
use super::chunk::TextChunk;
use super::parse::ContentKind;
use super::sandbox::{SandboxError, parse_checked};
use super::worker::{FailureReason, JobFailure};
use crate::embedder::{EmbedError, Priority};
use crate::limits::check_count;
use crate::storage::vector::{ChunkPayload, IndexPoint};
use crate::storage::{
    ClaimedJob, Document, Finish, FinishedChunks, StorageError, StoredChunk, chunk_id,
};

/// Points written to the vector index in one call.
const UPSERT_BATCH: usize = 1024;

/// A job's document, parsed and chunked, waiting for its vectors.
struct Prepared {
    doc: Document,
    text: String,
    chunks: Vec<TextChunk>,
}

/// The outcome of one job of a batch: chunks made live, or why not.
pub(super) type Outcome = Result<usize, JobFailure>;

impl IngestService {
    /// Processes claimed jobs together: each document is parsed and chunked on its own, then
    /// every chunk of the batch is embedded in one request (so the model sees full batches of
    /// texts of similar length), the vectors are written in one call (one flush of the index's
    /// log) and the jobs are finished in one transaction. One outcome per job, in order; a
    /// document that fails alone fails alone.
    pub(super) async fn process_batch(&self, jobs: &[ClaimedJob]) -> Vec<Outcome> {
        let prepared = futures::future::join_all(jobs.iter().map(|job| self.prepare(job))).await;
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(jobs.len());
        let mut ready: Vec<(usize, Prepared)> = Vec::new();
        for (i, p) in prepared.into_iter().enumerate() {
            match p {
                Ok(Some(p)) => {
                    outcomes.push(None);
                    ready.push((i, p));
                }
                Ok(None) => outcomes.push(Some(Ok(0))),
                Err(f) => outcomes.push(Some(Err(f))),
            }
        }
        if !ready.is_empty() {
            let indexed = self.index(jobs, ready).await;
            for (i, outcome) in indexed {
                outcomes[i] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(JobFailure::transient("the job was not processed"))))
            .collect()
    }

    /// Loads, parses and chunks one job's document. `None`: the job is settled already (a newer
    /// upload replaced this version before work began).
    async fn prepare(&self, job: &ClaimedJob) -> Result<Option<Prepared>, JobFailure> {
        let storage = &self.storage;
        let Some(doc) = storage.metadata.get_document(job.document_id).await? else {
            return Err(
                JobFailure::permanent("the document was deleted").because(FailureReason::Deleted)
            );
        };
        if doc.version != job.document_version {
            storage
                .metadata
                .finish_job(job, &self.worker_id, FinishedChunks::Inline(Vec::new()))
                .await?;
            return Ok(None);
        }
        let Some(bytes) = storage.documents.get_original(&doc).await? else {
            return Err(JobFailure::permanent("the document's content is missing"));
        };
        let kind = ContentKind::from_mime(&doc.content_type).ok_or_else(|| {
            JobFailure::permanent(format!("unsupported content type {}", doc.content_type))
                .because(FailureReason::Parse)
        })?;
        let max_text = self.limits.extracted_text_max_bytes;
        // Text and Markdown only need decoding, which cannot crash or balloon: no child process
        // round trip for them. HTML and PDF parsers can, so they run sandboxed.
        let sandboxed = matches!(kind, ContentKind::Html | ContentKind::Pdf);
        let started = Instant::now();
        let parsed = if sandboxed {
            Some(
                self.parser
                    .parse(kind, &bytes, max_text)
                    .await
                    .map_err(|e| match e {
                        SandboxError::Unavailable(_) => {
                            JobFailure::transient(e.to_string()).because(FailureReason::Dependency)
                        }
                        SandboxError::Document(_) | SandboxError::Killed(_) => {
                            JobFailure::permanent(e.to_string()).because(FailureReason::Parse)
                        }
                    })?,
            )
        } else {
            None
        };
        let chunker = Arc::clone(&self.chunker);
        let (text, chunks) = tokio::task::spawn_blocking(move || {
            let parsed = match parsed {
                Some(p) => p,
                None => parse_checked(kind, &bytes, max_text)
                    .map_err(|e| JobFailure::permanent(e).because(FailureReason::Parse))?,
            };
            record_stage("parse", started);
            let chunking = Instant::now();
            let chunks = chunker.chunk(&parsed.text, parsed.markdown);
            record_stage("chunk", chunking);
            Ok::<_, JobFailure>((parsed.text, chunks))
        })
        .await
        .map_err(|e| JobFailure::transient(e.to_string()))??;
        check_count(
            "the document's chunks",
            "chunks_per_document_max",
            self.limits.chunks_per_document_max,
            chunks.len(),
        )
        .map_err(|e| JobFailure::permanent(e.to_string()).because(FailureReason::TooLarge))?;
        if chunks.is_empty() {
            return Err(
                JobFailure::permanent("the document has no text").because(FailureReason::Empty)
            );
        }
        Ok(Some(Prepared { doc, text, chunks }))
    }

    /// Embeds, indexes and finishes the prepared documents of a batch; outcomes by job index.
    async fn index(
        &self,
        jobs: &[ClaimedJob],
        ready: Vec<(usize, Prepared)>,
    ) -> Vec<(usize, Outcome)> {
        let all_fail = |ready: &[(usize, Prepared)], f: JobFailure| {
            ready
                .iter()
                .map(|(i, _)| (*i, Err(f.clone())))
                .collect::<Vec<_>>()
        };
        let texts: Vec<String> = ready
            .iter()
            .flat_map(|(_, p)| p.chunks.iter().map(|c| indexed_text(&p.doc.title, &c.text)))
            .collect();
        let embedding = Instant::now();
        let vectors = match self.vectors_for(texts).await {
            Ok(v) => v,
            Err(f) => return all_fail(&ready, f),
        };
        let (mut dense, mut sparse) = (vectors.0.into_iter(), vectors.1.into_iter());
        let mut points = Vec::new();
        for (_, p) in &ready {
            let doc = &p.doc;
            for c in &p.chunks {
                let (Some(dense), Some(sparse)) = (dense.next(), sparse.next()) else {
                    return all_fail(&ready, JobFailure::transient("the embedder lost vectors"));
                };
                points.push(IndexPoint {
                    id: chunk_id(doc.id, doc.version, c.index),
                    dense,
                    sparse,
                    payload: ChunkPayload {
                        document_id: doc.id,
                        collection: doc.collection.clone(),
                        chunk_index: c.index,
                        version: doc.version,
                        title: doc.title.clone(),
                        metadata: doc.metadata.clone(),
                    },
                });
            }
        }
        record_stage("embed", embedding);
        let indexing = Instant::now();
        let mut points = points.into_iter().peekable();
        while points.peek().is_some() {
            let batch: Vec<IndexPoint> = points.by_ref().take(UPSERT_BATCH).collect();
            if let Err(e) = self.storage.vectors.upsert(batch).await {
                return all_fail(&ready, e.into());
            }
        }

        record_stage("index", indexing);
        let finishing_started = Instant::now();
        let mut out = Vec::with_capacity(ready.len());
        // Per job to finish: its index, chunk count and collection; the jobs and their chunks go
        // to the store as they are.
        let mut finishing: Vec<(usize, usize, String)> = Vec::with_capacity(ready.len());
        let mut to_finish = Vec::with_capacity(ready.len());
        for (i, p) in ready {
            match self.finished_chunks(p).await {
                Ok((chunks, n, collection)) => {
                    finishing.push((i, n, collection));
                    to_finish.push((jobs[i].clone(), chunks));
                }
                Err(e) => out.push((i, Err(e.into()))),
            }
        }
        let finishes = match self
            .storage
            .metadata
            .finish_jobs(&self.worker_id, to_finish)
            .await
        {
            Ok(f) => f,
            Err(e) => {
                let failure: JobFailure = e.into();
                out.extend(finishing.iter().map(|(i, ..)| (*i, Err(failure.clone()))));
                return out;
            }
        };
        record_stage("finish", finishing_started);
        let settled: Vec<(&ClaimedJob, Finish, &str)> = finishing
            .iter()
            .zip(&finishes)
            .map(|((i, _, collection), f)| (&jobs[*i], *f, collection.as_str()))
            .collect();
        self.after_finish(&settled).await;
        for ((i, n, _), finish) in finishing.iter().zip(finishes) {
            out.push((
                *i,
                match finish {
                    Finish::Live => Ok(*n),
                    Finish::LeaseLost => Err(JobFailure::transient("lost the job lease")),
                    Finish::Superseded => Ok(0),
                    Finish::Deleted => Err(JobFailure::permanent("the document was deleted")),
                },
            ));
        }
        out
    }

    /// Dense vectors from the model and BM25 vectors, one of each per text, in order. Requests
    /// are no larger than the embedder takes, so a long document indexes, slowly.
    async fn vectors_for(
        &self,
        texts: Vec<String>,
    ) -> Result<(Vec<Vec<f32>>, Vec<crate::storage::vector::SparseVec>), JobFailure> {
        let bm25 = Arc::clone(&self.bm25);
        let max = self.embedder.max_texts().max(1);
        let requests: Vec<Vec<String>> = texts.chunks(max).map(<[String]>::to_vec).collect();
        // BM25 runs beside the model instead of after it.
        let sparse = tokio::task::spawn_blocking(move || {
            texts.iter().map(|t| bm25.document(t)).collect::<Vec<_>>()
        });
        let mut dense = Vec::new();
        for request in requests {
            let vectors = self
                .embedder
                .embed(request, Priority::Ingest)
                .await
                .map_err(|e| match e {
                    EmbedError::TooMany(..) => {
                        JobFailure::permanent(e.to_string()).because(FailureReason::TooLarge)
                    }
                    other => JobFailure::transient(other.to_string()),
                })?;
            dense.extend(vectors);
        }
        let sparse = sparse
            .await
            .map_err(|e| JobFailure::transient(e.to_string()))?;
        Ok((dense, sparse))
    }

    /// What the finish makes live: the chunk rows (SQL documents), or chunks already published in
    /// the separate document store. Also the chunk count and the collection.
    async fn finished_chunks(
        &self,
        p: Prepared,
    ) -> Result<(FinishedChunks, usize, String), StorageError> {
        let Prepared { doc, text, chunks } = p;
        let stored: Vec<StoredChunk> = chunks
            .into_iter()
            .map(|c| StoredChunk {
                id: chunk_id(doc.id, doc.version, c.index),
                document_id: doc.id,
                chunk_index: c.index as i32,
                text: c.text,
                token_count: c.token_count as i32,
                offset: Some(c.start as u64),
            })
            .collect();
        let n = stored.len();
        if self.storage.documents.inline() {
            return Ok((FinishedChunks::Inline(stored), n, doc.collection));
        }
        let documents = &self.storage.documents;
        documents.stage(doc.id, doc.version, text, stored).await?;
        // Served before the finish says `done`. A version replaced meanwhile is not published
        // (its finish reads `Superseded` and discards it); one replaced between this check and
        // the finish is served only until that discard.
        let current = self.storage.metadata.get_document(doc.id).await?;
        if current.is_some_and(|d| d.version == doc.version) {
            documents.publish(doc.id, doc.version).await?;
        }
        Ok((FinishedChunks::Stored(n as i64), n, doc.collection))
    }

    /// Brings the document store and the vector index in line with what the finish decided. A
    /// failure here leaves only stale chunks or points behind, which `verify --repair` removes.
    async fn after_finish(&self, settled: &[(&ClaimedJob, Finish, &str)]) {
        let documents = &self.storage.documents;
        for &(job, finish, ..) in settled {
            let (doc, version) = (job.document_id, job.document_version);
            let outcome = match finish {
                // Published before the finish; another worker holding the job writes the same
                // chunks.
                Finish::Live | Finish::LeaseLost => Ok(()),
                Finish::Superseded => documents.discard(doc, Some(version)).await,
                Finish::Deleted => documents.delete_document(doc, None).await.map(drop),
            };
            if let Err(e) = outcome {
                tracing::warn!(document_id = %doc, error = %e, ?finish, "cannot settle the staged chunks; verify --repair will");
            }
        }
        // First, before the slower vector clean-up: the jobs read "done" from now on, and a
        // client that saw one must not be served a result cached before the new text. Once per
        // collection: the batch went live in one transaction.
        // A superseded version may have been served (published) for a moment: its collection's
        // cached results go too.
        let live: BTreeSet<&str> = settled
            .iter()
            .filter(|(_, finish, _)| matches!(finish, Finish::Live | Finish::Superseded))
            .map(|(.., collection)| *collection)
            .collect();
        for collection in live {
            self.storage.cache.invalidate_collection(collection).await;
        }
        let vectors = &self.storage.vectors;
        for &(job, finish, ..) in settled {
            let (doc, version) = (job.document_id, job.document_version);
            let cleaned = match finish {
                // Earlier versions' points (and those of any stale worker) go. A first version
                // on its first attempt has none.
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
                tracing::warn!(document_id = %doc, error = %e, ?finish, "cannot remove superseded vectors; verify --repair removes them");
            }
        }
    }
}

/// What the retrievers see of a chunk: the title gives it context (a chunk deep in a document
/// rarely names its subject); an untitled document's chunks stand alone.
pub fn indexed_text(title: &str, chunk: &str) -> String {
    if title.is_empty() {
        chunk.to_string()
    } else {
        format!("{title}\n{chunk}")
    }
}

/// `ingest_stage_seconds{stage}`: parse and chunk per document; embed, index and finish per
/// batch of jobs.
fn record_stage(stage: &'static str, started: Instant) {
    metrics::histogram!("ingest_stage_seconds", "stage" => stage)
        .record(started.elapsed().as_secs_f64());
}
