//! Taking a backup: pages of documents in id order, each document copied whole (row, original,
//! its live version's chunks and points) or re-read until it is, then the security data, then the
//! manifest. Compression and file writes run on the blocking pool, one page at a time.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::Utc;
use uuid::Uuid;

use super::archive::LineWriter;
use super::{
    Backends, BackupError, ChunkLine, Counts, DOCUMENTS_FILE, DocumentLine, EmbeddingModel, FORMAT,
    FORMAT_VERSION, Kept, Manifest, PointLine, Progress, SECURITY_FILE, SecurityLine, VECTORS_FILE,
};
use crate::config::Settings;
use crate::storage::security::AuditQuery;
use crate::storage::vector::IndexPoint;
use crate::storage::{Document, DocumentStatus, Storage, StoredChunk, chunk_id};

/// Documents read per page.
const PAGE: i64 = 128;
/// Reads of a document that keeps changing before it is backed up as pending.
const ATTEMPTS: usize = 3;
/// Audit events read per query.
const AUDIT_PAGE: i64 = 1000;

/// The files being written, moved onto the blocking pool for each page.
struct Writers {
    documents: LineWriter,
    vectors: LineWriter,
    security: LineWriter,
}

/// Backs up every store into `out` (created; it must be empty or absent).
pub async fn backup(
    storage: &Storage,
    settings: &Settings,
    out: &Path,
    progress: &dyn Progress,
) -> Result<Manifest, BackupError> {
    prepare_dir(out)?;
    let started_at = Utc::now();
    let embedding = EmbeddingModel::configured(settings).await?;
    let snapshot_at = Utc::now();
    let stats = storage.metadata.stats().await?;
    progress.start(stats.documents.max(0) as u64);

    let dir = out.to_path_buf();
    let mut writers = Some(
        tokio::task::spawn_blocking(move || -> Result<Writers, BackupError> {
            Ok(Writers {
                documents: LineWriter::create(&dir, DOCUMENTS_FILE)?,
                vectors: LineWriter::create(&dir, VECTORS_FILE)?,
                security: LineWriter::create(&dir, SECURITY_FILE)?,
            })
        })
        .await
        .map_err(StorageErrorJoin)??,
    );
    let mut counts = Counts::default();
    let mut after: Option<Uuid> = None;
    loop {
        let page = storage.metadata.export_documents(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        let seen = page.len() as u64;
        let mut lines = Vec::with_capacity(page.len());
        for doc in page {
            if doc.created_at > snapshot_at {
                counts.left_out += 1;
                continue;
            }
            match copy_document(storage, doc).await? {
                Some(copied) => lines.push(copied),
                None => counts.left_out += 1,
            }
        }
        for (line, points) in &lines {
            counts.documents += 1;
            match line.kept {
                Kept::Indexed => counts.indexed += 1,
                Kept::Pending => counts.pending += 1,
                Kept::Failed => counts.failed += 1,
            }
            counts.chunks += line.chunks.len() as u64;
            counts.vectors += points.len() as u64;
        }
        let w = writers.take().ok_or_else(lost_writers)?;
        writers = Some(
            tokio::task::spawn_blocking(move || -> Result<Writers, BackupError> {
                let mut w = w;
                for (line, points) in lines {
                    w.documents.write(&line)?;
                    for p in points {
                        w.vectors.write(&p)?;
                    }
                }
                Ok(w)
            })
            .await
            .map_err(StorageErrorJoin)??,
        );
        progress.advance(seen);
    }

    let security = security_lines(storage, snapshot_at, &mut counts).await?;
    let w = writers.take().ok_or_else(lost_writers)?;
    let files = tokio::task::spawn_blocking(move || -> Result<_, BackupError> {
        let mut w = w;
        for line in &security {
            w.security.write(line)?;
        }
        Ok(vec![
            w.documents.finish()?,
            w.vectors.finish()?,
            w.security.finish()?,
        ])
    })
    .await
    .map_err(StorageErrorJoin)??;

    let manifest = Manifest {
        format: FORMAT.to_string(),
        format_version: FORMAT_VERSION,
        doc_rag_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at,
        snapshot_at,
        completed_at: Utc::now(),
        backends: Backends {
            metadata: storage.metadata.backend().to_string(),
            documents: storage.documents.backend().to_string(),
            vectors: storage.vectors.backend().to_string(),
        },
        embedding,
        counts,
        files,
    };
    let dir = out.to_path_buf();
    let written = manifest.clone();
    tokio::task::spawn_blocking(move || super::archive::write_manifest(&dir, &written))
        .await
        .map_err(StorageErrorJoin)??;
    Ok(manifest)
}

/// A join error of the blocking pool, as a storage error.
struct StorageErrorJoin(tokio::task::JoinError);

impl From<StorageErrorJoin> for BackupError {
    fn from(e: StorageErrorJoin) -> Self {
        BackupError::Storage(e.0.into())
    }
}

fn lost_writers() -> BackupError {
    BackupError::Invalid("the backup's files were lost after a failed write".into())
}

fn prepare_dir(out: &Path) -> Result<(), BackupError> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::OutputExists(format!(
                    "{} is not empty: a backup goes into a new or empty directory",
                    out.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).map_err(|e| BackupError::io(out, e))?;
        }
        Err(e) => return Err(BackupError::io(out, e)),
    }
    // Backups hold password and API-key hashes: readable by the owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| BackupError::io(out, e))?;
    }
    Ok(())
}

