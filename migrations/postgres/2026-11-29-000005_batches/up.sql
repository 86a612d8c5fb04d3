-- Bulk uploads (POST /v1/documents/bulk): one row per batch; its documents' jobs point to it, and
-- GET /v1/batches/{id} counts them by state.
CREATE TABLE batches (
    id TEXT PRIMARY KEY NOT NULL,
    -- JSON array of the collections the batch writes to, for access checks.
    collections TEXT NOT NULL,
    total BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
ALTER TABLE jobs ADD COLUMN batch_id TEXT;
CREATE INDEX jobs_batch ON jobs(batch_id) WHERE batch_id IS NOT NULL;
