//! Client-side bulk ingestion: a stream of `CreateDocument`s goes to `POST /v1/documents/bulk` as
//! NDJSON requests of at most [`BulkOptions::max_documents`] documents and about
//! [`BulkOptions::max_bytes`] bytes, then every batch is followed at `GET /v1/batches/{id}` (one
//! request per batch every [`POLL_INTERVAL`], never one per document) until its jobs are done or
//! failed, with a progress bar of done + failed over the accepted total.
//!
//! The result is one [`ItemOutcome`] per input document, in input order, so a caller can report
//! on each of its own items (`ingest` on each file): the server's rejections come back by line and
//! map exactly; the batch's failures come back by `external_id` (or title when there is none) and
//! map as far as those are unique.
//!
//! Failure handling: 503 `overloaded` and 429 `rate_limited` are waited out (`Retry-After`) and the
//! request sent again; a request the server finds too large (413, or too many documents) is split
//! in two and both halves sent; a request of one document that the server refuses as invalid
//! becomes that document's rejection; anything else (unreachable, not allowed, server errors)
//! stops the upload with the server's message.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt, TryStreamExt};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use uuid::Uuid;

use super::api::{Answer, Api, ClientError};
use super::output::progress_bar;
use crate::api::model::{BulkAccepted, BulkRejection, CreateDocument};
use crate::storage::{BatchFailure, BatchView};

/// Documents per request unless told otherwise (the server takes up to `limits.bulk_max_documents`,
/// 10,000 by default).
pub const DEFAULT_MAX_DOCUMENTS: usize = 2000;
/// NDJSON bytes per request unless told otherwise (the server takes up to
/// `api.max_bulk_body_bytes`, 64 MiB by default). A single larger document is sent on its own.
pub const DEFAULT_MAX_BYTES: usize = 16 << 20;
/// How often unfinished batches are polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(300);
/// A batch-status request that takes longer than this is treated as a failed poll and retried.
const POLL_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct BulkOptions {
    /// Sent as `?collection=`: the collection of documents that name none.
    pub collection: Option<String>,
    pub max_documents: usize,
    pub max_bytes: usize,
    /// Requests in flight at once (uploads and, later, batch polls).
    pub concurrency: usize,
    /// Wait until every batch has finished (else return once the batches are accepted).
    pub wait: bool,
    /// How long retries of overloaded uploads may go on, and, separately, how long to wait for
    /// the batches to finish.
    pub timeout: Duration,
}

impl Default for BulkOptions {
    fn default() -> Self {
        BulkOptions {
            collection: None,
            max_documents: DEFAULT_MAX_DOCUMENTS,
            max_bytes: DEFAULT_MAX_BYTES,
            concurrency: 2,
            wait: true,
            timeout: Duration::from_secs(3600),
        }
    }
}

/// What became of one input document.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemOutcome {
    /// Never sent: the input itself was an error (an unreadable file, say).
    NotSent(String),
    /// Refused by the server before storing (its line in the request was invalid, or not allowed).
    Rejected { code: String, message: String },
    /// Accepted; not waited for.
    Queued { batch_id: Uuid },
    /// Indexed.
    Done { batch_id: Uuid },
    /// Its job failed.
    Failed {
        batch_id: Uuid,
        document_id: Uuid,
        error: String,
    },
    /// The batch finished with failures that cannot be told apart from this document (the
    /// server lists at most 100, or several documents share the name a failure carries).
    Unconfirmed { batch_id: Uuid, reason: String },
    /// Its batch had not finished when the wait ran out.
    TimedOut {
        batch_id: Uuid,
        last_poll_error: Option<String>,
    },
}

impl ItemOutcome {
    /// Indexed, or (when not waiting) accepted.
    pub fn is_success(&self) -> bool {
        matches!(self, ItemOutcome::Done { .. } | ItemOutcome::Queued { .. })
    }
}

/// The result of [`upload`].
#[derive(Debug, Clone, Default)]
pub struct BulkOutcome {
    /// One per input document, in input order.
    pub items: Vec<ItemOutcome>,
    /// The last view of each batch (none when not waiting).
    pub batches: Vec<BatchView>,
    /// Every failure the batches listed.
    pub failures: Vec<BatchFailure>,
    /// From the first request to the last batch accepted.
    pub upload_time: Duration,
    /// From the first request to the end of waiting.
    pub elapsed: Duration,
}

