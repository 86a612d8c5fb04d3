//! What ties a generated answer to its sources: the prompt that numbers the retrieved passages
//! (each cut to a token budget), and the reading of the model's `[n]` markers back into citations.
//! A marker that points at no source is dropped from the answer; a sentence that cites nothing is
//! reported as unsupported, so a client can flag it instead of trusting it.

use std::collections::BTreeSet;

use unicode_segmentation::UnicodeSegmentation;

use super::llm::ChatMessage;
use crate::api::model::SearchHit;

const SYSTEM_PROMPT: &str = "You answer questions using only the numbered sources provided. \
Cite the source of every sentence with its number in square brackets, like [1] or [2][3]. \
If the sources do not contain the answer, say that you could not find it in the documents. \
Be concise.";

/// Bytes per token when estimating how much of a source fits its budget.
const BYTES_PER_TOKEN: usize = 4;

/// An earlier question and answer of the conversation, oldest first.
#[derive(Debug, Clone)]
pub struct Turn {
    pub question: String,
    pub answer: String,
}

/// The chat prompt: instructions, earlier turns, then the numbered sources and the question.
pub fn build_messages(
    question: &str,
    hits: &[SearchHit],
    source_tokens: usize,
    history: &[Turn],
) -> Vec<ChatMessage> {
    let mut messages = vec![ChatMessage::system(SYSTEM_PROMPT)];
    for turn in history {
        messages.push(ChatMessage::user(turn.question.clone()));
        messages.push(ChatMessage::assistant(turn.answer.clone()));
    }
    let mut prompt = String::from("Sources:\n");
    for (i, hit) in hits.iter().enumerate() {
        let text = truncate(hit.text.trim(), source_tokens * BYTES_PER_TOKEN);
        if hit.title.is_empty() {
            prompt.push_str(&format!("[{}] {}\n\n", i + 1, text));
        } else {
            prompt.push_str(&format!("[{}] {}\n{}\n\n", i + 1, hit.title, text));
        }
    }
    prompt.push_str("Question: ");
    prompt.push_str(question.trim());
    messages.push(ChatMessage::user(prompt));
    messages
}

/// At most `max` bytes of `text`, cut at a word boundary where one is near.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = &text[..end];
    match cut.rfind(char::is_whitespace) {
        Some(i) if i > max / 2 => format!("{}…", &cut[..i]),
        _ => format!("{cut}…"),
    }
}

/// A generated answer read against its sources.
#[derive(Debug, Clone, PartialEq)]
pub struct Grounded {
    /// The answer with markers that point at no source removed.
    pub answer: String,
    /// The sources cited (1-based), in ascending order.
    pub cited: Vec<usize>,
    /// Sentences that cite no source.
    pub unsupported_sentences: Vec<String>,
    /// Supported sentences over all sentences, in [0, 1].
    pub coverage: f32,
}

/// A `[...]` marker found in text: its byte range and the source numbers it lists.
struct Marker {
    start: usize,
    end: usize,
    numbers: Vec<usize>,
}

/// Citation markers: `[1]`, `[1, 3]`, `[1; 2]`, `[Source 2]`, `[sources 1 and 2]`. Anything else in
/// brackets (`[note]`, `[x]`) is text, not a marker.
fn markers(text: &str) -> Vec<Marker> {
    let mut out = Vec::new();
    let mut search = 0;
    while let Some(open) = text[search..].find('[').map(|i| i + search) {
        let Some(close) = text[open..].find(']').map(|i| i + open) else {
            break;
        };
        let inner = text[open + 1..close].trim().to_ascii_lowercase();
        let inner = inner
            .strip_prefix("sources")
            .or_else(|| inner.strip_prefix("source"))
            .unwrap_or(&inner);
        let parts: Vec<&str> = inner
            .split([',', ';', ' '])
            .map(str::trim)
            .filter(|p| !p.is_empty() && *p != "and")
            .collect();
        let numbers: Option<Vec<usize>> = parts.iter().map(|p| p.parse().ok()).collect();
        match numbers {
            Some(numbers) if !numbers.is_empty() && numbers.len() <= 20 => {
                out.push(Marker {
                    start: open,
                    end: close + 1,
                    numbers,
                });
                search = close + 1;
            }
            _ => search = open + 1,
        }
    }
    out
}

