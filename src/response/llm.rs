//! The client of a language model behind an OpenAI-compatible chat-completions API (vLLM, the
//! llama.cpp server, Ollama, OpenAI). It owns everything that can go wrong with a provider, so the
//! response module only decides what to do about it: a bounded number of generations in flight, a
//! deadline for the first token and one for the whole answer, a circuit breaker that stops calling
//! a failing provider, and the API key, which is read from the environment and never logged.
//!
//! Generations are always requested as a stream (`"stream": true`): that is what lets a first-token
//! deadline fire early, lets a client that hangs up cancel the upstream request (dropping the
//! response closes the connection), and serves streaming and non-streaming answers alike. A provider
//! that answers with one JSON body instead is understood too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};

use crate::config::LlmSettings;
use crate::storage::breaker::Breaker;

/// One message of a chat prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: &'static str,
    pub content: String,
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: "system",
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user",
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: "assistant",
            content: content.into(),
        }
    }
}

/// Why a generation produced no answer. The message is what a client sees as `fallback_reason`:
/// it names the cause without the provider's credentials.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("the language model's circuit is open after repeated failures")]
    CircuitOpen,
    #[error("response.llm.max_concurrent generations are already in flight")]
    Busy,
    #[error("no first token from the language model within {0} s")]
    FirstTokenTimeout(u64),
    #[error("the language model took longer than {0} s")]
    Timeout(u64),
    #[error("the language model answered HTTP {status}: {detail}")]
    Status { status: u16, detail: String },
    #[error("cannot reach the language model: {0}")]
    Transport(String),
    #[error("the language model's answer is malformed: {0}")]
    Malformed(String),
    #[error("the language model returned an empty answer")]
    Empty,
    #[error("the client went away")]
    Cancelled,
}

impl LlmError {
    /// A stable label for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            LlmError::CircuitOpen => "circuit_open",
            LlmError::Busy => "busy",
            LlmError::FirstTokenTimeout(_) => "first_token_timeout",
            LlmError::Timeout(_) => "timeout",
            LlmError::Status { .. } => "http_error",
            LlmError::Transport(_) => "unreachable",
            LlmError::Malformed(_) => "malformed",
            LlmError::Empty => "empty",
            LlmError::Cancelled => "cancelled",
        }
    }

    /// Whether this says something about the provider's health (and so counts in the breaker).
    fn is_provider_failure(&self) -> bool {
        !matches!(
            self,
            LlmError::CircuitOpen | LlmError::Busy | LlmError::Cancelled
        )
    }
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub finish_reason: Option<String>,
    pub first_token_ms: u64,
}

pub struct LlmClient {
    http: reqwest::Client,
    url: String,
    settings: LlmSettings,
    api_key: Option<SecretString>,
    breaker: Breaker,
    permits: Arc<Semaphore>,
}

/// The most of an error body kept for a message: providers put the reason there.
const DETAIL_CHARS: usize = 300;

