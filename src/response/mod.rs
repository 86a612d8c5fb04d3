//! The response generator: builds an extractive answer from retrieved chunks.
//!
//! No language model writes text here: the answer is the sentences from the top chunks that best
//! cover the question's terms (stemmed like the keyword retriever, rarer terms weighing more),
//! each marked `[n]` with the number of the source it came from, so every claim is traceable.
//! `confidence` combines how much of the question the answer covers with how strongly the
//! retrievers agreed on the top source.

pub mod http;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::Instrument;
use unicode_segmentation::UnicodeSegmentation;

use crate::api::model::{Citation, QueryResponse, SearchHit};
use crate::config::{QuerySettings, ResponseSettings};
use crate::embedder::Bm25Encoder;
use crate::query::{QueryError, Searcher, validate_params};
use crate::storage::vector::SearchMode;

pub const NO_ANSWER: &str = "I could not find anything about this in the indexed documents.";
const SNIPPET_CHARS: usize = 280;

#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error(transparent)]
    Query(#[from] QueryError),
}

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
}

#[async_trait]
pub trait Responder: Send + Sync + 'static {
    async fn answer(&self, params: AnswerParams) -> Result<QueryResponse, ResponseError>;
    /// The extractive answer over given passages (no retrieval): answer, citations, confidence.
    fn compose(&self, query: &str, hits: &[SearchHit]) -> (String, Vec<Citation>, f32);
}

pub struct ResponseService {
    searcher: Arc<dyn Searcher>,
    bm25: Arc<Bm25Encoder>,
    settings: ResponseSettings,
    query_settings: QuerySettings,
}

impl ResponseService {
    pub fn new(
        searcher: Arc<dyn Searcher>,
        bm25: Arc<Bm25Encoder>,
        settings: ResponseSettings,
        query_settings: QuerySettings,
    ) -> Self {
        Self {
            searcher,
            bm25,
            settings,
            query_settings,
        }
    }
}

#[async_trait]
impl Responder for ResponseService {
    async fn answer(&self, p: AnswerParams) -> Result<QueryResponse, ResponseError> {
        let started = Instant::now();
        let mut settings = self.query_settings.clone();
        settings.max_top_k = self.settings.max_top_k;
        let mut params = validate_params(
            &settings,
            p.query,
            p.top_k,
            self.settings.default_top_k,
            Some(SearchMode::Hybrid),
            p.collection,
            p.filter,
        )?;
        params.scope = p.scope;
        params.fresh = p.fresh;
        let query = params.query.clone();
        let outcome = self
            .searcher
            .search(params)
            .instrument(tracing::info_span!("query"))
            .await?;
        let bm25 = Arc::clone(&self.bm25);
        let max_sentences = self.settings.max_sentences;
        let rrf_k = self.query_settings.rrf_k;
        let hits = outcome.hits;
        // Sentence splitting and scoring is CPU work; keep it off the executor.
        let answering = Instant::now();
        let span = tracing::info_span!("answer");
        let (answer, citations, confidence) = tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            compose_answer(&bm25, &query, &hits, max_sentences, rrf_k)
        })
        .await
        .unwrap_or_else(|_| (NO_ANSWER.to_string(), Vec::new(), 0.0));
        crate::telemetry::stage_done("answer", answering);
        metrics::histogram!("response_answer_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("query_answer_confidence").record(f64::from(confidence));
        Ok(QueryResponse {
            answer,
            citations,
            confidence,
            cached: outcome.cached,
            took_ms: started.elapsed().as_millis() as u64,
        })
    }

    fn compose(&self, query: &str, hits: &[SearchHit]) -> (String, Vec<Citation>, f32) {
        compose_answer(
            &self.bm25,
            query,
            hits,
            self.settings.max_sentences,
            self.query_settings.rrf_k,
        )
    }
}

/// A candidate answer sentence.
struct Sentence {
    source: usize,
    position: usize,
    text: String,
    terms: HashSet<u32>,
}

