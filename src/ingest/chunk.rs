//! Token-aware, Markdown-aware chunking of parsed document text.
//!
//! Owns [`Chunker`], which splits text into chunks that fit the embedding model's context, sized
//! in the model's own tokens (via its `tokenizers::Tokenizer`) rather than characters, so no
//! chunk is silently truncated at embedding time. Markdown (and HTML rendered to Markdown-like
//! text) goes through `text-splitter`'s Markdown splitter so splits prefer heading and block
//! boundaries.

use std::sync::Arc;

use anyhow::bail;
use text_splitter::{ChunkConfig, ChunkSizer, MarkdownSplitter, TextSplitter};
use tokenizers::Tokenizer;

/// One chunk of a document's parsed text.
#[derive(Debug, Clone, PartialEq)]
pub struct TextChunk {
    /// Position of the chunk in the document, contiguous from 0.
    pub index: u32,
    pub text: String,
    /// Byte offset of `text` in the parsed text.
    pub start: usize,
    /// Token count of `text` without special tokens.
    pub token_count: u32,
}

/// Measures text in model tokens, without special tokens.
///
/// Used instead of text-splitter's own `ChunkSizer for Tokenizer`, which panics when the
/// tokenizer reports an error; here a failure degrades to a character count, which for a
/// WordPiece vocabulary over-estimates the token count and so still keeps chunks within budget.
#[derive(Clone)]
struct TokenSizer(Arc<Tokenizer>);

impl TokenSizer {
    fn count(&self, text: &str) -> usize {
        match self.0.encode_fast(text, false) {
            Ok(encoding) => encoding.len(),
            Err(_) => text.chars().count(),
        }
    }
}

impl ChunkSizer for TokenSizer {
    fn size(&self, chunk: &str) -> usize {
        self.count(chunk)
    }
}

/// Token counts of any slice of one text, from a single tokenisation of it.
///
/// The splitters size many overlapping candidate chunks of a long document; tokenising each
/// candidate again kept chunking at 120-200 KiB/s. A WordPiece tokenizer splits text into words
/// at whitespace and punctuation and tokenises each word on its own, so a slice that starts at
/// the first piece of a word and ends at the last piece of a word holds exactly the tokens whose
/// offsets lie inside it: a binary search over the offsets counts them. A slice cut inside a word
/// (the splitters' character-level fallback for an over-long word), or a string that is not a
/// slice of the text, is tokenised for real.
struct TextTokens<'t> {
    text: &'t str,
    /// False when the tokenizer failed on the text: every count then goes to the tokenizer.
    indexed: bool,
    /// Byte range of each token in `text`, in order.
    starts: Vec<usize>,
    ends: Vec<usize>,
    /// Whether each token is the first / the last piece of its word.
    first: Vec<bool>,
    last: Vec<bool>,
    exact: &'t TokenSizer,
}

/// Tokenised in windows this large (cut at whitespace, which no token spans), so a huge document
/// never holds one huge `Encoding`.
const WINDOW_BYTES: usize = 64 * 1024;

impl<'t> TextTokens<'t> {
    fn new(exact: &'t TokenSizer, text: &'t str) -> Self {
        let mut table = Self {
            text,
            indexed: true,
            starts: Vec::new(),
            ends: Vec::new(),
            first: Vec::new(),
            last: Vec::new(),
            exact,
        };
        let mut start = 0;
        while start < text.len() {
            let end = text
                .get(start + WINDOW_BYTES..)
                .and_then(|rest| rest.find(char::is_whitespace))
                .map_or(text.len(), |at| start + WINDOW_BYTES + at);
            if !table.add_window(start, &text[start..end]) {
                table.indexed = false;
                break;
            }
            start = end;
        }
        table
    }

