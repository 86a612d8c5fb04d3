//! The HTTP-client half of the `doc-rag` CLI: the `ingest`, `ask` and `search` subcommands, their
//! clap arguments, and the plain-text rendering of their results. They talk to a running doc-rag
//! over its public REST API (`/v1`) only, never to the stores directly, so the CLI works the same
//! against a local `make run` and a remote deployment.
//!
//! Output contract: results (tables, answers, hits, `--json`) go to stdout; progress bars go to
//! stderr and hide themselves when stderr is not a terminal. Failures come back as `Err` whose
//! `Display` is the human message (`<message> (<code>)` for API errors); the binary prints it as
//! `error: …` and exits non-zero.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::multipart::{Form, Part};
use reqwest::{RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::api::model::*;
use crate::storage::vector::SearchMode;
use crate::storage::{Job, JobStatus};

/// How often `ingest` asks the server about jobs that are not finished yet.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A job-status request that takes longer than this is treated as a failed poll and retried.
const POLL_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Uploads and answers can legitimately take long, so only connecting is bounded.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Characters of chunk text shown under each search hit.
const HIT_EXCERPT_CHARS: usize = 200;
/// Extensions `ingest` takes from folders (and accepts for explicitly named files).
const SUPPORTED_EXTENSIONS: &[&str] =
    &["txt", "text", "log", "md", "markdown", "html", "htm", "pdf"];

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
    /// Concurrent uploads
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
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
    /// Print the raw JSON response
    #[arg(long)]
    pub json: bool,
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

/// `doc-rag ingest`: upload files, wait for them to be indexed, print one status row per file.
pub async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server).await?;
    let collected = collect_files(&args.paths);
    if collected.files.is_empty() && collected.errors.is_empty() {
        bail!("no supported files found (looked for {})", supported_list());
    }

    let mut rows: Vec<FileRow> = collected
        .errors
        .into_iter()
        .map(|(path, message)| FileRow::new(path, RowState::Rejected(message)))
        .collect();

    let concurrency = args.concurrency.max(1);
    let uploaded = upload_all(&api, collected.files, &args, concurrency).await;

    // When the server is simply not there, a table with the same connection error on every row
    // buries the one thing the user needs to know (rejected paths show up on the next run).
    if !uploaded.is_empty()
        && uploaded
            .iter()
            .all(|(_, r)| matches!(r, Err(ClientError::Unreachable { .. })))
    {
        return Err(ClientError::Unreachable { url: api.base }.into());
    }

    for (path, result) in uploaded {
        rows.push(match result {
            Ok(accepted) => FileRow {
                path,
                document_id: Some(accepted.document_id),
                job_id: Some(accepted.job_id),
                state: RowState::Job {
                    status: accepted.status,
                    error: accepted.error,
                },
            },
            Err(e) => FileRow::new(path, RowState::UploadError(e.to_string())),
        });
    }
    rows.sort_by(|a, b| a.path.cmp(&b.path));

    if !args.no_wait {
        wait_for_jobs(
            &api,
            &mut rows,
            concurrency,
            Duration::from_secs(args.timeout_secs),
        )
        .await;
    }

    emit(&render_ingest_table(&rows, args.no_wait))?;

    let failed = rows.iter().filter(|r| r.is_failure(args.no_wait)).count();
    if failed > 0 {
        bail!("{failed} of {} file(s) did not ingest", rows.len());
    }
    Ok(())
}

/// `doc-rag ask`: answer a question with citations.
pub async fn ask(args: AskArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server).await?;
    let body = QueryRequest {
        query: args.question,
        top_k: args.top_k,
        collection: args.collection,
        filter: None,
    };
    let request = api.post("/v1/query").json(&body);
    if args.json {
        // Decoded as a plain value so `--json` shows exactly what the server sent, including any
        // fields newer than this client.
        let value: serde_json::Value = api.json(request).await?;
        return emit(&format!("{}\n", serde_json::to_string_pretty(&value)?));
    }
    let response: QueryResponse = api.json(request).await?;
    emit(&format_answer(&response))
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

