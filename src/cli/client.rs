//! The HTTP-client half of the `doc-rag` CLI: the `ingest`, `ask` and `search` subcommands, their
//! clap arguments, and the plain-text rendering of their results. They talk to a running doc-rag
//! over its public REST API (`/v1`) only, never to the stores directly, so the CLI works the same
//! against a local `make run` and a remote deployment. The HTTP client is in [`super::api`], bulk
//! uploads in [`super::bulk`], file discovery in [`super::files`].
//!
//! Output contract: results (tables, answers, hits, `--json`) go to stdout; progress bars go to
//! stderr and hide themselves when stderr is not a terminal. Failures come back as `Err` whose
//! `Display` is the human message (`<message> (<code>)` for API errors); the binary prints it as
//! `error: …` and exits non-zero.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use uuid::Uuid;

use super::api::Api;
use super::bulk::{self, BulkOptions, ItemOutcome};
use super::files::{collect_files, read_document, supported_list};
use super::output::{emit, excerpt};
use crate::api::model::*;
use crate::storage::vector::SearchMode;

/// Characters of chunk text shown under each search hit.
const HIT_EXCERPT_CHARS: usize = 200;

#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Base URL of the doc-rag API
    #[arg(long, env = "DOCRAG_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Access token or API key (default: the session `doc-rag login` stored)
    #[arg(long, env = "DOCRAG_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct IngestArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Files or folders (walked recursively; only .txt .text .log .md .markdown .html .htm .pdf
    /// files are taken from folders; an explicitly named file with another extension is an error
    /// reported for that file)
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Collection to add the documents to (the server's default collection when omitted)
    #[arg(long)]
    pub collection: Option<String>,
    /// Set external_id to the file's path so re-ingesting a file replaces it (default true)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub replace: bool,
    /// Bulk requests in flight at once (each carries up to --batch-size files)
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Files per bulk request (also cut at 16 MiB of request body)
    #[arg(long, default_value_t = bulk::DEFAULT_MAX_DOCUMENTS, value_parser = clap::value_parser!(u64).range(1..=10_000).map(|n| n as usize))]
    pub batch_size: usize,
    /// Don't wait for indexing
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this many seconds
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
}

#[derive(clap::Args, Debug)]
pub struct AskArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The question to answer from the ingested documents
    pub question: String,
    /// Number of chunks the answer draws on (server default when omitted)
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Only use documents from this collection
    #[arg(long)]
    pub collection: Option<String>,
    /// Print the raw JSON response (not streamed)
    #[arg(long)]
    pub json: bool,
    /// Wait for the whole answer instead of printing it as it is written
    #[arg(long)]
    pub no_stream: bool,
    /// Answer with sentences extracted from the sources, never with the language model
    #[arg(long)]
    pub extractive: bool,
    /// Ask in a conversation: its id for a follow-up, or `new` to start one (its id is printed)
    #[arg(long, value_name = "ID|new")]
    pub conversation: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct FeedbackArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The answer's query id (`doc-rag ask` prints it)
    pub query_id: Uuid,
    /// Thumbs up or down
    #[arg(value_parser = ["up", "down"])]
    pub rating: String,
    /// What was good or wrong about the answer
    #[arg(long)]
    pub comment: Option<String>,
}

/// `doc-rag feedback`: rate an answer.
pub async fn feedback(args: FeedbackArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server).await?;
    let body = serde_json::json!({
        "query_id": args.query_id,
        "rating": args.rating,
        "comment": args.comment,
    });
    let _: serde_json::Value = api.json(api.post("/v1/feedback").json(&body)).await?;
    emit(&format!("rated {} {}\n", args.query_id, args.rating))
}

#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The search query
    pub query: String,
    /// Number of chunks to return (server default when omitted)
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Retrieval mode (server default, hybrid, when omitted)
    #[arg(long, value_parser = PossibleValuesParser::new(["hybrid", "dense", "keyword"]).map(search_mode_from_name))]
    pub mode: Option<SearchMode>,
    /// Only search documents from this collection
    #[arg(long)]
    pub collection: Option<String>,
    /// Print the raw JSON response
    #[arg(long)]
    pub json: bool,
}

