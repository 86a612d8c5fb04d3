//! Generated answers (issue 11): doc-rag against an OpenAI-compatible chat-completions provider.
//!
//! The fault cases (stalls, HTTP errors, malformed streams, the circuit, a client hanging up) run
//! against a small provider inside the test that answers from a script and records what it was
//! sent. The end-to-end case runs a real local inference server (llama-cpp-python serving Gemma 3
//! 270M, installed by `make llm`) and checks the plumbing, not the prose.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ServerProcess, TestApp};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the scripted provider does with the next requests.
#[derive(Clone)]
enum Script {
    /// Streams these pieces as chat-completion chunks, `delay` apart.
    Stream(Vec<String>, Duration),
    /// One non-streamed JSON completion.
    Json(String),
    /// This status and body.
    Status(u16, String),
    /// A 200 event stream carrying this raw text.
    Raw(String),
    /// Accepts the request and never answers.
    Stall,
    /// Answers a request to rewrite a follow-up with this (one JSON completion), others by the
    /// inner script.
    Rewrite(String, Box<Script>),
}

#[derive(Default)]
struct Seen {
    /// Each request's head (lower-cased header lines) and JSON body.
    requests: Vec<(String, Value)>,
    /// When a streamed answer's connection was found closed by the client, and after how many
    /// pieces.
    hung_up: Option<(Instant, usize)>,
    finished_streams: usize,
}

struct ScriptedLlm {
    base_url: String,
    script: Arc<Mutex<Script>>,
    seen: Arc<Mutex<Seen>>,
}

impl ScriptedLlm {
    async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let script = Arc::new(Mutex::new(script));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (s, n) = (Arc::clone(&script), Arc::clone(&seen));
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, Arc::clone(&s), Arc::clone(&n)));
            }
        });
        Self {
            base_url,
            script,
            seen,
        }
    }

    fn set(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }

    fn requests(&self) -> Vec<(String, Value)> {
        self.seen.lock().unwrap().requests.clone()
    }

    fn settings(&self) -> Vec<(&'static str, String)> {
        vec![
            ("response.llm.base_url", self.base_url.clone()),
            ("response.llm.model", "scripted-1".into()),
            ("response.llm.first_token_timeout_secs", "2".into()),
            ("response.llm.timeout_secs", "5".into()),
        ]
    }
}

async fn serve(
    mut conn: tokio::net::TcpStream,
    script: Arc<Mutex<Script>>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head, body) = loop {
        let Ok(n) = conn.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            let body =
                serde_json::from_slice(&buf[end + 4..end + 4 + length]).unwrap_or(Value::Null);
            break (head, body);
        }
    };
    let rewrite_request = body["messages"][0]["content"]
        .as_str()
        .is_some_and(|m| m.starts_with("Rewrite"));
    seen.lock().unwrap().requests.push((head, body));
    let mut script = script.lock().unwrap().clone();
    if let Script::Rewrite(rewrite, inner) = script {
        script = if rewrite_request {
            Script::Json(rewrite)
        } else {
            *inner
        };
    }
    let respond = |status: u16, ctype: &str, body: &str| {
        format!(
            "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    match script {
        Script::Stream(pieces, delay) => {
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
            if conn.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for (i, piece) in pieces.iter().enumerate() {
                let event = json!({"choices": [{"index": 0, "delta": {"content": piece}}]});
                let frame = format!("data: {event}\n\n");
                if conn.write_all(frame.as_bytes()).await.is_err() || conn.flush().await.is_err() {
                    seen.lock().unwrap().hung_up = Some((Instant::now(), i));
                    return;
                }
                tokio::time::sleep(delay).await;
            }
            let end = "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
            let _ = conn.write_all(end.as_bytes()).await;
            seen.lock().unwrap().finished_streams += 1;
        }
        Script::Json(text) => {
            let body = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]});
            let _ = conn
                .write_all(respond(200, "application/json", &body.to_string()).as_bytes())
                .await;
        }
        Script::Status(status, body) => {
            let _ = conn
                .write_all(respond(status, "application/json", &body).as_bytes())
                .await;
        }
        Script::Raw(text) => {
            let _ = conn
                .write_all(respond(200, "text/event-stream", &text).as_bytes())
                .await;
        }
        Script::Stall => tokio::time::sleep(Duration::from_secs(3600)).await,
        Script::Rewrite(..) => {}
    }
}

