//! The vector index: one point per chunk, holding a dense embedding and a BM25 sparse vector, with
//! the chunk's document id, collection and metadata in its payload.
//!
//! The trait is what the query and ingest modules see; `edge` implements it with the in-process
//! Qdrant engine (`qdrant-edge`), `server` with a Qdrant server over gRPC. Both store the same
//! layout (named vectors, payload, indexed fields) and translate the same backend-neutral plan
//! and filter conditions built here, so they rank the same data the same way.

pub mod edge;
pub mod server;

use std::collections::HashMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::StorageError;

/// A sparse vector (BM25 term weights) as parallel index/value arrays.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseVec {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

/// What the index stores beside a chunk's vectors; enough to filter and to cite without a lookup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkPayload {
    pub document_id: Uuid,
    pub collection: String,
    pub chunk_index: u32,
    /// The document version the chunk belongs to; points of any other version than the live one
    /// are removed when a version goes live. Points written before versions were recorded read 0.
    #[serde(default)]
    pub version: i64,
    pub title: String,
    /// The document's user metadata (a JSON object).
    pub metadata: Map<String, Value>,
}

/// One chunk to index. `id` is the chunk id (deterministic from document id and chunk index), so
/// re-indexing the same chunk overwrites it instead of adding a duplicate.
#[derive(Debug, Clone)]
pub struct IndexPoint {
    pub id: Uuid,
    pub dense: Vec<f32>,
    pub sparse: SparseVec,
    pub payload: ChunkPayload,
}

/// Which retrievers a search runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Dense and BM25 prefetch fused with reciprocal rank fusion.
    #[default]
    Hybrid,
    /// Dense embedding similarity only.
    Dense,
    /// BM25 only.
    Keyword,
}

/// A search against the index. `dense` must be set for hybrid/dense, `sparse` for hybrid/keyword.
#[derive(Debug, Clone)]
pub struct VectorQuery {
    pub mode: SearchMode,
    pub dense: Option<Vec<f32>>,
    pub sparse: Option<SparseVec>,
    pub limit: usize,
    /// Candidates each retriever contributes before fusion (hybrid only).
    pub prefetch_limit: usize,
    /// Reciprocal rank fusion constant k.
    pub rrf_k: usize,
    /// Fusion weights of the dense and keyword retrievers (hybrid only); `None` weighs them equally.
    pub weights: Option<[f32; 2]>,
    /// Restrict to one collection.
    pub collection: Option<String>,
    /// Restrict to any of these collections (the caller's readable ones); `None` for all.
    pub collections: Option<Vec<String>>,
    /// Equality conditions on metadata fields, all of which must hold. Values are JSON strings,
    /// numbers or booleans; an array value means "any of".
    pub filter: Option<Map<String, Value>>,
}

/// One search hit, best first.
#[derive(Debug, Clone)]
pub struct VectorHit {
    pub chunk_id: Uuid,
    pub score: f32,
    pub payload: ChunkPayload,
}

#[async_trait]
pub trait VectorIndex: Send + Sync + 'static {
    /// Insert or overwrite points by id.
    async fn upsert(&self, points: Vec<IndexPoint>) -> Result<(), StorageError>;
    /// Remove every point of a document; returns how many there were.
    async fn delete_document(&self, document_id: Uuid) -> Result<u64, StorageError>;
    /// Remove the document's points of every version but `keep` (a version went live).
    async fn delete_other_versions(&self, document_id: Uuid, keep: i64)
    -> Result<(), StorageError>;
    /// Remove the document's points of one version (a stale worker's output).
    async fn delete_version(&self, document_id: Uuid, version: i64) -> Result<(), StorageError>;
    /// Points held per (document, version), for `verify`.
    async fn inventory(&self) -> Result<HashMap<(Uuid, i64), u64>, StorageError>;
    /// Ranked hits, best first, at most `query.limit`.
    async fn search(&self, query: VectorQuery) -> Result<Vec<VectorHit>, StorageError>;
    /// The points with these ids that exist, with their vectors and payloads (a backup reads
    /// them), in no particular order.
    async fn get_points(&self, ids: Vec<Uuid>) -> Result<Vec<IndexPoint>, StorageError>;
    /// Number of points held.
    async fn count(&self) -> Result<u64, StorageError>;
    /// Number of points of one document.
    async fn count_document(&self, document_id: Uuid) -> Result<u64, StorageError>;
    /// Background maintenance (segment merging, index building). Cheap when nothing changed.
    async fn optimize(&self) -> Result<(), StorageError>;
    /// Whether the index answers; `Err` names what is wrong.
    async fn health(&self) -> Result<(), StorageError>;
    /// A short name for logs and /ready ("qdrant-edge", "qdrant").
    fn backend(&self) -> &'static str;
}

/// Named vector holding the chunk embedding.
pub const DENSE_VECTOR: &str = "dense";
/// Named sparse vector holding the chunk's BM25 term weights (IDF applied by the engine).
pub const SPARSE_VECTOR: &str = "bm25";
/// Keyword payload fields every delete and scoped search filters on.
pub const KEYWORD_FIELDS: [&str; 2] = ["document_id", "collection"];
/// Where the document's user metadata sits in the payload; filter keys are relative to it.
pub const METADATA_FIELD: &str = "metadata";

