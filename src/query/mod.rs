//! The query processor: retrieval. It embeds the query (dense and BM25), asks the vector index for
//! a hybrid (reciprocal rank fusion), dense or keyword ranking within the requested collection and
//! metadata filter, attaches each chunk's text from the document store, and caches the result
//! until the collection's content changes.

pub mod fusion;
pub mod http;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tracing::Instrument;

use crate::telemetry::stage_done;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::api::model::SearchHit;
use crate::config::{LimitsSettings, QuerySettings};
use crate::embedder::{Bm25Encoder, EmbedError, Embedder, Priority};
use crate::limits::{LimitError, check_bytes, check_filter, validate_collection};
use crate::storage::cache::ALL_COLLECTIONS;
use crate::storage::vector::{SearchMode, VectorQuery};

use crate::storage::{Storage, StorageError};

pub const MAX_QUERY_CHARS: usize = 2000;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Limit(#[from] LimitError),
}

/// A validated search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchParams {
    pub query: String,
    pub top_k: usize,
    pub mode: SearchMode,
    pub collection: Option<String>,
    pub filter: Option<Map<String, Value>>,
    /// The collections the caller may read; `None` for all. Part of the cache key, so callers with
    /// different access never share a cached result.
    #[serde(default)]
    pub scope: Option<Vec<String>>,
    /// Compute the result even when a cached one exists (`Cache-Control: no-cache`); the fresh
    /// result is still stored. Not part of the cache key.
    #[serde(skip)]
    pub fresh: bool,
}

