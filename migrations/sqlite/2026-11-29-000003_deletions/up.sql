-- A deleted document's id, kept until every store has dropped it: the sweeper finishes deletes
-- a store refused, and removes vectors a worker still indexing the document wrote afterwards.
CREATE TABLE deletions (
    document_id TEXT PRIMARY KEY NOT NULL,
    collection TEXT NOT NULL,
    deleted_at BIGINT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
