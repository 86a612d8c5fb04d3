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

/// A TCP proxy in front of the test PostgreSQL that can cut every connection and refuse new ones
/// (the database "goes away") and come back.
struct FlakyProxy {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl FlakyProxy {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { port, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// PostgreSQL goes away in the middle of an ingestion: routes that need it answer 503, readiness
/// names it, and when it is back every accepted document is indexed exactly once without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_survives_the_database_going_away() {
    let db = common::TestDatabase::create();
    let proxy = FlakyProxy::start().await;
    let url = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("database.url", url.as_str()),
            ("database.checkout_timeout_ms", "1000"),
            ("ingest.lease_secs", "3"),
            ("ingest.retry_base_ms", "200"),
            ("ingest.retry_max_ms", "1000"),
            ("ingest.max_attempts", "20"),
        ],
    )
    .await;
    let mut jobs = Vec::new();
    for i in 0..12 {
        let text: String = (0..200)
            .map(|j| format!("Document {i} sentence {j} about outages and recovery. "))
            .collect();
        let (s, accepted) = app
            .post_json(
                "/v1/documents",
                &json!({"title": format!("doc {i}"), "text": text}),
            )
            .await;
        assert_eq!(s, 202, "{accepted}");
        jobs.push(accepted["job_id"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = app.stats().await;
    assert!(
        before["documents_indexed"].as_i64().unwrap() < 12,
        "the outage starts mid-ingestion: {before}"
    );
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = app.get_json(&app.url("storage", "/ready")).await;
    assert_eq!(
        (status, body["failing"].clone()),
        (503, json!(["database"])),
        "{body}"
    );
    let (status, body) = app.get_json(&app.api("/v1/documents")).await;
    assert_eq!(status, 503, "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();

    for job in &jobs {
        let job = app.wait_job(job).await;
        assert_eq!(job["status"], "done", "{job}");
    }
    let stats = app.stats().await;
    assert_eq!(stats["documents_indexed"], 12, "{stats}");
    assert_eq!(stats["chunks"], stats["vectors"], "exactly once: {stats}");
    let report = app.verify(false).await;
    assert_eq!(report["ok"], true, "{report:#}");
    drop(app);
    drop(db);
}
