//! Tests that try to break doc-rag: hostile documents, races between workers, uploads, deletes
//! and searches, damaged stores. After each, `verify` is clean and search returns only live text.

mod common;

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use common::{ServerProcess, TestApp};
use serde_json::{Value, json};

/// A PDF from object bodies; object `i` (1-based) is `objects[i-1]`. Streams are given as
/// (dictionary without /Length, raw bytes).
enum Obj {
    Dict(String),
    Stream(String, Vec<u8>),
}

fn pdf(objects: &[Obj]) -> Vec<u8> {
    let mut out = b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, obj) in objects.iter().enumerate() {
        offsets.push(out.len());
        writeln!(out, "{} 0 obj", i + 1).unwrap();
        match obj {
            Obj::Dict(d) => out.extend_from_slice(d.as_bytes()),
            Obj::Stream(d, bytes) => {
                write!(out, "<< {d} /Length {} >>\nstream\n", bytes.len()).unwrap();
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\nendstream");
            }
        }
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref_at = out.len();
    write!(out, "xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).unwrap();
    for offset in offsets {
        writeln!(out, "{offset:010} 00000 n ").unwrap();
    }
    write!(
        out,
        "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref_at}\n%%EOF\n",
        objects.len() + 1
    )
    .unwrap();
    out
}

const FONT: &str = "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>";

fn text_pdf(text: &str) -> Vec<u8> {
    pdf(&[
        Obj::Dict("<< /Type /Catalog /Pages 2 0 R >>".into()),
        Obj::Dict("<< /Type /Pages /Kids [3 0 R] /Count 1 >>".into()),
        Obj::Dict(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
             /Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>"
                .into(),
        ),
        Obj::Stream(
            String::new(),
            format!("BT\n/F1 24 Tf\n72 720 Td\n({text}) Tj\nET").into_bytes(),
        ),
        Obj::Dict(FONT.into()),
    ])
}

/// A form XObject that draws itself: unbounded recursion in a naive content interpreter.
fn self_drawing_form_pdf() -> Vec<u8> {
    pdf(&[
        Obj::Dict("<< /Type /Catalog /Pages 2 0 R >>".into()),
        Obj::Dict("<< /Type /Pages /Kids [3 0 R] /Count 1 >>".into()),
        Obj::Dict(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
             /Resources << /XObject << /X1 4 0 R >> /Font << /F1 6 0 R >> >> /Contents 5 0 R >>"
                .into(),
        ),
        Obj::Stream(
            "/Type /XObject /Subtype /Form /BBox [0 0 100 100] \
             /Resources << /XObject << /X1 4 0 R >> /Font << /F1 6 0 R >> >>"
                .into(),
            b"BT /F1 12 Tf (loop) Tj ET /X1 Do".to_vec(),
        ),
        Obj::Stream(String::new(), b"/X1 Do".to_vec()),
        Obj::Dict(FONT.into()),
    ])
}

/// A page content stream that inflates to `inflated` bytes.
fn flate_bomb_pdf(inflated: usize) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let block = vec![b' '; 1 << 20];
    for _ in 0..inflated / block.len() {
        encoder.write_all(&block).unwrap();
    }
    let compressed = encoder.finish().unwrap();
    pdf(&[
        Obj::Dict("<< /Type /Catalog /Pages 2 0 R >>".into()),
        Obj::Dict("<< /Type /Pages /Kids [3 0 R] /Count 1 >>".into()),
        Obj::Dict(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
             /Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>"
                .into(),
        ),
        Obj::Stream("/Filter /FlateDecode".into(), compressed),
        Obj::Dict(FONT.into()),
    ])
}

/// A page tree that claims a billion pages and lists itself among its kids.
fn huge_page_tree_pdf() -> Vec<u8> {
    let kids = std::iter::repeat_n("3 0 R", 20_000)
        .collect::<Vec<_>>()
        .join(" ");
    pdf(&[
        Obj::Dict("<< /Type /Catalog /Pages 2 0 R >>".into()),
        Obj::Dict(format!(
            "<< /Type /Pages /Kids [2 0 R {kids}] /Count 1000000000 >>"
        )),
        Obj::Dict(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
             /Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>"
                .into(),
        ),
        Obj::Stream(
            String::new(),
            b"BT /F1 24 Tf 72 720 Td (many pages) Tj ET".to_vec(),
        ),
        Obj::Dict(FONT.into()),
    ])
}

