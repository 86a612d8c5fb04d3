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

/// The query queue is bounded: a burst larger than it is refused at once with `Busy` (503 +
/// Retry-After at the edge) rather than queued without limit; what was admitted is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_query_queue_refuses_instead_of_growing() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::for_tests(
        dir.path(),
        &common::model_dir(),
        &[("embedder.query_queue".into(), "2".into())],
    )
    .unwrap();
    let embedder = embedder::load(&settings.embedder).await.unwrap();
    assert!(embedder.health().await.is_ok());
    let burst = (0..64).map(|i| {
        let embedder = embedder.clone();
        tokio::spawn(async move {
            embedder
                .embed(vec![format!("query {i}")], Priority::Query)
                .await
        })
    });
    let results = futures::future::join_all(burst).await;
    let busy = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(embedder::EmbedError::Busy))))
        .count();
    let answered = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    assert_eq!(busy + answered, 64, "only Busy or an answer");
    assert!(busy > 0, "a burst of 64 overflows a queue of 2");
    assert!(answered > 0);
}

/// Queries go first, but a flood of them never starves ingestion: after `query_burst` query
/// rounds one ingestion batch runs, so the bulk request completes while the flood goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_flood_does_not_starve_ingestion() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::for_tests(dir.path(), &common::model_dir(), &[]).unwrap();
    let embedder = embedder::load(&settings.embedder).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..8)
        .map(|i| {
            let embedder = embedder.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut served = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if embedder
                        .embed(vec![format!("flood query {i} {served}")], Priority::Query)
                        .await
                        .is_ok()
                    {
                        served += 1;
                    }
                }
                served
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let texts: Vec<String> = (0..256).map(|i| format!("bulk text number {i}")).collect();
    let bulk = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        embedder.embed(texts, Priority::Ingest),
    )
    .await;
    let flood_running = flood.iter().all(|t| !t.is_finished());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served: u64 = futures::future::join_all(flood)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    assert_eq!(
        bulk.expect("ingestion progressed during the flood")
            .unwrap()
            .len(),
        256
    );
    assert!(
        flood_running,
        "the flood was still going when the bulk finished"
    );
    assert!(served > 0);
    println!("{served} flood queries served while 256 texts were embedded");
}

/// Readiness asks the model thread nothing: `health` answers while a bulk request is still being
/// embedded (it used to queue a probe inference behind it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_does_not_wait_for_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::for_tests(dir.path(), &common::model_dir(), &[]).unwrap();
    let embedder = embedder::load(&settings.embedder).await.unwrap();
    let texts: Vec<String> = (0..400)
        .map(|i| format!("{i} a fairly long sentence to embed in bulk. ").repeat(8))
        .collect();
    let bulk = {
        let embedder = embedder.clone();
        tokio::spawn(async move { embedder.embed(texts, Priority::Ingest).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    for _ in 0..20 {
        embedder.health().await.unwrap();
    }
    assert!(
        !bulk.is_finished(),
        "health answered while the bulk request was running"
    );
    assert_eq!(bulk.await.unwrap().unwrap().len(), 400);
}