impl LlmClient {
    /// The client for `settings`, or `None` when no provider is configured.
    pub fn from_settings(settings: &LlmSettings) -> anyhow::Result<Option<Self>> {
        if !settings.enabled() {
            return Ok(None);
        }
        let api_key = std::env::var(&settings.api_key_env)
            .ok()
            .filter(|k| !k.is_empty())
            .map(SecretString::from);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(settings.first_token_timeout_secs))
            .build()?;
        Ok(Some(Self {
            http,
            url: format!(
                "{}/chat/completions",
                settings.base_url.trim_end_matches('/')
            ),
            settings: settings.clone(),
            api_key,
            breaker: Breaker::new(
                "llm",
                settings.failure_threshold,
                Duration::from_secs(settings.cooldown_secs),
            ),
            permits: Arc::new(Semaphore::new(settings.max_concurrent)),
        }))
    }

    pub fn model(&self) -> &str {
        &self.settings.model
    }

    pub fn is_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Generates an answer to `messages`. Each piece of text is sent to `deltas` as it arrives; when
    /// that receiver is dropped (the client hung up) the upstream request is dropped too, which
    /// closes its connection, and the result is [`LlmError::Cancelled`].
    pub async fn generate(
        &self,
        messages: &[ChatMessage],
        deltas: Option<&mpsc::Sender<String>>,
    ) -> Result<Generation, LlmError> {
        if !self.breaker.allow() {
            return Err(self.finish(LlmError::CircuitOpen, None));
        }
        let Ok(_permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            return Err(self.finish(LlmError::Busy, None));
        };
        let started = Instant::now();
        let outcome = match deltas {
            Some(tx) => tokio::select! {
                out = self.call(messages, Some(tx), started) => out,
                _ = tx.closed() => Err(LlmError::Cancelled),
            },
            None => self.call(messages, None, started).await,
        };
        match outcome {
            Ok(generation) => {
                self.breaker.success();
                metrics::counter!("llm_requests_total", "outcome" => "ok").increment(1);
                metrics::histogram!("llm_generation_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("llm_first_token_seconds")
                    .record(generation.first_token_ms as f64 / 1000.0);
                Ok(generation)
            }
            Err(e) => Err(self.finish(e, Some(started))),
        }
    }

    /// Counts and logs a failed generation.
    fn finish(&self, error: LlmError, started: Option<Instant>) -> LlmError {
        if error.is_provider_failure() {
            self.breaker.failure(&error.to_string());
        }
        metrics::counter!("llm_requests_total", "outcome" => error.code()).increment(1);
        tracing::warn!(
            module = "response",
            error = %error,
            code = error.code(),
            elapsed_ms = started.map(|s| s.elapsed().as_millis() as u64),
            "generation failed"
        );
        error
    }

    async fn call(
        &self,
        messages: &[ChatMessage],
        deltas: Option<&mpsc::Sender<String>>,
        started: Instant,
    ) -> Result<Generation, LlmError> {
        let deadline = tokio::time::Instant::from_std(started)
            + Duration::from_secs(self.settings.timeout_secs);
        let first_deadline = tokio::time::Instant::from_std(started)
            + Duration::from_secs(self.settings.first_token_timeout_secs);
        let body = serde_json::json!({
            "model": self.settings.model,
            "messages": messages,
            "max_tokens": self.settings.max_tokens,
            "temperature": self.settings.temperature,
            "stream": true,
        });
        let mut request = self.http.post(&self.url).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose_secret());
        }
        let mut response = tokio::time::timeout_at(first_deadline.min(deadline), request.send())
            .await
            .map_err(|_| LlmError::FirstTokenTimeout(self.settings.first_token_timeout_secs))?
            .map_err(|e| LlmError::Transport(without_url(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let detail = tokio::time::timeout_at(deadline, response.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            return Err(LlmError::Status {
                status: status.as_u16(),
                detail: provider_detail(&detail),
            });
        }
        let is_sse = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let mut parser = SseParser::default();
        let mut whole = Vec::new();
        let mut text = String::new();
        let mut first_token_ms = None;
        let mut finish_reason = None;
        loop {
            let limit = if first_token_ms.is_none() {
                first_deadline.min(deadline)
            } else {
                deadline
            };
            let chunk = tokio::time::timeout_at(limit, response.chunk())
                .await
                .map_err(|_| {
                    if first_token_ms.is_none() && first_deadline < deadline {
                        LlmError::FirstTokenTimeout(self.settings.first_token_timeout_secs)
                    } else {
                        LlmError::Timeout(self.settings.timeout_secs)
                    }
                })?
                .map_err(|e| LlmError::Transport(without_url(&e)))?;
            let Some(chunk) = chunk else { break };
            if !is_sse {
                whole.extend_from_slice(&chunk);
                if whole.len() > 4 << 20 {
                    return Err(LlmError::Malformed("the answer is over 4 MiB".into()));
                }
                continue;
            }
            let mut done = false;
            for event in parser.push(&chunk)? {
                match event {
                    SseEvent::Done => done = true,
                    SseEvent::Delta { content, finish } => {
                        if finish.is_some() {
                            finish_reason = finish;
                        }
                        if content.is_empty() {
                            continue;
                        }
                        first_token_ms.get_or_insert(started.elapsed().as_millis() as u64);
                        text.push_str(&content);
                        if let Some(tx) = deltas
                            && tx.send(content).await.is_err()
                        {
                            return Err(LlmError::Cancelled);
                        }
                    }
                }
            }
            if done {
                break;
            }
        }
        if !is_sse {
            let (content, finish) = parse_completion(&whole)?;
            first_token_ms = Some(started.elapsed().as_millis() as u64);
            finish_reason = finish;
            if let Some(tx) = deltas
                && !content.is_empty()
                && tx.send(content.clone()).await.is_err()
            {
                return Err(LlmError::Cancelled);
            }
            text = content;
        }
        if text.trim().is_empty() {
            return Err(LlmError::Empty);
        }
        Ok(Generation {
            text,
            finish_reason,
            first_token_ms: first_token_ms.unwrap_or_default(),
        })
    }
}

/// A transport error's message without the URL (which may carry credentials in its user info).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "the connection broke off"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut cause = String::new();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {cause}")
    }
}

