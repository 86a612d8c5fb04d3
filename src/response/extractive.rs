//! The extractive answer: the sentences from the top chunks that best cover the question's terms
//! (stemmed like the keyword retriever, rarer terms weighing more), each marked `[n]` with the
//! number of the source it came from. No model writes text here, so it always works offline and is
//! the fallback when a language model fails.

use std::collections::{HashMap, HashSet};

use unicode_segmentation::UnicodeSegmentation;

use super::NO_ANSWER;
use crate::api::model::{Citation, SearchHit};
use crate::embedder::Bm25Encoder;

const SNIPPET_CHARS: usize = 280;

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

pub(crate) fn snippet(text: &str) -> String {
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

/// The extractive answer, its citations (one per hit, numbered from 1) and its coverage: the
/// share of the question's terms (weighted by rarity) that the answer contains, in [0, 1].
pub fn compose_answer(
    bm25: &Bm25Encoder,
    query: &str,
    hits: &[SearchHit],
    max_sentences: usize,
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
    (answer, citations, coverage.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use serde_json::Map;
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
        let (answer, citations, coverage) =
            compose_answer(&bm25, "How do I check Redis memory usage?", &hits, 3);
        assert!(answer.contains("info memory [2]"), "{answer}");
        assert_eq!(citations.len(), 2);
        assert_eq!(citations[1].n, 2);
        assert!(citations[1].snippet.contains("memory"));
        assert!(coverage > 0.3 && coverage <= 1.0, "{coverage}");
    }

    #[test]
    fn no_hits_means_no_answer_and_zero_coverage() {
        let s = Settings::defaults_with(&[]).unwrap();
        let bm25 = Bm25Encoder::new(&s.query).unwrap();
        let (answer, citations, coverage) = compose_answer(&bm25, "anything", &[], 3);
        assert_eq!(answer, NO_ANSWER);
        assert!(citations.is_empty());
        assert_eq!(coverage, 0.0);
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
