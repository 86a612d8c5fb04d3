//! Webhooks end to end: the real service delivers to a receiver inside the test (a TCP listener
//! answering scripted statuses), which checks every signature with the secret the create
//! response gave.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestApp;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: String,
    /// The status it answered.
    answered: u16,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// An HTTP receiver answering the scripted statuses in order, then `then` for ever.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(script: &[u16], then: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let script = Arc::new(Mutex::new(script.to_vec()));
        let task = {
            let got = got.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (got, script) = (got.clone(), script.clone());
                    tokio::spawn(async move {
                        let Some((headers, body)) = read_request(&mut stream).await else {
                            return;
                        };
                        let status = {
                            let mut s = script.lock().unwrap();
                            if s.is_empty() { then } else { s.remove(0) }
                        };
                        got.lock().unwrap().push(Received {
                            headers,
                            body,
                            answered: status,
                        });
                        let answer = format!(
                            "HTTP/1.1 {status} Scripted\r\ncontent-length: 8\r\nconnection: close\r\n\r\nscripted"
                        );
                        let _ = stream.write_all(answer.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
            })
        };
        Receiver { url, got, task }
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived (or fails after 30 s).
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..600 {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the receiver got {:?}, not {n} requests", self.received());
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 request: lower-cased headers and the body (by Content-Length).
async fn read_request(
    stream: &mut tokio::net::TcpStream,
) -> Option<(HashMap<String, String>, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((headers, String::from_utf8_lossy(&body).to_string()))
}

/// Checks a delivery as a receiver would: the signature over "<timestamp>.<body>" with the
/// subscription's secret, a fresh timestamp, and the other headers.
fn assert_signed(r: &Received, secret: &str) {
    let timestamp = r.header("x-docrag-timestamp");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{}", r.body).as_bytes());
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(
        r.header("x-docrag-signature"),
        expected,
        "signature of {r:?}"
    );
    let age = chrono::Utc::now().timestamp() - timestamp.parse::<i64>().unwrap();
    assert!((0..120).contains(&age), "timestamp {timestamp}");
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(
        r.header("x-docrag-event"),
        r.json()["event"].as_str().unwrap()
    );
    assert!(uuid::Uuid::parse_str(r.header("x-docrag-delivery")).is_ok());
}

/// Quick retries, so the failure cases run in seconds.
const FAST: &[(&str, &str)] = &[
    ("webhooks.poll_interval_ms", "100"),
    ("webhooks.retry_base_ms", "100"),
    ("webhooks.retry_max_ms", "300"),
    ("webhooks.max_attempts", "3"),
    ("webhooks.disable_after", "2"),
    ("webhooks.timeout_ms", "3000"),
];

async fn create(app: &TestApp, body: Value) -> (u16, Value) {
    app.post_json("/v1/webhooks", &body).await
}

async fn deliveries(app: &TestApp, id: &str) -> Vec<Value> {
    let (s, body) = app
        .get_json(&app.api(&format!("/v1/webhooks/{id}/deliveries")))
        .await;
    assert_eq!(s, 200, "{body}");
    body["deliveries"].as_array().unwrap().clone()
}

async fn webhook(app: &TestApp, id: &str) -> Value {
    let (s, list) = app.get_json(&app.api("/v1/webhooks")).await;
    assert_eq!(s, 200, "{list}");
    list["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until the subscription's log has `n` deliveries, none pending.
async fn settled(app: &TestApp, id: &str, n: usize) -> Vec<Value> {
    for _ in 0..600 {
        let log = deliveries(app, id).await;
        if log.len() >= n && log.iter().all(|d| d["status"] != "pending") {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("deliveries of {id}: {:?}", deliveries(app, id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_and_deletion_events_are_delivered_signed_and_the_admin_api_checks_its_input() {
    let app = TestApp::spawn_with(common::Backend::Sqlite, FAST).await;
    let receiver = Receiver::start(&[], 200).await;

    // Bad input is a 400 with a stable code, never a 500.
    for (body, code) in [
        (
            json!({"collection": "hooks", "url": "ftp://x.org/h"}),
            "invalid_request",
        ),
        (
            json!({"collection": "hooks", "url": "not a url"}),
            "invalid_request",
        ),
        (
            json!({"collection": "hooks", "url": "http://u:p@x.org/h"}),
            "invalid_request",
        ),
        (
            json!({"collection": "hooks", "url": format!("http://x.org/{}", "a".repeat(3000))}),
            "limit_exceeded",
        ),
        (
            json!({"collection": "hooks", "url": receiver.url, "events": ["job.finished"]}),
            "invalid_request",
        ),
        (
            json!({"collection": "hooks", "url": receiver.url, "events": ["ping"]}),
            "invalid_request",
        ),
        (
            json!({"collection": "hooks", "url": receiver.url, "events": []}),
            "invalid_request",
        ),
        (
            json!({"collection": "bad name!", "url": receiver.url}),
            "invalid_request",
        ),
        (
            json!({"collection": "hooks", "url": receiver.url, "secret": "mine"}),
            "invalid_request",
        ),
        (json!({"url": receiver.url}), "invalid_request"),
    ] {
        let (s, err) = create(&app, body.clone()).await;
        assert_eq!(
            (s, err["code"].as_str()),
            (400, Some(code)),
            "{body}: {err}"
        );
    }
    let (s, err) = app
        .get_json(&app.api(&format!("/v1/webhooks/{}/deliveries", uuid::Uuid::new_v4())))
        .await;
    assert_eq!((s, err["code"].as_str()), (404, Some("not_found")));
    let (s, err) = app.get_json(&app.api("/v1/webhooks/nope/deliveries")).await;
    assert_eq!((s, err["code"].as_str()), (400, Some("invalid_id")));

    // Only admins: an editor gets 403.
    let r = app
        .client
        .post(app.url("security", "/v1/admin/users"))
        .json(&json!({"email": "editor@x.org", "password": "a-good-password", "role": "editor"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let (s, tokens) = common::login(&app.api(""), "editor@x.org", "a-good-password").await;
    assert_eq!(s, 200, "{tokens}");
    let editor = common::authed_client(tokens["access_token"].as_str().unwrap());
    let r = editor.get(app.api("/v1/webhooks")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = editor
        .post(app.api("/v1/webhooks"))
        .json(&json!({"collection": "hooks", "url": receiver.url}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // A subscription to every event of "hooks"; the secret is shown once.
    let (s, created) = create(&app, json!({"collection": "hooks", "url": receiver.url})).await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(
        created["events"],
        json!(["job.done", "job.failed", "document.deleted"])
    );
    assert_eq!(created["enabled"], true);
    let listed = webhook(&app, &id).await;
    assert_eq!(listed["url"], receiver.url.as_str());
    assert!(
        listed.get("secret").is_none(),
        "listings never show the secret"
    );

    // The test endpoint delivers a ping at once and says what the receiver answered.
    let (s, tested) = app
        .post_json(&format!("/v1/webhooks/{id}/test"), &json!({}))
        .await;
    assert_eq!(s, 200, "{tested}");
    assert_eq!(
        (
            &tested["delivered"],
            &tested["status_code"],
            &tested["outcome"]
        ),
        (&json!(true), &json!(200), &json!("delivered"))
    );
    let got = receiver.wait_for(1).await;
    assert_signed(&got[0], &secret);
    assert_eq!(got[0].json()["event"], "ping");
    assert_eq!(got[0].header("x-docrag-delivery"), tested["delivery_id"]);

    // job.done, when the document is indexed; another collection's document is not reported.
    let other = app
        .ingest_text(
            "Elsewhere",
            "Nothing to see.",
            json!({"collection": "quiet"}),
        )
        .await;
    let accepted = app
        .ingest_text(
            "Cranes",
            "The harbour has twelve cranes.",
            json!({"collection": "hooks"}),
        )
        .await;
    let got = receiver.wait_for(2).await;
    let done = &got[1];
    assert_signed(done, &secret);
    let body = done.json();
    assert_eq!(body["event"], "job.done");
    assert_eq!(body["collection"], "hooks");
    assert_eq!(body["document_id"], accepted["document_id"]);
    assert_eq!(body["job_id"], accepted["job_id"]);
    assert_eq!(body["version"], 1);
    assert!(body["at"].is_string());

    // job.failed, with the reason: a "PDF" that is not one.
    let r = app
        .client
        .post(app.api("/v1/documents?wait=true"))
        .json(
            &json!({"title": "broken", "collection": "hooks", "content_type": "application/pdf",
                      "content_base64": "JVBERi0xLjQgZ2FyYmFnZQ=="}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let got = receiver.wait_for(3).await;
    assert_signed(&got[2], &secret);
    let failed = got[2].json();
    assert_eq!(failed["event"], "job.failed");
    assert!(
        failed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{failed}"
    );

    // document.deleted.
    let doc_id = accepted["document_id"].as_str().unwrap();
    let r = app
        .client
        .delete(app.api(&format!("/v1/documents/{doc_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let got = receiver.wait_for(4).await;
    assert_signed(&got[3], &secret);
    let deleted = got[3].json();
    assert_eq!(deleted["event"], "document.deleted");
    assert_eq!(deleted["document_id"], doc_id);
    assert!(
        got.iter()
            .all(|r| r.json()["document_id"] != other["document_id"]),
        "the quiet collection was not reported"
    );

    // The delivery log, newest first.
    let log = settled(&app, &id, 4).await;
    let events: Vec<&str> = log.iter().map(|d| d["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        ["document.deleted", "job.failed", "job.done", "ping"]
    );
    assert!(
        log.iter()
            .all(|d| d["status"] == "delivered" && d["attempts"] == 1)
    );
    assert_eq!(log[0]["payload"]["document_id"], doc_id);
    let (s, page) = app
        .get_json(&app.api(&format!("/v1/webhooks/{id}/deliveries?limit=1&offset=1")))
        .await;
    assert_eq!(s, 200);
    assert_eq!(page["deliveries"][0]["event"], "job.failed");
    let (s, _) = app
        .get_json(&app.api(&format!("/v1/webhooks/{id}/deliveries?limit=0")))
        .await;
    assert_eq!(s, 400);

    // The changes are audited.
    let (s, audit) = app
        .get_json(&app.url("security", "/v1/admin/audit?event=webhook_created"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(audit["events"][0]["target"], format!("webhook:{id}"));

    // Deleted: gone with its log, and nothing more is delivered.
    let r = app
        .client
        .delete(app.api(&format!("/v1/webhooks/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(webhook(&app, &id).await.is_null());
    let (s, _) = app
        .get_json(&app.api(&format!("/v1/webhooks/{id}/deliveries")))
        .await;
    assert_eq!(s, 404);
    app.ingest_text("After", "Not reported.", json!({"collection": "hooks"}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_and_a_receiver_that_keeps_failing_is_disabled() {
    let app = TestApp::spawn_with(common::Backend::Sqlite, FAST).await;

    // 500, 500, then 200: delivered at the third attempt.
    let flaky = Receiver::start(&[500, 500], 200).await;
    let (s, created) = create(
        &app,
        json!({"collection": "flaky", "url": flaky.url, "events": ["job.done"]}),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let flaky_id = created["id"].as_str().unwrap().to_string();
    let flaky_secret = created["secret"].as_str().unwrap().to_string();
    app.ingest_text(
        "Retry me",
        "Delivered at last.",
        json!({"collection": "flaky"}),
    )
    .await;
    let got = flaky.wait_for(3).await;
    assert_eq!(
        got.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [500, 500, 200]
    );
    for r in &got {
        assert_signed(r, &flaky_secret);
    }
    let ids: Vec<&str> = got.iter().map(|r| r.header("x-docrag-delivery")).collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one delivery, three attempts"
    );
    let log = settled(&app, &flaky_id, 1).await;
    assert_eq!(
        (
            &log[0]["status"],
            &log[0]["attempts"],
            &log[0]["last_status_code"]
        ),
        (&json!("delivered"), &json!(3), &json!(200))
    );
    assert_eq!(webhook(&app, &flaky_id).await["consecutive_failures"], 0);

    // Always 500: each delivery fails after max_attempts (3); the second in a row
    // (disable_after = 2) disables the subscription.
    let broken = Receiver::start(&[], 500).await;
    let (s, created) = create(
        &app,
        json!({"collection": "broken", "url": broken.url, "events": ["job.done", "job.failed"]}),
    )
    .await;
    assert_eq!(s, 201);
    let broken_id = created["id"].as_str().unwrap().to_string();
    app.ingest_text("One", "First.", json!({"collection": "broken"}))
        .await;
    app.ingest_text("Two", "Second.", json!({"collection": "broken"}))
        .await;
    let log = settled(&app, &broken_id, 2).await;
    assert_eq!(log.len(), 2);
    for d in &log {
        assert_eq!(
            (&d["status"], &d["attempts"], &d["last_status_code"]),
            (&json!("failed"), &json!(3), &json!(500)),
            "{d}"
        );
        assert!(
            d["last_error"].as_str().unwrap().contains("HTTP 500"),
            "{d}"
        );
    }
    assert_eq!(broken.received().len(), 6, "three attempts each");
    let sub = webhook(&app, &broken_id).await;
    assert_eq!(sub["enabled"], false, "{sub}");
    assert_eq!(sub["consecutive_failures"], 2);
    assert!(
        sub["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("2 consecutive deliveries failed"),
        "{sub}"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("webhook_subscriptions_disabled_total{reason=\"failures\"}"),
        "metrics"
    );
    assert!(metrics.contains("webhook_deliveries_total{outcome=\"retrying\"}"));

    // Disabled: new events are not recorded for it.
    app.ingest_text("Three", "Not sent.", json!({"collection": "broken"}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(deliveries(&app, &broken_id).await.len(), 2);
    assert_eq!(broken.received().len(), 6);

    // The test endpoint still reaches a disabled subscription's receiver, and says it failed.
    let (s, tested) = app
        .post_json(&format!("/v1/webhooks/{broken_id}/test"), &json!({}))
        .await;
    assert_eq!(s, 200, "{tested}");
    assert_eq!(
        (
            &tested["delivered"],
            &tested["status_code"],
            &tested["outcome"]
        ),
        (&json!(false), &json!(500), &json!("retrying"))
    );

    // Enabled again: failures reset, and the waiting ping is retried.
    let (s, enabled) = app
        .post_json(&format!("/v1/webhooks/{broken_id}/enable"), &json!({}))
        .await;
    assert_eq!(s, 200, "{enabled}");
    assert_eq!(
        (&enabled["enabled"], &enabled["consecutive_failures"]),
        (&json!(true), &json!(0))
    );
    assert!(enabled["disabled_reason"].is_null());
    broken.wait_for(8).await;
    let (s, _) = app
        .post_json(
            &format!("/v1/webhooks/{}/enable", uuid::Uuid::new_v4()),
            &json!({}),
        )
        .await;
    assert_eq!(s, 404);
}
