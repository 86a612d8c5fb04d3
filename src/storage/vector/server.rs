//! The vector index on a Qdrant server (`vectors.qdrant_url`, gRPC), shared by every replica.
//!
//! The collection (`vectors.collection`, "documents" by default, so the runbook's snapshot
//! commands apply) has the embedded index's layout: a named cosine dense vector, a named BM25
//! sparse vector with the IDF modifier, keyword payload indexes on `document_id` and `collection`
//! and an integer index on `version`. Hybrid search is one Query API call: a dense and a sparse
//! prefetch fused by reciprocal rank fusion with the same k and weights as the embedded engine.
//! It is created at start-up when missing; an existing one with another dimension is refused.
//!
//! Every call goes through [`Guarded`]: a timeout, retries of transient failures (writes are
//! idempotent upserts and filtered deletes, all with `wait`), and a breaker, so an outage answers
//! [`StorageError::Unavailable`] (503 `qdrant_unavailable`) instead of hanging requests.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use qdrant_client::qdrant::point_id::PointIdOptions;
use qdrant_client::qdrant::vectors_config::Config as VectorsConfigKind;
use qdrant_client::qdrant::{
    self, CountPointsBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, GetPointsBuilder, Modifier, NamedVectors,
    PointId, PointStruct, PrefetchQueryBuilder, Query, QueryPointsBuilder, Rrf,
    ScrollPointsBuilder, SparseVectorParamsBuilder, SparseVectorsConfigBuilder,
    UpsertPointsBuilder, Vector, VectorInput, VectorParamsBuilder, VectorsConfigBuilder,
};
use qdrant_client::{Payload, Qdrant, QdrantError};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{
    ChunkPayload, DENSE_VECTOR, IndexPoint, KEYWORD_FIELDS, MatchValue, Plan, SPARSE_VECTOR,
    SparseVec, VectorHit, VectorIndex, VectorQuery, check_dense, payload_object, scope_conditions,
};
use crate::config::VectorsSettings;
use crate::storage::breaker::{CallError, Guarded, wait_at_startup};
use crate::storage::{Dependency, StorageError};

/// Points per scroll page (inventory).
const SCROLL_PAGE: u32 = 1000;

pub struct QdrantVectorIndex {
    client: Qdrant,
    collection: String,
    dim: usize,
    guard: Guarded,
}

impl QdrantVectorIndex {
    /// Connects and makes sure the collection and its payload indexes exist, waiting for a
    /// server that is not up yet for up to `startup_wait`.
    pub async fn connect(
        settings: &VectorsSettings,
        dim: usize,
        startup_wait: Duration,
    ) -> Result<Self, StorageError> {
        let timeout = Duration::from_millis(settings.timeout_ms.max(1));
        let key = settings.qdrant_api_key.expose_secret();
        let client = Qdrant::from_url(&settings.qdrant_url)
            .api_key((!key.is_empty()).then(|| key.to_string()))
            .timeout(timeout)
            .connect_timeout(timeout)
            .skip_compatibility_check()
            .build()
            .map_err(|e| StorageError::BadUrl(format!("vectors.qdrant_url: {e}")))?;
        let index = Self {
            client,
            collection: settings.collection.clone(),
            dim,
            guard: Guarded::new(Dependency::Qdrant, timeout, 2),
        };
        wait_at_startup(
            "the Qdrant server",
            startup_wait,
            StorageError::is_unavailable,
            || index.ensure_collection(),
        )
        .await?;
        Ok(index)
    }

    async fn ensure_collection(&self) -> Result<(), StorageError> {
        let name = self.collection.clone();
        let exists = self
            .call("check the collection", || {
                let name = name.clone();
                async move { self.client.collection_exists(name).await }
            })
            .await?;
        if exists {
            self.check_dimension().await?;
        } else {
            self.call("create the collection", || async {
                let mut dense = VectorsConfigBuilder::default();
                dense.add_named_vector_params(
                    DENSE_VECTOR,
                    VectorParamsBuilder::new(self.dim as u64, Distance::Cosine),
                );
                let mut sparse = SparseVectorsConfigBuilder::default();
                sparse.add_named_vector_params(
                    SPARSE_VECTOR,
                    SparseVectorParamsBuilder::default().modifier(Modifier::Idf as i32),
                );
                let created = self
                    .client
                    .create_collection(
                        CreateCollectionBuilder::new(&self.collection)
                            .vectors_config(dense)
                            .sparse_vectors_config(sparse),
                    )
                    .await;
                match created {
                    // Another replica created it first.
                    Err(QdrantError::ResponseError { status })
                        if status.code() == tonic::Code::AlreadyExists
                            || status.message().contains("already exists") =>
                    {
                        Ok(())
                    }
                    other => other.map(drop),
                }
            })
            .await?;
        }
        let fields = KEYWORD_FIELDS
            .iter()
            .map(|f| (*f, FieldType::Keyword))
            .chain([("version", FieldType::Integer)]);
        for (field, kind) in fields {
            self.call("create a payload index", || async move {
                self.client
                    .create_field_index(
                        CreateFieldIndexCollectionBuilder::new(&self.collection, field, kind)
                            .wait(true),
                    )
                    .await
                    .map(drop)
            })
            .await?;
        }
        Ok(())
    }