/// Writes to stdout, treating a closed pipe (`doc-rag search … | head`) as success rather than
/// panicking the way `print!` would.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// Why a request did not produce the expected response. `Display` is what the user sees.
#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("cannot reach doc-rag at {url}: is it running? (make run)")]
    Unreachable { url: String },
    #[error("{}", render_error_body(.body))]
    Api { status: StatusCode, body: ErrorBody },
    #[error("{}", render_http_error(*.status, .text))]
    Http { status: StatusCode, text: String },
    #[error("request to {url} timed out")]
    Timeout { url: String },
    #[error("{0}")]
    Transport(String),
    #[error("unexpected response from {url}: {reason}")]
    Decode { url: String, reason: String },
    #[error("{0}")]
    Local(String),
}

/// An API error as the user sees it (the binary adds the `error: ` prefix).
fn render_error_body(body: &ErrorBody) -> String {
    format!("{} ({})", body.message, body.code)
}

fn render_http_error(status: StatusCode, text: &str) -> String {
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}")
    }
}

/// Turns a non-success response into an error: the API's `ErrorBody` when the body is one,
/// otherwise the status and the start of whatever a proxy or crashed handler sent instead.
fn error_from_response(status: StatusCode, body: &[u8]) -> ClientError {
    if let Ok(body) = serde_json::from_slice::<ErrorBody>(body) {
        return ClientError::Api { status, body };
    }
    ClientError::Http {
        status,
        text: excerpt(&String::from_utf8_lossy(body), 300),
    }
}

/// reqwest's `Display` stops at "error sending request"; the cause is further down the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

struct Api {
    http: reqwest::Client,
    /// Without a trailing slash, so paths can be appended (keeps any path prefix of a proxy).
    base: String,
    token: Option<String>,
}

impl Api {
    async fn new(server: &ServerArgs) -> anyhow::Result<Self> {
        let base = server.url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base)
            .with_context(|| format!("invalid --url {:?}", server.url))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("invalid --url {:?}: expected http://host:port", server.url);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("doc-rag-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        let token = match server.token.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => Some(t.to_string()),
            _ => super::credentials::token_for(&http, &base).await,
        };
        Ok(Api { http, base, token })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn post(&self, path: &str) -> RequestBuilder {
        self.http.post(self.url(path))
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.http.get(self.url(path))
    }

    fn transport_error(&self, e: reqwest::Error) -> ClientError {
        if e.is_connect() {
            ClientError::Unreachable {
                url: self.base.clone(),
            }
        } else if e.is_timeout() {
            ClientError::Timeout {
                url: e.url().map_or_else(|| self.base.clone(), |u| u.to_string()),
            }
        } else {
            ClientError::Transport(error_chain(&e))
        }
    }

    /// Sends with the bearer token (when configured) and decodes a success body as `T`.
    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, ClientError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let url = response.url().to_string();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        if !status.is_success() {
            return Err(error_from_response(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
            url,
            reason: e.to_string(),
        })
    }

