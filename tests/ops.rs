//! The operations kit against a live instance: every metric the Grafana dashboards
//! (docker/grafana/dashboards) and the Prometheus alert rules (docker/prometheus/alerts.yml) read
//! is in a real `/metrics` scrape after real traffic, so no panel or alert watches a name the
//! service does not export. The names are extracted by `scripts/check-ops.py used-metrics`, the
//! same PromQL reader the static checks (`make ops-check`) use.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{ADMIN_EMAIL, ServerProcess, TestApp, login};
use serde_json::json;

/// Metrics of features not built yet, which the alerts and dashboards already watch.
const PLANNED: &[(&str, &str)] = &[];

fn used_metrics() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv_python = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/doc-rag-venv/bin/python");
    let python = if venv_python.exists() {
        venv_python
    } else {
        PathBuf::from("python3")
    };
    let out = Command::new(&python)
        .arg(root.join("scripts/check-ops.py"))
        .arg("used-metrics")
        .output()
        .expect("python runs scripts/check-ops.py (make check-services installs PyYAML)");
    assert!(
        out.status.success(),
        "check-ops.py used-metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Whether the exposition has a sample of `name` (a histogram's `_bucket` counts).
fn exported(scrape: &str, name: &str) -> bool {
    scrape.lines().filter(|l| !l.starts_with('#')).any(|l| {
        let series = l.split([' ', '{']).next().unwrap_or("");
        series == name || series == format!("{name}_bucket")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboards_and_alerts_is_in_a_live_scrape() {
    let used = used_metrics();
    assert!(used.len() > 30, "the extraction found too little: {used:?}");
    let app = TestApp::spawn().await;

    // Traffic through every module: uploads (one bulk), a document that fails, searches, an
    // answer, a deletion, a failed login and an unauthenticated request.
    let doc = app
        .ingest_text(
            "Harbour cranes",
            "The harbour has twelve cranes for containers.",
            json!({"collection": "ops"}),
        )
        .await;
    let bulk = app
        .client
        .post(app.api("/v1/documents/bulk?collection=ops"))
        .header("content-type", "application/x-ndjson")
        .body("{\"text\": \"Lighthouses guide ships at night.\"}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(bulk.status().as_u16(), 202);
    let (status, broken) = app
        .upload_file(
            "broken.pdf",
            "application/pdf",
            b"%PDF-1.4 garbage".to_vec(),
        )
        .await;
    assert_eq!(status, 202, "{broken}");
    let failed = app.wait_job(broken["job_id"].as_str().unwrap()).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    app.search("harbour cranes", "hybrid", 5).await;
    app.search("harbour cranes", "hybrid", 5).await;
    let (status, answer) = app
        .post_json(
            "/v1/query",
            &json!({"query": "How many cranes has the harbour?", "collection": "ops"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let id = doc["document_id"].as_str().unwrap();
    let r = app
        .client
        .delete(app.api(&format!("/v1/documents/{id}")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let (status, _) = login(&app.api(""), ADMIN_EMAIL, "not-the-password").await;
    assert_eq!(status, 401);
    let r = app.anon.get(app.api("/v1/documents")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = app
        .client
        .post(app.url("storage", "/v1/admin/backups"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);

    let scrape = app
        .client
        .get(app.api("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let missing: Vec<&String> = used
        .iter()
        .filter(|name| !PLANNED.iter().any(|(p, _)| p == name))
        .filter(|name| !exported(&scrape, name))
        .collect();
    assert!(
        missing.is_empty(),
        "watched by dashboards or alerts but not exported: {missing:?}\n{scrape}"
    );
    // Planned names stay planned only until they are exported.
    for (name, issue) in PLANNED {
        assert!(
            !exported(&scrape, name),
            "{name} ({issue}) is exported now: take it off PLANNED"
        );
    }
    assert!(
        scrape.contains(&format!(
            "build_info{{version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{scrape}"
    );
}

/// An admin changes the log level of a running process without a restart, through the API and
/// by `SIGHUP` (re-reading the config file); a bad level is a 400 and changes nothing; only an
/// admin may do it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_changes_at_run_time_by_api_and_by_sighup() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("doc-rag.toml");
    // Request lines (target doc_rag::telemetry) off at first.
    let quiet = "info,doc_rag::telemetry=warn";
    std::fs::write(&config, format!("[log]\nlevel = \"{quiet}\"\n")).unwrap();
    let server = ServerProcess::start_with_args(
        &data.path().join("data"),
        &["--config", config.to_str().unwrap()],
        &[],
        &[],
    );
    let admin = server.admin_client().await;
    let url = format!("{}/v1/admin/log-level", server.url("security"));
    let level = |admin: reqwest::Client, url: String| async move {
        let r = admin.get(url).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json::<serde_json::Value>().await.unwrap()["level"].clone()
    };
    assert_eq!(level(admin.clone(), url.clone()).await, quiet);

    let r = admin
        .put(&url)
        .json(&json!({"level": "info,doc_rag=[[bad"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "invalid_request", "{body}");
    let r = reqwest::Client::new()
        .put(&url)
        .json(&json!({"level": "debug"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(level(admin.clone(), url.clone()).await, quiet);

    // Request lines appear once the level allows them, and only then.
    let request_lines = || {
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("\"message\":\"request\""))
            .count()
    };
    let documents = format!("{}/v1/documents", server.url("api"));
    admin.get(&documents).send().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(request_lines(), 0);
    let r = admin
        .put(&url)
        .json(&json!({"level": "info"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(level(admin.clone(), url.clone()).await, "info");
    admin.get(&documents).send().await.unwrap();
    let mut waited = 0;
    while request_lines() == 0 && waited < 50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    }
    assert!(request_lines() > 0, "no request line after the change");

    // SIGHUP re-reads the file: request lines off again.
    std::fs::write(&config, "[log]\nlevel = \"warn\"\n").unwrap();
    let pid = server.child.id().to_string();
    let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(status.success());
    let mut now = serde_json::Value::Null;
    for _ in 0..50 {
        now = level(admin.clone(), url.clone()).await;
        if now == "warn" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(now, "warn", "SIGHUP applied the file's level");
    // The audit log records the API change.
    let audit = admin
        .get(format!(
            "{}/v1/admin/audit?event=log_level_changed",
            server.url("security")
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(audit.contains("log_level_changed"), "{audit}");
}

/// `doc-rag migrate --down N` reverts the newest migrations for a manual rollback, and the next
/// start (or `migrate`) upgrades the schema again.
#[test]
fn migrate_down_reverts_the_newest_migrations_and_up_restores_them() {
    let data = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_doc-rag"))
            .arg("migrate")
            .args(["--data-dir", data.path().to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(run(&[]).contains("up to date"));
    // The newest migration, its version (the digits of its folder name) and a table it creates.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    let mut folders: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    let newest = folders.last().unwrap().clone();
    let version: String = newest.chars().filter(char::is_ascii_digit).collect();
    let up = std::fs::read_to_string(root.join(&newest).join("up.sql")).unwrap();
    let table = up
        .split("CREATE TABLE ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the newest migration creates a table")
        .to_string();
    let db = data.path().join("doc-rag.sqlite3");
    let has_table = || {
        let c = Command::new("sqlite3")
            .arg(&db)
            .arg(format!(
                "SELECT name FROM sqlite_master WHERE name = '{table}'"
            ))
            .output();
        c.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let down = run(&["--down", "1"]);
    assert!(down.contains("1 migration(s) reverted"), "{down}");
    assert!(down.contains(&format!("reverted {version}")), "{down}");
    if let Ok(t) = has_table() {
        assert_eq!(t, "", "the newest migration ({newest}) is gone");
    }
    assert!(run(&[]).contains("up to date"));
    if let Ok(t) = has_table() {
        assert_eq!(t, table);
    }
}

/// One stream, followable by request: every JSON line a request causes carries its `request_id`,
/// on the HTTP server, on the embedder's own thread and in the ingestion job that runs after the
/// upload returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_follows_a_request_onto_the_embedder_thread_and_into_its_job() {
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        data.path(),
        &[
            "log.level=info,doc_rag::embedder=debug",
            // Every request is "slow": its warning lists the stages it went through.
            "log.slow_request_ms=1",
        ],
        &[],
    );
    let admin = server.admin_client().await;
    let r = admin
        .post(format!("{}/v1/documents?wait=true", server.url("api")))
        .header("x-request-id", "ops-upload-1")
        .json(&json!({"title": "Cranes", "text": "The harbour has twelve cranes.", "collection": "ops"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let doc: serde_json::Value = r.json().await.unwrap();
    let document_id = doc["document_id"].as_str().unwrap().to_string();
    let r = admin
        .post(format!("{}/v1/query", server.url("api")))
        .header("x-request-id", "ops-query-1")
        .json(&json!({"query": "How many cranes?", "collection": "ops"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let lines: Vec<serde_json::Value> = server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // On the line itself, also for a line of the request's `embed` span or of its job.
    let request_id = |l: &serde_json::Value| l["request_id"].as_str().map(str::to_string);
    let of = |rid: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| request_id(l).as_deref() == Some(rid))
            .collect()
    };
    let messages = |rid: &str| -> Vec<String> {
        of(rid)
            .iter()
            .map(|l| l["message"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let upload = messages("ops-upload-1");
    for expected in ["request", "embedded an ingestion batch", "document indexed"] {
        assert!(
            upload.iter().any(|m| m == expected),
            "{expected:?} not logged under the upload's request id: {upload:?}"
        );
    }
    let slow: Vec<String> = of("ops-query-1")
        .iter()
        .filter(|l| l["message"] == "slow request")
        .map(|l| l["stages"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        slow.len(),
        1,
        "one slow-request warning for the query: {slow:?}"
    );
    for stage in ["cache=", "embed=", "index=", "chunks=", "answer="] {
        assert!(
            slow[0].contains(stage),
            "{stage} missing from the warning's stages: {slow:?}"
        );
    }
    let query = messages("ops-query-1");
    for expected in ["request", "embedded a query batch"] {
        assert!(
            query.iter().any(|m| m == expected),
            "{expected:?} not logged under the query's request id: {query:?}"
        );
    }
    // Every line about the uploaded document carries the upload's id, and has a module.
    let about_doc: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l.to_string().contains(&document_id))
        .collect();
    assert!(!about_doc.is_empty());
    for l in about_doc {
        assert_eq!(request_id(l).as_deref(), Some("ops-upload-1"), "{l}");
        assert!(l["module"].is_string(), "{l}");
    }
    // Without trace export, no trace ids.
    assert!(lines.iter().all(|l| l.get("trace_id").is_none()));
}

/// With `telemetry.otlp_endpoint` set, spans of a query (the request, the query, the embedding,
/// the index, the chunk texts, the answer) reach an OTLP/HTTP receiver: here a small one of the
/// test's own that records what is posted to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_a_query_are_exported_over_otlp() {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Vec<u8>)>::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let (mut head, mut length) = (String::new(), 0usize);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            sink.lock().unwrap().push((head, body));
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
        }
    });

    let data = tempfile::tempdir().unwrap();
    let endpoint = format!("telemetry.otlp_endpoint=http://127.0.0.1:{port}/v1/traces");
    let server = ServerProcess::start(
        data.path(),
        &[
            &endpoint,
            "telemetry.service_name=doc-rag-ops-test",
            "log.level=info,doc_rag::embedder=debug",
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
    );
    let admin = server.admin_client().await;
    let r = admin
        .post(format!("{}/v1/documents?wait=true", server.url("api")))
        .json(&json!({"title": "Cranes", "text": "The harbour has twelve cranes.", "collection": "ops"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = admin
        .post(format!("{}/v1/query", server.url("api")))
        .json(&json!({"query": "How many cranes?", "collection": "ops"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let contains =
        |body: &[u8], needle: &str| body.windows(needle.len()).any(|w| w == needle.as_bytes());
    let mut exported = Vec::new();
    for _ in 0..100 {
        exported = received.lock().unwrap().clone();
        let all: Vec<u8> = exported.iter().flat_map(|(_, b)| b.clone()).collect();
        if ["embed", "index", "chunks", "answer"]
            .iter()
            .all(|s| contains(&all, s))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!exported.is_empty(), "nothing was exported");
    let (head, _) = &exported[0];
    assert!(head.starts_with("POST /v1/traces"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("application/x-protobuf"),
        "{head}"
    );
    let all: Vec<u8> = exported.iter().flat_map(|(_, b)| b.clone()).collect();
    for name in [
        "doc-rag-ops-test",
        "request",
        "query",
        "embed",
        "index",
        "chunks",
        "answer",
    ] {
        assert!(contains(&all, name), "no {name:?} in the exported spans");
    }

    // The query's log lines carry its trace: one trace id on all of them (the request line and
    // the embedder's line in the `embed` span), span ids that differ between the two, and both
    // ids as exported (16 and 8 bytes in the protobuf).
    let r = admin
        .post(format!("{}/v1/query", server.url("api")))
        .header("x-request-id", "ops-traced-1")
        .json(&json!({"query": "Which harbour?", "collection": "ops"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The access line is written when the response has gone out and reaches the test through the
    // server's stderr pipe, so it may arrive after the response: wait for it.
    let mut lines: Vec<serde_json::Value> = Vec::new();
    for _ in 0..100 {
        lines = server
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["request_id"] == "ops-traced-1")
            .collect();
        let logged = |m: &str| lines.iter().any(|l| l["message"] == m);
        if logged("request") && logged("embedded a query batch") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let ids = |message: &str| -> (String, String) {
        let l = lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line: {lines:?}"));
        let (t, s) = (l["trace_id"].as_str(), l["span_id"].as_str());
        let (t, s) = (
            t.unwrap_or_else(|| panic!("{l}")),
            s.unwrap_or_else(|| panic!("{l}")),
        );
        assert!(t.len() == 32 && s.len() == 16, "{l}");
        assert!(
            t.bytes().chain(s.bytes()).all(|b| b.is_ascii_hexdigit()),
            "{l}"
        );
        (t.to_string(), s.to_string())
    };
    let (trace, request_span) = ids("request");
    let (embed_trace, embed_span) = ids("embedded a query batch");
    assert_eq!(trace, embed_trace, "one trace for the request");
    assert_ne!(
        request_span, embed_span,
        "the embedder logs in a span of its own"
    );
    let bytes = |hex: &str| -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    };
    let (trace_bytes, span_bytes) = (bytes(&trace), bytes(&embed_span));
    let mut found = false;
    for _ in 0..100 {
        let all: Vec<u8> = received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, b)| b.clone())
            .collect();
        let has = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
        if has(&trace_bytes) && has(&span_bytes) {
            found = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(found, "the logged trace and span ids were not exported");
}