/// One document whole, with its points; `None` when it was deleted meanwhile.
async fn copy_document(
    storage: &Storage,
    mut doc: Document,
) -> Result<Option<(DocumentLine, Vec<PointLine>)>, BackupError> {
    for _ in 0..ATTEMPTS {
        let Some(content) = storage.documents.get_original(&doc).await? else {
            match reread(storage, &doc).await? {
                Some(newer) => {
                    doc = newer;
                    continue;
                }
                None => return Ok(None),
            }
        };
        if doc.status != DocumentStatus::Indexed {
            let kept = if doc.status == DocumentStatus::Failed {
                Kept::Failed
            } else {
                Kept::Pending
            };
            // Pending and failed documents carry no chunks: nothing to keep in step.
            return Ok(Some((line(doc, kept, &content, Vec::new(), 0), Vec::new())));
        }
        let n = doc.chunk_count.max(0) as u32;
        let ids: Vec<Uuid> = (0..n).map(|i| chunk_id(doc.id, doc.version, i)).collect();
        let mut chunks = storage.documents.get_chunks(ids.clone()).await?;
        let points = storage.vectors.get_points(ids).await?;
        let still = reread(storage, &doc).await?;
        let unchanged = still
            .as_ref()
            .is_some_and(|d| d.version == doc.version && d.status == DocumentStatus::Indexed);
        if unchanged && chunks.len() == n as usize && points.len() == n as usize {
            chunks.sort_by_key(|c| c.chunk_index);
            let mut points = points;
            points.sort_by_key(|p| p.payload.chunk_index);
            let points: Vec<PointLine> = points.into_iter().map(point_line).collect();
            let count = points.len() as u64;
            return Ok(Some((
                line(doc, Kept::Indexed, &content, chunks, count),
                points,
            )));
        }
        match still {
            Some(newer) => doc = newer,
            None => return Ok(None),
        }
    }
    // Still changing: keep the original, and index it again after a restore.
    match storage.documents.get_original(&doc).await? {
        Some(content) => Ok(Some((
            line(doc, Kept::Pending, &content, Vec::new(), 0),
            Vec::new(),
        ))),
        None => Ok(None),
    }
}

async fn reread(storage: &Storage, doc: &Document) -> Result<Option<Document>, BackupError> {
    Ok(storage.metadata.get_document(doc.id).await?)
}

