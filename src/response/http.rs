//! The response generator's own port: `POST /v1/generate` composes an extractive answer from
//! passages the caller supplies (no retrieval), which is how operators check answer building in
//! isolation.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use futures::FutureExt;
use serde::Deserialize;
use serde_json::{Map, json};
use uuid::Uuid;

use crate::AppState;
use crate::api::model::SearchHit;
use crate::http::{ApiError, ApiResult, Check};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Passage {
    pub text: String,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub score: Option<f32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub query: String,
    pub passages: Vec<Passage>,
}

async fn generate(
    state: web::Data<AppState>,
    body: web::Json<GenerateRequest>,
) -> ApiResult<HttpResponse> {
    let req = body.into_inner();
    if req.query.trim().is_empty() {
        return Err(ApiError::bad_request("query must not be empty"));
    }
    if req.passages.is_empty() || req.passages.len() > 50 {
        return Err(ApiError::bad_request("passages must hold 1 to 50 items"));
    }
    let hits: Vec<SearchHit> = req
        .passages
        .into_iter()
        .enumerate()
        .map(|(i, p)| SearchHit {
            document_id: Uuid::nil(),
            chunk_id: Uuid::nil(),
            chunk_index: i as u32,
            score: p.score.unwrap_or(0.0),
            text: p.text,
            title: p.title.unwrap_or_default(),
            collection: String::new(),
            metadata: Map::new(),
        })
        .collect();
    let (answer, citations, confidence) = state.response.compose(&req.query, &hits);
    Ok(HttpResponse::Ok()
        .json(json!({"answer": answer, "citations": citations, "confidence": confidence})))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/generate", web::post().to(generate));
}

pub fn readiness(
    _state: Arc<AppState>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Check>> + Send>> {
    async move {
        vec![Check {
            name: "answer_builder",
            required: true,
            ok: true,
            error: None,
        }]
    }
    .boxed()
}