/// Splits chunk text into answer candidates. Lines are split first: Markdown list items and command
/// lines carry no sentence punctuation but are answers in their own right. Headings are context,
/// not answers, and are skipped. In a code block, a comment line and the commands under it form
/// one candidate ("Check memory usage: redis-cli info memory"), since the comment says what the
/// command is for.
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    let mut unit: Option<(String, Vec<String>)> = None;
    let flush = |unit: &mut Option<(String, Vec<String>)>, out: &mut Vec<String>| {
        if let Some((comment, commands)) = unit.take() {
            match (comment.is_empty(), commands.is_empty()) {
                (_, true) => {}
                (true, false) => out.extend(commands),
                (false, false) => out.push(format!("{comment}: {}", commands.join("; "))),
            }
        }
    };
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            flush(&mut unit, &mut out);
            in_code = !in_code;
            continue;
        }
        if in_code {
            if let Some(comment) = trimmed.strip_prefix('#') {
                flush(&mut unit, &mut out);
                unit = Some((comment.trim().to_string(), Vec::new()));
            } else if trimmed.is_empty() {
                flush(&mut unit, &mut out);
            } else {
                unit.get_or_insert_with(|| (String::new(), Vec::new()))
                    .1
                    .push(trimmed.to_string());
            }
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        let cleaned = trimmed.trim_start_matches(['-', '*', '>', ' ']).trim();
        let cleaned = cleaned
            .strip_prefix("[ ]")
            .or_else(|| cleaned.strip_prefix("[x]"))
            .unwrap_or(cleaned)
            .trim();
        if cleaned.chars().filter(|c| c.is_alphanumeric()).count() < 3 {
            continue;
        }
        out.extend(
            cleaned
                .unicode_sentences()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        );
    }
    flush(&mut unit, &mut out);
    out.retain(|s| s.chars().filter(|c| c.is_alphanumeric()).count() >= 3);
    out
}

fn snippet(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= SNIPPET_CHARS {
        return flat;
    }
    let cut: String = flat.chars().take(SNIPPET_CHARS).collect();
    match cut.rfind(' ') {
        Some(i) if i > SNIPPET_CHARS / 2 => format!("{}…", &cut[..i]),
        _ => format!("{cut}…"),
    }
}

