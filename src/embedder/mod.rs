//! The embedder: turns text into the dense vectors (all-MiniLM-L6-v2, int8 ONNX, through fastembed
//! with ONNX Runtime loaded from the configured library) and BM25 sparse vectors the index holds.
//!
//! The model runs on one dedicated thread, never on the async executor. Callers hand it texts
//! through in-process channels: queries on a high-priority channel, ingestion on a low-priority
//! one. The thread serves every waiting query before each ingestion batch, so a question never
//! waits behind more than one batch of a large upload. Ingestion texts are sorted by token length
//! before batching: padding to the longest text of a batch otherwise halves throughput on CPU.

pub mod bm25;
pub mod http;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};
use tokio::sync::{mpsc, oneshot};

use crate::config::EmbedderSettings;

pub use bm25::Bm25Encoder;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("model files missing in {dir}: {missing} (run scripts/fetch-models.sh)")]
    MissingFiles { dir: String, missing: String },
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Runtime { path: String, reason: String },
    #[error("cannot load the embedding model: {0}")]
    Model(String),
    #[error("embedding failed: {0}")]
    Inference(String),
    #[error("the embedder has stopped")]
    Stopped,
    #[error("too many texts in one request: {0} (limit {1})")]
    TooMany(usize, usize),
    #[error("the embedder's queue is full")]
    Busy,
}

/// Whose texts these are; queries are served first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Query,
    Ingest,
}

#[async_trait]
pub trait Embedder: Send + Sync + 'static {
    /// One normalised vector per text, in order.
    async fn embed(
        &self,
        texts: Vec<String>,
        priority: Priority,
    ) -> Result<Vec<Vec<f32>>, EmbedError>;
    fn dimension(&self) -> usize;
    /// The most texts one `embed` call takes.
    fn max_texts(&self) -> usize;
    /// The model's tokenizer, shared with the chunker so chunk sizes are in model tokens.
    fn tokenizer(&self) -> tokenizers::Tokenizer;
    /// Embeds a probe text; `Err` says why the model cannot serve.
    async fn health(&self) -> Result<(), EmbedError>;
}

struct Request {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>,
    span: tracing::Span,
    queued_at: Instant,
}

/// fastembed on a dedicated thread, fed by two priority channels.
pub struct FastEmbedder {
    query_tx: mpsc::Sender<Request>,
    ingest_tx: mpsc::Sender<Request>,
    /// When the model thread started its current call (ms since the epoch; 0 when idle).
    busy_since: Arc<AtomicU64>,
    tokenizer: tokenizers::Tokenizer,
    dimension: usize,
    max_texts: usize,
}

const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "config.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
];