async fn upload_pdf(app: &TestApp, title: &str, bytes: &[u8]) -> Value {
    let (s, accepted) = app
        .post_json(
            "/v1/documents",
            &json!({
                "title": title,
                "content_base64": base64::engine::general_purpose::STANDARD.encode(bytes),
                "content_type": "application/pdf",
            }),
        )
        .await;
    assert_eq!(s, 202, "{title}: {accepted}");
    accepted
}

async fn hits_for(app: &TestApp, query: &str) -> Vec<Value> {
    app.search(query, "keyword", 20).await["results"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn texts(hits: &[Value]) -> Vec<String> {
    hits.iter()
        .map(|h| h["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn assert_verified(app: &TestApp) {
    let report = app.verify(false).await;
    assert_eq!(report["ok"], true, "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pdfs_fail_their_jobs_and_the_server_carries_on() {
    let app = TestApp::spawn_with(
        common::Backend::Sqlite,
        &[
            ("parser.memory_max_mb", "512"),
            ("parser.timeout_secs", "30"),
            ("parser.cpu_max_secs", "20"),
            ("ingest.max_attempts", "1"),
        ],
    )
    .await;
    let bomb_started = std::time::Instant::now();
    let bomb = flate_bomb_pdf(1 << 30);
    eprintln!(
        "built a {} byte flate bomb (1 GiB inflated) in {:?}",
        bomb.len(),
        bomb_started.elapsed()
    );
    let hostile = [
        ("self-drawing form", self_drawing_form_pdf()),
        ("flate bomb", bomb),
        ("truncated xref", {
            let whole = text_pdf("truncated before its cross-reference table");
            whole[..whole.len() * 2 / 3].to_vec()
        }),
        ("huge page tree", huge_page_tree_pdf()),
    ];
    let mut jobs = Vec::new();
    for (name, bytes) in &hostile {
        jobs.push((*name, upload_pdf(&app, name, bytes).await));
    }
    // An ordinary document submitted alongside indexes.
    let good = upload_pdf(&app, "good", &text_pdf("Sandboxed parsing keeps serving")).await;
    for (name, accepted) in &jobs {
        let job = app.wait_job(accepted["job_id"].as_str().unwrap()).await;
        assert_eq!(job["status"], "failed", "{name}: {job}");
        let error = job["error"].as_str().unwrap();
        eprintln!("{name}: {error}");
        let expected = match *name {
            "self-drawing form" => "stack overflow",
            "flate bomb" => "memory allocation",
            "truncated xref" => "cross reference",
            _ => "no text",
        };
        assert!(error.contains(expected), "{name}: {job}");
    }
    let job = app.wait_job(good["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "done", "{job}");
    // The server is alive and the pool replaced its dead workers.
    let (s, _) = app.get_json(&app.api("/ready")).await;
    assert_eq!(s, 200);
    let after = upload_pdf(&app, "after", &text_pdf("Parsing after crashes works")).await;
    let job = app.wait_job(after["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "done", "{job}");
    assert!(
        texts(&hits_for(&app, "crashes").await)
            .iter()
            .any(|t| t.contains("Parsing after crashes works"))
    );
    assert_verified(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reupload_while_indexing_leaves_only_the_new_version_live() {
    let app = TestApp::spawn().await;
    // A long first version, so the second arrives while it is still being indexed.
    let old: String = (0..400)
        .map(|i| format!("Obsolete paragraph {i} about zebras and their stripes. "))
        .collect();
    let (s, first) = app
        .post_json(
            "/v1/documents",
            &json!({"title": "Animals", "text": old, "external_id": "animals"}),
        )
        .await;
    assert_eq!(s, 202, "{first}");
    let (s, second) = app
        .post_json(
            "/v1/documents",
            &json!({"title": "Animals", "text": "Current text about giraffes only.", "external_id": "animals"}),
        )
        .await;
    assert_eq!(s, 202, "{second}");
    assert_eq!(first["document_id"], second["document_id"]);
    let _ = app.wait_job(first["job_id"].as_str().unwrap()).await;
    let job = app.wait_job(second["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "done", "{job}");
    assert!(
        hits_for(&app, "zebras").await.is_empty(),
        "old text is gone"
    );
    assert_eq!(
        texts(&hits_for(&app, "giraffes").await),
        vec!["Current text about giraffes only."]
    );
    assert_verified(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_while_indexing_and_while_searching_leaves_nothing_behind() {
    let app = TestApp::spawn_with(common::Backend::Sqlite, &[("ingest.lease_secs", "2")]).await;
    let long: String = (0..400)
        .map(|i| format!("Paragraph {i} about quokkas living on Rottnest island. "))
        .collect();
    let (s, accepted) = app
        .post_json("/v1/documents", &json!({"title": "Quokkas", "text": long}))
        .await;
    assert_eq!(s, 202);
    let id = accepted["document_id"].as_str().unwrap().to_string();
    // Searches keep running (and filling the cache) while the document is indexed and deleted.
    let searching = {
        let client = app.client.clone();
        let url = app.api("/v1/search");
        tokio::spawn(async move {
            for _ in 0..60 {
                let _ = client
                    .post(&url)
                    .json(&json!({"query": "quokkas Rottnest", "mode": "keyword"}))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Delete once the worker has it.
    for _ in 0..200 {
        let (_, doc) = app.get_json(&app.api(&format!("/v1/documents/{id}"))).await;
        if doc["status"] != "queued" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = app
        .client
        .delete(app.api(&format!("/v1/documents/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let deleted: Value = r.json().await.unwrap();
    assert_eq!(deleted["removed"]["cache_invalidated"], true, "{deleted}");
    searching.await.unwrap();
    // The sweeper settles the deletion once no worker can still write (two leases).
    let mut report = Value::Null;
    for _ in 0..100 {
        report = app.verify(false).await;
        if report["ok"] == true && app.stats().await["vectors"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(app.stats().await["vectors"], 0);
    assert!(hits_for(&app, "quokkas Rottnest").await.is_empty());
    let (s, _) = app.get_json(&app.api(&format!("/v1/documents/{id}"))).await;
    assert_eq!(s, 404);
    let (_, list) = app.get_json(&app.api("/v1/documents")).await;
    assert_eq!(
        list["documents"].as_array().map(Vec::len),
        Some(0),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_damage_and_repair_fixes_it() {
    let app = TestApp::spawn().await;
    let a = app
        .ingest_text("Alpha", "Alpha text about lighthouses.", json!({}))
        .await;
    app.ingest_text("Beta", "Beta text about harbours.", json!({}))
        .await;
    assert_verified(&app).await;
    let a_id: uuid::Uuid = a["document_id"].as_str().unwrap().parse().unwrap();

    // Damage: Alpha's vectors vanish; vectors of a document that never existed appear.
    let vectors = &app.state.storage.vectors;
    vectors.delete_document(a_id).await.unwrap();
    let ghost = uuid::Uuid::new_v4();
    let dim = app.settings.embedder.dimension;
    vectors
        .upsert(vec![doc_rag::storage::vector::IndexPoint {
            id: doc_rag::storage::chunk_id(ghost, 1, 0),
            dense: vec![1.0 / (dim as f32).sqrt(); dim],
            sparse: Default::default(),
            payload: doc_rag::storage::vector::ChunkPayload {
                document_id: ghost,
                collection: "default".into(),
                chunk_index: 0,
                version: 1,
                title: "ghost".into(),
                metadata: Default::default(),
            },
        }])
        .await
        .unwrap();

    let report = app.verify(false).await;
    assert_eq!(report["ok"], false);
    let kinds: Vec<(&str, &str)> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["kind"].as_str().unwrap(), p["id"].as_str().unwrap()))
        .collect();
    let a_str = a_id.to_string();
    let ghost_str = ghost.to_string();
    assert!(
        kinds.contains(&("missing_vectors", a_str.as_str())),
        "{report:#}"
    );
    assert!(
        kinds.contains(&("orphan_vectors", ghost_str.as_str())),
        "{report:#}"
    );
    assert_eq!(report["repaired"], json!([]), "check mode changes nothing");

    let repaired = app.verify(true).await;
    assert_eq!(
        repaired["repaired"].as_array().unwrap().len(),
        2,
        "{repaired:#}"
    );
    let mut report = Value::Null;
    for _ in 0..100 {
        report = app.verify(false).await;
        if report["ok"] == true && report["checked"]["in_flight"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["checked"]["in_flight"], 0, "{report:#}");
    assert_eq!(
        texts(&hits_for(&app, "lighthouses").await),
        vec!["Alpha text about lighthouses."],
        "re-indexed"
    );
}

/// A document whose every attempt dies with its worker (here: the whole process, SIGKILLed) is
/// failed after `max_attempts` claims instead of being retried forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_worker_every_time_is_failed_not_retried_forever() {
    let dir = tempfile::tempdir().unwrap();
    let sets = ["ingest.max_attempts=2", "ingest.workers=1"];
    // Thousands of chunks: indexing takes long enough to be killed in the middle every time.
    let text: String = (0..6000)
        .map(|i| format!("Sentence number {i} of a very long document about nothing much. "))
        .collect();
    let mut job_id = String::new();
    for round in 0..3 {
        let mut server = ServerProcess::start(dir.path(), &sets, &[]);
        let client = server.admin_client().await;
        let api = server.url("api");
        if round == 0 {
            let r = client
                .post(format!("{api}/v1/documents"))
                .json(&json!({"title": "Endless", "text": text}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 202);
            job_id = r.json::<Value>().await.unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_string();
        }
        // Wait until a worker is on it (attempt counted), then kill the process.
        let job = poll_job(&client, &api, &job_id, |s| s != "queued", 600).await;
        if round < 2 {
            assert_eq!(job["status"], "running", "round {round}: {job}");
            server.child.kill().unwrap();
            let _ = server.child.wait();
            continue;
        }
        // Third start: the job was claimed twice without finishing; the third claim gives up.
        let job = poll_job(&client, &api, &job_id, |s| s == "failed", 300).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert!(
            job["error"]
                .as_str()
                .unwrap()
                .contains("gave up after 2 attempts"),
            "{job}"
        );
        server.stop();
    }
}

/// Polls a job (every 20 ms, at most `tries` times) until `until(status)`; returns the job.
async fn poll_job(
    client: &reqwest::Client,
    api: &str,
    job_id: &str,
    until: impl Fn(&str) -> bool,
    tries: usize,
) -> Value {
    let mut job = Value::Null;
    for _ in 0..tries {
        job = client
            .get(format!("{api}/v1/jobs/{job_id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if until(job["status"].as_str().unwrap_or_default()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    job
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A bounded load test: concurrent uploads of 30 KB documents and a query flood for a fixed
/// time, against limits set low enough to be reached. Only 503s (with Retry-After) may fail;
/// queries keep being answered; afterwards every accepted document is indexed exactly once and
/// the stores agree. Prints peak RSS and the error counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_is_refused_with_503_and_every_accepted_document_indexes_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        dir.path(),
        &["ingest.max_concurrent_uploads=2", "embedder.query_queue=4"],
        &[],
    );
    let pid = server.child.id();
    let client = server.admin_client().await;
    let api = server.url("api");
    let load = Duration::from_secs(15);
    let started = std::time::Instant::now();
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        (String, u16),
        u64,
    >::new()));
    let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for u in 0..6 {
        let (client, api, statuses, accepted) = (
            client.clone(),
            api.clone(),
            statuses.clone(),
            accepted.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while started.elapsed() < load && n < 3 {
                let text: String = (0..500)
                    .map(|i| format!("Uploader {u} document {n} sentence {i} about load. "))
                    .collect();
                let r = client
                    .post(format!("{api}/v1/documents"))
                    .json(&json!({"title": format!("load {u} {n}"), "text": text,
                                  "external_id": format!("load-{u}-{n}")}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                if status == 503 {
                    assert!(r.headers().contains_key("retry-after"));
                }
                *statuses
                    .lock()
                    .unwrap()
                    .entry(("upload".into(), status))
                    .or_default() += 1;
                if status == 202 {
                    let body: Value = r.json().await.unwrap();
                    accepted
                        .lock()
                        .unwrap()
                        .push(body["job_id"].as_str().unwrap().into());
                    n += 1;
                }
            }
        }));
    }
    for q in 0..8 {
        let (client, api, statuses) = (client.clone(), api.clone(), statuses.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while started.elapsed() < load {
                let r = client
                    .post(format!("{api}/v1/search"))
                    .header("cache-control", "no-cache")
                    .json(&json!({"query": format!("sentence about load {q} {i}"), "top_k": 5}))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                *statuses
                    .lock()
                    .unwrap()
                    .entry(("search".into(), status))
                    .or_default() += 1;
                i += 1;
            }
        }));
    }
    let mut samples = Vec::new();
    while started.elapsed() < load {
        samples.push(rss_kib(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let jobs = accepted.lock().unwrap().clone();
    let mut done = 0;
    for job_id in &jobs {
        let job = poll_job(
            &client,
            &api,
            job_id,
            |s| s == "done" || s == "failed",
            6000,
        )
        .await;
        assert_ne!(job["status"], "failed", "{job}");
        if job["status"] == "done" {
            done += 1;
        }
    }
    let statuses = statuses.lock().unwrap().clone();
    let peak = rss_kib(pid, "VmHWM:");
    println!(
        "overload: {statuses:?}; {} uploads accepted; RSS samples (MiB) {:?}; peak RSS {} MiB",
        jobs.len(),
        samples.iter().map(|k| k / 1024).collect::<Vec<_>>(),
        peak / 1024
    );
    for ((kind, status), n) in &statuses {
        assert!(
            matches!(status, 200 | 202 | 429 | 503),
            "{kind} answered {status} ({n} times)"
        );
    }
    assert!(
        statuses.get(&("search".into(), 200)).copied().unwrap_or(0) > 0,
        "queries answered"
    );
    assert!(
        statuses.keys().any(|(_, s)| *s == 503),
        "the limits were reached: {statuses:?}"
    );
    assert_eq!(done, jobs.len(), "every accepted upload indexed");
    let stats: Value = client
        .get(server.url("storage") + "/v1/stats")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["documents"], jobs.len(), "{stats}");
    assert_eq!(stats["documents_indexed"], jobs.len(), "{stats}");
    assert_eq!(
        stats["chunks"], stats["indexed_chunks"],
        "exactly once: {stats}"
    );
    assert_eq!(stats["chunks"], stats["vectors"], "exactly once: {stats}");
    let report: Value = client
        .post(server.url("storage") + "/v1/admin/verify")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    assert!(peak < 3 * 1024 * 1024, "peak RSS {peak} KiB");
}

/// A document with more chunks than one embedding request may carry indexes, in several
/// requests, instead of failing on every attempt (here 16 texts per request, so the 20,000-chunk
/// case is shown at test scale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_larger_than_one_embedding_request_indexes() {
    let app = TestApp::spawn_with(common::Backend::Sqlite, &[("embedder.max_texts", "16")]).await;
    let text: String = (0..600)
        .map(|i| format!("Sentence {i} of a long document about batching work. "))
        .collect();
    let accepted = app.ingest_text("Long", &text, json!({})).await;
    let (_, doc) = app
        .get_json(&app.api(&format!(
            "/v1/documents/{}",
            accepted["document_id"].as_str().unwrap()
        )))
        .await;
    let chunks = doc["chunk_count"].as_u64().unwrap();
    assert!(
        chunks > 16,
        "more chunks than one request carries: {chunks}"
    );
    let stats = app.stats().await;
    assert_eq!(stats["vectors"], chunks, "{stats}");
    assert_verified(&app).await;
}
