//! [`VectorIndex`] on the in-process Qdrant engine (`qdrant-edge` 0.7.2): one shard in a local
//! directory, so a single machine runs hybrid search with nothing installed.
//!
//! The shard holds, per chunk, a dense embedding (`"dense"`, cosine) and a BM25 sparse vector
//! (`"bm25"`). The sparse vectors we store carry only BM25 term-frequency weights; the engine
//! applies IDF at query time (`Modifier::Idf`), so adding documents never requires re-embedding the
//! old ones.
//!
//! Durability is the subtle part. In 0.7.2 `EdgeShard::load` never replays the write-ahead log: the
//! WAL is written but only the segment files are read back. An update is therefore durable only
//! once the segments are flushed, and the only public flush is `EdgeShard::flush`, which takes its
//! locks with `try_lock().expect(..)` and panics when an update or an optimizer holds them. Every
//! write here is `update` followed by `flush` under one gate mutex, and `optimize` runs under the
//! same gate, so the flush never races the locks it would panic on and an acknowledged write
//! survives SIGKILL. Searches and counts take only the engine's own read locks and skip the gate.
//!
//! The same release never truncates its WAL either (its `ack` is private): left alone the log grows
//! by every write forever and keeps the titles and metadata of deleted documents. The WAL cannot
//! simply be deleted: its entry numbers are the operation versions the segments compare updates
//! against, and a log restarted at 0 would have every later update ignored. So the WAL is kept in
//! small segments ([`WAL_SEGMENT_BYTES`]) and pruned the way its own `ack` would prune it: with the
//! shard closed (at open, and when [`VectorIndex::optimize`] reopens it after deletes or once the
//! log passes [`WAL_ROTATE_BYTES`]), every closed segment but the newest is removed, which keeps
//! the numbering. Optimize also vacuums every segment with deleted points, so a deleted document's
//! payload leaves the segment files. (qdrant-edge 0.9 replays and acknowledges its WAL itself;
//! this project pins 0.7.2.)
//!
//! Every engine call blocks (file I/O, index builds), so each one runs on the blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    Condition, CountRequest, CreateIndex, Distance, EdgeConfig, EdgeOptimizersConfig, EdgeShard,
    EdgeSparseVectorParams, EdgeVectorParams, FieldCondition, FieldIndexOperations, Filter, Fusion,
    JsonPath, Match, Modifier, NamedQuery, Payload, PayloadFieldSchema, PayloadSchemaType, PointId,
    PointInsertOperations, PointOperations, PointStructPersisted, Prefetch, QueryEnum,
    QueryRequest, Record, ScoredPoint, ScoringQuery, ScrollRequest, SparseVector, UpdateOperation,
    VectorInternal, VectorPersisted, VectorStructInternal, VectorStructPersisted, WalOptions,
    WithPayloadInterface, WithVector,
};
use serde_json::Value;
use uuid::Uuid;

use super::{
    ChunkPayload, DENSE_VECTOR, IndexPoint, KEYWORD_FIELDS, MatchValue, Plan, SPARSE_VECTOR,
    SparseVec, VectorHit, VectorIndex, VectorQuery, bad_key, check_dense, payload_object,
    scope_conditions,
};
use crate::storage::StorageError;

/// Written by `EdgeShard::new`; its presence means the directory already holds a shard.
const EDGE_CONFIG_FILE: &str = "edge_config.json";

/// The WAL is pruned once it holds this much (it is never read back; see the module docs).
pub const WAL_ROTATE_BYTES: u64 = 32 << 20;
/// Size of one WAL segment file: what pruning leaves is at most about two of them.
pub const WAL_SEGMENT_BYTES: usize = 1 << 20;
/// The engine's WAL directory inside the shard directory.
const WAL_DIR: &str = "wal";
/// Held (flock) by the process that has the index open.
const LOCK_FILE: &str = "doc-rag.lock";

/// The open shard; `None` only if reopening it after a WAL rotation failed.
type Slot = Arc<RwLock<Option<Arc<EdgeShard>>>>;

/// The Qdrant-edge vector index. Cheap to share behind an `Arc<dyn VectorIndex>`.
pub struct EdgeVectorIndex {
    slot: Slot,
    /// Serialises every `update`+`flush` pair, `optimize` and WAL rotation; see the module docs.
    write_gate: Arc<Mutex<()>>,
    dim: usize,
    dir: PathBuf,
    /// Set by deletes: the next maintenance vacuums and rotates the WAL.
    deleted: Arc<AtomicBool>,
    /// Our claim on the directory; WAL pruning touches files only while it is held.
    _lock: std::fs::File,
}

fn current(slot: &Slot) -> Result<Arc<EdgeShard>, StorageError> {
    slot.read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or_else(|| StorageError::Vector("the vector index could not be reopened".into()))
}

impl Drop for EdgeVectorIndex {
    fn drop(&mut self) {
        // `EdgeShard` flushes when dropped and panics if that fails, which it does once its
        // directory is gone (a test's temporary data dir). Every write was flushed when it was
        // made, so skipping that last flush loses nothing: keep the shard alive instead.
        let slot = self.slot.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(shard) = slot.as_ref()
            && !shard.path().exists()
        {
            std::mem::forget(Arc::clone(shard));
        }
    }
}

