//! The whole service on PostgreSQL (a fresh database of its own): ingestion, search and answers
//! work the same as on SQLite, and readiness reports the database when it goes away.

mod common;

use std::time::Duration;

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

/// PostgreSQL is not reachable when doc-rag starts (containers start in any order): it waits,
/// logging each attempt, and serves once the database appears, instead of exiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_for_a_database_that_is_not_up_yet() {
    let db = common::TestDatabase::create();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let late_url = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{port}"));
    assert_ne!(late_url, db.url, "the test database is on 127.0.0.1:5432");
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_path_buf();
    let database = format!("database.url={late_url}");
    let server = std::thread::spawn(move || {
        common::ServerProcess::start(
            &data_dir,
            &[&database, "database.checkout_timeout_ms=500"],
            &[],
        )
    });
    // Nothing listens on the port for a while: the server keeps waiting.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!server.is_finished(), "still starting, not exited");
    // The database "comes up": a proxy on the port forwards to the real server.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    let server = tokio::task::spawn_blocking(move || server.join().unwrap())
        .await
        .unwrap();
    let (status, body) = {
        let r = reqwest::get(format!("{}/ready", server.url("api")))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(status, 200, "{body}");
    let log = server.log.lock().unwrap().join("\n");
    assert!(
        log.contains("database not reachable yet; waiting for it"),
        "the wait is logged"
    );
    drop(server);
}
