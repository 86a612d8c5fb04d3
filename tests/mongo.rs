//! The MongoDB document store against a real MongoDB-wire server (SecantusDB, started per test):
//! the store's protocol (staged chunks unserved until published, uploads in parts, orphans found),
//! the whole service with its documents in MongoDB on SQLite and on PostgreSQL, MongoDB killed in
//! the middle of an ingestion, and two replicas sharing PostgreSQL, Redis and MongoDB.

mod common;

use std::time::Duration;

use common::{Backend, MongoServer, TestApp, free_port, mongo_settings, redis_url};
use doc_rag::config::Settings;
use doc_rag::storage::mongo::MongoDocumentStore;
use doc_rag::storage::{Document, DocumentStatus, DocumentStore, StoredChunk, chunk_id};
use serde_json::{Value, json};
use uuid::Uuid;

async fn store(server: &MongoServer) -> MongoDocumentStore {
    let pairs = mongo_settings(&server.url());
    let settings = Settings::defaults_with(&pairs).unwrap();
    MongoDocumentStore::connect(&settings.documents, Duration::from_secs(10))
        .await
        .unwrap()
}

fn chunks(doc: Uuid, version: i64, n: u32, tag: &str) -> Vec<StoredChunk> {
    (0..n)
        .map(|i| StoredChunk {
            id: chunk_id(doc, version, i),
            document_id: doc,
            chunk_index: i as i32,
            text: format!("{tag} chunk {i}"),
            token_count: 3,
            offset: Some(u64::from(i) * 10),
        })
        .collect()
}

fn document(content_ref: Option<Uuid>) -> Document {
    Document {
        id: Uuid::new_v4(),
        collection: "c".into(),
        external_id: None,
        title: "t".into(),
        content_type: "text/plain".into(),
        metadata: Default::default(),
        status: DocumentStatus::Queued,
        version: 1,
        chunk_count: 0,
        size_bytes: 0,
        sha256: String::new(),
        error: None,
        created_at: chrono::Utc::now(),
        updated_at: chrono::Utc::now(),
        content_ref,
    }
}

async fn served(store: &MongoDocumentStore, ids: Vec<Uuid>) -> Vec<String> {
    let mut texts: Vec<String> = store
        .get_chunks(ids)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.text)
        .collect();
    texts.sort();
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_store_protocol() {
    let server = MongoServer::start(free_port(), None);
    let store = store(&server).await;
    assert!(!store.inline());
    store.health().await.unwrap();

    // An upload larger than a BSON document is stored in parts and read back whole.
    let content_ref = Uuid::new_v4();
    let big: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
    store.put_original(content_ref, big.clone()).await.unwrap();
    let doc = document(Some(content_ref));
    assert_eq!(store.get_original(&doc).await.unwrap().unwrap(), big);
    assert!(
        store
            .get_original(&document(Some(Uuid::new_v4())))
            .await
            .unwrap()
            .is_none()
    );
    let refs = store.original_refs().await.unwrap();
    assert_eq!(refs.iter().map(|r| r.0).collect::<Vec<_>>(), [content_ref]);

    // Staged chunks are not served until published.
    let d = doc.id;
    let v1 = chunks(d, 1, 3, "v1");
    let v1_ids: Vec<Uuid> = v1.iter().map(|c| c.id).collect();
    store
        .stage(d, 1, "text one".into(), v1.clone())
        .await
        .unwrap();
    assert!(served(&store, v1_ids.clone()).await.is_empty());
    assert!(store.chunk_counts().await.unwrap().is_empty());
    // Staging again (a retried attempt) replaces the staged set instead of failing on its ids.
    store.stage(d, 1, "text one".into(), v1).await.unwrap();
    store.publish(d, 1).await.unwrap();
    assert_eq!(
        served(&store, v1_ids.clone()).await,
        ["v1 chunk 0", "v1 chunk 1", "v1 chunk 2"]
    );
    let got = store.get_chunks(vec![v1_ids[1]]).await.unwrap();
    assert_eq!(
        (got[0].document_id, got[0].chunk_index, got[0].offset),
        (d, 1, Some(10))
    );
    assert_eq!(store.chunk_counts().await.unwrap()[&d], 3);

    // Re-staging the live version (a repair re-index) keeps it served throughout.
    store
        .stage(d, 1, "text one".into(), chunks(d, 1, 3, "v1"))
        .await
        .unwrap();
    assert_eq!(served(&store, v1_ids.clone()).await.len(), 3);

    // Version 2: staged beside the live version 1, which stays served until 2 is published.
    let v2 = chunks(d, 2, 2, "v2");
    let v2_ids: Vec<Uuid> = v2.iter().map(|c| c.id).collect();
    store.stage(d, 2, "text two".into(), v2).await.unwrap();
    assert_eq!(served(&store, v1_ids.clone()).await.len(), 3);
    assert!(served(&store, v2_ids.clone()).await.is_empty());
    store.publish(d, 2).await.unwrap();
    assert!(
        served(&store, v1_ids.clone()).await.is_empty(),
        "other versions go"
    );
    assert_eq!(
        served(&store, v2_ids.clone()).await,
        ["v2 chunk 0", "v2 chunk 1"]
    );

    // A loser's version is discarded; a failed document loses every version.
    store
        .stage(d, 3, "text three".into(), chunks(d, 3, 4, "v3"))
        .await
        .unwrap();
    store.discard(d, Some(3)).await.unwrap();
    store.publish(d, 2).await.unwrap();
    assert_eq!(store.chunk_counts().await.unwrap()[&d], 2);
    store.discard(d, None).await.unwrap();
    assert!(store.chunk_counts().await.unwrap().is_empty());

    // Deleting a document removes its chunks and its upload.
    store
        .stage(d, 4, "text four".into(), chunks(d, 4, 2, "v4"))
        .await
        .unwrap();
    store.publish(d, 4).await.unwrap();
    assert_eq!(
        store.delete_document(d, Some(content_ref)).await.unwrap(),
        2
    );
    assert!(store.get_original(&doc).await.unwrap().is_none());
    assert!(store.original_refs().await.unwrap().is_empty());
    assert!(store.chunk_counts().await.unwrap().is_empty());
}