const CRANES: &str = "Cranes migrate south in autumn. They fly in V-shaped flocks and \
    rest on wetlands along the way.";
const REDIS: &str = "Check Redis memory usage with redis-cli info memory. Evictions start \
    when maxmemory is reached.";

async fn app_with(llm: &ScriptedLlm, extra: &[(&str, &str)]) -> TestApp {
    let mut settings: Vec<(&str, String)> = llm.settings();
    settings.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = TestApp::spawn_with(common::Backend::Sqlite, &pairs).await;
    app.ingest_text("Cranes", CRANES, json!({})).await;
    app.ingest_text("Redis", REDIS, json!({})).await;
    app
}

fn pieces(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_string).collect()
}

/// The events of a Server-Sent Events body, as (event, data).
fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut event = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            (event, serde_json::from_str(&data).unwrap_or(Value::Null))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_answers_cite_real_sources_and_report_unsupported_sentences() {
    let llm = ScriptedLlm::start(Script::Stream(
        pieces("Cranes migrate south in autumn [1]. They live for 40 years [9]. Nobody knows why."),
        Duration::ZERO,
    ))
    .await;
    let app = app_with(&llm, &[]).await;

    let (status, answer) = app
        .post_json(
            "/v1/query",
            &json!({"query": "When do cranes migrate?", "top_k": 2}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["generator"], "llm", "{answer}");
    assert_eq!(answer["model"], "scripted-1");
    // [9] points at no source (there are two): dropped from the text, and its sentence is
    // unsupported like the one with no marker at all.
    assert_eq!(
        answer["answer"],
        "Cranes migrate south in autumn [1]. They live for 40 years. Nobody knows why."
    );
    assert_eq!(
        answer["unsupported_sentences"],
        json!(["They live for 40 years.", "Nobody knows why."])
    );
    let citations = answer["citations"].as_array().unwrap();
    assert_eq!(citations.len(), 1, "only the cited source: {answer}");
    assert_eq!(citations[0]["n"], 1);
    assert_eq!(citations[0]["title"], "Cranes");
    let confidence = answer["confidence"].as_f64().unwrap();
    assert!(
        confidence > 0.0 && confidence < 0.5,
        "a third of the answer is supported: {confidence}"
    );
    assert!(uuid::Uuid::parse_str(answer["query_id"].as_str().unwrap()).is_ok());
    assert!(answer["timings"]["first_token_ms"].is_u64(), "{answer}");
    assert!(answer["timings"]["retrieval_ms"].is_u64(), "{answer}");

    // What the provider was sent: the configured model, a stream, and the numbered sources
    // with the question.
    let requests = llm.requests();
    assert_eq!(requests.len(), 1);
    let (head, body) = &requests[0];
    assert!(head.starts_with("post /v1/chat/completions "), "{head}");
    assert!(
        !head.contains("authorization:"),
        "no key is configured: {head}"
    );
    assert_eq!(body["model"], "scripted-1");
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 512);
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "system");
    let prompt = messages.last().unwrap()["content"].as_str().unwrap();
    assert!(
        prompt.contains("[1] Cranes\nCranes migrate south"),
        "{prompt}"
    );
    assert!(prompt.contains("[2] Redis\n"), "{prompt}");
    assert!(
        prompt.ends_with("Question: When do cranes migrate?"),
        "{prompt}"
    );

    // A provider that answers with one JSON body (no stream) is understood too.
    llm.set(Script::Json("Use redis-cli info memory [1].".into()));
    let (_, answer) = app
        .post_json(
            "/v1/query",
            &json!({"query": "How do I check Redis memory?", "top_k": 2}),
        )
        .await;
    assert_eq!(answer["generator"], "llm", "{answer}");
    assert_eq!(answer["citations"][0]["title"], "Redis", "{answer}");
    assert_eq!(answer["unsupported_sentences"], json!([]));

    // Asked for the extractive answer, the model is not called.
    let (_, answer) = app
        .post_json(
            "/v1/query",
            &json!({"query": "How do I check Redis memory?", "generator": "extractive"}),
        )
        .await;
    assert_eq!(answer["generator"], "extractive", "{answer}");
    assert!(answer.get("model").is_none(), "{answer}");
    assert_eq!(llm.requests().len(), 2);

    let (status, err) = app
        .post_json("/v1/query", &json!({"query": "x", "generator": "gpt"}))
        .await;
    assert_eq!(status, 400, "{err}");
}

