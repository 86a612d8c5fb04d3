//! Criterion benchmarks of the pieces every request and every ingested document goes through:
//! chunking, BM25 encoding, fusion of two rankings, and the embedding model by batch size and
//! length mix (dbpedia-5k texts).
//!
//! `cargo bench --bench components [-- FILTER]` measures with Criterion's statistics; under
//! `cargo test` (no `--bench`) Criterion runs each benchmark once, as a smoke test. The whole-path
//! ratios (ingest vs the model floor, search vs embed + index, auth per request) stay in the
//! `embedding`, `query` and `auth` benches, which report them directly.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use doc_rag::config::Settings;
use doc_rag::embedder::{Bm25Encoder, Embedder, FastEmbedder, Priority};
use doc_rag::ingest::chunk::Chunker;
use doc_rag::query::fusion::{self, FusionMethod};
use doc_rag::storage::vector::{ChunkPayload, VectorHit};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn settings() -> Settings {
    let models = std::env::var_os("DOCRAG__EMBEDDER__MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or(root().join("models"));
    // Batches exactly as the benchmark asks, not capped by `embedder.batch_tokens`.
    let raw = [("embedder.batch_tokens".to_string(), "1000000".to_string())];
    Settings::for_tests(&std::env::temp_dir(), &models, &raw).expect("settings")
}

/// Title and text of the first `n` dbpedia-5k documents, as ingestion indexes them.
fn dbpedia(n: usize) -> Vec<String> {
    let corpus = std::fs::read_to_string(root().join("../shared/datasets/dbpedia-5k/corpus.jsonl"))
        .expect("dataset");
    corpus
        .lines()
        .take(n)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            format!(
                "{}\n{}",
                v["title"].as_str().unwrap_or(""),
                v["text"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn chunking(c: &mut Criterion) {
    let embedder = FastEmbedder::load(&settings().embedder).expect("model files (make models)");
    let chunker = Chunker::new(embedder.tokenizer(), 200, 24).expect("chunker");
    let runbook =
        std::fs::read_to_string(root().join("../shared/seed/runbook.md")).expect("runbook");
    let plain = dbpedia(200).join("\n\n");
    let mut g = c.benchmark_group("chunking");
    for (name, text, markdown) in [
        ("runbook-markdown", &runbook, true),
        ("dbpedia-text", &plain, false),
    ] {
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| chunker.chunk(black_box(text), markdown))
        });
    }
    g.finish();
}

fn bm25(c: &mut Criterion) {
    let s = settings();
    let encoder = Bm25Encoder::new(&s.query).expect("bm25");
    let texts = dbpedia(200);
    let bytes: usize = texts.iter().map(String::len).sum();
    let mut g = c.benchmark_group("bm25");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("documents", |b| {
        b.iter(|| {
            for t in &texts {
                black_box(encoder.document(t));
            }
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("query", |b| {
        b.iter(|| {
            encoder.query(black_box(
                "Which harbour city has the most container cranes?",
            ))
        })
    });
    g.finish();
}

/// A ranking of `n` hits with falling scores; every other id is shared with the second list.
fn ranking(n: usize, offset: u128, scale: f32) -> Vec<VectorHit> {
    (0..n)
        .map(|i| VectorHit {
            chunk_id: uuid::Uuid::from_u128((i as u128) * 2 + offset),
            score: scale * (1.0 - i as f32 / n as f32),
            payload: ChunkPayload {
                document_id: uuid::Uuid::from_u128(i as u128),
                collection: "bench".into(),
                chunk_index: 0,
                version: 1,
                title: String::new(),
                metadata: Default::default(),
            },
        })
        .collect()
}

fn fusion(c: &mut Criterion) {
    let mut g = c.benchmark_group("fusion");
    for (name, method) in [
        ("rrf", FusionMethod::Rrf),
        ("dbsf", FusionMethod::Dbsf),
        ("convex", FusionMethod::Convex),
    ] {
        for depth in [50, 200] {
            let dense = ranking(depth, 0, 0.8);
            let keyword = ranking(depth, depth as u128, 14.0);
            g.bench_with_input(BenchmarkId::new(name, depth), &depth, |b, _| {
                b.iter_batched(
                    || (dense.clone(), keyword.clone()),
                    |(d, k)| fusion::fuse(d, k, method, [0.8, 0.2], 60, 10),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

/// Texts per second through the model: batches of 1, 8 and 32 texts, of short, long and mixed
/// texts; "mixed, grouped" lets the embedder order the texts by length before batching,
/// "mixed, arrival" embeds them in the order given (each batch padded to its longest). The
/// token cap on batches is lifted here, so the batch sizes are the ones named.
fn embedding(c: &mut Criterion) {
    let full = std::env::args().any(|a| a == "--bench");
    let embedder = FastEmbedder::load(&settings().embedder).expect("model files (make models)");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut texts = dbpedia(if full { 1000 } else { 64 });
    let mixed = texts.clone();
    texts.sort_by_key(String::len);
    let short: Vec<String> = texts[..texts.len() / 4].to_vec();
    let long: Vec<String> = texts[texts.len() * 3 / 4..].to_vec();
    let mut g = c.benchmark_group("embedding");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(if full { 20 } else { 1 }));
    let per_call = |set: &[String], batch: usize, priority: Priority| {
        for chunk in set.chunks(batch) {
            rt.block_on(embedder.embed(chunk.to_vec(), priority))
                .expect("embed");
        }
    };
    for batch in [1usize, 8, 32] {
        for (name, set) in [("short", &short), ("long", &long)] {
            let set = &set[..set.len().min(64)];
            g.throughput(Throughput::Elements(set.len() as u64));
            g.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
                b.iter(|| per_call(set, batch, Priority::Query))
            });
        }
    }
    let sample = &mixed[..mixed.len().min(128)];
    g.throughput(Throughput::Elements(sample.len() as u64));
    g.bench_function("mixed, arrival/32", |b| {
        b.iter(|| per_call(sample, 32, Priority::Query))
    });
    g.bench_function("mixed, grouped/32", |b| {
        b.iter(|| {
            rt.block_on(embedder.embed(sample.to_vec(), Priority::Ingest))
                .expect("embed")
        })
    });
    g.finish();
}

criterion_group!(benches, chunking, bm25, fusion, embedding);
criterion_main!(benches);
