//! Embedding and chunking throughput on the dbpedia-5k corpus.
//!
//! `cargo bench --bench embedding` measures documents/s for the ingestion path (texts grouped by
//! token length) against the same texts in arrival order (padding to each batch's longest text),
//! and chunking throughput. Under `cargo test` it runs a seconds-long smoke pass.
//! `DOCRAG__EMBEDDER__MODEL_FILE` picks the graph in the model directory (default `model.onnx`).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use doc_rag::config::Settings;
use doc_rag::embedder::{Embedder, FastEmbedder, Priority};
use doc_rag::ingest::chunk::Chunker;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let models = common::model_dir();
    // The graph to time: `DOCRAG__EMBEDDER__MODEL_FILE=model-fp32.onnx` for the fp32 one.
    let extra: Vec<(String, String)> = std::env::var("DOCRAG__EMBEDDER__MODEL_FILE")
        .map(|f| vec![("embedder.model_file".to_string(), f)])
        .unwrap_or_default();
    let settings = Settings::for_tests(&std::env::temp_dir(), &models, &extra).expect("settings");
    let corpus = std::fs::read_to_string(root.join("../shared/datasets/dbpedia-5k/corpus.jsonl"))
        .expect("dataset");
    let n = if full { 2000 } else { 64 };
    let texts: Vec<String> = corpus
        .lines()
        .take(n)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!(
                "{}\n{}",
                v["title"].as_str().unwrap_or(""),
                v["text"].as_str().unwrap_or("")
            )
        })
        .collect();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let embedder = FastEmbedder::load(&settings.embedder).expect("model files (make models)");
    rt.block_on(async {
        embedder.embed(texts[..8].to_vec(), Priority::Query).await.unwrap();
        let t = Instant::now();
        embedder.embed(texts.clone(), Priority::Ingest).await.unwrap();
        let grouped = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for batch in texts.chunks(settings.embedder.batch_size) {
            embedder.embed(batch.to_vec(), Priority::Query).await.unwrap();
        }
        let arrival = t.elapsed().as_secs_f64();
        println!(
            "embedding {n} texts with {}: grouped by length {:.1} texts/s, arrival order {:.1} texts/s ({:.2}x)",
            settings.embedder.model_file,
            n as f64 / grouped,
            n as f64 / arrival,
            arrival / grouped
        );
    });

    let chunker = Chunker::new(embedder.tokenizer(), 200, 24).unwrap();
    let runbook = std::fs::read_to_string(root.join("../shared/seed/runbook.md")).unwrap();
    let reps = if full { 50 } else { 2 };
    let t = Instant::now();
    let mut chunks = 0;
    for _ in 0..reps {
        chunks += chunker.chunk(&runbook, true).len();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "chunking the runbook ({} bytes): {:.1} MB/s, {} chunks per pass",
        runbook.len(),
        (runbook.len() * reps) as f64 / secs / 1e6,
        chunks / reps
    );
}