    async fn upload(
        &self,
        path: &Path,
        collection: Option<&str>,
        replace: bool,
    ) -> Result<DocumentAccepted, ClientError> {
        let content_type = content_type_for(path).ok_or_else(|| {
            ClientError::Local(format!(
                "unsupported file type; supported: {}",
                supported_list()
            ))
        })?;
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| ClientError::Local(format!("cannot read file: {e}")))?;
        let file_name = path
            .file_name()
            .map_or_else(|| path.to_string_lossy(), |n| n.to_string_lossy())
            .into_owned();
        let part = Part::bytes(bytes)
            .file_name(file_name.clone())
            .mime_str(content_type)
            .map_err(|e| ClientError::Local(error_chain(&e)))?;
        let mut form = Form::new().part("file", part).text("title", file_name);
        if let Some(collection) = collection {
            form = form.text("collection", collection.to_string());
        }
        if replace {
            // Canonical, so `./a.md`, `a.md` and `/abs/a.md` all replace the same document.
            let canonical = std::fs::canonicalize(path)
                .map_err(|e| ClientError::Local(format!("cannot resolve path: {e}")))?;
            form = form.text("external_id", canonical.to_string_lossy().into_owned());
        }
        self.json(self.post("/v1/documents").multipart(form)).await
    }

    async fn job(&self, id: Uuid) -> Result<Job, ClientError> {
        self.json(
            self.get(&format!("/v1/jobs/{id}"))
                .timeout(POLL_REQUEST_TIMEOUT),
        )
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// Ingest
// ---------------------------------------------------------------------------------------------

/// Files to upload and paths that were rejected before uploading, each sorted by path.
#[derive(Debug, Default)]
struct Collected {
    files: Vec<PathBuf>,
    errors: Vec<(PathBuf, String)>,
}

/// Expands the command-line paths into the files to upload. Folders are walked recursively,
/// taking supported extensions only and skipping hidden entries (`.git`, editor state), which are
/// never documents someone meant to ingest. Explicitly named files are taken at their word, so an
/// unsupported one is an error rather than silently dropped. A file reached twice is uploaded once.
fn collect_files(paths: &[PathBuf]) -> Collected {
    let mut collected = Collected::default();
    let mut seen = HashSet::new();
    let mut take = |path: PathBuf, collected: &mut Collected| {
        let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if seen.insert(key) {
            collected.files.push(path);
        }
    };

    for root in paths {
        let meta = match std::fs::metadata(root) {
            Ok(meta) => meta,
            Err(e) => {
                collected.errors.push((root.clone(), e.to_string()));
                continue;
            }
        };
        if !meta.is_dir() {
            if content_type_for(root).is_some() {
                take(root.clone(), &mut collected);
            } else {
                collected.errors.push((
                    root.clone(),
                    format!("unsupported file type; supported: {}", supported_list()),
                ));
            }
            continue;
        }
        let walker = walkdir::WalkDir::new(root)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|entry| entry.depth() == 0 || !is_hidden(entry.file_name()));
        for entry in walker {
            match entry {
                Ok(entry)
                    if entry.file_type().is_file() && content_type_for(entry.path()).is_some() =>
                {
                    take(entry.into_path(), &mut collected);
                }
                Ok(_) => {}
                Err(e) => {
                    let path = e.path().map_or_else(|| root.clone(), Path::to_path_buf);
                    collected.errors.push((path, error_chain(&e)));
                }
            }
        }
    }
    collected.files.sort();
    collected.errors.sort();
    collected
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with('.'))
}

/// The content type the server should parse a file as, from its extension (case-insensitive);
/// `None` for files the server cannot ingest.
fn content_type_for(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "txt" | "text" | "log" => "text/plain",
        "md" | "markdown" => "text/markdown",
        "html" | "htm" => "text/html",
        "pdf" => "application/pdf",
        _ => return None,
    })
}