/// `SearchMode` lives in storage, which has no reason to depend on clap, so the CLI maps names
/// itself. Only names `PossibleValuesParser` already accepted reach here.
fn search_mode_from_name(name: String) -> SearchMode {
    match name.as_str() {
        "dense" => SearchMode::Dense,
        "keyword" => SearchMode::Keyword,
        _ => SearchMode::Hybrid,
    }
}

fn search_mode_name(mode: SearchMode) -> &'static str {
    match mode {
        SearchMode::Hybrid => "hybrid",
        SearchMode::Dense => "dense",
        SearchMode::Keyword => "keyword",
    }
}

// ---------------------------------------------------------------------------------------------
// Subcommands
// ---------------------------------------------------------------------------------------------

/// `doc-rag ingest`: upload files in bulk batches, wait for them to be indexed, print one status
/// row per file (and one line per batch).
pub async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server).await?;
    let collected = collect_files(&args.paths);
    if collected.files.is_empty() && collected.errors.is_empty() {
        bail!("no supported files found (looked for {})", supported_list());
    }

    let mut rows: Vec<FileRow> = collected
        .errors
        .into_iter()
        .map(|(path, message)| FileRow {
            path,
            outcome: ItemOutcome::NotSent(message),
        })
        .collect();

    let options = BulkOptions {
        collection: args.collection.clone(),
        max_documents: args.batch_size,
        max_bytes: bulk::DEFAULT_MAX_BYTES,
        concurrency: args.concurrency.max(1),
        wait: !args.no_wait,
        timeout: Duration::from_secs(args.timeout_secs),
    };
    let replace = args.replace;
    let documents = collected
        .files
        .iter()
        .map(|path| read_document(path, replace));
    let outcome = bulk::upload(&api, documents, &options).await?;
    rows.extend(
        collected
            .files
            .into_iter()
            .zip(outcome.items.iter().cloned())
            .map(|(path, outcome)| FileRow { path, outcome }),
    );
    rows.sort_by(|a, b| a.path.cmp(&b.path));

    let mut out = render_ingest_table(&rows);
    out.push_str(&render_batches(&outcome, args.no_wait));
    emit(&out)?;

    let failed = rows.iter().filter(|r| !r.outcome.is_success()).count();
    if failed > 0 {
        bail!("{failed} of {} file(s) did not ingest", rows.len());
    }
    Ok(())
}

/// `doc-rag search`: ranked chunks without generating an answer.
pub async fn search(args: SearchArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server).await?;
    let body = SearchRequest {
        query: args.query,
        top_k: args.top_k,
        mode: args.mode,
        collection: args.collection,
        filter: None,
    };
    let request = api.post("/v1/search").json(&body);
    if args.json {
        let value: serde_json::Value = api.json(request).await?;
        return emit(&format!("{}\n", serde_json::to_string_pretty(&value)?));
    }
    let response: SearchResponse = api.json(request).await?;
    emit(&format_search(&response))
}

// ---------------------------------------------------------------------------------------------
// Ingest output
// ---------------------------------------------------------------------------------------------

/// One file's line in the `ingest` table.
#[derive(Debug, Clone)]
struct FileRow {
    path: PathBuf,
    outcome: ItemOutcome,
}

fn status_text(outcome: &ItemOutcome) -> String {
    match outcome {
        ItemOutcome::NotSent(message) => format!("error: {message}"),
        ItemOutcome::Rejected { code, message } => format!("rejected: {message} ({code})"),
        ItemOutcome::Queued { .. } => "queued".to_string(),
        ItemOutcome::Done { .. } => "done".to_string(),
        ItemOutcome::Failed {
            document_id, error, ..
        } => format!("failed: {error} (document {document_id})"),
        ItemOutcome::Unconfirmed { reason, .. } => format!("unknown: {reason}"),
        ItemOutcome::TimedOut {
            last_poll_error, ..
        } => {
            let mut text = "timed out: batch not finished".to_string();
            if let Some(e) = last_poll_error {
                text.push_str(&format!(" (last poll error: {e})"));
            }
            text
        }
    }
}