/// Reads `text`'s markers against `sources` numbered sources.
pub fn ground(text: &str, sources: usize) -> Grounded {
    // Rewrite each marker to keep only the numbers of real sources.
    let mut answer = String::with_capacity(text.len());
    let mut last = 0;
    for m in markers(text) {
        answer.push_str(&text[last..m.start]);
        let valid: Vec<String> = m
            .numbers
            .iter()
            .filter(|n| (1..=sources).contains(*n))
            .map(|n| n.to_string())
            .collect();
        if valid.is_empty() {
            // Drop the marker and a space before it, so "fact [9]." reads "fact.".
            if answer.ends_with(' ') {
                answer.pop();
            }
        } else {
            answer.push('[');
            answer.push_str(&valid.join(", "));
            answer.push(']');
        }
        last = m.end;
    }
    answer.push_str(&text[last..]);
    let answer = answer.trim().to_string();

    // Sentences and the sources each cites. A marker that opens a sentence ("... fact. [2] Next")
    // belongs to the sentence before it: models put markers after the full stop as often as before.
    let mut sentences: Vec<(String, BTreeSet<usize>)> = Vec::new();
    for line in answer.lines() {
        for raw in line.unicode_sentences() {
            let mut rest = raw.trim();
            let mut leading = BTreeSet::new();
            loop {
                let found = markers(rest);
                match found.first() {
                    Some(m) if m.start == 0 => {
                        leading.extend(m.numbers.iter().copied());
                        rest = rest[m.end..].trim_start();
                    }
                    _ => break,
                }
            }
            // An answer that opens with a marker: it belongs to the first sentence.
            let mut cited = BTreeSet::new();
            match sentences.last_mut() {
                Some(previous) => previous.1.extend(leading),
                None => cited = leading,
            }
            if rest.chars().filter(|c| c.is_alphanumeric()).count() < 3 {
                continue;
            }
            cited.extend(markers(rest).iter().flat_map(|m| m.numbers.iter().copied()));
            sentences.push((rest.to_string(), cited));
        }
    }
    let cited: BTreeSet<usize> = sentences.iter().flat_map(|s| s.1.iter().copied()).collect();
    let unsupported_sentences: Vec<String> = sentences
        .iter()
        .filter(|s| s.1.is_empty())
        .map(|s| s.0.clone())
        .collect();
    let coverage = if sentences.is_empty() {
        0.0
    } else {
        (sentences.len() - unsupported_sentences.len()) as f32 / sentences.len() as f32
    };
    Grounded {
        answer,
        cited: cited.into_iter().collect(),
        unsupported_sentences,
        coverage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;
    use uuid::Uuid;

    fn hit(title: &str, text: &str) -> SearchHit {
        SearchHit {
            document_id: Uuid::new_v4(),
            chunk_id: Uuid::new_v4(),
            chunk_index: 0,
            score: 0.5,
            text: text.to_string(),
            title: title.to_string(),
            collection: "default".into(),
            metadata: Map::new(),
        }
    }

    #[test]
    fn markers_to_missing_sources_are_dropped_and_uncited_sentences_reported() {
        let g = ground(
            "Redis memory is checked with INFO memory [2]. Restart it weekly [7]. \
             It is fast [1, 9]. Cranes fly south.",
            3,
        );
        assert_eq!(
            g.answer,
            "Redis memory is checked with INFO memory [2]. Restart it weekly. It is fast [1]. Cranes fly south."
        );
        assert_eq!(g.cited, vec![1, 2]);
        assert_eq!(
            g.unsupported_sentences,
            vec!["Restart it weekly.", "Cranes fly south."]
        );
        assert!((g.coverage - 0.5).abs() < 1e-6, "{}", g.coverage);
    }

    #[test]
    fn a_marker_after_the_full_stop_belongs_to_the_sentence_before() {
        let g = ground(
            "Cranes migrate in autumn. [1][3] They fly at night. [Source 2]",
            3,
        );
        assert_eq!(g.cited, vec![1, 2, 3]);
        assert!(g.unsupported_sentences.is_empty(), "{g:?}");
        assert_eq!(g.coverage, 1.0);
    }

    #[test]
    fn bracketed_words_are_text_not_markers() {
        let g = ground("Use the [x] flag and see [note] below [2].", 2);
        assert_eq!(g.answer, "Use the [x] flag and see [note] below [2].");
        assert_eq!(g.cited, vec![2]);
    }

    #[test]
    fn no_markers_at_all_means_nothing_cited_and_zero_coverage() {
        let g = ground("I could not find this in the documents.", 4);
        assert!(g.cited.is_empty());
        assert_eq!(g.unsupported_sentences.len(), 1);
        assert_eq!(g.coverage, 0.0);
    }

    #[test]
    fn prompt_numbers_sources_cuts_them_to_budget_and_keeps_history() {
        let long = "word ".repeat(500);
        let hits = vec![hit("Cranes", "Cranes fly south."), hit("", &long)];
        let history = vec![Turn {
            question: "What do cranes eat?".into(),
            answer: "Grain [1].".into(),
        }];
        let m = build_messages("Where do they fly?", &hits, 20, &history);
        assert_eq!(
            m.iter().map(|m| m.role).collect::<Vec<_>>(),
            vec!["system", "user", "assistant", "user"]
        );
        let prompt = &m[3].content;
        assert!(prompt.contains("[1] Cranes\nCranes fly south."), "{prompt}");
        assert!(prompt.contains("[2] word"), "{prompt}");
        assert!(prompt.len() < 200, "source 2 is cut to ~80 bytes: {prompt}");
        assert!(prompt.ends_with("Question: Where do they fly?"));
    }
}