    /// An existing collection built for another embedding size would fail every write.
    async fn check_dimension(&self) -> Result<(), StorageError> {
        let info = self
            .call("read the collection", || async {
                self.client.collection_info(self.collection.as_str()).await
            })
            .await?;
        let size = info
            .result
            .and_then(|r| r.config)
            .and_then(|c| c.params)
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config)
            .and_then(|c| match c {
                VectorsConfigKind::ParamsMap(map) => map.map.get(DENSE_VECTOR).map(|p| p.size),
                VectorsConfigKind::Params(_) => None,
            });
        match size {
            Some(size) if size == self.dim as u64 => Ok(()),
            Some(size) => Err(StorageError::Vector(format!(
                "Qdrant collection {:?} holds {size}-dimensional vectors; the embedder makes {} \
                 (another model?): use another vectors.collection or re-index",
                self.collection, self.dim
            ))),
            None => Err(StorageError::Vector(format!(
                "Qdrant collection {:?} has no dense vector named {DENSE_VECTOR:?}; it was not \
                 created by doc-rag",
                self.collection
            ))),
        }
    }

    /// One guarded call; transport trouble and server unavailability are transient, the rest
    /// (bad input, a schema mismatch) are reported as vector-index errors.
    async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, QdrantError>>,
    {
        self.guard
            .call(what, || {
                let fut = f();
                async move { fut.await.map_err(|e| classify(what, e)) }
            })
            .await
    }

    async fn count_filtered(&self, filter: Option<Filter>) -> Result<u64, StorageError> {
        self.call("count points", || {
            let filter = filter.clone();
            async move {
                let mut request = CountPointsBuilder::new(&self.collection).exact(true);
                if let Some(f) = filter {
                    request = request.filter(f);
                }
                self.client.count(request).await
            }
        })
        .await
        .map(|r| r.result.map_or(0, |c| c.count))
    }

    async fn delete_filtered(&self, what: &str, filter: Filter) -> Result<(), StorageError> {
        self.call(what, || {
            let filter = filter.clone();
            async move {
                self.client
                    .delete_points(
                        DeletePointsBuilder::new(&self.collection)
                            .points(filter)
                            .wait(true),
                    )
                    .await
                    .map(drop)
            }
        })
        .await
    }
}

fn classify(what: &str, e: QdrantError) -> CallError {
    use tonic::Code;
    match &e {
        QdrantError::ResponseError { status } => match status.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Aborted
            | Code::Cancelled
            | Code::Internal => CallError::Transient(e.to_string()),
            _ => CallError::Permanent(StorageError::Vector(format!("{what}: {e}"))),
        },
        QdrantError::ResourceExhaustedError { .. } | QdrantError::Io(_) => {
            CallError::Transient(e.to_string())
        }
        _ => CallError::Permanent(StorageError::Vector(format!("{what}: {e}"))),
    }
}

fn keyword(field: &str, value: impl Into<String>) -> qdrant::Condition {
    qdrant::Condition::matches(field, value.into())
}

fn document_filter(document_id: Uuid) -> Filter {
    Filter::must([keyword("document_id", document_id.to_string())])
}

fn scope_filter(query: &VectorQuery) -> Result<Option<Filter>, StorageError> {
    let conditions: Vec<qdrant::Condition> = scope_conditions(query)?
        .into_iter()
        .map(|c| match c.value {
            MatchValue::Keyword(v) => qdrant::Condition::matches(c.path, v),
            MatchValue::Integer(v) => qdrant::Condition::matches(c.path, v),
            MatchValue::Bool(v) => qdrant::Condition::matches(c.path, v),
            MatchValue::Keywords(v) => qdrant::Condition::matches(c.path, v),
            MatchValue::Integers(v) => qdrant::Condition::matches(c.path, v),
        })
        .collect();
    Ok((!conditions.is_empty()).then(|| Filter::must(conditions)))
}

