//! The webhooks admin API on the api port (8080), `/v1/webhooks`: create, list, delete, enable,
//! test, and the delivery log. Admins only (the guard admits no one else, and each handler checks
//! again); every change is audited. The secret is in the create response only.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{PingResult, SubscriptionRequest};
use crate::AppState;
use crate::api::model::ErrorBody;
use crate::http::ApiResult;
use crate::security::Caller;
use crate::security::audit::{AuditCtx, Event, Outcome};
use crate::storage::webhooks::{
    DeliveryRecord, DeliveryStatus, Recorded, SubscriptionRecord, WebhookEvent,
};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// The collection whose events are sent (it need not exist yet).
    pub collection: String,
    /// Where deliveries are POSTed: http(s), at most `webhooks.url_max_bytes`.
    pub url: String,
    /// Any of `job.done`, `job.failed`, `document.deleted`; all of them when left out.
    #[serde(default)]
    pub events: Option<Vec<String>>,
}

/// A subscription as listed (never with its secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookView {
    pub id: Uuid,
    pub collection: String,
    pub url: String,
    pub events: Vec<WebhookEvent>,
    /// False once `webhooks.disable_after` deliveries in a row failed (or its backlog filled);
    /// `POST /v1/webhooks/{id}/enable` turns it back on.
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// Deliveries that failed for good since the last one that succeeded.
    pub consecutive_failures: i32,
    pub created_at: DateTime<Utc>,
}

