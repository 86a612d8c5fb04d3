//! `doc-rag reindex` (`POST /v1/admin/reindex` on the storage port): every document, or those of
//! one collection, gets a fresh job for its current version. The workers re-parse and re-embed it
//! and overwrite its points in place (a version's chunk ids do not change), so the old vectors
//! keep serving until each document's new ones replace them: after a model change, or to rebuild
//! an index restored without vectors.

use uuid::Uuid;

use crate::storage::{DocumentStatus, Storage, StorageError};

/// Documents read per page.
const PAGE: i64 = 500;

/// Queues every document (of `collection`, when given) that is not already queued or indexing;
/// returns how many were queued.
pub async fn reindex_all(storage: &Storage, collection: Option<&str>) -> Result<u64, StorageError> {
    let mut queued = 0;
    let mut after: Option<Uuid> = None;
    loop {
        let page = storage.metadata.export_documents(after, PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(queued);
        };
        after = Some(last.id);
        for doc in page {
            if collection.is_some_and(|c| c != doc.collection)
                || matches!(
                    doc.status,
                    DocumentStatus::Queued | DocumentStatus::Indexing
                )
            {
                continue;
            }
            if storage.metadata.reindex(doc.id).await? {
                queued += 1;
            }
        }
    }
}