impl BulkOutcome {
    /// Documents the server accepted into a batch.
    pub fn accepted(&self) -> usize {
        self.items
            .iter()
            .filter(|i| !matches!(i, ItemOutcome::NotSent(_) | ItemOutcome::Rejected { .. }))
            .count()
    }

    /// The rejected documents: (input index, code, message).
    pub fn rejected(&self) -> impl Iterator<Item = (usize, &str, &str)> {
        self.items.iter().enumerate().filter_map(|(i, o)| match o {
            ItemOutcome::Rejected { code, message } => Some((i, code.as_str(), message.as_str())),
            _ => None,
        })
    }

    pub fn count(&self, which: impl Fn(&ItemOutcome) -> bool) -> usize {
        self.items.iter().filter(|i| which(i)).count()
    }

    /// Jobs that failed, by the batches' own counts (which may list fewer failures).
    pub fn failed_jobs(&self) -> usize {
        self.batches
            .iter()
            .map(|b| b.counts.failed.max(0) as usize)
            .sum()
    }
}

/// One document as an NDJSON line, with what is needed to recognise it in a batch's failures.
#[derive(Debug, Clone)]
struct Line {
    /// Position in the input.
    index: usize,
    /// The JSON object and its newline.
    json: Vec<u8>,
    external_id: Option<String>,
    title: Option<String>,
}

impl Line {
    fn new(index: usize, doc: &CreateDocument) -> Result<Self, String> {
        let mut json = serde_json::to_vec(doc).map_err(|e| format!("cannot encode: {e}"))?;
        json.push(b'\n');
        Ok(Line {
            index,
            json,
            external_id: doc.external_id.clone(),
            title: doc.title.clone(),
        })
    }
}

/// The next request's lines, and the inputs that were errors on the way to it.
#[derive(Debug, Default)]
struct Chunk {
    lines: Vec<Line>,
    not_sent: Vec<(usize, String)>,
}

/// Groups the input into requests of at most `max_documents` lines and `max_bytes` bytes (a
/// line longer than that on its own), reading the input only as far as the next request needs.
struct Chunker<I> {
    input: std::iter::Enumerate<I>,
    max_documents: usize,
    max_bytes: usize,
    carry: Option<Line>,
}

impl<I: Iterator<Item = Result<CreateDocument, String>>> Iterator for Chunker<I> {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        let mut chunk = Chunk::default();
        let mut bytes = 0;
        if let Some(line) = self.carry.take() {
            bytes += line.json.len();
            chunk.lines.push(line);
        }
        while chunk.lines.len() < self.max_documents {
            let Some((index, item)) = self.input.next() else {
                break;
            };
            match item.and_then(|doc| Line::new(index, &doc)) {
                Err(reason) => chunk.not_sent.push((index, reason)),
                Ok(line) if !chunk.lines.is_empty() && bytes + line.json.len() > self.max_bytes => {
                    self.carry = Some(line);
                    break;
                }
                Ok(line) => {
                    bytes += line.json.len();
                    chunk.lines.push(line);
                }
            }
        }
        (!chunk.lines.is_empty() || !chunk.not_sent.is_empty()).then_some(chunk)
    }
}

fn chunks<I>(input: I, options: &BulkOptions) -> Chunker<I::IntoIter>
where
    I: IntoIterator<Item = Result<CreateDocument, String>>,
{
    Chunker {
        input: input.into_iter().enumerate(),
        max_documents: options.max_documents.max(1),
        max_bytes: options.max_bytes.max(1),
        carry: None,
    }
}

/// One request's lines and what the server made of them.
#[derive(Debug)]
struct Sent {
    lines: Vec<Line>,
    /// `None` when no line was accepted.
    batch_id: Option<Uuid>,
    rejected: Vec<BulkRejection>,
}

/// One chunk's requests (more than one when it was split) and the inputs that were not sent.
#[derive(Debug)]
struct Posted {
    not_sent: Vec<(usize, String)>,
    sent: Vec<Sent>,
}

/// The body of a 400 that refused every line of a request.
#[derive(Deserialize)]
struct AllRejected {
    rejected: Vec<BulkRejection>,
}

