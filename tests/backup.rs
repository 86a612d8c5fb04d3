//! Backup and restore (issue 10) against real stores: the dbpedia-5k corpus backed up from
//! SQLite, restored into SQLite and PostgreSQL (and from PostgreSQL back into SQLite) with the
//! same documents and identical search results; a backup taken while ingestion runs restores
//! consistent; corrupt, truncated and newer-format backups are refused before anything is
//! written; embedded stores restore into PostgreSQL + a MongoDB-wire server; the CLI and the
//! storage port's `POST /v1/admin/backups` with its metrics.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    Backend, MongoServer, ServerProcess, TestApp, TestDatabase, eval_args, free_port,
    mongo_settings, shared_dir,
};
use doc_rag::backup::{BackupError, Quiet, RestoreOptions, RestoreReport};
use doc_rag::cli::eval;
use doc_rag::embedder::Priority;
use doc_rag::storage::vector::{SearchMode, VectorQuery};
use serde_json::{Value, json};

/// Backs up the running app's stores (ingestion may be running) into `out`.
async fn backup(app: &TestApp, out: &Path) -> doc_rag::backup::Manifest {
    doc_rag::backup::backup(&app.state.storage, &app.settings, out, &Quiet)
        .await
        .expect("backup")
}

/// Restores `from` into new stores (a new data dir, and a new PostgreSQL database or MongoDB
/// database when asked), then starts an app on them.
async fn restore_into(
    from: &Path,
    backend: Backend,
    extra: &[(&str, &str)],
    options: RestoreOptions,
) -> (RestoreReport, TestApp) {
    let dir = tempfile::tempdir().unwrap();
    let db = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(TestDatabase::create()),
    };
    let settings = TestApp::settings_for(dir.path(), db.as_ref(), extra);
    let report = {
        let storage = doc_rag::open_storage(&settings).await.unwrap();
        doc_rag::backup::restore(&storage, &settings, from, &options, &Quiet)
            .await
            .expect("restore")
    };
    (report, TestApp::spawn_in(dir, db, extra).await)
}

/// The queries as the index sees them, embedded once (by `app`): the same vectors go to every
/// store compared, so a difference is the stores', not the embedding's (ONNX Runtime's threads
/// may round a query's embedding differently from one run to the next).
async fn index_queries(app: &TestApp, queries: &[String]) -> Vec<VectorQuery> {
    let mut out = Vec::new();
    for q in queries {
        let dense = app
            .state
            .embedder
            .embed(vec![q.clone()], Priority::Query)
            .await
            .unwrap()
            .pop();
        let sparse = Some(app.state.bm25.query(q));
        for mode in [SearchMode::Dense, SearchMode::Keyword] {
            out.push(VectorQuery {
                mode,
                dense: dense.clone(),
                sparse: sparse.clone(),
                limit: 20,
                prefetch_limit: 0,
                rrf_k: 60,
                weights: None,
                collection: None,
                collections: None,
                filter: None,
            });
        }
    }
    out
}

/// Each query's dense and keyword ranking in `app`'s index: (chunk id, score) per hit.
async fn results(app: &TestApp, queries: &[VectorQuery]) -> Vec<Vec<(String, f64)>> {
    let mut all = Vec::new();
    for q in queries {
        let mut hits = app.state.storage.vectors.search(q.clone()).await.unwrap();
        doc_rag::query::fusion::order(&mut hits);
        all.push(
            hits.into_iter()
                .map(|h| (h.chunk_id.to_string(), f64::from(h.score)))
                .collect(),
        );
    }
    all
}