impl EdgeVectorIndex {
    /// Opens the shard at `dir` (creating it when it does not exist; loading it otherwise). `dim`
    /// is the dense vector size; loading a shard built with another size fails with a message
    /// saying so instead of failing later on every upsert.
    pub fn open(dir: &Path, dim: usize) -> Result<Self, StorageError> {
        if dim == 0 {
            return Err(StorageError::Vector(
                "dense vector size must be positive".into(),
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| {
            StorageError::Vector(format!(
                "cannot create vector index directory {}: {e}",
                dir.display()
            ))
        })?;

        let lock = lock_dir(dir)?;
        // With the shard still closed, drop what the WAL kept from earlier runs (module docs).
        prune_wal(dir)?;
        let config = shard_config(dim);
        let shard = if dir.join(EDGE_CONFIG_FILE).exists() {
            load_shard(dir, config)?
        } else {
            match EdgeShard::new(dir, config.clone()) {
                Ok(shard) => shard,
                // `new` refuses a directory that already has segments (e.g. the config file was
                // removed by hand); loading is then the only way to keep the data.
                Err(new_err) => load_shard(dir, config).map_err(|load_err| {
                    StorageError::Vector(format!(
                        "cannot create vector index at {} ({new_err}) nor load it ({load_err})",
                        dir.display()
                    ))
                })?,
            }
        };

        // Run on every open, not only on creation: creating an index that exists is a no-op, and
        // a shard created by an older build (or by hand) gets the indexes this way. The optimizer
        // carries them over to the segments it builds.
        let write_gate = Arc::new(Mutex::new(()));
        ensure_payload_indexes(&shard, &write_gate)?;
        Ok(Self {
            slot: Arc::new(RwLock::new(Some(Arc::new(shard)))),
            write_gate,
            dim,
            dir: dir.to_path_buf(),
            deleted: Arc::new(AtomicBool::new(false)),
            _lock: lock,
        })
    }

    /// Runs `f` on the blocking pool with a handle to the shard.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&EdgeShard) -> Result<T, StorageError> + Send + 'static,
    {
        let slot = Arc::clone(&self.slot);
        tokio::task::spawn_blocking(move || {
            let shard = current(&slot)?;
            f(&shard)
        })
        .await?
    }

    /// Applies one update operation and flushes it to disk before returning.
    async fn write(
        &self,
        what: &'static str,
        operation: UpdateOperation,
    ) -> Result<(), StorageError> {
        let gate = Arc::clone(&self.write_gate);
        let slot = Arc::clone(&self.slot);
        // The gate before the shard: a rotation (which holds the gate) waits for every handle.
        tokio::task::spawn_blocking(move || {
            let _gate = lock_gate(&gate);
            let shard = current(&slot)?;
            apply_and_flush(&shard, what, operation)
        })
        .await?
    }

    /// Deletes the points `filter` matches and returns how many. Nothing matching means no
    /// write, no flush and no maintenance owed (deletes after every job would otherwise rotate the
    /// WAL each time). Counting and deleting happen under the write gate, so no upsert slips in
    /// between and the count is exact.
    async fn delete_where(&self, what: &'static str, filter: Filter) -> Result<u64, StorageError> {
        let gate = Arc::clone(&self.write_gate);
        let slot = Arc::clone(&self.slot);
        let deleted = Arc::clone(&self.deleted);
        tokio::task::spawn_blocking(move || {
            let _gate = lock_gate(&gate);
            let shard = current(&slot)?;
            let matching = count_points(&shard, Some(filter.clone()), true)?;
            if matching == 0 {
                return Ok(0);
            }
            let operation =
                UpdateOperation::PointOperation(PointOperations::DeletePointsByFilter(filter));
            apply_and_flush(&shard, what, operation)?;
            deleted.store(true, Ordering::SeqCst);
            Ok(matching)
        })
        .await?
    }

    /// Bytes in the WAL directory.
    pub fn wal_bytes(&self) -> u64 {
        dir_bytes(&self.dir.join(WAL_DIR))
    }
}

#[async_trait]
impl VectorIndex for EdgeVectorIndex {
    async fn upsert(&self, points: Vec<IndexPoint>) -> Result<(), StorageError> {
        if points.is_empty() {
            return Ok(());
        }
        let points = points
            .into_iter()
            .map(|point| self.to_engine_point(point))
            .collect::<Result<Vec<_>, _>>()?;
        let operation = UpdateOperation::PointOperation(PointOperations::UpsertPoints(
            PointInsertOperations::PointsList(points),
        ));
        self.write("upsert", operation).await
    }

    async fn delete_document(&self, document_id: Uuid) -> Result<u64, StorageError> {
        self.delete_where("delete document", document_filter(document_id)?)
            .await
    }

    async fn delete_other_versions(
        &self,
        document_id: Uuid,
        keep: i64,
    ) -> Result<(), StorageError> {
        let mut filter = document_filter(document_id)?;
        filter.must_not = Some(vec![version_condition(keep)?]);
        self.delete_where("delete other versions", filter)
            .await
            .map(drop)
    }

    async fn delete_version(&self, document_id: Uuid, version: i64) -> Result<(), StorageError> {
        let mut filter = document_filter(document_id)?;
        filter
            .must
            .get_or_insert_with(Vec::new)
            .push(version_condition(version)?);
        self.delete_where("delete version", filter).await.map(drop)
    }

    async fn inventory(&self) -> Result<HashMap<(Uuid, i64), u64>, StorageError> {
        self.blocking(|shard| {
            let fields = vec![json_path("document_id")?, json_path("version")?];
            let mut counts: HashMap<(Uuid, i64), u64> = HashMap::new();
            let mut offset = None;
            loop {
                let (records, next) = shard
                    .scroll(ScrollRequest {
                        offset,
                        limit: Some(1024),
                        filter: None,
                        with_payload: Some(WithPayloadInterface::Fields(fields.clone())),
                        with_vector: WithVector::Bool(false),
                        order_by: None,
                    })
                    .map_err(|e| engine_err("scroll", e))?;
                for record in records {
                    let payload = record.payload.map(|Payload(map)| map).unwrap_or_default();
                    let document = payload
                        .get("document_id")
                        .and_then(Value::as_str)
                        .and_then(|s| Uuid::parse_str(s).ok())
                        .unwrap_or(Uuid::nil());
                    let version = payload.get("version").and_then(Value::as_i64).unwrap_or(0);
                    *counts.entry((document, version)).or_default() += 1;
                }
                match next {
                    Some(next) => offset = Some(next),
                    None => return Ok(counts),
                }
            }
        })
        .await
    }

    async fn search(&self, query: VectorQuery) -> Result<Vec<VectorHit>, StorageError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let filter = build_filter(&query)?;
        let scoring = match Plan::of(&query, self.dim)? {
            Plan::Empty => return Ok(Vec::new()),
            Plan::Dense(dense) => nearest(DENSE_VECTOR, VectorInternal::from(dense)),
            Plan::Sparse(sparse) => {
                nearest(SPARSE_VECTOR, VectorInternal::from(to_sparse(sparse)?))
            }
            Plan::Hybrid {
                dense,
                sparse,
                prefetch_limit,
            } => {
                let prefetch = |query| Prefetch {
                    prefetches: Vec::new(),
                    query: Some(query),
                    limit: prefetch_limit,
                    params: None,
                    filter: filter.clone(),
                    score_threshold: None,
                };
                let fused = QueryRequest {
                    prefetches: vec![
                        prefetch(nearest(DENSE_VECTOR, VectorInternal::from(dense))),
                        prefetch(nearest(
                            SPARSE_VECTOR,
                            VectorInternal::from(to_sparse(sparse)?),
                        )),
                    ],
                    query: Some(ScoringQuery::Fusion(Fusion::Rrf {
                        k: query.rrf_k,
                        weights: query
                            .weights
                            .map(|w| w.iter().map(|&x| OrderedFloat(x)).collect()),
                    })),
                    ..request(None, query.limit)
                };
                return self.run_query(fused).await;
            }
        };
        self.run_query(QueryRequest {
            query: Some(scoring),
            ..request(filter, query.limit)
        })
        .await
    }

    async fn get_points(&self, ids: Vec<Uuid>) -> Result<Vec<IndexPoint>, StorageError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let records = self
            .blocking(move |shard| {
                let ids: Vec<PointId> = ids.into_iter().map(PointId::Uuid).collect();
                shard
                    .retrieve(
                        &ids,
                        Some(WithPayloadInterface::Bool(true)),
                        Some(WithVector::Bool(true)),
                    )
                    .map_err(|e| engine_err("retrieve", e))
            })
            .await?;
        records.into_iter().map(from_record).collect()
    }

    async fn count(&self) -> Result<u64, StorageError> {
        self.blocking(|shard| count_points(shard, None, true)).await
    }

    async fn count_document(&self, document_id: Uuid) -> Result<u64, StorageError> {
        let filter = document_filter(document_id)?;
        self.blocking(move |shard| count_points(shard, Some(filter), true))
            .await
    }

