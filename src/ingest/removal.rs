//! Complete deletion. The metadata store removes the document, its chunk text and jobs and records
//! a deletion in one transaction; then the cache, a separate document store and the vectors
//! follow. When the vector index
//! refuses, or a worker that was indexing the document may still write points, the recorded
//! deletion stays and the sweeper finishes it, so a deleted document is never served again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use super::{IngestError, IngestService, Removal};
use crate::storage::{Deletion, Document};

/// How often the sweeper looks for unfinished deletions.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

impl IngestService {
    pub(super) async fn remove(
        &self,
        document_id: Uuid,
    ) -> Result<Option<(Document, Removal)>, IngestError> {
        let Some(deleted) = self.storage.metadata.delete_document(document_id).await? else {
            return Ok(None);
        };
        let collection = deleted.document.collection.clone();
        // From here the document is gone for list, search (no chunk text) and answers; the cache
        // is next so no cached result shows it.
        self.storage.cache.invalidate_collection(&collection).await;
        let swept = self
            .sweep_stores(document_id, deleted.document.content_ref)
            .await;
        let finished = swept.is_ok() && !deleted.was_indexing;
        if finished {
            // Nothing can write this document's vectors any more: the deletion is complete.
            if let Err(e) = self
                .storage
                .metadata
                .settle_deletion(document_id, Ok(()))
                .await
            {
                tracing::warn!(module = "ingest", error = %e, "cannot settle a finished deletion; the sweeper will");
            }
        } else if let Err(e) = &swept {
            tracing::warn!(module = "ingest", %document_id, error = %e, "vectors not deleted yet; the sweeper will retry");
        }
        metrics::counter!("ingest_documents_deleted_total").increment(1);
        Ok(Some((
            deleted.document,
            Removal {
                chunks: deleted.chunks + swept.as_ref().map_or(0, |s| s.0),
                vectors: swept.as_ref().map_or(0, |s| s.1),
                jobs: deleted.jobs,
                cache_invalidated: true,
                pending: !finished,
            },
        )))
    }

    /// Removes a deleted document from the stores beside the metadata store: chunk text and the
    /// original (when a separate document store keeps them), then the vectors. Returns how many
    /// chunks and vectors went.
    async fn sweep_stores(
        &self,
        document_id: Uuid,
        content_ref: Option<Uuid>,
    ) -> Result<(u64, u64), crate::storage::StorageError> {
        let chunks = self
            .storage
            .documents
            .delete_document(document_id, content_ref)
            .await?;
        let vectors = self.storage.vectors.delete_document(document_id).await?;
        Ok((chunks, vectors))
    }

    /// Finishes recorded deletions until `shutdown`: removes the vectors again (a worker that was
    /// indexing may have written some after the delete) and forgets a deletion once no worker can
    /// still hold a lease on the document's job.
    pub fn spawn_sweeper(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
                    _ = shutdown.changed() => return,
                }
                if let Err(e) = this.sweep().await {
                    tracing::warn!(module = "ingest", error = %e, "deletion sweep failed");
                }
            }
        })
    }

    /// One pass over the recorded deletions; returns how many it settled.
    pub async fn sweep(&self) -> Result<usize, IngestError> {
        let pending = self.storage.metadata.pending_deletions(100).await?;
        // A worker notices a lost job within a lease; two leases leave a wide margin.
        let quiet = chrono::Duration::seconds(2 * self.settings.lease_secs as i64);
        let mut settled = 0;
        for Deletion {
            document_id,
            collection,
            deleted_at,
            ..
        } in pending
        {
            let outcome = self
                .sweep_stores(document_id, None)
                .await
                .map(drop)
                .map_err(|e| e.to_string());
            let old_enough = chrono::Utc::now() - deleted_at > quiet;
            match outcome {
                Ok(()) if old_enough => {
                    self.storage
                        .metadata
                        .settle_deletion(document_id, Ok(()))
                        .await?;
                    self.storage.cache.invalidate_collection(&collection).await;
                    settled += 1;
                }
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(module = "ingest", %document_id, error = %e, "cannot delete vectors of a deleted document; will retry");
                    self.storage
                        .metadata
                        .settle_deletion(document_id, Err(e))
                        .await?;
                }
            }
        }
        Ok(settled)
    }
}
