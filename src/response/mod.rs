//! The response generator (port 8085): turns a question into a cited answer.
//!
//! It retrieves through the query module, then writes the answer one of two ways:
//! - **extractive** ([`extractive`]), always available offline: the sentences of the top chunks that
//!   best cover the question, each marked `[n]` with its source;
//! - **generated** ([`llm`], [`grounding`]), when `response.llm.base_url` names an OpenAI-compatible
//!   provider: the model gets the numbered sources, and its `[n]` markers are read back into
//!   citations; sentences that cite nothing are reported. If the provider fails, times out, is busy
//!   or its circuit is open, the answer is the extractive one and says why.
//!
//! Answers can be streamed ([`Responder::answer_stream`]): the sources first, then the text as it
//! is written, then the finished answer. A client that goes away cancels the generation.
//!
//! `confidence` = coverage × (0.5 + 0.3 × agreement + 0.15 × margin), in [0, 0.95]:
//! - coverage: for extractive answers, the share of the question's terms (weighted by rarity) that
//!   the answer contains; for generated ones, the share of its sentences that cite a source;
//! - agreement: the top source's fused score over the best any source can score (ranked first by
//!   both retrievers);
//! - margin: how far the top source leads the second, relative to its score.
//!
//! It reaches its ceiling of 0.95 only when every part of the answer is supported, both retrievers
//! put the same source first and nothing else comes close (retrieval is never certain); an answer
//! with no support scores 0.

pub mod conversation;
pub mod extractive;
pub mod grounding;
pub mod history;
pub mod http;
pub mod llm;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tracing::Instrument;
use uuid::Uuid;

use self::grounding::Turn;
use self::history::{History, HistoryError};
use self::llm::LlmClient;
use crate::api::model::{
    AnswerTimings, Citation, Generator, GeneratorChoice, QueryResponse, SearchHit,
};
use crate::config::{QuerySettings, ResponseSettings};
use crate::embedder::Bm25Encoder;
use crate::query::fusion::best_score;
use crate::query::{QueryError, Searcher, validate_params};
use crate::storage::answers::AnswerRecord;
use crate::storage::vector::SearchMode;

pub const NO_ANSWER: &str = "I could not find anything about this in the indexed documents.";

/// Events a streamed answer is buffered for before the producer waits on the client.
const STREAM_BUFFER: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    History(#[from] HistoryError),
}

/// The longest standalone question a rewrite may produce.
const REWRITE_MAX_BYTES: usize = 1000;

/// A question to answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnswerParams {
    pub query: String,
    pub top_k: Option<usize>,
    pub collection: Option<String>,
    pub filter: Option<Map<String, Value>>,
    /// The collections the caller may read (`None`: all); answers cite nothing outside them.
    #[serde(default)]
    pub scope: Option<Vec<String>>,
    /// Retrieve afresh instead of from the cache (`Cache-Control: no-cache`).
    #[serde(default)]
    pub fresh: bool,
    #[serde(default)]
    pub generator: GeneratorChoice,
    /// Who asks: answers are recorded under this owner (see [`history::owner_of`]); empty: not
    /// recorded.
    #[serde(default)]
    pub owner: String,
    /// A follow-up in this conversation of the owner's.
    #[serde(default)]
    pub conversation_id: Option<Uuid>,
}

/// One event of a streamed answer, in this order: `Sources`, any number of `Delta`, `Done`.
#[derive(Debug, Clone)]
pub enum AnswerEvent {
    Sources {
        query_id: Uuid,
        sources: Vec<Citation>,
    },
    Delta(String),
    Done(Box<QueryResponse>),
}

#[async_trait]
pub trait Responder: Send + Sync + 'static {
    async fn answer(&self, params: AnswerParams) -> Result<QueryResponse, ResponseError>;
    /// Retrieves, then streams the answer. Bad input and retrieval failures are errors before any
    /// event; dropping the receiver cancels the generation.
    async fn answer_stream(
        &self,
        params: AnswerParams,
    ) -> Result<mpsc::Receiver<AnswerEvent>, ResponseError>;
    /// The extractive answer over given passages (no retrieval): answer, citations, confidence.
    fn compose(&self, query: &str, hits: &[SearchHit]) -> (String, Vec<Citation>, f32);
}