    async fn optimize(&self) -> Result<(), StorageError> {
        let gate = Arc::clone(&self.write_gate);
        let slot = Arc::clone(&self.slot);
        let deleted = Arc::clone(&self.deleted);
        let dir = self.dir.clone();
        let dim = self.dim;
        tokio::task::spawn_blocking(move || {
            let _gate = lock_gate(&gate);
            let shard = current(&slot)?;
            shard.optimize().map_err(|e| engine_err("optimize", e))?;
            // Optimized segments replace the old ones on disk; flushing persists the new set's
            // state (cheap: a few ms) so a restart sees exactly what searches saw.
            shard.flush();
            let after_delete = deleted.swap(false, Ordering::SeqCst);
            if after_delete {
                // Push the entries that still name deleted documents out of the segments
                // pruning keeps.
                flush_out_wal(&shard)?;
            }
            drop(shard);
            if after_delete || dir_bytes(&dir.join(WAL_DIR)) > WAL_ROTATE_BYTES {
                rotate_wal(&slot, &dir, dim)?;
            }
            Ok(())
        })
        .await?
    }

    async fn health(&self) -> Result<(), StorageError> {
        self.blocking(|shard| count_points(shard, None, false).map(drop))
            .await
    }

    fn backend(&self) -> &'static str {
        "qdrant-edge"
    }
}

impl EdgeVectorIndex {
    fn to_engine_point(&self, point: IndexPoint) -> Result<PointStructPersisted, StorageError> {
        let IndexPoint {
            id,
            dense,
            sparse,
            payload,
        } = point;
        check_dense(&format!("the dense vector of chunk {id}"), &dense, self.dim)?;
        let sparse =
            to_sparse(sparse).map_err(|e| StorageError::Vector(format!("chunk {id}: {e}")))?;
        let payload = Payload(payload_object(id, &payload)?);
        let vectors = HashMap::from([
            (DENSE_VECTOR.to_string(), VectorPersisted::Dense(dense)),
            (SPARSE_VECTOR.to_string(), VectorPersisted::Sparse(sparse)),
        ]);
        Ok(PointStructPersisted {
            id: PointId::Uuid(id),
            vector: VectorStructPersisted::Named(vectors),
            payload: Some(payload),
        })
    }

    async fn run_query(&self, request: QueryRequest) -> Result<Vec<VectorHit>, StorageError> {
        let points = self
            .blocking(move |shard| shard.query(request).map_err(|e| engine_err("search", e)))
            .await?;
        Ok(points.into_iter().filter_map(to_hit).collect())
    }
}

/// Must run under the write gate: no write or optimize can start, and searches wait for the
/// slot, so once the in-flight ones drop their handles the shard can be closed and reopened.
fn rotate_wal(slot: &Slot, dir: &Path, dim: usize) -> Result<(), StorageError> {
    let mut guard = slot.write().unwrap_or_else(PoisonError::into_inner);
    let Some(shard) = guard.take() else {
        return Err(StorageError::Vector("the vector index is not open".into()));
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut shard = Some(shard);
    while let Some(s) = shard.take() {
        match Arc::try_unwrap(s) {
            // Dropping flushes (already flushed) and releases the directory.
            Ok(owned) => drop(owned),
            Err(shared) if Instant::now() < deadline => {
                shard = Some(shared);
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(shared) => {
                // A search holds on for 30 s: keep serving, rotate next time.
                *guard = Some(shared);
                return Ok(());
            }
        }
    }
    let before = dir_bytes(&dir.join(WAL_DIR));
    let pruned = prune_wal(dir);
    // Reopen whatever happened: the index must keep serving.
    let reopened = load_shard(dir, shard_config(dim))?;
    *guard = Some(Arc::new(reopened));
    pruned?;
    let after = dir_bytes(&dir.join(WAL_DIR));
    tracing::info!(
        module = "storage",
        wal_bytes_before = before,
        wal_bytes_after = after,
        "vector index WAL pruned"
    );
    Ok(())
}

/// Appends two log entries each larger than a WAL segment: a delete of ids that cannot exist
/// (random UUIDs), which changes nothing. Each closes the segment before it, so after pruning the
/// two segments left hold only these, and no earlier entry (a deleted document's title, say)
/// stays on disk. Must run under the write gate.
fn flush_out_wal(shard: &EdgeShard) -> Result<(), StorageError> {
    for _ in 0..2 {
        let ids = (0..WAL_SEGMENT_BYTES / 16)
            .map(|_| PointId::Uuid(Uuid::new_v4()))
            .collect();
        let filler = UpdateOperation::PointOperation(PointOperations::DeletePoints { ids });
        shard
            .update(filler)
            .map_err(|e| engine_err("flush out the WAL", e))?;
    }
    shard.flush();
    Ok(())
}

/// Claims the directory for this process (a second doc-rag on the same data dir fails here).
fn lock_dir(dir: &Path) -> Result<std::fs::File, StorageError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StorageError::Vector(format!("cannot open {}: {e}", path.display())))?;
    file.try_lock().map_err(|e| {
        StorageError::Vector(format!(
            "the vector index at {} is in use by another process ({e})",
            dir.display()
        ))
    })?;
    Ok(file)
}

