//! The storage service's own port: `GET /v1/stats` with counts from every store, and
//! `POST /v1/admin/verify[?repair=true]`, which checks (and repairs) that the stores agree.

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

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/stats", web::get().to(stats))
        .route("/v1/admin/verify", web::post().to(verify));
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
