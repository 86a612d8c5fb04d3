//! The public REST API (port 8080): documents, jobs, collections, search and question answering,
//! described at `/openapi.json`. Handlers are thin: they check transport-level input (body size,
//! content type, ids) and call the ingest, query and response modules through their traits.
//! The security guard has authenticated every caller before a handler runs; handlers check the
//! caller's access per collection. A collection the caller cannot read looks like one that does
//! not exist (404, empty lists); writing where one may only read is 403 and audited.

pub mod bulk;
pub mod conversations;
pub mod model;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_multipart::Multipart;
use actix_web::http::StatusCode;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use base64::Engine;
use futures::{FutureExt, StreamExt};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::OpenApi;
use uuid::Uuid;

use self::model::*;
use crate::AppState;
use crate::config::LimitsSettings;
use crate::http::{
    ApiError, ApiResult, Check, check_cache, check_database, check_documents, check_embedder,
    check_ingest, check_vectors, deserialize_error, no_cache, page_bounds,
};
use crate::ingest::DEFAULT_COLLECTION;
use crate::ingest::Upload;
use crate::limits::{check_bytes, check_count};
use crate::query::SearchParams;
use crate::response::history::owner_of;
use crate::response::{AnswerEvent, AnswerParams};
use crate::security::Caller;
use crate::security::audit::{AuditCtx, Event, Outcome};
use crate::storage::{CollectionInfo, Document, Job, JobStatus};
use crate::telemetry::RequestId;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "doc-rag",
        description = "Document RAG service: ingest documents, search them, ask questions with cited answers."
    ),
    paths(
        create_document,
        bulk::create_documents,
        bulk::get_batch,
        list_documents,
        get_document,
        delete_document,
        get_job,
        list_collections,
        search,
        query,
        conversations::create_conversation,
        conversations::list_conversations,
        conversations::get_conversation,
        conversations::delete_conversation,
        conversations::create_feedback,
        conversations::feedback_report,
        index,
        openapi,
        crate::http::health,
        crate::http::ready,
        crate::telemetry::metrics_endpoint,
        crate::security::http::login,
        crate::security::http::refresh,
        crate::security::http::logout,
        crate::security::http::me,
        crate::security::http::change_password,
        crate::security::http::create_api_key,
        crate::security::http::list_api_keys,
        crate::security::http::revoke_api_key,
        crate::security::http::list_grants,
        crate::security::http::set_grant,
        crate::security::http::delete_grant,
        crate::webhooks::http::create_webhook,
        crate::webhooks::http::list_webhooks,
        crate::webhooks::http::delete_webhook,
        crate::webhooks::http::enable_webhook,
        crate::webhooks::http::test_webhook,
        crate::webhooks::http::list_deliveries
    ),
    components(schemas(
        CreateDocument,
        DocumentAccepted,
        BulkAccepted,
        BulkRejection, BulkDocument,
        crate::storage::BatchView,
        crate::storage::BatchFailure,
        crate::storage::JobCounts,
        DocumentList,
        DocumentDeleted,
        crate::ingest::Removal,
        SearchRequest,
        SearchResponse,
        SearchHit,
        QueryRequest,
        QueryResponse,
        GeneratorChoice,
        Generator,
        AnswerTimings,
        conversations::CreateConversation,
        conversations::FeedbackRequest,
        conversations::FeedbackReport,
        crate::response::history::ConversationView,
        crate::response::history::ConversationDetail,
        crate::response::history::TurnView,
        crate::response::history::Rating,
        crate::response::history::CollectionSatisfaction,
        crate::response::history::FeedbackView,
        Citation,
        ErrorBody,
        Document,
        Job,
        JobStatus,
        CollectionInfo,
        crate::storage::DocumentStatus,
        crate::storage::vector::SearchMode,
        crate::security::http::LoginRequest,
        crate::security::http::RefreshRequest,
        crate::security::http::PasswordChange,
        crate::security::http::CreateApiKey,
        crate::security::http::ApiKeyCreated,
        crate::security::http::GrantRequest,
        crate::security::TokenPair,
        crate::security::UserView,
        crate::security::ApiKeyView,
        crate::security::Role,
        crate::security::Permission,
        crate::webhooks::http::CreateWebhook,
        crate::webhooks::http::WebhookView,
        crate::webhooks::http::WebhookCreated,
        crate::webhooks::http::WebhookList,
        crate::webhooks::http::DeliveryView,
        crate::webhooks::http::DeliveryList,
        crate::webhooks::http::WebhookTested,
        crate::storage::webhooks::WebhookEvent,
        crate::storage::webhooks::DeliveryStatus
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []), ("api_key" = []))
)]
pub struct ApiDoc;