/// The same ranking: the same scores at every rank, and the same chunks at them. Hits whose
/// scores differ by less than the index's rounding (a restored dense vector is normalised again)
/// count as tied and are compared as sets, and the last rank's group by its score only (a tie
/// may be cut at a different member).
fn assert_same_results(what: &str, a: &[Vec<(String, f64)>], b: &[Vec<(String, f64)>]) {
    assert_eq!(a.len(), b.len());
    let tied = |x: f64, y: f64| (x - y).abs() < 1e-5;
    let groups = |v: &[(String, f64)]| -> Vec<Vec<String>> {
        let cutoff = v.last().map(|h| h.1).unwrap_or(0.0);
        let mut groups: Vec<(f64, Vec<String>)> = Vec::new();
        for (id, score) in v.iter().filter(|h| !tied(h.1, cutoff)) {
            match groups.last_mut() {
                Some((s, ids)) if tied(*s, *score) => ids.push(id.clone()),
                _ => groups.push((*score, vec![id.clone()])),
            }
        }
        groups
            .into_iter()
            .map(|(_, mut ids)| {
                ids.sort();
                ids
            })
            .collect()
    };
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.len(), y.len(), "{what}: ranking {i}: {x:?} vs {y:?}");
        for (h, k) in x.iter().zip(y) {
            assert!(
                tied(h.1, k.1),
                "{what}: ranking {i}: score {} vs {}",
                h.1,
                k.1
            );
        }
        assert_eq!(groups(x), groups(y), "{what}: ranking {i} differs");
    }
}