pub struct ResponseService {
    inner: Arc<Inner>,
}

struct Inner {
    searcher: Arc<dyn Searcher>,
    bm25: Arc<Bm25Encoder>,
    settings: ResponseSettings,
    query_settings: QuerySettings,
    llm: Option<LlmClient>,
    history: Arc<History>,
}

impl ResponseService {
    pub fn new(
        searcher: Arc<dyn Searcher>,
        bm25: Arc<Bm25Encoder>,
        settings: ResponseSettings,
        query_settings: QuerySettings,
        history: Arc<History>,
    ) -> anyhow::Result<Self> {
        let llm = LlmClient::from_settings(&settings.llm)?;
        Ok(Self {
            inner: Arc::new(Inner {
                searcher,
                bm25,
                settings,
                query_settings,
                llm,
                history,
            }),
        })
    }
}

/// What retrieval found for a question.
struct Retrieved {
    /// The question as asked.
    question: String,
    /// The question retrieval used: the rewritten follow-up, else the question.
    query: String,
    rewritten: Option<String>,
    history: Vec<Turn>,
    owner: String,
    conversation_id: Option<Uuid>,
    collection: Option<String>,
    hits: Vec<SearchHit>,
    cached: bool,
    retrieval_ms: u64,
    started: Instant,
}

/// A written answer, before it is stamped with ids and timings.
struct Written {
    answer: String,
    citations: Vec<Citation>,
    coverage: f32,
    generator: Generator,
    fallback_reason: Option<String>,
    model: Option<String>,
    unsupported_sentences: Vec<String>,
    first_token_ms: Option<u64>,
}

impl Written {
    fn extractive(
        answer: String,
        citations: Vec<Citation>,
        coverage: f32,
        fallback_reason: Option<String>,
    ) -> Self {
        Self {
            answer,
            citations,
            coverage,
            generator: if fallback_reason.is_some() {
                Generator::ExtractiveFallback
            } else {
                Generator::Extractive
            },
            fallback_reason,
            model: None,
            unsupported_sentences: Vec::new(),
            first_token_ms: None,
        }
    }
}

impl Inner {
    async fn retrieve(&self, p: AnswerParams) -> Result<Retrieved, ResponseError> {
        let started = Instant::now();
        let mut settings = self.query_settings.clone();
        settings.max_top_k = self.settings.max_top_k;
        let mut collection = p.collection;
        let mut history = Vec::new();
        if let Some(id) = p.conversation_id {
            let (conversation, turns) = self.history.context(&p.owner, id).await?;
            collection = collection.or(conversation.collection);
            history = turns;
        }
        let question = p.query;
        // The question as asked is what the caller controls: it is checked before anything costly.
        let mut params = validate_params(
            &settings,
            question.clone(),
            p.top_k,
            self.settings.default_top_k,
            Some(SearchMode::Hybrid),
            collection.clone(),
            p.filter,
        )?;
        let rewritten = if history.is_empty() {
            None
        } else {
            self.rewrite(&history, &params.query, p.generator)
                .instrument(tracing::info_span!("rewrite"))
                .await
        };
        if let Some(r) = &rewritten {
            params.query = r.clone();
        }
        params.scope = p.scope;
        params.fresh = p.fresh;
        let query = params.query.clone();
        let outcome = self
            .searcher
            .search(params)
            .instrument(tracing::info_span!("query"))
            .await?;
        Ok(Retrieved {
            question,
            query,
            rewritten,
            history,
            owner: p.owner,
            conversation_id: p.conversation_id,
            collection,
            hits: outcome.hits,
            cached: outcome.cached,
            retrieval_ms: started.elapsed().as_millis() as u64,
            started,
        })
    }