/// The per-file result table: path and status.
fn render_ingest_table(rows: &[FileRow]) -> String {
    let paths: Vec<String> = rows.iter().map(|r| r.path.display().to_string()).collect();
    let path_width = paths
        .iter()
        .map(|p| p.chars().count())
        .chain([4])
        .max()
        .unwrap_or(4);
    let mut out = format!("{:<path_width$}  STATUS\n", "PATH");
    for (row, path) in rows.iter().zip(&paths) {
        out.push_str(&format!(
            "{path:<path_width$}  {}\n",
            status_text(&row.outcome)
        ));
    }
    out
}

/// One line per batch, so its progress can be followed at `GET /v1/batches/{id}`.
fn render_batches(outcome: &bulk::BulkOutcome, no_wait: bool) -> String {
    let mut ids: Vec<Uuid> = Vec::new();
    for id in outcome.items.iter().filter_map(batch_of) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let mut out = String::new();
    for id in ids {
        let accepted = outcome.count(|i| batch_of(i) == Some(id));
        match outcome.batches.iter().find(|b| b.batch_id == id) {
            Some(view) if !no_wait => out.push_str(&format!(
                "batch {id}: {accepted} accepted, {} done, {} failed{}\n",
                view.counts.done,
                view.counts.failed,
                if view.finished { "" } else { " (not finished)" }
            )),
            _ => out.push_str(&format!("batch {id}: {accepted} accepted\n")),
        }
    }
    out
}