fn queries() -> Vec<String> {
    std::fs::read_to_string(shared_dir().join("datasets/dbpedia-5k/queries.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// The dbpedia-5k corpus through a backup: from SQLite into SQLite and PostgreSQL, then from
/// PostgreSQL back into SQLite. Every restore has the same documents (deleted ones stay deleted),
/// the same users, keys and grants, `verify` clean, and ranks every query of the dataset exactly
/// as the original did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbpedia_round_trip_through_sqlite_and_postgres() {
    let app = TestApp::spawn().await;
    let dataset = shared_dir().join("datasets/dbpedia-5k");
    let url = app.api("");
    let report = eval::run(eval_args(&[
        "--url",
        &url,
        "--token",
        &app.admin_key,
        "--dataset",
        dataset.to_str().unwrap(),
        "--collection",
        "dbpedia",
    ]))
    .await
    .unwrap();
    let ndcg = report.modes["hybrid"].metrics["ndcg@10"];

    // Two documents deleted before the backup, a user with a grant, and an API key.
    let (_, listed) = app
        .get_json(&app.api("/v1/documents?collection=dbpedia&limit=2"))
        .await;
    let deleted: Vec<String> = listed["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(deleted.len(), 2, "{listed}");
    for id in &deleted {
        let r = app
            .client
            .delete(app.api(&format!("/v1/documents/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let r = app
        .client
        .post(app.url("security", "/v1/admin/users"))
        .json(&json!({"email": "reader@test.local", "password": "reader-password-1", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let reader: Value = r.json().await.unwrap();
    let principal = format!("user:{}", reader["id"].as_str().unwrap());
    let r = app
        .client
        .put(app.api(&format!("/v1/collections/dbpedia/grants/{principal}")))
        .json(&json!({"access": "read"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The reader's conversation, with one turn, rated.
    let (status, tokens) = common::login(&url, "reader@test.local", "reader-password-1").await;
    assert_eq!(status, 200, "{tokens}");
    let reader_client = common::authed_client(tokens["access_token"].as_str().unwrap());
    let (status, conversation) = common::send(
        &reader_client,
        reqwest::Method::POST,
        &app.api("/v1/conversations"),
        Some(json!({"title": "TV hosts", "collection": "dbpedia"})),
    )
    .await;
    assert_eq!(status, 201, "{conversation}");
    let (status, turn) = common::send(
        &reader_client,
        reqwest::Method::POST,
        &app.api("/v1/query"),
        Some(json!({"query": "Who is Hugh Downs?", "conversation_id": conversation["id"]})),
    )
    .await;
    assert_eq!(status, 200, "{turn}");
    let (status, _) = common::send(
        &reader_client,
        reqwest::Method::POST,
        &app.api("/v1/feedback"),
        Some(json!({"query_id": turn["query_id"], "rating": "up"})),
    )
    .await;
    assert_eq!(status, 201);
    // The engine counts deleted points in BM25's document frequencies until its maintenance
    // vacuums them; a restored index never had them. Rank the original after that maintenance.
    app.state.storage.vectors.optimize().await.unwrap();
    let queries = index_queries(&app, &queries()).await;
    let original = results(&app, &queries).await;

    let backups = tempfile::tempdir().unwrap();
    let from_sqlite = backups.path().join("sqlite");
    let started = std::time::Instant::now();
    let manifest = backup(&app, &from_sqlite).await;
    println!(
        "backup of dbpedia-5k from sqlite/qdrant-edge: {:.1} s, {:.1} MiB",
        started.elapsed().as_secs_f64(),
        dir_bytes(&from_sqlite) as f64 / (1 << 20) as f64
    );
    assert_eq!(manifest.counts.documents, 4998, "{:?}", manifest.counts);
    assert_eq!(manifest.counts.indexed, 4998);
    assert_eq!(manifest.counts.vectors, manifest.counts.chunks);
    assert_eq!(manifest.backends.metadata, "sqlite");
    assert_eq!(manifest.embedding.dimension, 384);
    assert!(manifest.counts.users >= 2 && manifest.counts.api_keys >= 1);
    assert_eq!(
        (
            manifest.counts.conversations,
            manifest.counts.answers,
            manifest.counts.feedback
        ),
        (1, 1, 1),
        "{:?}",
        manifest.counts
    );

    let check = |what: &'static str, report: &RestoreReport| {
        assert!(
            report.verify.ok,
            "{what}: verify after restore: {:?}",
            report.verify
        );
        assert_eq!(report.documents, 4998, "{what}");
        assert_eq!(report.queued, 0, "{what}");
        assert_eq!(report.vectors, manifest.counts.vectors, "{what}");
    };
    let restored_apps = {
        let mut apps = Vec::new();
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let started = std::time::Instant::now();
            let (report, restored) =
                restore_into(&from_sqlite, backend, &[], RestoreOptions::default()).await;
            println!(
                "restore of dbpedia-5k into {backend:?}: {:.1} s",
                started.elapsed().as_secs_f64()
            );
            check("restore", &report);
            apps.push(restored);
        }
        apps
    };
    for restored in &restored_apps {
        assert_same_results("restored", &original, &results(restored, &queries).await);
        for id in &deleted {
            let (status, _) = restored
                .get_json(&restored.api(&format!("/v1/documents/{id}")))
                .await;
            assert_eq!(status, 404, "a deleted document stays deleted");
        }
        let stats = restored.stats().await;
        assert_eq!(stats["documents_indexed"], 4998, "{stats}");
        // The reader's password and grant came along.
        let (status, tokens) =
            common::login(&restored.api(""), "reader@test.local", "reader-password-1").await;
        assert_eq!(status, 200, "{tokens}");
        let reader = common::authed_client(tokens["access_token"].as_str().unwrap());
        let r = reader
            .post(restored.api("/v1/search"))
            .json(&json!({"query": "Hugh Downs", "collection": "dbpedia"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "the grant was restored");
        // So did the reader's conversation, its turn and its rating.
        let (_, listed) = common::send(
            &reader,
            reqwest::Method::GET,
            &restored.api(&format!(
                "/v1/conversations/{}",
                conversation["id"].as_str().unwrap()
            )),
            None,
        )
        .await;
        assert_eq!(listed["turns"][0]["query_id"], turn["query_id"], "{listed}");
        let (_, report) = restored.get_json(&restored.api("/v1/admin/feedback")).await;
        assert_eq!(
            report["feedback"][0]["query_id"], turn["query_id"],
            "{report}"
        );
        // The harness's API key works on the restored service: keys are restored.
        assert_eq!(restored.stats().await["documents"], 4998);
    }
    let rerun = eval::run(eval_args(&[
        "--url",
        &restored_apps[1].api(""),
        "--token",
        &restored_apps[1].admin_key,
        "--dataset",
        dataset.to_str().unwrap(),
        "--collection",
        "dbpedia",
        "--reuse",
    ]))
    .await
    .unwrap();
    assert!(
        (rerun.modes["hybrid"].metrics["ndcg@10"] - ndcg).abs() < 0.01,
        "nDCG@10 {ndcg} before, {} after (two documents fewer)",
        rerun.modes["hybrid"].metrics["ndcg@10"]
    );

    // And back: PostgreSQL into SQLite.
    let from_postgres = backups.path().join("postgres");
    let started = std::time::Instant::now();
    let manifest = backup(&restored_apps[1], &from_postgres).await;
    println!(
        "backup of dbpedia-5k from postgres/qdrant-edge: {:.1} s, {:.1} MiB",
        started.elapsed().as_secs_f64(),
        dir_bytes(&from_postgres) as f64 / (1 << 20) as f64
    );
    assert_eq!(manifest.backends.metadata, "postgres");
    let started = std::time::Instant::now();
    let (report, back) = restore_into(
        &from_postgres,
        Backend::Sqlite,
        &[],
        RestoreOptions::default(),
    )
    .await;
    println!(
        "restore of the postgres backup into Sqlite: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    check("back to sqlite", &report);
    assert_same_results("back in sqlite", &original, &results(&back, &queries).await);
}

/// A backup taken while a bulk upload is being indexed restores consistent: `verify` is clean,
/// and every document is there whole (indexed, with all its chunks and vectors) or queued to be
/// indexed again, which the restored service then does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_during_ingestion_restores_consistent() {
    let app = TestApp::spawn().await;
    let lines: String = (0..400)
        .map(|i| {
            format!(
                "{}\n",
                json!({
                    "title": format!("Note {i}"),
                    "text": format!("Note {i} is about harbour crane number {i}. {}", "Cranes lift containers off ships. ".repeat(i % 7 + 1)),
                    "collection": "busy",
                    "external_id": format!("note-{i}"),
                })
            )
        })
        .collect();
    let r = app
        .client
        .post(app.api("/v1/documents/bulk"))
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
    // Some indexed, most still queued.
    for _ in 0..600 {
        if app.stats().await["documents_indexed"].as_i64().unwrap() >= 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = tempfile::tempdir().unwrap();
    let manifest = backup(&app, &out.path().join("b")).await;
    let c = &manifest.counts;
    println!("backup during ingestion: {c:?}");
    assert_eq!(c.documents, 400);
    assert!(c.indexed >= 20 && c.pending > 0, "{c:?}");
    assert_eq!(c.indexed + c.pending, 400);

    let (report, restored) = restore_into(
        &out.path().join("b"),
        Backend::Sqlite,
        &[],
        RestoreOptions::default(),
    )
    .await;
    assert!(report.verify.ok, "{:?}", report.verify);
    assert_eq!(report.queued, c.pending);
    let stats = restored.stats().await;
    assert_eq!(stats["documents"], 400, "{stats}");
    // Indexed documents are whole: their chunks and vectors agree (verify counts both).
    assert_eq!(report.vectors, c.vectors);
    // The restored service indexes the rest.
    for _ in 0..1200 {
        if restored.stats().await["documents_indexed"] == 400 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let stats = restored.stats().await;
    assert_eq!(stats["documents_indexed"], 400, "{stats}");
    let verify = restored.verify(false).await;
    assert_eq!(verify["ok"], true, "{verify}");
}

/// A small backup to damage.
async fn small_backup(out: &Path) -> TestApp {
    let app = TestApp::spawn().await;
    for i in 0..5 {
        app.ingest_text(
            &format!("Crane {i}"),
            &format!("Crane {i} lifts {i} containers an hour in the harbour."),
            json!({"collection": "small"}),
        )
        .await;
    }
    backup(&app, out).await;
    app
}

async fn restore_error(from: &Path) -> (BackupError, u64) {
    let dir = tempfile::tempdir().unwrap();
    let settings = TestApp::settings_for(dir.path(), None, &[]);
    let storage = doc_rag::open_storage(&settings).await.unwrap();
    let err = doc_rag::backup::restore(
        &storage,
        &settings,
        from,
        &RestoreOptions::default(),
        &Quiet,
    )
    .await
    .expect_err("the restore is refused");
    let documents = storage.metadata.stats().await.unwrap().documents as u64;
    (err, documents)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Damaged and foreign backups are refused with an error that says what is wrong, and nothing
/// is written to the target; a non-empty target is refused unless forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_truncated_and_newer_backups_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    let _app = small_backup(&good).await;

    let truncated = tmp.path().join("truncated");
    copy_dir(&good, &truncated);
    let f = truncated.join("documents.jsonl.gz");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (err, written) = restore_error(&truncated).await;
    assert!(matches!(err, BackupError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_eq!(written, 0);

    let flipped = tmp.path().join("flipped");
    copy_dir(&good, &flipped);
    let f = flipped.join("vectors.jsonl.gz");
    let mut bytes = std::fs::read(&f).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&f, bytes).unwrap();
    let (err, written) = restore_error(&flipped).await;
    assert!(matches!(err, BackupError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("SHA-256"), "{err}");
    assert_eq!(written, 0);

    let newer = tmp.path().join("newer");
    copy_dir(&good, &newer);
    let m = newer.join("manifest.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    manifest["format_version"] = json!(2);
    manifest["doc_rag_version"] = json!("9.0.0");
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let (err, written) = restore_error(&newer).await;
    assert!(matches!(err, BackupError::Incompatible(_)), "{err}");
    assert!(err.to_string().contains("format version 2"), "{err}");
    assert_eq!(written, 0);

    let (err, _) = restore_error(tmp.path()).await;
    assert!(err.to_string().contains("manifest.json"), "{err}");

    // Vectors of another model: refused, unless they are left out and everything is queued.
    let other_model = tmp.path().join("other-model");
    copy_dir(&good, &other_model);
    let m = other_model.join("manifest.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&m).unwrap()).unwrap();
    manifest["embedding"]["sha256"] = json!("0".repeat(64));
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let (err, written) = restore_error(&other_model).await;
    assert!(matches!(err, BackupError::Incompatible(_)), "{err}");
    assert!(err.to_string().contains("--skip-vectors"), "{err}");
    assert_eq!(written, 0);
    let dir = tempfile::tempdir().unwrap();
    let settings = TestApp::settings_for(dir.path(), None, &[]);
    let storage = doc_rag::open_storage(&settings).await.unwrap();
    let skip = RestoreOptions {
        skip_vectors: true,
        ..RestoreOptions::default()
    };
    let report = doc_rag::backup::restore(&storage, &settings, &other_model, &skip, &Quiet)
        .await
        .unwrap();
    assert_eq!((report.documents, report.queued, report.vectors), (5, 5, 0));
    assert!(
        report.verify.ok,
        "queued documents are in flight: {:?}",
        report.verify
    );
    drop(storage);
    let app = TestApp::spawn_in(dir, None, &[]).await;
    for _ in 0..600 {
        if app.stats().await["documents_indexed"] == 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.stats().await["documents_indexed"],
        5,
        "indexed again after the restore"
    );
    assert!(
        !app.search("crane containers", "hybrid", 3).await["results"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // Into stores that hold documents: refused, then replaced with --force.
    let dir = tempfile::tempdir().unwrap();
    let settings = TestApp::settings_for(dir.path(), None, &[]);
    let storage = doc_rag::open_storage(&settings).await.unwrap();
    doc_rag::backup::restore(
        &storage,
        &settings,
        &good,
        &RestoreOptions::default(),
        &Quiet,
    )
    .await
    .unwrap();
    let err = doc_rag::backup::restore(
        &storage,
        &settings,
        &good,
        &RestoreOptions::default(),
        &Quiet,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BackupError::NotEmpty(_)), "{err}");
    let forced = RestoreOptions {
        force: true,
        ..RestoreOptions::default()
    };
    let report = doc_rag::backup::restore(&storage, &settings, &good, &forced, &Quiet)
        .await
        .unwrap();
    assert_eq!((report.documents, report.replaced), (5, 5));
    assert!(report.verify.ok, "{:?}", report.verify);
    assert_eq!(storage.metadata.stats().await.unwrap().documents, 5);
}

/// The migration path: a backup of the embedded stores restores into PostgreSQL + a MongoDB-wire
/// server (SecantusDB) with the same search results, and a backup of those restores back into
/// the embedded stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_backup_restores_into_postgres_and_mongodb_and_back() {
    let app = TestApp::spawn().await;
    let dataset = shared_dir().join("datasets/dbpedia-5k");
    eval::run(eval_args(&[
        "--url",
        &app.api(""),
        "--token",
        &app.admin_key,
        "--dataset",
        dataset.to_str().unwrap(),
        "--collection",
        "dbpedia",
        "--max-docs",
        "300",
        "--max-queries",
        "5",
    ]))
    .await
    .unwrap();
    let queries: Vec<String> = queries().into_iter().take(20).collect();
    let queries = index_queries(&app, &queries).await;
    let original = results(&app, &queries).await;
    let tmp = tempfile::tempdir().unwrap();
    let embedded = tmp.path().join("embedded");
    let manifest = backup(&app, &embedded).await;
    assert_eq!(manifest.counts.documents, 300);

    let mongo = MongoServer::start(free_port(), None);
    let mut pairs = mongo_settings(&mongo.url());
    let qdrant = std::env::var("DOCRAG_TEST_QDRANT_URL").ok();
    match &qdrant {
        Some(url) => {
            pairs.push(("vectors.qdrant_url".into(), url.clone()));
            pairs.push((
                "vectors.collection".into(),
                format!("restore_{}", uuid::Uuid::new_v4().simple()),
            ));
        }
        None => {
            println!("skipped: restoring into a Qdrant server (set DOCRAG_TEST_QDRANT_URL to one)")
        }
    }
    let extra: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let started = std::time::Instant::now();
    let (report, servers) = restore_into(
        &embedded,
        Backend::Postgres,
        &extra,
        RestoreOptions::default(),
    )
    .await;
    println!(
        "restore of 300 dbpedia documents into postgres + mongodb: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(report.verify.ok, "{:?}", report.verify);
    assert_eq!(report.documents, 300);
    let stats = servers.stats().await;
    assert_eq!(stats["backends"]["documents"], "mongodb", "{stats}");
    let vectors = if qdrant.is_some() {
        "qdrant"
    } else {
        "qdrant-edge"
    };
    assert_eq!(stats["backends"]["vectors"], vectors, "{stats}");
    assert_eq!(stats["documents_indexed"], 300, "{stats}");
    assert_same_results(
        "postgres + mongodb",
        &original,
        &results(&servers, &queries).await,
    );
    // Originals are in MongoDB: a document reads back as uploaded.
    let (_, listed) = servers
        .get_json(&servers.api("/v1/documents?limit=1"))
        .await;
    let id = listed["documents"][0]["id"].as_str().unwrap().to_string();
    let (status, doc) = servers
        .get_json(&servers.api(&format!("/v1/documents/{id}")))
        .await;
    assert_eq!(status, 200, "{doc}");

    let from_servers = tmp.path().join("servers");
    let manifest = backup(&servers, &from_servers).await;
    assert_eq!(manifest.backends.documents, "mongodb");
    let (report, back) = restore_into(
        &from_servers,
        Backend::Sqlite,
        &[],
        RestoreOptions::default(),
    )
    .await;
    assert!(report.verify.ok, "{:?}", report.verify);
    assert_same_results(
        "back to embedded",
        &original,
        &results(&back, &queries).await,
    );
}

fn doc_rag_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_doc-rag"))
}

fn run_cli(args: &[&str], data_dir: &Path) -> (bool, String) {
    let out = Command::new(doc_rag_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("DOCRAG__EMBEDDER__MODEL_DIR", common::model_dir())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `POST /v1/admin/backups` on the storage port writes a backup into `backup.dir`, keeps
/// `backup.retention` of them and exports the metrics the BackupTooOld alert reads; the CLI backs
/// up a stopped service's stores and restores them into another data dir, where the service
/// starts with the same documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_and_the_cli_back_up_and_restore() {
    let data = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(data.path(), &["backup.retention=2"], &[]);
    let admin = server.admin_client().await;
    let r = admin
        .post(format!("{}/v1/documents?wait=true", server.url("api")))
        .json(&json!({"title": "Cranes", "text": "The harbour has twelve cranes.", "collection": "ops"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut paths = Vec::new();
    for _ in 0..3 {
        let r = admin
            .post(format!("{}/v1/admin/backups", server.url("storage")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["manifest"]["counts"]["documents"], 1, "{body}");
        assert!(body["bytes"].as_u64().unwrap() > 0);
        paths.push(PathBuf::from(body["path"].as_str().unwrap()));
    }
    assert!(!paths[0].exists(), "retention 2 removed the oldest");
    assert!(paths[1].exists() && paths[2].exists());
    assert!(paths[2].starts_with(data.path().join("backups")));
    let metrics = admin
        .get(format!("{}/metrics", server.url("storage")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - value("backup_last_success_timestamp_seconds")).abs() < 120.0);
    assert!(value("backup_size_bytes") > 0.0);
    assert!(value("backup_duration_seconds") > 0.0);
    assert!(metrics.contains("backups_total{trigger=\"api\",outcome=\"success\"} 3"));
    server.stop();

    // The CLI on the stopped service's stores.
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("cli-backup");
    let (ok, text) = run_cli(&["backup", "--out", target.to_str().unwrap()], data.path());
    assert!(ok, "{text}");
    assert!(text.contains("backed up 1 documents"), "{text}");
    let (ok, text) = run_cli(&["backup", "--out", target.to_str().unwrap()], data.path());
    assert!(!ok && text.contains("is not empty"), "{text}");
    let restored = tempfile::tempdir().unwrap();
    let (ok, text) = run_cli(
        &["restore", "--from", target.to_str().unwrap()],
        restored.path(),
    );
    assert!(ok, "{text}");
    assert!(text.contains("restored 1 documents"), "{text}");
    assert!(
        text.contains("verify: checked 1 documents") && text.contains(": ok"),
        "{text}"
    );
    let (ok, text) = run_cli(
        &["restore", "--from", target.to_str().unwrap()],
        restored.path(),
    );
    assert!(!ok && text.contains("--force"), "{text}");

    let server = ServerProcess::start(restored.path(), &[], &[]);
    let admin = server.admin_client().await;
    let r = admin
        .post(format!("{}/v1/query", server.url("api")))
        .json(&json!({"query": "How many cranes?", "collection": "ops"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let answer: Value = r.json().await.unwrap();
    assert!(
        answer["answer"].as_str().unwrap().contains("twelve"),
        "{answer}"
    );

    // `doc-rag reindex` embeds everything again through the running service.
    let (_, tokens) = common::login(
        &server.url("api"),
        common::ADMIN_EMAIL,
        common::ADMIN_PASSWORD,
    )
    .await;
    let out = Command::new(doc_rag_bin())
        .args(["reindex", "--url", &server.url("storage")])
        .env("DOCRAG_TOKEN", tokens["access_token"].as_str().unwrap())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("queued 1 documents"), "{text}");
    assert!(text.contains("done: 1 of 1 documents indexed"), "{text}");
    let r = admin
        .post(format!("{}/v1/admin/reindex", server.url("storage")))
        .json(&json!({"collection": "none-such"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["queued"], 0);
    let r = admin
        .post(format!("{}/v1/admin/reindex", server.url("storage")))
        .body("{\"colection\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        400,
        "a misspelt field is named, not ignored"
    );
}

/// `backup.schedule` (cron, seconds first) backs up on its own into `backup.dir`, keeping
/// `backup.retention` backups; a bad expression stops the start with a message naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_run_and_keep_the_retention() {
    let backups = tempfile::tempdir().unwrap();
    let dir = backups.path().display().to_string();
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("backup.schedule", "*/2 * * * * *"),
            ("backup.retention", "2"),
            ("backup.dir", &dir),
        ],
    )
    .await;
    app.ingest_text("Cranes", "The harbour has twelve cranes.", json!({}))
        .await;
    let complete = || -> Vec<PathBuf> {
        std::fs::read_dir(backups.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("manifest.json").is_file())
            .collect()
    };
    // Three runs at least (two seconds apart), of which the newest two are kept.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 3 && std::time::Instant::now() < deadline {
        seen.extend(complete());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(seen.len() >= 3, "scheduled backups: {seen:?}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let kept = complete();
    assert!(kept.len() <= 2, "retention 2 keeps {kept:?}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(kept[0].join("manifest.json")).unwrap()).unwrap();
    assert!(
        manifest["counts"]["documents"].as_u64().unwrap() <= 1,
        "{manifest}"
    );

    let bad = doc_rag::config::Settings::defaults_with(&[(
        "backup.schedule".to_string(),
        "every night".to_string(),
    )])
    .unwrap_err();
    assert!(bad.to_string().contains("backup.schedule"), "{bad}");
}

/// A moto S3 server (PyPI `moto[server]`, installed by scripts/ensure-services.sh) on a port of
/// its own.
struct S3Server {
    child: std::process::Child,
    url: String,
}

impl S3Server {
    fn start() -> Self {
        let port = free_port();
        let python = PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/doc-rag-venv/bin/python");
        let child = Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto's S3 server starts (make check-services installs moto[server])");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        S3Server { child, url }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--out s3://bucket/prefix` uploads the backup (manifest last) to an S3-compatible server with
/// the usual AWS variables, and `--from s3://…` restores it from there; a prefix without a
/// backup is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_go_to_and_come_from_s3() {
    let s3 = S3Server::start();
    let r = reqwest::Client::new()
        .put(format!("{}/doc-rag-backups", s3.url))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "create the bucket: {}", r.status());
    let data = tempfile::tempdir().unwrap();
    {
        let mut server = ServerProcess::start(data.path(), &[], &[]);
        let admin = server.admin_client().await;
        let r = admin
            .post(format!("{}/v1/documents?wait=true", server.url("api")))
            .json(&json!({"title": "Cranes", "text": "The harbour has twelve cranes.", "collection": "ops"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        server.stop();
    }
    let aws = |cmd: &mut Command| {
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &s3.url)
            .env("AWS_ALLOW_HTTP", "true")
            .env("DOCRAG__EMBEDDER__MODEL_DIR", common::model_dir());
    };
    let run = |args: &[&str], dir: &Path| {
        let mut cmd = Command::new(doc_rag_bin());
        cmd.args(args).arg("--data-dir").arg(dir);
        aws(&mut cmd);
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = run(
        &["backup", "--out", "s3://doc-rag-backups/nightly/1"],
        data.path(),
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("uploaded") && text.contains("s3://doc-rag-backups/nightly/1"),
        "{text}"
    );
    let listing = reqwest::get(format!(
        "{}/doc-rag-backups?list-type=2&prefix=nightly/1/",
        s3.url
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    for name in [
        "manifest.json",
        "documents.jsonl.gz",
        "vectors.jsonl.gz",
        "security.jsonl.gz",
    ] {
        assert!(
            listing.contains(&format!("nightly/1/{name}")),
            "{name} not in {listing}"
        );
    }

    let restored = tempfile::tempdir().unwrap();
    let (ok, text) = run(
        &["restore", "--from", "s3://doc-rag-backups/nightly/1"],
        restored.path(),
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("restored 1 documents") && text.contains(": ok"),
        "{text}"
    );
    let (ok, text) = run(
        &["restore", "--from", "s3://doc-rag-backups/none-here"],
        tempfile::tempdir().unwrap().path(),
    );
    assert!(!ok && text.contains("has no manifest.json"), "{text}");
    let (ok, text) = run(&["backup", "--out", "s3://doc-rag-backups"], data.path());
    assert!(!ok && text.contains("s3://<bucket>/<prefix>"), "{text}");
}
