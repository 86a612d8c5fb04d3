//! Parsing in child processes, so a hostile document cannot take the server down.
//!
//! A PDF whose form draws itself overflows the parser's stack, and a decompression bomb asks for
//! gigabytes: both abort a process, which no `catch_unwind` can stop. Every parse therefore runs
//! in a `doc-rag parse-worker` child with an address-space limit (`RLIMIT_AS`), a CPU-time limit
//! renewed per document (`RLIMIT_CPU`) and a wall-clock timeout enforced by the parent. Children
//! are kept in a small pool and reused across documents; one that dies, overruns or answers
//! nonsense is discarded and the document fails with the reason, while the server carries on.
//!
//! The protocol is framed binary over the child's stdin/stdout: request
//! `MAGIC kind:u8 max_text:u64 len:u64 bytes`, reply `MAGIC len:u64 json`. The child's stderr is
//! forwarded to the log (module `parser`), and its last lines name the cause of a crash.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

use super::parse::{self, ContentKind, ParseError, ParsedDocument};
use crate::config::ParserSettings;

const MAGIC: &[u8; 8] = b"DRPARSE1";
/// Lines of a child's stderr kept to explain its death.
const STDERR_TAIL_LINES: usize = 8;

/// Why a document could not be turned into text.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The document itself is bad (not UTF-8, malformed, no text, text too large): permanent.
    #[error("{0}")]
    Document(String),
    /// The parser died or overran its limits on this document: permanent.
    #[error("the parser {0}")]
    Killed(String),
    /// No parser could be started (a server problem, worth retrying).
    #[error("cannot start a parse worker: {0}")]
    Unavailable(String),
}

impl SandboxError {
    /// Whether trying the same document again can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SandboxError::Unavailable(_))
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Parsed {
        text: String,
        markdown: bool,
        title: Option<String>,
    },
    Failed(String),
}

/// The pool of parse workers the ingest pipeline sends documents to.
pub struct ParserPool {
    program: PathBuf,
    settings: ParserSettings,
    idle: Mutex<Vec<ParseProcess>>,
    permits: Semaphore,
}

impl ParserPool {
    pub fn new(settings: ParserSettings) -> std::io::Result<Self> {
        let program = if settings.command.trim().is_empty() {
            std::env::current_exe()?
        } else {
            PathBuf::from(settings.command.trim())
        };
        Ok(Self {
            program,
            permits: Semaphore::new(settings.workers.max(1)),
            settings,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Extracts the text of a document in a worker; `max_text` bounds the extracted text.
    pub async fn parse(
        &self,
        kind: ContentKind,
        bytes: &[u8],
        max_text: usize,
    ) -> Result<ParsedDocument, SandboxError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| SandboxError::Unavailable(e.to_string()))?;
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut process = match idle {
            Some(p) => p,
            None => self.spawn()?,
        };
        let timeout = Duration::from_secs(self.settings.timeout_secs);
        let outcome =
            tokio::time::timeout(timeout, process.request(kind, bytes, max_text as u64)).await;
        match outcome {
            Ok(Ok(reply)) => {
                self.idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(process);
                match reply {
                    Reply::Parsed {
                        text,
                        markdown,
                        title,
                    } => Ok(ParsedDocument {
                        text,
                        markdown,
                        title,
                    }),
                    Reply::Failed(message) => Err(SandboxError::Document(message)),
                }
            }
            Ok(Err(io)) => Err(SandboxError::Killed(process.death(io).await)),
            Err(_) => {
                process.kill().await;
                metrics::counter!("parser_killed_total", "reason" => "timeout").increment(1);
                Err(SandboxError::Killed(format!(
                    "took longer than {} s (parser.timeout_secs) and was stopped",
                    timeout.as_secs()
                )))
            }
        }
    }

    fn spawn(&self) -> Result<ParseProcess, SandboxError> {
        let mut child = Command::new(&self.program)
            .arg("parse-worker")
            .arg("--memory-max-mb")
            .arg(self.settings.memory_max_mb.to_string())
            .arg("--cpu-max-secs")
            .arg(self.settings.cpu_max_secs.to_string())
            // A crash explains itself in one or two lines; a backtrace would bury them.
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SandboxError::Unavailable(format!("{}: {e}", self.program.display())))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(SandboxError::Unavailable("the worker has no pipes".into()));
        };
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let pid = child.id().unwrap_or(0);
        let sink = Arc::clone(&tail);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.trim().is_empty() {
                    continue;
                }
                tracing::warn!(module = "parser", pid, "{line}");
                let mut tail = sink.lock().unwrap_or_else(PoisonError::into_inner);
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        metrics::counter!("parser_workers_started_total").increment(1);
        Ok(ParseProcess {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            stderr_tail: tail,
        })
    }
}

struct ParseProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl ParseProcess {
    async fn request(
        &mut self,
        kind: ContentKind,
        bytes: &[u8],
        max_text: u64,
    ) -> std::io::Result<Reply> {
        let mut header = Vec::with_capacity(25);
        header.extend_from_slice(MAGIC);
        header.push(kind_code(kind));
        header.extend_from_slice(&max_text.to_le_bytes());
        header.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.stdin.write_all(&header).await?;
        self.stdin.write_all(bytes).await?;
        self.stdin.flush().await?;

        let mut magic = [0u8; 8];
        self.stdout.read_exact(&mut magic).await?;
        if &magic != MAGIC {
            return Err(std::io::Error::other("answered outside the protocol"));
        }
        let mut len = [0u8; 8];
        self.stdout.read_exact(&mut len).await?;
        let len = u64::from_le_bytes(len);
        // The reply holds at most max_text bytes of text plus a little JSON escaping.
        if len > max_text.saturating_mul(6).saturating_add(1 << 20) {
            return Err(std::io::Error::other(format!(
                "sent an oversized reply ({len} bytes)"
            )));
        }
        let mut body = vec![0u8; len as usize];
        self.stdout.read_exact(&mut body).await?;
        serde_json::from_slice(&body).map_err(std::io::Error::other)
    }

