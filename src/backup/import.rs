//! Restoring a backup: every file is checked against the manifest first, then documents are
//! written a page at a time in ingestion's order (original, staged chunks, vectors, the metadata
//! transaction, publish), the security data after them, and `verify` runs at the end.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use uuid::Uuid;

use super::archive::{LineReader, check_file, read_manifest};
use super::{
    BackupError, DOCUMENTS_FILE, DocumentLine, EmbeddingModel, Kept, Manifest, PointLine, Progress,
    SECURITY_FILE, SecurityLine, VECTORS_FILE,
};
use crate::config::Settings;
use crate::storage::security::UserRecord;
use crate::storage::vector::{IndexPoint, SparseVec};
use crate::storage::verify::VerifyReport;
use crate::storage::{DocumentStatus, RestoredDocument, Storage, StorageError, StoredChunk};

/// Documents written per metadata transaction.
const PAGE: usize = 128;

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore into stores that hold documents already: a backed-up document replaces one with
    /// the same id.
    pub force: bool,
    /// Leave the vectors out and index every document again (another embedding model, or a
    /// backup whose vectors are not wanted).
    pub skip_vectors: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RestoreReport {
    pub manifest: Manifest,
    pub documents: u64,
    pub chunks: u64,
    pub vectors: u64,
    /// Documents queued to be indexed again (pending in the backup, or `skip_vectors`).
    pub queued: u64,
    /// Documents of the target replaced (`force`).
    pub replaced: u64,
    pub users: u64,
    pub api_keys: u64,
    pub grants: u64,
    pub ip_blocks: u64,
    pub audit_events: u64,
    pub conversations: u64,
    pub answers: u64,
    pub feedback: u64,
    /// Security records the target had already (same id or email), kept as they were.
    pub skipped: Vec<String>,
    /// `verify` of the restored stores.
    pub verify: VerifyReport,
}

