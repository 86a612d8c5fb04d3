//! What the in-process benchmarks share: dbpedia-5k as uploads and queries, loading it through
//! the bulk path, and timing a query's parts (the model, the index, the whole search).
// Each bench compiles this module on its own and uses only a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use doc_rag::AppState;
use doc_rag::config::Settings;
use doc_rag::embedder::Priority;
use doc_rag::ingest::Upload;
use doc_rag::query::SearchParams;
use doc_rag::storage::vector::{SearchMode, VectorQuery};
use serde_json::{Map, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `DOCRAG__EMBEDDER__MODEL_DIR`, else the clone's `models/`.
pub fn model_dir() -> PathBuf {
    std::env::var_os("DOCRAG__EMBEDDER__MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or(root().join("models"))
}

fn dataset_file(name: &str) -> String {
    std::fs::read_to_string(root().join("../shared/datasets/dbpedia-5k").join(name))
        .expect("dataset ../shared/datasets/dbpedia-5k")
}

/// Embedded defaults with the data in `dir`, warnings only in the log, and this build's binary
/// as the parser sandbox.
pub fn settings(dir: &Path) -> Settings {
    Settings::for_tests(
        dir,
        &model_dir(),
        &[
            (
                "parser.command".into(),
                env!("CARGO_BIN_EXE_doc-rag").into(),
            ),
            ("log.level".into(), "warn".into()),
        ],
    )
    .expect("settings")
}

/// The first `limit` documents of the corpus.
pub fn corpus(limit: usize) -> Vec<Value> {
    dataset_file("corpus.jsonl")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .take(limit)
        .collect()
}

/// Every query's text.
pub fn queries() -> Vec<String> {
    dataset_file("queries.jsonl")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|q| q["text"].as_str().map(str::to_string))
        .collect()
}

/// The corpus as plain-text uploads; copy `n > 0` gets source ids `ID#n`.
pub fn uploads(corpus: &[Value], copy: u64) -> Vec<Upload> {
    corpus
        .iter()
        .map(|d| {
            let id = d["_id"].as_str().unwrap_or_default();
            let source = if copy == 0 {
                id.to_string()
            } else {
                format!("{id}#{copy}")
            };
            let mut metadata = Map::new();
            metadata.insert("source_id".into(), source.into());
            Upload {
                title: d["title"].as_str().map(str::to_string),
                file_name: None,
                content_type: Some("text/plain".into()),
                content: d["text"].as_str().unwrap_or("").as_bytes().to_vec(),
                collection: None,
                external_id: None,
                metadata: Some(metadata),
                request_id: None,
            }
        })
        .collect()
}

/// Submits the uploads in bulk batches and waits until every job is done.
pub async fn load(state: &AppState, uploads: Vec<Upload>) {
    let mut jobs = Vec::with_capacity(uploads.len());
    let mut uploads = uploads.into_iter().peekable();
    while uploads.peek().is_some() {
        let batch: Vec<Upload> = uploads.by_ref().take(2000).collect();
        let submitted = state.ingest.submit_batch(batch).await.expect("bulk submit");
        assert!(submitted.rejected.is_empty(), "{:?}", submitted.rejected);
        jobs.extend(submitted.submitted.into_iter().map(|(_, s)| s.job_id));
    }
    for job in jobs {
        let job = state
            .ingest
            .wait(job, Duration::from_secs(3600))
            .await
            .expect("job");
        assert_eq!(job.status.as_str(), "done", "{job:?}");
    }
}

/// How long one query's parts took.
pub struct QueryTimes {
    /// The query's dense embedding alone (the model).
    pub embed: Duration,
    /// The vector index's hybrid query alone, with that embedding and the BM25 vector.
    pub index: Duration,
    /// `Searcher::search` uncached: embedding, BM25, index, chunk texts.
    pub search: Duration,
}

pub async fn time_query(state: &AppState, text: &str) -> QueryTimes {
    let q = &state.settings.query;
    let t = Instant::now();
    let dense = state
        .embedder
        .embed(vec![text.to_string()], Priority::Query)
        .await
        .expect("embed")
        .pop();
    let embed = t.elapsed();
    let sparse = Some(state.bm25.query(text));
    let t = Instant::now();
    let hits = state
        .storage
        .vectors
        .search(VectorQuery {
            mode: SearchMode::Hybrid,
            dense,
            sparse,
            limit: q.default_top_k,
            prefetch_limit: q.prefetch_limit,
            rrf_k: q.rrf_k,
            weights: None,
            collection: None,
            collections: None,
            filter: None,
        })
        .await
        .expect("index");
    let index = t.elapsed();
    std::hint::black_box(hits);
    let t = Instant::now();
    let found = state
        .search
        .search(SearchParams {
            query: text.to_string(),
            top_k: q.default_top_k,
            mode: SearchMode::Hybrid,
            collection: None,
            filter: None,
            scope: None,
            fresh: true,
        })
        .await
        .expect("search");
    let search = t.elapsed();
    assert!(!found.cached && !found.hits.is_empty());
    QueryTimes {
        embed,
        index,
        search,
    }
}

/// The value at quantile `p` (0.5 for the median).
pub fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