    /// Waits briefly for the child to exit and says how it died.
    async fn death(mut self, io: std::io::Error) -> String {
        let status = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
        let cause = match status {
            Ok(Ok(status)) => describe_exit(status),
            _ => {
                self.kill().await;
                format!("stopped answering ({io})")
            }
        };
        // Give the stderr forwarder a moment to read the child's last words.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let tail: Vec<String> = self
            .stderr_tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        let reason = if tail.is_empty() {
            cause
        } else {
            format!("{cause}: {}", tail.join(" / "))
        };
        metrics::counter!("parser_killed_total", "reason" => "died").increment(1);
        reason
    }

    async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        // SIGXCPU: the CPU-time limit; SIGKILL: the hard limit or the kernel's OOM killer.
        Some(24) => "exceeded its CPU-time limit (parser.cpu_max_secs)".into(),
        Some(9) => "was killed (CPU-time or memory limit)".into(),
        Some(6) => {
            "crashed (aborted; out of memory under parser.memory_max_mb, or a stack overflow)"
                .into()
        }
        Some(11) => "crashed (segmentation fault)".into(),
        Some(sig) => format!("crashed (signal {sig})"),
        None => format!("exited unexpectedly ({status})"),
    }
}

fn kind_code(kind: ContentKind) -> u8 {
    match kind {
        ContentKind::Text => 0,
        ContentKind::Markdown => 1,
        ContentKind::Html => 2,
        ContentKind::Pdf => 3,
    }
}

fn kind_from_code(code: u8) -> Option<ContentKind> {
    Some(match code {
        0 => ContentKind::Text,
        1 => ContentKind::Markdown,
        2 => ContentKind::Html,
        3 => ContentKind::Pdf,
        _ => return None,
    })
}

/// The child side: `doc-rag parse-worker`. Sets its own limits, then answers requests from stdin
/// until it closes. Runs without an async runtime; one document at a time.
pub fn serve_worker(memory_max_mb: u64, cpu_max_secs: u64) -> anyhow::Result<()> {
    // Never above a hard limit the container already set (raising it would be refused).
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::AS)?;
    let bytes = memory_max_mb.saturating_mul(1 << 20).min(hard);
    rlimit::setrlimit(rlimit::Resource::AS, bytes, bytes)?;
    // No core dumps of hostile documents.
    rlimit::setrlimit(rlimit::Resource::CORE, 0, 0)?;
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    loop {
        let mut header = [0u8; 25];
        match input.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        anyhow::ensure!(&header[..8] == MAGIC, "bad request frame");
        let kind = kind_from_code(header[8])
            .ok_or_else(|| anyhow::anyhow!("unknown content kind {}", header[8]))?;
        let max_text = u64::from_le_bytes(header[9..17].try_into()?);
        let len = u64::from_le_bytes(header[17..25].try_into()?);
        let mut body = vec![0u8; usize::try_from(len)?];
        input.read_exact(&mut body)?;

        // The CPU limit counts the whole life of the process: allow this document its share
        // on top of what earlier documents used. Only the soft limit moves, which needs no
        // privilege; passing it sends SIGXCPU, which ends the process.
        let used = cpu_time::ProcessTime::now().as_duration().as_secs();
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::CPU)?;
        let soft = used.saturating_add(cpu_max_secs).min(hard);
        rlimit::setrlimit(rlimit::Resource::CPU, soft, hard)?;

        let reply = match parse_checked(kind, &body, max_text as usize) {
            Ok(doc) => Reply::Parsed {
                text: doc.text,
                markdown: doc.markdown,
                title: doc.title,
            },
            Err(message) => Reply::Failed(message),
        };
        drop(body);
        let json = serde_json::to_vec(&reply)?;
        let mut out = stdout.lock();
        out.write_all(MAGIC)?;
        out.write_all(&(json.len() as u64).to_le_bytes())?;
        out.write_all(&json)?;
        out.flush()?;
    }
}

/// Parses in this process and applies the extracted-text limit; `Err` is the job's failure
/// reason. The parse worker runs it, and the pipeline directly for text and Markdown.
pub(super) fn parse_checked(
    kind: ContentKind,
    bytes: &[u8],
    max_text: usize,
) -> Result<ParsedDocument, String> {
    match parse::parse(kind, bytes) {
        Ok(doc) if doc.text.len() > max_text => Err(format!(
            "the extracted text is {} bytes, more than limits.extracted_text_max_bytes \
             ({max_text})",
            doc.text.len()
        )),
        Ok(doc) => Ok(doc),
        Err(e) => Err(describe_parse_error(&e)),
    }
}

fn describe_parse_error(e: &ParseError) -> String {
    match e {
        ParseError::NotUtf8 => "text documents must be UTF-8".into(),
        ParseError::Malformed(m) => format!("cannot parse the document: {m}"),
        ParseError::Empty => "the document has no text".into(),
    }
}