/// Checks the backup in `from`, then restores it into `storage`.
pub async fn restore(
    storage: &Storage,
    settings: &Settings,
    from: &Path,
    options: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreReport, BackupError> {
    let dir = from.to_path_buf();
    let manifest = tokio::task::spawn_blocking(move || -> Result<Manifest, BackupError> {
        let manifest = read_manifest(&dir)?;
        for name in [DOCUMENTS_FILE, VECTORS_FILE, SECURITY_FILE] {
            let entry = manifest
                .files
                .iter()
                .find(|f| f.name == name)
                .ok_or_else(|| BackupError::Invalid(format!("the manifest lists no {name}")))?;
            check_file(&dir, entry)?;
        }
        Ok(manifest)
    })
    .await
    .map_err(|e| BackupError::Storage(e.into()))??;

    if !options.skip_vectors {
        let configured = EmbeddingModel::configured(settings).await?;
        if configured.dimension != manifest.embedding.dimension
            || configured.sha256 != manifest.embedding.sha256
        {
            return Err(BackupError::Incompatible(format!(
                "the vectors were made by {} (dimension {}, sha256 {}), the configured model is {} \
                 (dimension {}, sha256 {}): restore with --skip-vectors to index every document \
                 again with the configured model",
                manifest.embedding.file,
                manifest.embedding.dimension,
                manifest.embedding.sha256,
                configured.file,
                configured.dimension,
                configured.sha256
            )));
        }
    }
    if !options.force {
        let documents = storage.metadata.stats().await?.documents;
        let vectors = storage.vectors.count().await?;
        if documents > 0 || vectors > 0 {
            return Err(BackupError::NotEmpty(format!(
                "it holds {documents} documents and {vectors} vectors; restore into empty stores, \
                 or pass --force to replace documents with the backup's"
            )));
        }
    }

    let mut report = RestoreReport {
        manifest: manifest.clone(),
        documents: 0,
        chunks: 0,
        vectors: 0,
        queued: 0,
        replaced: 0,
        users: 0,
        api_keys: 0,
        grants: 0,
        ip_blocks: 0,
        audit_events: 0,
        conversations: 0,
        answers: 0,
        feedback: 0,
        skipped: Vec::new(),
        verify: VerifyReport::default(),
    };
    progress.start(manifest.counts.documents);
    let mut documents = Some(LineReader::<DocumentLine>::open(from, DOCUMENTS_FILE)?);
    let mut vectors = Some(LineReader::<PointLine>::open(from, VECTORS_FILE)?);
    loop {
        let (d, v) = (
            documents.take().ok_or_else(lost)?,
            vectors.take().ok_or_else(lost)?,
        );
        let (d, v, page) = tokio::task::spawn_blocking(move || {
            let (mut d, mut v) = (d, v);
            let page = read_page(&mut d, &mut v);
            (d, v, page)
        })
        .await
        .map_err(|e| BackupError::Storage(e.into()))?;
        documents = Some(d);
        vectors = Some(v);
        let page = page?;
        if page.is_empty() {
            break;
        }
        let n = page.len() as u64;
        write_page(storage, page, options, &mut report).await?;
        progress.advance(n);
    }
    if report.documents != manifest.counts.documents {
        return Err(BackupError::Corrupt(format!(
            "{DOCUMENTS_FILE} holds {} documents, the manifest says {}",
            report.documents, manifest.counts.documents
        )));
    }
    restore_security(storage, from, &mut report).await?;
    report.verify = crate::storage::verify::verify(storage, false).await?;
    Ok(report)
}

fn lost() -> BackupError {
    BackupError::Invalid("a backup file reader was lost after a failed read".into())
}

/// The next page of documents with their points.
fn read_page(
    documents: &mut LineReader<DocumentLine>,
    vectors: &mut LineReader<PointLine>,
) -> Result<Vec<(DocumentLine, Vec<PointLine>)>, BackupError> {
    let mut page = Vec::with_capacity(PAGE);
    while page.len() < PAGE {
        let Some(doc) = documents.next_item()? else {
            break;
        };
        let mut points = Vec::with_capacity(doc.points as usize);
        for _ in 0..doc.points {
            let point = vectors.next_item()?.ok_or_else(|| {
                BackupError::Corrupt(format!(
                    "{VECTORS_FILE} ends before the points of document {}",
                    doc.document.id
                ))
            })?;
            if point.payload.document_id != doc.document.id {
                return Err(BackupError::Corrupt(format!(
                    "{VECTORS_FILE}: point {} belongs to document {}, expected {}",
                    point.id, point.payload.document_id, doc.document.id
                )));
            }
            points.push(point);
        }
        page.push((doc, points));
    }
    Ok(page)
}

/// One page into the stores, in ingestion's order: a crash part-way leaves only what `verify`
/// finds and repairs (unreferenced originals, unpublished chunks, vectors without a document).
async fn write_page(
    storage: &Storage,
    page: Vec<(DocumentLine, Vec<PointLine>)>,
    options: &RestoreOptions,
    report: &mut RestoreReport,
) -> Result<(), BackupError> {
    let inline = storage.documents.inline();
    let mut restored = Vec::with_capacity(page.len());
    let mut points = Vec::new();
    let mut publish = Vec::new();
    for (line, line_points) in page {
        let mut document = line.document;
        let content = BASE64.decode(line.content.as_bytes()).map_err(|e| {
            BackupError::Corrupt(format!("document {}: original: {e}", document.id))
        })?;
        if options.force && storage.metadata.get_document(document.id).await?.is_some() {
            replace(storage, document.id).await?;
            report.replaced += 1;
        }
        let indexed = line.kept == Kept::Indexed && !options.skip_vectors;
        let queue_job = match line.kept {
            Kept::Indexed => options.skip_vectors,
            Kept::Pending => true,
            Kept::Failed => false,
        };
        if line.kept == Kept::Failed {
            document.status = DocumentStatus::Failed;
        }
        let chunks: Vec<StoredChunk> = if indexed {
            line.chunks
                .into_iter()
                .map(|c| StoredChunk {
                    id: crate::storage::chunk_id(document.id, document.version, c.index as u32),
                    document_id: document.id,
                    chunk_index: c.index,
                    text: c.text,
                    token_count: c.token_count,
                    offset: c.offset,
                })
                .collect()
        } else {
            Vec::new()
        };
        report.chunks += chunks.len() as u64;
        if indexed {
            for p in line_points {
                points.push(index_point(p)?);
            }
        }
        document.content_ref = None;
        let (content, chunks) = if inline {
            (Some(content), chunks)
        } else {
            let content_ref = Uuid::new_v4();
            storage.documents.put_original(content_ref, content).await?;
            document.content_ref = Some(content_ref);
            if indexed {
                let text = parsed_text(&chunks);
                storage
                    .documents
                    .stage(document.id, document.version, text, chunks)
                    .await?;
                publish.push((document.id, document.version));
            }
            (None, Vec::new())
        };
        if queue_job {
            report.queued += 1;
        }
        report.documents += 1;
        restored.push(RestoredDocument {
            document,
            content,
            chunks,
            queue_job,
        });
    }
    report.vectors += points.len() as u64;
    storage.vectors.upsert(points).await?;
    storage.metadata.restore_documents(restored).await?;
    for (id, version) in publish {
        storage.documents.publish(id, version).await?;
    }
    Ok(())
}

/// Removes a target document the backup replaces, from every store.
async fn replace(storage: &Storage, id: Uuid) -> Result<(), StorageError> {
    if let Some(deleted) = storage.metadata.delete_document(id).await? {
        storage.vectors.delete_document(id).await?;
        storage
            .documents
            .delete_document(id, deleted.document.content_ref)
            .await?;
        storage.metadata.settle_deletion(id, Ok(())).await?;
    }
    Ok(())
}

/// A version's parsed text from its chunks (a separate document store keeps it beside them):
/// each chunk at its byte offset when known, else the chunks one after the other.
fn parsed_text(chunks: &[StoredChunk]) -> String {
    let mut text = String::new();
    for c in chunks {
        match c.offset {
            Some(offset) if offset as usize <= text.len() => {
                let end = offset as usize + c.text.len();
                if end > text.len() && text.is_char_boundary(offset as usize) {
                    let overlap = text.len() - offset as usize;
                    if c.text.is_char_boundary(overlap) {
                        text.push_str(&c.text[overlap..]);
                        continue;
                    }
                }
                if end <= text.len() {
                    continue;
                }
                text.push_str(&c.text);
            }
            _ => {
                if !text.is_empty() {
                    text.push_str("\n\n");
                }
                text.push_str(&c.text);
            }
        }
    }
    text
}

fn index_point(p: PointLine) -> Result<IndexPoint, BackupError> {
    let bytes = BASE64
        .decode(p.dense.as_bytes())
        .map_err(|e| BackupError::Corrupt(format!("point {}: dense vector: {e}", p.id)))?;
    if bytes.len() % 4 != 0 {
        return Err(BackupError::Corrupt(format!(
            "point {}: dense vector of {} bytes",
            p.id,
            bytes.len()
        )));
    }
    let dense = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(IndexPoint {
        id: p.id,
        dense,
        sparse: SparseVec {
            indices: p.sparse_indices,
            values: p.sparse_values,
        },
        payload: p.payload,
    })
}

/// Users, keys, grants, blocks, audit events and rate limits. Records the target has already
/// (a start-up admin with the same email, say) are kept and reported.
async fn restore_security(
    storage: &Storage,
    from: &Path,
    report: &mut RestoreReport,
) -> Result<(), BackupError> {
    let dir = from.to_path_buf();
    let lines = tokio::task::spawn_blocking(move || -> Result<Vec<SecurityLine>, BackupError> {
        let mut reader = LineReader::<SecurityLine>::open(&dir, SECURITY_FILE)?;
        let mut lines = Vec::new();
        while let Some(line) = reader.next_item()? {
            lines.push(line);
        }
        Ok(lines)
    })
    .await
    .map_err(|e| BackupError::Storage(e.into()))??;
    let sec = &storage.security;
    for line in lines {
        match line {
            SecurityLine::User(u) => {
                if sec.get_user(&u.user.id).await?.is_some() {
                    report
                        .skipped
                        .push(format!("user {} (id exists)", u.user.email));
                    continue;
                }
                let record = UserRecord::from(u);
                let email = record.email.clone();
                match sec.create_user(record).await {
                    Ok(_) => report.users += 1,
                    Err(StorageError::Conflict(_)) => {
                        report.skipped.push(format!("user {email} (email exists)"))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            SecurityLine::ApiKey(k) => {
                if sec.get_api_key(&k.id).await?.is_some() {
                    report.skipped.push(format!("API key {} (id exists)", k.id));
                    continue;
                }
                let id = k.id.clone();
                match sec.create_api_key(k).await {
                    Ok(()) => report.api_keys += 1,
                    Err(StorageError::Conflict(_)) => {
                        report.skipped.push(format!("API key {id} (exists)"))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            SecurityLine::Grant(g) => {
                sec.set_grant(g).await?;
                report.grants += 1;
            }
            SecurityLine::IpBlock(b) => {
                let id = b.id.clone();
                match sec.add_ip_block(b).await {
                    Ok(()) => report.ip_blocks += 1,
                    Err(StorageError::Conflict(_)) => {
                        report.skipped.push(format!("IP block {id} (exists)"))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            SecurityLine::Audit(a) => {
                sec.append_audit(a).await?;
                report.audit_events += 1;
            }
            SecurityLine::RateLimits { json } => sec.set_rate_limits(json).await?,
            SecurityLine::Conversation(c) => {
                let id = c.id.clone();
                match storage.answers.create_conversation(c).await {
                    Ok(()) => report.conversations += 1,
                    Err(StorageError::Conflict(_)) => {
                        report.skipped.push(format!("conversation {id} (exists)"))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            SecurityLine::Answer(a) => {
                let id = a.id.clone();
                match storage.answers.record_answer(a).await {
                    Ok(()) => report.answers += 1,
                    Err(StorageError::Conflict(_)) => {
                        report.skipped.push(format!("answer {id} (exists)"))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            SecurityLine::Feedback(f) => {
                storage.answers.put_feedback(f).await?;
                report.feedback += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(index: i32, text: &str, offset: Option<u64>) -> StoredChunk {
        StoredChunk {
            id: Uuid::nil(),
            document_id: Uuid::nil(),
            chunk_index: index,
            text: text.into(),
            token_count: 1,
            offset,
        }
    }

    #[test]
    fn parsed_text_lays_overlapping_chunks_at_their_offsets() {
        let text = "The harbour has twelve cranes. They lift containers.";
        let chunks = [
            chunk(0, &text[..30], Some(0)),
            chunk(1, &text[23..], Some(23)),
        ];
        assert_eq!(parsed_text(&chunks), text);
        let apart = [chunk(0, "one", None), chunk(1, "two", None)];
        assert_eq!(parsed_text(&apart), "one\n\ntwo");
    }
}
