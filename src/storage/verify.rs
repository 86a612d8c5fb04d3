//! `verify`: do the stores agree? Every indexed document must have its chunk text and exactly its
//! live version's vectors; nothing may point at a document that is gone; no job may be stuck.
//! With `repair`, documents missing text or vectors are queued for re-indexing and orphans are
//! removed, and the report says what was done.
//!
//! Documents with a job in flight are skipped: their stores legitimately differ until the job's
//! fenced finish.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{DocumentStatus, Storage, StorageError};

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifyReport {
    /// True when no problem was found.
    pub ok: bool,
    pub checked: Checked,
    pub problems: Vec<Problem>,
    /// What `repair` did, one line per action.
    pub repaired: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Checked {
    pub documents: u64,
    pub chunks: u64,
    pub vectors: u64,
    /// Documents skipped because a job is working on them.
    pub in_flight: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// `missing_chunks`, `missing_vectors`, `stale_vectors`, `orphan_vectors`, `orphan_chunks`,
    /// `orphan_original`, `stuck_job` or `stuck_document`.
    pub kind: String,
    pub id: Uuid,
    pub detail: String,
}

/// Compares the stores; with `repair`, fixes what it found.
pub async fn verify(storage: &Storage, repair: bool) -> Result<VerifyReport, StorageError> {
    let mut inventory = storage.metadata.inventory().await?;
    let points = storage.vectors.inventory().await?;
    let separate = !storage.documents.inline();
    let mut stale_originals = Vec::new();
    if separate {
        // Chunk text lives in the document store: count it there, and find what it holds for
        // documents that are gone, and uploads no document refers to.
        let counts = storage.documents.chunk_counts().await?;
        let known: HashSet<Uuid> = inventory.documents.iter().map(|d| d.id).collect();
        for doc in &mut inventory.documents {
            doc.stored_chunks = counts.get(&doc.id).copied().unwrap_or(0);
        }
        inventory
            .orphan_chunk_documents
            .extend(counts.keys().filter(|d| !known.contains(d)));
        let referenced: HashSet<Uuid> = inventory
            .documents
            .iter()
            .filter_map(|d| d.content_ref)
            .collect();
        // An upload is stored just before its document row; give a submit in flight time.
        let settled = chrono::Utc::now() - chrono::Duration::minutes(10);
        stale_originals = storage
            .documents
            .original_refs()
            .await?
            .into_iter()
            .filter(|(r, at)| !referenced.contains(r) && *at < settled)
            .map(|(r, _)| r)
            .collect();
    }
    let mut by_doc: HashMap<Uuid, Vec<(i64, u64)>> = HashMap::new();
    for (&(doc, version), &n) in &points {
        by_doc.entry(doc).or_default().push((version, n));
    }
    let mut report = VerifyReport {
        checked: Checked {
            documents: inventory.documents.len() as u64,
            chunks: inventory
                .documents
                .iter()
                .map(|d| d.stored_chunks as u64)
                .sum(),
            vectors: points.values().sum(),
            in_flight: 0,
        },
        ..Default::default()
    };
    let mut problem = |kind: &str, id: Uuid, detail: String| {
        report.problems.push(Problem {
            kind: kind.into(),
            id,
            detail,
        })
    };
    let known: HashSet<Uuid> = inventory.documents.iter().map(|d| d.id).collect();
    let mut reindex = Vec::new();
    let mut trim = Vec::new();
    let mut drop_vectors = Vec::new();
    let mut in_flight = 0;
    for doc in &inventory.documents {
        let versions = by_doc.get(&doc.id).cloned().unwrap_or_default();
        if doc.active_jobs > 0 {
            in_flight += 1;
            continue;
        }
        match doc.status {
            DocumentStatus::Indexed => {
                let live = versions
                    .iter()
                    .find(|(v, _)| *v == doc.version)
                    .map(|(_, n)| *n)
                    .unwrap_or(0);
                if doc.stored_chunks != doc.chunk_count {
                    problem(
                        "missing_chunks",
                        doc.id,
                        format!(
                            "{} chunk rows stored, {} expected",
                            doc.stored_chunks, doc.chunk_count
                        ),
                    );
                    reindex.push(doc.id);
                } else if live != doc.chunk_count as u64 {
                    problem(
                        "missing_vectors",
                        doc.id,
                        format!(
                            "{live} vectors of version {}, {} expected",
                            doc.version, doc.chunk_count
                        ),
                    );
                    reindex.push(doc.id);
                }
                let stale: Vec<i64> = versions
                    .iter()
                    .map(|(v, _)| *v)
                    .filter(|v| *v != doc.version)
                    .collect();
                if !stale.is_empty() {
                    problem(
                        "stale_vectors",
                        doc.id,
                        format!(
                            "vectors of versions {stale:?}; version {} is live",
                            doc.version
                        ),
                    );
                    trim.push((doc.id, doc.version));
                }
            }
            DocumentStatus::Failed if !versions.is_empty() => {
                problem(
                    "stale_vectors",
                    doc.id,
                    "a failed document still has vectors".into(),
                );
                drop_vectors.push(doc.id);
            }
            DocumentStatus::Failed => {}
            DocumentStatus::Queued | DocumentStatus::Indexing => {
                problem(
                    "stuck_document",
                    doc.id,
                    format!("{} with no job queued or running", doc.status.as_str()),
                );
                reindex.push(doc.id);
            }
        }
    }
    for doc in by_doc.keys().filter(|d| !known.contains(d)) {
        problem(
            "orphan_vectors",
            *doc,
            "vectors of a document that does not exist".into(),
        );
        drop_vectors.push(*doc);
    }
    for doc in &inventory.orphan_chunk_documents {
        problem(
            "orphan_chunks",
            *doc,
            "chunk rows of a document that does not exist".into(),
        );
    }
    for upload in &stale_originals {
        problem(
            "orphan_original",
            *upload,
            "an upload no document refers to".into(),
        );
    }
    for job in &inventory.stuck_jobs {
        problem(
            "stuck_job",
            *job,
            "running, but its lease expired long ago".into(),
        );
    }
    report.checked.in_flight = in_flight;
    report.ok = report.problems.is_empty();
    if !repair {
        return Ok(report);
    }

    for id in reindex {
        if storage.metadata.reindex(id).await? {
            report
                .repaired
                .push(format!("queued document {id} for re-indexing"));
        }
    }
    for (id, version) in trim {
        storage.vectors.delete_other_versions(id, version).await?;
        report.repaired.push(format!(
            "removed vectors of document {id} other than version {version}"
        ));
    }
    for id in drop_vectors {
        storage.vectors.delete_document(id).await?;
        report
            .repaired
            .push(format!("removed vectors of document {id}"));
    }
    if separate {
        for doc in &inventory.orphan_chunk_documents {
            let n = storage.documents.delete_document(*doc, None).await?;
            report
                .repaired
                .push(format!("removed {n} orphan chunks of document {doc}"));
        }
        for upload in stale_originals {
            storage.documents.delete_original(upload).await?;
            report
                .repaired
                .push(format!("removed unreferenced upload {upload}"));
        }
    } else if !inventory.orphan_chunk_documents.is_empty() {
        let n = storage.metadata.delete_orphan_chunks().await?;
        report
            .repaired
            .push(format!("removed {n} orphan chunk rows"));
    }
    if !inventory.stuck_jobs.is_empty() {
        let n = storage.metadata.requeue_running(false).await?;
        report.repaired.push(format!("requeued {n} stuck jobs"));
    }
    Ok(report)
}