    fn add_window(&mut self, at: usize, window: &str) -> bool {
        let Ok(encoding) = self.exact.0.encode(window, false) else {
            return false;
        };
        let words = encoding.get_word_ids();
        for (i, &(start, end)) in encoding.get_offsets().iter().enumerate() {
            // Added tokens carry no word id: each is a word of its own.
            let word = words.get(i).copied().flatten();
            let first = i == 0 || word.is_none() || words[i - 1] != word;
            let last = i + 1 == words.len() || word.is_none() || words[i + 1] != word;
            self.starts.push(at + start);
            self.ends.push(at + end);
            self.first.push(first);
            self.last.push(last);
        }
        true
    }

    fn count(&self, chunk: &str) -> usize {
        let offset = (chunk.as_ptr() as usize).wrapping_sub(self.text.as_ptr() as usize);
        let inside = offset <= self.text.len() && chunk.len() <= self.text.len() - offset;
        if !self.indexed || !inside {
            return self.exact.count(chunk);
        }
        let (a, b) = (offset, offset + chunk.len());
        // Tokens i..j are those that overlap a..b.
        let i = self.ends.partition_point(|&end| end <= a);
        let j = self.starts.partition_point(|&start| start < b);
        if i >= j {
            return 0;
        }
        let whole_words =
            self.starts[i] >= a && self.first[i] && self.ends[j - 1] <= b && self.last[j - 1];
        if whole_words {
            j - i
        } else {
            self.exact.count(chunk)
        }
    }
}

impl ChunkSizer for TextTokens<'_> {
    fn size(&self, chunk: &str) -> usize {
        self.count(chunk)
    }
}

/// A trimmed chunk as a byte range of the parsed text, with its token count.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    tokens: usize,
}

/// Splits text into token-bounded chunks. Cheap to share: `Send + Sync`, all methods take `&self`.
pub struct Chunker {
    sizer: TokenSizer,
    max_tokens: usize,
    overlap_tokens: usize,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker")
            .field("max_tokens", &self.max_tokens)
            .field("overlap_tokens", &self.overlap_tokens)
            .finish_non_exhaustive()
    }
}