    /// The standalone form of a follow-up: by the language model when there is one (and it is
    /// asked for), else by rule; `None` when the question stands alone.
    async fn rewrite(
        &self,
        history: &[Turn],
        question: &str,
        choice: GeneratorChoice,
    ) -> Option<String> {
        if let (Some(llm), GeneratorChoice::Auto) = (&self.llm, choice) {
            let messages = conversation::rewrite_messages(history, question);
            if let Ok(generation) = llm.generate(&messages, None).await
                && let Some(rewritten) =
                    conversation::clean_rewrite(&generation.text, REWRITE_MAX_BYTES)
            {
                return (rewritten != question.trim()).then_some(rewritten);
            }
        }
        conversation::rewrite_by_rule(history, question)
    }

    /// Records the answer under its owner, so feedback can name it and a conversation can go on.
    async fn record(&self, r: &Retrieved, answer: &QueryResponse) {
        if r.owner.is_empty() {
            return;
        }
        let record = AnswerRecord {
            id: answer.query_id.to_string(),
            owner: r.owner.clone(),
            collection: r.collection.clone(),
            conversation_id: r.conversation_id.map(|id| id.to_string()),
            question: r.question.clone(),
            rewritten: r.rewritten.clone(),
            answer: answer.answer.clone(),
            generator: generator_label(answer.generator).to_string(),
            confidence: f64::from(answer.confidence),
            created_at: chrono::Utc::now().timestamp_millis(),
        };
        if let Err(e) = self.history.record(record).await {
            // The answer stands; only feedback on it (or the next turn's context) will miss it.
            metrics::counter!("response_answers_unrecorded_total").increment(1);
            tracing::warn!(module = "response", error = %e, "could not record the answer");
        }
    }

    /// The extractive answer, off the async executor (sentence splitting and scoring is CPU work).
    async fn extractive(&self, query: &str, hits: &[SearchHit]) -> (String, Vec<Citation>, f32) {
        let bm25 = Arc::clone(&self.bm25);
        let max_sentences = self.settings.max_sentences;
        let (query, hits) = (query.to_string(), hits.to_vec());
        let span = tracing::info_span!("answer");
        tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            extractive::compose_answer(&bm25, &query, &hits, max_sentences)
        })
        .await
        .unwrap_or_else(|_| (NO_ANSWER.to_string(), Vec::new(), 0.0))
    }

    /// Writes the answer: generated when a model is configured and asked for, else (or when the
    /// model fails) extractive. Text goes to `deltas` as it is written; `None` back means the
    /// client went away.
    async fn write(
        &self,
        r: &Retrieved,
        choice: GeneratorChoice,
        deltas: Option<&mpsc::Sender<AnswerEvent>>,
    ) -> Option<Written> {
        let mut fallback_reason = None;
        if let (Some(llm), GeneratorChoice::Auto, false) = (&self.llm, choice, r.hits.is_empty()) {
            let messages = grounding::build_messages(
                &r.question,
                &r.hits,
                self.settings.llm.source_tokens,
                &r.history,
            );
            let generated = async {
                match deltas {
                    Some(events) => generate_forwarding(llm, &messages, events).await,
                    None => llm.generate(&messages, None).await,
                }
            }
            .instrument(tracing::info_span!("generate", model = llm.model()))
            .await;
            match generated {
                Ok(generation) => {
                    let grounded = grounding::ground(&generation.text, r.hits.len());
                    let citations = grounded
                        .cited
                        .iter()
                        .map(|n| citation(*n, &r.hits[n - 1], &r.hits[n - 1].text))
                        .collect();
                    return Some(Written {
                        answer: grounded.answer,
                        citations,
                        coverage: grounded.coverage,
                        generator: Generator::Llm,
                        fallback_reason: None,
                        model: Some(llm.model().to_string()),
                        unsupported_sentences: grounded.unsupported_sentences,
                        first_token_ms: Some(generation.first_token_ms),
                    });
                }
                Err(llm::LlmError::Cancelled) => return None,
                Err(e) => fallback_reason = Some(e.to_string()),
            }
        }
        let (answer, citations, coverage) = self.extractive(&r.query, &r.hits).await;
        if let Some(events) = deltas
            && events
                .send(AnswerEvent::Delta(answer.clone()))
                .await
                .is_err()
        {
            return None;
        }
        Some(Written::extractive(
            answer,
            citations,
            coverage,
            fallback_reason,
        ))
    }

    fn finish(&self, query_id: Uuid, r: &Retrieved, w: Written, writing: Instant) -> QueryResponse {
        let best = best_score(
            self.query_settings.fusion,
            [
                self.query_settings.dense_weight,
                self.query_settings.keyword_weight,
            ],
            self.query_settings.rrf_k,
        );
        let confidence = confidence(&r.hits, w.coverage, best);
        crate::telemetry::stage_done("answer", writing);
        metrics::histogram!("response_answer_seconds").record(r.started.elapsed().as_secs_f64());
        metrics::histogram!("query_answer_confidence").record(f64::from(confidence));
        metrics::counter!("response_answers_total", "generator" => generator_label(w.generator))
            .increment(1);
        QueryResponse {
            query_id,
            conversation_id: r.conversation_id,
            rewritten_query: r.rewritten.clone(),
            answer: w.answer,
            citations: w.citations,
            confidence,
            generator: w.generator,
            fallback_reason: w.fallback_reason,
            model: w.model,
            unsupported_sentences: w.unsupported_sentences,
            cached: r.cached,
            took_ms: r.started.elapsed().as_millis() as u64,
            timings: AnswerTimings {
                retrieval_ms: r.retrieval_ms,
                generation_ms: writing.elapsed().as_millis() as u64,
                first_token_ms: w.first_token_ms,
            },
        }
    }
}

