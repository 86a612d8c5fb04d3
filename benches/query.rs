//! The in-process query path on a loaded index, against its two unavoidable parts.
//!
//! `cargo bench --bench query` builds the application on embedded defaults in a temporary data
//! dir, loads dbpedia-5k through the bulk path (`Ingestor::submit_batch`), then runs every query
//! of the dataset several times and reports, per query, the median of:
//! - `embed`: the query's dense embedding alone (the model);
//! - `index`: the vector index's hybrid query alone, with that embedding and the BM25 vector;
//! - `search`: `Searcher::search` uncached (`fresh`): embedding, BM25, index, chunk texts;
//! - `answer`: `Responder::answer` uncached: search plus the extractive answer.
//!
//! The target is search ≤ 1.3 × (embed + index) and answer ≤ search + 2 ms. It also prints the
//! ingestion rate of the load. Under `cargo test` it runs a short smoke pass on 200 documents.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use doc_rag::config::Settings;
use doc_rag::embedder::Priority;
use doc_rag::ingest::Upload;
use doc_rag::query::SearchParams;
use doc_rag::response::AnswerParams;
use doc_rag::storage::vector::{SearchMode, VectorQuery};
use serde_json::{Map, Value, json};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let models = std::env::var_os("DOCRAG__EMBEDDER__MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or(root.join("models"));
    let data = root.join("../shared/datasets/dbpedia-5k");
    let corpus = std::fs::read_to_string(data.join("corpus.jsonl")).expect("dataset");
    let queries: Vec<String> = std::fs::read_to_string(data.join("queries.jsonl"))
        .expect("dataset")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|q| q["text"].as_str().map(str::to_string))
        .collect();
    let docs = if full { usize::MAX } else { 200 };
    let rounds = if full { 5 } else { 1 };

    let dir = tempfile::tempdir().expect("temp dir");
    let settings = Settings::for_tests(
        dir.path(),
        &models,
        &[
            (
                "parser.command".into(),
                env!("CARGO_BIN_EXE_doc-rag").into(),
            ),
            ("log.level".into(), "warn".into()),
        ],
    )
    .expect("settings");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let app = doc_rag::Application::build(settings.clone())
            .await
            .expect("application (make models)");
        let state = app.state();
        let server = tokio::spawn(app.run_until_stopped());

        let uploads: Vec<Upload> = corpus
            .lines()
            .take(docs)
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|d| {
                let mut metadata = Map::new();
                metadata.insert("source_id".into(), d["_id"].clone());
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
            .collect();
        let n = uploads.len();
        let started = Instant::now();
        let mut jobs = Vec::new();
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
        let secs = started.elapsed().as_secs_f64();
        println!(
            "loaded {n} documents in {secs:.1} s: {:.1} docs/s (bulk submit -> indexed)",
            n as f64 / secs
        );

        let q = &settings.query;
        let (mut embed, mut index, mut search, mut answer) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            for text in &queries {
                let t = Instant::now();
                let dense = state
                    .embedder
                    .embed(vec![text.clone()], Priority::Query)
                    .await
                    .expect("embed")
                    .pop();
                embed.push(t.elapsed());
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
                index.push(t.elapsed());
                std::hint::black_box(hits);

                let t = Instant::now();
                let found = state
                    .search
                    .search(SearchParams {
                        query: text.clone(),
                        top_k: q.default_top_k,
                        mode: SearchMode::Hybrid,
                        collection: None,
                        filter: None,
                        scope: None,
                        fresh: true,
                    })
                    .await
                    .expect("search");
                search.push(t.elapsed());
                assert!(!found.cached);

                let t = Instant::now();
                let answered = state
                    .response
                    .answer(AnswerParams {
                        query: text.clone(),
                        top_k: None,
                        collection: None,
                        filter: None,
                        scope: None,
                        fresh: true,
                        generator: Default::default(),
                        // Recorded like an API caller's answer, so the figure includes the write.
                        owner: "user:bench".into(),
                        conversation_id: None,
                    })
                    .await
                    .expect("answer");
                answer.push(t.elapsed());
                std::hint::black_box(answered);
            }
        }
        let (e, i, s, a) = (median(embed), median(index), median(search), median(answer));
        let floor = e + i;
        println!(
            "{}",
            json!({
                "queries": queries.len() * rounds,
                "embed_p50_ms": ms(e),
                "index_p50_ms": ms(i),
                "search_p50_ms": ms(s),
                "answer_p50_ms": ms(a),
                "search_over_embed_plus_index": ms(s) / ms(floor),
                "answer_minus_search_ms": ms(a) - ms(s),
            })
        );
        server.abort();
    });
}