impl SearchParams {
    /// True when the caller can read nothing this search asks for: no index lookup needed.
    fn out_of_scope(&self) -> bool {
        match (&self.scope, &self.collection) {
            (Some(scope), _) if scope.is_empty() => true,
            (Some(scope), Some(c)) => !scope.contains(c),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchOutcome {
    pub hits: Vec<SearchHit>,
    pub cached: bool,
}

#[async_trait]
pub trait Searcher: Send + Sync + 'static {
    async fn search(&self, params: SearchParams) -> Result<SearchOutcome, QueryError>;
}

pub struct QueryService {
    storage: Storage,
    embedder: Arc<dyn Embedder>,
    bm25: Arc<Bm25Encoder>,
    settings: QuerySettings,
    limits: LimitsSettings,
}

impl QueryService {
    pub fn new(
        storage: Storage,
        embedder: Arc<dyn Embedder>,
        bm25: Arc<Bm25Encoder>,
        settings: QuerySettings,
        limits: LimitsSettings,
    ) -> Self {
        Self {
            storage,
            embedder,
            bm25,
            settings,
            limits,
        }
    }

    /// What callers control, against `[limits]`; before the cache, so no key is built from it.
    fn check_limits(&self, p: &SearchParams) -> Result<(), QueryError> {
        check_bytes(
            "query",
            "query_max_bytes",
            self.limits.query_max_bytes,
            p.query.len(),
        )?;
        if let Some(filter) = &p.filter {
            check_filter(filter, &self.limits)?;
        }
        if let Some(c) = &p.collection {
            validate_collection(c).map_err(QueryError::Invalid)?;
        }
        Ok(())
    }

    /// Turns raw request fields into [`SearchParams`], applying defaults and limits.
    pub fn params(
        &self,
        query: String,
        top_k: Option<usize>,
        mode: Option<SearchMode>,
        collection: Option<String>,
        filter: Option<Map<String, Value>>,
    ) -> Result<SearchParams, QueryError> {
        validate_params(
            &self.settings,
            query,
            top_k,
            self.settings.default_top_k,
            mode,
            collection,
            filter,
        )
    }

    async fn retrieve(&self, p: &SearchParams) -> Result<Vec<SearchHit>, QueryError> {
        if p.out_of_scope() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let dense = match p.mode {
            SearchMode::Keyword => None,
            _ => self
                .embedder
                .embed(vec![p.query.clone()], Priority::Query)
                .instrument(tracing::info_span!("embed"))
                .await?
                .into_iter()
                .next(),
        };
        stage_done("embed", started);
        let sparse = match p.mode {
            SearchMode::Dense => None,
            _ => Some(self.bm25.query(&p.query)),
        };
        let query = VectorQuery {
            mode: p.mode,
            dense,
            sparse,
            limit: p.top_k,
            prefetch_limit: self.settings.prefetch_limit.max(p.top_k),
            rrf_k: self.settings.rrf_k,
            weights: fusion_weights(&self.settings),
            collection: p.collection.clone(),
            collections: p.scope.clone(),
            filter: p.filter.clone(),
        };
        let vectors = &self.storage.vectors;
        let method = self.settings.fusion;
        let started = Instant::now();
        let hits = if p.mode == SearchMode::Hybrid {
            // Both rankings with their scores, fused here: score-aware methods need the scores,
            // and every method orders ties the same way whatever the index's layout.
            let single = |mode, limit| VectorQuery {
                mode,
                limit,
                ..query.clone()
            };
            let prefetch = query.prefetch_limit;
            let (dense, keyword) = async {
                tokio::try_join!(
                    vectors.search(single(SearchMode::Dense, prefetch)),
                    vectors.search(single(SearchMode::Keyword, prefetch)),
                )
            }
            .instrument(tracing::info_span!("index"))
            .await
            .map_err(query_error)?;
            let weights = [self.settings.dense_weight, self.settings.keyword_weight];
            fusion::fuse(dense, keyword, method, weights, query.rrf_k, p.top_k)
        } else {
            let mut hits = vectors
                .search(query)
                .instrument(tracing::info_span!("index"))
                .await
                .map_err(query_error)?;
            fusion::order(&mut hits);
            hits
        };
        stage_done("index", started);
        let started = Instant::now();
        let texts: HashMap<_, _> = self
            .storage
            .documents
            .get_chunks(hits.iter().map(|h| h.chunk_id).collect())
            .instrument(tracing::info_span!("chunks"))
            .await?
            .into_iter()
            .map(|c| (c.id, c.text))
            .collect();
        stage_done("chunks", started);
        // A hit without stored text belongs to a document being (re)indexed or deleted right now.
        Ok(hits
            .into_iter()
            .filter_map(|h| {
                let text = texts.get(&h.chunk_id)?.clone();
                Some(SearchHit {
                    document_id: h.payload.document_id,
                    chunk_id: h.chunk_id,
                    chunk_index: h.payload.chunk_index,
                    score: h.score,
                    text,
                    title: h.payload.title,
                    collection: h.payload.collection,
                    metadata: h.payload.metadata,
                })
            })
            .collect())
    }
}

/// The index rejects filters it cannot express; that is the caller's input.
fn query_error(e: StorageError) -> QueryError {
    match e {
        StorageError::Vector(m) if m.contains("filter") => QueryError::Invalid(m),
        other => QueryError::Storage(other),
    }
}

/// Equal weights are left to the engine's default.
fn fusion_weights(s: &QuerySettings) -> Option<[f32; 2]> {
    (s.dense_weight != 1.0 || s.keyword_weight != 1.0).then_some([s.dense_weight, s.keyword_weight])
}

/// Shared by search and question answering: defaults, bounds and shape checks.
pub fn validate_params(
    settings: &QuerySettings,
    query: String,
    top_k: Option<usize>,
    default_top_k: usize,
    mode: Option<SearchMode>,
    collection: Option<String>,
    filter: Option<Map<String, Value>>,
) -> Result<SearchParams, QueryError> {
    let query = query.trim().to_string();
    if query.is_empty() {
        return Err(QueryError::Invalid("query must not be empty".into()));
    }
    if query.chars().count() > MAX_QUERY_CHARS {
        return Err(QueryError::Invalid(format!(
            "query is longer than {MAX_QUERY_CHARS} characters"
        )));
    }
    let top_k = top_k.unwrap_or(default_top_k);
    if top_k == 0 || top_k > settings.max_top_k {
        return Err(QueryError::Invalid(format!(
            "top_k must be between 1 and {}",
            settings.max_top_k
        )));
    }
    if let Some(c) = &collection
        && c.is_empty()
    {
        return Err(QueryError::Invalid("collection must not be empty".into()));
    }
    Ok(SearchParams {
        query,
        top_k,
        mode: mode.unwrap_or_default(),
        collection,
        filter,
        scope: None,
        fresh: false,
    })
}

/// `query_requests_total{collection}`. A caller may name any collection, so only a collection
/// that answered with something gets its own series: the label set stays bounded by the
/// collections that exist.
fn count_query(scope: &str, hits: &[SearchHit]) {
    let collection = if hits.is_empty() {
        "(no results)"
    } else {
        scope
    };
    metrics::counter!("query_requests_total", "collection" => collection.to_string()).increment(1);
}

#[async_trait]
impl Searcher for QueryService {
    async fn search(&self, p: SearchParams) -> Result<SearchOutcome, QueryError> {
        self.check_limits(&p)?;
        let started = Instant::now();
        let scope = p
            .collection
            .clone()
            .unwrap_or_else(|| ALL_COLLECTIONS.to_string());
        let key = format!("search:{}", serde_json::to_string(&p).unwrap_or_default());
        // Read before searching: a result computed across an invalidation is not stored.
        let cache_started = Instant::now();
        let generation = self.storage.cache.generation(&scope).await;
        let cached = if p.fresh {
            None
        } else {
            self.storage.cache.get(&scope, &key).await
        };
        stage_done("cache", cache_started);
        if let Some(hit) = cached
            && let Ok(hits) = serde_json::from_str::<Vec<SearchHit>>(&hit)
        {
            metrics::counter!("query_cache_total", "result" => "hit").increment(1);
            count_query(&scope, &hits);
            return Ok(SearchOutcome { hits, cached: true });
        }
        let result = if p.fresh { "bypass" } else { "miss" };
        metrics::counter!("query_cache_total", "result" => result).increment(1);
        let hits = self.retrieve(&p).await?;
        if let Ok(json) = serde_json::to_string(&hits) {
            self.storage.cache.put(&scope, &key, json, generation).await;
        }
        let mode = match p.mode {
            SearchMode::Hybrid => "hybrid",
            SearchMode::Dense => "dense",
            SearchMode::Keyword => "keyword",
        };
        metrics::histogram!("query_search_seconds", "mode" => mode)
            .record(started.elapsed().as_secs_f64());
        count_query(&scope, &hits);
        Ok(SearchOutcome {
            hits,
            cached: false,
        })
    }
}
