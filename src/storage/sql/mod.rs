//! The relational store: documents, jobs, collections, original uploads and chunk text, with
//! diesel on SQLite (embedded default) or PostgreSQL (`database.url = postgres://…`).
//!
//! One implementation serves both backends: each operation's body is written once against diesel's
//! query builder and compiled for each connection type (`with_conn!`). What differs per backend —
//! write-transaction mode, the job-claim statement, migrations — sits behind [`Dialect`].
//! Diesel is synchronous, so every call runs on the blocking pool, never on the async executor.

pub mod schema;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool as R2d2Pool};
use diesel::sql_types::{BigInt, Integer, Nullable, Text};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use uuid::Uuid;

use self::schema::{
    batches, chunks, collections, deletions, document_contents, documents, jobs,
    webhook_deliveries, webhook_subscriptions,
};
use super::webhooks::{
    DeliveryStatus, DocumentEvent, MAX_PENDING_PER_SUBSCRIPTION, WebhookEvent, subscribed,
};
use super::{
    BATCH_FAILURES_SHOWN, BatchFailure, BatchView, ClaimedJob, CollectionInfo, DeletedDocument,
    Deletion, Document, DocumentState, DocumentStatus, DocumentStore, Finish, FinishedChunks,
    Inventory, Job, JobCounts, JobStatus, MetadataStats, MetadataStore, NewBatch, NewDocument,
    QueueState, RestoredDocument, StorageError, StoredChunk, Submitted,
};
use crate::config::{DatabaseKind, DatabaseSettings};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

