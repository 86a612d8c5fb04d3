//! Retrieval quality on a real dataset no one on this project wrote: BEIR DBpedia-Entity (5,000
//! abstracts, 50 queries, graded judgements) from ../shared/datasets/dbpedia-5k. The corpus is
//! ingested through the API, the queries are run in hybrid, dense and keyword mode, and nDCG@10
//! is computed the way BEIR/trec_eval do. Also prints ingestion throughput and query latency.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestApp, shared_dir};
use serde_json::{Value, json};

/// Measured here: hybrid 0.491, dense 0.518, keyword 0.368 (deterministic for a given model and
/// index). The floor leaves room for harmless ranking changes and catches real regressions.
const HYBRID_FLOOR: f64 = 0.46;

fn read_jsonl(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn qrels(path: &std::path::Path) -> HashMap<String, HashMap<String, i64>> {
    let mut out: HashMap<String, HashMap<String, i64>> = HashMap::new();
    for (n, line) in std::fs::read_to_string(path).unwrap().lines().enumerate() {
        let parts: Vec<&str> = line.split('\t').collect();
        if parts.len() < 3 {
            continue;
        }
        let Ok(rel) = parts[2].trim().parse::<i64>() else {
            assert_eq!(n, 0, "only the header may be non-numeric");
            continue;
        };
        out.entry(parts[0].to_string())
            .or_default()
            .insert(parts[1].to_string(), rel);
    }
    out
}

/// nDCG@k as trec_eval: rank by score desc (ties: doc id desc), gain = relevance, log2 discount.
fn ndcg_at_k(run: &[(String, f64)], rels: &HashMap<String, i64>, k: usize) -> f64 {
    let mut best: BTreeMap<&str, f64> = BTreeMap::new();
    for (d, s) in run {
        best.entry(d.as_str()).or_insert(*s);
    }
    let mut ranked: Vec<(&str, f64)> = best.into_iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(a.0)));
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, (d, _))| *rels.get(*d).unwrap_or(&0) as f64 / ((i + 2) as f64).log2())
        .sum();
    let mut ideal: Vec<i64> = rels.values().copied().filter(|r| *r > 0).collect();
    ideal.sort_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal
        .iter()
        .take(k)
        .enumerate()
        .map(|(i, r)| *r as f64 / ((i + 2) as f64).log2())
        .sum();
    if idcg > 0.0 { dcg / idcg } else { 0.0 }
}

#[test]
fn ndcg_matches_a_hand_computed_example() {
    let rels: HashMap<String, i64> = [
        ("a".to_string(), 2),
        ("b".to_string(), 1),
        ("c".to_string(), 0),
    ]
    .into();
    let perfect = vec![("a".to_string(), 3.0), ("b".to_string(), 2.0)];
    assert!((ndcg_at_k(&perfect, &rels, 10) - 1.0).abs() < 1e-9);
    let swapped = vec![("b".to_string(), 3.0), ("a".to_string(), 2.0)];
    let expected = (1.0 + 2.0 / 3f64.log2()) / (2.0 + 1.0 / 3f64.log2());
    assert!((ndcg_at_k(&swapped, &rels, 10) - expected).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbpedia_ndcg_at_10_hybrid_beats_dense_and_keyword() {
    let data = shared_dir().join("datasets/dbpedia-5k");
    let corpus = read_jsonl(&data.join("corpus.jsonl"));
    let queries = read_jsonl(&data.join("queries.jsonl"));
    let qrels = qrels(&data.join("qrels/test.tsv"));
    let app = Arc::new(TestApp::spawn().await);

    // Ingest through the public API with 8 concurrent clients.
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let corpus = Arc::new(corpus);
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (app, next, corpus) = (app.clone(), next.clone(), corpus.clone());
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(d) = corpus.get(i) else { break };
                let (status, body) = app
                    .post_json(
                        "/v1/documents",
                        &json!({"title": d["title"], "text": d["text"], "metadata": {"source_id": d["_id"]}}),
                    )
                    .await;
                assert_eq!(status, 202, "{body}");
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let posted = started.elapsed();
    let stats = loop {
        let stats = app.stats().await;
        let jobs = &stats["jobs"];
        if jobs["queued"] == 0 && jobs["running"] == 0 {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let ingest_secs = started.elapsed().as_secs_f64();
    assert_eq!(stats["documents_indexed"], corpus.len(), "{stats}");
    let chunks = stats["chunks"].as_f64().unwrap();
    println!(
        "ingest: {} docs, {} chunks in {:.1}s (posting {:.1}s): {:.1} docs/s, {:.1} chunks/s",
        corpus.len(),
        chunks,
        ingest_secs,
        posted.as_secs_f64(),
        corpus.len() as f64 / ingest_secs,
        chunks / ingest_secs
    );

    let mut figures = BTreeMap::new();
    for mode in ["hybrid", "dense", "keyword"] {
        let mut total = 0.0;
        let mut scored = 0;
        let mut latencies = Vec::new();
        for q in &queries {
            let qid = q["_id"].as_str().unwrap();
            let t = Instant::now();
            let body = app.search(q["text"].as_str().unwrap(), mode, 10).await;
            latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            let run: Vec<(String, f64)> = body["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    (
                        h["metadata"]["source_id"].as_str().unwrap().to_string(),
                        h["score"].as_f64().unwrap(),
                    )
                })
                .collect();
            if let Some(rels) = qrels.get(qid) {
                total += ndcg_at_k(&run, rels, 10);
                scored += 1;
            }
        }
        latencies.sort_by(|a, b| a.total_cmp(b));
        let ndcg = total / scored as f64;
        println!(
            "nDCG@10 {mode:>7}: {ndcg:.4} over {scored} queries; latency p50 {:.1} ms, p95 {:.1} ms (uncached)",
            latencies[latencies.len() / 2],
            latencies[latencies.len() * 95 / 100]
        );
        figures.insert(mode, ndcg);
    }
    let (hybrid, dense, keyword) = (figures["hybrid"], figures["dense"], figures["keyword"]);
    assert!(
        hybrid >= HYBRID_FLOOR,
        "hybrid nDCG@10 {hybrid:.4} fell below {HYBRID_FLOOR}"
    );
    assert!(
        hybrid >= dense.min(keyword),
        "hybrid {hybrid:.4} is worse than both dense {dense:.4} and keyword {keyword:.4}"
    );

    // Repeated queries are served from the cache.
    let body = app
        .search(queries[0]["text"].as_str().unwrap(), "hybrid", 10)
        .await;
    assert_eq!(body["cached"], true);
}