/// MongoDB down: a call fails fast with `Unavailable` naming MongoDB, and works again once the
/// server is back, without reconnecting by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_outage_is_reported_as_unavailable_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = MongoServer::start(port, Some(dir.path()));
    let store = store(&server).await;
    server.kill();
    let started = std::time::Instant::now();
    let err = store.health().await.unwrap_err();
    assert!(
        matches!(
            err,
            doc_rag::storage::StorageError::Unavailable {
                dependency: doc_rag::storage::Dependency::MongoDb,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "bounded by the timeout and retries"
    );
    let _server = MongoServer::start(port, Some(dir.path()));
    let mut healthy = false;
    for _ in 0..60 {
        if store.health().await.is_ok() {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(healthy, "the store recovers when MongoDB is back");
}

fn pairs(extra: &[(String, String)]) -> Vec<(&str, &str)> {
    extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// The whole service with its documents in MongoDB: ingest, search, replace and delete behave as
/// on the embedded store, the database holds no chunk text, and `verify` sees both stores agree.
async fn service_suite(backend: Backend) {
    let server = MongoServer::start(free_port(), None);
    let settings = mongo_settings(&server.url());
    let app = TestApp::spawn_with(backend, &pairs(&settings)).await;
    assert!(!app.state.storage.documents.inline());

    let a = app
        .ingest_text(
            "Lighthouses",
            "Lighthouses guide ships along rocky coasts at night.",
            json!({"external_id": "lh", "collection": "m"}),
        )
        .await;
    app.ingest_text(
        "Volcanoes",
        "Volcanoes erupt molten rock called lava.",
        json!({"collection": "m"}),
    )
    .await;
    let doc_id: Uuid = a["document_id"].as_str().unwrap().parse().unwrap();
    let hits = app.search("lighthouses rocky coasts", "hybrid", 3).await;
    assert_eq!(hits["results"][0]["title"], "Lighthouses", "{hits}");
    assert!(
        hits["results"][0]["text"]
            .as_str()
            .unwrap()
            .contains("rocky coasts")
    );

    // The text lives in MongoDB, not in the database.
    let counts = app.state.storage.documents.chunk_counts().await.unwrap();
    assert_eq!(counts.len(), 2);
    let inventory = app.state.storage.metadata.inventory().await.unwrap();
    assert!(inventory.documents.iter().all(|d| d.stored_chunks == 0));
    assert!(inventory.documents.iter().all(|d| d.content_ref.is_some()));

    // Replacing the document serves the new text only, and drops the old upload.
    let before = inventory
        .documents
        .iter()
        .find(|d| d.id == doc_id)
        .unwrap()
        .content_ref;
    app.ingest_text(
        "Lighthouses",
        "Lighthouses now use LED lamps powered by solar panels.",
        json!({"external_id": "lh", "collection": "m"}),
    )
    .await;
    let hits = app.search("solar panels LED", "hybrid", 3).await;
    assert!(
        hits["results"][0]["text"]
            .as_str()
            .unwrap()
            .contains("solar"),
        "{hits}"
    );
    let old = app.search("rocky coasts at night", "keyword", 3).await;
    assert!(
        old["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| !h["text"].as_str().unwrap().contains("rocky")),
        "{old}"
    );
    let refs: Vec<Uuid> = app
        .state
        .storage
        .documents
        .original_refs()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(refs.len(), 2, "one upload per live document");
    assert!(
        !refs.contains(&before.unwrap()),
        "the replaced upload is gone"
    );

    let report = app.verify(false).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["checked"]["chunks"], 2, "{report}");

    // Delete: gone from MongoDB, and verify still agrees.
    let r = app
        .client
        .delete(app.api(&format!("/v1/documents/{doc_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let removed: Value = r.json().await.unwrap();
    assert_eq!(removed["removed"]["chunks"], 1, "{removed}");
    let counts = app.state.storage.documents.chunk_counts().await.unwrap();
    assert!(!counts.contains_key(&doc_id));
    assert_eq!(
        app.state
            .storage
            .documents
            .original_refs()
            .await
            .unwrap()
            .len(),
        1
    );
    let report = app.verify(false).await;
    assert_eq!(report["ok"], true, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_with_mongodb_documents() {
    service_suite(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_mongodb_documents() {
    service_suite(Backend::Postgres).await;
}

/// `verify` finds what a crash between the stores leaves: chunks of a document the database does
/// not know, and an upload no document refers to; `--repair` removes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_and_repairs_mongodb_orphans() {
    let server = MongoServer::start(free_port(), None);
    let settings = mongo_settings(&server.url());
    let app = TestApp::spawn_with(Backend::Sqlite, &pairs(&settings)).await;
    app.ingest_text("Kept", "A document that stays.", json!({}))
        .await;
    let docs = &app.state.storage.documents;
    let ghost = Uuid::new_v4();
    docs.stage(ghost, 1, "ghost".into(), chunks(ghost, 1, 2, "ghost"))
        .await
        .unwrap();
    docs.publish(ghost, 1).await.unwrap();
    // An upload whose submit never committed; verify waits ten minutes before calling it
    // unreferenced, so backdate it.
    let stray = Uuid::new_v4();
    docs.put_original(stray, b"stray".to_vec()).await.unwrap();
    backdate_original(&settings, stray).await;

    let report = app.verify(false).await;
    let kinds: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["orphan_chunks", "orphan_original"], "{report}");
    let repaired = app.verify(true).await;
    assert_eq!(
        repaired["repaired"].as_array().unwrap().len(),
        2,
        "{repaired}"
    );
    let report = app.verify(false).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(docs.chunk_counts().await.unwrap().len(), 1);
}

async fn backdate_original(settings: &[(String, String)], content_ref: Uuid) {
    let url = &settings[0].1;
    let db = &settings[1].1;
    let client = mongodb::Client::with_uri_str(url).await.unwrap();
    let hour_ago =
        mongodb::bson::DateTime::from_millis(chrono::Utc::now().timestamp_millis() - 3_600_000);
    client
        .database(db)
        .collection::<mongodb::bson::Document>("originals")
        .update_many(
            mongodb::bson::doc! { "ref": content_ref.to_string() },
            mongodb::bson::doc! { "$set": { "created_at": hour_ago } },
        )
        .await
        .unwrap();
}

async fn post_doc(app: &TestApp, i: usize) -> (u16, Value) {
    app.post_json(
        "/v1/documents",
        &json!({
            "title": format!("Report {i}"),
            "text": format!("Quarterly report number {i} about harbour logistics and cranes."),
            "collection": "fault",
        }),
    )
    .await
}

/// MongoDB is killed while documents are being ingested: reads and uploads answer 503
/// `mongodb_unavailable` with `Retry-After`, readiness names the document store, jobs wait
/// (their attempts are not used up), and once MongoDB is back every accepted document is indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_killed_mid_ingest_jobs_wait_and_finish() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = MongoServer::start(port, Some(dir.path()));
    let settings = mongo_settings(&server.url());
    let mut extra = pairs(&settings);
    // Quick retries, and fewer attempts than the outage lasts, to show outages do not use them.
    extra.extend([
        ("ingest.retry_base_ms", "100"),
        ("ingest.retry_max_ms", "500"),
        ("ingest.max_attempts", "2"),
    ]);
    let app = TestApp::spawn_with(Backend::Sqlite, &extra).await;
    app.ingest_text(
        "Before",
        "Written before the outage.",
        json!({"collection": "fault"}),
    )
    .await;

    let mut jobs = Vec::new();
    for i in 0..12 {
        let (status, body) = post_doc(&app, i).await;
        assert_eq!(status, 202, "{body}");
        jobs.push(body["job_id"].as_str().unwrap().to_string());
    }
    server.kill();

    // Reads that need chunk text and new uploads answer 503 naming MongoDB.
    let r = app
        .client
        .post(app.api("/v1/search"))
        .json(&json!({"query": "written before the outage", "collection": "fault"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "mongodb_unavailable", "{body}");
    let (status, body) = post_doc(&app, 99).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("mongodb_unavailable")),
        "{body}"
    );
    let r = app.anon.get(app.api("/ready")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let ready: Value = r.json().await.unwrap();
    assert!(ready.to_string().contains("document_store"), "{ready}");

    // Long enough for several retries, more than max_attempts.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let _server = MongoServer::start(port, Some(dir.path()));
    for job in &jobs {
        let done = app.wait_job(job).await;
        assert_eq!(done["status"], "done", "accepted before the outage: {done}");
    }
    // `done` means searchable: a job whose text could not be published while MongoDB was away
    // was postponed, not finished.
    let stats = app.stats().await;
    assert_eq!(stats["documents_indexed"], 13, "{stats}");
    assert_eq!(
        (&stats["jobs"]["queued"], &stats["jobs"]["running"]),
        (&json!(0), &json!(0)),
        "{stats}"
    );
    let hits = app.search("harbour logistics cranes", "keyword", 20).await;
    assert_eq!(hits["results"].as_array().unwrap().len(), 12, "{hits}");
    let report = app.verify(false).await;
    assert_eq!(report["ok"], true, "{report}");
}

/// Two processes on one PostgreSQL, Redis and MongoDB: every document is visible through both,
/// no job runs twice, and a cache entry invalidated on one is gone on the other. (Search through
/// the other replica needs the shared Qdrant server too; see tests/vectors.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_postgres_redis_and_mongodb() {
    let server = MongoServer::start(free_port(), None);
    let mut settings = mongo_settings(&server.url());
    let prefix = format!("docrag-test-{}:", Uuid::new_v4().simple());
    settings.push(("cache.redis_url".into(), redis_url()));
    settings.push(("cache.redis_prefix".into(), prefix));
    let qdrant = std::env::var("DOCRAG_TEST_QDRANT_URL").ok();
    if let Some(url) = &qdrant {
        settings.push(("vectors.qdrant_url".into(), url.clone()));
        settings.push((
            "vectors.collection".into(),
            format!("replicas_{}", Uuid::new_v4().simple()),
        ));
    } else {
        println!("skipped: search across replicas (set DOCRAG_TEST_QDRANT_URL to a Qdrant server)");
    }
    let a = TestApp::spawn_with(Backend::Postgres, &pairs(&settings)).await;
    settings.push(("database.url".into(), a.db.as_ref().unwrap().url.clone()));
    let b = TestApp::spawn_with(Backend::Sqlite, &pairs(&settings)).await;

    let mut jobs = Vec::new();
    for i in 0..16 {
        let app = if i % 2 == 0 { &a } else { &b };
        let (status, body) = post_doc(app, i).await;
        assert_eq!(status, 202, "{body}");
        jobs.push(body["job_id"].as_str().unwrap().to_string());
    }
    for job in &jobs {
        let done = a.wait_job(job).await;
        assert_eq!(done["status"], "done", "{done}");
        assert_eq!(done["attempts"], 1, "no job ran twice: {done}");
    }
    for app in [&a, &b] {
        let (_, list) = app
            .get_json(&app.api("/v1/documents?collection=fault&limit=100"))
            .await;
        assert_eq!(list["documents"].as_array().unwrap().len(), 16, "{list}");
    }
    // Both replicas read the chunk text from the one MongoDB.
    let counts_a = a.state.storage.documents.chunk_counts().await.unwrap();
    let counts_b = b.state.storage.documents.chunk_counts().await.unwrap();
    assert_eq!(counts_a.len(), 16);
    assert_eq!(counts_a, counts_b);

    if qdrant.is_some() {
        // Indexed by whichever replica claimed the job; searchable through both.
        for app in [&a, &b] {
            let hits = app.search("harbour logistics cranes", "keyword", 20).await;
            assert_eq!(hits["results"].as_array().unwrap().len(), 16, "{hits}");
        }
        let report = a.verify(false).await;
        assert_eq!(report["ok"], true, "{report}");
    }

    // A cached answer on one replica is invalidated by a change through the other.
    let query = json!({"query": "quarterly report", "collection": "fault", "mode": "keyword"});
    a.post_json("/v1/search", &query).await;
    let (_, cached) = b.post_json("/v1/search", &query).await;
    assert_eq!(cached["cached"], true, "{cached}");
    let (status, body) = post_doc(&b, 100).await;
    assert_eq!(status, 202, "{body}");
    b.wait_job(body["job_id"].as_str().unwrap()).await;
    let (_, fresh) = a.post_json("/v1/search", &query).await;
    assert_eq!(fresh["cached"], false, "{fresh}");
}