impl FastEmbedder {
    /// Loads ONNX Runtime and the model (blocking: call from a blocking context or at start-up).
    pub fn load(settings: &EmbedderSettings) -> Result<Self, EmbedError> {
        let dir = &settings.model_dir;
        let model_file = settings.model_file.as_str();
        let missing: Vec<&str> = std::iter::once(model_file)
            .chain(TOKENIZER_FILES)
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(EmbedError::MissingFiles {
                dir: dir.display().to_string(),
                missing: missing.join(", "),
            });
        }
        let lib = settings.ort_library_path();
        let environment = init_runtime(&lib)?;
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| EmbedError::Model(format!("{name}: {e}")))
        };
        let tokenizer_files = TokenizerFiles {
            tokenizer_file: read("tokenizer.json")?,
            config_file: read("config.json")?,
            special_tokens_map_file: read("special_tokens_map.json")?,
            tokenizer_config_file: read("tokenizer_config.json")?,
        };
        let model = UserDefinedEmbeddingModel::new(read(model_file)?, tokenizer_files)
            .with_pooling(Pooling::Mean);
        // Spinning intra-op threads would burn the cores the ingestion and HTTP work need between
        // model calls.
        let mut options = InitOptionsUserDefined::new()
            .with_max_length(settings.max_length)
            .with_environment(environment)
            .with_session_config("session.intra_op.allow_spinning", "0")
            .with_execution_providers(vec![
                ort::ep::CPU::default()
                    .with_arena_allocator(settings.memory_arena)
                    .build(),
            ]);
        if settings.threads > 0 {
            options = options.with_intra_threads(settings.threads);
        }
        let engine = TextEmbedding::try_new_from_user_defined(model, options)
            .map_err(|e| EmbedError::Model(e.to_string()))?;

        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| EmbedError::Model(format!("tokenizer.json: {e}")))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| EmbedError::Model(format!("tokenizer: {e}")))?;

        let (query_tx, query_rx) = mpsc::channel(settings.query_queue.max(1));
        let (ingest_tx, ingest_rx) = mpsc::channel(settings.ingest_queue.max(1));
        let busy_since = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            engine,
            batch_size: settings.batch_size,
            batch_tokens: settings.batch_tokens,
            batch_tokens_querying: settings.batch_tokens_querying.max(1),
            last_query: None,
            max_length: settings.max_length,
            query_burst: settings.query_burst.max(1),
            query_rx,
            ingest_rx,
            busy_since: Arc::clone(&busy_since),
        };
        std::thread::Builder::new()
            .name("embedder".into())
            .spawn(move || worker.run())
            .map_err(|e| EmbedError::Model(format!("cannot start the embedder thread: {e}")))?;
        Ok(Self {
            query_tx,
            ingest_tx,
            busy_since,
            tokenizer,
            dimension: settings.dimension,
            max_texts: settings.max_texts.max(1),
        })
    }
}

/// ONNX Runtime can be initialised once per process; later loads (tests building several
/// applications) reuse the environment.
fn init_runtime(lib: &Path) -> Result<ort::environment::Environment, EmbedError> {
    use std::sync::Mutex;
    static ENV: Mutex<Option<ort::environment::Environment>> = Mutex::new(None);
    let mut guard = ENV.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = guard.as_ref() {
        return Ok(env.clone());
    }
    let runtime_err = |reason: String| EmbedError::Runtime {
        path: lib.display().to_string(),
        reason,
    };
    if !lib.is_file() {
        return Err(runtime_err(
            "file not found (run scripts/fetch-models.sh)".into(),
        ));
    }
    let env = ort::init_from(lib)
        .map_err(|e| runtime_err(e.to_string()))?
        .with_name("doc-rag")
        .build()
        .map_err(|e| runtime_err(e.to_string()))?;
    *guard = Some(env.clone());
    Ok(env)
}

#[async_trait]
impl Embedder for FastEmbedder {
    fn max_texts(&self) -> usize {
        self.max_texts
    }

    async fn embed(
        &self,
        texts: Vec<String>,
        priority: Priority,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        if texts.len() > self.max_texts {
            return Err(EmbedError::TooMany(texts.len(), self.max_texts));
        }
        let (reply, rx) = oneshot::channel();
        let request = Request {
            texts,
            reply,
            span: tracing::Span::current(),
            queued_at: Instant::now(),
        };
        match priority {
            // A query must not wait in an unbounded line: a full queue is a 503 now.
            Priority::Query => self.query_tx.try_send(request).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    metrics::counter!("embedder_rejected_total").increment(1);
                    EmbedError::Busy
                }
                mpsc::error::TrySendError::Closed(_) => EmbedError::Stopped,
            })?,
            // Ingestion workers wait for room; the queue bounds what they hold in memory.
            Priority::Ingest => self
                .ingest_tx
                .send(request)
                .await
                .map_err(|_| EmbedError::Stopped)?,
        }
        rx.await.map_err(|_| EmbedError::Stopped)?
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn tokenizer(&self) -> tokenizers::Tokenizer {
        self.tokenizer.clone()
    }

    /// Cheap: it must not queue an inference behind a bulk upload. The model thread is alive
    /// while its channels are open, and healthy unless one model call has run for minutes.
    async fn health(&self) -> Result<(), EmbedError> {
        if self.query_tx.is_closed() {
            return Err(EmbedError::Stopped);
        }
        let since = self.busy_since.load(Ordering::Relaxed);
        let busy_ms = now_ms().saturating_sub(since);
        if since != 0 && busy_ms > STALL_MS {
            return Err(EmbedError::Inference(format!(
                "one model call has run for {} s",
                busy_ms / 1000
            )));
        }
        Ok(())
    }
}

