//! The embedder's batching: the real model, fed through its channels.

mod common;

use std::time::Instant;

use doc_rag::config::Settings;
use doc_rag::embedder::{self, Priority};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_does_not_wait_behind_a_large_ingestion_batch() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::for_tests(dir.path(), &common::model_dir(), &[]).unwrap();
    let embedder = embedder::load(&settings.embedder).await.unwrap();
    let sentence =
        "The quick brown fox jumps over the lazy dog near the river bank in the morning light. ";
    let texts: Vec<String> = (0..160)
        .map(|i| format!("{i} {}", sentence.repeat(6)))
        .collect();

    let started = Instant::now();
    let bulk = {
        let embedder = embedder.clone();
        tokio::spawn(async move { embedder.embed(texts, Priority::Ingest).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let query = embedder
        .embed(vec!["where does the fox jump".into()], Priority::Query)
        .await
        .unwrap();
    let query_done = started.elapsed();
    assert_eq!(query[0].len(), 384);
    assert!(
        !bulk.is_finished(),
        "the query was answered while the bulk request was still being embedded"
    );
    let bulk = bulk.await.unwrap().unwrap();
    let bulk_done = started.elapsed();
    assert_eq!(bulk.len(), 160);
    assert!(bulk.iter().all(|v| v.len() == 384));
    println!("query answered after {query_done:?}; bulk of 160 texts after {bulk_done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_ingestion_requests_get_their_own_vectors_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::for_tests(dir.path(), &common::model_dir(), &[]).unwrap();
    let embedder = embedder::load(&settings.embedder).await.unwrap();
    let a = vec![
        "cats purr".to_string(),
        "a much longer sentence about the history of the Roman empire".to_string(),
    ];
    let b = vec!["dogs bark".to_string()];
    let (va, vb) = tokio::join!(
        embedder.embed(a.clone(), Priority::Ingest),
        embedder.embed(b.clone(), Priority::Ingest)
    );
    let (va, vb) = (va.unwrap(), vb.unwrap());
    // Each vector is the one its text gets alone, whatever batch it shared.
    for (text, v) in a.iter().zip(&va).chain(b.iter().zip(&vb)) {
        let alone = embedder
            .embed(vec![text.clone()], Priority::Query)
            .await
            .unwrap();
        let cos: f32 = alone[0].iter().zip(v).map(|(x, y)| x * y).sum();
        assert!(cos > 0.999, "{text}: cosine {cos}");
    }
    let cross: f32 = va[0].iter().zip(&vb[0]).map(|(x, y)| x * y).sum();
    assert!(cross < 0.9, "different texts differ: {cross}");
}