/// Declares the two credential forms every protected route accepts.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT or API key")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

#[derive(Debug, Deserialize)]
pub struct WaitParam {
    #[serde(default)]
    wait: bool,
}

fn request_id(req: &HttpRequest) -> Option<String> {
    req.extensions().get::<RequestId>().map(|r| r.0.clone())
}

/// Refuses a body whose declared length is over `limit` before any of it is read.
fn check_declared_length(req: &HttpRequest, limit: usize) -> ApiResult<()> {
    match req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
    {
        Some(len) if len > limit => Err(ApiError::too_large(limit)),
        _ => Ok(()),
    }
}

/// The request's `Content-Type`, lower-cased; empty when there is none.
fn content_type(req: &HttpRequest) -> String {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The next part of a request body, which must arrive within `limits.body_read_timeout_secs`.
async fn next_part<S: futures::Stream + Unpin>(
    stream: &mut S,
    wait: Duration,
) -> ApiResult<Option<S::Item>> {
    tokio::time::timeout(wait, stream.next())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body stopped arriving for {} s (limits.body_read_timeout_secs)",
                    wait.as_secs()
                ),
            )
        })
}

/// Reads the whole body, refusing more than `limit` bytes.
async fn read_body(
    mut payload: web::Payload,
    limit: usize,
    wait: Duration,
) -> ApiResult<web::BytesMut> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = next_part(&mut payload, wait).await? {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn upload_from_json(doc: CreateDocument, request_id: Option<String>) -> ApiResult<Upload> {
    let (content, content_type) = match (doc.text, doc.content_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either text or content_base64, not both",
            ));
        }
        (Some(text), None) => (
            text.into_bytes(),
            doc.content_type.or(Some("text/plain".into())),
        ),
        (None, Some(b64)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| {
                    ApiError::bad_request(format!("content_base64 is not valid base64: {e}"))
                })?;
            if doc.content_type.is_none() {
                return Err(ApiError::bad_request(
                    "content_type is required with content_base64",
                ));
            }
            (bytes, doc.content_type)
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "missing field: text or content_base64",
            ));
        }
    };
    Ok(Upload {
        title: doc.title,
        file_name: None,
        content_type,
        content,
        collection: doc.collection,
        external_id: doc.external_id,
        metadata: doc.metadata,
        request_id,
    })
}

async fn upload_from_multipart(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    limits: &LimitsSettings,
    request_id: Option<String>,
) -> ApiResult<Upload> {
    let wait = Duration::from_secs(limits.body_read_timeout_secs);
    let mut form = Multipart::new(req.headers(), payload);
    let mut upload = Upload {
        title: None,
        file_name: None,
        content_type: None,
        content: Vec::new(),
        collection: None,
        external_id: None,
        metadata: None,
        request_id,
    };
    let mut have_file = false;
    let mut total = 0usize;
    let mut fields = 0usize;
    while let Some(field) = next_part(&mut form, wait).await? {
        let mut field =
            field.map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?;
        fields += 1;
        check_count(
            "form fields",
            "multipart_max_fields",
            limits.multipart_max_fields,
            fields,
        )?;
        let name = field.name().unwrap_or_default().to_string();
        let file_name = field
            .content_disposition()
            .and_then(|d| d.get_filename())
            .map(str::to_string);
        let mime = field.content_type().map(|m| m.essence_str().to_string());
        let mut data = Vec::new();
        while let Some(chunk) = next_part(&mut field, wait).await? {
            let chunk = chunk
                .map_err(|e| ApiError::bad_request(format!("malformed multipart body: {e}")))?;
            total += chunk.len();
            if total > limit {
                return Err(ApiError::too_large(limit));
            }
            data.extend_from_slice(&chunk);
            if name != "file" {
                check_bytes(
                    &format!("form field {name:?}"),
                    "multipart_field_max_bytes",
                    limits.multipart_field_max_bytes,
                    data.len(),
                )?;
            }
        }
        let text = || {
            String::from_utf8(data.clone())
                .map_err(|_| ApiError::bad_request(format!("field {name} is not UTF-8")))
        };
        match name.as_str() {
            "file" => {
                have_file = true;
                upload.file_name = file_name;
                upload.content_type = mime;
                upload.content = data;
            }
            "title" => upload.title = Some(text()?),
            "collection" => upload.collection = Some(text()?),
            "external_id" => upload.external_id = Some(text()?),
            "metadata" => {
                let value: Map<String, Value> = serde_json::from_str(&text()?).map_err(|e| {
                    ApiError::bad_request(format!("metadata must be a JSON object: {e}"))
                })?;
                upload.metadata = Some(value);
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown form field {other:?}"
                )));
            }
        }
    }
    if !have_file {
        return Err(ApiError::bad_request("missing form field: file"));
    }
    Ok(upload)
}

