//! How memory, search latency and the ingest rate grow with the index: dbpedia-5k, then copies
//! of it up to 50k and 500k chunks.
//!
//! `cargo bench --bench scale` (or the built `target/debug/deps/scale-* --bench`) builds the
//! application on embedded defaults in a temporary data dir and loads dbpedia-5k through the bulk
//! path with the real model. Embedding 500k texts would take this machine hours, so the copies
//! are synthetic: each copy is the same corpus under new documents (source ids `ID#copy`), and
//! the embedder replays the first copy's vector for a text it has seen, nudged by deterministic
//! noise (cosine ≈ 0.999 to the original) so the index holds near-duplicates rather than exact
//! ones. Everything else (parsing, chunking, BM25, SQL, the vector index and its optimiser) runs
//! as in production; queries are embedded by the real model.
//!
//! At each size (`DOCRAG_SCALE_TARGETS`, default `50000,500000` chunks) it lets the index
//! optimise (segment merging and the HNSW graph, as the background loop does when ingestion is
//! idle), then runs every dataset query `rounds` times and prints one JSON line: chunks, the
//! stage's ingest rate (documents/s, bulk submit to indexed, model excluded for copies),
//! optimisation time, medians of the query embedding, the hybrid index query and the uncached
//! hybrid search, search p95, and the process's RSS and peak RSS. Under `cargo test` it runs a
//! smoke pass on 100 documents and one copy.

mod common;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use doc_rag::embedder::{EmbedError, Embedder, Priority};
use serde_json::json;

use common::percentile;

/// The real model for new texts and queries; a seen ingest text gets its first vector back,
/// perturbed per repeat.
struct Replay {
    model: Arc<dyn Embedder>,
    seen: Mutex<HashMap<String, (Vec<f32>, u64)>>,
    replayed: AtomicU64,
}

/// splitmix64: a deterministic stream of noise without another dependency.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `v` plus noise of total norm ~0.05, renormalised (cosine ~0.999 to `v`).
fn nudged(v: &[f32], seed: u64) -> Vec<f32> {
    let mut state = seed;
    let scale = 0.05 * (3.0f32 / v.len() as f32).sqrt();
    let mut out: Vec<f32> = v
        .iter()
        .map(|x| {
            let u = (next(&mut state) >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            x + (2.0 * u - 1.0) * scale
        })
        .collect();
    let norm = out.iter().map(|x| x * x).sum::<f32>().sqrt();
    out.iter_mut().for_each(|x| *x /= norm);
    out
}

#[async_trait]
impl Embedder for Replay {
    async fn embed(
        &self,
        texts: Vec<String>,
        priority: Priority,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        if priority == Priority::Query {
            return self.model.embed(texts, priority).await;
        }
        let unseen: Vec<String> = {
            let seen = self.seen.lock().expect("replay table");
            texts
                .iter()
                .filter(|t| !seen.contains_key(*t))
                .cloned()
                .collect()
        };
        if !unseen.is_empty() {
            let vectors = self.model.embed(unseen.clone(), priority).await?;
            let mut seen = self.seen.lock().expect("replay table");
            for (t, v) in unseen.into_iter().zip(vectors) {
                seen.insert(t, (v, 0));
            }
        }
        let mut seen = self.seen.lock().expect("replay table");
        Ok(texts
            .iter()
            .map(|t| {
                let (v, repeats) = seen.get_mut(t).expect("embedded above");
                *repeats += 1;
                if *repeats == 1 {
                    v.clone()
                } else {
                    self.replayed.fetch_add(1, Ordering::Relaxed);
                    let mut h = DefaultHasher::new();
                    (t, *repeats).hash(&mut h);
                    nudged(v, h.finish())
                }
            })
            .collect())
    }
    fn dimension(&self) -> usize {
        self.model.dimension()
    }
    fn max_texts(&self) -> usize {
        self.model.max_texts()
    }
    fn tokenizer(&self) -> tokenizers::Tokenizer {
        self.model.tokenizer()
    }
    async fn health(&self) -> Result<(), EmbedError> {
        self.model.health().await
    }
}

/// Milliseconds, two decimals.
fn ms(d: std::time::Duration) -> f64 {
    (common::ms(d) * 100.0).round() / 100.0
}

/// VmRSS and VmHWM of this process, MiB.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let corpus = common::corpus(if full { usize::MAX } else { 100 });
    let queries = common::queries();
    let targets: Vec<u64> = match std::env::var("DOCRAG_SCALE_TARGETS") {
        Ok(v) => v.split(',').filter_map(|t| t.trim().parse().ok()).collect(),
        Err(_) if full => vec![50_000, 500_000],
        Err(_) => vec![200],
    };
    let rounds = if full { 5 } else { 1 };

    let dir = tempfile::tempdir().expect("temp dir");
    let settings = common::settings(dir.path());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let model = doc_rag::embedder::load(&settings.embedder)
            .await
            .expect("model (make models)");
        let replay = Arc::new(Replay {
            model,
            seen: Mutex::new(HashMap::new()),
            replayed: AtomicU64::new(0),
        });
        let app = doc_rag::Application::build_with(settings.clone(), replay.clone())
            .await
            .expect("application");
        let state = app.state();
        let server = tokio::spawn(app.run_until_stopped());
        let (idle_rss, _) = rss();
        println!("{}", json!({"idle_rss_mib": idle_rss}));

        let mut copy = 0u64;
        let mut checkpoints = std::iter::once(corpus.len() as u64).chain(targets);
        let mut target = checkpoints.next();
        let mut stage = (Instant::now(), 0usize);
        while let Some(goal) = target {
            stage.1 += corpus.len();
            common::load(&state, common::uploads(&corpus, copy)).await;
            copy += 1;
            let chunks = state.storage.vectors.count().await.expect("count");
            if chunks < goal {
                continue;
            }
            let ingest_secs = stage.0.elapsed().as_secs_f64();
            let ingested = stage.1;

            let optimizing = Instant::now();
            state.storage.vectors.optimize().await.expect("optimize");
            let optimize_secs = optimizing.elapsed().as_secs_f64();

            let (mut embed, mut index, mut search) = (vec![], vec![], vec![]);
            for _ in 0..rounds {
                for text in &queries {
                    let times = common::time_query(&state, text).await;
                    embed.push(times.embed);
                    index.push(times.index);
                    search.push(times.search);
                }
            }
            let (rss_mib, peak_mib) = rss();
            println!(
                "{}",
                json!({
                    "chunks": chunks,
                    "documents_this_stage": ingested,
                    "stage_ingest_docs_per_s": (ingested as f64 / ingest_secs * 10.0).round() / 10.0,
                    "replayed_vectors_total": replay.replayed.load(Ordering::Relaxed),
                    "optimize_s": (optimize_secs * 10.0).round() / 10.0,
                    "queries": embed.len(),
                    "embed_p50_ms": ms(percentile(embed, 0.5)),
                    "index_p50_ms": ms(percentile(index.clone(), 0.5)),
                    "index_p95_ms": ms(percentile(index, 0.95)),
                    "search_p50_ms": ms(percentile(search.clone(), 0.5)),
                    "search_p95_ms": ms(percentile(search, 0.95)),
                    "rss_mib": rss_mib,
                    "peak_rss_mib": peak_mib,
                })
            );
            target = checkpoints.next();
            stage = (Instant::now(), 0);
        }
        server.abort();
    });
}
