//! Submission: validating an upload against the limits and storing it with its job in one
//! transaction (after its bytes, when a separate document store keeps them), so an acknowledged
//! upload is never lost.

use uuid::Uuid;

use super::parse::{self, ContentKind, ParseError};
use super::{DEFAULT_COLLECTION, IngestError, IngestService, Upload};
use crate::limits::{check_bytes, check_metadata, validate_collection};
use crate::storage::{NewDocument, Submitted};

impl IngestService {
    pub(super) async fn submit_upload(&self, upload: Upload) -> Result<Submitted, IngestError> {
        let (kind, doc) = self.validate(upload)?;
        let mut doc = precheck(kind, doc).await?;
        let collection = doc.collection.clone();
        let documents = &self.storage.documents;
        // A separate document store gets the bytes first, under a fresh id the document row
        // then refers to: a crash in between leaves an unreferenced upload (`verify` lists it),
        // never a job whose content is missing.
        if !documents.inline() {
            let content_ref = Uuid::new_v4();
            documents
                .put_original(content_ref, doc.content.clone())
                .await?;
            doc.content_ref = Some(content_ref);
        }
        let content_ref = doc.content_ref;
        let submitted = match self.storage.metadata.submit_document(doc).await {
            Ok(s) => s,
            Err(e) => {
                if let Some(r) = content_ref {
                    self.forget_original(r).await;
                }
                return Err(e.into());
            }
        };
        metrics::counter!("ingest_documents_submitted_total").increment(1);
        if let Some(previous) = submitted.previous_content_ref {
            self.forget_original(previous).await;
        }
        if submitted.replaced {
            self.storage.cache.invalidate_collection(&collection).await;
        }
        self.wake.notify_one();
        Ok(submitted)
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
        .map_err(|e| match e {
            ParseError::Empty => IngestError::Invalid("the document is empty".into()),
            ParseError::NotUtf8 => IngestError::Invalid("text documents must be UTF-8".into()),
            ParseError::Malformed(m) => IngestError::Unparseable(m),
        })
}