/// Removes every closed WAL segment but the newest. Only while the shard is closed: the engine
/// numbers entries from the closed segments, and the newest one carries the numbering on.
fn prune_wal(dir: &Path) -> Result<(), StorageError> {
    let wal = dir.join(WAL_DIR);
    let entries = match std::fs::read_dir(&wal) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::Vector(format!("{}: {e}", wal.display()))),
    };
    let mut closed: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let start = name.strip_prefix("closed-")?.parse().ok()?;
            Some((start, e.path()))
        })
        .collect();
    closed.sort();
    closed.pop();
    for (_, path) in closed {
        std::fs::remove_file(&path)
            .map_err(|e| StorageError::Vector(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn shard_config(dim: usize) -> EdgeConfig {
    EdgeConfig::builder()
        .wal_options(WalOptions {
            segment_capacity: WAL_SEGMENT_BYTES,
            ..Default::default()
        })
        // Vacuum any segment with deleted points: a deleted document's payload (title, metadata)
        // must leave the disk at the next maintenance, not when a fifth of a segment is gone.
        .optimizers(EdgeOptimizersConfig {
            deleted_threshold: Some(0.0),
            vacuum_min_vector_number: Some(1),
            ..Default::default()
        })
        .vector(
            DENSE_VECTOR,
            EdgeVectorParams::builder(dim, Distance::Cosine).build(),
        )
        .sparse_vector(
            SPARSE_VECTOR,
            EdgeSparseVectorParams {
                modifier: Some(Modifier::Idf),
                ..Default::default()
            },
        )
        .build()
}

fn load_shard(dir: &Path, config: EdgeConfig) -> Result<EdgeShard, StorageError> {
    // Passing our config makes the engine check it against the stored segments, so a changed
    // embedding model (another dimension) fails here, at start-up.
    EdgeShard::load(dir, Some(config)).map_err(|e| {
        StorageError::Vector(format!(
            "cannot load vector index at {}: {e} (is another process using the directory, or \
             was it built for another embedding size?)",
            dir.display()
        ))
    })
}

fn ensure_payload_indexes(shard: &EdgeShard, gate: &Mutex<()>) -> Result<(), StorageError> {
    let _gate = lock_gate(gate);
    create_payload_indexes(shard)?;
    shard.flush();
    Ok(())
}

/// Keyword indexes on the fields deletes and scoped searches filter on. Idempotent.
fn create_payload_indexes(shard: &EdgeShard) -> Result<(), StorageError> {
    for field in KEYWORD_FIELDS {
        let field_name = json_path(field)?;
        let operation =
            UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(CreateIndex {
                field_name,
                field_schema: Some(PayloadFieldSchema::FieldType(PayloadSchemaType::Keyword)),
            }));
        shard
            .update(operation)
            .map_err(|e| engine_err("create payload index", e))?;
    }
    Ok(())
}

/// Must run under the write gate.
fn apply_and_flush(
    shard: &EdgeShard,
    what: &str,
    operation: UpdateOperation,
) -> Result<(), StorageError> {
    let applied = shard.update(operation).map_err(|e| engine_err(what, e));
    // Flush even after a failure: a failed batch may have been applied in part, and memory and
    // disk should not disagree about it after a restart.
    shard.flush();
    applied
}

fn lock_gate(gate: &Mutex<()>) -> MutexGuard<'_, ()> {
    // The gate orders calls and guards no data, so a panic while it was held leaves nothing to
    // repair; ignoring the poison keeps one failed flush from failing every later write.
    gate.lock().unwrap_or_else(PoisonError::into_inner)
}

fn count_points(
    shard: &EdgeShard,
    filter: Option<Filter>,
    exact: bool,
) -> Result<u64, StorageError> {
    let count = shard
        .count(CountRequest { filter, exact })
        .map_err(|e| engine_err("count", e))?;
    Ok(count as u64)
}

fn request(filter: Option<Filter>, limit: usize) -> QueryRequest {
    QueryRequest {
        prefetches: Vec::new(),
        query: None,
        filter,
        score_threshold: None,
        limit,
        offset: 0,
        params: None,
        with_vector: WithVector::Bool(false),
        with_payload: WithPayloadInterface::Bool(true),
    }
}

fn nearest(using: &str, vector: VectorInternal) -> ScoringQuery {
    ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
        query: vector,
        using: Some(using.into()),
    }))
}

fn to_sparse(sparse: SparseVec) -> Result<SparseVector, StorageError> {
    SparseVector::new(sparse.indices, sparse.values)
        .map_err(|e| StorageError::Vector(format!("invalid sparse vector: {e}")))
}

fn to_hit(point: ScoredPoint) -> Option<VectorHit> {
    let chunk_id = match point.id {
        PointId::Uuid(id) => id,
        PointId::NumId(id) => {
            tracing::warn!(
                point_id = id,
                "skipping vector hit with a numeric id; chunk ids are UUIDs"
            );
            return None;
        }
    };
    let Some(Payload(map)) = point.payload else {
        tracing::warn!(%chunk_id, "skipping vector hit without payload");
        return None;
    };
    match serde_json::from_value::<ChunkPayload>(Value::Object(map)) {
        Ok(payload) => Some(VectorHit {
            chunk_id,
            score: point.score,
            payload,
        }),
        Err(error) => {
            tracing::warn!(%chunk_id, %error, "skipping vector hit with unreadable payload");
            None
        }
    }
}

/// A stored point as the index hands it back: its named dense and sparse vectors (a chunk
/// without BM25 terms has no sparse vector) and its payload.
fn from_record(record: Record) -> Result<IndexPoint, StorageError> {
    let PointId::Uuid(id) = record.id else {
        return Err(StorageError::Corrupt(format!(
            "vector point {:?} has a numeric id; chunk ids are UUIDs",
            record.id
        )));
    };
    let Some(VectorStructInternal::Named(mut vectors)) = record.vector else {
        return Err(StorageError::Corrupt(format!(
            "vector point {id} has no named vectors"
        )));
    };
    let dense = match vectors.remove(DENSE_VECTOR) {
        Some(VectorInternal::Dense(dense)) => dense,
        _ => {
            return Err(StorageError::Corrupt(format!(
                "vector point {id} has no dense vector"
            )));
        }
    };
    let sparse = match vectors.remove(SPARSE_VECTOR) {
        Some(VectorInternal::Sparse(s)) => SparseVec {
            indices: s.indices,
            values: s.values,
        },
        _ => SparseVec::default(),
    };
    let Some(Payload(map)) = record.payload else {
        return Err(StorageError::Corrupt(format!(
            "vector point {id} has no payload"
        )));
    };
    let payload = serde_json::from_value::<ChunkPayload>(Value::Object(map))
        .map_err(|e| StorageError::Corrupt(format!("vector point {id}: payload: {e}")))?;
    Ok(IndexPoint {
        id,
        dense,
        sparse,
        payload,
    })
}

fn document_filter(document_id: Uuid) -> Result<Filter, StorageError> {
    Ok(Filter::new_must(keyword_condition(
        "document_id",
        document_id.to_string(),
    )?))
}

fn version_condition(version: i64) -> Result<Condition, StorageError> {
    Ok(Condition::Field(FieldCondition::new_match(
        json_path("version")?,
        Match::from(version),
    )))
}

fn keyword_condition(field: &str, value: String) -> Result<Condition, StorageError> {
    Ok(Condition::Field(FieldCondition::new_match(
        json_path(field)?,
        Match::from(value),
    )))
}

/// The engine filter for the query's scope (see [`scope_conditions`]).
fn build_filter(query: &VectorQuery) -> Result<Option<Filter>, StorageError> {
    let conditions = scope_conditions(query)?
        .into_iter()
        .map(|c| {
            let path = json_path(&c.path)
                .map_err(|_| bad_key(c.path.strip_prefix("metadata.").unwrap_or(&c.path)))?;
            let matched = match c.value {
                MatchValue::Keyword(v) => Match::from(v),
                MatchValue::Integer(v) => Match::from(v),
                MatchValue::Bool(v) => Match::from(v),
                MatchValue::Keywords(v) => Match::from(v),
                MatchValue::Integers(v) => Match::from(v),
            };
            Ok(Condition::Field(FieldCondition::new_match(path, matched)))
        })
        .collect::<Result<Vec<_>, StorageError>>()?;
    Ok((!conditions.is_empty()).then(|| Filter {
        should: None,
        min_should: None,
        must: Some(conditions),
        must_not: None,
    }))
}

fn json_path(path: &str) -> Result<JsonPath, StorageError> {
    path.parse()
        .map_err(|()| StorageError::Vector(format!("invalid payload path {path:?}")))
}

