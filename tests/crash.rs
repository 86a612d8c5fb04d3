//! Crash safety: the server process is killed (SIGKILL) while it ingests many documents, started
//! again on the same data dir, and every document it had accepted must end up indexed exactly once:
//! chunk counts agree across the document table, the chunk store and the vector index.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{ServerProcess, shared_dir};
use serde_json::{Value, json};

fn start(data_dir: &std::path::Path) -> ServerProcess {
    ServerProcess::start(data_dir, &[], &[])
}

async fn stats(client: &reqwest::Client, s: &ServerProcess) -> Value {
    client
        .get(format!("http://127.0.0.1:{}/v1/stats", s.ports["storage"]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_ingestion_every_accepted_document_is_indexed_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let corpus: Vec<Value> =
        std::fs::read_to_string(shared_dir().join("datasets/dbpedia-5k/corpus.jsonl"))
            .unwrap()
            .lines()
            .take(600)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let mut server = start(dir.path());
    // The signing keys live in the database: this token still works after the restart.
    let client = server.admin_client().await;
    let api = format!("http://127.0.0.1:{}", server.ports["api"]);
    let mut accepted = Vec::new();
    let mut killed_at = None;
    for (i, d) in corpus.iter().enumerate() {
        // Kill once some documents are indexed and many are still queued.
        if killed_at.is_none() && i >= 400 {
            // Let some finish first, so the kill lands between finished, running and queued jobs.
            let mut indexed = 0;
            for _ in 0..600 {
                indexed = stats(&client, &server).await["documents_indexed"]
                    .as_u64()
                    .unwrap();
                if indexed >= 20 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!(
                "killing with {indexed} of {} accepted documents indexed",
                accepted.len()
            );
            assert!(
                indexed < accepted.len() as u64,
                "ingestion should still be in progress"
            );
            server.child.kill().unwrap();
            server.child.wait().unwrap();
            killed_at = Some(i);
            break;
        }
        let body = json!({"title": d["title"], "text": d["text"], "external_id": d["_id"], "metadata": {"source_id": d["_id"]}});
        let r = client
            .post(format!("{api}/v1/documents"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let v: Value = r.json().await.unwrap();
        accepted.push(v["document_id"].as_str().unwrap().to_string());
    }
    assert!(killed_at.is_some());
    drop(server);

    let server = start(dir.path());
    let deadline = Instant::now() + Duration::from_secs(600);
    let s = loop {
        let s = stats(&client, &server).await;
        if s["jobs"]["queued"] == 0 && s["jobs"]["running"] == 0 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "jobs did not finish after restart: {s}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    println!("after restart: {s}");
    assert_eq!(
        s["documents"].as_u64().unwrap(),
        accepted.len() as u64,
        "{s}"
    );
    assert_eq!(s["documents_indexed"], s["documents"], "{s}");
    assert_eq!(s["jobs"]["failed"], 0, "{s}");
    assert_eq!(
        s["chunks"], s["indexed_chunks"],
        "chunk store agrees with the documents: {s}"
    );
    assert_eq!(
        s["vectors"], s["chunks"],
        "no duplicate or missing vectors: {s}"
    );
    let api = format!("http://127.0.0.1:{}", server.ports["api"]);
    for id in accepted.iter().step_by(37) {
        let doc: Value = client
            .get(format!("{api}/v1/documents/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["status"], "indexed", "{doc}");
        assert!(doc["chunk_count"].as_u64().unwrap() >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_every_server_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let client = server.admin_client().await;
    assert_eq!(stats(&client, &server).await["documents"], 0);
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "doc-rag did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "{status}");
    let refused = client
        .get(format!("http://127.0.0.1:{}/health", server.ports["api"]))
        .send()
        .await;
    assert!(refused.is_err(), "the API port is closed");
}

/// Several services starting at once on fresh data dirs (each creating its database, migrating,
/// opening its pool) log no error: a clean start is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_starts_log_no_errors() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let handles: Vec<_> = dirs
        .iter()
        .map(|d| {
            let path = d.path().to_path_buf();
            std::thread::spawn(move || ServerProcess::start(&path, &[], &[]))
        })
        .collect();
    let mut servers: Vec<ServerProcess> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // Past start-up: the pools have opened their connections.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for server in &mut servers {
        let client = server.admin_client().await;
        assert_eq!(stats(&client, server).await["documents"], 0);
        server.stop();
        let log = server.log.lock().unwrap().clone();
        let errors: Vec<&String> = log
            .iter()
            .filter(|l| l.contains("\"level\":\"ERROR\""))
            .collect();
        assert!(errors.is_empty(), "errors on a clean start: {errors:?}");
    }
}
