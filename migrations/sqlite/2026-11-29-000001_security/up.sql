-- Security: users, API keys, refresh-token families, JWT signing keys, collection grants, IP blocks,
-- the append-only audit log, and one row of shared state every replica polls for changes.
CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    email TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    sessions_valid_after BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_email ON users(email);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    collection TEXT,
    owner_id TEXT,
    expires_at BIGINT,
    revoked_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX api_keys_secret ON api_keys(secret_hash);

CREATE TABLE refresh_tokens (
    id TEXT PRIMARY KEY NOT NULL,
    family TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    revoked_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX refresh_tokens_hash ON refresh_tokens(token_hash);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family);
CREATE INDEX refresh_tokens_user ON refresh_tokens(user_id);

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY NOT NULL,
    secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retire_at BIGINT
);

CREATE TABLE grants (
    collection TEXT NOT NULL,
    principal TEXT NOT NULL,
    access TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (collection, principal)
);
CREATE INDEX grants_principal ON grants(principal);

CREATE TABLE ip_blocks (
    id TEXT PRIMARY KEY NOT NULL,
    cidr TEXT NOT NULL,
    reason TEXT NOT NULL,
    expires_at BIGINT,
    created_by TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE security_state (
    id INTEGER PRIMARY KEY NOT NULL,
    generation BIGINT NOT NULL,
    sessions_valid_after BIGINT NOT NULL,
    rate_limits TEXT
);
INSERT INTO security_state (id, generation, sessions_valid_after, rate_limits) VALUES (1, 0, 0, NULL);

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at BIGINT NOT NULL,
    event TEXT NOT NULL,
    actor TEXT,
    ip TEXT,
    user_agent TEXT,
    target TEXT,
    outcome TEXT NOT NULL,
    request_id TEXT,
    detail TEXT
);
CREATE INDEX audit_log_at ON audit_log(at);
CREATE INDEX audit_log_actor ON audit_log(actor);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