impl From<SubscriptionRecord> for WebhookView {
    fn from(r: SubscriptionRecord) -> Self {
        WebhookView {
            id: r.id,
            collection: r.collection,
            url: r.url,
            events: r.events,
            enabled: r.enabled,
            disabled_reason: r.disabled_reason,
            consecutive_failures: r.consecutive_failures,
            created_at: r.created_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookCreated {
    /// The signing secret: shown this once. Deliveries carry
    /// `X-DocRag-Signature: sha256=<hex HMAC-SHA256(secret, "<X-DocRag-Timestamp>.<body>")>`.
    pub secret: String,
    #[serde(flatten)]
    pub webhook: WebhookView,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

/// One delivery of the log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    pub id: Uuid,
    pub subscription_id: Uuid,
    pub event: String,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: i32,
    /// When the next attempt is due (pending deliveries only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The receiver's HTTP status at the last attempt (none: no answer).
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// The body as sent.
    #[schema(value_type = Object)]
    pub payload: Value,
}

impl From<DeliveryRecord> for DeliveryView {
    fn from(r: DeliveryRecord) -> Self {
        DeliveryView {
            id: r.id,
            subscription_id: r.subscription_id,
            event: r.event,
            status: r.status,
            attempts: r.attempts,
            next_attempt_at: (r.status == DeliveryStatus::Pending).then_some(r.next_attempt_at),
            last_status_code: r.last_status_code,
            last_error: r.last_error,
            created_at: r.created_at,
            delivered_at: r.delivered_at,
            payload: serde_json::from_str(&r.payload).unwrap_or(Value::String(r.payload)),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryView>,
    pub limit: i64,
    pub offset: i64,
}

/// The outcome of `POST /v1/webhooks/{id}/test`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookTested {
    /// The `ping` delivery's id (`X-DocRag-Delivery`), in the delivery log.
    pub delivery_id: Uuid,
    /// True when the receiver answered 2xx.
    pub delivered: bool,
    /// `delivered`; `retrying` (the ping is retried with backoff like any delivery, while the
    /// subscription is enabled); `failed` (no attempts left, as with `webhooks.max_attempts = 1`).
    pub outcome: String,
    /// The receiver's HTTP status (none: no answer).
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

impl From<PingResult> for WebhookTested {
    fn from(p: PingResult) -> Self {
        WebhookTested {
            delivery_id: p.delivery_id,
            delivered: p.recorded == Recorded::Delivered,
            outcome: match p.recorded {
                Recorded::Delivered => "delivered",
                Recorded::Retrying => "retrying",
                Recorded::Failed { .. } => "failed",
                Recorded::LeaseLost => "lease_lost",
            }
            .into(),
            status_code: p.status_code,
            error: p.error,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    limit: Option<i64>,
    offset: Option<i64>,
}

async fn audit(
    state: &AppState,
    req: &HttpRequest,
    event: Event,
    id: Uuid,
    detail: Option<String>,
) {
    state
        .security
        .audit(
            &AuditCtx::from_request(req),
            event,
            Some(format!("webhook:{id}")),
            Outcome::Success,
            detail,
        )
        .await;
}

/// Where a URL points, without its path and query (which may carry a receiver's token): what
/// the audit log keeps.
fn origin(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default()
}

/// Subscribe a receiver to a collection's events (admins). The secret is in this response only.
#[utoipa::path(post, path = "/v1/webhooks", request_body = CreateWebhook,
    responses((status = 201, body = WebhookCreated), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_webhook(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<CreateWebhook>,
) -> ApiResult<HttpResponse> {
    caller.require_admin()?;
    let body = body.into_inner();
    let record = state
        .webhooks
        .create(SubscriptionRequest {
            collection: body.collection,
            url: body.url,
            events: body.events,
        })
        .await?;
    let events: Vec<&str> = record.events.iter().map(|e| e.as_str()).collect();
    audit(
        &state,
        &req,
        Event::WebhookCreated,
        record.id,
        Some(format!(
            "collection {}, receiver {}, events {}",
            record.collection,
            origin(&record.url),
            events.join(",")
        )),
    )
    .await;
    let secret = record.secret.clone();
    Ok(HttpResponse::Created().json(WebhookCreated {
        secret,
        webhook: record.into(),
    }))
}

/// Every webhook subscription (admins).
#[utoipa::path(get, path = "/v1/webhooks",
    responses((status = 200, body = WebhookList), (status = 403, body = ErrorBody)))]
pub async fn list_webhooks(caller: Caller, state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    caller.require_admin()?;
    let webhooks = state.webhooks.list().await?;
    Ok(HttpResponse::Ok().json(WebhookList {
        webhooks: webhooks.into_iter().map(WebhookView::from).collect(),
    }))
}

/// Delete a subscription with its delivery log and pending deliveries (admins).
#[utoipa::path(delete, path = "/v1/webhooks/{id}",
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_webhook(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    caller.require_admin()?;
    state.webhooks.delete(*id).await?;
    audit(&state, &req, Event::WebhookDeleted, *id, None).await;
    Ok(HttpResponse::NoContent().finish())
}

/// Enable a subscription again (admins): clears the reason and the failure count; its pending
/// deliveries resume.
#[utoipa::path(post, path = "/v1/webhooks/{id}/enable",
    responses((status = 200, body = WebhookView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn enable_webhook(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    caller.require_admin()?;
    let record = state.webhooks.enable(*id).await?;
    audit(&state, &req, Event::WebhookEnabled, *id, None).await;
    Ok(HttpResponse::Ok().json(WebhookView::from(record)))
}

/// Send a `ping` delivery now and report the receiver's answer (admins). The ping is in the
/// delivery log and, when this attempt fails, retried like any delivery.
#[utoipa::path(post, path = "/v1/webhooks/{id}/test",
    responses((status = 200, body = WebhookTested), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn test_webhook(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    caller.require_admin()?;
    let tested = WebhookTested::from(state.webhooks.ping(*id).await?);
    audit(
        &state,
        &req,
        Event::WebhookTested,
        *id,
        Some(format!(
            "delivery {}: {}",
            tested.delivery_id,
            tested
                .status_code
                .map_or_else(|| "no answer".to_string(), |s| format!("HTTP {s}"))
        )),
    )
    .await;
    Ok(HttpResponse::Ok().json(tested))
}

/// A subscription's delivery log, newest first (admins).
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries",
    params(("limit" = Option<i64>, Query, description = "1..=1000, default 100"), ("offset" = Option<i64>, Query,)),
    responses((status = 200, body = DeliveryList), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_deliveries(
    caller: Caller,
    state: web::Data<AppState>,
    id: web::Path<Uuid>,
    q: web::Query<PageParams>,
) -> ApiResult<HttpResponse> {
    caller.require_admin()?;
    let (limit, offset) = crate::http::page_bounds(q.limit, q.offset, 100, 1000)?;
    let deliveries = state.webhooks.deliveries(*id, limit, offset).await?;
    Ok(HttpResponse::Ok().json(DeliveryList {
        deliveries: deliveries.into_iter().map(DeliveryView::from).collect(),
        limit,
        offset,
    }))
}

/// `/v1/webhooks`, on the api port.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/webhooks", web::post().to(create_webhook))
        .route("/v1/webhooks", web::get().to(list_webhooks))
        .route("/v1/webhooks/{id}", web::delete().to(delete_webhook))
        .route("/v1/webhooks/{id}/enable", web::post().to(enable_webhook))
        .route("/v1/webhooks/{id}/test", web::post().to(test_webhook))
        .route(
            "/v1/webhooks/{id}/deliveries",
            web::get().to(list_deliveries),
        );
}