/// Upload a document. JSON (`text`, or `content_base64` + `content_type`) or multipart (`file`).
#[utoipa::path(post, path = "/v1/documents", request_body = CreateDocument,
    params(("wait" = Option<bool>, Query, description = "wait for indexing to finish")),
    responses((status = 202, body = DocumentAccepted), (status = 200, body = DocumentAccepted, description = "indexed (wait=true)"),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_document(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    wait: web::Query<WaitParam>,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let limit = state.settings.api.max_body_bytes;
    check_declared_length(&req, limit)?;
    let content_type = content_type(&req);
    let rid = request_id(&req);
    let upload = if content_type.starts_with("application/json") {
        let wait = Duration::from_secs(state.settings.limits.body_read_timeout_secs);
        let body = read_body(payload, limit, wait).await?;
        let doc: CreateDocument =
            serde_json::from_slice(&body).map_err(|e| deserialize_error(&e))?;
        upload_from_json(doc, rid)?
    } else if content_type.starts_with("multipart/form-data") {
        upload_from_multipart(&req, payload, limit, &state.settings.limits, rid).await?
    } else {
        return Err(ApiError::unsupported_media(
            "send application/json or multipart/form-data (a file field)",
        ));
    };
    let collection = upload.collection.as_deref().unwrap_or(DEFAULT_COLLECTION);
    if !caller.can_write(collection) {
        return Err(denied(
            &state,
            &req,
            format!("you may not write to collection {collection:?}"),
        )
        .await);
    }
    let submitted = state.ingest.submit(upload).await?;
    let mut accepted = DocumentAccepted {
        document_id: submitted.document_id,
        job_id: submitted.job_id,
        status: JobStatus::Queued,
        replaced: submitted.replaced,
        error: None,
    };
    if !wait.wait {
        return Ok(HttpResponse::Accepted().json(accepted));
    }
    let job = state
        .ingest
        .wait(
            submitted.job_id,
            Duration::from_secs(state.settings.api.wait_timeout_secs),
        )
        .await?;
    accepted.status = job.status;
    accepted.error = job.error.clone();
    match job.status {
        JobStatus::Done => Ok(HttpResponse::Ok().json(accepted)),
        JobStatus::Failed => Ok(HttpResponse::build(StatusCode::UNPROCESSABLE_ENTITY).json(
            json!({
                "code": "ingestion_failed",
                "message": job.error.unwrap_or_else(|| "ingestion failed".into()),
                "document_id": accepted.document_id,
                "job_id": accepted.job_id,
            }),
        )),
        JobStatus::Queued | JobStatus::Running => Ok(HttpResponse::Accepted().json(accepted)),
    }
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    collection: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[utoipa::path(get, path = "/v1/documents",
    params(("collection" = Option<String>, Query,), ("limit" = Option<i64>, Query, description = "1..=1000, default 100"), ("offset" = Option<i64>, Query,)),
    responses((status = 200, body = DocumentList)))]
pub async fn list_documents(
    caller: Caller,
    state: web::Data<AppState>,
    q: web::Query<ListParams>,
) -> ApiResult<HttpResponse> {
    let (limit, offset) = page_bounds(q.limit, q.offset, 100, 1000)?;
    let documents = match &q.collection {
        Some(c) if !caller.can_read(c) => Vec::new(),
        _ => {
            state
                .storage
                .metadata
                .list_documents(q.collection.clone(), caller.read_scope(), limit, offset)
                .await?
        }
    };
    Ok(HttpResponse::Ok().json(DocumentList {
        documents,
        limit,
        offset,
    }))
}

#[utoipa::path(get, path = "/v1/documents/{id}", responses((status = 200, body = Document), (status = 404, body = ErrorBody)))]
pub async fn get_document(
    caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(readable_document(&caller, &state, *id).await?))
}

/// The document, if it exists in a collection the caller may read.
async fn readable_document(caller: &Caller, state: &AppState, id: Uuid) -> ApiResult<Document> {
    state
        .storage
        .metadata
        .get_document(id)
        .await?
        .filter(|d| caller.can_read(&d.collection))
        .ok_or_else(|| ApiError::not_found("document"))
}

/// A 403 for a caller who may read but not write here, recorded in the audit log.
async fn denied(state: &AppState, req: &HttpRequest, why: String) -> ApiError {
    let ctx = AuditCtx::from_request(req);
    state
        .security
        .audit(
            &ctx,
            Event::PermissionDenied,
            None,
            Outcome::Denied,
            Some(format!("{} {}: {why}", req.method(), req.path())),
        )
        .await;
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", why)
}

#[utoipa::path(delete, path = "/v1/documents/{id}", responses((status = 200, body = DocumentDeleted), (status = 404, body = ErrorBody)))]
pub async fn delete_document(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let doc = readable_document(&caller, &state, *id).await?;
    if !caller.can_write(&doc.collection) {
        return Err(denied(
            &state,
            &req,
            format!("you may not delete from collection {:?}", doc.collection),
        )
        .await);
    }
    match state.ingest.delete(*id).await? {
        Some((_, removed)) => {
            let ctx = AuditCtx::from_request(&req);
            state
                .security
                .audit(
                    &ctx,
                    Event::DocumentDeleted,
                    Some(format!("document:{}", *id)),
                    Outcome::Success,
                    Some(format!("collection {}", doc.collection)),
                )
                .await;
            Ok(HttpResponse::Ok().json(DocumentDeleted {
                document_id: *id,
                deleted: true,
                removed,
            }))
        }
        None => Err(ApiError::not_found("document")),
    }
}

#[utoipa::path(get, path = "/v1/jobs/{id}", responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
pub async fn get_job(
    caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let job = state
        .storage
        .metadata
        .get_job(*id)
        .await?
        .ok_or_else(|| ApiError::not_found("job"))?;
    if !caller.is_admin() {
        readable_document(&caller, &state, job.document_id)
            .await
            .map_err(|_| ApiError::not_found("job"))?;
    }
    Ok(HttpResponse::Ok().json(job))
}

#[utoipa::path(get, path = "/v1/collections", responses((status = 200, body = Vec<CollectionInfo>)))]
pub async fn list_collections(
    caller: Caller,
    state: web::Data<AppState>,
) -> ApiResult<HttpResponse> {
    let mut collections = state.storage.metadata.list_collections().await?;
    collections.retain(|c| caller.can_read(&c.name));
    Ok(HttpResponse::Ok().json(json!({ "collections": collections })))
}

/// Transport-neutral search shared by the API and the query module's port.
/// `scope`: the collections the caller may read (`None`: all); `fresh`: bypass the cache.
pub async fn run_search(
    state: &AppState,
    req: SearchRequest,
    scope: Option<Vec<String>>,
    fresh: bool,
) -> ApiResult<SearchResponse> {
    let started = Instant::now();
    let mut params: SearchParams = state.query_params(req)?;
    params.scope = scope;
    params.fresh = fresh;
    let mode = params.mode;
    let outcome = state.search.search(params).await?;
    Ok(SearchResponse {
        results: outcome.hits,
        mode,
        cached: outcome.cached,
        took_ms: started.elapsed().as_millis() as u64,
    })
}

#[utoipa::path(post, path = "/v1/search", request_body = SearchRequest,
    responses((status = 200, body = SearchResponse), (status = 400, body = ErrorBody)))]
