//! The embedder's own port: `POST /v1/embed` for operators and debugging.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use futures::FutureExt;
use serde::Deserialize;
use serde_json::json;

use super::Priority;
use crate::AppState;
use crate::http::{ApiError, ApiResult, Check, check_embedder};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    pub texts: Vec<String>,
}

const MAX_TEXTS: usize = 256;

async fn embed(
    state: web::Data<AppState>,
    body: web::Json<EmbedRequest>,
) -> ApiResult<HttpResponse> {
    let texts = body.into_inner().texts;
    if texts.is_empty() || texts.len() > MAX_TEXTS {
        return Err(ApiError::bad_request(format!(
            "texts must hold 1 to {MAX_TEXTS} strings"
        )));
    }
    if texts.iter().any(|t| t.trim().is_empty()) {
        return Err(ApiError::bad_request("texts must not be empty"));
    }
    let sparse: Vec<_> = texts.iter().map(|t| state.bm25.query(t)).collect();
    let embeddings = state.embedder.embed(texts, Priority::Query).await?;
    Ok(HttpResponse::Ok().json(json!({
        "dimension": state.embedder.dimension(),
        "embeddings": embeddings,
        "sparse": sparse,
    })))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/embed", web::post().to(embed));
}

pub fn readiness(
    state: Arc<AppState>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Check>> + Send>> {
    async move { vec![check_embedder(&state).await] }.boxed()
}