struct Worker {
    engine: TextEmbedding,
    batch_size: usize,
    /// Padded tokens (texts × the longest) one ingestion batch may hold; see [`take_batch`].
    batch_tokens: usize,
    /// The cap on ingestion batches while queries arrive: a query waits for the model call in
    /// progress, so that call must be short.
    batch_tokens_querying: usize,
    /// When the last query batch was served.
    last_query: Option<Instant>,
    max_length: usize,
    query_burst: usize,
    query_rx: mpsc::Receiver<Request>,
    ingest_rx: mpsc::Receiver<Request>,
    busy_since: Arc<AtomicU64>,
}

/// Ingestion batches stay at `batch_tokens_querying` for this long after the last query.
const QUERIES_RECENT: Duration = Duration::from_secs(1);

/// A model call longer than this means the thread is wedged.
const STALL_MS: u64 = 120_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An ingestion request being worked through, possibly across several batches.
struct Pending {
    request: Request,
    /// Token length of each text.
    lengths: Vec<usize>,
    out: Vec<Option<Vec<f32>>>,
    /// Texts not yet embedded.
    left: usize,
}

impl Worker {
    fn run(mut self) {
        // Blocks on the channels when idle; built once, on this thread.
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().build() else {
            tracing::error!(module = "embedder", "cannot start the embedder's runtime");
            return;
        };
        // Ingestion requests from every worker are pooled, so one model call serves many small
        // documents and each batch holds texts of similar length.
        let mut pending: Vec<Pending> = Vec::new();
        // Query rounds served in a row while ingestion waited.
        let mut streak = 0;
        loop {
            // Every waiting query first, all in one model call when they fit, unless ingestion
            // has waited `query_burst` rounds: then one ingestion batch goes first.
            let mut queries = Vec::new();
            if pending.is_empty() || streak < self.query_burst {
                while let Ok(r) = self.query_rx.try_recv() {
                    queries.push(r);
                }
            }
            if !queries.is_empty() {
                if !pending.is_empty() {
                    streak += 1;
                }
                self.busy_since.store(now_ms(), Ordering::Relaxed);
                self.serve_queries(queries);
                self.busy_since.store(0, Ordering::Relaxed);
                continue;
            }
            streak = 0;
            while let Ok(r) = self.ingest_rx.try_recv() {
                pending.push(self.start(r));
            }
            pending.retain(|p| !p.request.reply.is_closed());
            if !pending.is_empty() {
                self.busy_since.store(now_ms(), Ordering::Relaxed);
                self.step(&mut pending);
                self.busy_since.store(0, Ordering::Relaxed);
                continue;
            }
            // Idle: block until either channel has work.
            let next = rt.block_on(async {
                tokio::select! {
                    biased;
                    q = self.query_rx.recv() => q.map(|r| (Priority::Query, r)),
                    i = self.ingest_rx.recv() => i.map(|r| (Priority::Ingest, r)),
                }
            });
            match next {
                Some((Priority::Query, r)) => self.serve_queries(vec![r]),
                Some((Priority::Ingest, r)) => pending.push(self.start(r)),
                None => return,
            }
        }
    }

    fn start(&self, request: Request) -> Pending {
        // Byte length orders texts by token length closely enough to batch them, and costs
        // nothing; tokenising here would add a third tokenisation of every text (the chunker
        // and the model each do one).
        metrics::histogram!("embedder_queue_wait_seconds", "priority" => "ingest")
            .record(request.queued_at.elapsed().as_secs_f64());
        let lengths: Vec<usize> = request.texts.iter().map(String::len).collect();
        let n = request.texts.len();
        Pending {
            request,
            lengths,
            out: vec![None; n],
            left: n,
        }
    }