pub async fn search(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<SearchRequest>,
) -> ApiResult<HttpResponse> {
    let fresh = no_cache(&req);
    Ok(HttpResponse::Ok()
        .json(run_search(&state, body.into_inner(), caller.read_scope(), fresh).await?))
}

/// Answers a question from the indexed documents, with citations. With `"stream": true` (or
/// `Accept: text/event-stream`) the answer arrives as Server-Sent Events: `sources` (the numbered
/// sources), then `delta` events (`{"text"}`) as it is written, then `done` (the whole answer, as
/// the JSON response would be). Closing the connection cancels the generation.
#[utoipa::path(post, path = "/v1/query", request_body = QueryRequest,
    responses(
        (status = 200, description = "the answer", content(
            (QueryResponse = "application/json"),
            (String = "text/event-stream"))),
        (status = 400, body = ErrorBody)))]
pub async fn query(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<QueryRequest>,
) -> ApiResult<HttpResponse> {
    let q = body.into_inner();
    let stream = q.stream || accepts_event_stream(&req);
    let params = AnswerParams {
        query: q.query,
        top_k: q.top_k,
        collection: q.collection,
        filter: q.filter,
        scope: caller.read_scope(),
        fresh: no_cache(&req),
        generator: q.generator,
        owner: owner_of(&caller),
        conversation_id: q.conversation_id,
    };
    if !stream {
        return Ok(HttpResponse::Ok().json(state.response.answer(params).await?));
    }
    let events = state.response.answer_stream(params).await?;
    let body = futures::stream::unfold(events, |mut events| async move {
        let event = events.recv().await?;
        Some((Ok::<_, actix_web::Error>(sse_frame(&event)), events))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        // Tells nginx not to buffer the stream.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// Whether the client asked for Server-Sent Events.
fn accepts_event_stream(req: &HttpRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// One Server-Sent Event. Data is one line of JSON, so a newline in the text cannot end it early.
fn sse_frame(event: &AnswerEvent) -> web::Bytes {
    let (name, data) = match event {
        AnswerEvent::Sources { query_id, sources } => (
            "sources",
            json!({ "query_id": query_id, "sources": sources }),
        ),
        AnswerEvent::Delta(text) => ("delta", json!({ "text": text })),
        AnswerEvent::Done(answer) => (
            "done",
            serde_json::to_value(answer).unwrap_or_else(|_| json!({})),
        ),
    };
    web::Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3 description of the API")))]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

/// Service name and version.
#[utoipa::path(get, path = "/", responses((status = 200, description = "service name and version")))]
pub async fn index() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "service": "doc-rag",
        "version": env!("CARGO_PKG_VERSION"),
        "openapi": "/openapi.json",
    }))
}

/// Admission for uploads, before their body is read: at most `ingest.max_concurrent_uploads`
/// in flight; the rest get 503 `overloaded` with `Retry-After`, so memory stays flat under a burst.
async fn admit_upload(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<
    actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody + 'static>,
    actix_web::Error,
> {
    if req.method() != actix_web::http::Method::POST {
        return next.call(req).await;
    }
    let permit = req
        .app_data::<web::Data<AppState>>()
        .and_then(|state| state.ingest.admit_upload());
    let Some(_permit) = permit else {
        metrics::counter!("ingest_uploads_rejected_total").increment(1);
        return Err(ApiError::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many uploads in progress (ingest.max_concurrent_uploads); retry shortly",
        )
        .with_retry_after(1)
        .into());
    };
    next.call(req).await
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/openapi.json", web::get().to(openapi))
        .service(
            web::resource("/v1/documents")
                .route(web::post().to(create_document))
                .route(web::get().to(list_documents))
                .wrap(actix_web::middleware::from_fn(admit_upload)),
        )
        .service(
            web::resource("/v1/documents/bulk")
                .route(web::post().to(bulk::create_documents))
                .wrap(actix_web::middleware::from_fn(admit_upload)),
        )
        .route("/v1/batches/{id}", web::get().to(bulk::get_batch))
        .route("/v1/documents/{id}", web::get().to(get_document))
        .route("/v1/documents/{id}", web::delete().to(delete_document))
        .route("/v1/jobs/{id}", web::get().to(get_job))
        .route("/v1/collections", web::get().to(list_collections))
        .route("/v1/search", web::post().to(search))
        .route("/v1/query", web::post().to(query))
        .configure(conversations::routes)
        .configure(crate::security::http::routes)
        .configure(crate::webhooks::http::routes);
}

pub fn readiness(
    state: Arc<AppState>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Check>> + Send>> {
    async move {
        let mut checks = vec![
            check_database(&state).await,
            check_vectors(&state).await,
            check_embedder(&state).await,
            check_ingest(&state).await,
            check_cache(&state).await,
        ];
        checks.extend(check_documents(&state).await);
        checks
    }
    .boxed()
}
