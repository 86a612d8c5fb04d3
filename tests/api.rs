//! End-to-end behaviour of the public API on embedded defaults (SQLite, in-process Qdrant, the
//! real embedding model), driven over HTTP.

mod common;

use base64::Engine;
use common::{TestApp, runbook};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_module_port_answers_health_and_ready() {
    let app = TestApp::spawn().await;
    for module in [
        "api", "security", "query", "response", "embedder", "storage",
    ] {
        let (status, body) = app.get_json(&app.url(module, "/health")).await;
        assert_eq!(status, 200, "{module} /health");
        assert_eq!(body["module"], module);
        let (status, body) = app.get_json(&app.url(module, "/ready")).await;
        assert_eq!(status, 200, "{module} /ready: {body}");
        assert_eq!(body["status"], "ready");
        let metrics = app
            .client
            .get(app.url(module, "/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(metrics.status(), 200);
    }
    let metrics = app
        .client
        .get(app.url("api", "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    assert!(metrics.contains("http_request_duration_seconds_bucket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_question_cites_the_redis_memory_chunk() {
    let app = TestApp::spawn().await;
    let accepted = app
        .ingest_text(
            "Operations Runbook",
            &runbook(),
            json!({"content_type": "text/markdown"}),
        )
        .await;
    let doc_id = accepted["document_id"].as_str().unwrap().to_string();

    let (status, answer) = app
        .post_json(
            "/v1/query",
            &json!({"query": "How do I check Redis memory usage?"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let citations = answer["citations"].as_array().unwrap();
    assert!(!citations.is_empty());
    let first = &citations[0];
    assert_eq!(first["n"], 1);
    assert_eq!(first["document_id"], doc_id.as_str());
    // The cited chunk holds the command.
    let chunk_id = first["chunk_id"].as_str().unwrap();
    let search = app
        .search("How do I check Redis memory usage?", "hybrid", 5)
        .await;
    let top = &search["results"][0];
    assert_eq!(top["chunk_id"], chunk_id);
    let text = top["text"].as_str().unwrap();
    assert!(
        text.contains("redis-cli") && text.contains("info memory"),
        "top chunk: {text}"
    );
    let answer_text = answer["answer"].as_str().unwrap();
    assert!(answer_text.contains("[1]"), "{answer_text}");
    assert!(answer_text.contains("info memory"), "{answer_text}");
    let confidence = answer["confidence"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&confidence) && confidence > 0.3,
        "{confidence}"
    );
    assert_eq!(answer["cached"], false);

    let (_, again) = app
        .post_json(
            "/v1/query",
            &json!({"query": "How do I check Redis memory usage?"}),
        )
        .await;
    assert_eq!(again["cached"], true, "a repeated query is a cache hit");
    assert_eq!(again["answer"], answer["answer"]);

    // `Cache-Control: no-cache` (and `max-age=0`, `Pragma: no-cache`) computes afresh, for
    // searches and answers alike; a plain repeat is served from the cache again.
    for (path, body) in [
        (
            "/v1/query",
            json!({"query": "How do I check Redis memory usage?"}),
        ),
        (
            "/v1/search",
            json!({"query": "How do I check Redis memory usage?", "top_k": 5}),
        ),
    ] {
        for (header, value) in [
            ("cache-control", "no-cache"),
            ("cache-control", "public, max-age=0"),
            ("pragma", "no-cache"),
        ] {
            let fresh: Value = app
                .client
                .post(app.api(path))
                .header(header, value)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(fresh["cached"], false, "{path} {header}: {value}: {fresh}");
        }
        let (_, cached) = app.post_json(path, &body).await;
        assert_eq!(cached["cached"], true, "{path}: {cached}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_modes_filters_and_collections() {
    let app = TestApp::spawn().await;
    app.ingest_text(
        "Paris",
        "Paris is the capital and most populous city of France.",
        json!({"metadata": {"lang": "en", "year": 2020}}),
    )
    .await;
    app.ingest_text(
        "Berlin",
        "Berlin is the capital of Germany and its largest city.",
        json!({"metadata": {"lang": "de", "year": 2021}}),
    )
    .await;
    app.ingest_text(
        "Zebra",
        "Zebras are African equines with black-and-white striped coats.",
        json!({"collection": "animals"}),
    )
    .await;

    for mode in ["hybrid", "dense", "keyword"] {
        let body = app.search("capital of France", mode, 3).await;
        assert_eq!(body["mode"], mode);
        let results = body["results"].as_array().unwrap();
        assert!(!results.is_empty(), "{mode}");
        assert_eq!(results[0]["title"], "Paris", "{mode}: {body}");
        let scores: Vec<f64> = results
            .iter()
            .map(|r| r["score"].as_f64().unwrap())
            .collect();
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]),
            "{mode} scores descend: {scores:?}"
        );
    }
    let (status, body) = app
        .post_json(
            "/v1/search",
            &json!({"query": "capital city", "filter": {"lang": "de"}}),
        )
        .await;
    assert_eq!(status, 200);
    let titles: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, vec!["Berlin"]);
    let (_, body) = app
        .post_json(
            "/v1/search",
            &json!({"query": "capital city", "filter": {"year": [2020, 2021]}}),
        )
        .await;
    assert_eq!(body["results"].as_array().unwrap().len(), 2);
    let (_, body) = app
        .post_json(
            "/v1/search",
            &json!({"query": "striped animal", "collection": "animals"}),
        )
        .await;
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["collection"], "animals");
    let (status, body) = app
        .post_json(
            "/v1/search",
            &json!({"query": "x", "filter": {"lang": {"$ne": 1}}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // Internal query port serves the same search.
    let r = app
        .client
        .post(app.url("query", "/v1/search"))
        .json(&json!({"query": "capital of France"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, collections) = app.get_json(&app.api("/v1/collections")).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = collections["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["animals", "default"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_json_errors() {
    let app = TestApp::spawn_with(common::Backend::Sqlite, &[("api.max_body_bytes", "4096")]).await;
    let send = |body: &'static str, ct: &'static str| {
        let app = &app;
        async move {
            let r = app
                .client
                .post(app.api("/v1/documents"))
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (s, b) = send("{not json", "application/json").await;
    assert_eq!(
        (s, b["code"].as_str().unwrap()),
        (400, "malformed_json"),
        "{b}"
    );
    // Passage corpora have no titles: missing and empty titles are accepted.
    let (s, b) = send(r#"{"text": "hello"}"#, "application/json").await;
    assert_eq!(s, 202, "{b}");
    let (s, b) = send(r#"{"title": "", "text": "hello"}"#, "application/json").await;
    assert_eq!(s, 202, "{b}");
    let (s, b) = send(r#"{"title": "t", "text": "   "}"#, "application/json").await;
    assert_eq!(s, 400, "{b}");
    assert!(b["message"].as_str().unwrap().contains("empty"));
    let (s, b) = send(
        r#"{"title": "t", "text": "x", "bogus": 1}"#,
        "application/json",
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str().unwrap()),
        (400, "invalid_request"),
        "{b}"
    );
    let (s, b) = send("hello", "text/plain").await;
    assert_eq!(s, 415, "{b}");
    let (s, b) = app
        .post_json(
            "/v1/documents",
            &json!({"title": "x", "content_base64": "aGVsbG8=", "content_type": "image/png"}),
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str().unwrap()),
        (415, "unsupported_media_type"),
        "{b}"
    );
    let big = "a".repeat(5000);
    let (s, b) = app
        .post_json("/v1/documents", &json!({"title": "big", "text": big}))
        .await;
    assert_eq!(
        (s, b["code"].as_str().unwrap()),
        (413, "payload_too_large"),
        "{b}"
    );
    let (s, b) = app
        .post_json("/v1/search", &json!({"query": "x".repeat(5000)}))
        .await;
    assert_eq!(s, 413, "{b}");
    let not_pdf = base64::engine::general_purpose::STANDARD.encode(b"this is not a pdf");
    let (s, b) = app.post_json("/v1/documents", &json!({"title": "x.pdf", "content_base64": not_pdf, "content_type": "application/pdf"})).await;
    assert_eq!(
        (s, b["code"].as_str().unwrap()),
        (422, "unparseable_document"),
        "{b}"
    );
    let (s, b) = app
        .get_json(&app.api(&format!("/v1/documents/{}", uuid::Uuid::new_v4())))
        .await;
    assert_eq!((s, b["code"].as_str().unwrap()), (404, "not_found"));
    let (s, _) = app
        .get_json(&app.api(&format!("/v1/jobs/{}", uuid::Uuid::new_v4())))
        .await;
    assert_eq!(s, 404);
    let (s, b) = app.get_json(&app.api("/v1/documents/not-a-uuid")).await;
    assert_eq!((s, b["code"].as_str().unwrap()), (400, "invalid_id"));
    let r = app
        .client
        .delete(app.api(&format!("/v1/documents/{}", uuid::Uuid::new_v4())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (s, b) = app.post_json("/v1/search", &json!({"top_k": 3})).await;
    assert_eq!(s, 400);
    assert!(b["message"].as_str().unwrap().contains("query"), "{b}");
    let (s, _) = app
        .post_json("/v1/search", &json!({"query": "x", "top_k": 0}))
        .await;
    assert_eq!(s, 400);
    let (s, _) = app
        .post_json("/v1/search", &json!({"query": "x", "mode": "telepathy"}))
        .await;
    assert_eq!(s, 400);
    let (s, b) = app.get_json(&app.api("/v2/nothing")).await;
    assert_eq!((s, b["code"].as_str().unwrap()), (404, "not_found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_pdf_fails_its_job_with_the_reason() {
    let app = TestApp::spawn().await;
    let corrupt = base64::engine::general_purpose::STANDARD
        .encode(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage");
    let (s, accepted) = app
        .post_json("/v1/documents", &json!({"title": "broken.pdf", "content_base64": corrupt, "content_type": "application/pdf"}))
        .await;
    assert_eq!(s, 202, "{accepted}");
    let job = app.wait_job(accepted["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "failed");
    assert!(job["error"].as_str().unwrap().contains("parse"), "{job}");
    let (_, doc) = app
        .get_json(&app.api(&format!(
            "/v1/documents/{}",
            accepted["document_id"].as_str().unwrap()
        )))
        .await;
    assert_eq!(doc["status"], "failed");
    let (s, body) = app
        .post_json("/v1/documents?wait=true", &json!({"title": "broken2.pdf", "content_base64": corrupt, "content_type": "application/pdf"}))
        .await;
    assert_eq!(
        (s, body["code"].as_str().unwrap()),
        (422, "ingestion_failed"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_by_external_id_and_delete_reach_every_store() {
    let app = TestApp::spawn().await;
    let first = app
        .ingest_text(
            "Notes",
            "The aardvark eats termites at night.",
            json!({"external_id": "notes-1"}),
        )
        .await;
    assert_eq!(first["replaced"], false);
    let hits = app.search("aardvark termites", "keyword", 5).await;
    assert_eq!(hits["results"].as_array().unwrap().len(), 1);

    let second = app
        .ingest_text(
            "Notes",
            "The pangolin is covered in scales.",
            json!({"external_id": "notes-1"}),
        )
        .await;
    assert_eq!(second["replaced"], true);
    assert_eq!(
        second["document_id"], first["document_id"],
        "same document, new version"
    );
    let old = app.search("aardvark termites", "keyword", 5).await;
    assert!(
        old["results"].as_array().unwrap().is_empty(),
        "old content is gone: {old}"
    );
    let new = app.search("pangolin scales", "keyword", 5).await;
    assert_eq!(new["results"].as_array().unwrap().len(), 1);
    let id = second["document_id"].as_str().unwrap();
    let (_, doc) = app.get_json(&app.api(&format!("/v1/documents/{id}"))).await;
    assert_eq!(doc["version"], 2);
    assert_eq!(doc["status"], "indexed");

    let (_, listed) = app.get_json(&app.api("/v1/documents")).await;
    assert_eq!(listed["documents"].as_array().unwrap().len(), 1);

    let r = app
        .client
        .delete(app.api(&format!("/v1/documents/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let gone = app.search("pangolin scales", "keyword", 5).await;
    assert!(
        gone["results"].as_array().unwrap().is_empty(),
        "cache invalidated and points removed: {gone}"
    );
    let stats = app.stats().await;
    assert_eq!(stats["documents"], 0);
    assert_eq!(stats["chunks"], 0);
    assert_eq!(stats["vectors"], 0);
    let (s, _) = app.get_json(&app.api(&format!("/v1/documents/{id}"))).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_html_and_request_ids() {
    let app = TestApp::spawn().await;
    let html = "<html><head><title>Pets</title><script>var x=1;</script></head><body><h1>Cats</h1><p>Cats purr when content.</p></body></html>";
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(html.as_bytes().to_vec())
                .file_name("pets.html")
                .mime_str("text/html")
                .unwrap(),
        )
        .text("collection", "pets")
        .text("metadata", r#"{"source": "upload"}"#);
    let r = app
        .client
        .post(app.api("/v1/documents?wait=true"))
        .header("x-request-id", "test-req-42")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "test-req-42");
    let accepted: Value = r.json().await.unwrap();
    let (_, doc) = app
        .get_json(&app.api(&format!(
            "/v1/documents/{}",
            accepted["document_id"].as_str().unwrap()
        )))
        .await;
    assert_eq!(doc["title"], "pets.html");
    assert_eq!(doc["content_type"], "text/html");
    assert_eq!(doc["metadata"]["source"], "upload");
    let hits = app.search("why do cats purr", "hybrid", 3).await;
    let text = hits["results"][0]["text"].as_str().unwrap();
    assert!(text.contains("purr") && !text.contains("var x"), "{text}");
    let r = app.client.get(app.api("/health")).send().await.unwrap();
    assert!(
        !r.headers()["x-request-id"].is_empty(),
        "a generated request id is returned"
    );

    let (s, spec) = app.get_json(&app.api("/openapi.json")).await;
    assert_eq!(s, 200);
    for path in [
        "/v1/documents",
        "/v1/documents/{id}",
        "/v1/jobs/{id}",
        "/v1/search",
        "/v1/query",
        "/v1/collections",
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
        "/",
    ] {
        assert!(spec["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    // docs/api_documentation.md lists every operation of the spec in a table row
    // `| METHOD | `path` |`, and the api port's table names no operation the spec lacks.
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/api_documentation.md"
    ))
    .unwrap();
    let row = |method: &str, path: &str| format!("| {method} | `{path}` |");
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            assert!(
                doc.contains(&row(&method, path)),
                "docs/api_documentation.md has no row {}",
                row(&method, path)
            );
        }
    }
    let api_section = &doc[doc.find("## api (port 8080)").unwrap()..];
    let api_section = &api_section[..api_section.find("\n### ").unwrap()];
    for line in api_section
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains(" | `/"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (method, path) = (cells[1].to_lowercase(), cells[2].trim_matches('`'));
        assert!(
            spec["paths"][path].get(&method).is_some(),
            "docs/api_documentation.md documents {method} {path}, which /openapi.json lacks"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_module_apis() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .post(app.url("embedder", "/v1/embed"))
        .json(&json!({"texts": ["hello world", "bonjour"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["dimension"], 384);
    let v = body["embeddings"][0].as_array().unwrap();
    assert_eq!(v.len(), 384);
    let norm: f64 = v
        .iter()
        .map(|x| x.as_f64().unwrap().powi(2))
        .sum::<f64>()
        .sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "normalised: {norm}");
    let r = app
        .client
        .post(app.url("response", "/v1/generate"))
        .json(&json!({"query": "what colour is the sky", "passages": [{"text": "Grass is green. The sky is blue on a clear day."}]}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["answer"], "The sky is blue on a clear day. [1]",
        "{body}"
    );
    let (s, stats) = app.get_json(&app.url("storage", "/v1/stats")).await;
    assert_eq!(s, 200);
    assert_eq!(stats["backends"]["metadata"], "sqlite");
    assert_eq!(stats["backends"]["vectors"], "qdrant-edge");
}
