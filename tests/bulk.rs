//! Bulk ingestion over HTTP: `POST /v1/documents/bulk` (NDJSON and JSON arrays), per-line
//! rejections, `GET /v1/batches/{id}`, untitled documents, and limits, on both backends.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{Backend, TestApp};
use serde_json::{Value, json};

async fn post_bulk(app: &TestApp, body: String, content_type: &str, query: &str) -> (u16, Value) {
    let r = app
        .client
        .post(app.api(&format!("/v1/documents/bulk{query}")))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls the batch until every job is final; returns the last view and how many polls it took.
async fn wait_batch(app: &TestApp, batch_id: &str) -> (Value, usize) {
    for polls in 1..=600 {
        let (status, view) = app
            .get_json(&app.api(&format!("/v1/batches/{batch_id}")))
            .await;
        assert_eq!(status, 200, "{view}");
        if view["finished"] == true {
            return (view, polls);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("batch {batch_id} did not finish");
}

fn ndjson(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn bulk_suite(app: TestApp) {
    // 40 passages without titles (MS MARCO style), one with a title, one PDF that cannot be
    // parsed, and lines that are refused before anything is stored.
    let mut docs: Vec<Value> = (0..40)
        .map(|i| {
            json!({"text": format!("Passage {i} describes the island of number {i} and its lighthouse keeper."),
                   "external_id": format!("p{i}"), "metadata": {"source_id": format!("p{i}")}})
        })
        .collect();
    docs.push(json!({"title": "Quokkas", "text": "Quokkas are small marsupials living on Rottnest Island.", "collection": "zoo"}));
    let broken = base64::engine::general_purpose::STANDARD.encode(b"%PDF-1.4\n1 0 obj garbage");
    docs.push(json!({"title": "broken.pdf", "content_base64": broken, "content_type": "application/pdf", "external_id": "broken"}));
    let mut body = ndjson(&docs);
    body.push_str("\n{not json}\n\n{\"text\": \"   \"}\n{\"text\": \"x\", \"bogus\": 1}\n");
    let (status, accepted) =
        post_bulk(&app, body, "application/x-ndjson", "?collection=islands").await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["accepted"], 42, "{accepted}");
    // Each accepted line says where its document and job are, in request order.
    let placed = accepted["documents"].as_array().unwrap();
    let placed_lines: Vec<u64> = placed.iter().map(|d| d["line"].as_u64().unwrap()).collect();
    assert_eq!(placed_lines, (1..=42).collect::<Vec<u64>>(), "{accepted}");
    let (_, p17) = app
        .get_json(&app.api(&format!(
            "/v1/documents/{}",
            placed[17]["document_id"].as_str().unwrap()
        )))
        .await;
    assert_eq!(p17["external_id"], "p17", "{p17}");
    let (_, job) = app
        .get_json(&app.api(&format!(
            "/v1/jobs/{}",
            placed[41]["job_id"].as_str().unwrap()
        )))
        .await;
    assert_eq!(job["document_id"], placed[41]["document_id"], "{job}");
    let rejected = accepted["rejected"].as_array().unwrap();
    let lines: Vec<(u64, &str)> = rejected
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["code"].as_str().unwrap()))
        .collect();
    // Line 44 is blank; the file's line numbers are kept.
    assert_eq!(
        lines,
        vec![
            (43, "malformed_json"),
            (45, "invalid_request"),
            (46, "invalid_request")
        ],
        "{accepted}"
    );
    assert!(rejected[1]["message"].as_str().unwrap().contains("empty"));

    let batch_id = accepted["batch_id"].as_str().unwrap();
    let (view, polls) = wait_batch(&app, batch_id).await;
    assert_eq!(view["total"], 42, "{view}");
    assert_eq!(view["counts"]["done"], 41, "{view}");
    assert_eq!(view["counts"]["failed"], 1, "{view}");
    let failures = view["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{view}");
    assert_eq!(failures[0]["external_id"], "broken");
    assert!(!failures[0]["error"].as_str().unwrap().is_empty());
    assert!(polls < 600);

    // Untitled passages are searchable by their text, in the query's default collection.
    let (_, hits) = app
        .post_json(
            "/v1/search",
            &json!({"query": "island of number 17 lighthouse keeper", "mode": "keyword", "collection": "islands", "top_k": 3}),
        )
        .await;
    let top = &hits["results"][0];
    assert_eq!(top["metadata"]["source_id"], "p17", "{hits}");
    assert_eq!(top["title"], "", "{hits}");
    let (_, hits) = app
        .post_json(
            "/v1/search",
            &json!({"query": "marsupials on Rottnest", "collection": "zoo"}),
        )
        .await;
    assert_eq!(hits["results"][0]["title"], "Quokkas", "{hits}");

    // A JSON array works too; re-sending an external id replaces that document.
    let (status, accepted) = post_bulk(
        &app,
        json!([{"text": "Passage 3 now tells of a windmill.", "external_id": "p3", "collection": "islands"}])
            .to_string(),
        "application/json",
        "",
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let (view, _) = wait_batch(&app, accepted["batch_id"].as_str().unwrap()).await;
    assert_eq!(view["counts"]["done"], 1, "{view}");
    let (_, hits) = app
        .post_json(
            "/v1/search",
            &json!({"query": "windmill", "mode": "keyword", "collection": "islands"}),
        )
        .await;
    assert_eq!(
        hits["results"][0]["metadata"],
        json!({}),
        "replaced: {hits}"
    );
    let stats = app.stats().await;
    assert_eq!(stats["documents"], 42, "{stats}");

    // Refusals of the whole request.
    let (status, body) = post_bulk(&app, "{not json".into(), "application/json", "").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("malformed_json")),
        "{body}"
    );
    let (status, body) = post_bulk(&app, "\n\n".into(), "application/x-ndjson", "").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post_bulk(&app, "{}".into(), "text/plain", "").await;
    assert_eq!(status, 415, "{body}");
    let (status, body) = post_bulk(
        &app,
        "{\"text\": \"\"}\n".into(),
        "application/x-ndjson",
        "",
    )
    .await;
    assert_eq!(status, 400, "nothing accepted: {body}");
    assert_eq!(body["rejected"][0]["line"], 1, "{body}");
    let (status, body) = app
        .get_json(&app.api(&format!("/v1/batches/{}", uuid::Uuid::new_v4())))
        .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_ingestion_on_sqlite() {
    bulk_suite(TestApp::spawn().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_ingestion_on_postgres() {
    bulk_suite(TestApp::spawn_with(Backend::Postgres, &[]).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_limits_name_their_key() {
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        &[
            ("limits.bulk_max_documents", "3"),
            ("api.max_bulk_body_bytes", "2048"),
        ],
    )
    .await;
    let four = ndjson(&vec![json!({"text": "a"}); 4]);
    let (status, body) = post_bulk(&app, four, "application/x-ndjson", "").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "limit_exceeded");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("bulk_max_documents"),
        "{body}"
    );
    let big = ndjson(&[json!({"text": "x".repeat(3000)})]);
    let (status, body) = post_bulk(&app, big, "application/x-ndjson", "").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
}