/// What a search runs, after its mode and vectors were checked.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Nothing can match (a keyword query of only stopwords).
    Empty,
    Dense(Vec<f32>),
    Sparse(SparseVec),
    /// Both retrievers, fused with reciprocal rank fusion.
    Hybrid {
        dense: Vec<f32>,
        sparse: SparseVec,
        prefetch_limit: usize,
    },
}

impl Plan {
    /// Checks the query's vectors against its mode and the index's dimension `dim`.
    pub fn of(query: &VectorQuery, dim: usize) -> Result<Self, StorageError> {
        let dense = match query.mode {
            SearchMode::Keyword => None,
            SearchMode::Dense | SearchMode::Hybrid => {
                let dense = query.dense.clone().ok_or_else(|| {
                    StorageError::Vector(format!(
                        "{:?} search needs a dense query vector",
                        query.mode
                    ))
                })?;
                check_dense("the dense query vector", &dense, dim)?;
                Some(dense)
            }
        };
        let sparse = match query.mode {
            SearchMode::Dense => None,
            SearchMode::Keyword => Some(query.sparse.clone().ok_or_else(|| {
                StorageError::Vector("keyword search needs a sparse query vector".into())
            })?),
            SearchMode::Hybrid => query.sparse.clone(),
        };
        // A query of only stopwords embeds to nothing; it matches nothing rather than failing.
        let sparse = sparse.filter(|s| !s.indices.is_empty());
        Ok(match (dense, sparse) {
            (None, None) => Plan::Empty,
            (Some(dense), None) => Plan::Dense(dense),
            (None, Some(sparse)) => Plan::Sparse(sparse),
            (Some(dense), Some(sparse)) => Plan::Hybrid {
                dense,
                sparse,
                prefetch_limit: if query.prefetch_limit == 0 {
                    query.limit
                } else {
                    query.prefetch_limit
                },
            },
        })
    }
}

/// A chunk's payload as the JSON object both engines store.
pub fn payload_object(
    id: Uuid,
    payload: &ChunkPayload,
) -> Result<Map<String, Value>, StorageError> {
    match serde_json::to_value(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(StorageError::Vector(format!(
            "chunk {id}: payload is not a JSON object"
        ))),
        Err(e) => Err(StorageError::Vector(format!("chunk {id}: payload: {e}"))),
    }
}

pub fn check_dense(what: &str, vector: &[f32], dim: usize) -> Result<(), StorageError> {
    if vector.len() != dim {
        return Err(StorageError::Vector(format!(
            "{what} has {} dimensions, the index expects {dim}",
            vector.len()
        )));
    }
    Ok(())
}

/// The value one filter condition matches.
#[derive(Debug, Clone, PartialEq)]
pub enum MatchValue {
    Keyword(String),
    Integer(i64),
    Bool(bool),
    /// Any of these.
    Keywords(Vec<String>),
    /// Any of these.
    Integers(Vec<i64>),
}

/// One equality condition on a payload path; a search's conditions must all hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub path: String,
    pub value: MatchValue,
}

/// The query's scope as conditions: one collection, the caller's readable set, and one equality
/// per metadata key. Errors are meant for the API caller (it maps them to 400), so they say what
/// to fix.
pub fn scope_conditions(query: &VectorQuery) -> Result<Vec<Condition>, StorageError> {
    let mut conditions = Vec::new();
    if let Some(collection) = &query.collection {
        conditions.push(Condition {
            path: "collection".into(),
            value: MatchValue::Keyword(collection.clone()),
        });
    }
    if let Some(allowed) = &query.collections {
        conditions.push(Condition {
            path: "collection".into(),
            value: MatchValue::Keywords(allowed.clone()),
        });
    }
    for (key, value) in query.filter.iter().flatten() {
        check_filter_key(key)?;
        conditions.push(Condition {
            path: format!("{METADATA_FIELD}.{key}"),
            value: filter_value(key, value)?,
        });
    }
    Ok(conditions)
}

fn check_filter_key(key: &str) -> Result<(), StorageError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if key.is_empty() || !key.chars().all(allowed) || key.split('.').any(str::is_empty) {
        return Err(bad_key(key));
    }
    Ok(())
}

pub fn bad_key(key: &str) -> StorageError {
    StorageError::Vector(format!(
        "invalid filter key {key:?}: use letters, digits, '_', '-' and '.' (for nested fields), \
         with no empty parts"
    ))
}

fn filter_value(key: &str, value: &Value) -> Result<MatchValue, StorageError> {
    let unsupported = || {
        StorageError::Vector(format!(
            "unsupported filter value for {key:?}: use a string, an integer, a boolean, or an \
             array of strings or of integers"
        ))
    };
    match value {
        Value::String(s) => Ok(MatchValue::Keyword(s.clone())),
        Value::Bool(b) => Ok(MatchValue::Bool(*b)),
        Value::Number(n) => n.as_i64().map(MatchValue::Integer).ok_or_else(unsupported),
        Value::Array(items) if items.is_empty() => Err(StorageError::Vector(format!(
            "filter value for {key:?} is an empty array: give at least one value"
        ))),
        Value::Array(items) => {
            let strings: Option<Vec<String>> = items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect();
            let integers: Option<Vec<i64>> = items.iter().map(Value::as_i64).collect();
            if let Some(strings) = strings {
                Ok(MatchValue::Keywords(strings))
            } else if let Some(integers) = integers {
                Ok(MatchValue::Integers(integers))
            } else {
                Err(unsupported())
            }
        }
        Value::Null | Value::Object(_) => Err(unsupported()),
    }
}
