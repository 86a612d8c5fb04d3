//! HTTP plumbing every module server shares: the JSON error type with its one exhaustive mapping
//! from module errors to status codes, extractor error handlers, `/health`, `/ready`, `/metrics`,
//! and the per-module `App` with request-id and metrics middleware around the security guard, so
//! every port denies by default.
//!
//! 500s are opaque to clients (`internal`), and logged with their cause chain.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, HttpResponse, HttpServer, ResponseError, web};
use serde::Serialize;
use serde_json::json;

use crate::AppState;
use crate::api::model::ErrorBody;
use crate::backup::BackupError;
use crate::embedder::EmbedError;
use crate::ingest::IngestError;
use crate::limits::LimitError;
use crate::query::QueryError;
use crate::response::ResponseError as AnswerError;
use crate::response::history::HistoryError;
use crate::security::guard::{GuardCtx, guard};
use crate::security::tokens::AuthFailure;
use crate::security::{SecurityError, SecurityService};
use crate::storage::{Dependency, StorageError};
use crate::telemetry::{ModuleName, request_middleware};
use crate::webhooks::WebhookError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    }
    pub fn unsupported_media(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        )
    }
    /// An internal failure: logged in full here, opaque to the client.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        let mut chain = cause.to_string();
        let mut source = cause.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        tracing::error!(error = %chain, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            res.insert_header((actix_web::http::header::RETRY_AFTER, secs.to_string()));
        }
        res.json(ErrorBody {
            code: self.code.to_string(),
            message: self.message.clone(),
            request_id: None,
        })
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StorageError::Pool(_) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::unavailable("the database is unavailable; retry shortly")
            }
            StorageError::Unavailable {
                dependency,
                ref message,
            } => {
                tracing::warn!(dependency = dependency.as_str(), error = %message, "dependency unavailable");
                let code = match dependency {
                    Dependency::Redis => "redis_unavailable",
                    Dependency::MongoDb => "mongodb_unavailable",
                    Dependency::Qdrant => "qdrant_unavailable",
                };
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    format!("{dependency} is unavailable; retry shortly"),
                )
                .with_retry_after(5)
            }
            StorageError::Database(_)
            | StorageError::Vector(_)
            | StorageError::Migration(_)
            | StorageError::BadUrl(_)
            | StorageError::Corrupt(_)
            | StorageError::Join(_) => ApiError::internal(&e),
        }
    }
}

impl From<BackupError> for ApiError {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::Busy => {
                ApiError::new(StatusCode::CONFLICT, "backup_in_progress", e.to_string())
                    .with_retry_after(60)
            }
            BackupError::Storage(e) => e.into(),
            BackupError::Invalid(_)
            | BackupError::Corrupt(_)
            | BackupError::Incompatible(_)
            | BackupError::NotEmpty(_)
            | BackupError::OutputExists(_)
            | BackupError::Remote(_)
            | BackupError::Io { .. } => ApiError::internal(&e),
        }
    }
}

impl From<EmbedError> for ApiError {
    fn from(e: EmbedError) -> Self {
        match e {
            EmbedError::TooMany(..) => ApiError::bad_request(e.to_string()),
            EmbedError::Stopped => ApiError::unavailable("the embedder is not running"),
            EmbedError::Busy => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the embedder's query queue is full (embedder.query_queue); retry shortly",
            )
            .with_retry_after(1),
            EmbedError::MissingFiles { .. }
            | EmbedError::Runtime { .. }
            | EmbedError::Model(_)
            | EmbedError::Inference(_) => ApiError::internal(&e),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Invalid(m) => ApiError::bad_request(m),
            IngestError::UnsupportedType(m) => ApiError::unsupported_media(m),
            IngestError::Unparseable(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unparseable_document", m)
            }
            IngestError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            IngestError::JobNotFound(_) => ApiError::not_found("job"),
            IngestError::Limit(l) => l.into(),
            IngestError::Storage(s) => s.into(),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Invalid(m) => ApiError::bad_request(m),
            QueryError::Embed(e) => e.into(),
            QueryError::Storage(s) => s.into(),
            QueryError::Limit(l) => l.into(),
        }
    }
}

impl From<LimitError> for ApiError {
    fn from(e: LimitError) -> Self {
        let status = if e.size {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, "limit_exceeded", e.to_string())
    }
}

impl From<SecurityError> for ApiError {
    fn from(e: SecurityError) -> Self {
        match e {
            SecurityError::Unauthorized(AuthFailure::Unavailable) => {
                ApiError::unavailable(AuthFailure::Unavailable.message()).with_retry_after(1)
            }
            SecurityError::Unauthorized(f) => {
                ApiError::new(StatusCode::UNAUTHORIZED, f.code(), f.message())
            }
            SecurityError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            SecurityError::Invalid(m) => ApiError::bad_request(m),
            SecurityError::NotFound(what) => ApiError::not_found(what),
            SecurityError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            SecurityError::LockedOut(wait) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_login_attempts",
                e.to_string(),
            )
            .with_retry_after(wait.as_secs().max(1)),
            SecurityError::Hash(_) => ApiError::internal(&e),
            SecurityError::Storage(s) => s.into(),
        }
    }
}