    /// Embeds one batch of the shortest waiting texts across all pending requests, then answers
    /// every request that is complete (or failed).
    fn step(&mut self, pending: &mut Vec<Pending>) {
        let mut waiting: Vec<(usize, usize, usize)> = pending
            .iter()
            .enumerate()
            .flat_map(|(r, p)| {
                p.out
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| o.is_none())
                    .map(move |(i, _)| (p.lengths[i], r, i))
            })
            .collect();
        waiting.sort_unstable();
        let querying = self
            .last_query
            .is_some_and(|t| t.elapsed() < QUERIES_RECENT);
        let cap = if querying {
            self.batch_tokens_querying.min(self.batch_tokens)
        } else {
            self.batch_tokens
        };
        let n = take_batch(
            waiting.iter().map(|w| w.0),
            self.batch_size,
            cap,
            self.max_length,
        );
        waiting.truncate(n);
        let texts: Vec<&str> = waiting
            .iter()
            .map(|&(_, r, i)| pending[r].request.texts[i].as_str())
            .collect();
        let started = Instant::now();
        let result = {
            let _enter = pending[waiting[0].1].request.span.enter();
            let result = self.engine.embed(&texts, Some(texts.len()));
            tracing::debug!(
                module = "embedder",
                texts = texts.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "embedded an ingestion batch"
            );
            result
        };
        match result {
            Ok(vectors) => {
                metrics::histogram!("embedder_batch_seconds", "priority" => "ingest")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("embedder_batch_size").record(texts.len() as f64);
                metrics::counter!("embedder_texts_total", "priority" => "ingest")
                    .increment(texts.len() as u64);
                for (&(_, r, i), v) in waiting.iter().zip(vectors) {
                    pending[r].out[i] = Some(v);
                    pending[r].left -= 1;
                }
                for p in pending.extract_if(.., |p| p.left == 0) {
                    let out = p.out.into_iter().map(Option::unwrap_or_default).collect();
                    let _ = p.request.reply.send(Ok(out));
                }
            }
            Err(e) => {
                // Fail only the requests that had texts in this batch.
                let mut failed: Vec<usize> = waiting.iter().map(|&(_, r, _)| r).collect();
                failed.sort_unstable();
                failed.dedup();
                for r in failed.into_iter().rev() {
                    let p = pending.remove(r);
                    let _ = p
                        .request
                        .reply
                        .send(Err(EmbedError::Inference(e.to_string())));
                }
            }
        }
    }

    fn serve_queries(&mut self, requests: Vec<Request>) {
        self.last_query = Some(Instant::now());
        for r in &requests {
            metrics::histogram!("embedder_queue_wait_seconds", "priority" => "query")
                .record(r.queued_at.elapsed().as_secs_f64());
        }
        let texts: Vec<&str> = requests
            .iter()
            .flat_map(|r| r.texts.iter().map(String::as_str))
            .collect();
        let started = Instant::now();
        // Queued queries share model calls, capped like ingestion batches so a burst of long
        // queries cannot raise resident memory past what an ingestion batch takes.
        let mut result: Result<Vec<Vec<f32>>, _> = Ok(Vec::with_capacity(texts.len()));
        let mut rest = &texts[..];
        while !rest.is_empty()
            && let Ok(done) = result.as_mut()
        {
            let n = take_batch(
                rest.iter().map(|t| t.len()),
                self.batch_size,
                self.batch_tokens,
                self.max_length,
            );
            match self.engine.embed(&rest[..n], Some(n)) {
                Ok(vectors) => done.extend(vectors),
                Err(e) => result = Err(e),
            }
            rest = &rest[n..];
        }
        metrics::histogram!("embedder_batch_seconds", "priority" => "query")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("embedder_batch_size").record(texts.len() as f64);
        // One line per request, in its own span: the log follows a request onto this thread.
        for r in &requests {
            let _enter = r.span.enter();
            tracing::debug!(
                module = "embedder",
                texts = r.texts.len(),
                batch = texts.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "embedded a query batch"
            );
        }
        metrics::counter!("embedder_texts_total", "priority" => "query")
            .increment(texts.len() as u64);
        match result {
            Ok(vectors) => {
                let mut it = vectors.into_iter();
                for r in requests {
                    let n = r.texts.len();
                    let _ = r.reply.send(Ok(it.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                for r in requests {
                    let _ = r.reply.send(Err(EmbedError::Inference(e.to_string())));
                }
            }
        }
    }
}

/// Roughly the word pieces of a text of `bytes` bytes (English runs about four bytes a piece),
/// never more than the model reads.
fn estimated_tokens(bytes: usize, max_length: usize) -> usize {
    (bytes / 4 + 2).min(max_length.max(1))
}

/// How many of the texts (byte lengths, in the order they will be embedded) the next model call
/// takes: at most `batch_size`, and, past the first, only while texts × the longest one so far
/// (in estimated tokens: each batch is padded to its longest text) stays within `batch_tokens`.
/// Activation memory grows with batch × length (and with length² in attention), and ONNX
/// Runtime keeps the largest batch's buffers, so a cap in tokens bounds resident memory where a
/// cap in texts does not. Ingestion passes its texts shortest first; queries come as they arrived.
fn take_batch(
    lengths: impl Iterator<Item = usize>,
    batch_size: usize,
    batch_tokens: usize,
    max_length: usize,
) -> usize {
    let (mut n, mut longest) = (0, 0);
    for bytes in lengths.take(batch_size.max(1)) {
        let tokens = longest.max(estimated_tokens(bytes, max_length));
        if n > 0 && (n + 1) * tokens > batch_tokens {
            break;
        }
        (n, longest) = (n + 1, tokens);
    }
    n
}

/// Builds the shared embedder (model load runs on the blocking pool).
pub async fn load(settings: &EmbedderSettings) -> Result<Arc<dyn Embedder>, EmbedError> {
    let settings = settings.clone();
    let embedder = tokio::task::spawn_blocking(move || FastEmbedder::load(&settings))
        .await
        .map_err(|e| EmbedError::Model(e.to_string()))??;
    Ok(Arc::new(embedder))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_capped_by_texts_and_by_padded_tokens() {
        // Short texts: the text cap applies.
        assert_eq!(take_batch([40; 100].into_iter(), 32, 4096, 256), 32);
        // Full-length texts (256 tokens each): 4096 tokens hold 16 of them.
        assert_eq!(take_batch([2000; 100].into_iter(), 32, 4096, 256), 16);
        // Shortest first: the batch stops where the next, longer text would pad it past the cap.
        let lengths = [400, 400, 400, 4000, 4000];
        let tokens = 3 * estimated_tokens(400, 256);
        assert_eq!(take_batch(lengths.into_iter(), 32, tokens, 256), 3);
        // One text always goes, however long, or it would never be embedded.
        assert_eq!(take_batch([100_000].into_iter(), 32, 1, 256), 1);
        assert_eq!(take_batch(std::iter::empty(), 32, 4096, 256), 0);
    }

    #[test]
    fn queries_in_arrival_order_are_capped_by_their_longest_so_far() {
        // A long query after short ones pads them all: the batch ends before it.
        let est = estimated_tokens(40, 256);
        assert_eq!(
            take_batch([40, 40, 2000, 40].into_iter(), 32, 3 * est, 256),
            2
        );
        // A long query first keeps the batch small even if short ones follow.
        assert_eq!(take_batch([2000, 40, 40].into_iter(), 32, 256, 256), 1);
        assert_eq!(take_batch([40; 10].into_iter(), 4, 4096, 256), 4);
    }
}
