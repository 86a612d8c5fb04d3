//! Submission: validating an upload against the limits and storing it with its job in one
//! transaction (after its bytes, when a separate document store keeps them), so an acknowledged
//! upload is never lost.

use std::sync::Arc;

use futures::StreamExt;
use uuid::Uuid;

use super::parse::{self, ContentKind, ParseError};
use super::{BulkSubmitted, DEFAULT_COLLECTION, IngestError, IngestService, Upload};
use crate::limits::{check_bytes, check_metadata, validate_collection};
use crate::storage::{NewBatch, NewDocument, Submitted};

/// Originals written to a separate document store at once during a bulk submission.
const STORE_CONCURRENCY: usize = 8;

impl IngestService {
    pub(super) async fn submit_upload(&self, upload: Upload) -> Result<Submitted, IngestError> {
        let (kind, doc) = self.validate(upload)?;
        let doc = precheck(kind, doc).await?;
        let mut submitted = self.store(vec![doc], None).await?;
        submitted
            .pop()
            .ok_or_else(|| IngestError::Invalid("the document was not stored".into()))
    }

    /// Stores a batch: every valid upload with its job in one transaction, under one batch id;
    /// uploads that fail validation are returned with their index and are not stored.
    pub(super) async fn submit_uploads(
        &self,
        uploads: Vec<Upload>,
    ) -> Result<BulkSubmitted, IngestError> {
        let mut rejected = Vec::new();
        let mut valid = Vec::with_capacity(uploads.len());
        for (i, upload) in uploads.into_iter().enumerate() {
            match self.validate(upload) {
                Ok(v) => valid.push((i, v)),
                Err(e) => rejected.push((i, e)),
            }
        }
        // One blocking task for the whole batch: thousands of tiny tasks cost more than the checks.
        let checked = tokio::task::spawn_blocking(move || {
            valid
                .into_iter()
                .map(|(i, (kind, doc))| (i, parse::precheck(kind, &doc.content).map(|()| doc)))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| IngestError::Invalid(format!("cannot check the documents: {e}")))?;
        let mut indexes = Vec::with_capacity(checked.len());
        let mut docs = Vec::with_capacity(checked.len());
        for (i, outcome) in checked {
            match outcome {
                Ok(doc) => {
                    indexes.push(i);
                    docs.push(doc);
                }
                Err(e) => rejected.push((i, precheck_error(e))),
            }
        }
        rejected.sort_by_key(|(i, _)| *i);
        if docs.is_empty() {
            return Ok(BulkSubmitted {
                batch_id: None,
                submitted: Vec::new(),
                rejected,
            });
        }
        let mut collections: Vec<String> = docs.iter().map(|d| d.collection.clone()).collect();
        collections.sort();
        collections.dedup();
        let batch = NewBatch {
            id: Uuid::new_v4(),
            collections,
            total: docs.len() as i64,
        };
        let batch_id = batch.id;
        let submitted = self.store(docs, Some(batch)).await?;
        metrics::counter!("ingest_batches_submitted_total").increment(1);
        Ok(BulkSubmitted {
            batch_id: Some(batch_id),
            submitted: indexes.into_iter().zip(submitted).collect(),
            rejected,
        })
    }

    /// Stores checked documents with their jobs in one transaction (after their bytes, when a
    /// separate document store keeps them), then lets go of what they replaced and wakes the
    /// workers. Shared by single and bulk uploads.
    async fn store(
        &self,
        mut docs: Vec<NewDocument>,
        batch: Option<NewBatch>,
    ) -> Result<Vec<Submitted>, IngestError> {
        // A separate document store gets the bytes first, under fresh ids the document rows then
        // refer to: a crash in between leaves unreferenced uploads (`verify` lists them), never a
        // job whose content is missing.
        let mut write_error = None;
        if !self.storage.documents.inline() {
            // Owned futures (the store handle, the bytes, the id): borrowed ones trip the
            // higher-ranked lifetimes of the async trait.
            let writes: Vec<_> = docs
                .iter()
                .map(|doc| {
                    let store = Arc::clone(&self.storage.documents);
                    let (content_ref, content) = (Uuid::new_v4(), doc.content.clone());
                    async move {
                        store
                            .put_original(content_ref, content)
                            .await
                            .map(|()| content_ref)
                    }
                })
                .collect();
            let stored: Vec<_> = futures::stream::iter(writes)
                .buffered(STORE_CONCURRENCY)
                .collect()
                .await;
            for (doc, result) in docs.iter_mut().zip(stored) {
                match result {
                    Ok(content_ref) => doc.content_ref = Some(content_ref),
                    Err(e) => {
                        write_error.get_or_insert(e);
                    }
                }
            }
        }
        let written: Vec<Uuid> = docs.iter().filter_map(|d| d.content_ref).collect();
        if let Some(e) = write_error {
            self.forget_originals(&written).await;
            return Err(e.into());
        }
        let collections: Vec<String> = docs.iter().map(|d| d.collection.clone()).collect();
        let n = docs.len();
        let submitted = match self.storage.metadata.submit_documents(docs, batch).await {
            Ok(s) => s,
            Err(e) => {
                self.forget_originals(&written).await;
                return Err(e.into());
            }
        };
        metrics::counter!("ingest_documents_submitted_total").increment(submitted.len() as u64);
        for previous in submitted.iter().filter_map(|s| s.previous_content_ref) {
            self.forget_original(previous).await;
        }
        // A replaced document's old text stops being served now; a new document only appears
        // once its job finishes (which invalidates again).
        let mut replaced_in: Vec<&String> = submitted
            .iter()
            .zip(&collections)
            .filter(|(s, _)| s.replaced)
            .map(|(_, c)| c)
            .collect();
        replaced_in.sort();
        replaced_in.dedup();
        for collection in replaced_in {
            self.storage.cache.invalidate_collection(collection).await;
        }
        if n > 1 {
            // Every idle worker: a batch is work for all of them.
            self.wake.notify_waiters();
        }
        self.wake.notify_one();
        Ok(submitted)
    }

    async fn forget_originals(&self, content_refs: &[Uuid]) {
        for &r in content_refs {
            self.forget_original(r).await;
        }
    }

    /// Removes an upload nothing refers to; one left behind only costs space until `verify
    /// --repair`.
    async fn forget_original(&self, content_ref: Uuid) {
        if let Err(e) = self.storage.documents.delete_original(content_ref).await {
            tracing::warn!(module = "ingest", %content_ref, error = %e, "cannot remove an unreferenced upload; verify --repair will");
        }
    }

    /// Checks everything but the content itself (see [`precheck`]).
    fn validate(&self, upload: Upload) -> Result<(ContentKind, NewDocument), IngestError> {
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
        // Passage corpora (MS MARCO, say) have no titles: an untitled document is indexed by its
        // text alone and cited by its file name, if it came with one.
        let title = upload
            .title
            .filter(|t| !t.trim().is_empty())
            .or(upload.file_name)
            .unwrap_or_default();
        check_bytes(
            "title",
            "title_max_bytes",
            self.limits.title_max_bytes,
            title.len(),
        )?;
        Ok((
            kind,
            NewDocument {
                collection,
                external_id: upload.external_id,
                title: title.trim().to_string(),
                content_type: kind.mime().to_string(),
                metadata: upload.metadata.unwrap_or_default(),
                content: upload.content,
                content_ref: None,
                request_id: upload.request_id,
            },
        ))
    }
}

/// The cheap content check (a PDF header, UTF-8 text) that refuses obviously bad uploads at once.
/// It never parses a document (that happens in the sandbox), but decoding a large text upload
/// still takes a while, so it runs off the async executor.
async fn precheck(kind: ContentKind, doc: NewDocument) -> Result<NewDocument, IngestError> {
    tokio::task::spawn_blocking(move || parse::precheck(kind, &doc.content).map(|()| doc))
        .await
        .map_err(|e| IngestError::Invalid(format!("cannot check the document: {e}")))?
        .map_err(precheck_error)
}

fn precheck_error(e: ParseError) -> IngestError {
    match e {
        ParseError::Empty => IngestError::Invalid("the document is empty".into()),
        ParseError::NotUtf8 => IngestError::Invalid("text documents must be UTF-8".into()),
        ParseError::Malformed(m) => IngestError::Unparseable(m),
    }
}
