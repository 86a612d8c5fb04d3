//! The MongoDB document store (`documents.mongodb_url`): original uploads, parsed text and chunk
//! text, so the relational database keeps only metadata and jobs.
//!
//! Collections (in `documents.mongodb_database`):
//! - `originals`: an upload in parts of at most [`PART_BYTES`] (a BSON document holds 16 MiB),
//!   `_id` `"{content_ref}/{part}"`, indexed on `(ref, part)`.
//! - `texts`: a version's parsed text, `_id` `"{document_id}/{version}"`.
//! - `chunks`: one per chunk, `_id` the chunk id (the vector point id), with document id, version,
//!   index, text, token count, byte offset in the parsed text, and `live`; indexed on
//!   `(document_id, version)`.
//!
//! Only live chunks are served. A worker stages its version's chunks unserved and publishes them
//! (`live: true`, earlier versions dropped) while that version is still the document's, then the
//! metadata store's fenced finish decides; a worker that lost (a newer version, a deletion)
//! discards what it published. Publishing before the finish means a job that reads `done` is
//! searchable. Every call is idempotent, so the guard may retry it; writes use the configured
//! write concern (`majority` by default), journaled.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::bson::{Binary, Bson, Document as BsonDoc, doc, spec::BinarySubtype};
use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::options::{Acknowledgment, ClientOptions, WriteConcern};
use mongodb::{Client, Collection, Database, IndexModel};
use secrecy::ExposeSecret;
use uuid::Uuid;

use super::breaker::{CallError, Guarded, wait_at_startup};
use super::{Dependency, Document, DocumentStore, StorageError, StoredChunk};
use crate::config::DocumentsSettings;

/// Bytes of an upload per `originals` document (BSON documents are capped at 16 MiB).
const PART_BYTES: usize = 8 << 20;

pub struct MongoDocumentStore {
    db: Database,
    guard: Guarded,
}

impl MongoDocumentStore {
    /// Parses the URL and creates the indexes. The driver connects lazily; a server that is not
    /// up yet makes this wait (retrying) for up to `startup_wait`.
    pub async fn connect(
        settings: &DocumentsSettings,
        startup_wait: Duration,
    ) -> Result<Self, StorageError> {
        let url = settings.mongodb_url.expose_secret();
        let timeout = Duration::from_millis(settings.timeout_ms.max(1));
        let mut options = ClientOptions::parse(url)
            .await
            .map_err(|e| StorageError::BadUrl(format!("documents.mongodb_url: {e}")))?;
        options.app_name = Some("doc-rag".into());
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        options.write_concern = Some(write_concern(&settings.write_concern, timeout)?);
        let client = Client::with_options(options)
            .map_err(|e| StorageError::BadUrl(format!("documents.mongodb_url: {e}")))?;
        let store = Self {
            db: client.database(&settings.mongodb_database),
            guard: Guarded::new(Dependency::MongoDb, timeout, 2),
        };
        wait_at_startup(
            "MongoDB",
            startup_wait,
            StorageError::is_unavailable,
            || store.create_indexes(),
        )
        .await?;
        Ok(store)
    }

    async fn create_indexes(&self) -> Result<(), StorageError> {
        let indexes = [
            ("originals", doc! { "ref": 1, "part": 1 }),
            ("texts", doc! { "document_id": 1, "version": 1 }),
            ("chunks", doc! { "document_id": 1, "version": 1 }),
        ];
        for (collection, keys) in indexes {
            let coll = self.coll(collection);
            self.guard
                .call("create index", || {
                    let model = IndexModel::builder().keys(keys.clone()).build();
                    let coll = coll.clone();
                    async move { coll.create_index(model).await.map(drop).map_err(classify) }
                })
                .await?;
        }
        Ok(())
    }

    fn coll(&self, name: &str) -> Collection<BsonDoc> {
        self.db.collection(name)
    }

    async fn delete_many(
        &self,
        what: &str,
        collection: &str,
        filter: BsonDoc,
    ) -> Result<u64, StorageError> {
        let coll = self.coll(collection);
        self.guard
            .call(what, || {
                let (coll, filter) = (coll.clone(), filter.clone());
                async move {
                    coll.delete_many(filter)
                        .await
                        .map(|r| r.deleted_count)
                        .map_err(classify)
                }
            })
            .await
    }

