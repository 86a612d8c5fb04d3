//! The vector index: one point per chunk, holding a dense embedding and a BM25 sparse vector, with
//! the chunk's document id, collection and metadata in its payload.
//!
//! The trait is what the query and ingest modules see; `edge` implements it with the in-process
//! Qdrant engine (`qdrant-edge`). A Qdrant-server implementation slots in beside it later.

pub mod edge;

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