impl From<WebhookError> for ApiError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::Invalid(m) => ApiError::bad_request(m),
            WebhookError::Limit(m) => ApiError::new(StatusCode::BAD_REQUEST, "limit_exceeded", m),
            WebhookError::NotFound(_) => ApiError::not_found("webhook"),
            WebhookError::Storage(s) => s.into(),
            WebhookError::Random(_) => ApiError::internal(&e),
        }
    }
}

impl From<AnswerError> for ApiError {
    fn from(e: AnswerError) -> Self {
        match e {
            AnswerError::Query(q) => q.into(),
            AnswerError::History(h) => h.into(),
        }
    }
}

impl From<HistoryError> for ApiError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::NotFound(what) => ApiError::not_found(what),
            HistoryError::Invalid(m) => ApiError::bad_request(m),
            HistoryError::Storage(s) => s.into(),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A listing's page from its query: `limit` (default `default`, at most `max`) and `offset`
/// (default 0), or `invalid_request` naming both bounds.
pub fn page_bounds(
    limit: Option<i64>,
    offset: Option<i64>,
    default: i64,
    max: i64,
) -> ApiResult<(i64, i64)> {
    let (limit, offset) = (limit.unwrap_or(default), offset.unwrap_or(0));
    if !(1..=max).contains(&limit) || offset < 0 {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={max} and offset >= 0"
        )));
    }
    Ok((limit, offset))
}

/// A JSON body that parsed but has the wrong shape is `invalid_request`; one that is not JSON at
/// all is `malformed_json`.
pub fn deserialize_error(e: &serde_json::Error) -> ApiError {
    if e.is_data() {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
    } else {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string())
    }
}

pub fn json_error(err: JsonPayloadError, limit: usize) -> actix_web::Error {
    let api = match &err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::too_large(limit)
        }
        JsonPayloadError::ContentType => {
            ApiError::unsupported_media("expected Content-Type: application/json")
        }
        JsonPayloadError::Deserialize(e) => deserialize_error(e),
        _ => ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", err.to_string()),
    };
    api.into()
}

fn path_error(err: PathError, _: &HttpRequest) -> actix_web::Error {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_id",
        format!("invalid path parameter: {err}"),
    )
    .into()
}

fn query_error(err: QueryPayloadError, _: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request(format!("invalid query string: {err}")).into()
}

async fn not_found(req: HttpRequest) -> ApiResult<HttpResponse> {
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {} {}", req.method(), req.path()),
    ))
}

/// Liveness: 200 while the process serves (every module port).
#[utoipa::path(get, path = "/health", responses((status = 200, description = "alive")))]
pub async fn health(module: web::Data<ModuleName>) -> HttpResponse {
    HttpResponse::Ok()
        .json(json!({"status": "ok", "module": module.0, "version": env!("CARGO_PKG_VERSION")}))
}

/// One dependency a module needs, and whether it answers.
#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    /// A failing optional dependency (the shared cache) leaves the module ready but `degraded`.
    #[serde(skip)]
    pub required: bool,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Check {
    /// The outcome of asking a dependency whether it answers.
    pub fn of<E: std::fmt::Display>(name: &'static str, required: bool, r: Result<(), E>) -> Self {
        Self {
            name,
            required,
            ok: r.is_ok(),
            error: r.err().map(|e| e.to_string()),
        }
    }
}

/// A module's own routes.
pub type Routes = fn(&mut web::ServiceConfig);

pub type Readiness = fn(Arc<AppState>) -> Pin<Box<dyn Future<Output = Vec<Check>> + Send>>;

/// Readiness: 200 when this module's dependencies answer, 503 naming the failing ones (every
/// module port). Public, so it says only which dependencies fail; why is in the log.
#[utoipa::path(get, path = "/ready", responses((status = 200, description = "ready"),
    (status = 503, description = "a dependency is unavailable: `failing` names it")))]
pub async fn ready(
    state: web::Data<AppState>,
    module: web::Data<ModuleName>,
    checks: web::Data<Readiness>,
) -> HttpResponse {
    let results = (checks.get_ref())(state.into_inner()).await;
    let failing: Vec<&str> = results
        .iter()
        .filter(|c| !c.ok && c.required)
        .map(|c| c.name)
        .collect();
    let degraded: Vec<&str> = results
        .iter()
        .filter(|c| !c.ok && !c.required)
        .map(|c| c.name)
        .collect();
    for c in results.iter().filter(|c| !c.ok) {
        tracing::warn!(
            module = module.0,
            dependency = c.name,
            required = c.required,
            error = c.error.as_deref().unwrap_or(""),
            "not ready"
        );
    }
    if !failing.is_empty() {
        let mut body = json!({"status": "unavailable", "failing": failing});
        if !degraded.is_empty() {
            body["degraded"] = json!(degraded);
        }
        HttpResponse::ServiceUnavailable().json(body)
    } else if !degraded.is_empty() {
        HttpResponse::Ok()
            .json(json!({"status": "degraded", "failing": failing, "degraded": degraded}))
    } else {
        HttpResponse::Ok().json(json!({"status": "ready", "failing": failing}))
    }
}