    async fn find_all(
        &self,
        what: &str,
        collection: &str,
        filter: BsonDoc,
        projection: Option<BsonDoc>,
    ) -> Result<Vec<BsonDoc>, StorageError> {
        let coll = self.coll(collection);
        self.guard
            .call(what, || {
                let (coll, filter, projection) = (coll.clone(), filter.clone(), projection.clone());
                async move {
                    let mut find = coll.find(filter);
                    if let Some(p) = projection {
                        find = find.projection(p);
                    }
                    find.await
                        .map_err(classify)?
                        .try_collect()
                        .await
                        .map_err(classify)
                }
            })
            .await
    }

    async fn upsert(
        &self,
        what: &str,
        collection: &str,
        id: String,
        replacement: BsonDoc,
    ) -> Result<(), StorageError> {
        let coll = self.coll(collection);
        self.guard
            .call(what, || {
                let (coll, replacement) = (coll.clone(), replacement.clone());
                let filter = doc! { "_id": &id };
                async move {
                    coll.replace_one(filter, replacement)
                        .upsert(true)
                        .await
                        .map(drop)
                        .map_err(classify)
                }
            })
            .await
    }

    async fn set_live(
        &self,
        collection: &str,
        document_id: &str,
        version: i64,
    ) -> Result<(), StorageError> {
        let coll = self.coll(collection);
        self.guard
            .call("publish", || {
                let coll = coll.clone();
                let filter = doc! { "document_id": document_id, "version": version };
                async move {
                    coll.update_many(filter, doc! { "$set": { "live": true } })
                        .await
                        .map(drop)
                        .map_err(classify)
                }
            })
            .await
    }
}

fn write_concern(setting: &str, timeout: Duration) -> Result<WriteConcern, StorageError> {
    let w = match setting.trim() {
        "majority" => Acknowledgment::Majority,
        n => Acknowledgment::Nodes(n.parse().map_err(|_| {
            StorageError::BadUrl(format!(
                "documents.write_concern must be \"majority\" or a number of nodes, not {n:?}"
            ))
        })?),
    };
    // Journaled: an acknowledged upload must survive the server's crash (a standalone server
    // acknowledges `w: 1` before its journal is on disk).
    Ok(WriteConcern::builder()
        .w(w)
        .journal(true)
        .w_timeout(timeout)
        .build())
}

/// Network trouble, elections and timeouts are transient; anything else is an error of ours.
fn classify(e: MongoError) -> CallError {
    let transient = e.contains_label("RetryableWriteError")
        || e.contains_label("TransientTransactionError")
        || match e.kind.as_ref() {
            ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. } => true,
            ErrorKind::Command(c) => TRANSIENT_CODES.contains(&c.code),
            _ => false,
        };
    if transient {
        CallError::Transient(e.to_string())
    } else {
        CallError::Permanent(StorageError::Database(format!("MongoDB: {e}")))
    }
}

/// Server error codes that mean "try again" (not primary, shutting down, network, time limit).
const TRANSIENT_CODES: &[i32] = &[
    6, 7, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

fn corrupt(what: &str) -> impl Fn(mongodb::bson::document::ValueAccessError) -> StorageError + '_ {
    move |e| StorageError::Corrupt(format!("MongoDB {what}: {e}"))
}

fn get_uuid(doc: &BsonDoc, key: &str) -> Result<Uuid, StorageError> {
    let s = doc.get_str(key).map_err(corrupt(key))?;
    Uuid::parse_str(s).map_err(|e| StorageError::Corrupt(format!("MongoDB {key} {s:?}: {e}")))
}

/// Integers may come back as 32- or 64-bit, depending on the writer.
fn get_int(doc: &BsonDoc, key: &str) -> Result<i64, StorageError> {
    match doc.get(key) {
        Some(Bson::Int32(v)) => Ok(i64::from(*v)),
        Some(Bson::Int64(v)) => Ok(*v),
        other => Err(StorageError::Corrupt(format!(
            "MongoDB {key}: expected an integer, found {other:?}"
        ))),
    }
}