/// Asks a question that must be answered extractively after a generation failed; returns why.
async fn ask_fallback(app: &TestApp) -> String {
    let (status, answer) = app
        .post_json("/v1/query", &json!({"query": "When do cranes migrate?"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["generator"], "extractive_fallback", "{answer}");
    assert!(
        answer["answer"].as_str().unwrap().contains("[1]"),
        "the extractive answer stands in: {answer}"
    );
    answer["fallback_reason"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_faults_fall_back_to_the_extractive_answer_and_open_the_circuit() {
    let llm = ScriptedLlm::start(Script::Stall).await;
    let app = app_with(&llm, &[("response.llm.failure_threshold", "4")]).await;

    let started = Instant::now();
    assert_eq!(
        ask_fallback(&app).await,
        "no first token from the language model within 2 s"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    llm.set(Script::Status(
        503,
        r#"{"error":{"message":"model is loading"}}"#.into(),
    ));
    assert_eq!(
        ask_fallback(&app).await,
        "the language model answered HTTP 503: model is loading"
    );

    llm.set(Script::Raw("data: {\"choices\": [oops\n\n".into()));
    assert!(
        ask_fallback(&app)
            .await
            .starts_with("the language model's answer is malformed")
    );

    // A stream that ends with no text at all.
    llm.set(Script::Stream(Vec::new(), Duration::ZERO));
    assert_eq!(
        ask_fallback(&app).await,
        "the language model returned an empty answer"
    );

    // Four failures in a row open the circuit: the next query does not call the provider.
    llm.set(Script::Json("Cranes migrate in autumn [1].".into()));
    let calls = llm.requests().len();
    assert_eq!(
        ask_fallback(&app).await,
        "the language model's circuit is open after repeated failures"
    );
    assert_eq!(
        llm.requests().len(),
        calls,
        "no call while the circuit is open"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("dependency_up{dependency=\"llm\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("llm_requests_total{outcome=\"circuit_open\"}"));
    assert!(metrics.contains("response_answers_total{generator=\"extractive_fallback\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_answers_send_sources_then_deltas_then_done() {
    let text = "Cranes migrate south in autumn [1]. Check memory with redis-cli [2].";
    let llm = ScriptedLlm::start(Script::Stream(pieces(text), Duration::from_millis(5))).await;
    let app = app_with(&llm, &[]).await;

    for (body, accept) in [
        (
            json!({"query": "When do cranes migrate?", "stream": true}),
            None,
        ),
        (
            json!({"query": "When do cranes migrate?"}),
            Some("text/event-stream"),
        ),
    ] {
        let mut request = app.client.post(app.api("/v1/query")).json(&body);
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let events = sse_events(&response.text().await.unwrap());
        let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(names.first(), Some(&"sources"), "{names:?}");
        assert_eq!(names.last(), Some(&"done"), "{names:?}");
        assert!(
            names[1..names.len() - 1].iter().all(|n| *n == "delta"),
            "{names:?}"
        );
        assert!(names.len() > 5, "the text arrives in pieces: {names:?}");
        let (_, sources) = &events[0];
        let (_, done) = events.last().unwrap();
        assert_eq!(sources["query_id"], done["query_id"]);
        assert_eq!(sources["sources"][0]["n"], 1);
        let streamed: String = events[1..events.len() - 1]
            .iter()
            .map(|(_, d)| d["text"].as_str().unwrap())
            .collect();
        assert_eq!(streamed, text);
        assert_eq!(done["answer"], text);
        assert_eq!(done["generator"], "llm");
        assert_eq!(done["citations"].as_array().unwrap().len(), 2, "{done}");
    }

    // The extractive answer streams the same way: sources, its text, done.
    let response = app
        .client
        .post(app.api("/v1/query"))
        .json(
            &json!({"query": "When do cranes migrate?", "stream": true, "generator": "extractive"}),
        )
        .send()
        .await
        .unwrap();
    let events = sse_events(&response.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names, ["sources", "delta", "done"]);
    assert_eq!(events[1].1["text"], events[2].1["answer"]);
    assert_eq!(events[2].1["generator"], "extractive");

    // Bad input is still a JSON error, not a stream.
    let response = app
        .client
        .post(app.api("/v1/query"))
        .json(&json!({"query": "", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(error["code"].is_string(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_ups_are_rewritten_by_the_model_which_sees_earlier_turns() {
    let llm = ScriptedLlm::start(Script::Rewrite(
        "\"How do I check Redis memory usage?\"".into(),
        Box::new(Script::Json("Use redis-cli info memory [1].".into())),
    ))
    .await;
    let app = app_with(&llm, &[]).await;
    let (status, conversation) = app.post_json("/v1/conversations", &json!({})).await;
    assert_eq!(status, 201, "{conversation}");
    let id = conversation["id"].clone();

    let (_, first) = app
        .post_json(
            "/v1/query",
            &json!({"query": "Is Redis memory worth watching?", "conversation_id": id}),
        )
        .await;
    assert_eq!(first["generator"], "llm", "{first}");
    assert!(
        first.get("rewritten_query").is_none(),
        "a first question is not rewritten"
    );
    assert_eq!(
        llm.requests().len(),
        1,
        "no rewrite call without earlier turns"
    );

    let (_, second) = app
        .post_json(
            "/v1/query",
            &json!({"query": "How do I check it?", "conversation_id": id}),
        )
        .await;
    assert_eq!(
        second["rewritten_query"], "How do I check Redis memory usage?",
        "{second}"
    );
    assert_eq!(
        second["citations"][0]["title"], "Redis",
        "retrieval used the rewrite: {second}"
    );

    let requests = llm.requests();
    assert_eq!(requests.len(), 3, "answer, rewrite, answer");
    let rewrite = requests[1].1["messages"][1]["content"].as_str().unwrap();
    assert!(
        rewrite.contains(
            "User: Is Redis memory worth watching?\nAssistant: Use redis-cli info memory [1]."
        ) && rewrite.ends_with("Follow-up question: How do I check it?"),
        "{rewrite}"
    );
    // The answer's prompt replays the earlier turn, then asks the question as the user put it.
    let messages = requests[2].1["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(messages[1]["content"], "Is Redis memory worth watching?");
    assert_eq!(messages[2]["content"], "Use redis-cli info memory [1].");
    assert!(
        messages[3]["content"]
            .as_str()
            .unwrap()
            .ends_with("Question: How do I check it?")
    );

    // When the model fails, the rule rewrites and the answer falls back, in the same turn.
    llm.set(Script::Status(500, "{}".into()));
    let (_, third) = app
        .post_json(
            "/v1/query",
            &json!({"query": "And evictions?", "conversation_id": id}),
        )
        .await;
    assert_eq!(third["generator"], "extractive_fallback", "{third}");
    assert!(
        third["rewritten_query"]
            .as_str()
            .unwrap()
            .starts_with("And evictions? "),
        "{third}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_cancels_the_generation_upstream() {
    // 100 pieces 100 ms apart: ten seconds if nobody cancels.
    let words: Vec<String> = (0..100).map(|i| format!("word{i} ")).collect();
    let llm = ScriptedLlm::start(Script::Stream(words, Duration::from_millis(100))).await;
    let app = app_with(&llm, &[("response.llm.timeout_secs", "30")]).await;

    let mut response = app
        .client
        .post(app.api("/v1/query"))
        .json(&json!({"query": "When do cranes migrate?", "stream": true}))
        .send()
        .await
        .unwrap();
    let mut received = String::new();
    while !received.contains("event: delta") {
        let chunk = response.chunk().await.unwrap().expect("the stream goes on");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    let hung_up = Instant::now();
    drop(response);

    let deadline = Instant::now() + Duration::from_secs(5);
    let (closed_at, sent) = loop {
        if let Some(found) = llm.seen.lock().unwrap().hung_up {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "the provider's stream was never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(sent < 60, "cancelled after {sent} of 100 pieces");
    assert!(closed_at.duration_since(hung_up) < Duration::from_secs(3));
    assert_eq!(llm.seen.lock().unwrap().finished_streams, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_comes_from_the_environment_and_is_never_logged() {
    const KEY: &str = "sk-test-8c1f0b7e-secret";
    let llm = ScriptedLlm::start(Script::Status(
        401,
        r#"{"error":{"message":"invalid api key"}}"#.into(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let base = format!("response.llm.base_url={}", llm.base_url);
    let server = ServerProcess::start(
        dir.path(),
        &[&base, "response.llm.model=scripted-1", "log.level=debug"],
        &[("DOCRAG_LLM_API_KEY", KEY)],
    );
    let client = server.admin_client().await;
    let r = client
        .post(format!("{}/v1/documents?wait=true", server.url("api")))
        .json(&json!({"title": "Cranes", "text": CRANES}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = client
        .post(format!("{}/v1/query", server.url("api")))
        .json(&json!({"query": "When do cranes migrate?"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["generator"], "extractive_fallback", "{answer}");
    assert_eq!(
        answer["fallback_reason"],
        "the language model answered HTTP 401: invalid api key"
    );
    let (head, _) = &llm.requests()[0];
    assert!(
        head.contains(&format!(
            "authorization: bearer {}",
            KEY.to_ascii_lowercase()
        )),
        "{head}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("generation failed"), "the failure is logged");
    assert!(!log.contains(KEY), "the key is in the log");
    assert!(!answer.to_string().contains(KEY));
}

/// The real thing: llama-cpp-python's OpenAI-compatible server with Gemma 3 270M. Its answers are
/// weak; this checks that doc-rag's plumbing works with a real provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_llama_cpp_server_answers_through_doc_rag() {
    let dir = std::env::var("DOCRAG_LLM_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/doc-rag/llm")
        });
    let python = dir.join("venv/bin/python");
    let model = dir.join("model.gguf");
    if !python.exists() || !model.exists() {
        eprintln!(
            "skipped: no local llama.cpp server in {} (run `make llm` to install it)",
            dir.display()
        );
        return;
    }
    let port = common::free_port();
    let mut server = std::process::Command::new(&python)
        .args(["-m", "llama_cpp.server", "--model"])
        .arg(&model)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--n_ctx",
            "4096",
        ])
        .args(["--model_alias", "gemma-3-270m", "--chat_format", "gemma"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("llama_cpp.server starts");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let base = format!("http://127.0.0.1:{port}/v1");
    let probe = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = probe.get(format!("{base}/models")).send().await
            && r.status().is_success()
        {
            break;
        }
        if let Ok(Some(status)) = server.try_wait() {
            panic!("llama_cpp.server exited: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "llama_cpp.server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _server = Kill(server);

    let app = TestApp::spawn_with(
        common::Backend::Sqlite,
        &[
            ("response.llm.base_url", &base),
            ("response.llm.model", "gemma-3-270m"),
            ("response.llm.max_tokens", "96"),
            ("response.llm.timeout_secs", "80"),
            ("response.llm.first_token_timeout_secs", "60"),
        ],
    )
    .await;
    app.ingest_text("Cranes", CRANES, json!({})).await;
    app.ingest_text("Redis", REDIS, json!({})).await;

    let started = Instant::now();
    let (status, answer) = app
        .post_json(
            "/v1/query",
            &json!({"query": "When do cranes migrate?", "top_k": 2}),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["generator"], "llm", "{answer}");
    assert_eq!(answer["model"], "gemma-3-270m");
    let text = answer["answer"].as_str().unwrap();
    assert!(!text.trim().is_empty());
    // Whatever the model wrote, every citation and every marker left points at a real source.
    for c in answer["citations"].as_array().unwrap() {
        let n = c["n"].as_u64().unwrap();
        assert!((1..=2).contains(&n), "{answer}");
    }
    for n in 3..10 {
        assert!(!text.contains(&format!("[{n}]")), "{answer}");
    }
    eprintln!(
        "llama.cpp gemma-3-270m: {} ms in all, first token {} ms, generation {} ms, retrieval {} ms: {text:?}",
        took.as_millis(),
        answer["timings"]["first_token_ms"],
        answer["timings"]["generation_ms"],
        answer["timings"]["retrieval_ms"]
    );

    // Streamed: sources, deltas, done, with the text of the deltas making up the raw answer.
    let response = app
        .client
        .post(app.api("/v1/query"))
        .json(&json!({"query": "How do I check Redis memory usage?", "top_k": 2, "stream": true}))
        .send()
        .await
        .unwrap();
    let events = sse_events(&response.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names.first(), Some(&"sources"), "{names:?}");
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    assert!(
        names.len() > 3,
        "a real model streams several pieces: {names:?}"
    );
    let done = &events.last().unwrap().1;
    assert_eq!(done["generator"], "llm", "{done}");
}
