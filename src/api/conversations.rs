//! Conversations and feedback on the public API. A conversation belongs to the user (or key) that
//! started it; follow-ups are asked with `POST /v1/query {"conversation_id"}`. Every answer carries
//! a `query_id` its owner can rate with `POST /v1/feedback`; admins read the ratings, and the
//! satisfaction per collection, at `GET /v1/admin/feedback`.

use actix_web::{HttpResponse, web};
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::model::ErrorBody;
use crate::AppState;
use crate::http::{ApiError, ApiResult, page_bounds};
use crate::response::history::{
    CollectionSatisfaction, ConversationDetail, ConversationView, FeedbackView, PAGE_MAX, Rating,
    owner_of,
};
use crate::security::Caller;
use crate::storage::answers::FeedbackQuery;

/// The most turns `GET /v1/conversations/{id}` returns.
const TURNS_SHOWN: i64 = 500;

/// `POST /v1/conversations`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    /// A name for the list (at most 200 bytes); empty when not given.
    #[serde(default)]
    pub title: Option<String>,
    /// The collection follow-ups search when they name none.
    #[serde(default)]
    pub collection: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Page {
    limit: Option<i64>,
    offset: Option<i64>,
}

/// Start a conversation.
#[utoipa::path(post, path = "/v1/conversations", request_body = CreateConversation,
    responses((status = 201, body = ConversationView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "the collection is not readable")))]
pub async fn create_conversation(
    caller: Caller,
    state: web::Data<AppState>,
    body: Option<web::Json<CreateConversation>>,
) -> ApiResult<HttpResponse> {
    let body = body.map(web::Json::into_inner).unwrap_or_default();
    if let Some(c) = &body.collection
        && !caller.can_read(c)
    {
        return Err(ApiError::not_found("collection"));
    }
    let view = state
        .history
        .create_conversation(owner_of(&caller), body.title, body.collection)
        .await?;
    Ok(HttpResponse::Created().json(view))
}

/// The caller's conversations, most recently active first.
#[utoipa::path(get, path = "/v1/conversations",
    params(("limit" = Option<i64>, Query, description = "1..=200, default 50"),
        ("offset" = Option<i64>, Query)),
    responses((status = 200, description = "`{\"conversations\": [ConversationView]}`"),
        (status = 400, body = ErrorBody)))]
pub async fn list_conversations(
    caller: Caller,
    state: web::Data<AppState>,
    q: web::Query<Page>,
) -> ApiResult<HttpResponse> {
    let (limit, offset) = page_bounds(q.limit, q.offset, 50, PAGE_MAX)?;
    let conversations = state
        .history
        .list(&owner_of(&caller), limit, offset)
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "conversations": conversations })))
}

/// A conversation with its turns, oldest first.
#[utoipa::path(get, path = "/v1/conversations/{id}",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ConversationDetail), (status = 404, body = ErrorBody)))]
pub async fn get_conversation(
    caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let id = id.into_inner();
    let detail = state
        .history
        .conversation(&owner_of(&caller), id, TURNS_SHOWN)
        .await?;
    Ok(HttpResponse::Ok().json(detail))
}

/// Delete a conversation and its turns.
#[utoipa::path(delete, path = "/v1/conversations/{id}",
    params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_conversation(
    caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let id = id.into_inner();
    state.history.delete(&owner_of(&caller), id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /v1/feedback`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// The `query_id` of an answer the caller was given.
    pub query_id: Uuid,
    pub rating: Rating,
    /// At most 2000 bytes.
    #[serde(default)]
    pub comment: Option<String>,
}

/// Rate an answer (thumbs up or down). Rating it again replaces the earlier rating.
#[utoipa::path(post, path = "/v1/feedback", request_body = FeedbackRequest,
    responses((status = 201, description = "`{\"query_id\", \"rating\"}`"),
        (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no answer of the caller's has this query_id")))]
pub async fn create_feedback(
    caller: Caller,
    state: web::Data<AppState>,
    body: web::Json<FeedbackRequest>,
) -> ApiResult<HttpResponse> {
    let f = body.into_inner();
    state
        .history
        .rate(&owner_of(&caller), f.query_id, f.rating, f.comment)
        .await?;
    Ok(HttpResponse::Created().json(json!({ "query_id": f.query_id, "rating": f.rating })))
}

#[derive(Debug, Deserialize)]
pub struct FeedbackFilter {
    /// A collection, or `-` for questions asked across collections.
    collection: Option<String>,
    rating: Option<Rating>,
    /// RFC 3339.
    since: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FeedbackReport {
    /// Per collection: up, down and up / (up + down).
    pub satisfaction: Vec<CollectionSatisfaction>,
    /// Newest first.
    pub feedback: Vec<FeedbackView>,
    pub limit: i64,
    pub offset: i64,
}

/// Satisfaction per collection and the feedback itself (admins).
#[utoipa::path(get, path = "/v1/admin/feedback",
    params(("collection" = Option<String>, Query, description = "a collection, or `-` for questions across collections"),
        ("rating" = Option<Rating>, Query), ("since" = Option<String>, Query, description = "RFC 3339"),
        ("limit" = Option<i64>, Query, description = "1..=200, default 50"), ("offset" = Option<i64>, Query)),
    responses((status = 200, body = FeedbackReport), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn feedback_report(
    caller: Caller,
    state: web::Data<AppState>,
    q: web::Query<FeedbackFilter>,
) -> ApiResult<HttpResponse> {
    caller.require_admin()?;
    let (limit, offset) = page_bounds(q.limit, q.offset, 50, PAGE_MAX)?;
    let since = match &q.since {
        Some(s) => Some(
            DateTime::parse_from_rfc3339(s)
                .map_err(|e| ApiError::bad_request(format!("since is not RFC 3339: {e}")))?
                .timestamp_millis(),
        ),
        None => None,
    };
    let collection = q.collection.as_ref().map(|c| match c.as_str() {
        "-" => None,
        name => Some(name.to_string()),
    });
    let (satisfaction, feedback) = state
        .history
        .feedback_report(FeedbackQuery {
            collection,
            rating: q.rating.map(|r| r.as_str().to_string()),
            since,
            limit,
            offset,
        })
        .await?;
    Ok(HttpResponse::Ok().json(FeedbackReport {
        satisfaction,
        feedback,
        limit,
        offset,
    }))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/conversations", web::post().to(create_conversation))
        .route("/v1/conversations", web::get().to(list_conversations))
        .route("/v1/conversations/{id}", web::get().to(get_conversation))
        .route(
            "/v1/conversations/{id}",
            web::delete().to(delete_conversation),
        )
        .route("/v1/feedback", web::post().to(create_feedback))
        .route("/v1/admin/feedback", web::get().to(feedback_report));
}