fn to_chunk(doc: &BsonDoc) -> Result<StoredChunk, StorageError> {
    Ok(StoredChunk {
        id: get_uuid(doc, "_id")?,
        document_id: get_uuid(doc, "document_id")?,
        chunk_index: get_int(doc, "chunk_index")? as i32,
        text: doc.get_str("text").map_err(corrupt("text"))?.to_string(),
        token_count: get_int(doc, "token_count")? as i32,
        offset: get_int(doc, "offset").ok().map(|o| o as u64),
    })
}

#[async_trait]
impl DocumentStore for MongoDocumentStore {
    fn inline(&self) -> bool {
        false
    }

    async fn put_original(&self, content_ref: Uuid, content: Vec<u8>) -> Result<(), StorageError> {
        let parts = content.len().div_ceil(PART_BYTES).max(1);
        let now = mongodb::bson::DateTime::now();
        for part in 0..parts {
            let start = part * PART_BYTES;
            let bytes = content[start..(start + PART_BYTES).min(content.len())].to_vec();
            let id = format!("{content_ref}/{part}");
            let replacement = doc! {
                "_id": &id,
                "ref": content_ref.to_string(),
                "part": part as i64,
                "parts": parts as i64,
                "size": content.len() as i64,
                "created_at": now,
                "data": Binary { subtype: BinarySubtype::Generic, bytes },
            };
            self.upsert("store the original", "originals", id, replacement)
                .await?;
        }
        Ok(())
    }