/// The extractive answer, its citations (one per hit, numbered from 1) and a confidence in [0, 1].
pub fn compose_answer(
    bm25: &Bm25Encoder,
    query: &str,
    hits: &[SearchHit],
    max_sentences: usize,
    rrf_k: usize,
) -> (String, Vec<Citation>, f32) {
    if hits.is_empty() {
        return (NO_ANSWER.to_string(), Vec::new(), 0.0);
    }
    let query_terms: HashSet<u32> = bm25.query(query).indices.into_iter().collect();
    let mut candidates = Vec::new();
    for (source, hit) in hits.iter().enumerate() {
        for (position, text) in sentences(&hit.text).into_iter().enumerate() {
            let terms = bm25.query(&text).indices.into_iter().collect();
            candidates.push(Sentence {
                source,
                position,
                text,
                terms,
            });
        }
    }
    // Rarer terms among the candidates say more about which sentence answers the question.
    let mut df: HashMap<u32, usize> = HashMap::new();
    for s in &candidates {
        for t in s.terms.intersection(&query_terms) {
            *df.entry(*t).or_default() += 1;
        }
    }
    let n = candidates.len().max(1) as f32;
    let idf = |t: &u32| (1.0 + n / (1.0 + *df.get(t).unwrap_or(&0) as f32)).ln();
    let total_weight: f32 = query_terms.iter().map(idf).sum::<f32>().max(f32::EPSILON);
    let mut scored: Vec<(f32, &Sentence)> = candidates
        .iter()
        .map(|s| {
            let overlap: f32 = s.terms.intersection(&query_terms).map(idf).sum();
            // Earlier sources ranked higher; a slight preference for a chunk's opening sentences.
            let prior = 0.15 / (1.0 + s.source as f32) + 0.02 / (1.0 + s.position as f32);
            let length_penalty = if s.text.len() > 400 { 0.8 } else { 1.0 };
            ((overlap / total_weight) * length_penalty + prior, s)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));

    let mut chosen: Vec<&Sentence> = Vec::new();
    let mut per_source: HashMap<usize, usize> = HashMap::new();
    let mut covered: HashSet<u32> = HashSet::new();
    for (score, s) in &scored {
        if chosen.len() >= max_sentences.max(1) {
            break;
        }
        let relevant = !s.terms.is_disjoint(&query_terms);
        if !relevant && !chosen.is_empty() {
            continue;
        }
        if *score <= 0.0 || per_source.get(&s.source).copied().unwrap_or(0) >= 2 {
            continue;
        }
        if chosen.iter().any(|c| c.text == s.text) {
            continue;
        }
        *per_source.entry(s.source).or_default() += 1;
        covered.extend(s.terms.intersection(&query_terms).copied());
        chosen.push(s);
    }
    if chosen.is_empty()
        && let Some(first) = candidates.first()
    {
        chosen.push(first);
    }
    // Read in source order, and within a source in text order.
    chosen.sort_by_key(|s| (s.source, s.position));
    let answer = if chosen.is_empty() {
        snippet(&hits[0].text) + " [1]"
    } else {
        chosen
            .iter()
            .map(|s| format!("{} [{}]", s.text, s.source + 1))
            .collect::<Vec<_>>()
            .join(" ")
    };

    let citations = hits
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let best = chosen
                .iter()
                .find(|s| s.source == i)
                .map(|s| s.text.as_str());
            Citation {
                n: i + 1,
                document_id: h.document_id,
                chunk_id: h.chunk_id,
                title: h.title.clone(),
                snippet: snippet(best.unwrap_or(&h.text)),
                score: h.score,
            }
        })
        .collect();

    let coverage = if query_terms.is_empty() {
        0.0
    } else {
        covered.iter().map(idf).sum::<f32>() / total_weight
    };
    // A chunk ranked first by both retrievers scores 2/(k+1) under reciprocal rank fusion.
    let agreement = (hits[0].score * (rrf_k as f32 + 1.0) / 2.0).clamp(0.0, 1.0);
    let confidence = (0.7 * coverage + 0.3 * agreement).clamp(0.0, 1.0);
    (answer, citations, (confidence * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use uuid::Uuid;

    fn hit(text: &str, score: f32) -> SearchHit {
        SearchHit {
            document_id: Uuid::new_v4(),
            chunk_id: Uuid::new_v4(),
            chunk_index: 0,
            score,
            text: text.to_string(),
            title: "Runbook".into(),
            collection: "default".into(),
            metadata: Map::new(),
        }
    }

    #[test]
    fn picks_the_sentence_that_answers_and_cites_it() {
        let s = Settings::defaults_with(&[]).unwrap();
        let bm25 = Bm25Encoder::new(&s.query).unwrap();
        let hits = vec![
            hit(
                "Deployments go through staging first. Monitor metrics during deployment.",
                0.03,
            ),
            hit(
                "# Check memory usage\n```bash\ndocker exec doc-rag-redis-prod redis-cli -a $REDIS_PASSWORD info memory\n```\nClear cache if needed.",
                0.02,
            ),
        ];
        let (answer, citations, confidence) =
            compose_answer(&bm25, "How do I check Redis memory usage?", &hits, 3, 60);
        assert!(answer.contains("info memory [2]"), "{answer}");
        assert_eq!(citations.len(), 2);
        assert_eq!(citations[1].n, 2);
        assert!(citations[1].snippet.contains("memory"));
        assert!(confidence > 0.3 && confidence <= 1.0, "{confidence}");
    }

    #[test]
    fn no_hits_means_no_answer_and_zero_confidence() {
        let s = Settings::defaults_with(&[]).unwrap();
        let bm25 = Bm25Encoder::new(&s.query).unwrap();
        let (answer, citations, confidence) = compose_answer(&bm25, "anything", &[], 3, 60);
        assert_eq!(answer, NO_ANSWER);
        assert!(citations.is_empty());
        assert_eq!(confidence, 0.0);
    }

    #[test]
    fn sentences_split_lines_and_skip_code_fences() {
        let s = sentences(
            "# Title here\n- first item is long\n```bash\n# Check memory\nredis-cli info memory\n\nls -l\n# dangling\n```\nOne. Two sentences here.",
        );
        assert_eq!(
            s,
            vec![
                "first item is long",
                "Check memory: redis-cli info memory",
                "ls -l",
                "One.",
                "Two sentences here."
            ]
        );
    }
}