fn supported_list() -> String {
    SUPPORTED_EXTENSIONS
        .iter()
        .map(|e| format!(".{e}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Clone)]
struct FileRow {
    path: PathBuf,
    document_id: Option<Uuid>,
    job_id: Option<Uuid>,
    state: RowState,
}

#[derive(Debug, Clone)]
enum RowState {
    /// Never uploaded: missing, unreadable or unsupported.
    Rejected(String),
    UploadError(String),
    /// Accepted; the job's last known status.
    Job {
        status: JobStatus,
        error: Option<String>,
    },
    /// Still unfinished when `--timeout-secs` ran out.
    TimedOut {
        status: JobStatus,
        last_poll_error: Option<String>,
    },
}

impl FileRow {
    fn new(path: PathBuf, state: RowState) -> Self {
        FileRow {
            path,
            document_id: None,
            job_id: None,
            state,
        }
    }

    /// Without waiting, an accepted upload counts as success whatever its job status; when waiting,
    /// only an indexed document does (a timed-out one was not confirmed).
    fn is_failure(&self, no_wait: bool) -> bool {
        match &self.state {
            RowState::Rejected(_) | RowState::UploadError(_) | RowState::TimedOut { .. } => true,
            RowState::Job { status, .. } => match status {
                JobStatus::Failed => true,
                JobStatus::Done => false,
                JobStatus::Queued | JobStatus::Running => !no_wait,
            },
        }
    }

    fn status_text(&self) -> String {
        match &self.state {
            RowState::Rejected(message) => format!("error: {message}"),
            RowState::UploadError(message) => format!("upload error: {message}"),
            RowState::Job {
                status: JobStatus::Failed,
                error,
            } => format!("failed: {}", error.as_deref().unwrap_or("unknown error")),
            RowState::Job { status, .. } => status.as_str().to_string(),
            RowState::TimedOut {
                status,
                last_poll_error,
            } => {
                let mut text = format!("timed out: still {}", status.as_str());
                if let Some(e) = last_poll_error {
                    text.push_str(&format!(" (last poll error: {e})"));
                }
                text
            }
        }
    }
}

fn progress_bar(len: usize, prefix: &'static str) -> ProgressBar {
    let style =
        ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {elapsed:>4} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    // `ProgressBar::new` draws to stderr and stays hidden when stderr is not a terminal.
    let bar = ProgressBar::new(len as u64)
        .with_prefix(prefix)
        .with_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Uploads `files` with at most `concurrency` in flight; results come back in completion order.
async fn upload_all(
    api: &Api,
    files: Vec<PathBuf>,
    args: &IngestArgs,
    concurrency: usize,
) -> Vec<(PathBuf, Result<DocumentAccepted, ClientError>)> {
    if files.is_empty() {
        return Vec::new();
    }
    let bar = progress_bar(files.len(), "uploading");
    let collection = args.collection.as_deref();
    let results = stream::iter(files)
        .map(|path| {
            let bar = &bar;
            async move {
                let result = api.upload(&path, collection, args.replace).await;
                bar.set_message(path.display().to_string());
                bar.inc(1);
                (path, result)
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    bar.finish_and_clear();
    results
}

/// Polls the jobs of accepted rows until each is done or failed, or `timeout` runs out. Polls that
/// fail (server restarting, a proxy hiccup) are retried until then; only a job the server no longer
/// knows is given up on early.
async fn wait_for_jobs(api: &Api, rows: &mut [FileRow], concurrency: usize, timeout: Duration) {
    let accepted = rows.iter().filter(|r| r.job_id.is_some()).count();
    let mut pending: Vec<usize> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| matches!(r.state, RowState::Job { status, .. } if !status.is_final()))
        .map(|(i, _)| i)
        .collect();
    if pending.is_empty() {
        return;
    }
    let bar = progress_bar(accepted, "indexing");
    bar.set_position((accepted - pending.len()) as u64);
    let deadline = Instant::now() + timeout;
    let mut last_poll_error: Option<String> = None;

    while !pending.is_empty() {
        let now = Instant::now();
        if now >= deadline {
            for &i in &pending {
                if let RowState::Job { status, .. } = rows[i].state {
                    rows[i].state = RowState::TimedOut {
                        status,
                        last_poll_error: last_poll_error.clone(),
                    };
                }
            }
            break;
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;

        let jobs: Vec<(usize, Uuid)> = pending
            .iter()
            .filter_map(|&i| rows[i].job_id.map(|job| (i, job)))
            .collect();
        let polled = stream::iter(jobs)
            .map(|(i, job)| async move { (i, api.job(job).await) })
            .buffer_unordered(concurrency)
            .collect::<Vec<_>>()
            .await;

        for (i, result) in polled {
            match result {
                Ok(job) => {
                    rows[i].state = RowState::Job {
                        status: job.status,
                        error: job.error,
                    };
                    if job.status.is_final() {
                        bar.set_message(rows[i].path.display().to_string());
                        bar.inc(1);
                    }
                }
                Err(ClientError::Api {
                    status: StatusCode::NOT_FOUND,
                    body,
                }) => {
                    rows[i].state = RowState::Job {
                        status: JobStatus::Failed,
                        error: Some(format!(
                            "job no longer exists: {}",
                            render_error_body(&body)
                        )),
                    };
                    bar.inc(1);
                }
                Err(e) => last_poll_error = Some(e.to_string()),
            }
        }
        pending.retain(
            |&i| matches!(rows[i].state, RowState::Job { status, .. } if !status.is_final()),
        );
    }
    bar.finish_and_clear();
}

/// The per-file result table: path, document id, (job id when not waiting,) status.
fn render_ingest_table(rows: &[FileRow], show_jobs: bool) -> String {
    let paths: Vec<String> = rows.iter().map(|r| r.path.display().to_string()).collect();
    let path_width = paths
        .iter()
        .map(|p| p.chars().count())
        .chain([4])
        .max()
        .unwrap_or(4);
    let id_width = 36; // a hyphenated UUID
    let id = |id: Option<Uuid>| id.map_or_else(|| "-".to_string(), |id| id.to_string());

    let mut out = String::new();
    if show_jobs {
        out.push_str(&format!(
            "{:<path_width$}  {:<id_width$}  {:<id_width$}  STATUS\n",
            "PATH", "DOCUMENT", "JOB"
        ));
    } else {
        out.push_str(&format!(
            "{:<path_width$}  {:<id_width$}  STATUS\n",
            "PATH", "DOCUMENT"
        ));
    }
    for (row, path) in rows.iter().zip(&paths) {
        let status = row.status_text();
        if show_jobs {
            out.push_str(&format!(
                "{path:<path_width$}  {:<id_width$}  {:<id_width$}  {status}\n",
                id(row.document_id),
                id(row.job_id)
            ));
        } else {
            out.push_str(&format!(
                "{path:<path_width$}  {:<id_width$}  {status}\n",
                id(row.document_id)
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Ask and search output
// ---------------------------------------------------------------------------------------------

/// `ask` output: the answer, its sources with snippets, and a one-line footer.
fn format_answer(response: &QueryResponse) -> String {
    let mut out = String::new();
    out.push_str(response.answer.trim_end());
    out.push_str("\n\n");
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
    if response.cached {
        footer.push("cached".to_string());
    }
    footer.push(format!("{} ms", response.took_ms));
    out.push('\n');
    out.push_str(&footer.join(" · "));
    out.push('\n');
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

/// Collapses whitespace so chunk text fits on one indented line, and cuts it to `max_chars`
/// characters (not bytes, so multi-byte text is never split mid-character).
fn excerpt(text: &str, max_chars: usize) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= max_chars {
        return collapsed;
    }
    let mut cut: String = collapsed.chars().take(max_chars).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"hello").unwrap();
    }

    fn relative(files: &[PathBuf], root: &Path) -> Vec<String> {
        files
            .iter()
            .map(|f| {
                f.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/")
            })
            .collect()
    }

    #[test]
    fn collects_supported_files_recursively_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for name in [
            "b.md",
            "a.txt",
            "notes/deep/x.PDF",
            "notes/page.html",
            "notes/old.htm",
            "notes/server.log",
            "notes/readme.markdown",
            "notes/plain.text",
            "notes/image.png",
            "notes/doc.docx",
            "no_extension",
            ".git/HEAD.md",
            "notes/.hidden.md",
        ] {
            touch(&root.join(name));
        }

        let collected = collect_files(&[root.to_path_buf()]);
        assert!(collected.errors.is_empty(), "{:?}", collected.errors);
        assert_eq!(
            relative(&collected.files, root),
            [
                "a.txt",
                "b.md",
                "notes/deep/x.PDF",
                "notes/old.htm",
                "notes/page.html",
                "notes/plain.text",
                "notes/readme.markdown",
                "notes/server.log",
            ]
        );
    }

    #[test]
    fn explicit_unsupported_or_missing_files_are_errors_and_duplicates_collapse() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("docs/a.md"));
        touch(&root.join("report.docx"));

        let collected = collect_files(&[
            root.join("report.docx"),
            root.join("docs"),
            root.join("docs/a.md"),
            root.join("missing.txt"),
        ]);
        assert_eq!(relative(&collected.files, root), ["docs/a.md"]);
        let errors: Vec<(String, &str)> = collected
            .errors
            .iter()
            .map(|(p, m)| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    m.as_str(),
                )
            })
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].0, "missing.txt");
        assert_eq!(errors[1].0, "report.docx");
        assert!(
            errors[1].1.starts_with("unsupported file type"),
            "{}",
            errors[1].1
        );
    }

    #[test]
    fn content_type_follows_extension() {
        let cases = [
            ("a.txt", Some("text/plain")),
            ("a.text", Some("text/plain")),
            ("a.log", Some("text/plain")),
            ("a.md", Some("text/markdown")),
            ("a.MarkDown", Some("text/markdown")),
            ("a.html", Some("text/html")),
            ("a.HTM", Some("text/html")),
            ("dir.v2/a.pdf", Some("application/pdf")),
            ("a.docx", None),
            ("Makefile", None),
            (".md", None),
        ];
        for (path, expected) in cases {
            assert_eq!(content_type_for(Path::new(path)), expected, "{path}");
        }
    }

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
    fn excerpt_cuts_on_characters() {
        assert_eq!(excerpt("  a \n\t b  ", 10), "a b");
        assert_eq!(excerpt("ééééé", 3), "ééé…");
        assert_eq!(excerpt("abc def", 4), "abc…");
    }

    #[test]
    fn renders_api_error_bodies() {
        let body =
            br#"{"code":"invalid_request","message":"query must not be empty","request_id":"r-1"}"#;
        let err = error_from_response(StatusCode::BAD_REQUEST, body);
        assert!(matches!(
            err,
            ClientError::Api {
                status: StatusCode::BAD_REQUEST,
                ..
            }
        ));
        assert_eq!(err.to_string(), "query must not be empty (invalid_request)");
        assert_eq!(
            anyhow::Error::from(err).to_string(),
            "query must not be empty (invalid_request)"
        );

        let proxy = error_from_response(StatusCode::BAD_GATEWAY, b"<html>\n  bad gateway\n</html>");
        assert_eq!(
            proxy.to_string(),
            "HTTP 502 Bad Gateway: <html> bad gateway </html>"
        );

        let empty = error_from_response(StatusCode::SERVICE_UNAVAILABLE, b"");
        assert_eq!(empty.to_string(), "HTTP 503 Service Unavailable");

        let unreachable = ClientError::Unreachable {
            url: "http://127.0.0.1:8080".to_string(),
        };
        assert_eq!(
            unreachable.to_string(),
            "cannot reach doc-rag at http://127.0.0.1:8080: is it running? (make run)"
        );
    }

    #[test]
    fn ingest_table_shows_each_outcome() {
        let id = Uuid::from_u128(1);
        let job = Uuid::from_u128(2);
        let accepted = |path: &str, state| FileRow {
            path: PathBuf::from(path),
            document_id: Some(id),
            job_id: Some(job),
            state,
        };
        let rows = vec![
            accepted(
                "a.md",
                RowState::Job {
                    status: JobStatus::Done,
                    error: None,
                },
            ),
            accepted(
                "broken.pdf",
                RowState::Job {
                    status: JobStatus::Failed,
                    error: Some("no text layer".to_string()),
                },
            ),
            FileRow::new(
                PathBuf::from("c.txt"),
                RowState::UploadError("file too large (payload_too_large)".into()),
            ),
            accepted(
                "slow.html",
                RowState::TimedOut {
                    status: JobStatus::Running,
                    last_poll_error: None,
                },
            ),
        ];
        let table = render_ingest_table(&rows, false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["PATH", "DOCUMENT", "STATUS"]
        );
        assert_eq!(lines[1], format!("a.md        {id}  done"));
        assert_eq!(lines[2], format!("broken.pdf  {id}  failed: no text layer"));
        assert_eq!(
            lines[3],
            format!(
                "c.txt       {:<36}  upload error: file too large (payload_too_large)",
                "-"
            )
        );
        assert_eq!(
            lines[4],
            format!("slow.html   {id}  timed out: still running")
        );

        let failures: Vec<bool> = rows.iter().map(|r| r.is_failure(false)).collect();
        assert_eq!(failures, [false, true, true, true]);

        let queued = accepted(
            "q.md",
            RowState::Job {
                status: JobStatus::Queued,
                error: None,
            },
        );
        assert!(!queued.is_failure(true));
        let table = render_ingest_table(&[queued], true);
        assert_eq!(
            table.lines().nth(1).unwrap(),
            format!("q.md  {id}  {job}  queued")
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