fn engine_err(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Vector(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};

    use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};
    use serde_json::{Map, json};

    use super::*;
    use crate::storage::vector::SearchMode;

    const DIM: usize = 4;

    /// A document to index: its chunks as (dense vector, text).
    struct Doc {
        id: Uuid,
        collection: &'static str,
        metadata: Value,
        chunks: Vec<([f32; DIM], &'static str)>,
    }

    impl Doc {
        fn new(
            collection: &'static str,
            metadata: Value,
            chunks: Vec<([f32; DIM], &'static str)>,
        ) -> Self {
            Self {
                id: Uuid::new_v4(),
                collection,
                metadata,
                chunks,
            }
        }

        fn chunk_id(&self, index: usize) -> Uuid {
            // Same derivation as `storage::chunk_id`.
            Uuid::new_v5(&self.id, &(index as u32).to_be_bytes())
        }

        fn points(&self, bm25: &EdgeBm25) -> Vec<IndexPoint> {
            let Value::Object(metadata) = self.metadata.clone() else {
                panic!("test metadata must be an object")
            };
            self.chunks
                .iter()
                .enumerate()
                .map(|(i, (dense, text))| IndexPoint {
                    id: self.chunk_id(i),
                    dense: dense.to_vec(),
                    sparse: to_vec(bm25.embed_document(text)),
                    payload: ChunkPayload {
                        document_id: self.id,
                        collection: self.collection.into(),
                        chunk_index: i as u32,
                        version: 1,
                        title: format!("chunk {i}"),
                        metadata: metadata.clone(),
                    },
                })
                .collect()
        }
    }

    fn bm25() -> EdgeBm25 {
        EdgeBm25::new(EdgeBm25Config::default()).expect("default BM25 config")
    }

    fn to_vec(v: SparseVector) -> SparseVec {
        SparseVec {
            indices: v.indices,
            values: v.values,
        }
    }

    fn query(mode: SearchMode) -> VectorQuery {
        VectorQuery {
            mode,
            dense: None,
            sparse: None,
            limit: 10,
            prefetch_limit: 10,
            rrf_k: 60,
            weights: None,
            collection: None,
            collections: None,
            filter: None,
        }
    }

    fn dense_query(v: [f32; DIM]) -> VectorQuery {
        VectorQuery {
            dense: Some(v.to_vec()),
            ..query(SearchMode::Dense)
        }
    }

    fn filtered(filter: Value) -> VectorQuery {
        let Value::Object(filter) = filter else {
            panic!("test filter must be an object")
        };
        VectorQuery {
            filter: Some(filter),
            ..dense_query([1.0, 0.0, 0.0, 0.0])
        }
    }

    fn docs_of(hits: &[VectorHit]) -> Vec<Uuid> {
        let mut docs: Vec<Uuid> = hits.iter().map(|h| h.payload.document_id).collect();
        docs.sort();
        docs.dedup();
        docs
    }

    fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
        ids.sort();
        ids
    }

    async fn index_with(dir: &Path, docs: &[&Doc]) -> EdgeVectorIndex {
        let index = EdgeVectorIndex::open(dir, DIM).expect("open");
        let bm25 = bm25();
        for doc in docs {
            index.upsert(doc.points(&bm25)).await.expect("upsert");
        }
        index
    }

    /// Three one-chunk documents: `near` points along x, `close` slightly off x, `far` along y.
    /// Only `close` mentions zeppelins.
    fn trio() -> (Doc, Doc, Doc) {
        let near = Doc::new(
            "c",
            json!({}),
            vec![([1.0, 0.0, 0.0, 0.0], "a guide to cooking pasta at home")],
        );
        let close = Doc::new(
            "c",
            json!({}),
            vec![([0.9, 0.3, 0.0, 0.0], "the zeppelin flew over the harbour")],
        );
        let far = Doc::new(
            "c",
            json!({}),
            vec![([0.0, 1.0, 0.0, 0.0], "cooking rice and pasta for a crowd")],
        );
        (near, close, far)
    }

    #[tokio::test]
    async fn dense_search_ranks_the_nearest_first() {
        let dir = tempfile::tempdir().unwrap();
        let (near, close, far) = trio();
        let index = index_with(dir.path(), &[&near, &close, &far]).await;

        let hits = index
            .search(dense_query([1.0, 0.0, 0.0, 0.0]))
            .await
            .unwrap();
        let order: Vec<Uuid> = hits.iter().map(|h| h.payload.document_id).collect();
        assert_eq!(order, vec![near.id, close.id, far.id]);
        assert!(
            (hits[0].score - 1.0).abs() < 1e-4,
            "cosine of identical directions: {}",
            hits[0].score
        );
        assert!(
            hits[2].score.abs() < 1e-4,
            "cosine of orthogonal vectors: {}",
            hits[2].score
        );
        assert_eq!(hits[0].chunk_id, near.chunk_id(0));
        assert_eq!(hits[0].payload.title, "chunk 0");
        assert_eq!(hits[0].payload.collection, "c");

        let limited = index
            .search(VectorQuery {
                limit: 1,
                ..dense_query([0.0, 1.0, 0.0, 0.0])
            })
            .await
            .unwrap();
        assert_eq!(docs_of(&limited), vec![far.id]);
        assert_eq!(index.backend(), "qdrant-edge");
        index.health().await.unwrap();
    }

    #[tokio::test]
    async fn keyword_search_finds_the_document_with_a_rare_term() {
        let dir = tempfile::tempdir().unwrap();
        let (near, close, far) = trio();
        let index = index_with(dir.path(), &[&near, &close, &far]).await;

        let q = VectorQuery {
            sparse: Some(to_vec(bm25().embed_query("Zeppelins"))),
            ..query(SearchMode::Keyword)
        };
        let hits = index.search(q).await.unwrap();
        assert_eq!(
            docs_of(&hits),
            vec![close.id],
            "only the zeppelin text matches"
        );
        assert!(hits[0].score > 0.0);

        // A common term matches both pasta texts, and IDF keeps the scores positive.
        let q = VectorQuery {
            sparse: Some(to_vec(bm25().embed_query("pasta"))),
            ..query(SearchMode::Keyword)
        };
        let hits = index.search(q).await.unwrap();
        assert_eq!(docs_of(&hits), sorted(vec![near.id, far.id]));
    }

    #[tokio::test]
    async fn empty_sparse_query_in_keyword_mode_returns_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (near, close, far) = trio();
        let index = index_with(dir.path(), &[&near, &close, &far]).await;

        let stopwords_only = to_vec(bm25().embed_query("the and of"));
        assert!(stopwords_only.indices.is_empty());
        let hits = index
            .search(VectorQuery {
                sparse: Some(stopwords_only),
                ..query(SearchMode::Keyword)
            })
            .await;
        assert!(hits.unwrap().is_empty());

        let missing = index.search(query(SearchMode::Keyword)).await;
        assert!(
            matches!(missing, Err(StorageError::Vector(_))),
            "keyword mode needs a sparse vector"
        );
    }

    #[tokio::test]
    async fn hybrid_fuses_both_retrievers() {
        let dir = tempfile::tempdir().unwrap();
        let (near, close, far) = trio();
        let index = index_with(dir.path(), &[&near, &close, &far]).await;

        let q = VectorQuery {
            mode: SearchMode::Hybrid,
            dense: Some(vec![1.0, 0.0, 0.0, 0.0]),
            sparse: Some(to_vec(bm25().embed_query("zeppelin"))),
            ..query(SearchMode::Hybrid)
        };
        let hits = index.search(q).await.unwrap();
        // `close` is second by dense and first by keyword, so fusion puts it ahead of `near`
        // (first by dense only).
        let order: Vec<Uuid> = hits.iter().map(|h| h.payload.document_id).collect();
        assert_eq!(order, vec![close.id, near.id, far.id]);
        // RRF scores are sums of 1/(k + rank), far below cosine similarities.
        assert!(
            hits.iter().all(|h| h.score > 0.0 && h.score < 0.1),
            "{hits:?}"
        );
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));

        // One candidate from each retriever: the result is their union, with equal RRF scores.
        let q = VectorQuery {
            dense: Some(vec![0.0, 1.0, 0.0, 0.0]),
            sparse: Some(to_vec(bm25().embed_query("zeppelin"))),
            prefetch_limit: 1,
            ..query(SearchMode::Hybrid)
        };
        let hits = index.search(q).await.unwrap();
        assert_eq!(docs_of(&hits), sorted(vec![far.id, close.id]));
        assert_eq!(hits.len(), 2);
        assert!((hits[0].score - hits[1].score).abs() < 1e-6, "{hits:?}");
    }

    #[tokio::test]
    async fn hybrid_without_keyword_terms_falls_back_to_dense() {
        let dir = tempfile::tempdir().unwrap();
        let (near, close, far) = trio();
        let index = index_with(dir.path(), &[&near, &close, &far]).await;

        for sparse in [None, Some(SparseVec::default())] {
            let q = VectorQuery {
                dense: Some(vec![1.0, 0.0, 0.0, 0.0]),
                sparse,
                ..query(SearchMode::Hybrid)
            };
            let hits = index.search(q).await.unwrap();
            let order: Vec<Uuid> = hits.iter().map(|h| h.payload.document_id).collect();
            assert_eq!(order, vec![near.id, close.id, far.id]);
            assert!(
                (hits[0].score - 1.0).abs() < 1e-4,
                "a cosine score, not RRF"
            );
        }
        let no_dense = index.search(query(SearchMode::Hybrid)).await;
        assert!(matches!(no_dense, Err(StorageError::Vector(_))));
    }

    #[tokio::test]
    async fn collection_and_metadata_filters_restrict_results() {
        let dir = tempfile::tempdir().unwrap();
        let x = [1.0, 0.0, 0.0, 0.0];
        let en = Doc::new(
            "a",
            json!({"lang": "en", "year": 2020, "draft": false, "tags": ["x", "y"]}),
            vec![(x, "one")],
        );
        let de = Doc::new(
            "a",
            json!({"lang": "de", "year": 2021, "draft": true, "tags": ["y"]}),
            vec![(x, "two")],
        );
        let fr = Doc::new(
            "b",
            json!({"lang": "fr", "year": 2022, "author": {"name": "Ann"}}),
            vec![(x, "three")],
        );
        let index = index_with(dir.path(), &[&en, &de, &fr]).await;

        let scoped = index
            .search(VectorQuery {
                collection: Some("a".into()),
                ..dense_query(x)
            })
            .await
            .unwrap();
        assert_eq!(docs_of(&scoped), sorted(vec![en.id, de.id]));
        let none = index
            .search(VectorQuery {
                collection: Some("zzz".into()),
                ..dense_query(x)
            })
            .await
            .unwrap();
        assert!(none.is_empty());
        let within = |allowed: &[&str]| VectorQuery {
            collections: Some(allowed.iter().map(|c| c.to_string()).collect()),
            ..dense_query(x)
        };
        let only_b = index.search(within(&["b"])).await.unwrap();
        assert_eq!(docs_of(&only_b), vec![fr.id]);
        let a_and_b = index.search(within(&["a", "b"])).await.unwrap();
        assert_eq!(docs_of(&a_and_b), sorted(vec![en.id, de.id, fr.id]));
        let neither = index.search(within(&["zzz"])).await.unwrap();
        assert!(neither.is_empty());

        let cases = [
            (json!({"lang": "de"}), vec![de.id]),
            (json!({"year": 2022}), vec![fr.id]),
            (json!({"draft": true}), vec![de.id]),
            (json!({"lang": ["en", "fr"]}), vec![en.id, fr.id]),
            (json!({"year": [2020, 2021]}), vec![en.id, de.id]),
            // An array in the metadata matches when any element does.
            (json!({"tags": "x"}), vec![en.id]),
            (json!({"author.name": "Ann"}), vec![fr.id]),
            (json!({"lang": "en", "year": 2021}), vec![]),
            (json!({"missing": "en"}), vec![]),
        ];
        for (filter, expected) in cases {
            let hits = index.search(filtered(filter.clone())).await.unwrap();
            assert_eq!(docs_of(&hits), sorted(expected), "filter {filter}");
        }

        let both = VectorQuery {
            collection: Some("a".into()),
            ..filtered(json!({"lang": ["en", "fr"]}))
        };
        assert_eq!(docs_of(&index.search(both).await.unwrap()), vec![en.id]);

        // Filters apply to both prefetches of a hybrid search.
        let hybrid = VectorQuery {
            mode: SearchMode::Hybrid,
            sparse: Some(to_vec(bm25().embed_query("three"))),
            ..filtered(json!({"lang": "de"}))
        };
        assert_eq!(docs_of(&index.search(hybrid).await.unwrap()), vec![de.id]);
    }

    #[tokio::test]
    async fn unsupported_filters_are_rejected_with_a_readable_error() {
        let dir = tempfile::tempdir().unwrap();
        let index = EdgeVectorIndex::open(dir.path(), DIM).unwrap();

        let bad_values = [
            json!({"score": 0.5}),
            json!({"author": {"name": "Ann"}}),
            json!({"lang": null}),
            json!({"mixed": ["a", 1]}),
            json!({"flags": [true]}),
            json!({"big": u64::MAX}),
        ];
        for filter in bad_values {
            match index.search(filtered(filter.clone())).await {
                Err(StorageError::Vector(msg)) => {
                    assert!(
                        msg.starts_with("unsupported filter value for"),
                        "{filter}: {msg}"
                    )
                }
                other => panic!("{filter}: expected an error, got {other:?}"),
            }
        }
        match index.search(filtered(json!({"tags": []}))).await {
            Err(StorageError::Vector(msg)) => assert!(msg.contains("empty array"), "{msg}"),
            other => panic!("expected an error, got {other:?}"),
        }
        for key in ["", "a b", "a..b", ".a", "a.", "ü", "a[0]", "a\"b"] {
            let mut filter = Map::new();
            filter.insert(key.to_string(), json!("v"));
            match index.search(filtered(Value::Object(filter))).await {
                Err(StorageError::Vector(msg)) => {
                    assert!(msg.starts_with("invalid filter key"), "{key:?}: {msg}")
                }
                other => panic!("{key:?}: expected an error, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn vectors_of_the_wrong_shape_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (near, _, _) = trio();
        let index = index_with(dir.path(), &[&near]).await;

        let mut short = near.points(&bm25());
        short[0].dense.pop();
        assert!(matches!(
            index.upsert(short).await,
            Err(StorageError::Vector(_))
        ));

        let mut uneven = near.points(&bm25());
        uneven[0].sparse.values.push(1.0);
        assert!(matches!(
            index.upsert(uneven).await,
            Err(StorageError::Vector(_))
        ));

        let wrong_query = index.search(VectorQuery {
            dense: Some(vec![1.0; DIM + 1]),
            ..query(SearchMode::Dense)
        });
        assert!(matches!(wrong_query.await, Err(StorageError::Vector(_))));
        assert_eq!(
            index.count().await.unwrap(),
            1,
            "rejected batches leave the index unchanged"
        );
    }

    #[tokio::test]
    async fn upserting_the_same_ids_twice_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let two_chunks = vec![
            ([1.0, 0.0, 0.0, 0.0], "first"),
            ([0.0, 1.0, 0.0, 0.0], "second"),
        ];
        let mut doc = Doc::new("c", json!({"v": 1}), two_chunks);
        let index = index_with(dir.path(), &[&doc]).await;
        assert_eq!(index.count().await.unwrap(), 2);

        doc.metadata = json!({"v": 2});
        index.upsert(doc.points(&bm25())).await.unwrap();
        assert_eq!(index.count().await.unwrap(), 2);
        assert_eq!(index.count_document(doc.id).await.unwrap(), 2);
        let hits = index.search(filtered(json!({"v": 2}))).await.unwrap();
        assert_eq!(hits.len(), 2, "the payload was replaced");
        assert!(
            index
                .search(filtered(json!({"v": 1})))
                .await
                .unwrap()
                .is_empty()
        );

        index.upsert(Vec::new()).await.unwrap();
        assert_eq!(index.count().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn delete_document_removes_only_its_points() {
        let dir = tempfile::tempdir().unwrap();
        let x = [1.0, 0.0, 0.0, 0.0];
        let keep = Doc::new("c", json!({}), vec![(x, "keep one"), (x, "keep two")]);
        let gone = Doc::new(
            "c",
            json!({}),
            vec![(x, "gone one"), (x, "gone two"), (x, "gone three")],
        );
        let index = index_with(dir.path(), &[&keep, &gone]).await;
        assert_eq!(index.count().await.unwrap(), 5);
        assert_eq!(index.count_document(gone.id).await.unwrap(), 3);

        assert_eq!(index.delete_document(gone.id).await.unwrap(), 3);
        assert_eq!(index.count().await.unwrap(), 2);
        assert_eq!(index.count_document(gone.id).await.unwrap(), 0);
        assert_eq!(index.count_document(keep.id).await.unwrap(), 2);
        assert_eq!(
            docs_of(&index.search(dense_query(x)).await.unwrap()),
            vec![keep.id]
        );
        let q = VectorQuery {
            sparse: Some(to_vec(bm25().embed_query("gone"))),
            ..query(SearchMode::Keyword)
        };
        assert!(index.search(q).await.unwrap().is_empty());

        // Deleting an unknown document is not an error.
        assert_eq!(index.delete_document(Uuid::new_v4()).await.unwrap(), 0);
        assert_eq!(index.count().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn version_scoped_deletes_and_the_inventory() {
        let dir = tempfile::tempdir().unwrap();
        let x = [1.0, 0.0, 0.0, 0.0];
        let doc = Doc::new("c", json!({}), vec![(x, "one"), (x, "two")]);
        let other = Doc::new("c", json!({}), vec![(x, "other")]);
        let index = index_with(dir.path(), &[&other]).await;
        let bm25 = bm25();
        for version in [1, 2, 3] {
            let points = doc
                .points(&bm25)
                .into_iter()
                .map(|mut p| {
                    p.id = crate::storage::chunk_id(doc.id, version, p.payload.chunk_index);
                    p.payload.version = version;
                    p
                })
                .collect();
            index.upsert(points).await.unwrap();
        }
        let inventory = index.inventory().await.unwrap();
        assert_eq!(inventory.len(), 4, "{inventory:?}");
        assert_eq!(inventory[&(doc.id, 2)], 2);
        assert_eq!(inventory[&(other.id, 1)], 1);

        index.delete_version(doc.id, 1).await.unwrap();
        assert_eq!(index.count_document(doc.id).await.unwrap(), 4);
        index.delete_other_versions(doc.id, 3).await.unwrap();
        let inventory = index.inventory().await.unwrap();
        assert_eq!(
            inventory
                .keys()
                .filter(|(d, _)| *d == doc.id)
                .collect::<Vec<_>>(),
            vec![&(doc.id, 3)]
        );
        assert_eq!(
            inventory[&(other.id, 1)],
            1,
            "other documents are untouched"
        );
    }

    fn closed_wal_segments(dir: &Path) -> usize {
        std::fs::read_dir(dir.join(WAL_DIR))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("closed-"))
            .count()
    }

    /// The WAL is pruned to its newest closed segment, and the engine keeps numbering operations
    /// on from there: updates after a prune (which a log restarted at 0 would have ignored) apply.
    #[tokio::test]
    async fn the_wal_is_pruned_and_updates_after_a_prune_still_apply() {
        let dir = tempfile::tempdir().unwrap();
        let index = EdgeVectorIndex::open(dir.path(), DIM).unwrap();
        let bm25 = bm25();
        let x = [1.0, 0.0, 0.0, 0.0];
        let long = "padding words ".repeat(300);
        let mut docs = Vec::new();
        for _ in 0..200 {
            let doc = Doc::new("c", json!({ "pad": long }), vec![(x, "busy words"); 20]);
            index.upsert(doc.points(&bm25)).await.unwrap();
            docs.push(doc);
        }
        assert!(closed_wal_segments(dir.path()) > 1, "the log grew");
        index.delete_document(docs[0].id).await.unwrap();
        index.optimize().await.unwrap();
        assert!(closed_wal_segments(dir.path()) <= 1);
        // What is left of the log no longer names the deleted document's points.
        let marker = docs[0].id.to_string();
        for entry in std::fs::read_dir(dir.path().join(WAL_DIR)).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(&marker),
                "the WAL still holds the deleted document"
            );
        }
        assert!(
            index.wal_bytes() <= 4 * WAL_SEGMENT_BYTES as u64,
            "{}",
            index.wal_bytes()
        );
        assert_eq!(index.count().await.unwrap(), 199 * 20);

        index.delete_document(docs[1].id).await.unwrap();
        assert_eq!(
            index.count_document(docs[1].id).await.unwrap(),
            0,
            "applied after the prune"
        );
        let again = Doc::new("c", json!({}), vec![(x, "fresh words"); 3]);
        index.upsert(again.points(&bm25)).await.unwrap();
        assert_eq!(index.count().await.unwrap(), 198 * 20 + 3);
        drop(index);
        let index = EdgeVectorIndex::open(dir.path(), DIM).unwrap();
        assert_eq!(
            index.count().await.unwrap(),
            198 * 20 + 3,
            "and survive a reopen"
        );
        index.delete_document(docs[2].id).await.unwrap();
        assert_eq!(index.count().await.unwrap(), 197 * 20 + 3);
    }

    #[tokio::test]
    async fn reopening_keeps_the_points() {
        let dir = tempfile::tempdir().unwrap();
        let (near, close, far) = trio();
        {
            let index = index_with(dir.path(), &[&near, &close, &far]).await;
            index.delete_document(far.id).await.unwrap();
        }
        let index = EdgeVectorIndex::open(dir.path(), DIM).unwrap();
        assert_eq!(index.count().await.unwrap(), 2);
        let hits = index
            .search(dense_query([1.0, 0.0, 0.0, 0.0]))
            .await
            .unwrap();
        assert_eq!(
            hits.iter()
                .map(|h| h.payload.document_id)
                .collect::<Vec<_>>(),
            vec![near.id, close.id]
        );
        let q = VectorQuery {
            sparse: Some(to_vec(bm25().embed_query("zeppelin"))),
            ..query(SearchMode::Keyword)
        };
        assert_eq!(docs_of(&index.search(q).await.unwrap()), vec![close.id]);

        // Writes keep working after a reload, and optimizing keeps everything findable.
        let more = Doc::new("c", json!({}), vec![([0.0, 0.0, 1.0, 0.0], "more")]);
        index.upsert(more.points(&bm25())).await.unwrap();
        index.optimize().await.unwrap();
        assert_eq!(index.count().await.unwrap(), 3);
        drop(index);

        let index = EdgeVectorIndex::open(dir.path(), DIM).unwrap();
        assert_eq!(index.count().await.unwrap(), 3);
        assert_eq!(index.count_document(more.id).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn payload_indexes_exist_after_open_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (near, _, _) = trio();
        let indexed = |index: &EdgeVectorIndex| {
            let schema = current(&index.slot).unwrap().info().payload_schema;
            KEYWORD_FIELDS.map(|f| schema.contains_key(&json_path(f).unwrap()))
        };
        let index = index_with(dir.path(), &[&near]).await;
        assert_eq!(indexed(&index), [true, true]);
        drop(index);
        let index = EdgeVectorIndex::open(dir.path(), DIM).unwrap();
        assert_eq!(indexed(&index), [true, true]);
        assert_eq!(index.count().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_directory_in_use_cannot_be_opened_twice() {
        let dir = tempfile::tempdir().unwrap();
        let index = EdgeVectorIndex::open(dir.path(), DIM).unwrap();
        match EdgeVectorIndex::open(dir.path(), DIM) {
            Err(StorageError::Vector(msg)) => assert!(msg.contains("in use"), "{msg}"),
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("opened a shard that is in use"),
        }
        assert_eq!(index.count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn opening_with_another_dimension_fails() {
        let dir = tempfile::tempdir().unwrap();
        drop(EdgeVectorIndex::open(dir.path(), DIM).unwrap());
        match EdgeVectorIndex::open(dir.path(), DIM + 1) {
            Err(StorageError::Vector(msg)) => assert!(msg.contains("cannot load"), "{msg}"),
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("opened a {DIM}-dimension index with dimension {}", DIM + 1),
        }
        assert!(matches!(
            EdgeVectorIndex::open(dir.path(), 0),
            Err(StorageError::Vector(_))
        ));
        // The failed attempt did not damage the shard.
        EdgeVectorIndex::open(dir.path(), DIM).unwrap();
    }

    #[tokio::test]
    async fn optimize_on_a_larger_index_keeps_results() {
        let dir = tempfile::tempdir().unwrap();
        let index = EdgeVectorIndex::open(dir.path(), DIM).unwrap();
        let bm25 = bm25();
        let mut docs = Vec::new();
        for i in 0..40 {
            let angle = i as f32 / 40.0;
            let doc = Doc::new(
                "c",
                json!({"i": i}),
                vec![([1.0, angle, 0.5, 0.0], "filler text"); 25],
            );
            index.upsert(doc.points(&bm25)).await.unwrap();
            docs.push(doc);
        }
        let before = index
            .search(dense_query([1.0, 0.0, 0.5, 0.0]))
            .await
            .unwrap();
        index.optimize().await.unwrap();
        index.optimize().await.unwrap();
        assert_eq!(index.count().await.unwrap(), 1000);
        let after = index
            .search(dense_query([1.0, 0.0, 0.5, 0.0]))
            .await
            .unwrap();
        assert_eq!(docs_of(&before), docs_of(&after));
        assert_eq!(docs_of(&after), vec![docs[0].id]);
        assert_eq!(
            docs_of(&index.search(filtered(json!({"i": 7}))).await.unwrap()),
            vec![docs[7].id]
        );
    }

    #[tokio::test]
    async fn concurrent_writes_searches_and_optimize_do_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let index = Arc::new(EdgeVectorIndex::open(dir.path(), DIM).unwrap());
        let mut tasks = Vec::new();
        for t in 0..4 {
            let index = Arc::clone(&index);
            tasks.push(tokio::spawn(async move {
                let bm25 = bm25();
                for i in 0..10 {
                    let doc = Doc::new(
                        "c",
                        json!({}),
                        vec![([1.0, t as f32, i as f32, 0.0], "busy words"); 5],
                    );
                    index.upsert(doc.points(&bm25)).await.unwrap();
                    index
                        .search(dense_query([1.0, 0.0, 0.0, 0.0]))
                        .await
                        .unwrap();
                    if i % 3 == 0 {
                        index.optimize().await.unwrap();
                    }
                    if i % 4 == 0 {
                        index.delete_document(doc.id).await.unwrap();
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        // 4 tasks x 10 docs x 5 chunks, minus the 3 deleted docs per task.
        assert_eq!(index.count().await.unwrap(), 4 * 7 * 5);
    }

    const KILL_DIR_ENV: &str = "DOC_RAG_EDGE_KILL_TEST_DIR";

    /// Not a test of its own: the body of the child process `acknowledged_writes_survive_sigkill`
    /// starts. It writes documents until killed, printing each id once `upsert` has returned.
    #[tokio::test]
    async fn sigkill_child_writer() {
        let Ok(dir) = std::env::var(KILL_DIR_ENV) else {
            return;
        };
        let index = EdgeVectorIndex::open(Path::new(&dir), DIM).unwrap();
        let bm25 = bm25();
        // Bounded so a child whose parent died does not write forever.
        for i in 0..10_000 {
            let chunk = ([1.0, i as f32, 0.0, 0.0], "written before the kill");
            let doc = Doc::new("c", json!({}), vec![chunk; 7]);
            index.upsert(doc.points(&bm25)).await.unwrap();
            println!("acked {}", doc.id);
            if i % 10 == 5 {
                index.optimize().await.unwrap();
            }
        }
    }

    /// Kills the child even when an assertion fails first.
    struct KillOnDrop(Child);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[tokio::test]
    async fn acknowledged_writes_survive_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = KillOnDrop(
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "storage::vector::edge::tests::sigkill_child_writer",
                    "--exact",
                    "--nocapture",
                ])
                .env(KILL_DIR_ENV, dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let stdout = child.0.stdout.take().unwrap();
        let acked = tokio::task::spawn_blocking(move || {
            let mut acked = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(id) = line.strip_prefix("acked ") {
                    acked.push(Uuid::parse_str(id).unwrap());
                    if acked.len() == 30 {
                        break;
                    }
                }
            }
            acked
        })
        .await
        .unwrap();
        // SIGKILL while the child is still writing: no destructor, no final flush.
        drop(child);
        assert_eq!(acked.len(), 30, "the child stopped early");

        let index = EdgeVectorIndex::open(dir.path(), DIM).unwrap();
        for id in &acked {
            assert_eq!(
                index.count_document(*id).await.unwrap(),
                7,
                "acknowledged document {id} lost"
            );
        }
        assert!(index.count().await.unwrap() >= 30 * 7);
    }
}
