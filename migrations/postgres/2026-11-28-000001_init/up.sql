CREATE TABLE collections (
    name TEXT PRIMARY KEY NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE documents (
    id TEXT PRIMARY KEY NOT NULL,
    collection TEXT NOT NULL REFERENCES collections(name),
    external_id TEXT,
    title TEXT NOT NULL,
    content_type TEXT NOT NULL,
    metadata TEXT NOT NULL,
    status TEXT NOT NULL,
    version BIGINT NOT NULL,
    chunk_count BIGINT NOT NULL DEFAULT 0,
    size_bytes BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX documents_collection_external_id ON documents(collection, external_id);
CREATE INDEX documents_collection_created ON documents(collection, created_at);

CREATE TABLE document_contents (
    document_id TEXT PRIMARY KEY NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    content BYTEA NOT NULL
);

CREATE TABLE chunks (
    id TEXT PRIMARY KEY NOT NULL,
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    chunk_index INTEGER NOT NULL,
    text TEXT NOT NULL,
    token_count INTEGER NOT NULL
);
CREATE INDEX chunks_document ON chunks(document_id);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY NOT NULL,
    document_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    document_version BIGINT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    request_id TEXT,
    lease_owner TEXT,
    lease_until BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX jobs_status_created ON jobs(status, created_at);
CREATE INDEX jobs_document ON jobs(document_id);