/// Posts `lines`, splitting the request while the server finds it too large.
async fn post_lines(
    api: &Api,
    lines: Vec<Line>,
    collection: Option<&str>,
    deadline: Instant,
) -> Result<Vec<Sent>, ClientError> {
    let mut todo = vec![lines];
    let mut sent = Vec::new();
    while let Some(mut lines) = todo.pop() {
        let body: Vec<u8> = lines.iter().flat_map(|l| l.json.iter().copied()).collect();
        let request = || {
            let mut r = api
                .post("/v1/documents/bulk")
                .header(CONTENT_TYPE, "application/x-ndjson")
                .body(body.clone());
            if let Some(c) = collection {
                r = r.query(&[("collection", c)]);
            }
            r
        };
        let answer = api.send_retrying(request, deadline).await?;
        match classify(&answer, lines.len()) {
            Verdict::Accepted(accepted) => sent.push(Sent {
                lines,
                batch_id: Some(accepted.batch_id),
                rejected: accepted.rejected,
            }),
            Verdict::AllRejected(rejected) => sent.push(Sent {
                lines,
                batch_id: None,
                rejected,
            }),
            Verdict::Split => {
                let tail = lines.split_off(lines.len() / 2);
                todo.push(tail);
                todo.push(lines);
            }
            Verdict::Fail(e) => return Err(e),
        }
    }
    Ok(sent)
}

#[derive(Debug)]
enum Verdict {
    Accepted(BulkAccepted),
    AllRejected(Vec<BulkRejection>),
    /// Too large for the server: send each half on its own.
    Split,
    Fail(ClientError),
}

/// What an answer to a bulk request of `lines` documents means.
fn classify(answer: &Answer, lines: usize) -> Verdict {
    if answer.status.is_success() {
        return match answer.decode::<BulkAccepted>() {
            Ok(accepted) => Verdict::Accepted(accepted),
            Err(e) => Verdict::Fail(e),
        };
    }
    let error = answer.error();
    if answer.status == StatusCode::BAD_REQUEST
        && let Ok(all) = serde_json::from_slice::<AllRejected>(&answer.body)
        && !all.rejected.is_empty()
    {
        return Verdict::AllRejected(all.rejected);
    }
    let too_large = answer.status == StatusCode::PAYLOAD_TOO_LARGE
        || (answer.status == StatusCode::BAD_REQUEST && error.code() == Some("limit_exceeded"));
    if too_large && lines > 1 {
        return Verdict::Split;
    }
    // What the server says about a request of one document is about that document, when it is a
    // complaint about the content rather than about the caller or the server.
    let about_the_document = matches!(
        answer.status,
        StatusCode::BAD_REQUEST
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNSUPPORTED_MEDIA_TYPE
            | StatusCode::UNPROCESSABLE_ENTITY
    );
    if lines == 1 && about_the_document {
        let (code, message) = match &error {
            ClientError::Api { body, .. } => (body.code.clone(), body.message.clone()),
            other => (
                format!("http_{}", answer.status.as_u16()),
                other.to_string(),
            ),
        };
        return Verdict::AllRejected(vec![BulkRejection {
            line: 1,
            code,
            message,
        }]);
    }
    Verdict::Fail(error)
}

/// Who was accepted into a batch, to recognise them among its failures.
#[derive(Debug, Clone)]
struct Member {
    index: usize,
    external_id: Option<String>,
    title: Option<String>,
}

#[derive(Debug)]
struct Batch {
    id: Uuid,
    members: Vec<Member>,
    view: Option<BatchView>,
    /// Why polling stopped early (the server no longer knows the batch).
    gone: Option<String>,
}

impl Batch {
    fn is_pending(&self) -> bool {
        self.gone.is_none() && !self.view.as_ref().is_some_and(|v| v.finished)
    }
}

