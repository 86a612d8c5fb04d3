//! `doc-rag eval` and `doc-rag ingest` against the real application: the eval command ingests a
//! tiny BEIR dataset (tests/fixtures/beir-tiny) through the bulk API and scores every mode; the
//! `--json` report of the binary parses; `ingest` sends a folder in several bulk batches.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{TestApp, eval_args};
use doc_rag::cli::eval;
use serde_json::Value;

fn fixture() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/beir-tiny"
    ))
}

/// Runs the real binary; returns (success, stdout, stderr).
fn doc_rag(args: &[&str]) -> (bool, String, String) {
    let config = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_doc-rag"))
        .args(args)
        .env("DOCRAG_CONFIG_DIR", config.path())
        .env_remove("DOCRAG_TOKEN")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_ingests_the_corpus_in_bulk_and_scores_every_mode() {
    let app = TestApp::spawn().await;
    let url = app.api("");
    let dataset = fixture();
    let dataset = dataset.to_str().unwrap();

    let report = eval::run(eval_args(&[
        "--url",
        &url,
        "--token",
        &app.admin_key,
        "--dataset",
        dataset,
        "--mode",
        "all",
    ]))
    .await
    .unwrap();

    // Every document went in through the bulk endpoint and was indexed.
    let ingest = report.ingest.as_ref().expect("the run ingested");
    assert_eq!(
        (
            ingest.documents,
            ingest.accepted,
            ingest.rejected,
            ingest.failed
        ),
        (14, 14, 0, 0),
        "{ingest:?}"
    );
    assert!(
        ingest.seconds > 0.0 && ingest.docs_per_s > 0.0,
        "{ingest:?}"
    );
    assert!(report.collection.starts_with("eval-beir-tiny-"));
    let (status, docs) = app
        .get_json(&app.api(&format!(
            "/v1/documents?collection={}&limit=100",
            report.collection
        )))
        .await;
    assert_eq!(status, 200, "{docs}");
    let docs = docs["documents"].as_array().unwrap();
    assert_eq!(docs.len(), 14);
    for doc in docs {
        assert_eq!(doc["status"], "indexed", "{doc}");
        assert_eq!(doc["metadata"]["source_id"], doc["external_id"], "{doc}");
    }
    let untitled = docs
        .iter()
        .find(|d| d["external_id"] == "canary-islands")
        .unwrap();
    assert!(untitled["chunk_count"].as_i64().unwrap() > 0, "{untitled}");

    // The dataset's corners: q-chess has no judgements, q-tides only grade 0, q-teide names a
    // document the corpus lacks.
    assert_eq!(
        (report.documents, report.queries_total, report.queries),
        (14, 7, 6)
    );
    assert_eq!(report.queries_without_relevant, 1);
    assert_eq!(
        (report.relevant_judgements, report.relevant_not_in_corpus),
        (10, 1)
    );
    assert_eq!((report.k, report.search_top_k), (10, 100));

    assert_eq!(
        report.modes.keys().collect::<Vec<_>>(),
        ["dense", "hybrid", "keyword"]
    );
    for (mode, m) in &report.modes {
        for name in ["ndcg@10", "recall@10", "recall@100", "mrr@10"] {
            let v = m.metrics[name];
            assert!((0.0..=1.0).contains(&v), "{mode} {name} = {v}");
        }
        assert_eq!(m.per_query.len(), 6);
        let query = |id: &str| m.per_query.iter().find(|q| q.id == id).unwrap();
        // One unmistakable answer, ranked first whatever the mode.
        let lighthouse = query("q-lighthouse");
        assert_eq!(lighthouse.top[0], "lighthouse-keeper", "{mode}");
        assert_eq!(lighthouse.metrics["mrr@10"], 1.0, "{mode}");
        assert_eq!(lighthouse.metrics["ndcg@10"], 1.0, "{mode}");
        // No relevant document: zero on every metric, and still in the mean.
        assert!(
            query("q-tides").metrics.values().all(|v| *v == 0.0),
            "{mode}"
        );
        // The missing relevant document caps recall at 2/3.
        assert!(query("q-teide").metrics["recall@100"] <= 2.0 / 3.0 + 1e-9);
        // Each corpus document appears once in a ranking, however many chunks it has.
        for q in &m.per_query {
            let mut seen = std::collections::HashSet::new();
            assert!(q.top.iter().all(|id| seen.insert(id)), "{mode} {q:?}");
            assert!(q.latency_ms > 0.0);
        }
        let mean_mrr = m.per_query.iter().map(|q| q.metrics["mrr@10"]).sum::<f64>() / 6.0;
        assert!((m.metrics["mrr@10"] - mean_mrr).abs() < 1e-12);
        assert!(m.latency_ms.p50 > 0.0 && m.latency_ms.p50 <= m.latency_ms.p99);
        assert_eq!(m.empty_results, 0);
        // Easy queries on a tiny corpus: five of the six have their best document on top.
        assert!(m.metrics["mrr@10"] >= 0.7, "{mode}: {:?}", m.metrics);
    }

    // The binary, on the same collection without ingesting again: one JSON object.
    let (ok, stdout, stderr) = doc_rag(&[
        "eval",
        "--url",
        &url,
        "--token",
        &app.admin_key,
        "--dataset",
        dataset,
        "--reuse",
        "--collection",
        &report.collection,
        "--mode",
        "keyword",
        "--top-k",
        "5",
        "--json",
    ]);
    assert!(ok, "{stdout}{stderr}");
    let json: Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(json["collection"], report.collection.as_str());
    assert_eq!(json["dataset"], "beir-tiny");
    assert!(json.get("ingest").is_none(), "{json}");
    let keyword = &json["modes"]["keyword"];
    assert_eq!(keyword["metrics"].as_object().unwrap().len(), 4);
    let ndcg5 = keyword["metrics"]["ndcg@5"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ndcg5));
    assert!(keyword["latency_ms"]["p95"].as_f64().unwrap() > 0.0);

    // The table names the collection, and --reuse of a collection that is not there fails.
    let (ok, stdout, stderr) = doc_rag(&[
        "eval",
        "--url",
        &url,
        "--token",
        &app.admin_key,
        "--dataset",
        dataset,
        "--reuse",
        "--collection",
        &report.collection,
        "--max-queries",
        "2",
    ]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains(&report.collection), "{stdout}");
    assert!(stdout.contains("2 queries evaluated"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("hybrid ")), "{stdout}");
    let (ok, _, stderr) = doc_rag(&[
        "eval",
        "--url",
        &url,
        "--token",
        &app.admin_key,
        "--dataset",
        dataset,
        "--reuse",
        "--collection",
        "no-such-collection",
    ]);
    assert!(!ok);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_sends_files_in_bulk_batches_and_reports_each_file() {
    let app = TestApp::spawn().await;
    let url = app.api("");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "lanterns.md",
        "# Lanterns\nThe paper lanterns are in the north shed.\n",
    );
    write(
        "boats.txt",
        "The rowing boats are moored at the east jetty.",
    );
    write(
        "ropes.html",
        "<html><body><p>Spare ropes hang in the boathouse.</p></body></html>",
    );
    let path = dir.path().to_str().unwrap();

    // Two files per request: two batches.
    let (ok, stdout, stderr) = doc_rag(&[
        "ingest",
        "--url",
        &url,
        "--token",
        &app.admin_key,
        "--collection",
        "harbour",
        "--batch-size",
        "2",
        path,
    ]);
    assert!(ok, "{stdout}{stderr}");
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains(path)).collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    assert!(rows.iter().all(|r| r.ends_with("  done")), "{stdout}");
    let batches: Vec<&str> = stdout.lines().filter(|l| l.starts_with("batch ")).collect();
    assert_eq!(batches.len(), 2, "{stdout}");
    assert!(
        batches[0].contains("2 accepted, 2 done, 0 failed"),
        "{stdout}"
    );

    let search = app
        .search("where are the paper lanterns", "keyword", 3)
        .await;
    assert_eq!(search["results"][0]["title"], "lanterns.md", "{search}");
    assert_eq!(search["results"][0]["collection"], "harbour");

    // Again: the same files replace themselves (external_id = canonical path), and an explicitly
    // named unsupported file is reported on its own row with a non-zero exit.
    write("notes.docx", "not a document type doc-rag takes");
    let docx = dir.path().join("notes.docx");
    let (ok, stdout, stderr) = doc_rag(&[
        "ingest",
        "--url",
        &url,
        "--token",
        &app.admin_key,
        "--collection",
        "harbour",
        path,
        docx.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("1 of 4 file(s) did not ingest"), "{stderr}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("notes.docx") && l.contains("error: unsupported file type")),
        "{stdout}"
    );
    let (_, docs) = app
        .get_json(&app.api("/v1/documents?collection=harbour"))
        .await;
    assert_eq!(docs["documents"].as_array().unwrap().len(), 3, "{docs}");
}
