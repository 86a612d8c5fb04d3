//! One behaviour suite for the relational store, run against every backend: SQLite (embedded
//! default) and PostgreSQL (a fresh database per test run).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::TestDatabase;
use doc_rag::config::Settings;
use doc_rag::storage::answers::{
    AnswerRecord, AnswerStore, ConversationRecord, FeedbackQuery, FeedbackRecord,
};
use doc_rag::storage::security::{
    AuditQuery, AuditRecord, GrantRecord, RefreshRecord, RefreshUse, SecurityStore,
    SigningKeyRecord, UserRecord, UserUpdate,
};
use doc_rag::storage::sql::SqlStore;
use doc_rag::storage::{
    DocumentStatus, DocumentStore, Finish, FinishedChunks, JobStatus, MetadataStore, NewBatch,
    NewDocument, StoredChunk, chunk_id,
};
use uuid::Uuid;

/// Chunk rows stored for a document, as `verify` sees them.
async fn stored_chunks(meta: &dyn MetadataStore, id: Uuid) -> i64 {
    let inventory = meta.inventory().await.unwrap();
    inventory
        .documents
        .iter()
        .find(|d| d.id == id)
        .map_or(0, |d| d.stored_chunks)
}

async fn original(meta: &dyn MetadataStore, docs: &dyn DocumentStore, id: Uuid) -> Option<Vec<u8>> {
    let doc = meta.get_document(id).await.unwrap()?;
    docs.get_original(&doc).await.unwrap()
}
use serde_json::{Map, json};

async fn sqlite(dir: &Path) -> Arc<SqlStore> {
    let s =
        Settings::defaults_with(&[("storage.data_dir".into(), dir.display().to_string())]).unwrap();
    Arc::new(
        SqlStore::connect(&s.database, &s.storage.data_dir)
            .await
            .unwrap(),
    )
}

async fn postgres(db: &TestDatabase) -> Arc<SqlStore> {
    let s = Settings::defaults_with(&[("database.url".into(), db.url.clone())]).unwrap();
    Arc::new(
        SqlStore::connect(&s.database, &s.storage.data_dir)
            .await
            .unwrap(),
    )
}

fn doc(title: &str, external_id: Option<&str>) -> NewDocument {
    let mut metadata = Map::new();
    metadata.insert("k".into(), json!("v"));
    NewDocument {
        collection: "c1".into(),
        external_id: external_id.map(str::to_string),
        title: title.into(),
        content_type: "text/plain".into(),
        metadata,
        content: format!("content of {title}").into_bytes(),
        content_ref: None,
        request_id: Some("rid".into()),
    }
}

