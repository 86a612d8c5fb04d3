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

mod common;

use std::time::Instant;

use doc_rag::response::AnswerParams;
use serde_json::json;

use common::{ms, percentile};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let corpus = common::corpus(if full { usize::MAX } else { 200 });
    let queries = common::queries();
    let rounds = if full { 5 } else { 1 };

    let dir = tempfile::tempdir().expect("temp dir");
    let settings = common::settings(dir.path());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let app = doc_rag::Application::build(settings.clone())
            .await
            .expect("application (make models)");
        let state = app.state();
        let server = tokio::spawn(app.run_until_stopped());

        let n = corpus.len();
        let started = Instant::now();
        common::load(&state, common::uploads(&corpus, 0)).await;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "loaded {n} documents in {secs:.1} s: {:.1} docs/s (bulk submit -> indexed)",
            n as f64 / secs
        );

        let (mut embed, mut index, mut search, mut answer) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            for text in &queries {
                let times = common::time_query(&state, text).await;
                embed.push(times.embed);
                index.push(times.index);
                search.push(times.search);

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
        let median = |v| percentile(v, 0.5);
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
