//! Follow-up questions in a conversation. "What do they eat?" retrieves nothing useful on its own,
//! so before retrieval a follow-up is rewritten into a standalone question: by the language model
//! when one is configured, else (or when it fails) by a rule that carries the earlier question's
//! content words over to a follow-up that leans on them.

use super::grounding::Turn;
use super::llm::ChatMessage;

/// Words that point back at something said before: a follow-up with one of them is rewritten.
const ANAPHORA: &[&str] = &[
    "it", "its", "it's", "they", "them", "their", "theirs", "this", "that", "these", "those", "he",
    "him", "his", "she", "her", "hers", "there", "then", "same", "such", "also", "else", "other",
    "another", "more", "former", "latter", "one", "ones",
];

/// Words that carry no topic, left out of what is carried over.
const STOP: &[&str] = &[
    "a", "an", "the", "and", "or", "but", "if", "of", "to", "in", "on", "at", "by", "for", "with",
    "from", "about", "as", "into", "is", "are", "was", "were", "be", "been", "being", "do", "does",
    "did", "done", "have", "has", "had", "can", "could", "should", "would", "will", "shall", "may",
    "might", "must", "i", "you", "we", "me", "my", "your", "our", "us", "what", "which", "who",
    "whom", "whose", "when", "where", "why", "how", "not", "no", "yes", "so", "than", "too",
    "very", "just", "any", "all", "some", "there", "here", "please", "tell", "explain", "describe",
    "show", "give", "know", "get", "use", "used", "using", "many", "much",
];

/// A follow-up of at most this many content words is taken to lean on the conversation.
const SHORT_FOLLOW_UP: usize = 2;

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn content_words(text: &str) -> Vec<String> {
    words(text)
        .into_iter()
        .filter(|w| !STOP.contains(&w.as_str()) && !ANAPHORA.contains(&w.as_str()))
        .collect()
}

/// The rule: a follow-up that uses a pointing word ("they", "it", "that") or is very short gets
/// the content words of the latest earlier question (as rewritten, when it was) that it lacks,
/// appended. Anything else is standalone already: `None`.
pub fn rewrite_by_rule(history: &[Turn], follow_up: &str) -> Option<String> {
    let last = history.last()?;
    let own = words(follow_up);
    let leans = own.iter().any(|w| ANAPHORA.contains(&w.as_str()))
        || content_words(follow_up).len() <= SHORT_FOLLOW_UP;
    if !leans {
        return None;
    }
    let mut carried: Vec<String> = Vec::new();
    for w in content_words(&last.question) {
        if !own.contains(&w) && !carried.contains(&w) {
            carried.push(w);
        }
    }
    if carried.is_empty() {
        return None;
    }
    Some(format!("{} {}", follow_up.trim(), carried.join(" ")))
}

/// The prompt that asks a language model for the standalone question.
pub fn rewrite_messages(history: &[Turn], follow_up: &str) -> Vec<ChatMessage> {
    let mut transcript = String::new();
    for turn in history {
        transcript.push_str(&format!(
            "User: {}\nAssistant: {}\n",
            turn.question, turn.answer
        ));
    }
    vec![
        ChatMessage::system(
            "Rewrite the user's follow-up question as one standalone question that can be \
             understood without the conversation. Keep its meaning; name what pronouns refer to. \
             Reply with the question only.",
        ),
        ChatMessage::user(format!(
            "Conversation:\n{transcript}\nFollow-up question: {}",
            follow_up.trim()
        )),
    ]
}

/// The model's rewrite, cleaned of quotes and labels; `None` when it is unusable (empty, or far
/// longer than a question).
pub fn clean_rewrite(text: &str, max_bytes: usize) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = line
        .strip_prefix("Standalone question:")
        .or_else(|| line.strip_prefix("Question:"))
        .unwrap_or(line)
        .trim()
        .trim_matches(['"', '\'', '`'])
        .trim();
    (!line.is_empty() && line.len() <= max_bytes).then(|| line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(q: &str) -> Turn {
        Turn {
            question: q.into(),
            answer: "…".into(),
        }
    }

    #[test]
    fn a_follow_up_that_points_back_gets_the_earlier_topic() {
        let history = vec![turn("When do sandhill cranes migrate?")];
        assert_eq!(
            rewrite_by_rule(&history, "What do they eat?").as_deref(),
            Some("What do they eat? sandhill cranes migrate")
        );
        assert_eq!(
            rewrite_by_rule(&history, "And in spring?").as_deref(),
            Some("And in spring? sandhill cranes migrate")
        );
    }

    #[test]
    fn a_standalone_follow_up_or_a_first_question_is_left_alone() {
        let history = vec![turn("When do cranes migrate?")];
        assert_eq!(
            rewrite_by_rule(&history, "How do I check Redis memory usage?"),
            None
        );
        assert_eq!(rewrite_by_rule(&[], "What do they eat?"), None);
    }

    #[test]
    fn model_rewrites_are_cleaned_or_refused() {
        assert_eq!(
            clean_rewrite("\n\"What do sandhill cranes eat?\"\n(explanation)", 100).as_deref(),
            Some("What do sandhill cranes eat?")
        );
        assert_eq!(
            clean_rewrite("Standalone question: What do cranes eat?", 100).as_deref(),
            Some("What do cranes eat?")
        );
        assert_eq!(clean_rewrite("  \n ", 100), None);
        assert_eq!(clean_rewrite(&"x".repeat(200), 100), None);
    }
}