type SqlitePool = R2d2Pool<ConnectionManager<SqliteConnection>>;
type PgPool = R2d2Pool<ConnectionManager<PgConnection>>;

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$conn` bound to a pooled connection of whichever backend is configured.
/// The body is type-checked once per backend.
macro_rules! with_conn {
    ($pool:expr, $conn:ident => $body:expr) => {
        match $pool {
            Pool::Sqlite(pool) => {
                let mut pooled = pool.get().map_err(|e| StorageError::Pool(e.to_string()))?;
                let $conn: &mut SqliteConnection = &mut pooled;
                $body
            }
            Pool::Postgres(pool) => {
                let mut pooled = pool.get().map_err(|e| StorageError::Pool(e.to_string()))?;
                let $conn: &mut PgConnection = &mut pooled;
                $body
            }
        }
    };
}

/// Replaces a document's chunk rows inside the caller's transaction (a macro, like `with_conn!`,
/// so one body serves both connection types).
macro_rules! write_chunks {
    ($c:expr, $doc:expr, $chunks:expr) => {{
        let doc: &str = $doc;
        diesel::delete(chunks::table.filter(chunks::document_id.eq(doc))).execute($c)?;
        let rows: Vec<ChunkRow> = $chunks
            .iter()
            .map(|ch| ChunkRow {
                id: ch.id.to_string(),
                document_id: doc.to_string(),
                chunk_index: ch.chunk_index,
                text: ch.text.clone(),
                token_count: ch.token_count,
            })
            .collect();
        // Bounded statements: SQLite caps bind parameters per statement.
        for batch in rows.chunks(500) {
            diesel::insert_into(chunks::table)
                .values(batch)
                .execute($c)?;
        }
        Ok::<(), StorageError>(())
    }};
}

/// A job's row while `worker` holds its lease: every write a worker makes to its job is fenced by
/// this, so a worker that lost the job changes nothing.
macro_rules! held_job {
    ($job_id:expr, $worker:expr) => {
        jobs::table
            .find($job_id)
            .filter(jobs::status.eq(JobStatus::Running.as_str()))
            .filter(jobs::lease_owner.eq($worker))
    };
}

/// Records a pending delivery of a [`DocumentEvent`] for every enabled subscription of its
/// collection that asked for it, inside the caller's transaction: the change and the deliveries
/// that report it commit (or roll back) together, so a crash can neither lose an event nor report
/// one that did not happen. Evaluates to how many it recorded. A subscription whose backlog is
/// full is disabled instead (see [`MAX_PENDING_PER_SUBSCRIPTION`]). A macro, like `with_conn!`,
/// so one body serves both connection types.
macro_rules! enqueue_webhooks {
    ($c:expr, $event:expr, $now:expr) => {{
        let event: &DocumentEvent = $event;
        let now: i64 = $now;
        let subscriptions: Vec<(String, String)> = webhook_subscriptions::table
            .filter(webhook_subscriptions::collection.eq(&event.collection))
            .filter(webhook_subscriptions::enabled.eq(true))
            .select((webhook_subscriptions::id, webhook_subscriptions::events))
            .load($c)?;
        let mut recorded = 0usize;
        let mut payload: Option<String> = None;
        for (subscription_id, events) in subscriptions {
            if !subscribed(&events, event.event) {
                continue;
            }
            // Reads at most the backlog's size of index entries: is there a row at the cap?
            let full: Vec<String> = webhook_deliveries::table
                .filter(webhook_deliveries::subscription_id.eq(&subscription_id))
                .filter(webhook_deliveries::status.eq(DeliveryStatus::Pending.as_str()))
                .select(webhook_deliveries::id)
                .limit(1)
                .offset(MAX_PENDING_PER_SUBSCRIPTION - 1)
                .load($c)?;
            if !full.is_empty() {
                diesel::update(webhook_subscriptions::table.find(&subscription_id))
                    .set((
                        webhook_subscriptions::enabled.eq(false),
                        webhook_subscriptions::disabled_reason.eq(format!(
                            "{MAX_PENDING_PER_SUBSCRIPTION} deliveries were pending: the receiver \
                             does not keep up (the backlog is delivered once enabled again)"
                        )),
                    ))
                    .execute($c)?;
                tracing::warn!(
                    module = "webhooks",
                    %subscription_id,
                    "webhook subscription disabled: its delivery backlog is full"
                );
                metrics::counter!("webhook_subscriptions_disabled_total", "reason" => "backlog")
                    .increment(1);
                continue;
            }
            let body = payload
                .get_or_insert_with(|| event.payload(to_time(now)))
                .clone();
            diesel::insert_into(webhook_deliveries::table)
                .values((
                    webhook_deliveries::id.eq(Uuid::new_v4().to_string()),
                    webhook_deliveries::subscription_id.eq(&subscription_id),
                    webhook_deliveries::event.eq(event.event.as_str()),
                    webhook_deliveries::payload.eq(body),
                    webhook_deliveries::status.eq(DeliveryStatus::Pending.as_str()),
                    webhook_deliveries::attempts.eq(0),
                    webhook_deliveries::next_attempt_at.eq(now),
                    webhook_deliveries::created_at.eq(now),
                ))
                .execute($c)?;
            recorded += 1;
        }
        Ok::<usize, StorageError>(recorded)
    }};
}

/// What differs between the backends.
trait Dialect: Connection {
    /// A transaction that will write. SQLite must take the write lock up front: a deferred
    /// transaction that upgrades later fails with SQLITE_BUSY instead of waiting.
    fn write_txn<T, F>(&mut self, f: F) -> Result<T, StorageError>
    where
        F: FnOnce(&mut Self) -> Result<T, StorageError>;
    /// Several reads that must see one state of the database (stats an operator compares).
    fn snapshot<T, F>(&mut self, f: F) -> Result<T, StorageError>
    where
        F: FnOnce(&mut Self) -> Result<T, StorageError>;
    /// Leases the oldest available job: queued and due, or running with an expired lease.
    /// Binds: worker, lease_until, now, now, now.
    const CLAIM_SQL: &'static str;
    /// Leases the due deliveries of enabled subscriptions: pending and due, not leased or with an
    /// expired lease; each claim counts an attempt. Binds: worker, lease_until, now, now, limit.
    const CLAIM_DELIVERIES_SQL: &'static str;
    /// Inside a write transaction: makes concurrent writers of `table` wait until it ends, so a
    /// count and the insert it allows are one step. SQLite's write transaction holds the database
    /// lock already; PostgreSQL's READ COMMITTED would let two transactions count the same rows.
    fn serialize_writes(&mut self, table: &'static str) -> Result<(), StorageError>;
}

impl Dialect for SqliteConnection {
    fn write_txn<T, F>(&mut self, f: F) -> Result<T, StorageError>
    where
        F: FnOnce(&mut Self) -> Result<T, StorageError>,
    {
        self.immediate_transaction(f)
    }
    fn snapshot<T, F>(&mut self, f: F) -> Result<T, StorageError>
    where
        F: FnOnce(&mut Self) -> Result<T, StorageError>,
    {
        // In WAL mode a read transaction keeps the snapshot of its first read.
        self.transaction(f)
    }
    const CLAIM_SQL: &'static str = "UPDATE jobs SET status = 'running', lease_owner = ?, lease_until = ?, \
         attempts = attempts + 1, updated_at = ? \
         WHERE id IN (SELECT id FROM jobs WHERE (status = 'queued' AND (not_before IS NULL OR not_before <= ?)) \
                     OR (status = 'running' AND lease_until < ?) \
                     ORDER BY created_at, id LIMIT ?) \
         RETURNING id, document_id, document_version, attempts, request_id, created_at";
    const CLAIM_DELIVERIES_SQL: &'static str = "UPDATE webhook_deliveries SET lease_owner = ?, lease_until = ?, \
         attempts = attempts + 1 \
         WHERE id IN (SELECT d.id FROM webhook_deliveries d \
                      JOIN webhook_subscriptions s ON s.id = d.subscription_id \
                      WHERE d.status = 'pending' AND d.next_attempt_at <= ? \
                      AND (d.lease_until IS NULL OR d.lease_until < ?) AND s.enabled \
                      ORDER BY d.next_attempt_at, d.id LIMIT ?) \
         RETURNING id, subscription_id, event, payload, attempts";
    fn serialize_writes(&mut self, _: &'static str) -> Result<(), StorageError> {
        Ok(())
    }
}

impl Dialect for PgConnection {
    fn write_txn<T, F>(&mut self, f: F) -> Result<T, StorageError>
    where
        F: FnOnce(&mut Self) -> Result<T, StorageError>,
    {
        self.transaction(f)
    }
    fn snapshot<T, F>(&mut self, f: F) -> Result<T, StorageError>
    where
        F: FnOnce(&mut Self) -> Result<T, StorageError>,
    {
        // READ COMMITTED would give each statement its own snapshot.
        self.build_transaction()
            .repeatable_read()
            .read_only()
            .run(f)
    }
    // SKIP LOCKED lets replicas sharing the database claim different jobs without waiting.
    const CLAIM_SQL: &'static str = "UPDATE jobs SET status = 'running', lease_owner = $1, lease_until = $2, \
         attempts = attempts + 1, updated_at = $3 \
         WHERE id IN (SELECT id FROM jobs WHERE (status = 'queued' AND (not_before IS NULL OR not_before <= $4)) \
                     OR (status = 'running' AND lease_until < $5) \
                     ORDER BY created_at, id LIMIT $6 FOR UPDATE SKIP LOCKED) \
         RETURNING id, document_id, document_version, attempts, request_id, created_at";
    // As for jobs: SKIP LOCKED lets replicas claim different deliveries without waiting.
    const CLAIM_DELIVERIES_SQL: &'static str = "UPDATE webhook_deliveries SET lease_owner = $1, lease_until = $2, \
         attempts = attempts + 1 \
         WHERE id IN (SELECT d.id FROM webhook_deliveries d \
                      JOIN webhook_subscriptions s ON s.id = d.subscription_id \
                      WHERE d.status = 'pending' AND d.next_attempt_at <= $3 \
                      AND (d.lease_until IS NULL OR d.lease_until < $4) AND s.enabled \
                      ORDER BY d.next_attempt_at, d.id LIMIT $5 FOR UPDATE OF d SKIP LOCKED) \
         RETURNING id, subscription_id, event, payload, attempts";
    fn serialize_writes(&mut self, table: &'static str) -> Result<(), StorageError> {
        // Conflicts with itself and with row writes, not with plain reads.
        self.batch_execute(&format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))?;
        Ok(())
    }
}

#[derive(Debug)]
struct SqlitePragmas {
    busy_timeout_ms: u64,
}

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        // synchronous=NORMAL in WAL mode survives a process crash (only a power loss can drop
        // the last commits, and never corrupts). WAL itself is set once, in `connect`.
        // secure_delete overwrites freed pages, so deleted text cannot be read back from the file.
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {}; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
             PRAGMA secure_delete = ON;",
            self.busy_timeout_ms
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

#[derive(Debug)]
struct PgSession {
    lock_timeout_ms: u64,
    statement_timeout_ms: u64,
}

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for PgSession {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!(
            "SET lock_timeout = {}; SET statement_timeout = {}",
            self.lock_timeout_ms, self.statement_timeout_ms
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

pub struct SqlStore {
    pool: Pool,
    /// Wakes the webhook delivery worker after a commit recorded deliveries (see
    /// [`WebhookStore::deliveries_enqueued`](super::webhooks::WebhookStore::deliveries_enqueued)).
    webhook_wake: Arc<Notify>,
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn parse_uuid(s: &str) -> Result<Uuid, StorageError> {
    Uuid::parse_str(s).map_err(|_| StorageError::Corrupt(format!("bad uuid {s:?}")))
}

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = documents)]
struct DocumentRow {
    id: String,
    collection: String,
    external_id: Option<String>,
    title: String,
    content_type: String,
    metadata: String,
    status: String,
    version: i64,
    chunk_count: i64,
    size_bytes: i64,
    sha256: String,
    error: Option<String>,
    created_at: i64,
    updated_at: i64,
    content_ref: Option<String>,
}

impl DocumentRow {
    fn into_document(self) -> Result<Document, StorageError> {
        let metadata: Map<String, Value> = serde_json::from_str(&self.metadata)
            .map_err(|e| StorageError::Corrupt(format!("document metadata: {e}")))?;
        Ok(Document {
            id: parse_uuid(&self.id)?,
            collection: self.collection,
            external_id: self.external_id,
            title: self.title,
            content_type: self.content_type,
            metadata,
            status: DocumentStatus::parse(&self.status)?,
            version: self.version,
            chunk_count: self.chunk_count,
            size_bytes: self.size_bytes,
            sha256: self.sha256,
            error: self.error,
            created_at: to_time(self.created_at),
            updated_at: to_time(self.updated_at),
            content_ref: self.content_ref.as_deref().map(parse_uuid).transpose()?,
        })
    }
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = jobs)]
struct JobRow {
    id: String,
    document_id: String,
    document_version: i64,
    status: String,
    attempts: i32,
    error: Option<String>,
    request_id: Option<String>,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    created_at: i64,
    updated_at: i64,
    not_before: Option<i64>,
    batch_id: Option<String>,
}

impl JobRow {
    fn into_job(self) -> Result<Job, StorageError> {
        Ok(Job {
            id: parse_uuid(&self.id)?,
            document_id: parse_uuid(&self.document_id)?,
            document_version: self.document_version,
            status: JobStatus::parse(&self.status)?,
            attempts: self.attempts,
            error: self.error,
            created_at: to_time(self.created_at),
            updated_at: to_time(self.updated_at),
        })
    }
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = chunks)]
struct ChunkRow {
    id: String,
    document_id: String,
    chunk_index: i32,
    text: String,
    token_count: i32,
}

#[derive(QueryableByName)]
struct ClaimRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    document_id: String,
    #[diesel(sql_type = BigInt)]
    document_version: i64,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    request_id: Option<String>,
    #[diesel(sql_type = BigInt)]
    created_at: i64,
}

#[derive(QueryableByName)]
struct InventoryRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    collection: String,
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    chunk_count: i64,
    #[diesel(sql_type = BigInt)]
    stored_chunks: i64,
    #[diesel(sql_type = BigInt)]
    active_jobs: i64,
    #[diesel(sql_type = Nullable<Text>)]
    content_ref: Option<String>,
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct StatusCountRow {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct QueueRow {
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    oldest: Option<i64>,
}

#[derive(QueryableByName)]
struct CollectionRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = BigInt)]
    created_at: i64,
    #[diesel(sql_type = BigInt)]
    documents: i64,
}

impl SqlStore {
    /// Connects (creating the SQLite file and data dir when needed) and runs pending migrations.
    pub async fn connect(
        settings: &DatabaseSettings,
        data_dir: &Path,
    ) -> Result<Self, StorageError> {
        let kind = settings
            .kind(data_dir)
            .map_err(|e| StorageError::BadUrl(e.to_string()))?;
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || {
            let pool = match kind {
                DatabaseKind::Sqlite(path) => {
                    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                        std::fs::create_dir_all(parent).map_err(|e| {
                            StorageError::Database(format!("create {}: {e}", parent.display()))
                        })?;
                    }
                    // WAL (readers beside the writer) is a property of the file: switch it once,
                    // before the pool opens its connections in parallel. Switching on every new
                    // connection raced the migrations and logged "database is locked".
                    let mut first = SqliteConnection::establish(&path.display().to_string())
                        .map_err(|e| StorageError::Database(e.to_string()))?;
                    first.batch_execute(&format!(
                        "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL;",
                        settings.busy_timeout_ms
                    ))?;
                    drop(first);
                    let manager =
                        ConnectionManager::<SqliteConnection>::new(path.display().to_string());
                    let pool = R2d2Pool::builder()
                        .max_size(settings.pool_size.max(1))
                        .connection_customizer(Box::new(SqlitePragmas {
                            busy_timeout_ms: settings.busy_timeout_ms,
                        }))
                        .build(manager)
                        .map_err(|e| StorageError::Pool(e.to_string()))?;
                    Pool::Sqlite(pool)
                }
                DatabaseKind::Postgres => {
                    let manager =
                        ConnectionManager::<PgConnection>::new(settings.url.expose_secret());
                    let pool = R2d2Pool::builder()
                        .max_size(settings.pool_size.max(1))
                        .connection_timeout(Duration::from_millis(
                            settings.checkout_timeout_ms.max(1),
                        ))
                        .connection_customizer(Box::new(PgSession {
                            lock_timeout_ms: settings.busy_timeout_ms,
                            statement_timeout_ms: settings.statement_timeout_ms,
                        }))
                        .build(manager)
                        .map_err(|e| StorageError::Pool(e.to_string()))?;
                    Pool::Postgres(pool)
                }
            };
            let store = SqlStore {
                pool,
                webhook_wake: Arc::new(Notify::new()),
            };
            store.migrate_blocking()?;
            Ok(store)
        })
        .await?
    }

    fn migrate_blocking(&self) -> Result<usize, StorageError> {
        let err =
            |e: Box<dyn std::error::Error + Send + Sync>| StorageError::Migration(e.to_string());
        match &self.pool {
            Pool::Sqlite(pool) => {
                let mut c = pool.get().map_err(|e| StorageError::Pool(e.to_string()))?;
                Ok(c.run_pending_migrations(SQLITE_MIGRATIONS)
                    .map_err(err)?
                    .len())
            }
            Pool::Postgres(pool) => {
                let mut c = pool.get().map_err(|e| StorageError::Pool(e.to_string()))?;
                // Replicas starting together must not run the same migration twice.
                c.batch_execute("SELECT pg_advisory_lock(7482937101)")?;
                let result = c
                    .run_pending_migrations(POSTGRES_MIGRATIONS)
                    .map(|v| v.len())
                    .map_err(err);
                c.batch_execute("SELECT pg_advisory_unlock(7482937101)")?;
                result
            }
        }
    }

    /// Reverts the `n` most recent migrations (their `down.sql`), newest first; returns their
    /// versions. Stops early when none is left.
    pub async fn revert_migrations(&self, n: usize) -> Result<Vec<String>, StorageError> {
        fn revert<C, D>(
            c: &mut C,
            migrations: fn() -> EmbeddedMigrations,
            n: usize,
        ) -> Result<Vec<String>, StorageError>
        where
            C: MigrationHarness<D>,
            D: diesel::backend::Backend,
        {
            let err = |e: Box<dyn std::error::Error + Send + Sync>| {
                StorageError::Migration(e.to_string())
            };
            let mut reverted = Vec::new();
            while reverted.len() < n && !c.applied_migrations().map_err(err)?.is_empty() {
                reverted.push(
                    c.revert_last_migration(migrations())
                        .map_err(err)?
                        .to_string(),
                );
            }
            Ok(reverted)
        }
        self.blocking(move |pool| match pool {
            Pool::Sqlite(pool) => {
                let mut c = pool.get().map_err(|e| StorageError::Pool(e.to_string()))?;
                revert(&mut *c, || SQLITE_MIGRATIONS, n)
            }
            Pool::Postgres(pool) => {
                let mut c = pool.get().map_err(|e| StorageError::Pool(e.to_string()))?;
                c.batch_execute("SELECT pg_advisory_lock(7482937101)")?;
                let result = revert(&mut *c, || POSTGRES_MIGRATIONS, n);
                c.batch_execute("SELECT pg_advisory_unlock(7482937101)")?;
                result
            }
        })
        .await
    }

    /// Runs one SQL statement as is (operators' maintenance and tests; never with user input).
    pub async fn raw_execute(&self, sql: &str) -> Result<(), StorageError> {
        let sql = sql.to_string();
        self.blocking(move |pool| {
            with_conn!(pool, c => {
                c.batch_execute(&sql)?;
                Ok(())
            })
        })
        .await
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Pool) -> Result<T, StorageError> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || f(&pool)).await?
    }
}

fn new_job_row(
    document_id: &str,
    version: i64,
    request_id: Option<String>,
    batch_id: Option<String>,
    now: i64,
) -> JobRow {
    JobRow {
        id: Uuid::new_v4().to_string(),
        document_id: document_id.to_string(),
        document_version: version,
        status: JobStatus::Queued.as_str().to_string(),
        attempts: 0,
        error: None,
        request_id,
        lease_owner: None,
        lease_until: None,
        created_at: now,
        updated_at: now,
        not_before: None,
        batch_id,
    }
}

#[async_trait]
impl MetadataStore for SqlStore {
    async fn ping(&self) -> Result<(), StorageError> {
        self.blocking(|pool| {
            with_conn!(pool, c => {
                c.batch_execute("SELECT 1")?;
                Ok(())
            })
        })
        .await
    }

    async fn submit_documents(
        &self,
        docs: Vec<NewDocument>,
        batch: Option<NewBatch>,
    ) -> Result<Vec<Submitted>, StorageError> {
        self.blocking(move |pool| with_conn!(pool, c => {
            let result = c.write_txn(|c| {
                let now = now_ms();
                let batch_id = batch.as_ref().map(|b| b.id.to_string());
                if let Some(b) = &batch {
                    let collections = serde_json::to_string(&b.collections)
                        .map_err(|e| StorageError::Corrupt(e.to_string()))?;
                    diesel::insert_into(batches::table)
                        .values((
                            batches::id.eq(b.id.to_string()),
                            batches::collections.eq(collections),
                            batches::total.eq(b.total),
                            batches::created_at.eq(now),
                        ))
                        .on_conflict(batches::id)
                        .do_nothing()
                        .execute(c)?;
                }
                let mut submitted = Vec::with_capacity(docs.len());
                for doc in &docs {
                let sha256 = hex::encode(Sha256::digest(&doc.content));
                let metadata = serde_json::to_string(&doc.metadata)
                    .map_err(|e| StorageError::Corrupt(e.to_string()))?;
                diesel::insert_into(collections::table)
                    .values((collections::name.eq(&doc.collection), collections::created_at.eq(now)))
                    .on_conflict(collections::name)
                    .do_nothing()
                    .execute(c)?;
                let content_ref = doc.content_ref.map(|r| r.to_string());
                let existing: Option<(String, i64, Option<String>)> = match &doc.external_id {
                    Some(ext) => documents::table
                        .filter(documents::collection.eq(&doc.collection))
                        .filter(documents::external_id.eq(ext))
                        .select((documents::id, documents::version, documents::content_ref))
                        .first(c)
                        .optional()?,
                    None => None,
                };
                let (id, version, previous_content_ref) = match existing {
                    Some((id, version, previous_ref)) => {
                        let version = version + 1;
                        diesel::update(documents::table.find(&id))
                            .set((
                                documents::title.eq(&doc.title),
                                documents::content_type.eq(&doc.content_type),
                                documents::metadata.eq(&metadata),
                                documents::status.eq(DocumentStatus::Queued.as_str()),
                                documents::version.eq(version),
                                documents::size_bytes.eq(doc.content.len() as i64),
                                documents::sha256.eq(&sha256),
                                documents::error.eq(None::<String>),
                                documents::updated_at.eq(now),
                                documents::content_ref.eq(&content_ref),
                            ))
                            .execute(c)?;
                        // Written anew below: the bytes may move between here and a separate
                        // store.
                        diesel::delete(document_contents::table.find(&id)).execute(c)?;
                        // Jobs for the previous version have nothing left to do.
                        diesel::update(
                            jobs::table
                                .filter(jobs::document_id.eq(&id))
                                .filter(jobs::status.eq(JobStatus::Queued.as_str())),
                        )
                        .set((
                            jobs::status.eq(JobStatus::Failed.as_str()),
                            jobs::error.eq("superseded by a newer upload"),
                            jobs::updated_at.eq(now),
                        ))
                        .execute(c)?;
                        (id, version, Some(previous_ref))
                    }
                    None => {
                        let id = Uuid::new_v4().to_string();
                        let row = DocumentRow {
                            id: id.clone(),
                            collection: doc.collection.clone(),
                            external_id: doc.external_id.clone(),
                            title: doc.title.clone(),
                            content_type: doc.content_type.clone(),
                            metadata: metadata.clone(),
                            status: DocumentStatus::Queued.as_str().to_string(),
                            version: 1,
                            chunk_count: 0,
                            size_bytes: doc.content.len() as i64,
                            sha256: sha256.clone(),
                            error: None,
                            created_at: now,
                            updated_at: now,
                            content_ref: content_ref.clone(),
                        };
                        diesel::insert_into(documents::table).values(&row).execute(c)?;
                        (id, 1, None)
                    }
                };
                if content_ref.is_none() {
                    diesel::insert_into(document_contents::table)
                        .values((
                            document_contents::document_id.eq(&id),
                            document_contents::content.eq(&doc.content),
                        ))
                        .execute(c)?;
                }
                let job = new_job_row(&id, version, doc.request_id.clone(), batch_id.clone(), now);
                diesel::insert_into(jobs::table).values(&job).execute(c)?;
                submitted.push(Submitted {
                    document_id: parse_uuid(&id)?,
                    job_id: parse_uuid(&job.id)?,
                    replaced: previous_content_ref.is_some(),
                    previous_content_ref: previous_content_ref.flatten().as_deref().map(parse_uuid).transpose()?,
                });
                }
                Ok(submitted)
            });
            match result {
                Err(StorageError::Conflict(_)) => Err(
                    StorageError::Conflict("a document with this external_id is being uploaded concurrently".into()),
                ),
                other => other,
            }
        }))
        .await
    }

    async fn get_document(&self, id: Uuid) -> Result<Option<Document>, StorageError> {
        self.blocking(move |pool| {
            with_conn!(pool, c => {
                documents::table
                    .find(id.to_string())
                    .select(DocumentRow::as_select())
                    .first(c)
                    .optional()?
                    .map(DocumentRow::into_document)
                    .transpose()
            })
        })
        .await
    }

    async fn list_documents(
        &self,
        collection: Option<String>,
        within: Option<Vec<String>>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Document>, StorageError> {
        self.blocking(move |pool| {
            with_conn!(pool, c => {
                let mut query = documents::table.select(DocumentRow::as_select()).into_boxed();
                if let Some(collection) = collection {
                    query = query.filter(documents::collection.eq(collection));
                }
                if let Some(within) = within.clone() {
                    query = query.filter(documents::collection.eq_any(within));
                }
                query
                    .order((documents::created_at.desc(), documents::id))
                    .limit(limit)
                    .offset(offset)
                    .load(c)?
                    .into_iter()
                    .map(DocumentRow::into_document)
                    .collect()
            })
        })
        .await
    }

    async fn delete_document(&self, id: Uuid) -> Result<Option<DeletedDocument>, StorageError> {
        let wake = Arc::clone(&self.webhook_wake);
        self.blocking(move |pool| {
            with_conn!(pool, c => {
                let mut enqueued = 0;
                let deleted = c.write_txn(|c| {
                    let document_id = id;
                    let id = id.to_string();
                    let Some(row) = documents::table
                        .find(&id)
                        .select(DocumentRow::as_select())
                        .first(c)
                        .optional()?
                    else {
                        return Ok(None);
                    };
                    let active: i64 = jobs::table
                        .filter(jobs::document_id.eq(&id))
                        .filter(jobs::status.eq_any([JobStatus::Queued.as_str(), JobStatus::Running.as_str()]))
                        .count()
                        .get_result(c)?;
                    // Explicit deletes rather than relying on ON DELETE CASCADE, which SQLite only
                    // honours when the foreign_keys pragma is on for this connection.
                    let jobs_removed = diesel::delete(jobs::table.filter(jobs::document_id.eq(&id))).execute(c)?;
                    let chunks_removed = diesel::delete(chunks::table.filter(chunks::document_id.eq(&id))).execute(c)?;
                    diesel::delete(document_contents::table.find(&id)).execute(c)?;
                    diesel::delete(documents::table.find(&id)).execute(c)?;
                    diesel::insert_into(deletions::table)
                        .values((
                            deletions::document_id.eq(&id),
                            deletions::collection.eq(&row.collection),
                            deletions::deleted_at.eq(now_ms()),
                            deletions::attempts.eq(0),
                        ))
                        .on_conflict(deletions::document_id)
                        .do_update()
                        .set(deletions::deleted_at.eq(now_ms()))
                        .execute(c)?;
                    // With the deletion record: the event is as durable as the deletion.
                    let event = DocumentEvent {
                        event: WebhookEvent::DocumentDeleted,
                        collection: row.collection.clone(),
                        document_id,
                        job_id: None,
                        version: row.version,
                        error: None,
                    };
                    enqueued = enqueue_webhooks!(c, &event, now_ms())?;
                    Ok(Some(DeletedDocument {
                        document: row.into_document()?,
                        chunks: chunks_removed as u64,
                        jobs: jobs_removed as u64,
                        was_indexing: active > 0,
                    }))
                });
                if enqueued > 0 && deleted.is_ok() {
                    wake.notify_one();
                }
                deleted
            })
        })
        .await
    }

    async fn pending_deletions(&self, limit: i64) -> Result<Vec<Deletion>, StorageError> {
        self.blocking(move |pool| {
            with_conn!(pool, c => {
                let rows: Vec<(String, String, i64, i32)> = deletions::table
                    .select((deletions::document_id, deletions::collection, deletions::deleted_at, deletions::attempts))
                    .order(deletions::deleted_at)
                    .limit(limit)
                    .load(c)?;
                rows.into_iter()
                    .map(|(id, collection, at, attempts)| {
                        Ok(Deletion { document_id: parse_uuid(&id)?, collection, deleted_at: to_time(at), attempts })
                    })
                    .collect()
            })
        })
        .await
    }

    async fn settle_deletion(
        &self,
        id: Uuid,
        outcome: Result<(), String>,
    ) -> Result<(), StorageError> {
        self.blocking(move |pool| {
            with_conn!(pool, c => {
                let target = deletions::table.find(id.to_string());
                match outcome {
                    Ok(()) => {
                        diesel::delete(target).execute(c)?;
                    }
                    Err(error) => {
                        diesel::update(target)
                            .set((deletions::attempts.eq(deletions::attempts + 1), deletions::last_error.eq(error)))
                            .execute(c)?;
                    }
                }
                Ok(())
            })
        })
        .await
    }

    async fn get_job(&self, id: Uuid) -> Result<Option<Job>, StorageError> {
        self.blocking(move |pool| {
            with_conn!(pool, c => {
                jobs::table
                    .find(id.to_string())
                    .select(JobRow::as_select())
                    .first(c)
                    .optional()?
                    .map(JobRow::into_job)
                    .transpose()
            })
        })
        .await
    }

    async fn claim_jobs(
        &self,
        worker: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedJob>, StorageError> {
        let worker = worker.to_string();
        let limit = limit.clamp(1, 10_000) as i64;
        self.blocking(move |pool| with_conn!(pool, c => {
            c.write_txn(|c| {
                let now = now_ms();
                let mut rows: Vec<ClaimRow> = diesel::sql_query(claim_sql(&*c))
                    .bind::<Text, _>(&worker)
                    .bind::<BigInt, _>(now + lease.as_millis() as i64)
                    .bind::<BigInt, _>(now)
                    .bind::<BigInt, _>(now)
                    .bind::<BigInt, _>(now)
                    .bind::<BigInt, _>(limit)
                    .load(c)?;
                // RETURNING gives no order; work oldest first.
                rows.sort_by_key(|r| (r.created_at, r.id.clone()));
                let mut claimed = Vec::with_capacity(rows.len());
                for row in rows {
                    diesel::update(
                        documents::table
                            .find(&row.document_id)
                            .filter(documents::version.eq(row.document_version)),
                    )
                    .set((documents::status.eq(DocumentStatus::Indexing.as_str()), documents::updated_at.eq(now)))
                    .execute(c)?;
                    claimed.push(ClaimedJob {
                        job_id: parse_uuid(&row.id)?,
                        document_id: parse_uuid(&row.document_id)?,
                        document_version: row.document_version,
                        attempts: row.attempts,
                        request_id: row.request_id,
                    });
                }
                Ok(claimed)
            })
        }))
        .await
    }

    async fn renew_lease(
        &self,
        job_id: Uuid,
        worker: &str,
        lease: Duration,
    ) -> Result<bool, StorageError> {
        let worker = worker.to_string();
        self.blocking(move |pool| with_conn!(pool, c => {
            let now = now_ms();
            let n = diesel::update(
                held_job!(job_id.to_string(), &worker),
            )
            .set((jobs::lease_until.eq(now + lease.as_millis() as i64), jobs::updated_at.eq(now)))
            .execute(c)?;
            Ok(n == 1)
        }))
        .await
    }

    async fn finish_jobs(
        &self,
        worker: &str,
        jobs: Vec<(ClaimedJob, FinishedChunks)>,
    ) -> Result<Vec<Finish>, StorageError> {
        let worker = worker.to_string();
        let wake = Arc::clone(&self.webhook_wake);
        self.blocking(move |pool| {
            with_conn!(pool, c => {
                let mut enqueued = 0;
                let finished = c.write_txn(|c| {
                    let now = now_ms();
                    let mut outcomes = Vec::with_capacity(jobs.len());
                    for (job, new_chunks) in &jobs {
                    let outcome = (|| -> Result<Finish, StorageError> {
                    let job_id = job.job_id.to_string();
                    let doc_id = job.document_id.to_string();
                    let held: i64 = held_job!(&job_id, &worker)
                        .count()
                        .get_result(c)?;
                    if held == 0 {
                        let exists: i64 = documents::table.find(&doc_id).count().get_result(c)?;
                        return Ok(if exists == 0 { Finish::Deleted } else { Finish::LeaseLost });
                    }
                    let current: Option<(i64, String)> = documents::table
                        .find(&doc_id)
                        .select((documents::version, documents::collection))
                        .first(c)
                        .optional()?;
                    let release = (
                        jobs::lease_owner.eq(None::<String>),
                        jobs::lease_until.eq(None::<i64>),
                        jobs::updated_at.eq(now),
                    );
                    match current {
                        None => Ok(Finish::Deleted),
                        // A superseded job reports nothing: the newer version's job will.
                        Some((v, _)) if v != job.document_version => {
                            diesel::update(jobs::table.find(&job_id))
                                .set((
                                    jobs::status.eq(JobStatus::Failed.as_str()),
                                    jobs::error.eq(format!("superseded by version {v} of the document")),
                                    release,
                                ))
                                .execute(c)?;
                            Ok(Finish::Superseded)
                        }
                        Some((_, collection)) => {
                            let n = match new_chunks {
                                FinishedChunks::Inline(chunks) => {
                                    write_chunks!(c, &doc_id, chunks)?;
                                    chunks.len() as i64
                                }
                                FinishedChunks::Stored(n) => *n,
                            };
                            diesel::update(documents::table.find(&doc_id))
                                .set((
                                    documents::status.eq(DocumentStatus::Indexed.as_str()),
                                    documents::chunk_count.eq(n),
                                    documents::error.eq(None::<String>),
                                    documents::updated_at.eq(now),
                                ))
                                .execute(c)?;
                            diesel::update(jobs::table.find(&job_id))
                                .set((jobs::status.eq(JobStatus::Done.as_str()), jobs::error.eq(None::<String>), release))
                                .execute(c)?;
                            // In the fenced finish: `job.done` is recorded exactly when the
                            // chunks go live.
                            let event = DocumentEvent {
                                event: WebhookEvent::JobDone,
                                collection,
                                document_id: job.document_id,
                                job_id: Some(job.job_id),
                                version: job.document_version,
                                error: None,
                            };
                            enqueued += enqueue_webhooks!(c, &event, now)?;
                            Ok(Finish::Live)
                        }
                    }
                    })()?;
                    outcomes.push(outcome);
                    }
                    Ok(outcomes)
                });
                if enqueued > 0 && finished.is_ok() {
                    wake.notify_one();
                }
                finished
            })
        })
        .await
    }

    async fn fail_job(
        &self,
        job: &ClaimedJob,
        worker: &str,
        error: &str,
        retry_in: Option<Duration>,
        max_attempts: i32,
    ) -> Result<Option<JobStatus>, StorageError> {
        let job = job.clone();
        let worker = worker.to_string();
        let error = error.to_string();
        let wake = Arc::clone(&self.webhook_wake);
        self.blocking(move |pool| with_conn!(pool, c => {
            let mut enqueued = 0;
            let failed = c.write_txn(|c| {
                let now = now_ms();
                let status = if retry_in.is_some() && job.attempts < max_attempts { JobStatus::Queued } else { JobStatus::Failed };
                let not_before = retry_in.map(|d| now + d.as_millis() as i64);
                let updated = diesel::update(
                    held_job!(job.job_id.to_string(), &worker),
                )
                .set((
                    jobs::status.eq(status.as_str()),
                    jobs::not_before.eq(not_before),
                    jobs::error.eq(&error),
                    jobs::lease_owner.eq(None::<String>),
                    jobs::lease_until.eq(None::<i64>),
                    jobs::updated_at.eq(now),
                ))
                .execute(c)?;
                if updated == 0 {
                    return Ok(None);
                }
                let doc_status = if status == JobStatus::Failed { DocumentStatus::Failed } else { DocumentStatus::Queued };
                let doc_id = job.document_id.to_string();
                let current = diesel::update(
                    documents::table
                        .find(&doc_id)
                        .filter(documents::version.eq(job.document_version)),
                )
                .set((
                    documents::status.eq(doc_status.as_str()),
                    documents::error.eq(&error),
                    documents::updated_at.eq(now),
                ))
                .execute(c)?;
                if current == 1 && status == JobStatus::Failed {
                    diesel::delete(chunks::table.filter(chunks::document_id.eq(&doc_id))).execute(c)?;
                    diesel::update(documents::table.find(&doc_id))
                        .set(documents::chunk_count.eq(0))
                        .execute(c)?;
                }
                if status == JobStatus::Failed {
                    // In the fenced failure: only the worker that really gave up reports it.
                    let collection: Option<String> = documents::table
                        .find(&doc_id)
                        .select(documents::collection)
                        .first(c)
                        .optional()?;
                    if let Some(collection) = collection {
                        let event = DocumentEvent {
                            event: WebhookEvent::JobFailed,
                            collection,
                            document_id: job.document_id,
                            job_id: Some(job.job_id),
                            version: job.document_version,
                            error: Some(error.clone()),
                        };
                        enqueued = enqueue_webhooks!(c, &event, now)?;
                    }
                }
                Ok(Some(status))
            });
            if enqueued > 0 && failed.is_ok() {
                wake.notify_one();
            }
            failed
        }))
        .await
    }

    async fn postpone_job(
        &self,
        job: &ClaimedJob,
        worker: &str,
        error: &str,
        retry_in: Duration,
    ) -> Result<bool, StorageError> {
        let job = job.clone();
        let worker = worker.to_string();
        let error = error.to_string();
        self.blocking(move |pool| with_conn!(pool, c => {
            c.write_txn(|c| {
                let now = now_ms();
                let updated = diesel::update(
                    held_job!(job.job_id.to_string(), &worker),
                )
                .set((
                    jobs::status.eq(JobStatus::Queued.as_str()),
                    jobs::attempts.eq(jobs::attempts - 1),
                    jobs::not_before.eq(Some(now + retry_in.as_millis() as i64)),
                    jobs::error.eq(&error),
                    jobs::lease_owner.eq(None::<String>),
                    jobs::lease_until.eq(None::<i64>),
                    jobs::updated_at.eq(now),
                ))
                .execute(c)?;
                if updated == 1 {
                    diesel::update(
                        documents::table
                            .find(job.document_id.to_string())
                            .filter(documents::version.eq(job.document_version)),
                    )
                    .set((documents::status.eq(DocumentStatus::Queued.as_str()), documents::updated_at.eq(now)))
                    .execute(c)?;
                }
                Ok(updated == 1)
            })
        }))
        .await
    }

    async fn inventory(&self) -> Result<Inventory, StorageError> {
        self.blocking(|pool| with_conn!(pool, c => c.snapshot(|c| {
            let rows: Vec<InventoryRow> = diesel::sql_query(
                "SELECT d.id, d.collection, d.version, d.status, d.chunk_count, d.content_ref, \
                   CAST((SELECT COUNT(*) FROM chunks k WHERE k.document_id = d.id) AS BIGINT) AS stored_chunks, \
                   CAST((SELECT COUNT(*) FROM jobs j WHERE j.document_id = d.id \
                         AND j.status IN ('queued', 'running')) AS BIGINT) AS active_jobs \
                 FROM documents d ORDER BY d.id",
            )
            .load(c)?;
            let documents = rows
                .into_iter()
                .map(|r| {
                    Ok(DocumentState {
                        id: parse_uuid(&r.id)?,
                        collection: r.collection,
                        version: r.version,
                        status: DocumentStatus::parse(&r.status)?,
                        chunk_count: r.chunk_count,
                        stored_chunks: r.stored_chunks,
                        active_jobs: r.active_jobs,
                        content_ref: r.content_ref.as_deref().map(parse_uuid).transpose()?,
                    })
                })
                .collect::<Result<Vec<_>, StorageError>>()?;
            let orphans: Vec<String> = chunks::table
                .left_join(documents::table.on(documents::id.eq(chunks::document_id)))
                .filter(documents::id.is_null())
                .select(chunks::document_id)
                .distinct()
                .load(c)?;
            // A lease runs out when its worker died; one expired for longer than a lease again
            // means no live worker took the job over.
            let stale = now_ms() - 60_000;
            let stuck: Vec<String> = jobs::table
                .filter(jobs::status.eq(JobStatus::Running.as_str()))
                .filter(jobs::lease_until.lt(stale))
                .select(jobs::id)
                .load(c)?;
            Ok(Inventory {
                documents,
                orphan_chunk_documents: orphans.iter().map(|s| parse_uuid(s)).collect::<Result<_, _>>()?,
                stuck_jobs: stuck.iter().map(|s| parse_uuid(s)).collect::<Result<_, _>>()?,
            })
        })))
        .await
    }

    async fn reindex(&self, id: Uuid) -> Result<bool, StorageError> {
        self.blocking(move |pool| with_conn!(pool, c => {
            c.write_txn(|c| {
                let now = now_ms();
                let id = id.to_string();
                let Some(version) = documents::table
                    .find(&id)
                    .select(documents::version)
                    .first::<i64>(c)
                    .optional()?
                else {
                    return Ok(false);
                };
                diesel::update(
                    jobs::table
                        .filter(jobs::document_id.eq(&id))
                        .filter(jobs::status.eq_any([JobStatus::Queued.as_str(), JobStatus::Running.as_str()])),
                )
                .set((
                    jobs::status.eq(JobStatus::Failed.as_str()),
                    jobs::error.eq("replaced by a repair re-index"),
                    jobs::lease_owner.eq(None::<String>),
                    jobs::lease_until.eq(None::<i64>),
                    jobs::updated_at.eq(now),
                ))
                .execute(c)?;
                diesel::insert_into(jobs::table)
                    .values(new_job_row(&id, version, Some("verify-repair".into()), None, now))
                    .execute(c)?;
                diesel::update(documents::table.find(&id))
                    .set((documents::status.eq(DocumentStatus::Queued.as_str()), documents::updated_at.eq(now)))
                    .execute(c)?;
                Ok(true)
            })
        }))
        .await
    }

    async fn export_documents(
        &self,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<Document>, StorageError> {
        self.blocking(move |pool| {
            with_conn!(pool, c => {
                let mut query = documents::table.select(DocumentRow::as_select()).into_boxed();
                if let Some(after) = after {
                    query = query.filter(documents::id.gt(after.to_string()));
                }
                query
                    .order(documents::id)
                    .limit(limit)
                    .load(c)?
                    .into_iter()
                    .map(DocumentRow::into_document)
                    .collect()
            })
        })
        .await
    }

    async fn restore_documents(&self, docs: Vec<RestoredDocument>) -> Result<(), StorageError> {
        self.blocking(move |pool| with_conn!(pool, c => {
            c.write_txn(|c| {
                let now = now_ms();
                for restored in &docs {
                    let doc = &restored.document;
                    let id = doc.id.to_string();
                    let created_at = doc.created_at.timestamp_millis();
                    diesel::insert_into(collections::table)
                        .values((collections::name.eq(&doc.collection), collections::created_at.eq(created_at)))
                        .on_conflict(collections::name)
                        .do_nothing()
                        .execute(c)?;
                    let metadata = serde_json::to_string(&doc.metadata)
                        .map_err(|e| StorageError::Corrupt(e.to_string()))?;
                    let status = if restored.queue_job { DocumentStatus::Queued } else { doc.status };
                    let row = DocumentRow {
                        id: id.clone(),
                        collection: doc.collection.clone(),
                        external_id: doc.external_id.clone(),
                        title: doc.title.clone(),
                        content_type: doc.content_type.clone(),
                        metadata,
                        status: status.as_str().to_string(),
                        version: doc.version,
                        // Queued and failed documents have no live chunks.
                        chunk_count: if status == DocumentStatus::Indexed { doc.chunk_count } else { 0 },
                        size_bytes: doc.size_bytes,
                        sha256: doc.sha256.clone(),
                        error: doc.error.clone(),
                        created_at,
                        updated_at: doc.updated_at.timestamp_millis(),
                        content_ref: doc.content_ref.map(|r| r.to_string()),
                    };
                    diesel::insert_into(documents::table).values(&row).execute(c)?;
                    if let Some(content) = &restored.content {
                        diesel::insert_into(document_contents::table)
                            .values((
                                document_contents::document_id.eq(&id),
                                document_contents::content.eq(content),
                            ))
                            .execute(c)?;
                    }
                    if !restored.chunks.is_empty() {
                        write_chunks!(c, &id, restored.chunks)?;
                    }
                    if restored.queue_job {
                        let job = new_job_row(&id, doc.version, Some("restore".into()), None, now);
                        diesel::insert_into(jobs::table).values(&job).execute(c)?;
                    }
                }
                Ok(())
            })
        }))
        .await
    }

    async fn delete_orphan_chunks(&self) -> Result<u64, StorageError> {
        self.blocking(|pool| with_conn!(pool, c => {
            let n = diesel::sql_query(
                "DELETE FROM chunks WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.id = chunks.document_id)",
            )
            .execute(c)?;
            Ok(n as u64)
        }))
        .await
    }

    async fn requeue_running(&self, all: bool) -> Result<u64, StorageError> {
        self.blocking(move |pool| with_conn!(pool, c => {
            c.write_txn(|c| {
                let now = now_ms();
                let mut running = jobs::table.filter(jobs::status.eq(JobStatus::Running.as_str())).into_boxed();
                if !all {
                    running = running.filter(jobs::lease_until.lt(now));
                }
                let ids: Vec<String> = running.select(jobs::id).load(c)?;
                let n = diesel::update(jobs::table.filter(jobs::id.eq_any(&ids)))
                    .set((
                        jobs::status.eq(JobStatus::Queued.as_str()),
                        jobs::lease_owner.eq(None::<String>),
                        jobs::lease_until.eq(None::<i64>),
                        jobs::updated_at.eq(now),
                    ))
                    .execute(c)?;
                Ok(n as u64)
            })
        }))
        .await
    }

    async fn list_collections(&self) -> Result<Vec<CollectionInfo>, StorageError> {
        self.blocking(|pool| with_conn!(pool, c => {
            let rows: Vec<CollectionRow> = diesel::sql_query(
                "SELECT c.name, c.created_at, CAST(COUNT(d.id) AS BIGINT) AS documents \
                 FROM collections c LEFT JOIN documents d ON d.collection = c.name \
                 GROUP BY c.name, c.created_at ORDER BY c.name",
            )
            .load(c)?;
            Ok(rows
                .into_iter()
                .map(|r| CollectionInfo { name: r.name, documents: r.documents, created_at: to_time(r.created_at) })
                .collect())
        }))
        .await
    }

    async fn get_batch(&self, id: Uuid) -> Result<Option<(BatchView, Vec<String>)>, StorageError> {
        let key = id.to_string();
        self.blocking(move |pool| with_conn!(pool, c => c.snapshot(|c| {
            let row: Option<(String, i64, i64)> = batches::table
                .find(&key)
                .select((batches::collections, batches::total, batches::created_at))
                .first(c)
                .optional()?;
            let Some((collections, total, created_at)) = row else { return Ok(None) };
            let collections: Vec<String> = serde_json::from_str(&collections)
                .map_err(|e| StorageError::Corrupt(format!("batch collections: {e}")))?;
            let by_status: Vec<(String, i64)> = jobs::table
                .filter(jobs::batch_id.eq(&key))
                .group_by(jobs::status)
                .select((jobs::status, diesel::dsl::count_star()))
                .load(c)?;
            let mut counts = JobCounts::default();
            for (status, n) in by_status {
                match JobStatus::parse(&status)? {
                    JobStatus::Queued => counts.queued = n,
                    JobStatus::Running => counts.running = n,
                    JobStatus::Done => counts.done = n,
                    JobStatus::Failed => counts.failed = n,
                }
            }
            let failed: Vec<(String, Option<String>, String, Option<String>)> = jobs::table
                .inner_join(documents::table)
                .filter(jobs::batch_id.eq(&key))
                .filter(jobs::status.eq(JobStatus::Failed.as_str()))
                .order((jobs::updated_at, jobs::id))
                .limit(BATCH_FAILURES_SHOWN as i64)
                .select((jobs::document_id, documents::external_id, documents::title, jobs::error))
                .load(c)?;
            let failures = failed
                .into_iter()
                .map(|(document_id, external_id, title, error)| {
                    Ok(BatchFailure {
                        document_id: parse_uuid(&document_id)?,
                        external_id,
                        title,
                        error: error.unwrap_or_default(),
                    })
                })
                .collect::<Result<Vec<_>, StorageError>>()?;
            let view = BatchView {
                batch_id: id,
                total,
                finished: counts.queued == 0 && counts.running == 0,
                counts,
                failures,
                created_at: to_time(created_at),
            };
            Ok(Some((view, collections)))
        })))
        .await
    }

    async fn stats(&self) -> Result<MetadataStats, StorageError> {
        // One snapshot: counts read at different moments disagree while jobs complete.
        self.blocking(|pool| with_conn!(pool, c => c.snapshot(|c| {
            let count = |c: &mut _, sql: &str| -> Result<i64, StorageError> {
                let rows: Vec<CountRow> = diesel::sql_query(sql).load(c)?;
                Ok(rows.first().map(|r| r.n).unwrap_or(0))
            };
            let documents = count(c, "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM documents")?;
            let documents_indexed =
                count(c, "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM documents WHERE status = 'indexed'")?;
            let chunks = count(c, "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM chunks")?;
            let indexed_chunks = count(
                c,
                "SELECT CAST(COALESCE(SUM(chunk_count), 0) AS BIGINT) AS n FROM documents WHERE status = 'indexed'",
            )?;
            let collections = count(c, "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM collections")?;
            let by_status: Vec<StatusCountRow> =
                diesel::sql_query("SELECT status, CAST(COUNT(*) AS BIGINT) AS n FROM jobs GROUP BY status").load(c)?;
            let mut jobs = JobCounts::default();
            for row in by_status {
                match JobStatus::parse(&row.status)? {
                    JobStatus::Queued => jobs.queued = row.n,
                    JobStatus::Running => jobs.running = row.n,
                    JobStatus::Done => jobs.done = row.n,
                    JobStatus::Failed => jobs.failed = row.n,
                }
            }
            Ok(MetadataStats { documents, documents_indexed, chunks, indexed_chunks, collections, jobs })
        })))
        .await
    }

    async fn queue_state(&self) -> Result<QueueState, StorageError> {
        self.blocking(|pool| with_conn!(pool, c => {
            let rows: Vec<QueueRow> = diesel::sql_query(
                "SELECT status, CAST(COUNT(*) AS BIGINT) AS n, CAST(MIN(created_at) AS BIGINT) AS oldest \
                 FROM jobs WHERE status IN ('queued', 'running') GROUP BY status",
            )
            .load(c)?;
            let mut state = QueueState::default();
            for row in rows {
                match JobStatus::parse(&row.status)? {
                    JobStatus::Queued => {
                        state.queued = row.n;
                        state.oldest_queued_at = row.oldest.and_then(chrono::DateTime::from_timestamp_millis);
                    }
                    JobStatus::Running => state.running = row.n,
                    JobStatus::Done | JobStatus::Failed => {}
                }
            }
            Ok(state)
        }))
        .await
    }

    fn pool_state(&self) -> (u32, u32, u32) {
        let (state, max) = match &self.pool {
            Pool::Sqlite(p) => (p.state(), p.max_size()),
            Pool::Postgres(p) => (p.state(), p.max_size()),
        };
        (state.connections, state.idle_connections, max)
    }

    async fn compact(&self) -> Result<(), StorageError> {
        self.blocking(|pool| match pool {
            Pool::Sqlite(pool) => {
                let mut c = pool.get().map_err(|e| StorageError::Pool(e.to_string()))?;
                c.batch_execute("PRAGMA wal_checkpoint(TRUNCATE)")?;
                Ok(())
            }
            Pool::Postgres(_) => Ok(()),
        })
        .await
    }

    fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }
}

fn claim_sql<C: Dialect>(_: &C) -> &'static str {
    C::CLAIM_SQL
}

/// Originals and chunks ride in the metadata transactions (`submit_document`, `finish_job`,
/// `fail_job`, `delete_document`), so the writes of the document-store protocol have nothing left
/// to do here.
#[async_trait]
impl DocumentStore for SqlStore {
    fn inline(&self) -> bool {
        true
    }

    async fn put_original(&self, _: Uuid, _: Vec<u8>) -> Result<(), StorageError> {
        Ok(())
    }

    async fn get_original(&self, doc: &Document) -> Result<Option<Vec<u8>>, StorageError> {
        let id = doc.id.to_string();
        self.blocking(move |pool| {
            with_conn!(pool, c => {
                Ok(document_contents::table
                    .find(&id)
                    .select(document_contents::content)
                    .first::<Vec<u8>>(c)
                    .optional()?)
            })
        })
        .await
    }

    async fn delete_original(&self, _: Uuid) -> Result<(), StorageError> {
        Ok(())
    }

    async fn stage(
        &self,
        _: Uuid,
        _: i64,
        _: String,
        _: Vec<StoredChunk>,
    ) -> Result<(), StorageError> {
        Ok(())
    }

    async fn publish(&self, _: Uuid, _: i64) -> Result<(), StorageError> {
        Ok(())
    }

    async fn discard(&self, _: Uuid, _: Option<i64>) -> Result<(), StorageError> {
        Ok(())
    }

    async fn delete_document(&self, _: Uuid, _: Option<Uuid>) -> Result<u64, StorageError> {
        Ok(0)
    }

    async fn get_chunks(&self, ids: Vec<Uuid>) -> Result<Vec<StoredChunk>, StorageError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.blocking(move |pool| {
            with_conn!(pool, c => {
                let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
                let rows: Vec<ChunkRow> = chunks::table
                    .filter(chunks::id.eq_any(&ids))
                    .select(ChunkRow::as_select())
                    .load(c)?;
                rows.into_iter()
                    .map(|r| {
                        Ok(StoredChunk {
                            id: parse_uuid(&r.id)?,
                            document_id: parse_uuid(&r.document_id)?,
                            chunk_index: r.chunk_index,
                            text: r.text,
                            token_count: r.token_count,
                            offset: None,
                        })
                    })
                    .collect()
            })
        })
        .await
    }

    async fn chunk_counts(&self) -> Result<HashMap<Uuid, i64>, StorageError> {
        Ok(HashMap::new())
    }

    async fn original_refs(&self) -> Result<Vec<(Uuid, DateTime<Utc>)>, StorageError> {
        Ok(Vec::new())
    }

    async fn health(&self) -> Result<(), StorageError> {
        MetadataStore::ping(self).await
    }

    fn backend(&self) -> &'static str {
        MetadataStore::backend(self)
    }
}

// After `with_conn!`, which it uses.
mod answers;
mod security;
mod webhooks;