fn to_point(point: IndexPoint, dim: usize) -> Result<PointStruct, StorageError> {
    let IndexPoint {
        id,
        dense,
        sparse,
        payload,
    } = point;
    check_dense(&format!("the dense vector of chunk {id}"), &dense, dim)?;
    if sparse.indices.len() != sparse.values.len() {
        return Err(StorageError::Vector(format!(
            "chunk {id}: invalid sparse vector: {} indices, {} values",
            sparse.indices.len(),
            sparse.values.len()
        )));
    }
    let payload = Payload::from(payload_object(id, &payload)?);
    let vectors = NamedVectors::default()
        .add_vector(DENSE_VECTOR, Vector::new_dense(dense))
        .add_vector(
            SPARSE_VECTOR,
            Vector::new_sparse(sparse.indices, sparse.values),
        );
    Ok(PointStruct::new(id.to_string(), vectors, payload))
}

/// A point as the server hands it back: its named dense and sparse vectors (a chunk without
/// BM25 terms has no sparse vector) and its payload.
fn from_retrieved(point: qdrant::RetrievedPoint) -> Result<IndexPoint, StorageError> {
    use qdrant::vector_output::Vector as Output;
    let Some(id) = point_uuid(point.id) else {
        return Err(StorageError::Corrupt("a point without a UUID id".into()));
    };
    let vectors = point
        .vectors
        .ok_or_else(|| StorageError::Corrupt(format!("vector point {id} has no vectors")))?;
    let dense = match vectors.get_vector_by_name(DENSE_VECTOR) {
        Some(Output::Dense(d)) => d.data,
        _ => {
            return Err(StorageError::Corrupt(format!(
                "vector point {id} has no dense vector"
            )));
        }
    };
    let sparse = match vectors.get_vector_by_name(SPARSE_VECTOR) {
        Some(Output::Sparse(s)) => SparseVec {
            indices: s.indices,
            values: s.values,
        },
        _ => SparseVec::default(),
    };
    let payload = to_payload(point.payload)
        .ok_or_else(|| StorageError::Corrupt(format!("vector point {id}: unreadable payload")))?;
    Ok(IndexPoint {
        id,
        dense,
        sparse,
        payload,
    })
}

fn point_uuid(id: Option<PointId>) -> Option<Uuid> {
    match id?.point_id_options? {
        PointIdOptions::Uuid(s) => Uuid::parse_str(&s).ok(),
        PointIdOptions::Num(n) => {
            tracing::warn!(
                point_id = n,
                "skipping a point with a numeric id; chunk ids are UUIDs"
            );
            None
        }
    }
}

fn to_payload(payload: HashMap<String, qdrant::Value>) -> Option<ChunkPayload> {
    let map: Map<String, Value> = payload
        .into_iter()
        .map(|(k, v)| (k, v.into_json()))
        .collect();
    serde_json::from_value(Value::Object(map))
        .map_err(|error| tracing::warn!(%error, "skipping a point with an unreadable payload"))
        .ok()
}

#[async_trait]
impl VectorIndex for QdrantVectorIndex {
    async fn upsert(&self, points: Vec<IndexPoint>) -> Result<(), StorageError> {
        if points.is_empty() {
            return Ok(());
        }
        let points = points
            .into_iter()
            .map(|p| to_point(p, self.dim))
            .collect::<Result<Vec<_>, _>>()?;
        self.call("upsert points", || {
            let points = points.clone();
            async move {
                self.client
                    .upsert_points(UpsertPointsBuilder::new(&self.collection, points).wait(true))
                    .await
                    .map(drop)
            }
        })
        .await
    }

    async fn delete_document(&self, document_id: Uuid) -> Result<u64, StorageError> {
        let n = self
            .count_filtered(Some(document_filter(document_id)))
            .await?;
        if n > 0 {
            self.delete_filtered("delete a document's points", document_filter(document_id))
                .await?;
        }
        Ok(n)
    }

    async fn delete_other_versions(
        &self,
        document_id: Uuid,
        keep: i64,
    ) -> Result<(), StorageError> {
        let filter = Filter {
            must: vec![keyword("document_id", document_id.to_string())],
            must_not: vec![qdrant::Condition::matches("version", keep)],
            ..Default::default()
        };
        self.delete_filtered("delete superseded points", filter)
            .await
    }