fn generator_label(g: Generator) -> &'static str {
    match g {
        Generator::Extractive => "extractive",
        Generator::Llm => "llm",
        Generator::ExtractiveFallback => "extractive_fallback",
    }
}

/// Runs a generation whose text goes to `events` as deltas. The model client takes a plain text
/// channel; this forwards it, and when `events` closes (the client hung up) it drops the text
/// channel, which makes the client cancel the upstream request.
async fn generate_forwarding(
    llm: &LlmClient,
    messages: &[llm::ChatMessage],
    events: &mpsc::Sender<AnswerEvent>,
) -> Result<llm::Generation, llm::LlmError> {
    let (text_tx, mut text_rx) = mpsc::channel::<String>(STREAM_BUFFER);
    let forward = async move {
        loop {
            tokio::select! {
                piece = text_rx.recv() => match piece {
                    Some(piece) => {
                        if events.send(AnswerEvent::Delta(piece)).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                _ = events.closed() => break,
            }
        }
    };
    let generate = async move { llm.generate(messages, Some(&text_tx)).await };
    let (generated, ()) = tokio::join!(generate, forward);
    generated
}

/// A citation of source `n` (1-based) with a snippet of `text`.
fn citation(n: usize, hit: &SearchHit, text: &str) -> Citation {
    Citation {
        n,
        document_id: hit.document_id,
        chunk_id: hit.chunk_id,
        title: hit.title.clone(),
        snippet: extractive::snippet(text),
        score: hit.score,
    }
}

/// See the module documentation; `best` is the fused score of a source both retrievers ranked
/// first.
pub fn confidence(hits: &[SearchHit], coverage: f32, best: f32) -> f32 {
    let Some(top) = hits.first() else {
        return 0.0;
    };
    let agreement = if best > 0.0 {
        (top.score / best).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let margin = match hits.get(1) {
        Some(second) if top.score > 0.0 => ((top.score - second.score) / top.score).clamp(0.0, 1.0),
        Some(_) => 0.0,
        None => 1.0,
    };
    let c = coverage.clamp(0.0, 1.0) * (0.5 + 0.3 * agreement + 0.15 * margin);
    (c * 1000.0).round() / 1000.0
}

#[async_trait]
impl Responder for ResponseService {
    async fn answer(&self, p: AnswerParams) -> Result<QueryResponse, ResponseError> {
        let choice = p.generator;
        let retrieved = self.inner.retrieve(p).await?;
        let writing = Instant::now();
        let query_id = Uuid::new_v4();
        let written = match self.inner.write(&retrieved, choice, None).await {
            Some(w) => w,
            // Without a delta channel nothing cancels a generation; should one say it was
            // cancelled all the same, the extractive answer stands in.
            None => {
                let (answer, citations, coverage) = self
                    .inner
                    .extractive(&retrieved.query, &retrieved.hits)
                    .await;
                Written::extractive(answer, citations, coverage, None)
            }
        };
        let answer = self.inner.finish(query_id, &retrieved, written, writing);
        self.inner.record(&retrieved, &answer).await;
        Ok(answer)
    }

    async fn answer_stream(
        &self,
        p: AnswerParams,
    ) -> Result<mpsc::Receiver<AnswerEvent>, ResponseError> {
        let choice = p.generator;
        let retrieved = self.inner.retrieve(p).await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let inner = Arc::clone(&self.inner);
        let span = tracing::Span::current();
        tokio::spawn(
            async move {
                let query_id = Uuid::new_v4();
                let sources = retrieved
                    .hits
                    .iter()
                    .enumerate()
                    .map(|(i, h)| citation(i + 1, h, &h.text))
                    .collect();
                if tx
                    .send(AnswerEvent::Sources { query_id, sources })
                    .await
                    .is_err()
                {
                    return;
                }
                let writing = Instant::now();
                let Some(written) = inner.write(&retrieved, choice, Some(&tx)).await else {
                    tracing::info!(
                        module = "response",
                        "client went away; generation cancelled"
                    );
                    metrics::counter!("response_streams_cancelled_total").increment(1);
                    return;
                };
                let done = inner.finish(query_id, &retrieved, written, writing);
                // Recorded before `done`, so a follow-up sent on `done` finds this turn.
                inner.record(&retrieved, &done).await;
                let _ = tx.send(AnswerEvent::Done(Box::new(done))).await;
            }
            .instrument(span),
        );
        Ok(rx)
    }

    fn compose(&self, query: &str, hits: &[SearchHit]) -> (String, Vec<Citation>, f32) {
        let (answer, citations, coverage) = extractive::compose_answer(
            &self.inner.bm25,
            query,
            hits,
            self.inner.settings.max_sentences,
        );
        // Passages given by a caller carry scores of unknown scale: only their order counts.
        let best = hits.iter().map(|h| h.score).fold(0.0, f32::max);
        (answer, citations, confidence(hits, coverage, best))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(score: f32) -> SearchHit {
        SearchHit {
            document_id: Uuid::nil(),
            chunk_id: Uuid::nil(),
            chunk_index: 0,
            score,
            text: String::new(),
            title: String::new(),
            collection: String::new(),
            metadata: Map::new(),
        }
    }

    #[test]
    fn confidence_grows_with_support_agreement_and_lead_and_never_reaches_one() {
        // Fully supported, first for both retrievers, far ahead: the ceiling.
        assert_eq!(confidence(&[hit(1.0), hit(0.0)], 1.0, 1.0), 0.95);
        // Nothing supported: nothing, however good the retrieval.
        assert_eq!(confidence(&[hit(1.0), hit(0.0)], 0.0, 1.0), 0.0);
        assert_eq!(confidence(&[], 1.0, 1.0), 0.0);
        // First for the dense retriever only (0.9 of 1), just ahead of the next source.
        let close = confidence(&[hit(0.9), hit(0.85)], 1.0, 1.0);
        assert!(
            (close - (0.5 + 0.3 * 0.9 + 0.15 * (0.05 / 0.9))).abs() < 1e-3,
            "{close}"
        );
        assert!(close < confidence(&[hit(0.9), hit(0.3)], 1.0, 1.0));
        // Half the answer supported halves it.
        assert!((confidence(&[hit(0.9), hit(0.85)], 0.5, 1.0) - close / 2.0).abs() < 1e-3);
    }
}
