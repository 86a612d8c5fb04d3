//! Request and response bodies of the public REST API (`/v1`). Shared by the server and the CLI
//! client so the two cannot drift apart.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::storage::vector::SearchMode;
use crate::storage::{Document, JobStatus};

/// `POST /v1/documents` as JSON: either `text`, or `content_base64` with `content_type`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDocument {
    /// Shown in citations and indexed with every chunk. Optional: defaults to the file name for
    /// uploads, else empty (the document is then indexed by its text alone).
    #[serde(default)]
    pub title: Option<String>,
    /// Plain text (or Markdown with `content_type: text/markdown`).
    #[serde(default)]
    pub text: Option<String>,
    /// The original file, base64-encoded.
    #[serde(default)]
    pub content_base64: Option<String>,
    /// `text/plain`, `text/markdown`, `text/html` or `application/pdf`.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Defaults to `default`.
    #[serde(default)]
    pub collection: Option<String>,
    /// Your id for the document; uploading again with the same id in a collection replaces it.
    #[serde(default)]
    pub external_id: Option<String>,
    /// Free-form JSON object, returned with results and usable in search filters.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DocumentAccepted {
    pub document_id: Uuid,
    pub job_id: Uuid,
    pub status: JobStatus,
    /// True when an existing document with the same `external_id` was replaced.
    pub replaced: bool,
    /// The job's failure reason, when `?wait=true` and it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /v1/documents/bulk`: the batch was stored; every accepted document has a queued job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BulkAccepted {
    /// Follow the batch at `GET /v1/batches/{batch_id}`.
    pub batch_id: Uuid,
    /// Documents stored and queued.
    pub accepted: usize,
    /// One entry per accepted line, in request order: where each document and its job are.
    #[serde(default)]
    pub documents: Vec<BulkDocument>,
    /// Lines (1-based, in request order) refused before storing, with the reason; the rest of
    /// the batch is accepted regardless.
    pub rejected: Vec<BulkRejection>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BulkDocument {
    /// 1-based position in the request (NDJSON line or array element).
    pub line: usize,
    pub document_id: Uuid,
    pub job_id: Uuid,
    /// True when a document with the same `external_id` was replaced.
    pub replaced: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BulkRejection {
    /// 1-based position in the request (NDJSON line or array element).
    pub line: usize,
    /// A stable error code, as in [`ErrorBody`].
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DocumentList {
    pub documents: Vec<Document>,
    pub limit: i64,
    pub offset: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DocumentDeleted {
    pub document_id: Uuid,
    pub deleted: bool,
    /// What went from each store.
    #[serde(default)]
    pub removed: crate::ingest::Removal,
}

/// `POST /v1/search`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub query: String,
    /// Number of chunks to return (1..=100, default 10).
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub mode: Option<SearchMode>,
    #[serde(default)]
    pub collection: Option<String>,
    /// Metadata equality filter: `{"field": value}` or `{"field": [v1, v2]}` (any of).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchHit {
    pub document_id: Uuid,
    pub chunk_id: Uuid,
    pub chunk_index: u32,
    pub score: f32,
    pub text: String,
    pub title: String,
    pub collection: String,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchResponse {
    pub results: Vec<SearchHit>,
    pub mode: SearchMode,
    pub cached: bool,
    pub took_ms: u64,
}

/// `POST /v1/query`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    pub query: String,
    /// Number of chunks the answer draws on (1..=20, default 5).
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub collection: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Map<String, Value>>,
    /// Stream the answer as Server-Sent Events (`sources`, `delta`…, `done`); the same as sending
    /// `Accept: text/event-stream`.
    #[serde(default)]
    pub stream: bool,
    /// `auto` (default): the language model when one is configured, else extractive;
    /// `extractive`: never call the language model.
    #[serde(default)]
    pub generator: GeneratorChoice,
    /// A follow-up in this conversation (`POST /v1/conversations`): earlier turns rewrite the
    /// question before retrieval and are given to the language model.
    #[serde(default)]
    pub conversation_id: Option<Uuid>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GeneratorChoice {
    #[default]
    Auto,
    Extractive,
}

/// What wrote an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Generator {
    /// Sentences extracted from the sources (no language model configured, or not asked for).
    Extractive,
    /// The configured language model.
    Llm,
    /// The language model failed, timed out or its circuit is open: `fallback_reason` says which,
    /// and the answer is the extractive one.
    ExtractiveFallback,
}

/// Where an answer's time went, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct AnswerTimings {
    pub retrieval_ms: u64,
    pub generation_ms: u64,
    /// Until the language model's first token (generated answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Citation {
    /// The number the answer uses to mark sentences from this source: `[n]`.
    pub n: usize,
    pub document_id: Uuid,
    pub chunk_id: Uuid,
    pub title: String,
    pub snippet: String,
    pub score: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueryResponse {
    /// Names this answer, e.g. in `POST /v1/feedback`.
    pub query_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<Uuid>,
    /// The standalone question retrieval used, when a follow-up was rewritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewritten_query: Option<String>,
    /// The answer; each sentence ends with the `[n]` of the sources it rests on.
    pub answer: String,
    /// The sources the answer cites (extractive answers: every source retrieved), by `n`.
    pub citations: Vec<Citation>,
    /// How well the sources support the answer, in [0, 1] (see docs/api_documentation.md).
    pub confidence: f32,
    pub generator: Generator,
    /// Why the language model's answer was not used (`generator: extractive_fallback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// The model that wrote the answer (generated answers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Sentences of a generated answer that cite no source: treat them with suspicion.
    pub unsupported_sentences: Vec<String>,
    /// Whether the retrieval came from the cache.
    pub cached: bool,
    pub took_ms: u64,
    pub timings: AnswerTimings,
}

/// Every error the API returns: a stable machine-readable `code` and a human `message`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}
