//! The query processor's own port: `POST /v1/search`, the same retrieval the public API serves.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use futures::FutureExt;

use crate::AppState;
use crate::api::model::SearchRequest;
use crate::http::{
    ApiResult, Check, check_cache, check_database, check_documents, check_embedder, check_vectors,
    no_cache,
};

pub async fn search(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<SearchRequest>,
) -> ApiResult<HttpResponse> {
    let fresh = no_cache(&req);
    Ok(HttpResponse::Ok()
        .json(crate::api::run_search(&state, body.into_inner(), None, fresh).await?))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/search", web::post().to(search));
}

pub fn readiness(
    state: Arc<AppState>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Check>> + Send>> {
    async move {
        let mut checks = vec![
            check_embedder(&state).await,
            check_vectors(&state).await,
            check_database(&state).await,
            check_cache(&state).await,
        ];
        checks.extend(check_documents(&state).await);
        checks
    }
    .boxed()
}