impl Chunker {
    /// `max_tokens` is the chunk capacity in model tokens (the embedding model truncates at 256
    /// word pieces, so the default config uses 200); `overlap_tokens` must be smaller.
    pub fn new(
        mut tokenizer: Tokenizer,
        max_tokens: usize,
        overlap_tokens: usize,
    ) -> anyhow::Result<Self> {
        if max_tokens == 0 {
            bail!("chunk max_tokens must be greater than 0");
        }
        if overlap_tokens >= max_tokens {
            bail!(
                "chunk overlap_tokens ({overlap_tokens}) must be smaller than max_tokens ({max_tokens})"
            );
        }
        // Model tokenizer files usually carry the model's truncation and fixed-length padding
        // (all-MiniLM-L6-v2: 128); either would make every text look the same size to the sizer.
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow::anyhow!("disabling tokenizer truncation: {e}"))?;
        tokenizer.with_padding(None);
        Ok(Self {
            sizer: TokenSizer(Arc::new(tokenizer)),
            max_tokens,
            overlap_tokens,
        })
    }

    /// The splitters' configuration over one document's token table. The overlap was checked
    /// against the capacity in [`Chunker::new`], so this cannot fail.
    fn config<'a>(&self, tokens: &'a TextTokens<'a>) -> ChunkConfig<&'a TextTokens<'a>> {
        let config = ChunkConfig::new(self.max_tokens).with_sizer(tokens);
        match config.with_overlap(self.overlap_tokens) {
            Ok(config) => config,
            Err(_) => ChunkConfig::new(self.max_tokens).with_sizer(tokens),
        }
    }

    /// Chunks of `text`, in order, with indices `0..n`. `markdown` selects the Markdown-aware
    /// splitter. Chunks are trimmed, empty ones dropped, and fragments smaller than an eighth
    /// of the budget joined with a neighbour when the result still fits.
    pub fn chunk(&self, text: &str, markdown: bool) -> Vec<TextChunk> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Vec::new();
        }
        // One tokenisation sizes every candidate the splitters try (and settles that most
        // documents fit in one chunk).
        let table = TextTokens::new(&self.sizer, text);
        let tokens = table.count(trimmed);
        if tokens <= self.max_tokens {
            return vec![TextChunk {
                index: 0,
                text: trimmed.to_string(),
                start: text.len() - text.trim_start().len(),
                token_count: tokens as u32,
            }];
        }
        let pieces: Vec<(usize, &str)> = if markdown {
            MarkdownSplitter::new(self.config(&table))
                .chunk_indices(text)
                .collect()
        } else {
            TextSplitter::new(self.config(&table))
                .chunk_indices(text)
                .collect()
        };
        let mut spans: Vec<Span> = Vec::new();
        // A small span waiting to be joined with the span after it.
        let mut pending: Option<Span> = None;
        for (offset, piece) in pieces {
            // The Markdown splitter keeps leading indentation; drop it and shift the offset so
            // `start` still points at the first byte of the chunk text.
            let leading = piece.len() - piece.trim_start().len();
            let trimmed = piece.trim();
            if trimmed.is_empty() {
                continue;
            }
            let start = offset + leading;
            let mut span = Span {
                start,
                end: start + trimmed.len(),
                tokens: table.count(trimmed),
            };
            if let Some(small) = pending.take() {
                match self.join(&table, small, span) {
                    Some(joined) => span = joined,
                    None => self.push_small(&table, markdown, &mut spans, small),
                }
            }
            if self.is_small(span) {
                pending = Some(span);
            } else {
                spans.push(span);
            }
        }
        if let Some(small) = pending {
            self.push_small(&table, markdown, &mut spans, small);
        }

        spans
            .into_iter()
            .enumerate()
            .map(|(i, span)| TextChunk {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                text: text[span.start..span.end].to_owned(),
                start: span.start,
                token_count: u32::try_from(span.tokens).unwrap_or(u32::MAX),
            })
            .collect()
    }

    // The splitters emit tiny fragments where a section does not fit whole: a parent heading
    // alone (`## Backup and Recovery` followed by a long `### ...` section) or the opening fence
    // of a long code block. Such a chunk embeds as little more than a heading and crowds real
    // content out of the top-k at retrieval, so it is joined with the chunk after it when the
    // joined span still fits the budget; the heading then leads the section it introduces.

    fn is_small(&self, span: Span) -> bool {
        span.tokens < (self.max_tokens / 8).max(1)
    }

    /// The union of two spans if it fits the budget. With overlap the spans intersect; the
    /// union is still one contiguous slice of the text.
    fn join(&self, table: &TextTokens<'_>, first: Span, second: Span) -> Option<Span> {
        let (start, end) = (first.start.min(second.start), first.end.max(second.end));
        let tokens = table.count(table.text.get(start..end)?);
        (tokens <= self.max_tokens).then_some(Span { start, end, tokens })
    }

    /// Places a small span that could not be joined forward: appended to the previous chunk if
    /// it fits, except a heading, which would then dangle at the end of an unrelated section.
    fn push_small(
        &self,
        table: &TextTokens<'_>,
        markdown: bool,
        spans: &mut Vec<Span>,
        small: Span,
    ) {
        let heading = markdown && table.text[small.start..].starts_with('#');
        if !heading
            && let Some(last) = spans.last_mut()
            && let Some(joined) = self.join(table, *last, small)
        {
            *last = joined;
            return;
        }
        spans.push(small);
    }

    /// Token count of `text` without special tokens.
    pub fn count_tokens(&self, text: &str) -> usize {
        self.sizer.count(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKENIZER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tokenizer.json");
    const RUNBOOK: &str = "/work/shared/seed/runbook.md";

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_file(TOKENIZER).expect("load test tokenizer")
    }

    fn chunker(max: usize, overlap: usize) -> Chunker {
        Chunker::new(tokenizer(), max, overlap).expect("valid chunker config")
    }

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn chunker_is_send_and_sync() {
        assert_send_sync::<Chunker>();
    }

    #[test]
    fn overlap_must_be_smaller_than_max() {
        assert!(Chunker::new(tokenizer(), 100, 100).is_err());
        assert!(Chunker::new(tokenizer(), 100, 150).is_err());
        assert!(Chunker::new(tokenizer(), 0, 0).is_err());
        assert!(Chunker::new(tokenizer(), 100, 99).is_ok());
    }

    #[test]
    fn count_ignores_model_truncation_and_padding() {
        let c = chunker(200, 24);
        // The tokenizer file pads/truncates to 128; a 300-word text must count as ~300 tokens.
        let long = "word ".repeat(300);
        assert_eq!(c.count_tokens(&long), 300);
        assert_eq!(c.count_tokens("hello world"), 2);
        assert_eq!(c.count_tokens(""), 0);
    }

    #[test]
    fn short_text_is_one_chunk() {
        let c = chunker(200, 24);
        let text = "  \n A short note about Redis memory.\n\n";
        let chunks = c.chunk(text, false);
        assert_eq!(chunks.len(), 1);
        let chunk = &chunks[0];
        assert_eq!(chunk.index, 0);
        assert_eq!(chunk.text, "A short note about Redis memory.");
        assert_eq!(
            &text[chunk.start..chunk.start + chunk.text.len()],
            chunk.text
        );
        assert_eq!(chunk.token_count as usize, c.count_tokens(&chunk.text));
    }

    #[test]
    fn blank_text_has_no_chunks() {
        let c = chunker(200, 24);
        assert!(c.chunk("", false).is_empty());
        assert!(c.chunk(" \n\n\t ", true).is_empty());
    }

    #[test]
    fn runbook_chunks_fit_and_are_contiguous() {
        let text = std::fs::read_to_string(RUNBOOK).expect("read seed runbook");
        let c = chunker(200, 24);
        let chunks = c.chunk(&text, true);
        assert!(chunks.len() > 3, "only {} chunks", chunks.len());
        for (i, chunk) in chunks.iter().enumerate() {
            assert_eq!(chunk.index as usize, i);
            assert!(
                chunk.token_count as usize <= 200,
                "chunk {i} has {} tokens",
                chunk.token_count
            );
            assert!(chunk.token_count > 0);
            assert_eq!(chunk.token_count as usize, c.count_tokens(&chunk.text));
            assert_eq!(chunk.text, chunk.text.trim());
            assert_eq!(
                &text[chunk.start..chunk.start + chunk.text.len()],
                chunk.text,
                "offset of chunk {i} is wrong"
            );
        }
        assert!(chunks.windows(2).all(|w| w[0].start < w[1].start));
        assert!(chunks.iter().any(|c| c.text.contains("info memory")));
        // Headings are preferred split points.
        assert!(
            chunks.iter().filter(|c| c.text.starts_with('#')).count() >= chunks.len() / 2,
            "few chunks start at a heading"
        );
    }

    #[test]
    fn plain_text_splitter_also_respects_budget() {
        let text = std::fs::read_to_string(RUNBOOK).expect("read seed runbook");
        let c = chunker(64, 8);
        let chunks = c.chunk(&text, false);
        assert!(chunks.len() > 10);
        assert!(chunks.iter().all(|c| c.token_count as usize <= 64));
        assert!(
            chunks
                .iter()
                .enumerate()
                .all(|(i, c)| c.index as usize == i)
        );
    }

    #[test]
    fn markdown_splits_at_headings() {
        let section = |name: &str| {
            format!(
                "# {name}\n\n{}\n\n",
                format!("The {name} section explains one operational topic in detail. ").repeat(4)
            )
        };
        let text = format!(
            "{}{}{}",
            section("Alpha"),
            section("Bravo"),
            section("Charlie")
        );
        let c = chunker(60, 0);
        // Each section fits on its own but no two fit together.
        assert!(c.count_tokens(section("Alpha").trim()) <= 60);
        assert!(c.count_tokens(&format!("{}{}", section("Alpha"), section("Bravo"))) > 60);

        let chunks = c.chunk(&text, true);
        let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(chunks.len(), 3, "{texts:#?}");
        for (chunk, name) in chunks.iter().zip(["Alpha", "Bravo", "Charlie"]) {
            assert!(chunk.text.starts_with(&format!("# {name}\n")), "{texts:#?}");
            assert!(!chunk.text.contains("# ") || chunk.text.matches("# ").count() == 1);
        }
    }

    #[test]
    fn lone_headings_are_joined_with_their_section() {
        let text = std::fs::read_to_string(RUNBOOK).expect("read seed runbook");
        let c = chunker(200, 24);
        let chunks = c.chunk(&text, true);
        // The runbook has `## Section` headings directly followed by a `### Sub` section; none
        // of them may end up as a chunk of its own.
        for chunk in &chunks {
            assert!(
                chunk
                    .text
                    .lines()
                    .any(|l| !l.starts_with('#') && !l.trim().is_empty()),
                "heading-only chunk: {:?}",
                chunk.text
            );
        }
        let backup = chunks
            .iter()
            .find(|c| c.text.starts_with("## Backup and Recovery"))
            .expect("a chunk starts at the Backup and Recovery heading");
        assert!(
            backup.text.contains("### Database Backups"),
            "{:?}",
            backup.text
        );
    }

    #[test]
    fn small_merge_never_exceeds_budget() {
        let c = chunker(40, 0);
        let big = "Paragraph sentence with quite a few words in it to fill space. ".repeat(2);
        let text = format!("# Tiny\n\n{big}\n\n# Tiny again\n\n{big}\n\nend");
        let chunks = c.chunk(&text, true);
        assert!(chunks.iter().all(|ch| ch.token_count <= 40), "{chunks:#?}");
        for ch in &chunks {
            assert_eq!(&text[ch.start..ch.start + ch.text.len()], ch.text);
            assert_eq!(ch.token_count as usize, c.count_tokens(&ch.text));
        }
    }

    #[test]
    fn overlap_repeats_text_between_chunks() {
        let text = (1..=80)
            .map(|i| format!("Sentence number {i} is here."))
            .collect::<Vec<_>>()
            .join(" ");
        let without = chunker(50, 0).chunk(&text, false);
        let with = chunker(50, 20).chunk(&text, false);
        assert!(with.len() > without.len());
        // With overlap, each chunk starts before the previous one ends.
        assert!(
            with.windows(2)
                .all(|w| w[1].start < w[0].start + w[0].text.len())
        );
        assert!(
            without
                .windows(2)
                .all(|w| w[1].start >= w[0].start + w[0].text.len())
        );
    }

    /// The splitters cut the runbook exactly where they cut it when every candidate was
    /// tokenised on its own.
    #[test]
    fn one_tokenisation_splits_like_tokenising_every_candidate() {
        let text = std::fs::read_to_string(RUNBOOK).expect("read seed runbook");
        let exact = chunker(200, 24).sizer;
        let table = TextTokens::new(&exact, &text);
        for (max, overlap) in [(200, 24), (64, 8), (30, 0)] {
            let config = || ChunkConfig::new(max).with_overlap(overlap).expect("config");
            let fast: Vec<(usize, &str)> = MarkdownSplitter::new(config().with_sizer(&table))
                .chunk_indices(&text)
                .collect();
            let slow: Vec<(usize, &str)> =
                MarkdownSplitter::new(config().with_sizer(exact.clone()))
                    .chunk_indices(&text)
                    .collect();
            assert_eq!(fast, slow, "markdown, {max}/{overlap}");
            let fast: Vec<(usize, &str)> = TextSplitter::new(config().with_sizer(&table))
                .chunk_indices(&text)
                .collect();
            let slow: Vec<(usize, &str)> = TextSplitter::new(config().with_sizer(exact.clone()))
                .chunk_indices(&text)
                .collect();
            assert_eq!(fast, slow, "text, {max}/{overlap}");
        }
    }

    #[test]
    fn counts_of_slices_cut_inside_words_and_of_other_strings_are_exact() {
        let exact = chunker(200, 24).sizer;
        let text = "Unbelievably, Zoë's naïve café [CLS] serves 東京 ramen—tonight!";
        let table = TextTokens::new(&exact, text);
        let bounds: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        for (n, &a) in bounds.iter().enumerate() {
            for &b in &bounds[n..] {
                assert_eq!(
                    table.count(&text[a..b]),
                    exact.count(&text[a..b]),
                    "{:?}",
                    &text[a..b]
                );
            }
        }
        // Not a slice of the text: tokenised for real.
        assert_eq!(table.count("hello world"), 2);
    }

    #[test]
    fn a_long_document_is_tokenised_in_windows_with_the_same_counts() {
        let exact = chunker(200, 24).sizer;
        let text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(4000);
        assert!(text.len() > 3 * WINDOW_BYTES);
        let table = TextTokens::new(&exact, &text);
        assert_eq!(table.count(&text), exact.count(&text));
        let middle = &text[WINDOW_BYTES - 300..WINDOW_BYTES + 300];
        assert_eq!(table.count(middle), exact.count(middle));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::sync::OnceLock;

        fn shared() -> &'static Chunker {
            static CHUNKER: OnceLock<Chunker> = OnceLock::new();
            CHUNKER.get_or_init(|| chunker(40, 6))
        }

        /// Prose and Markdown-ish text: words, sentences, paragraphs, headings, list items.
        fn document() -> impl Strategy<Value = String> {
            let word = "[a-zA-Z]{1,12}|[0-9]{1,6}";
            let line = prop::collection::vec(word, 1..30).prop_map(|w| w.join(" "));
            let block = prop_oneof![
                line.clone().prop_map(|l| format!("{l}.")),
                line.clone().prop_map(|l| format!("# {l}")),
                line.prop_map(|l| format!("- {l}")),
            ];
            prop::collection::vec(block, 0..40).prop_map(|b| b.join("\n\n"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Any slice of any text counts as many tokens from the table as from the tokenizer.
            #[test]
            fn slice_counts_match_the_tokenizer(text in "[a-zA-Z0-9 .,;:!?'éüß東京\\-\n]{0,200}", cuts in prop::collection::vec(any::<prop::sample::Index>(), 2)) {
                let exact = &shared().sizer;
                let table = TextTokens::new(exact, &text);
                let bounds: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
                let (a, b) = (cuts[0].get(&bounds), cuts[1].get(&bounds));
                let (a, b) = (*a.min(b), *a.max(b));
                prop_assert_eq!(table.count(&text[a..b]), exact.count(&text[a..b]));
            }

            /// Every chunk is non-empty, within the token budget and the slice of the text at its
            /// offset; chunks are numbered in order; every non-blank byte is in some chunk.
            #[test]
            fn chunks_cover_the_text_within_the_budget(text in document(), markdown in any::<bool>()) {
                let chunks = shared().chunk(&text, markdown);
                prop_assert_eq!(chunks.is_empty(), text.trim().is_empty());
                let mut covered = vec![false; text.len()];
                for (i, c) in chunks.iter().enumerate() {
                    prop_assert_eq!(c.index as usize, i);
                    prop_assert!(!c.text.trim().is_empty());
                    prop_assert!(c.token_count <= 40, "chunk {} has {} tokens", i, c.token_count);
                    prop_assert_eq!(text.get(c.start..c.start + c.text.len()), Some(c.text.as_str()));
                    covered[c.start..c.start + c.text.len()].iter_mut().for_each(|b| *b = true);
                }
                for (i, b) in text.bytes().enumerate() {
                    prop_assert!(b.is_ascii_whitespace() || covered[i], "byte {} ({:?}) is in no chunk", i, b as char);
                }
            }
        }
    }
}
