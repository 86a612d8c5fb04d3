//! Replicas sharing PostgreSQL and Redis (the servers on this machine): the result cache and its
//! invalidations are shared, and losing Redis degrades the service instead of failing it.

mod common;

use std::time::Duration;

use common::{Backend, RedisServer, TestApp, redis_url};
use serde_json::{Value, json};

async fn search(app: &TestApp, query: &str) -> Value {
    let (status, body) = app
        .post_json(
            "/v1/search",
            &json!({"query": query, "collection": "shared", "mode": "keyword"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_cache_and_its_invalidations() {
    let prefix = format!("docrag-test-{}:", uuid::Uuid::new_v4().simple());
    let redis = redis_url();
    let shared = [
        ("cache.redis_url", redis.as_str()),
        ("cache.redis_prefix", prefix.as_str()),
    ];
    let a = TestApp::spawn_with(Backend::Postgres, &shared).await;
    let db_url = a.db.as_ref().unwrap().url.clone();
    let mut with_db = shared.to_vec();
    with_db.push(("database.url", db_url.as_str()));
    let b = TestApp::spawn_with(Backend::Sqlite, &with_db).await;

    a.ingest_text(
        "Lighthouses",
        "Lighthouses guide ships along the coast.",
        json!({"collection": "shared"}),
    )
    .await;
    let first = search(&a, "lighthouses coast").await;
    assert_eq!(first["cached"], false);
    assert_eq!(first["results"].as_array().unwrap().len(), 1);
    // The other replica is served the entry the first one stored.
    let from_b = search(&b, "lighthouses coast").await;
    assert_eq!(from_b["cached"], true, "{from_b}");
    assert_eq!(from_b["results"], first["results"]);

    // A change through the second replica invalidates the entry for the first.
    b.ingest_text(
        "Harbours",
        "Harbours shelter ships from storms.",
        json!({"collection": "shared"}),
    )
    .await;
    let again = search(&a, "lighthouses coast").await;
    assert_eq!(
        again["cached"], false,
        "invalidated through the other replica"
    );
    // Both replicas see every document (one PostgreSQL).
    let (_, list) = a.get_json(&a.api("/v1/documents?collection=shared")).await;
    assert_eq!(list["documents"].as_array().unwrap().len(), 2, "{list}");
    drop(b);
}

async fn ready(app: &TestApp) -> (u16, Value) {
    let r = app.anon.get(app.api("/ready")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Redis stops during a query load: no 5xx, readiness says `degraded` (and stays 200), queries
/// are computed without the cache; when Redis returns, the service is ready again untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_degrades_and_never_fails_a_request() {
    let (redis, port) = RedisServer::start_on_free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let app = TestApp::spawn_with(Backend::Sqlite, &[("cache.redis_url", url.as_str())]).await;
    app.ingest_text(
        "Lighthouses",
        "Lighthouses guide ships along the coast.",
        json!({"collection": "shared"}),
    )
    .await;
    assert_eq!(ready(&app).await.1["status"], "ready");
    search(&app, "lighthouses").await;
    assert_eq!(search(&app, "lighthouses").await["cached"], true);

    let load = {
        let client = app.client.clone();
        let url = app.api("/v1/search");
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..150 {
                let r = client
                    .post(&url)
                    .json(
                        &json!({"query": format!("lighthouses {}", i % 5), "collection": "shared"}),
                    )
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(redis);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = ready(&app).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("degraded")),
        "{body}"
    );
    assert_eq!(body["degraded"], json!(["cache"]));
    let statuses = load.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(search(&app, "lighthouses").await["cached"], false);

    let _redis = RedisServer::start(port);
    let mut back = Value::Null;
    for _ in 0..50 {
        back = ready(&app).await.1;
        if back["status"] == "ready" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(back["status"], "ready", "{back}");
    search(&app, "lighthouses").await;
    assert_eq!(
        search(&app, "lighthouses").await["cached"],
        true,
        "caching again"
    );
}