/// Uploads `documents` (an `Err` item is reported as [`ItemOutcome::NotSent`]) and, with
/// `options.wait`, waits for every batch to finish. `Err` when a request failed in a way that is
/// not about one document (see the module docs); the batches accepted before it stay accepted.
pub(crate) async fn upload<I>(
    api: &Api,
    documents: I,
    options: &BulkOptions,
) -> anyhow::Result<BulkOutcome>
where
    I: IntoIterator<Item = Result<CreateDocument, String>>,
{
    let documents = documents.into_iter();
    let expected = documents.size_hint().0;
    let started = Instant::now();
    let deadline = started + options.timeout;
    let concurrency = options.concurrency.max(1);
    let collection = options.collection.as_deref();

    let bar = progress_bar(expected, "uploading");
    let posted: Vec<Posted> = stream::iter(chunks(documents, options))
        .map(|chunk| {
            let bar = &bar;
            async move {
                let n = chunk.lines.len() + chunk.not_sent.len();
                let sent = if chunk.lines.is_empty() {
                    Vec::new()
                } else {
                    post_lines(api, chunk.lines, collection, deadline).await?
                };
                bar.inc(n as u64);
                Ok::<_, ClientError>(Posted {
                    not_sent: chunk.not_sent,
                    sent,
                })
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    bar.finish_and_clear();
    let upload_time = started.elapsed();

    let mut items: Vec<Option<ItemOutcome>> = Vec::new();
    let mut set = |index: usize, outcome: ItemOutcome| {
        if items.len() <= index {
            items.resize(index + 1, None);
        }
        items[index] = Some(outcome);
    };
    let mut batches = Vec::new();
    for posted in posted {
        for (index, reason) in posted.not_sent {
            set(index, ItemOutcome::NotSent(reason));
        }
        for sent in posted.sent {
            let mut rejected_lines = vec![false; sent.lines.len()];
            for r in sent.rejected {
                if let Some(line) = r.line.checked_sub(1).and_then(|i| sent.lines.get(i)) {
                    rejected_lines[r.line - 1] = true;
                    set(
                        line.index,
                        ItemOutcome::Rejected {
                            code: r.code,
                            message: r.message,
                        },
                    );
                }
            }
            let Some(id) = sent.batch_id else { continue };
            let members: Vec<Member> = sent
                .lines
                .into_iter()
                .zip(rejected_lines)
                .filter(|(_, rejected)| !rejected)
                .map(|(line, _)| Member {
                    index: line.index,
                    external_id: line.external_id,
                    title: line.title,
                })
                .collect();
            batches.push(Batch {
                id,
                members,
                view: None,
                gone: None,
            });
        }
    }
    batches.sort_by_key(|b| b.members.first().map(|m| m.index));

    let mut last_poll_error = None;
    if options.wait {
        last_poll_error = wait_for(api, &mut batches, concurrency, options.timeout).await;
    }
    for batch in &batches {
        let outcomes = if options.wait {
            resolve(batch, last_poll_error.as_deref())
        } else {
            vec![ItemOutcome::Queued { batch_id: batch.id }; batch.members.len()]
        };
        for (member, outcome) in batch.members.iter().zip(outcomes) {
            set(member.index, outcome);
        }
    }

    let failures = batches
        .iter()
        .filter_map(|b| b.view.as_ref())
        .flat_map(|v| v.failures.iter().cloned())
        .collect();
    Ok(BulkOutcome {
        items: items
            .into_iter()
            .map(|o| o.unwrap_or_else(|| ItemOutcome::NotSent("lost".into())))
            .collect(),
        batches: batches.into_iter().filter_map(|b| b.view).collect(),
        failures,
        upload_time,
        elapsed: started.elapsed(),
    })
}

/// Polls the unfinished batches until all have finished or `timeout` runs out, with a bar of
/// done + failed over the accepted total. Polls that fail (a restart, a proxy hiccup) are retried
/// until then; the last such error is returned for the report.
async fn wait_for(
    api: &Api,
    batches: &mut [Batch],
    concurrency: usize,
    timeout: Duration,
) -> Option<String> {
    let total: usize = batches.iter().map(|b| b.members.len()).sum();
    if total == 0 {
        return None;
    }
    let bar = progress_bar(total, "indexing");
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        let pending: Vec<(usize, Uuid)> = batches
            .iter()
            .enumerate()
            .filter(|(_, b)| b.is_pending())
            .map(|(i, b)| (i, b.id))
            .collect();
        let now = Instant::now();
        if pending.is_empty() || now >= deadline {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
        let polled: Vec<(usize, Result<BatchView, ClientError>)> = stream::iter(pending)
            .map(|(i, id)| async move {
                let request = api
                    .get(&format!("/v1/batches/{id}"))
                    .timeout(POLL_REQUEST_TIMEOUT);
                (i, api.json::<BatchView>(request).await)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (i, result) in polled {
            match result {
                Ok(view) => batches[i].view = Some(view),
                Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {
                    batches[i].gone = Some(format!("batch no longer exists: {e}"));
                }
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        let finished: i64 = batches
            .iter()
            .filter_map(|b| b.view.as_ref())
            .map(|v| v.counts.done + v.counts.failed)
            .sum();
        bar.set_position(finished.max(0) as u64);
    }
    bar.finish_and_clear();
    last_error
}

/// Each member's outcome from the batch's last view: the listed failures are matched by
/// `external_id` (by title for members without one); the rest are done when the failures are
/// all accounted for, and unconfirmed when some cannot be placed.
fn resolve(batch: &Batch, last_poll_error: Option<&str>) -> Vec<ItemOutcome> {
    let batch_id = batch.id;
    if let Some(reason) = &batch.gone {
        let outcome = ItemOutcome::Unconfirmed {
            batch_id,
            reason: reason.clone(),
        };
        return vec![outcome; batch.members.len()];
    }
    let Some(view) = &batch.view else {
        let outcome = ItemOutcome::TimedOut {
            batch_id,
            last_poll_error: last_poll_error.map(str::to_string),
        };
        return vec![outcome; batch.members.len()];
    };

    let mut out: Vec<Option<ItemOutcome>> = vec![None; batch.members.len()];
    let mut placed = 0usize;
    let mut unplaceable = false;
    for failure in &view.failures {
        let candidates: Vec<usize> = batch
            .members
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                out[*i].is_none()
                    && match &failure.external_id {
                        Some(ext) => m.external_id.as_deref() == Some(ext.as_str()),
                        None => {
                            m.external_id.is_none()
                                && m.title.as_deref() == Some(failure.title.as_str())
                        }
                    }
            })
            .map(|(i, _)| i)
            .collect();
        match candidates.as_slice() {
            [one] => {
                out[*one] = Some(ItemOutcome::Failed {
                    batch_id,
                    document_id: failure.document_id,
                    error: failure.error.clone(),
                });
                placed += 1;
            }
            [] => unplaceable = true,
            several => {
                for &i in several {
                    out[i] = Some(ItemOutcome::Unconfirmed {
                        batch_id,
                        reason: format!(
                            "one of {} documents named {:?} failed: {}",
                            several.len(),
                            failure.title,
                            failure.error
                        ),
                    });
                }
            }
        }
    }
    let unlisted = (view.counts.failed.max(0) as usize).saturating_sub(view.failures.len());
    let rest = if !view.finished {
        ItemOutcome::TimedOut {
            batch_id,
            last_poll_error: last_poll_error.map(str::to_string),
        }
    } else if unlisted > 0 || unplaceable {
        let unknown = (view.counts.failed.max(0) as usize).saturating_sub(placed);
        ItemOutcome::Unconfirmed {
            batch_id,
            reason: format!("the batch has {unknown} failed documents the server did not name"),
        }
    } else {
        ItemOutcome::Done { batch_id }
    };
    out.into_iter()
        .map(|o| o.unwrap_or_else(|| rest.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::JobCounts;

    fn doc(external_id: &str, text: &str) -> CreateDocument {
        CreateDocument {
            title: Some(format!("{external_id}.md")),
            text: Some(text.to_string()),
            external_id: Some(external_id.to_string()),
            ..CreateDocument::default()
        }
    }

    fn options(max_documents: usize, max_bytes: usize) -> BulkOptions {
        BulkOptions {
            max_documents,
            max_bytes,
            ..BulkOptions::default()
        }
    }

    fn indices(chunk: &Chunk) -> Vec<usize> {
        chunk.lines.iter().map(|l| l.index).collect()
    }

    #[test]
    fn chunks_respect_the_document_and_byte_limits() {
        let docs: Vec<Result<CreateDocument, String>> =
            (0..7).map(|i| Ok(doc(&format!("d{i}"), "x"))).collect();
        let by_count: Vec<Chunk> = chunks(docs.clone(), &options(3, usize::MAX)).collect();
        assert_eq!(
            by_count.iter().map(indices).collect::<Vec<_>>(),
            [vec![0, 1, 2], vec![3, 4, 5], vec![6]]
        );

        // Every line here is the same length; two fit in the byte budget, three do not.
        let line = Line::new(0, &doc("d0", "x")).unwrap().json.len();
        let by_bytes: Vec<Chunk> = chunks(docs, &options(100, 2 * line + 1)).collect();
        assert_eq!(
            by_bytes.iter().map(indices).collect::<Vec<_>>(),
            [vec![0, 1], vec![2, 3], vec![4, 5], vec![6]]
        );
        for chunk in &by_bytes {
            let body: Vec<u8> = chunk.lines.iter().flat_map(|l| l.json.clone()).collect();
            assert!(body.len() <= 2 * line + 1);
            let text = String::from_utf8(body).unwrap();
            for l in text.lines() {
                let parsed: CreateDocument = serde_json::from_str(l).unwrap();
                assert_eq!(parsed.text.as_deref(), Some("x"));
            }
        }
    }

    #[test]
    fn an_oversized_document_goes_alone_and_errors_are_not_sent() {
        let big = "y".repeat(500);
        let docs = vec![
            Ok(doc("a", "x")),
            Err("cannot read file".to_string()),
            Ok(doc("big", &big)),
            Ok(doc("c", "x")),
            Err("gone".to_string()),
        ];
        let out: Vec<Chunk> = chunks(docs, &options(10, 200)).collect();
        assert_eq!(
            out.iter().map(indices).collect::<Vec<_>>(),
            [vec![0], vec![2], vec![3]]
        );
        assert_eq!(out[0].not_sent, [(1, "cannot read file".to_string())]);
        assert_eq!(out[2].not_sent, [(4, "gone".to_string())]);
        assert!(out[1].lines[0].json.len() > 200);
    }

    fn member(index: usize, external_id: Option<&str>, title: &str) -> Member {
        Member {
            index,
            external_id: external_id.map(str::to_string),
            title: Some(title.to_string()),
        }
    }

    fn view(id: Uuid, done: i64, failed: i64, failures: Vec<BatchFailure>) -> BatchView {
        BatchView {
            batch_id: id,
            total: done + failed,
            counts: JobCounts {
                queued: 0,
                running: 0,
                done,
                failed,
            },
            finished: true,
            failures,
            created_at: chrono::Utc::now(),
        }
    }

    fn failure(external_id: Option<&str>, title: &str, error: &str) -> BatchFailure {
        BatchFailure {
            document_id: Uuid::from_u128(99),
            external_id: external_id.map(str::to_string),
            title: title.to_string(),
            error: error.to_string(),
        }
    }

    #[test]
    fn failures_map_back_by_external_id_then_title() {
        let id = Uuid::from_u128(1);
        let batch = Batch {
            id,
            members: vec![
                member(0, Some("/a.md"), "a.md"),
                member(1, Some("/b.pdf"), "b.pdf"),
                member(2, None, "c.txt"),
                member(3, None, "d.txt"),
            ],
            view: Some(view(
                id,
                2,
                2,
                vec![
                    failure(Some("/b.pdf"), "b.pdf", "no text layer"),
                    failure(None, "c.txt", "empty"),
                ],
            )),
            gone: None,
        };
        let out = resolve(&batch, None);
        assert_eq!(out[0], ItemOutcome::Done { batch_id: id });
        assert_eq!(
            out[1],
            ItemOutcome::Failed {
                batch_id: id,
                document_id: Uuid::from_u128(99),
                error: "no text layer".into()
            }
        );
        assert!(matches!(&out[2], ItemOutcome::Failed { error, .. } if error == "empty"));
        assert_eq!(out[3], ItemOutcome::Done { batch_id: id });
    }

    #[test]
    fn failures_that_cannot_be_placed_leave_the_others_unconfirmed() {
        let id = Uuid::from_u128(1);
        // Two files of the same name without external ids: the failure could be either.
        let shared = Batch {
            id,
            members: vec![
                member(0, None, "notes.md"),
                member(1, None, "notes.md"),
                member(2, None, "other.md"),
            ],
            view: Some(view(id, 2, 1, vec![failure(None, "notes.md", "boom")])),
            gone: None,
        };
        let out = resolve(&shared, None);
        assert!(
            matches!(&out[0], ItemOutcome::Unconfirmed { reason, .. } if reason.contains("one of 2"))
        );
        assert!(matches!(&out[1], ItemOutcome::Unconfirmed { .. }));
        assert_eq!(out[2], ItemOutcome::Done { batch_id: id });

        // More failures than the server lists: who else failed is unknown.
        let unlisted = Batch {
            id,
            members: vec![member(0, Some("/a"), "a"), member(1, Some("/b"), "b")],
            view: Some(view(id, 0, 2, vec![failure(Some("/a"), "a", "boom")])),
            gone: None,
        };
        let out = resolve(&unlisted, None);
        assert!(matches!(out[0], ItemOutcome::Failed { .. }));
        assert!(
            matches!(&out[1], ItemOutcome::Unconfirmed { reason, .. } if reason.contains("1 failed")),
            "{out:?}"
        );

        // Unfinished at the deadline; never polled; forgotten by the server.
        let mut running = view(id, 1, 0, vec![]);
        running.finished = false;
        let timed_out = Batch {
            id,
            members: vec![member(0, Some("/a"), "a")],
            view: Some(running),
            gone: None,
        };
        assert_eq!(
            resolve(&timed_out, Some("HTTP 502")),
            [ItemOutcome::TimedOut {
                batch_id: id,
                last_poll_error: Some("HTTP 502".into())
            }]
        );
        let gone = Batch {
            id,
            members: vec![member(0, Some("/a"), "a")],
            view: None,
            gone: Some("batch no longer exists".into()),
        };
        assert!(matches!(
            resolve(&gone, None)[0],
            ItemOutcome::Unconfirmed { .. }
        ));
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            url: "http://x/v1/documents/bulk".into(),
            headers: Default::default(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn answers_are_classified() {
        let id = Uuid::from_u128(7);
        let ok = answer(
            202,
            &format!(
                r#"{{"batch_id":"{id}","accepted":1,"rejected":[{{"line":2,"code":"invalid_request","message":"text is empty"}}]}}"#
            ),
        );
        assert!(
            matches!(classify(&ok, 2), Verdict::Accepted(a) if a.batch_id == id && a.rejected[0].line == 2)
        );
        let none = answer(
            400,
            r#"{"code":"invalid_request","message":"no document of the batch was accepted","rejected":[{"line":1,"code":"forbidden","message":"no"}]}"#,
        );
        assert!(matches!(classify(&none, 1), Verdict::AllRejected(r) if r[0].code == "forbidden"));

        let too_large = answer(413, r#"{"code":"payload_too_large","message":"too big"}"#);
        assert!(matches!(classify(&too_large, 2), Verdict::Split));
        let too_many = answer(400, r#"{"code":"limit_exceeded","message":"too many"}"#);
        assert!(matches!(classify(&too_many, 5000), Verdict::Split));
        // One document too large is that document's problem.
        assert!(
            matches!(classify(&too_large, 1), Verdict::AllRejected(r) if r[0].code == "payload_too_large")
        );
        // The caller's or the server's problem stops the upload.
        let forbidden = answer(403, r#"{"code":"forbidden","message":"no"}"#);
        assert!(matches!(classify(&forbidden, 1), Verdict::Fail(_)));
        let broken = answer(500, "oops");
        assert!(matches!(classify(&broken, 1), Verdict::Fail(e) if e.to_string().contains("oops")));
    }

    /// A stand-in for the server's bulk endpoints: refuses the first request as overloaded,
    /// requests of more than three lines as too large, lines with text "bad" as invalid; batches
    /// finish on their second poll, documents with text "fail" failed.
    mod against_a_stub {
        use super::*;
        use actix_web::{HttpRequest, HttpResponse, web};
        use serde_json::{Value, json};
        use std::collections::HashMap;
        use std::sync::Mutex;

        #[derive(Default)]
        struct Stub {
            posts: Vec<usize>,
            queries: Vec<String>,
            overloaded_once: bool,
            batches: HashMap<Uuid, (Vec<Value>, usize)>,
        }

        type State = web::Data<Mutex<Stub>>;

        async fn bulk(state: State, req: HttpRequest, body: web::Bytes) -> HttpResponse {
            let mut stub = state.lock().unwrap();
            let docs: Vec<Value> = body
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect();
            stub.posts.push(docs.len());
            stub.queries.push(req.query_string().to_string());
            if !stub.overloaded_once {
                stub.overloaded_once = true;
                return HttpResponse::ServiceUnavailable()
                    .insert_header(("Retry-After", "0"))
                    .json(json!({"code": "overloaded", "message": "busy"}));
            }
            if docs.len() > 3 {
                return HttpResponse::PayloadTooLarge()
                    .json(json!({"code": "payload_too_large", "message": "too big"}));
            }
            let mut rejected = Vec::new();
            let mut accepted = Vec::new();
            for (i, doc) in docs.into_iter().enumerate() {
                if doc["text"] == "bad" {
                    rejected.push(
                        json!({"line": i + 1, "code": "invalid_request", "message": "bad text"}),
                    );
                } else {
                    accepted.push(doc);
                }
            }
            let id = Uuid::new_v4();
            let n = accepted.len();
            stub.batches.insert(id, (accepted, 0));
            HttpResponse::Accepted()
                .json(json!({"batch_id": id, "accepted": n, "rejected": rejected}))
        }

        async fn batch(state: State, id: web::Path<Uuid>) -> HttpResponse {
            let mut stub = state.lock().unwrap();
            let Some((docs, polls)) = stub.batches.get_mut(&id) else {
                return HttpResponse::NotFound()
                    .json(json!({"code": "not_found", "message": "batch"}));
            };
            *polls += 1;
            let finished = *polls >= 2;
            let failures: Vec<Value> = docs
                .iter()
                .filter(|d| finished && d["text"] == "fail")
                .map(|d| {
                    json!({"document_id": Uuid::from_u128(5), "external_id": d["external_id"],
                           "title": d["title"], "error": "parser crashed"})
                })
                .collect();
            let total = docs.len() as i64;
            let failed = failures.len() as i64;
            HttpResponse::Ok().json(json!({
                "batch_id": *id, "total": total, "finished": finished, "failures": failures,
                "counts": {"queued": if finished { 0 } else { total }, "running": 0,
                           "done": if finished { total - failed } else { 0 }, "failed": failed},
                "created_at": chrono::Utc::now(),
            }))
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn retries_splits_and_follows_every_batch_to_the_end() {
            let state: State = web::Data::new(Mutex::new(Stub::default()));
            let data = state.clone();
            let server = actix_web::HttpServer::new(move || {
                actix_web::App::new()
                    .app_data(data.clone())
                    .route("/v1/documents/bulk", web::post().to(bulk))
                    .route("/v1/batches/{id}", web::get().to(batch))
            })
            .workers(1)
            .bind(("127.0.0.1", 0))
            .unwrap();
            let port = server.addrs()[0].port();
            let server = server.run();
            let handle = server.handle();
            tokio::spawn(server);

            let api = Api::new(&crate::cli::client::ServerArgs {
                url: format!("http://127.0.0.1:{port}"),
                token: Some("t".into()),
            })
            .await
            .unwrap();
            let text = |i: usize| match i {
                2 => "bad",
                5 => "fail",
                _ => "fine",
            };
            let input: Vec<Result<CreateDocument, String>> = (0..9)
                .map(|i| {
                    if i == 3 {
                        Err("cannot read file".to_string())
                    } else {
                        Ok(doc(&format!("d{i}"), text(i)))
                    }
                })
                .collect();
            let options = BulkOptions {
                collection: Some("ops".into()),
                max_documents: 5,
                concurrency: 1,
                timeout: Duration::from_secs(30),
                ..BulkOptions::default()
            };
            let outcome = upload(&api, input, &options).await.unwrap();
            handle.stop(false).await;

            let stub = state.lock().unwrap();
            // 5 refused as overloaded, 5 too large, its halves 2 and 3, then the last 3.
            assert_eq!(stub.posts, [5, 5, 2, 3, 3]);
            assert!(
                stub.queries.iter().all(|q| q == "collection=ops"),
                "{:?}",
                stub.queries
            );
            assert!(stub.batches.values().all(|(_, polls)| *polls == 2));

            let batch_of = |i: usize| match &outcome.items[i] {
                ItemOutcome::Done { batch_id } | ItemOutcome::Failed { batch_id, .. } => *batch_id,
                other => panic!("{i}: {other:?}"),
            };
            assert_eq!(outcome.items.len(), 9);
            assert!(matches!(outcome.items[0], ItemOutcome::Done { .. }));
            assert_eq!(batch_of(0), batch_of(1));
            assert_eq!(
                outcome.items[2],
                ItemOutcome::Rejected {
                    code: "invalid_request".into(),
                    message: "bad text".into()
                }
            );
            assert_eq!(
                outcome.items[3],
                ItemOutcome::NotSent("cannot read file".into())
            );
            assert!(matches!(outcome.items[4], ItemOutcome::Done { .. }));
            assert!(
                matches!(&outcome.items[5], ItemOutcome::Failed { error, .. } if error == "parser crashed")
            );
            assert_eq!(batch_of(4), batch_of(5));
            assert_ne!(batch_of(0), batch_of(4));
            for i in 6..9 {
                assert!(matches!(outcome.items[i], ItemOutcome::Done { .. }), "{i}");
            }
            assert_eq!(outcome.accepted(), 7);
            assert_eq!(outcome.rejected().count(), 1);
            assert_eq!(outcome.failed_jobs(), 1);
            assert_eq!(outcome.failures.len(), 1);
            assert_eq!(outcome.batches.len(), 3);
        }
    }
}
