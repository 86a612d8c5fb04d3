//! The storage service's own port: `GET /v1/stats` with counts from every store,
//! `POST /v1/admin/verify[?repair=true]`, which checks (and repairs) that the stores agree, and
//! `POST /v1/admin/backups`, which backs every store up into `backup.dir`, and
//! `POST /v1/admin/reindex`, which queues documents to be embedded and indexed again.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use futures::FutureExt;
use serde_json::json;

use crate::AppState;
use crate::http::{ApiResult, Check, check_database, check_documents, check_vectors};

async fn stats(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let storage = &state.storage;
    let metadata = storage.metadata.stats().await?;
    let vectors = storage.vectors.count().await?;
    Ok(HttpResponse::Ok().json(json!({
        "backends": {
            "metadata": storage.metadata.backend(),
            "documents": storage.documents.backend(),
            "vectors": storage.vectors.backend(),
            "cache": storage.cache.backend(),
        },
        "documents": metadata.documents,
        "documents_indexed": metadata.documents_indexed,
        "chunks": metadata.chunks,
        "indexed_chunks": metadata.indexed_chunks,
        "vectors": vectors,
        "collections": metadata.collections,
        "jobs": metadata.jobs,
    })))
}

#[derive(Debug, serde::Deserialize)]
struct VerifyQuery {
    #[serde(default)]
    repair: bool,
}

async fn verify(
    state: web::Data<AppState>,
    query: web::Query<VerifyQuery>,
) -> ApiResult<HttpResponse> {
    let report = super::verify::verify(&state.storage, query.repair).await?;
    if !report.ok {
        tracing::warn!(
            module = "storage",
            problems = report.problems.len(),
            repaired = report.repaired.len(),
            "verify found problems"
        );
    }
    Ok(HttpResponse::Ok().json(report))
}

/// A backup of every store into a new directory of `backup.dir` (201 with its manifest); 409
/// `backup_in_progress` while one runs.
async fn create_backup(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let written = crate::backup::service::run(
        &state.storage,
        &state.settings,
        crate::backup::service::Trigger::Api,
    )
    .await?;
    Ok(HttpResponse::Created().json(written))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReindexRequest {
    /// Only this collection's documents.
    collection: Option<String>,
}

/// Queues every document (or one collection's) to be indexed again; the old vectors serve until
/// each one's new vectors replace them. 202 with the number queued.
async fn reindex(state: web::Data<AppState>, body: web::Bytes) -> ApiResult<HttpResponse> {
    let request: ReindexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReindexRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            crate::http::ApiError::bad_request(format!(
                "the body is optional; when given it is {{\"collection\": \"name\"}}: {e}"
            ))
        })?
    };
    let queued =
        crate::ingest::reindex::reindex_all(&state.storage, request.collection.as_deref()).await?;
    tracing::info!(module = "storage", queued, collection = ?request.collection, "re-index queued");
    Ok(HttpResponse::Accepted().json(json!({ "queued": queued })))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/stats", web::get().to(stats))
        .route("/v1/admin/verify", web::post().to(verify))
        .route("/v1/admin/backups", web::post().to(create_backup))
        .route("/v1/admin/reindex", web::post().to(reindex));
}

pub fn readiness(
    state: Arc<AppState>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Check>> + Send>> {
    async move {
        let mut checks = vec![check_database(&state).await, check_vectors(&state).await];
        checks.extend(check_documents(&state).await);
        checks
    }
    .boxed()
}