    async fn delete_version(&self, document_id: Uuid, version: i64) -> Result<(), StorageError> {
        let filter = Filter::must([
            keyword("document_id", document_id.to_string()),
            qdrant::Condition::matches("version", version),
        ]);
        self.delete_filtered("delete a version's points", filter)
            .await
    }

    async fn inventory(&self) -> Result<HashMap<(Uuid, i64), u64>, StorageError> {
        let mut counts: HashMap<(Uuid, i64), u64> = HashMap::new();
        let mut offset: Option<PointId> = None;
        loop {
            let page = self
                .call("scroll points", || {
                    let offset = offset.clone();
                    async move {
                        let mut request = ScrollPointsBuilder::new(&self.collection)
                            .limit(SCROLL_PAGE)
                            .with_payload(true)
                            .with_vectors(false);
                        if let Some(o) = offset {
                            request = request.offset(o);
                        }
                        self.client.scroll(request).await
                    }
                })
                .await?;
            for point in page.result {
                if let Some(p) = to_payload(point.payload) {
                    *counts.entry((p.document_id, p.version)).or_default() += 1;
                }
            }
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(counts),
            }
        }
    }

    async fn search(&self, query: VectorQuery) -> Result<Vec<VectorHit>, StorageError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let filter = scope_filter(&query)?;
        let plan = Plan::of(&query, self.dim)?;
        let mut request = QueryPointsBuilder::new(&self.collection)
            .limit(query.limit as u64)
            .with_payload(true);
        match plan {
            Plan::Empty => return Ok(Vec::new()),
            Plan::Dense(dense) => {
                request = request
                    .query(Query::new_nearest(VectorInput::new_dense(dense)))
                    .using(DENSE_VECTOR);
                if let Some(f) = filter {
                    request = request.filter(f);
                }
            }
            Plan::Sparse(sparse) => {
                request = request
                    .query(Query::new_nearest(VectorInput::new_sparse(
                        sparse.indices,
                        sparse.values,
                    )))
                    .using(SPARSE_VECTOR);
                if let Some(f) = filter {
                    request = request.filter(f);
                }
            }
            Plan::Hybrid {
                dense,
                sparse,
                prefetch_limit,
            } => {
                let prefetch = |input: VectorInput, using: &str| {
                    let mut p = PrefetchQueryBuilder::default()
                        .query(Query::new_nearest(input))
                        .using(using)
                        .limit(prefetch_limit as u64);
                    if let Some(f) = filter.clone() {
                        p = p.filter(f);
                    }
                    p
                };
                request = request
                    .add_prefetch(prefetch(VectorInput::new_dense(dense), DENSE_VECTOR))
                    .add_prefetch(prefetch(
                        VectorInput::new_sparse(sparse.indices, sparse.values),
                        SPARSE_VECTOR,
                    ))
                    .query(Query::new_rrf(Rrf {
                        k: Some(query.rrf_k as u32),
                        weights: query.weights.map(|w| w.to_vec()).unwrap_or_default(),
                    }));
            }
        }
        let response = self
            .call("search", || {
                let request = request.clone();
                async move { self.client.query(request).await }
            })
            .await?;
        Ok(response
            .result
            .into_iter()
            .filter_map(|p| {
                Some(VectorHit {
                    chunk_id: point_uuid(p.id)?,
                    score: p.score,
                    payload: to_payload(p.payload)?,
                })
            })
            .collect())
    }

    async fn get_points(&self, ids: Vec<Uuid>) -> Result<Vec<IndexPoint>, StorageError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<PointId> = ids.iter().map(|id| PointId::from(id.to_string())).collect();
        let response = self
            .call("get points", || {
                let ids = ids.clone();
                async move {
                    self.client
                        .get_points(
                            GetPointsBuilder::new(&self.collection, ids)
                                .with_payload(true)
                                .with_vectors(true),
                        )
                        .await
                }
            })
            .await?;
        response.result.into_iter().map(from_retrieved).collect()
    }

    async fn count(&self) -> Result<u64, StorageError> {
        self.count_filtered(None).await
    }

    async fn count_document(&self, document_id: Uuid) -> Result<u64, StorageError> {
        self.count_filtered(Some(document_filter(document_id)))
            .await
    }

    /// The server runs its own optimizers.
    async fn optimize(&self) -> Result<(), StorageError> {
        Ok(())
    }

    async fn health(&self) -> Result<(), StorageError> {
        self.call("health check", || async {
            self.client.health_check().await.map(drop)
        })
        .await
    }

    fn backend(&self) -> &'static str {
        "qdrant"
    }
}
