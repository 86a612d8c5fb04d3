//! Limits on everything a caller controls, each a 4xx naming its `limits.*` key; request bodies
//! that stall and requests that hang are cut off; a job whose worker dies every time is failed
//! after `ingest.max_attempts` instead of looping; metric labels stay bounded.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{Backend, TestApp};
use doc_rag::config::Settings;
use doc_rag::storage::sql::SqlStore;
use doc_rag::storage::{MetadataStore, NewDocument};
use serde_json::{Map, Value, json};

fn assert_limit((status, body): (u16, Value), expected: u16, key: &str) {
    assert_eq!(status, expected, "{key}: {body}");
    assert_eq!(body["code"], "limit_exceeded", "{key}: {body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(&format!("limits.{key}")), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_controlled_size_has_a_limit_named_in_its_error() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("limits.metadata_max_bytes", "200"),
            ("limits.metadata_max_keys", "5"),
            ("limits.metadata_max_depth", "2"),
            ("limits.title_max_bytes", "40"),
            ("limits.external_id_max_bytes", "20"),
            ("limits.filter_max_conditions", "2"),
            ("limits.filter_max_values", "3"),
            ("limits.filter_max_depth", "2"),
            ("limits.query_max_bytes", "100"),
            ("limits.multipart_max_fields", "3"),
            ("limits.multipart_field_max_bytes", "50"),
            ("limits.extracted_text_max_bytes", "2000"),
            ("limits.chunks_per_document_max", "3"),
            ("ingest.chunk_max_tokens", "40"),
            ("ingest.chunk_overlap_tokens", "4"),
        ],
    )
    .await;
    let app = &app;
    let doc = |extra: Value| {
        let mut body = json!({"title": "t", "text": "some text"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let post = |body: Value| async move { app.post_json("/v1/documents", &body).await };

    assert_limit(
        post(doc(json!({"metadata": {"a": "x".repeat(300)}}))).await,
        413,
        "metadata_max_bytes",
    );
    assert_limit(
        post(doc(
            json!({"metadata": {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6}}),
        ))
        .await,
        400,
        "metadata_max_keys",
    );
    assert_limit(
        post(doc(json!({"metadata": {"a": {"b": {"c": 1}}}}))).await,
        400,
        "metadata_max_depth",
    );
    assert_limit(
        post(doc(json!({"title": "t".repeat(41)}))).await,
        413,
        "title_max_bytes",
    );
    assert_limit(
        post(doc(json!({"external_id": "e".repeat(21)}))).await,
        413,
        "external_id_max_bytes",
    );
    assert_limit(
        post(doc(json!({"text": "word ".repeat(500)}))).await,
        413,
        "extracted_text_max_bytes",
    );
    let (status, _) = post(doc(
        json!({"metadata": {"a": {"b": 1}}, "title": "t".repeat(40)}),
    ))
    .await;
    assert_eq!(status, 202, "at the limits is fine");

    // Limits only parsing can see fail the job, with the limit as its reason.
    let html = format!("<html><body><p>{}</p></body></html>", "word ".repeat(450));
    let (status, body) = app
        .post_json(
            "/v1/documents?wait=true",
            &json!({"title": "big", "text": html, "content_type": "text/html"}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("ingestion_failed")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("limits.extracted_text_max_bytes"),
        "{body}"
    );
    let many_chunks: String = (0..30)
        .map(|i| format!("Sentence number {i} talks about lanterns and sheds. "))
        .collect();
    assert!(many_chunks.len() < 2000);
    let (status, body) = app
        .post_json(
            "/v1/documents?wait=true",
            &doc(json!({"text": many_chunks})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("limits.chunks_per_document_max"),
        "{body}"
    );

    // Search and ask.
    let search = |body: Value| async move { app.post_json("/v1/search", &body).await };
    assert_limit(
        search(json!({"query": "q".repeat(101)})).await,
        413,
        "query_max_bytes",
    );
    assert_limit(
        app.post_json("/v1/query", &json!({"query": "q".repeat(101)}))
            .await,
        413,
        "query_max_bytes",
    );
    assert_limit(
        search(json!({"query": "q", "filter": {"a": 1, "b": 2, "c": 3}})).await,
        400,
        "filter_max_conditions",
    );
    assert_limit(
        search(json!({"query": "q", "filter": {"a": [1, 2, 3, 4]}})).await,
        400,
        "filter_max_values",
    );
    assert_limit(
        search(json!({"query": "q", "filter": {"a.b.c": 1}})).await,
        400,
        "filter_max_depth",
    );
    let (status, body) = search(json!({"query": "q", "collection": "not a name!"})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert_eq!(
        search(json!({"query": "q", "filter": {"a.b": [1, 2, 3]}}))
            .await
            .0,
        200
    );

    // Multipart: number of fields and the size of each non-file field.
    let form = |fields: &[(&str, String)]| {
        let mut f = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(b"hello lanterns".to_vec()).file_name("a.txt"),
        );
        for (k, v) in fields {
            f = f.text(k.to_string(), v.clone());
        }
        f
    };
    let upload = |f: reqwest::multipart::Form| async move {
        let r = app
            .client
            .post(app.api("/v1/documents"))
            .multipart(f)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap())
    };
    let four = form(&[
        ("title", "t".into()),
        ("collection", "default".into()),
        ("external_id", "x".into()),
    ]);
    assert_limit(upload(four).await, 400, "multipart_max_fields");
    assert_limit(
        upload(form(&[("title", "t".repeat(51))])).await,
        413,
        "multipart_field_max_bytes",
    );
    let (status, body) = upload(form(&[("title", "fine".into())])).await;
    assert_eq!(status, 202, "{body}");
}

/// Sends the head of a request and part of its body, then stalls; returns what the server said.
fn stall(port: u16, key: &str, path: &str) -> (String, Duration) {
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"title\":"
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    (
        String::from_utf8_lossy(&buf[..n]).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_and_hanging_requests_are_cut_off() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("limits.body_read_timeout_secs", "1"),
            ("limits.handler_timeout_secs", "3"),
            ("api.wait_timeout_secs", "2"),
        ],
    )
    .await;
    let port = app.ports["api"];
    let key = app.admin_key.clone();
    // An upload body that stops arriving: 408 after the read timeout.
    let (response, took) = tokio::task::spawn_blocking({
        let key = key.clone();
        move || stall(port, &key, "/v1/documents")
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        response.contains("limits.body_read_timeout_secs"),
        "{response}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // A JSON body that stops arriving: the request as a whole is cut at the handler timeout.
    let (response, took) = tokio::task::spawn_blocking(move || stall(port, &key, "/v1/search"))
        .await
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(
        response.contains("limits.handler_timeout_secs"),
        "{response}"
    );
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(15),
        "{took:?}"
    );
    // The server is fine afterwards.
    assert_eq!(
        app.client
            .get(app.api("/v1/documents"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_dies_every_time_fails_after_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    let settings =
        Settings::defaults_with(&[("storage.data_dir".into(), data_dir.clone())]).unwrap();
    let store = SqlStore::connect(&settings.database, &settings.storage.data_dir)
        .await
        .unwrap();
    let submitted = store
        .submit_document(NewDocument {
            collection: "default".into(),
            external_id: None,
            title: "poison".into(),
            content_type: "text/plain".into(),
            metadata: Map::new(),
            content: b"a document whose worker never comes back".to_vec(),
            content_ref: None,
            request_id: None,
        })
        .await
        .unwrap();
    // Two workers claim it and die: their leases lapse without a recorded failure.
    for worker in ["dead-1", "dead-2"] {
        let claimed = store
            .claim_job(worker, Duration::ZERO)
            .await
            .unwrap()
            .expect("claimable");
        assert_eq!(claimed.job_id, submitted.job_id);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(store);

    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("storage.data_dir", &data_dir),
            ("ingest.max_attempts", "2"),
        ],
    )
    .await;
    let job = app.wait_job(&submitted.job_id.to_string()).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("gave up after 2 attempts"),
        "{job}"
    );
    assert_eq!(job["attempts"], 3);
    // Other work goes on.
    app.ingest_text("healthy", "a healthy document about lanterns", json!({}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_http_methods_share_one_metric_label() {
    let app = TestApp::spawn().await;
    for method in ["FROBNICATE", "BREW", "PROPFIND"] {
        let r = app
            .anon
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                app.api("/v1/documents"),
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error());
    }
    let metrics = app
        .client
        .get(app.api("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("method=\"OTHER\""), "{metrics}");
    for method in ["FROBNICATE", "BREW", "PROPFIND"] {
        assert!(
            !metrics.contains(method),
            "{method} must not become a label value"
        );
    }
}