    async fn get_original(&self, doc: &Document) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(content_ref) = doc.content_ref else {
            return Ok(None);
        };
        let mut parts = self
            .find_all(
                "read the original",
                "originals",
                doc! { "ref": content_ref.to_string() },
                None,
            )
            .await?;
        if parts.is_empty() {
            return Ok(None);
        }
        parts.sort_by_key(|p| get_int(p, "part").unwrap_or(i64::MAX));
        let expected = get_int(&parts[0], "parts")?;
        if parts.len() as i64 != expected {
            return Err(StorageError::Corrupt(format!(
                "original {content_ref}: {} of {expected} parts stored",
                parts.len()
            )));
        }
        let mut bytes = Vec::with_capacity(get_int(&parts[0], "size")?.max(0) as usize);
        for part in &parts {
            bytes.extend_from_slice(&part.get_binary_generic("data").map_err(corrupt("data"))?[..]);
        }
        Ok(Some(bytes))
    }

    async fn delete_original(&self, content_ref: Uuid) -> Result<(), StorageError> {
        self.delete_many(
            "delete the original",
            "originals",
            doc! { "ref": content_ref.to_string() },
        )
        .await
        .map(drop)
    }

    async fn stage(
        &self,
        document_id: Uuid,
        version: i64,
        text: String,
        chunks: Vec<StoredChunk>,
    ) -> Result<(), StorageError> {
        let doc_id = document_id.to_string();
        // A repair re-index of the live version writes the same chunk ids: those stay live (same
        // version, same text), so keep their flag; everything else is (re)written unserved.
        let live: std::collections::HashSet<String> = self
            .find_all(
                "stage chunks",
                "chunks",
                doc! { "document_id": &doc_id, "version": version, "live": true },
                Some(doc! { "_id": 1 }),
            )
            .await?
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
            .collect();
        self.upsert(
            "stage the parsed text",
            "texts",
            format!("{doc_id}/{version}"),
            doc! {
                "_id": format!("{doc_id}/{version}"),
                "document_id": &doc_id,
                "version": version,
                "text": text,
                "live": !live.is_empty(),
            },
        )
        .await?;
        let to_doc = |c: &StoredChunk, live: bool| {
            doc! {
                "_id": c.id.to_string(),
                "document_id": &doc_id,
                "version": version,
                "chunk_index": c.chunk_index,
                "text": &c.text,
                "token_count": c.token_count,
                "offset": c.offset.map(|o| o as i64),
                "live": live,
            }
        };
        let (existing, fresh): (Vec<&StoredChunk>, Vec<&StoredChunk>) = chunks
            .iter()
            .partition(|c| live.contains(&c.id.to_string()));
        if !fresh.is_empty() {
            let fresh: Vec<BsonDoc> = fresh.into_iter().map(|c| to_doc(c, false)).collect();
            let coll = self.coll("chunks");
            self.guard
                .call("stage chunks", || {
                    let (coll, fresh) = (coll.clone(), fresh.clone());
                    // A retry after a lost reply must not fail on the ids the first try wrote.
                    let doc_id = doc_id.clone();
                    async move {
                        coll.delete_many(
                            doc! { "document_id": doc_id, "version": version, "live": false },
                        )
                        .await
                        .map_err(classify)?;
                        coll.insert_many(fresh).await.map(drop).map_err(classify)
                    }
                })
                .await?;
        }
        for c in existing {
            self.upsert("stage chunks", "chunks", c.id.to_string(), to_doc(c, true))
                .await?;
        }
        Ok(())
    }

    async fn publish(&self, document_id: Uuid, version: i64) -> Result<(), StorageError> {
        let doc_id = document_id.to_string();
        self.set_live("chunks", &doc_id, version).await?;
        self.set_live("texts", &doc_id, version).await?;
        let others = doc! { "document_id": &doc_id, "version": { "$lt": version } };
        self.delete_many("publish", "chunks", others.clone())
            .await?;
        self.delete_many("publish", "texts", others).await?;
        Ok(())
    }

    async fn discard(&self, document_id: Uuid, version: Option<i64>) -> Result<(), StorageError> {
        let mut filter = doc! { "document_id": document_id.to_string() };
        if let Some(v) = version {
            filter.insert("version", v);
        }
        self.delete_many("discard chunks", "chunks", filter.clone())
            .await?;
        self.delete_many("discard chunks", "texts", filter).await?;
        Ok(())
    }

    async fn delete_document(
        &self,
        document_id: Uuid,
        content_ref: Option<Uuid>,
    ) -> Result<u64, StorageError> {
        let filter = doc! { "document_id": document_id.to_string() };
        let chunks = self
            .delete_many("delete the document", "chunks", filter.clone())
            .await?;
        self.delete_many("delete the document", "texts", filter)
            .await?;
        if let Some(content_ref) = content_ref {
            self.delete_original(content_ref).await?;
        }
        Ok(chunks)
    }

    async fn get_chunks(&self, ids: Vec<Uuid>) -> Result<Vec<StoredChunk>, StorageError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        self.find_all(
            "read chunks",
            "chunks",
            doc! { "_id": { "$in": ids }, "live": true },
            None,
        )
        .await?
        .iter()
        .map(to_chunk)
        .collect()
    }

    async fn chunk_counts(&self) -> Result<HashMap<Uuid, i64>, StorageError> {
        // Counted by the server: one row per document comes back, not one per chunk (this runs
        // at every start-up, in `verify`).
        let coll = self.coll("chunks");
        let rows: Vec<BsonDoc> = self
            .guard
            .call("count chunks", || {
                let coll = coll.clone();
                let pipeline = [
                    doc! { "$match": { "live": true } },
                    doc! { "$group": { "_id": "$document_id", "n": { "$sum": 1 } } },
                ];
                async move {
                    coll.aggregate(pipeline)
                        .await
                        .map_err(classify)?
                        .try_collect()
                        .await
                        .map_err(classify)
                }
            })
            .await?;
        rows.iter()
            .map(|r| Ok((get_uuid(r, "_id")?, get_int(r, "n")?)))
            .collect()
    }

    async fn original_refs(&self) -> Result<Vec<(Uuid, DateTime<Utc>)>, StorageError> {
        self.find_all(
            "list originals",
            "originals",
            doc! { "part": 0 },
            Some(doc! { "ref": 1, "created_at": 1 }),
        )
        .await?
        .iter()
        .map(|d| {
            let ms = d
                .get_datetime("created_at")
                .map_err(corrupt("created_at"))?
                .timestamp_millis();
            let at = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
            Ok((get_uuid(d, "ref")?, at))
        })
        .collect()
    }

    async fn health(&self) -> Result<(), StorageError> {
        let db = self.db.clone();
        self.guard
            .call("ping", || {
                let db = db.clone();
                async move {
                    db.run_command(doc! { "ping": 1 })
                        .await
                        .map(drop)
                        .map_err(classify)
                }
            })
            .await
    }

    fn backend(&self) -> &'static str {
        "mongodb"
    }
}