fn batch_of(item: &ItemOutcome) -> Option<Uuid> {
    match item {
        ItemOutcome::Queued { batch_id }
        | ItemOutcome::Done { batch_id }
        | ItemOutcome::Failed { batch_id, .. }
        | ItemOutcome::Unconfirmed { batch_id, .. }
        | ItemOutcome::TimedOut { batch_id, .. } => Some(*batch_id),
        ItemOutcome::NotSent(_) | ItemOutcome::Rejected { .. } => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Ask and search output
// ---------------------------------------------------------------------------------------------

/// `ask` output: the answer, its sources with snippets, and a one-line footer.
pub(crate) fn format_answer(response: &QueryResponse) -> String {
    let mut out = String::new();
    out.push_str(response.answer.trim_end());
    out.push_str("\n\n");
    out.push_str(&format_answer_notes(response));
    out
}

/// What `ask` prints after the answer's text: a note on a fallback or on unsupported sentences,
/// the sources with snippets, and a one-line footer.
pub(crate) fn format_answer_notes(response: &QueryResponse) -> String {
    let mut out = String::new();
    if let Some(reason) = &response.fallback_reason {
        out.push_str(&format!("(extractive answer: {reason})\n\n"));
    }
    if !response.unsupported_sentences.is_empty() {
        out.push_str("Not supported by any source:\n");
        for sentence in &response.unsupported_sentences {
            out.push_str(&format!("  - {sentence}\n"));
        }
        out.push('\n');
    }
    if response.citations.is_empty() {
        out.push_str("Sources: none\n");
    } else {
        out.push_str("Sources:\n");
        for citation in &response.citations {
            out.push_str(&format!(
                "[{}] {} (score {:.3})\n",
                citation.n, citation.title, citation.score
            ));
            let snippet = excerpt(&citation.snippet, usize::MAX);
            if !snippet.is_empty() {
                out.push_str(&format!("    {snippet}\n"));
            }
        }
    }
    let mut footer = vec![format!("confidence {:.2}", response.confidence)];
    if let Some(id) = response.conversation_id {
        footer.push(format!("conversation {id}"));
    }
    if let Some(model) = &response.model {
        footer.push(model.clone());
    }
    if response.cached {
        footer.push("cached".to_string());
    }
    footer.push(format!("{} ms", response.took_ms));
    out.push('\n');
    out.push_str(&footer.join(" · "));
    out.push('\n');
    if !response.query_id.is_nil() {
        out.push_str(&format!(
            "rate it: doc-rag feedback {} up|down\n",
            response.query_id
        ));
    }
    out
}

/// `search` output: numbered hits with score, title, where the chunk comes from, and an excerpt.
fn format_search(response: &SearchResponse) -> String {
    let mut out = String::new();
    if response.results.is_empty() {
        out.push_str("no results\n");
    }
    for (rank, hit) in response.results.iter().enumerate() {
        out.push_str(&format!(
            "{}. {:.4}  {}  ({} / chunk #{})\n",
            rank + 1,
            hit.score,
            hit.title,
            hit.document_id,
            hit.chunk_index
        ));
        let text = excerpt(&hit.text, HIT_EXCERPT_CHARS);
        if !text.is_empty() {
            out.push_str(&format!("    {text}\n"));
        }
    }
    let mut footer = vec![
        search_mode_name(response.mode).to_string(),
        format!(
            "{} result{}",
            response.results.len(),
            if response.results.len() == 1 { "" } else { "s" }
        ),
    ];
    if response.cached {
        footer.push("cached".to_string());
    }
    footer.push(format!("{} ms", response.took_ms));
    out.push('\n');
    out.push_str(&footer.join(" · "));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn citation(n: usize, title: &str, snippet: &str, score: f32) -> Citation {
        Citation {
            n,
            document_id: Uuid::nil(),
            chunk_id: Uuid::nil(),
            title: title.to_string(),
            snippet: snippet.to_string(),
            score,
        }
    }

    fn answer_fixture() -> QueryResponse {
        QueryResponse {
            query_id: Uuid::nil(),
            conversation_id: None,
            rewritten_query: None,
            answer: String::new(),
            citations: Vec::new(),
            confidence: 0.0,
            generator: Generator::Extractive,
            fallback_reason: None,
            model: None,
            unsupported_sentences: Vec::new(),
            cached: false,
            took_ms: 0,
            timings: AnswerTimings::default(),
        }
    }

    #[test]
    fn generated_answers_note_fallbacks_unsupported_sentences_and_the_model() {
        let response = QueryResponse {
            answer: "Cranes fly [1]. They sing.".into(),
            citations: vec![citation(1, "Cranes", "Cranes fly south.", 0.9)],
            confidence: 0.4,
            generator: Generator::Llm,
            model: Some("gemma".into()),
            unsupported_sentences: vec!["They sing.".into()],
            took_ms: 800,
            ..answer_fixture()
        };
        assert_eq!(
            format_answer(&response),
            "Cranes fly [1]. They sing.\n\n\
             Not supported by any source:\n  - They sing.\n\n\
             Sources:\n[1] Cranes (score 0.900)\n    Cranes fly south.\n\n\
             confidence 0.40 · gemma · 800 ms\n"
        );
        let fallback = QueryResponse {
            answer: "Cranes fly south [1].".into(),
            generator: Generator::ExtractiveFallback,
            fallback_reason: Some("no first token within 15 s".into()),
            ..answer_fixture()
        };
        assert!(
            format_answer(&fallback).starts_with(
                "Cranes fly south [1].\n\n(extractive answer: no first token within 15 s)\n\n"
            ),
            "{}",
            format_answer(&fallback)
        );
    }

    #[test]
    fn formats_answer_with_sources_and_footer() {
        let response = QueryResponse {
            answer: "Rust has no GC [1]. It uses ownership [2].\n".to_string(),
            citations: vec![
                citation(
                    1,
                    "Rust FAQ",
                    "Rust does not use\n a garbage   collector.",
                    0.8123,
                ),
                citation(2, "The Book", "Ownership rules", 0.5),
            ],
            confidence: 0.874,
            cached: true,
            took_ms: 12,
            ..answer_fixture()
        };
        assert_eq!(
            format_answer(&response),
            "Rust has no GC [1]. It uses ownership [2].\n\
             \n\
             Sources:\n\
             [1] Rust FAQ (score 0.812)\n    Rust does not use a garbage collector.\n\
             [2] The Book (score 0.500)\n    Ownership rules\n\
             \n\
             confidence 0.87 · cached · 12 ms\n"
        );

        let uncached = QueryResponse {
            answer: "I don't know.".to_string(),
            citations: vec![],
            confidence: 0.0,
            cached: false,
            took_ms: 340,
            ..answer_fixture()
        };
        assert_eq!(
            format_answer(&uncached),
            "I don't know.\n\nSources: none\n\nconfidence 0.00 · 340 ms\n"
        );
    }

    #[test]
    fn formats_search_hits() {
        let long = "word ".repeat(100);
        let hit = |score: f32, title: &str, index: u32, text: &str| SearchHit {
            document_id: Uuid::nil(),
            chunk_id: Uuid::nil(),
            chunk_index: index,
            score,
            text: text.to_string(),
            title: title.to_string(),
            collection: "default".to_string(),
            metadata: Default::default(),
        };
        let response = SearchResponse {
            results: vec![
                hit(0.0325, "Guide", 3, "first\nchunk"),
                hit(0.01, "Long", 0, &long),
            ],
            mode: SearchMode::Keyword,
            cached: false,
            took_ms: 7,
        };
        let out = format_search(&response);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "1. 0.0325  Guide  (00000000-0000-0000-0000-000000000000 / chunk #3)"
        );
        assert_eq!(lines[1], "    first chunk");
        assert!(lines[2].starts_with("2. 0.0100  Long  "));
        assert!(lines[3].ends_with('…'));
        assert!(lines[3].chars().count() <= 4 + HIT_EXCERPT_CHARS + 1);
        assert_eq!(lines.last().unwrap(), &"keyword · 2 results · 7 ms");
    }

    #[test]
    fn ingest_table_shows_each_outcome() {
        let batch_id = Uuid::from_u128(1);
        let document_id = Uuid::from_u128(2);
        let row = |path: &str, outcome| FileRow {
            path: PathBuf::from(path),
            outcome,
        };
        let rows = vec![
            row("a.md", ItemOutcome::Done { batch_id }),
            row(
                "broken.pdf",
                ItemOutcome::Failed {
                    batch_id,
                    document_id,
                    error: "no text layer".into(),
                },
            ),
            row(
                "c.txt",
                ItemOutcome::Rejected {
                    code: "payload_too_large".into(),
                    message: "document too large".into(),
                },
            ),
            row("gone.md", ItemOutcome::NotSent("cannot read file".into())),
            row(
                "slow.html",
                ItemOutcome::TimedOut {
                    batch_id,
                    last_poll_error: None,
                },
            ),
            row(
                "twin.md",
                ItemOutcome::Unconfirmed {
                    batch_id,
                    reason: "one of 2 documents named \"twin.md\" failed: boom".into(),
                },
            ),
        ];
        let table = render_ingest_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "PATH        STATUS");
        assert_eq!(lines[1], "a.md        done");
        assert_eq!(
            lines[2],
            format!("broken.pdf  failed: no text layer (document {document_id})")
        );
        assert_eq!(
            lines[3],
            "c.txt       rejected: document too large (payload_too_large)"
        );
        assert_eq!(lines[4], "gone.md     error: cannot read file");
        assert_eq!(lines[5], "slow.html   timed out: batch not finished");
        assert_eq!(
            lines[6],
            "twin.md     unknown: one of 2 documents named \"twin.md\" failed: boom"
        );

        let successes: Vec<bool> = rows.iter().map(|r| r.outcome.is_success()).collect();
        assert_eq!(successes, [true, false, false, false, false, false]);
        assert!(ItemOutcome::Queued { batch_id }.is_success());
    }

    #[test]
    fn batch_lines_count_each_batch_once() {
        let (b1, b2) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let view = |id, done, failed| crate::storage::BatchView {
            batch_id: id,
            total: done + failed,
            counts: crate::storage::JobCounts {
                queued: 0,
                running: 0,
                done,
                failed,
            },
            finished: true,
            failures: vec![],
            created_at: chrono::Utc::now(),
        };
        let outcome = bulk::BulkOutcome {
            items: vec![
                ItemOutcome::Done { batch_id: b1 },
                ItemOutcome::NotSent("x".into()),
                ItemOutcome::Done { batch_id: b1 },
                ItemOutcome::Done { batch_id: b2 },
            ],
            batches: vec![view(b1, 2, 0), view(b2, 1, 0)],
            ..Default::default()
        };
        assert_eq!(
            render_batches(&outcome, false),
            format!(
                "batch {b1}: 2 accepted, 2 done, 0 failed\nbatch {b2}: 1 accepted, 1 done, 0 failed\n"
            )
        );
        assert_eq!(
            render_batches(&outcome, true),
            format!("batch {b1}: 2 accepted\nbatch {b2}: 1 accepted\n")
        );
    }

    #[test]
    fn search_mode_names_round_trip() {
        for mode in [SearchMode::Hybrid, SearchMode::Dense, SearchMode::Keyword] {
            assert_eq!(
                search_mode_from_name(search_mode_name(mode).to_string()),
                mode
            );
        }
    }
}