async fn suite(store: Arc<SqlStore>) {
    let meta: &dyn MetadataStore = store.as_ref();
    let docs: &dyn DocumentStore = store.as_ref();
    meta.ping().await.unwrap();

    // Submit stores the document, its content and a queued job.
    let a = meta.submit_document(doc("A", Some("ext-a"))).await.unwrap();
    assert!(!a.replaced);
    let got = meta.get_document(a.document_id).await.unwrap().unwrap();
    assert_eq!(
        (got.title.as_str(), got.version, got.status),
        ("A", 1, DocumentStatus::Queued)
    );
    assert_eq!(got.metadata["k"], "v");
    assert!(
        docs.inline(),
        "the SQL store keeps content in its own transactions"
    );
    assert_eq!(
        original(meta, docs, a.document_id).await.unwrap(),
        b"content of A"
    );
    assert_eq!(
        meta.get_job(a.job_id).await.unwrap().unwrap().status,
        JobStatus::Queued
    );

    // Claiming leases the oldest job once.
    let lease = Duration::from_secs(60);
    let job = meta
        .claim_job("w1", lease)
        .await
        .unwrap()
        .expect("a queued job");
    assert_eq!(job.job_id, a.job_id);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.request_id.as_deref(), Some("rid"));
    assert!(
        meta.claim_job("w2", lease).await.unwrap().is_none(),
        "leased jobs are not handed out twice"
    );
    assert!(meta.renew_lease(job.job_id, "w1", lease).await.unwrap());
    assert!(!meta.renew_lease(job.job_id, "w2", lease).await.unwrap());
    assert_eq!(
        meta.get_document(a.document_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        DocumentStatus::Indexing
    );

    let chunks = |n: u32| -> FinishedChunks {
        FinishedChunks::Inline(
            (0..n)
                .map(|i| StoredChunk {
                    id: chunk_id(a.document_id, 1, i),
                    document_id: a.document_id,
                    chunk_index: i as i32,
                    text: format!("chunk {i}"),
                    token_count: 2,
                    offset: None,
                })
                .collect(),
        )
    };
    // The finish is fenced by the lease: another worker cannot finish w1's job.
    assert_eq!(
        meta.finish_job(&job, "w2", chunks(5)).await.unwrap(),
        Finish::LeaseLost
    );
    assert_eq!(
        stored_chunks(meta, a.document_id).await,
        0,
        "nothing written"
    );
    assert_eq!(
        meta.finish_job(&job, "w1", chunks(2)).await.unwrap(),
        Finish::Live
    );
    assert_eq!(stored_chunks(meta, a.document_id).await, 2);
    let fetched = docs
        .get_chunks(vec![
            chunk_id(a.document_id, 1, 1),
            chunk_id(a.document_id, 1, 2),
        ])
        .await
        .unwrap();
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].text, "chunk 1");
    let done = meta.get_document(a.document_id).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.chunk_count),
        (DocumentStatus::Indexed, 2)
    );
    assert_eq!(
        meta.get_job(a.job_id).await.unwrap().unwrap().status,
        JobStatus::Done
    );

    // Same external id replaces: same id, next version; a job for the old version is superseded.
    let a2 = meta
        .submit_document(doc("A2", Some("ext-a")))
        .await
        .unwrap();
    assert!(a2.replaced);
    assert_eq!(a2.document_id, a.document_id);
    let replaced = meta.get_document(a.document_id).await.unwrap().unwrap();
    assert_eq!((replaced.version, replaced.title.as_str()), (2, "A2"));
    assert_eq!(
        original(meta, docs, a.document_id).await.unwrap(),
        b"content of A2"
    );
    // A worker still on version 1 cannot make its text live: its job fails as superseded.
    let j2 = meta.claim_job("w1", lease).await.unwrap().unwrap();
    assert_eq!(j2.document_version, 2);
    let stale = doc_rag::storage::ClaimedJob {
        document_version: 1,
        ..j2.clone()
    };
    assert_eq!(
        meta.finish_job(&stale, "w1", chunks(9)).await.unwrap(),
        Finish::Superseded,
        "an old version cannot complete"
    );
    assert_eq!(
        stored_chunks(meta, a.document_id).await,
        2,
        "old text untouched"
    );

    // Failures: retried until attempts run out, then final with the reason on the document.
    let b = meta.submit_document(doc("B", None)).await.unwrap();
    let mut claimed = Vec::new();
    while let Some(j) = meta.claim_job("w1", lease).await.unwrap() {
        claimed.push(j);
    }
    let jb = claimed
        .iter()
        .find(|j| j.job_id == b.job_id)
        .unwrap()
        .clone();
    assert_eq!(
        meta.fail_job(&jb, "w1", "transient", Some(Duration::ZERO), 2)
            .await
            .unwrap(),
        Some(JobStatus::Queued)
    );
    let jb = meta.claim_job("w1", lease).await.unwrap().unwrap();
    assert_eq!((jb.job_id, jb.attempts), (b.job_id, 2));
    assert_eq!(
        meta.fail_job(&jb, "w2", "not mine", None, 2).await.unwrap(),
        None,
        "a worker that does not hold the job cannot fail it"
    );
    assert_eq!(
        meta.fail_job(&jb, "w1", "bad pdf", Some(Duration::ZERO), 2)
            .await
            .unwrap(),
        Some(JobStatus::Failed)
    );
    let failed = meta.get_document(b.document_id).await.unwrap().unwrap();
    assert_eq!(
        (failed.status, failed.error.as_deref()),
        (DocumentStatus::Failed, Some("bad pdf"))
    );

    // Jobs left running by a dead process come back.
    let c = meta.submit_document(doc("C", None)).await.unwrap();
    let jc = meta
        .claim_job("dead", Duration::from_millis(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(jc.job_id, c.job_id);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        meta.requeue_running(false).await.unwrap(),
        1,
        "only the expired lease"
    );
    let again = meta.claim_job("alive", lease).await.unwrap().unwrap();
    assert_eq!(again.job_id, c.job_id);
    assert_eq!(
        meta.requeue_running(true).await.unwrap(),
        1,
        "every running job, its lease current or not"
    );

    // Listing, stats, collections.
    let listed = meta
        .list_documents(Some("c1".into()), None, 10, 0)
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(
        meta.list_documents(Some("nope".into()), None, 10, 0)
            .await
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        meta.list_documents(None, None, 1, 1).await.unwrap().len(),
        1
    );
    assert_eq!(
        meta.list_documents(None, Some(vec!["c1".into()]), 10, 0)
            .await
            .unwrap()
            .len(),
        listed.len(),
        "`within` restricts to the given collections"
    );
    assert!(
        meta.list_documents(None, Some(vec![]), 10, 0)
            .await
            .unwrap()
            .is_empty()
    );
    let stats = meta.stats().await.unwrap();
    assert_eq!(
        (stats.documents, stats.chunks, stats.collections),
        (3, 2, 1)
    );
    assert_eq!(stats.jobs.failed, 2, "the stale version-1 finish and B's");
    let collections = meta.list_collections().await.unwrap();
    assert_eq!(
        (collections[0].name.as_str(), collections[0].documents),
        ("c1", 3)
    );

    // Delete removes the document with its jobs, content and chunks.
    let removed = meta.delete_document(a.document_id).await.unwrap().unwrap();
    assert_eq!(removed.document.id, a.document_id);
    assert_eq!(removed.chunks, 2);
    let pending = meta.pending_deletions(10).await.unwrap();
    assert_eq!(
        pending.iter().map(|d| d.document_id).collect::<Vec<_>>(),
        vec![a.document_id],
        "the deletion is recorded for the sweeper"
    );
    meta.settle_deletion(a.document_id, Err("index down".into()))
        .await
        .unwrap();
    assert_eq!(meta.pending_deletions(10).await.unwrap()[0].attempts, 1);
    meta.settle_deletion(a.document_id, Ok(())).await.unwrap();
    assert!(meta.pending_deletions(10).await.unwrap().is_empty());
    assert!(meta.get_document(a.document_id).await.unwrap().is_none());
    assert!(meta.get_job(a.job_id).await.unwrap().is_none());
    assert!(original(meta, docs, a.document_id).await.is_none());
    assert!(
        docs.get_chunks(vec![chunk_id(a.document_id, 1, 0)])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(meta.delete_document(a.document_id).await.unwrap().is_none());

    // Concurrent submits of many documents all land (pool + write transactions under contention).
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .submit_document(doc(&format!("P{i}"), Some(&format!("p{i}"))))
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(meta.stats().await.unwrap().documents, 42);
}

/// The security tables: every change bumps the generation, refresh tokens are single-use under
/// concurrency, families revoke together, signing keys rotate, and the audit log is append-only
/// (the database itself refuses to change it).
async fn security_suite(store: Arc<SqlStore>) {
    let sec: &dyn SecurityStore = store.as_ref();
    let g0 = sec.state().await.unwrap().generation;
    let user = UserRecord {
        id: "u1".into(),
        email: "a@x.org".into(),
        password_hash: "h".into(),
        role: "viewer".into(),
        disabled: false,
        sessions_valid_after: 0,
        created_at: 1,
        updated_at: 1,
    };
    sec.create_user(user.clone()).await.unwrap();
    assert!(
        sec.state().await.unwrap().generation > g0,
        "a change bumps the generation"
    );
    let dup = UserRecord {
        id: "u2".into(),
        ..user.clone()
    };
    assert!(matches!(
        sec.create_user(dup).await,
        Err(doc_rag::storage::StorageError::Conflict(_))
    ));
    assert_eq!(sec.count_users().await.unwrap(), 1);
    assert_eq!(
        sec.find_user_by_email("a@x.org").await.unwrap().unwrap().id,
        "u1"
    );
    let updated = sec
        .update_user(
            "u1",
            UserUpdate {
                role: Some("editor".into()),
                disabled: Some(true),
                end_sessions: true,
                ..UserUpdate::default()
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((updated.role.as_str(), updated.disabled), ("editor", true));
    assert!(updated.sessions_valid_after > 0);
    assert!(
        sec.update_user("nobody", UserUpdate::default())
            .await
            .unwrap()
            .is_none()
    );

    // Refresh tokens: of many concurrent presentations, exactly one wins.
    let now = 1_000_000;
    let token = |id: &str, family: &str| RefreshRecord {
        id: id.into(),
        family: family.into(),
        user_id: "u1".into(),
        token_hash: format!("hash-{id}"),
        expires_at: now + 60_000,
        used_at: None,
        revoked_at: None,
        created_at: now,
    };
    sec.insert_refresh(token("r1", "f1")).await.unwrap();
    sec.insert_refresh(token("r2", "f1")).await.unwrap();
    sec.insert_refresh(token("r3", "f2")).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.use_refresh("hash-r1", now).await.unwrap()
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        match t.await.unwrap() {
            RefreshUse::Fresh(_) => fresh += 1,
            RefreshUse::Reused(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(fresh, 1, "a refresh token works once");
    assert!(matches!(
        sec.use_refresh("hash-r3", now + 120_000).await.unwrap(),
        RefreshUse::Expired(_)
    ));
    assert_eq!(
        sec.use_refresh("nope", now).await.unwrap(),
        RefreshUse::Unknown
    );
    sec.revoke_family("f1", now + 5).await.unwrap();
    assert!(matches!(
        sec.use_refresh("hash-r2", now).await.unwrap(),
        RefreshUse::Reused(_)
    ));
    assert_eq!(
        sec.revoked_families(now).await.unwrap(),
        vec!["f1".to_string()]
    );
    sec.revoke_all_sessions(now + 10).await.unwrap();
    assert_eq!(sec.state().await.unwrap().sessions_valid_after, now + 10);

    // Signing keys: one current key at a time; the old one gets its retirement time.
    let key = |kid: &str| SigningKeyRecord {
        kid: kid.into(),
        secret: "c2VjcmV0".into(),
        created_at: now,
        retire_at: None,
    };
    sec.add_signing_key(key("k1"), now, true).await.unwrap();
    sec.add_signing_key(key("k0"), now, true).await.unwrap();
    assert_eq!(
        sec.signing_keys().await.unwrap().len(),
        1,
        "only_if_none keeps the existing key"
    );
    sec.add_signing_key(key("k2"), now + 99, false)
        .await
        .unwrap();
    let keys = sec.signing_keys().await.unwrap();
    let k1 = keys.iter().find(|k| k.kid == "k1").unwrap();
    let k2 = keys.iter().find(|k| k.kid == "k2").unwrap();
    assert_eq!((k1.retire_at, k2.retire_at), (Some(now + 99), None));

    // Grants replace each other per (collection, principal).
    let grant = |c: &str, access: &str| GrantRecord {
        collection: c.into(),
        principal: "user:u1".into(),
        access: access.into(),
        created_at: now,
    };
    sec.set_grant(grant("a", "read")).await.unwrap();
    sec.set_grant(grant("a", "write")).await.unwrap();
    sec.set_grant(grant("b", "read")).await.unwrap();
    let mut mine = sec.grants_of_principal("user:u1").await.unwrap();
    mine.sort_by(|x, y| x.collection.cmp(&y.collection));
    assert_eq!(
        mine.iter()
            .map(|g| (g.collection.as_str(), g.access.as_str()))
            .collect::<Vec<_>>(),
        [("a", "write"), ("b", "read")]
    );
    assert!(sec.delete_grant("a", "user:u1").await.unwrap());
    assert!(!sec.delete_grant("a", "user:u1").await.unwrap());
    assert!(sec.delete_user("u1").await.unwrap());
    assert!(
        sec.grants_of_principal("user:u1").await.unwrap().is_empty(),
        "grants go with the user"
    );

    // The audit log filters, pages, and cannot be changed.
    for (i, event) in ["login_success", "login_failure", "login_failure"]
        .iter()
        .enumerate()
    {
        sec.append_audit(AuditRecord {
            at: now + i as i64,
            event: event.to_string(),
            actor: Some("user:u9".into()),
            ip: Some(format!("10.0.0.{i}")),
            outcome: "failure".into(),
            ..AuditRecord::default()
        })
        .await
        .unwrap();
    }
    let q = |event: Option<&str>, ip: Option<&str>| AuditQuery {
        event: event.map(Into::into),
        ip: ip.map(Into::into),
        limit: 10,
        ..AuditQuery::default()
    };
    assert_eq!(
        sec.query_audit(q(Some("login_failure"), None))
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        sec.query_audit(q(None, Some("10.0.0.0")))
            .await
            .unwrap()
            .len(),
        1
    );
    let newest_first = sec
        .query_audit(AuditQuery {
            limit: 2,
            offset: 1,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        newest_first.iter().map(|e| e.at).collect::<Vec<_>>(),
        [now + 1, now]
    );
    let since = sec
        .query_audit(AuditQuery {
            since: Some(now + 1),
            until: Some(now + 2),
            limit: 10,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(since.len(), 1);
    let tampered = store
        .raw_execute("UPDATE audit_log SET outcome = 'success'")
        .await;
    assert!(tampered.is_err(), "UPDATE on the audit log is refused");
    let deleted = store.raw_execute("DELETE FROM audit_log").await;
    assert!(deleted.is_err(), "DELETE on the audit log is refused");
    assert_eq!(sec.query_audit(q(None, None)).await.unwrap().len(), 3);
}

/// A retried job is not claimable before its backoff has passed, then is.
async fn backoff_suite(store: Arc<SqlStore>) {
    let meta: &dyn MetadataStore = store.as_ref();
    let lease = Duration::from_secs(60);
    let submitted = meta.submit_document(doc("R", None)).await.unwrap();
    let job = meta.claim_job("w", lease).await.unwrap().unwrap();
    assert_eq!(job.job_id, submitted.job_id);
    let status = meta
        .fail_job(&job, "w", "outage", Some(Duration::from_millis(500)), 5)
        .await
        .unwrap();
    assert_eq!(status, Some(JobStatus::Queued));
    assert!(
        meta.claim_job("w", lease).await.unwrap().is_none(),
        "not before its backoff"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let again = meta.claim_job("w", lease).await.unwrap().expect("due now");
    assert_eq!((again.job_id, again.attempts), (submitted.job_id, 2));

    // A dependency outage postpones the job without using up an attempt, fenced by the lease.
    assert!(
        !meta
            .postpone_job(&again, "other", "MongoDB down", Duration::from_millis(300))
            .await
            .unwrap(),
        "only the lease holder postpones"
    );
    assert!(
        meta.postpone_job(&again, "w", "MongoDB down", Duration::from_millis(300))
            .await
            .unwrap()
    );
    let job = meta.get_job(submitted.job_id).await.unwrap().unwrap();
    assert_eq!((job.status, job.attempts), (JobStatus::Queued, 1));
    assert_eq!(job.error.as_deref(), Some("MongoDB down"));
    assert!(meta.claim_job("w", lease).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let resumed = meta.claim_job("w", lease).await.unwrap().expect("due now");
    assert_eq!(resumed.attempts, 2, "the outage did not count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_wait_for_their_backoff_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    backoff_suite(sqlite(dir.path()).await).await;
    let db = TestDatabase::create();
    backoff_suite(postgres(&db).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_security_store_behaviour() {
    let dir = tempfile::tempdir().unwrap();
    security_suite(sqlite(dir.path()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_security_store_behaviour() {
    let db = TestDatabase::create();
    security_suite(postgres(&db).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_behaviour() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(dir.path()).await;
    assert_eq!(MetadataStore::backend(store.as_ref()), "sqlite");
    suite(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_behaviour() {
    let db = TestDatabase::create();
    let store = postgres(&db).await;
    assert_eq!(MetadataStore::backend(store.as_ref()), "postgres");
    suite(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_are_idempotent_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    sqlite(dir.path()).await;
    let again = sqlite(dir.path()).await;
    again.ping().await.unwrap();
    let db = TestDatabase::create();
    postgres(&db).await;
    postgres(&db).await.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_replicas_never_claim_the_same_job() {
    let db = TestDatabase::create();
    let a = postgres(&db).await;
    let b = postgres(&db).await;
    for i in 0..30 {
        a.submit_document(doc(&format!("J{i}"), None))
            .await
            .unwrap();
    }
    let lease = Duration::from_secs(60);
    let claim_all = |s: Arc<SqlStore>, name: &'static str| async move {
        let mut ids = Vec::new();
        while let Some(j) = s.claim_job(name, lease).await.unwrap() {
            ids.push(j.job_id);
        }
        ids
    };
    let (x, y) = tokio::join!(
        tokio::spawn(claim_all(a, "a")),
        tokio::spawn(claim_all(b, "b"))
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let mut all: Vec<_> = x.iter().chain(y.iter()).collect();
    assert_eq!(all.len(), 30);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 30, "no job claimed twice");
}

/// Two workers on one job whose lease expired: the second takes it over; the first can neither
/// finish it nor fail it, and the second's finish makes its chunks live.
async fn expired_lease_suite(store: Arc<SqlStore>) {
    let meta: &dyn MetadataStore = store.as_ref();
    let docs: &dyn DocumentStore = store.as_ref();
    let submitted = meta.submit_document(doc("L", None)).await.unwrap();
    let slow = meta
        .claim_job("slow", Duration::from_millis(1))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let fast = meta
        .claim_job("fast", Duration::from_secs(60))
        .await
        .unwrap()
        .expect("an expired lease is taken over");
    assert_eq!((fast.job_id, fast.attempts), (submitted.job_id, 2));
    let chunk = |text: &str| StoredChunk {
        id: chunk_id(submitted.document_id, 1, 0),
        document_id: submitted.document_id,
        chunk_index: 0,
        text: text.into(),
        token_count: 1,
        offset: None,
    };
    assert_eq!(
        meta.finish_job(&slow, "slow", FinishedChunks::Inline(vec![chunk("slow")]))
            .await
            .unwrap(),
        Finish::LeaseLost
    );
    assert_eq!(
        meta.fail_job(&slow, "slow", "late", None, 5).await.unwrap(),
        None
    );
    assert!(
        !meta
            .renew_lease(slow.job_id, "slow", Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert_eq!(
        meta.finish_job(&fast, "fast", FinishedChunks::Inline(vec![chunk("fast")]))
            .await
            .unwrap(),
        Finish::Live
    );
    let live = docs
        .get_chunks(vec![chunk_id(submitted.document_id, 1, 0)])
        .await
        .unwrap();
    assert_eq!(live[0].text, "fast");
    assert_eq!(
        meta.get_job(submitted.job_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        JobStatus::Done
    );
    // The inventory sees the chunk and no orphans or stuck jobs; a repair re-index queues a job.
    let inventory = meta.inventory().await.unwrap();
    assert_eq!(inventory.documents.len(), 1);
    assert_eq!(inventory.documents[0].stored_chunks, 1);
    assert!(inventory.orphan_chunk_documents.is_empty() && inventory.stuck_jobs.is_empty());
    assert!(meta.reindex(submitted.document_id).await.unwrap());
    assert_eq!(meta.inventory().await.unwrap().documents[0].active_jobs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_worker_cannot_finish_or_fail_a_job_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    expired_lease_suite(sqlite(dir.path()).await).await;
    let db = TestDatabase::create();
    expired_lease_suite(postgres(&db).await).await;
}

/// `database.statement_timeout_ms` is a real statement timeout on PostgreSQL (it used to set only
/// the lock timeout): a statement running longer is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_statements_time_out() {
    let db = TestDatabase::create();
    let s = Settings::defaults_with(&[
        ("database.url".into(), db.url.clone()),
        ("database.statement_timeout_ms".into(), "300".into()),
    ])
    .unwrap();
    let store = SqlStore::connect(&s.database, &s.storage.data_dir)
        .await
        .unwrap();
    let slow = store.raw_execute("SELECT pg_sleep(2)").await;
    let err = slow.expect_err("cancelled").to_string();
    assert!(err.contains("statement timeout"), "{err}");
    store.raw_execute("SELECT 1").await.unwrap();
}

/// Bulk uploads: a batch is stored in one transaction with its jobs; jobs are claimed several at
/// a time (each once), finished together with one outcome each, and the batch reports them.
async fn batch_suite(store: Arc<SqlStore>) {
    let meta: &dyn MetadataStore = store.as_ref();
    let batch_id = Uuid::new_v4();
    let mut docs: Vec<NewDocument> = (0..6).map(|i| doc(&format!("B{i}"), None)).collect();
    docs[5].collection = "c2".into();
    docs[4].external_id = Some("bulk-ext".into());
    let batch = NewBatch {
        id: batch_id,
        collections: vec!["c1".into(), "c2".into()],
        total: 6,
    };
    let submitted = meta.submit_documents(docs, Some(batch)).await.unwrap();
    assert_eq!(submitted.len(), 6);
    let (view, collections) = meta.get_batch(batch_id).await.unwrap().unwrap();
    assert_eq!(collections, vec!["c1".to_string(), "c2".to_string()]);
    assert_eq!(
        (view.total, view.counts.queued, view.finished),
        (6, 6, false)
    );
    assert!(meta.get_batch(Uuid::new_v4()).await.unwrap().is_none());

    let lease = Duration::from_secs(60);
    let first = meta.claim_jobs("w1", lease, 4).await.unwrap();
    let second = meta.claim_jobs("w2", lease, 4).await.unwrap();
    assert_eq!((first.len(), second.len()), (4, 2));
    let mut ids: Vec<Uuid> = first.iter().chain(&second).map(|j| j.job_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "no job claimed twice");
    assert!(meta.claim_jobs("w3", lease, 4).await.unwrap().is_empty());
    let (view, _) = meta.get_batch(batch_id).await.unwrap().unwrap();
    assert_eq!(view.counts.running, 6);

    // One transaction, mixed outcomes: w1's own jobs go live, w2's job in w1's hands is a lost
    // lease, and a job whose document was replaced meanwhile is superseded.
    let replaced = first
        .iter()
        .chain(&second)
        .find(|j| j.document_id == submitted[4].document_id)
        .unwrap()
        .clone();
    let mut again = doc("B4 again", Some("bulk-ext"));
    again.collection = "c1".into();
    meta.submit_document(again).await.unwrap();
    let chunks = |n: usize| -> FinishedChunks {
        FinishedChunks::Inline(
            (0..n)
                .map(|i| StoredChunk {
                    id: Uuid::new_v4(),
                    document_id: Uuid::nil(),
                    chunk_index: i as i32,
                    text: format!("chunk {i}"),
                    token_count: 2,
                    offset: None,
                })
                .collect(),
        )
    };
    let mut finishing: Vec<_> = first
        .iter()
        .filter(|j| j.job_id != replaced.job_id)
        .map(|j| (j.clone(), chunks(2)))
        .collect();
    let stolen = second
        .iter()
        .find(|j| j.job_id != replaced.job_id)
        .unwrap()
        .clone();
    finishing.push((stolen.clone(), chunks(1)));
    let expected: Vec<Finish> = finishing
        .iter()
        .map(|(j, _)| {
            if j.job_id == stolen.job_id {
                Finish::LeaseLost
            } else {
                Finish::Live
            }
        })
        .collect();
    let outcomes = meta.finish_jobs("w1", finishing.clone()).await.unwrap();
    assert_eq!(outcomes, expected);
    let holder = if first.iter().any(|j| j.job_id == replaced.job_id) {
        "w1"
    } else {
        "w2"
    };
    assert_eq!(
        meta.finish_jobs(holder, vec![(replaced.clone(), chunks(1))])
            .await
            .unwrap(),
        vec![Finish::Superseded]
    );
    for (job, _) in finishing.iter().filter(|(j, _)| j.job_id != stolen.job_id) {
        let d = meta.get_document(job.document_id).await.unwrap().unwrap();
        assert_eq!((d.status, d.chunk_count), (DocumentStatus::Indexed, 2));
    }
    let (view, _) = meta.get_batch(batch_id).await.unwrap().unwrap();
    let live = expected.iter().filter(|f| **f == Finish::Live).count() as i64;
    assert_eq!(view.counts.done, live);
    assert_eq!(view.counts.failed, 1, "the superseded job");
    assert_eq!(view.failures.len(), 1);
    assert_eq!(view.failures[0].external_id.as_deref(), Some("bulk-ext"));
    assert!(
        view.failures[0].error.contains("superseded"),
        "{:?}",
        view.failures
    );
    assert!(!view.finished, "w2 still holds a job");
    let rest: Vec<_> = second
        .iter()
        .filter(|j| j.job_id != replaced.job_id)
        .map(|j| (j.clone(), chunks(1)))
        .collect();
    assert!(
        meta.finish_jobs("w2", rest)
            .await
            .unwrap()
            .iter()
            .all(|f| *f == Finish::Live)
    );
    let (view, _) = meta.get_batch(batch_id).await.unwrap().unwrap();
    assert!(view.finished, "{view:?}");
    assert_eq!(view.counts.done + view.counts.failed, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_claim_and_finish_together_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    batch_suite(sqlite(dir.path()).await).await;
    let db = TestDatabase::create();
    batch_suite(postgres(&db).await).await;
}

fn answer(
    id: &str,
    owner: &str,
    collection: Option<&str>,
    conversation: Option<&str>,
    at: i64,
) -> AnswerRecord {
    AnswerRecord {
        id: id.into(),
        owner: owner.into(),
        collection: collection.map(str::to_string),
        conversation_id: conversation.map(str::to_string),
        question: format!("question {id}"),
        rewritten: None,
        answer: format!("answer {id}"),
        generator: "extractive".into(),
        confidence: 0.5,
        created_at: at,
    }
}

fn rating(
    query_id: &str,
    owner: &str,
    rating: &str,
    collection: Option<&str>,
    at: i64,
) -> FeedbackRecord {
    FeedbackRecord {
        query_id: query_id.into(),
        owner: owner.into(),
        rating: rating.into(),
        comment: None,
        collection: collection.map(str::to_string),
        created_at: at,
    }
}

async fn answers_suite(store: Arc<SqlStore>) {
    let s: &dyn AnswerStore = store.as_ref();
    s.record_answer(answer("a1", "user:alice", Some("ops"), None, 1_000))
        .await
        .unwrap();
    assert_eq!(
        s.get_answer("a1").await.unwrap().unwrap().question,
        "question a1"
    );
    assert!(s.get_answer("nope").await.unwrap().is_none());

    // Conversations: turns in order, the conversation touched by each, listing per owner.
    for (id, owner, at) in [
        ("c1", "user:alice", 10),
        ("c2", "user:alice", 20),
        ("c3", "user:bob", 30),
    ] {
        s.create_conversation(ConversationRecord {
            id: id.into(),
            owner: owner.into(),
            title: id.into(),
            collection: None,
            created_at: at,
            updated_at: at,
        })
        .await
        .unwrap();
    }
    s.add_turn(answer("t1", "user:alice", None, Some("c1"), 100))
        .await
        .unwrap();
    s.add_turn(answer("t2", "user:alice", None, Some("c1"), 200))
        .await
        .unwrap();
    s.add_turn(answer("t3", "user:alice", None, Some("c1"), 300))
        .await
        .unwrap();
    let ids = |v: Vec<AnswerRecord>| v.into_iter().map(|a| a.id).collect::<Vec<_>>();
    assert_eq!(ids(s.turns("c1", 10).await.unwrap()), ["t1", "t2", "t3"]);
    assert_eq!(
        ids(s.turns("c1", 2).await.unwrap()),
        ["t2", "t3"],
        "the latest, oldest first"
    );
    let listed: Vec<String> = s
        .list_conversations("user:alice", 10, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, ["c1", "c2"], "c1 had the latest turn");
    assert_eq!(
        s.list_conversations("user:alice", 1, 1).await.unwrap()[0].id,
        "c2"
    );

    // A turn for a conversation deleted meanwhile is refused, not orphaned.
    assert!(s.delete_conversation("c1").await.unwrap());
    assert!(!s.delete_conversation("c1").await.unwrap());
    assert!(s.turns("c1", 10).await.unwrap().is_empty());
    assert!(s.get_answer("t1").await.unwrap().is_none());
    assert!(matches!(
        s.add_turn(answer("t4", "user:alice", None, Some("c1"), 400))
            .await,
        Err(doc_rag::storage::StorageError::Conflict(_))
    ));

    // Feedback: one per answer and owner, the latest wins; counts per collection.
    s.record_answer(answer("a2", "user:alice", None, None, 2_000))
        .await
        .unwrap();
    s.put_feedback(rating("a1", "user:alice", "up", Some("ops"), 5_000))
        .await
        .unwrap();
    s.put_feedback(rating("a1", "user:alice", "down", Some("ops"), 6_000))
        .await
        .unwrap();
    s.put_feedback(rating("a1", "user:bob", "up", Some("ops"), 7_000))
        .await
        .unwrap();
    s.put_feedback(rating("a2", "user:alice", "up", None, 8_000))
        .await
        .unwrap();
    let counts = s.feedback_counts(None).await.unwrap();
    let find = |c: Option<&str>| {
        counts
            .iter()
            .find(|x| x.collection.as_deref() == c)
            .cloned()
            .unwrap()
    };
    assert_eq!((find(Some("ops")).up, find(Some("ops")).down), (1, 1));
    assert_eq!((find(None).up, find(None).down), (1, 0));
    let recent = s.feedback_counts(Some(6_500)).await.unwrap();
    assert_eq!(recent.iter().map(|c| c.up + c.down).sum::<i64>(), 2);

    let listed = s
        .list_feedback(FeedbackQuery {
            collection: Some(Some("ops".into())),
            rating: Some("down".into()),
            since: None,
            limit: 10,
            offset: 0,
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].feedback.owner, "user:alice");
    assert_eq!(listed[0].question.as_deref(), Some("question a1"));
    let across = s
        .list_feedback(FeedbackQuery {
            collection: Some(None),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(across.len(), 1);
    assert_eq!(across[0].feedback.query_id, "a2");
    let all = s
        .list_feedback(FeedbackQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter()
            .map(|e| e.feedback.created_at)
            .collect::<Vec<_>>(),
        [8_000, 7_000, 6_000]
    );

    // Pruning removes old answers outside conversations; ratings keep their counts.
    s.add_turn(answer("t5", "user:alice", None, Some("c2"), 500))
        .await
        .unwrap();
    assert_eq!(
        s.prune_answers(1_500).await.unwrap(),
        1,
        "a1 only: t5 is a turn, a2 is newer"
    );
    assert!(s.get_answer("a1").await.unwrap().is_none());
    assert!(s.get_answer("t5").await.unwrap().is_some());
    let listed = s
        .list_feedback(FeedbackQuery {
            collection: Some(Some("ops".into())),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed.iter().all(|e| e.question.is_none()),
        "the answer is gone, its ratings stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_conversations_and_feedback_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    answers_suite(sqlite(dir.path()).await).await;
    let db = TestDatabase::create();
    answers_suite(postgres(&db).await).await;
}

use doc_rag::storage::webhooks::{
    AttemptOutcome, DeliveryStatus, NewSubscription, Recorded, WebhookEvent, WebhookStore,
};

fn subscription(collection: &str, events: &[WebhookEvent]) -> NewSubscription {
    NewSubscription {
        collection: collection.into(),
        url: "http://127.0.0.1:9/hook".into(),
        secret: "whsec_test".into(),
        events: events.to_vec(),
    }
}

/// Webhooks: deliveries are recorded with the change they report (a finished job, a failed one,
/// a deletion) for the enabled subscriptions of the collection that asked for the event; claims
/// are leased (never handed out twice, taken over when expired) and outcomes fenced; a failed
/// delivery counts towards disabling its subscription.
async fn webhook_suite(store: Arc<SqlStore>) {
    let meta: &dyn MetadataStore = store.as_ref();
    let hooks: &dyn WebhookStore = store.as_ref();
    let all = WebhookEvent::SUBSCRIBABLE;
    let a = hooks
        .create_subscription(subscription("c1", &all), 3)
        .await
        .unwrap()
        .unwrap();
    let b = hooks
        .create_subscription(subscription("c1", &[WebhookEvent::DocumentDeleted]), 3)
        .await
        .unwrap()
        .unwrap();
    let other = hooks
        .create_subscription(subscription("c2", &all), 3)
        .await
        .unwrap()
        .unwrap();
    assert!(
        hooks
            .create_subscription(subscription("c3", &all), 3)
            .await
            .unwrap()
            .is_none(),
        "the limit holds"
    );
    let listed = hooks.list_subscriptions().await.unwrap();
    assert_eq!(listed.len(), 3);
    // Created in the same millisecond, they list in id order: find `a` by its id.
    let listed_a = listed.iter().find(|s| s.id == a.id).unwrap();
    assert_eq!(listed_a.events, all.to_vec());
    assert_eq!(
        hooks.get_subscription(b.id).await.unwrap().unwrap().events,
        vec![WebhookEvent::DocumentDeleted]
    );

    // A finished job: one job.done for `a` (b did not ask for it, `other` is another collection).
    let lease = Duration::from_secs(60);
    let submitted = meta.submit_document(doc("W", None)).await.unwrap();
    let job = meta.claim_job("w", lease).await.unwrap().unwrap();
    assert_eq!(hooks.pending_deliveries().await.unwrap(), 0);
    meta.finish_job(&job, "w", FinishedChunks::Inline(Vec::new()))
        .await
        .unwrap();
    assert_eq!(hooks.pending_deliveries().await.unwrap(), 1);
    let claimed = hooks.claim_deliveries("d1", lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let d = &claimed[0];
    assert_eq!(
        (d.subscription_id, d.event.as_str(), d.attempts),
        (a.id, "job.done", 1)
    );
    assert_eq!(
        (d.url.as_str(), d.secret.as_str()),
        (a.url.as_str(), "whsec_test")
    );
    let payload: serde_json::Value = serde_json::from_str(&d.payload).unwrap();
    assert_eq!(payload["event"], "job.done");
    assert_eq!(payload["collection"], "c1");
    assert_eq!(payload["document_id"], submitted.document_id.to_string());
    assert_eq!(payload["job_id"], submitted.job_id.to_string());
    assert_eq!(payload["version"], 1);
    assert!(
        hooks
            .claim_deliveries("d2", lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "a leased delivery is not handed out twice"
    );

    // Outcomes are fenced by the lease owner; a failure with a retry puts it back, due later.
    let failed = AttemptOutcome::Failed {
        status: Some(500),
        error: "HTTP 500".into(),
    };
    assert_eq!(
        hooks
            .record_attempt(d, "d2", &failed, Some(Duration::ZERO), 5)
            .await
            .unwrap(),
        Recorded::LeaseLost
    );
    assert_eq!(
        hooks
            .record_attempt(d, "d1", &failed, Some(Duration::from_millis(300)), 5)
            .await
            .unwrap(),
        Recorded::Retrying
    );
    assert!(
        hooks
            .claim_deliveries("d1", lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "not due yet"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = hooks.claim_deliveries("d2", lease, 10).await.unwrap();
    assert_eq!((again.len(), again[0].attempts), (1, 2));
    assert_eq!(
        hooks
            .record_attempt(d, "d1", &AttemptOutcome::Delivered { status: 200 }, None, 5)
            .await
            .unwrap(),
        Recorded::LeaseLost,
        "the first attempt's worker no longer holds it"
    );
    assert_eq!(
        hooks
            .record_attempt(
                &again[0],
                "d2",
                &AttemptOutcome::Delivered { status: 204 },
                None,
                5
            )
            .await
            .unwrap(),
        Recorded::Delivered
    );
    let log = hooks.list_deliveries(a.id, 10, 0).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].status, log[0].attempts, log[0].last_status_code),
        (DeliveryStatus::Delivered, 2, Some(204))
    );
    assert!(log[0].delivered_at.is_some() && log[0].last_error.is_none());

    // A deletion: document.deleted for a and b. A lease that expired is taken over, and the
    // worker that lost it records nothing.
    meta.delete_document(submitted.document_id).await.unwrap();
    let slow = hooks
        .claim_deliveries("slow", Duration::from_millis(1), 10)
        .await
        .unwrap();
    assert_eq!(slow.len(), 2);
    assert!(slow.iter().all(|d| d.event == "document.deleted"));
    let mut subs: Vec<Uuid> = slow.iter().map(|d| d.subscription_id).collect();
    subs.sort();
    let mut expected = vec![a.id, b.id];
    expected.sort();
    assert_eq!(subs, expected);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let fast = hooks.claim_deliveries("fast", lease, 10).await.unwrap();
    assert_eq!(fast.len(), 2, "expired leases are taken over");
    assert!(fast.iter().all(|d| d.attempts == 2));
    for d in &slow {
        assert_eq!(
            hooks
                .record_attempt(
                    d,
                    "slow",
                    &AttemptOutcome::Delivered { status: 200 },
                    None,
                    5
                )
                .await
                .unwrap(),
            Recorded::LeaseLost
        );
    }
    for d in &fast {
        assert_eq!(
            hooks
                .record_attempt(
                    d,
                    "fast",
                    &AttemptOutcome::Delivered { status: 200 },
                    None,
                    5
                )
                .await
                .unwrap(),
            Recorded::Delivered
        );
    }

    // A job failed for good: job.failed for a, with the error. Giving up on it is the first
    // consecutive failure; with disable_after = 1 that disables the subscription.
    let s2 = meta.submit_document(doc("W2", None)).await.unwrap();
    let job = meta.claim_job("w", lease).await.unwrap().unwrap();
    meta.fail_job(&job, "w", "cannot parse", None, 5)
        .await
        .unwrap();
    let claimed = hooks.claim_deliveries("d1", lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let payload: serde_json::Value = serde_json::from_str(&claimed[0].payload).unwrap();
    assert_eq!(
        (payload["event"].as_str(), payload["error"].as_str()),
        (Some("job.failed"), Some("cannot parse"))
    );
    assert_eq!(
        hooks
            .record_attempt(&claimed[0], "d1", &failed, None, 1)
            .await
            .unwrap(),
        Recorded::Failed { disabled: true }
    );
    let disabled = hooks.get_subscription(a.id).await.unwrap().unwrap();
    assert!(!disabled.enabled);
    assert_eq!(disabled.consecutive_failures, 1);
    assert!(
        disabled
            .disabled_reason
            .as_deref()
            .unwrap_or("")
            .contains("HTTP 500"),
        "{:?}",
        disabled.disabled_reason
    );
    // A disabled subscription gets no new deliveries; the others still do.
    meta.delete_document(s2.document_id).await.unwrap();
    let claimed = hooks.claim_deliveries("d1", lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].subscription_id, b.id);
    // A ping is recorded for a disabled subscription too, leased to the caller.
    let ping = hooks
        .enqueue_ping(a.id, "api", lease)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((ping.event.as_str(), ping.attempts), ("ping", 1));
    assert!(
        hooks
            .enqueue_ping(Uuid::new_v4(), "api", lease)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        hooks
            .record_attempt(&ping, "api", &failed, Some(Duration::ZERO), 1)
            .await
            .unwrap(),
        Recorded::Retrying
    );
    assert!(
        hooks
            .claim_deliveries("d1", lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "a disabled subscription's deliveries wait"
    );
    let enabled = hooks.enable_subscription(a.id).await.unwrap().unwrap();
    assert!(enabled.enabled && enabled.disabled_reason.is_none());
    assert_eq!(enabled.consecutive_failures, 0);
    let resumed = hooks.claim_deliveries("d1", lease, 10).await.unwrap();
    assert_eq!(resumed.len(), 1, "enabled again, its ping is due");
    assert_eq!((resumed[0].id, resumed[0].attempts), (ping.id, 2));

    // The log: newest first, paged; pruning keeps what is pending.
    let log = hooks.list_deliveries(a.id, 10, 0).await.unwrap();
    assert_eq!(
        log.iter().map(|d| d.event.as_str()).collect::<Vec<_>>(),
        vec!["ping", "job.failed", "document.deleted", "job.done"]
    );
    assert_eq!(hooks.list_deliveries(a.id, 2, 1).await.unwrap().len(), 2);
    let pending = hooks.pending_deliveries().await.unwrap();
    assert_eq!(pending, 2, "a's ping (leased) and b's deletion");
    let pruned = hooks
        .prune_deliveries(chrono::Utc::now() + chrono::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(
        pruned, 4,
        "every settled delivery: a's job.done, deletion and job.failed, b's deletion"
    );
    assert_eq!(hooks.pending_deliveries().await.unwrap(), pending);

    // Deleting a subscription drops its deliveries.
    assert!(hooks.delete_subscription(a.id).await.unwrap());
    assert!(!hooks.delete_subscription(a.id).await.unwrap());
    assert!(hooks.list_deliveries(a.id, 10, 0).await.unwrap().is_empty());
    assert_eq!(hooks.pending_deliveries().await.unwrap(), 1);
    assert!(hooks.get_subscription(other.id).await.unwrap().is_some());
}

/// Two stores on one database (replicas) claiming concurrently never get the same delivery.
async fn concurrent_delivery_claims(a: Arc<SqlStore>, b: Arc<SqlStore>) {
    let sub = a
        .create_subscription(subscription("c1", &WebhookEvent::SUBSCRIBABLE), 10)
        .await
        .unwrap()
        .unwrap();
    // Pings whose lease has run out already: due for anyone.
    for _ in 0..30 {
        a.enqueue_ping(sub.id, "gone", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let lease = Duration::from_secs(60);
    let claim_all = |s: Arc<SqlStore>, name: &'static str| async move {
        let mut ids = Vec::new();
        loop {
            let batch = s.claim_deliveries(name, lease, 3).await.unwrap();
            if batch.is_empty() {
                return ids;
            }
            ids.extend(batch.iter().map(|d| d.id));
        }
    };
    let (x, y) = tokio::join!(
        tokio::spawn(claim_all(a, "a")),
        tokio::spawn(claim_all(b, "b"))
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let mut all: Vec<_> = x.iter().chain(y.iter()).collect();
    assert_eq!(all.len(), 30);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 30, "no delivery claimed twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_store_behaviour_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    webhook_suite(sqlite(dir.path()).await).await;
    let db = TestDatabase::create();
    webhook_suite(postgres(&db).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_never_claim_the_same_delivery_on_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_delivery_claims(sqlite(dir.path()).await, sqlite(dir.path()).await).await;
    let db = TestDatabase::create();
    concurrent_delivery_claims(postgres(&db).await, postgres(&db).await).await;
}
