//! The whole service on PostgreSQL (a fresh database of its own): ingestion, search and answers
//! work the same as on SQLite, and readiness reports the database when it goes away.

mod common;

use common::{Backend, TestApp, runbook};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_on_postgres_answers_and_reports_a_lost_database() {
    let app = TestApp::spawn_with(Backend::Postgres, &[]).await;
    let (_, stats) = app.get_json(&app.url("storage", "/v1/stats")).await;
    assert_eq!(stats["backends"]["metadata"], "postgres");

    app.ingest_text(
        "Operations Runbook",
        &runbook(),
        json!({"content_type": "text/markdown"}),
    )
    .await;
    let (status, answer) = app
        .post_json(
            "/v1/query",
            &json!({"query": "How do I check Redis memory usage?"}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        answer["answer"].as_str().unwrap().contains("info memory"),
        "{answer}"
    );
    let stats = app.stats().await;
    assert_eq!(stats["documents_indexed"], 1);
    assert_eq!(stats["vectors"], stats["chunks"]);

    // The database disappears: readiness names it, liveness stays up.
    app.db.as_ref().unwrap().drop_now();
    for module in ["api", "storage", "security"] {
        let (status, body) = app.get_json(&app.url(module, "/ready")).await;
        assert_eq!(status, 503, "{module}: {body}");
        assert_eq!(body["failing"], json!(["database"]), "{module}: {body}");
        // Anonymous readiness names the failing dependency and nothing more; the cause is logged.
        let mut keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["failing", "status"], "{module}: {body}");
        let (status, _) = app.get_json(&app.url(module, "/health")).await;
        assert_eq!(status, 200);
    }
    let (status, body) = app.get_json(&app.api("/v1/documents")).await;
    assert!(status == 503 || status == 500, "{status} {body}");
    assert!(
        body["code"] == "unavailable" || body["code"] == "internal",
        "{body}"
    );
    assert!(
        !body["message"].as_str().unwrap().contains("docrag_test"),
        "internals stay in the log: {body}"
    );
}