fn line(
    document: Document,
    kept: Kept,
    content: &[u8],
    chunks: Vec<StoredChunk>,
    points: u64,
) -> DocumentLine {
    DocumentLine {
        document,
        kept,
        content: BASE64.encode(content),
        chunks: chunks
            .into_iter()
            .map(|c| ChunkLine {
                index: c.chunk_index,
                text: c.text,
                token_count: c.token_count,
                offset: c.offset,
            })
            .collect(),
        points,
    }
}

fn point_line(p: IndexPoint) -> PointLine {
    let mut dense = Vec::with_capacity(p.dense.len() * 4);
    for x in &p.dense {
        dense.extend_from_slice(&x.to_le_bytes());
    }
    PointLine {
        id: p.id,
        dense: BASE64.encode(dense),
        sparse_indices: p.sparse.indices,
        sparse_values: p.sparse.values,
        payload: p.payload,
    }
}

/// Conversations, answers and feedback up to the snapshot, in key order (conversations before
/// their turns, answers before their ratings).
async fn answer_lines(
    storage: &Storage,
    until: i64,
    counts: &mut Counts,
    lines: &mut Vec<SecurityLine>,
) -> Result<(), BackupError> {
    let store = &storage.answers;
    let mut after = None;
    loop {
        let page = store.export_conversations(until, after, AUDIT_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        counts.conversations += page.len() as u64;
        lines.extend(page.into_iter().map(SecurityLine::Conversation));
    }
    let mut after = None;
    loop {
        let page = store.export_answers(until, after, AUDIT_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        counts.answers += page.len() as u64;
        lines.extend(page.into_iter().map(SecurityLine::Answer));
    }
    let mut after = None;
    loop {
        let page = store.export_feedback(until, after, AUDIT_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.query_id.clone(), last.owner.clone()));
        counts.feedback += page.len() as u64;
        lines.extend(page.into_iter().map(SecurityLine::Feedback));
    }
    Ok(())
}

/// Users, API keys, grants, IP blocks, the audit log up to the snapshot, and run-time rate
/// limits.
async fn security_lines(
    storage: &Storage,
    snapshot_at: chrono::DateTime<Utc>,
    counts: &mut Counts,
) -> Result<Vec<SecurityLine>, BackupError> {
    let sec = &storage.security;
    let mut lines = Vec::new();
    for u in sec.list_users().await? {
        counts.users += 1;
        lines.push(SecurityLine::User(u.into()));
    }
    for k in sec.list_api_keys(None).await? {
        counts.api_keys += 1;
        lines.push(SecurityLine::ApiKey(k));
    }
    for g in sec.list_grants().await? {
        counts.grants += 1;
        lines.push(SecurityLine::Grant(g));
    }
    for b in sec.list_ip_blocks().await? {
        counts.ip_blocks += 1;
        lines.push(SecurityLine::IpBlock(b));
    }
    // Newest first, bounded by the snapshot so later events do not shift the pages.
    let mut audit = Vec::new();
    let mut offset = 0;
    loop {
        let page = sec
            .query_audit(AuditQuery {
                until: Some(snapshot_at.timestamp_millis()),
                limit: AUDIT_PAGE,
                offset,
                ..AuditQuery::default()
            })
            .await?;
        let n = page.len() as i64;
        audit.extend(page);
        if n < AUDIT_PAGE {
            break;
        }
        offset += n;
    }
    counts.audit_events = audit.len() as u64;
    // Oldest first, as they are appended back.
    lines.extend(audit.into_iter().rev().map(SecurityLine::Audit));
    if let Some(json) = sec.state().await?.rate_limits {
        lines.push(SecurityLine::RateLimits { json });
    }
    answer_lines(storage, snapshot_at.timestamp_millis(), counts, &mut lines).await?;
    Ok(lines)
}