pub async fn check_database(state: &AppState) -> Check {
    Check::of("database", true, state.storage.metadata.ping().await)
}

pub async fn check_vectors(state: &AppState) -> Check {
    Check::of("vector_index", true, state.storage.vectors.health().await)
}

/// Originals and chunk text, when a separate store (MongoDB) keeps them; in the database they
/// are covered by `database`.
pub async fn check_documents(state: &AppState) -> Option<Check> {
    if state.storage.documents.inline() {
        return None;
    }
    let r = state.storage.documents.health().await;
    Some(Check::of("document_store", true, r))
}

/// The shared cache is optional: the service answers without it.
pub async fn check_cache(state: &AppState) -> Check {
    Check::of("cache", false, state.storage.cache.health().await)
}

pub async fn check_ingest(state: &AppState) -> Check {
    Check::of("ingest_workers", true, state.ingest.health())
}

pub async fn check_embedder(state: &AppState) -> Check {
    Check::of("embedder", true, state.embedder.health().await)
}

/// Binds one module's server: shared state, middleware, error handlers, health/ready/metrics and
/// the module's own routes. Returns the server and the port it bound.
pub fn serve_module(
    module: &'static str,
    listener: std::net::TcpListener,
    state: Arc<AppState>,
    readiness: Readiness,
    routes: Routes,
    workers: usize,
) -> std::io::Result<(Server, u16)> {
    let local = listener.local_addr()?;
    let port = local.port();
    let limit = state.settings.api.max_body_bytes;
    let handler_timeout = Duration::from_secs(state.settings.limits.handler_timeout_secs);
    let guard_ctx = GuardCtx {
        module,
        loopback: local.ip().is_loopback(),
        security: state.security.clone(),
    };
    let security: web::Data<SecurityService> = web::Data::from(state.security.clone());
    let data = web::Data::from(state);
    let server = HttpServer::new(move || {
        actix_web::App::new()
            .app_data(data.clone())
            .app_data(security.clone())
            .app_data(web::Data::new(ModuleName(module)))
            .app_data(web::Data::new(readiness))
            .app_data(
                web::JsonConfig::default()
                    .limit(limit)
                    .error_handler(move |e, _| json_error(e, limit)),
            )
            .app_data(web::PayloadConfig::default().limit(limit))
            .app_data(web::PathConfig::default().error_handler(path_error))
            .app_data(web::QueryConfig::default().error_handler(query_error))
            .wrap(from_fn(move |req, next| {
                with_timeout(handler_timeout, req, next)
            }))
            .wrap(from_fn({
                let ctx = guard_ctx.clone();
                move |req, next| guard(ctx.clone(), req, next)
            }))
            .wrap(from_fn(move |req, next| {
                request_middleware(ModuleName(module), req, next)
            }))
            .route("/health", web::get().to(health))
            .route("/ready", web::get().to(ready))
            .route(
                "/metrics",
                web::get().to(crate::telemetry::metrics_endpoint),
            )
            .configure(routes)
            .default_service(web::to(not_found))
    })
    .workers(workers.max(1))
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((server, port))
}

/// Ends a request that takes longer than `limits.handler_timeout_secs` with 503 `timeout`; the
/// handler's future is dropped, which cancels its work. The error is returned rather than
/// rendered here: holding a second handle to the request would stop actix from routing it.
async fn with_timeout(
    limit: Duration,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    match tokio::time::timeout(limit, next.call(req)).await {
        Ok(res) => res,
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request took longer than {} s (limits.handler_timeout_secs)",
                limit.as_secs()
            ),
        )
        .with_retry_after(1)
        .into()),
    }
}

/// Stops every server (used on shutdown, and by tests).
pub async fn stop_all(handles: &[ServerHandle]) {
    for h in handles {
        h.stop(true).await;
    }
}

/// Whether the request asks for a freshly computed answer (RFC 9111: `Cache-Control: no-cache`
/// or `max-age=0`, or the older `Pragma: no-cache`). The fresh answer may still be stored.
pub fn no_cache(req: &actix_web::HttpRequest) -> bool {
    let has = |name: &str, directive: fn(&str) -> bool| {
        req.headers().get_all(name).any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|d| directive(d.trim())))
        })
    };
    has("cache-control", |d| {
        d.eq_ignore_ascii_case("no-cache")
            || d.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("max-age") && v.trim().trim_matches('"') == "0"
            })
    }) || has("pragma", |d| d.eq_ignore_ascii_case("no-cache"))
}