/// The reason a provider gave in an error body (OpenAI's `{"error": {"message"}}` or plain text),
/// shortened.
fn provider_detail(body: &str) -> String {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            Some(
                e.get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string()),
            )
        })
        .unwrap_or_else(|| body.trim().to_string());
    let mut short: String = message.chars().take(DETAIL_CHARS).collect();
    if short.len() < message.len() {
        short.push('…');
    }
    if short.is_empty() {
        "no reason given".into()
    } else {
        short
    }
}

/// The text and finish reason of a non-streamed chat completion.
fn parse_completion(body: &[u8]) -> Result<(String, Option<String>), LlmError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| LlmError::Malformed(format!("not JSON: {e}")))?;
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| LlmError::Malformed("no choices".into()))?;
    let content = choice
        .pointer("/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| LlmError::Malformed("no choices[0].message.content".into()))?;
    let finish = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok((content.to_string(), finish))
}

#[derive(Debug, PartialEq, Eq)]
enum SseEvent {
    Delta {
        content: String,
        finish: Option<String>,
    },
    Done,
}

/// Splits a stream of Server-Sent Events into chat-completion chunks. Bytes are buffered until a
/// line is complete, so a chunk boundary may fall anywhere (even inside a UTF-8 character).
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
}

/// The longest line accepted from a provider.
const MAX_LINE: usize = 1 << 20;

impl SseParser {
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, LlmError> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            let Some(data) = line.strip_prefix("data:") else {
                // Blank separators, `event:`, `id:` and `:` comments carry nothing we need.
                continue;
            };
            let data = data.trim_start();
            if data == "[DONE]" {
                events.push(SseEvent::Done);
                continue;
            }
            let v: Value = serde_json::from_str(data)
                .map_err(|e| LlmError::Malformed(format!("an event is not JSON: {e}")))?;
            if let Some(error) = v.get("error") {
                return Err(LlmError::Status {
                    status: 200,
                    detail: provider_detail(&serde_json::json!({ "error": error }).to_string()),
                });
            }
            let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
                // Usage-only and keep-alive chunks have no choices.
                continue;
            };
            let content = choice
                .pointer("/delta/content")
                .or_else(|| choice.pointer("/message/content"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let finish = choice
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(str::to_string);
            events.push(SseEvent::Delta { content, finish });
        }
        if self.buffer.len() > MAX_LINE {
            return Err(LlmError::Malformed("an event line is over 1 MiB".into()));
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_chunks_split_anywhere_give_the_same_deltas() {
        let stream = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
            data: {\"choices\":[{\"delta\":{\"content\":\"Grüß \"}}]}\n\n\
            : keep-alive\n\
            data: {\"choices\":[{\"delta\":{\"content\":\"dich [1].\"},\"finish_reason\":\"stop\"}]}\r\n\r\n\
            data: [DONE]\n\n";
        let whole = SseParser::default().push(stream.as_bytes()).unwrap();
        assert_eq!(
            whole,
            vec![
                SseEvent::Delta {
                    content: String::new(),
                    finish: None
                },
                SseEvent::Delta {
                    content: "Grüß ".into(),
                    finish: None
                },
                SseEvent::Delta {
                    content: "dich [1].".into(),
                    finish: Some("stop".into())
                },
                SseEvent::Done,
            ]
        );
        for split in 1..stream.len() {
            let mut p = SseParser::default();
            let mut events = p.push(&stream.as_bytes()[..split]).unwrap();
            events.extend(p.push(&stream.as_bytes()[split..]).unwrap());
            assert_eq!(events, whole, "split at {split}");
        }
    }

    #[test]
    fn malformed_events_and_provider_errors_are_errors() {
        let err = SseParser::default().push(b"data: {not json\n").unwrap_err();
        assert_eq!(err.code(), "malformed");
        let err = SseParser::default()
            .push(b"data: {\"error\":{\"message\":\"context too long\"}}\n")
            .unwrap_err();
        assert!(err.to_string().contains("context too long"), "{err}");
    }

    #[test]
    fn non_streamed_completions_are_understood() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"Yes [2]."},"finish_reason":"length"}]}"#;
        assert_eq!(
            parse_completion(body).unwrap(),
            ("Yes [2].".to_string(), Some("length".to_string()))
        );
        assert_eq!(parse_completion(b"{}").unwrap_err().code(), "malformed");
    }

    #[test]
    fn provider_details_are_short_and_name_the_reason() {
        assert_eq!(
            provider_detail(r#"{"error":{"message":"invalid model","type":"x"}}"#),
            "invalid model"
        );
        assert_eq!(provider_detail("  "), "no reason given");
        assert!(provider_detail(&"x".repeat(1000)).chars().count() <= DETAIL_CHARS + 1);
    }
}
