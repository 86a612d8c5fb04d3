//! The security module's HTTP API. [`routes`] (sessions, API keys, grants) is served on the API port
//! and the security port; [`admin_routes`] (`/v1/admin/*`) on the security port only. Handlers
//! translate HTTP to [`SecurityService`] calls; the guard has already authenticated the caller.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::audit::AuditCtx;
use super::limits::RateLimits;
use super::network::parse_cidr;
use super::{
    ApiKeyView, Caller, NewApiKey, Permission, Role, SecurityError, SecurityService, TokenPair,
    UserView, now_ms,
};
use crate::api::model::ErrorBody;
use crate::http::{ApiError, ApiResult};
use crate::storage::security::{AuditQuery, IpBlockRecord};

type Security = web::Data<SecurityService>;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    #[schema(value_type = String)]
    pub password: SecretString,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(value_type = String)]
    pub refresh_token: SecretString,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    #[schema(value_type = String)]
    pub current_password: SecretString,
    #[schema(value_type = String)]
    pub new_password: SecretString,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    pub name: String,
    /// Defaults to `viewer`; at most the creator's own role.
    #[serde(default)]
    pub role: Option<Role>,
    /// Limit the key to one collection (read for viewer keys, write for editor keys).
    #[serde(default)]
    pub collection: Option<String>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreated {
    /// The secret: shown this once, stored only as a hash.
    pub key: String,
    #[serde(flatten)]
    pub info: ApiKeyView,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    pub access: Permission,
}

#[derive(Debug, Deserialize)]
pub struct AllParam {
    #[serde(default)]
    all: bool,
}

fn ctx(req: &HttpRequest) -> AuditCtx {
    AuditCtx::from_request(req)
}

/// Log in with email and password: an access JWT and a refresh token.
#[utoipa::path(post, path = "/v1/auth/login", request_body = LoginRequest,
    responses((status = 200, body = TokenPair), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn login(
    sec: Security,
    req: HttpRequest,
    body: web::Json<LoginRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    Ok(HttpResponse::Ok().json(sec.login(&ctx(&req), &body.email, body.password).await?))
}

/// Exchange a refresh token for a new pair. A refresh token works once; presenting it again
/// revokes its whole family.
#[utoipa::path(post, path = "/v1/auth/refresh", request_body = RefreshRequest,
    responses((status = 200, body = TokenPair), (status = 401, body = ErrorBody)))]
pub async fn refresh(
    sec: Security,
    req: HttpRequest,
    body: web::Json<RefreshRequest>,
) -> ApiResult<HttpResponse> {
    use secrecy::ExposeSecret;
    let token = body.into_inner().refresh_token;
    Ok(HttpResponse::Ok().json(sec.refresh(&ctx(&req), token.expose_secret()).await?))
}

/// End this session (its refresh family and access tokens).
#[utoipa::path(post, path = "/v1/auth/logout", responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn logout(sec: Security, req: HttpRequest, caller: Caller) -> ApiResult<HttpResponse> {
    sec.logout(&ctx(&req), &caller).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Who the credential belongs to, its role and collection grants.
#[utoipa::path(get, path = "/v1/auth/me", responses((status = 200, description = "the caller"), (status = 401, body = ErrorBody)))]
pub async fn me(sec: Security, caller: Caller) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(sec.me(&caller).await?))
}

/// Change your password; ends every session you have.
#[utoipa::path(post, path = "/v1/auth/password", request_body = PasswordChange,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn change_password(
    sec: Security,
    req: HttpRequest,
    caller: Caller,
    body: web::Json<PasswordChange>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    sec.change_password(
        &ctx(&req),
        &caller,
        body.current_password,
        body.new_password,
    )
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Create an API key; its secret is in this response only.
#[utoipa::path(post, path = "/v1/api-keys", request_body = CreateApiKey,
    responses((status = 201, body = ApiKeyCreated), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_api_key(
    sec: Security,
    req: HttpRequest,
    caller: Caller,
    body: web::Json<CreateApiKey>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let expires_at = match (body.expires_at, body.expires_in_days) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give expires_at or expires_in_days, not both",
            ));
        }
        (Some(t), None) => Some(t.timestamp_millis()),
        (None, Some(0)) => return Err(ApiError::bad_request("expires_in_days must be at least 1")),
        (None, Some(d)) => Some(now_ms() + i64::from(d) * 86_400_000),
        (None, None) => None,
    };
    let (key, info) = sec
        .create_api_key(
            &ctx(&req),
            &caller,
            NewApiKey {
                name: body.name,
                role: body.role.unwrap_or(Role::Viewer),
                collection: body.collection,
                expires_at,
            },
        )
        .await?;
    Ok(HttpResponse::Created().json(ApiKeyCreated { key, info }))
}

/// Your API keys (`?all=true`: every key, for admins).
#[utoipa::path(get, path = "/v1/api-keys", params(("all" = Option<bool>, Query,)),
    responses((status = 200, body = Vec<ApiKeyView>)))]
pub async fn list_api_keys(
    sec: Security,
    caller: Caller,
    q: web::Query<AllParam>,
) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(json!({"api_keys": sec.list_api_keys(&caller, q.all).await?})))
}

/// Revoke an API key (yours, or any as an admin). It stops working at once.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn revoke_api_key(
    sec: Security,
    req: HttpRequest,
    caller: Caller,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    sec.revoke_api_key(&ctx(&req), &caller, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Who may read or write a collection (admins).
#[utoipa::path(get, path = "/v1/collections/{name}/grants", responses((status = 200, description = "grants"), (status = 403, body = ErrorBody)))]
pub async fn list_grants(
    sec: Security,
    caller: Caller,
    name: web::Path<String>,
) -> ApiResult<HttpResponse> {
    caller.require_admin()?;
    let grants = sec.list_grants(&name).await?;
    Ok(HttpResponse::Ok().json(json!({"collection": name.into_inner(), "grants": grants})))
}

/// Grant `user:<id>` or `key:<id>` read or write access to a collection (admins).
#[utoipa::path(put, path = "/v1/collections/{name}/grants/{principal}", request_body = GrantRequest,
    responses((status = 200, description = "granted"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_grant(
    sec: Security,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: web::Json<GrantRequest>,
) -> ApiResult<HttpResponse> {
    caller.require_admin()?;
    let (collection, principal) = path.into_inner();
    sec.set_grant(&ctx(&req), &collection, &principal, body.access)
        .await?;
    Ok(HttpResponse::Ok()
        .json(json!({"collection": collection, "principal": principal, "access": body.access})))
}

/// Remove a grant (admins).
#[utoipa::path(delete, path = "/v1/collections/{name}/grants/{principal}", responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_grant(
    sec: Security,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    caller.require_admin()?;
    let (collection, principal) = path.into_inner();
    sec.delete_grant(&ctx(&req), &collection, &principal)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

// --- admin ----------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub email: String,
    pub password: SecretString,
    #[serde(default)]
    pub role: Option<Role>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchUser {
    #[serde(default)]
    pub role: Option<Role>,
    #[serde(default)]
    pub disabled: Option<bool>,
    #[serde(default)]
    pub password: Option<SecretString>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    #[serde(default)]
    pub revoke_old: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpBlockRequest {
    pub cidr: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct IpBlockView {
    pub id: String,
    pub cidr: String,
    pub reason: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub active: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// A user id, email, or principal (`user:<id>`, `key:<id>`).
    pub user: Option<String>,
    pub ip: Option<String>,
    pub event: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

async fn create_user(
    sec: Security,
    req: HttpRequest,
    body: web::Json<CreateUser>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let user = sec
        .create_user(
            &ctx(&req),
            &body.email,
            body.password,
            body.role.unwrap_or(Role::Viewer),
        )
        .await?;
    Ok(HttpResponse::Created().json(user))
}

async fn list_users(sec: Security) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(json!({"users": sec.list_users().await?})))
}

async fn get_user(sec: Security, id: web::Path<String>) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(sec.get_user(&id).await?))
}

async fn patch_user(
    sec: Security,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Json<PatchUser>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    if body.role.is_none() && body.disabled.is_none() && body.password.is_none() {
        return Err(ApiError::bad_request(
            "give at least one of role, disabled, password",
        ));
    }
    let user: UserView = sec
        .update_user(&ctx(&req), &id, body.role, body.disabled, body.password)
        .await?;
    Ok(HttpResponse::Ok().json(user))
}

async fn delete_user(
    sec: Security,
    req: HttpRequest,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    sec.delete_user(&ctx(&req), &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn rotate_keys(
    sec: Security,
    req: HttpRequest,
    body: Option<web::Json<RotateRequest>>,
) -> ApiResult<HttpResponse> {
    let revoke_old = body.map(|b| b.revoke_old).unwrap_or(false);
    let kid = sec.rotate_signing_key(&ctx(&req), revoke_old).await?;
    Ok(HttpResponse::Ok().json(json!({"kid": kid, "revoked_old": revoke_old})))
}

async fn revoke_all(sec: Security, req: HttpRequest) -> ApiResult<HttpResponse> {
    sec.revoke_all_sessions(&ctx(&req)).await?;
    Ok(HttpResponse::Ok().json(json!({"revoked": true})))
}

async fn add_ip_block(
    sec: Security,
    req: HttpRequest,
    body: web::Json<IpBlockRequest>,
) -> ApiResult<HttpResponse> {
    let body = body.into_inner();
    let net = parse_cidr(&body.cidr).map_err(ApiError::bad_request)?;
    let expires_at = match (body.expires_at, body.expires_in_secs) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give expires_at or expires_in_secs, not both",
            ));
        }
        (Some(t), None) => Some(t.timestamp_millis()),
        (None, Some(s)) => Some(now_ms() + (s.min(10 * 365 * 86_400) as i64) * 1000),
        (None, None) => None,
    };
    let reason = body.reason.unwrap_or_default();
    if reason.len() > 1000 {
        return Err(ApiError::bad_request("reason may have at most 1000 bytes"));
    }
    let audit = ctx(&req);
    let record = IpBlockRecord {
        id: uuid::Uuid::new_v4().to_string(),
        cidr: net.to_string(),
        reason,
        expires_at,
        created_by: audit.actor.clone(),
        created_at: now_ms(),
    };
    sec.block_ip(&audit, record.clone()).await?;
    Ok(HttpResponse::Created().json(block_view(&record)))
}

fn block_view(r: &IpBlockRecord) -> IpBlockView {
    IpBlockView {
        id: r.id.clone(),
        cidr: r.cidr.clone(),
        reason: r.reason.clone(),
        expires_at: r.expires_at.map(time),
        created_by: r.created_by.clone(),
        created_at: time(r.created_at),
        active: r.expires_at.is_none_or(|t| t > now_ms()),
    }
}

async fn list_ip_blocks(sec: Security) -> ApiResult<HttpResponse> {
    let blocks: Vec<_> = sec.ip_blocks().await?.iter().map(block_view).collect();
    Ok(HttpResponse::Ok().json(json!({"ip_blocks": blocks})))
}

async fn delete_ip_block(
    sec: Security,
    req: HttpRequest,
    id: web::Path<String>,
) -> ApiResult<HttpResponse> {
    sec.unblock_ip(&ctx(&req), &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn audit_log(sec: Security, q: web::Query<AuditParams>) -> ApiResult<HttpResponse> {
    let q = q.into_inner();
    let (limit, offset) = crate::http::page_bounds(q.limit, q.offset, 100, 1000)?;
    let actor = match q.user {
        None => None,
        Some(u) if u.contains(':') => Some(u),
        Some(u) if u.contains('@') => {
            let email = super::normalize_email(&u)?;
            match sec
                .store()
                .find_user_by_email(&email)
                .await
                .map_err(SecurityError::from)?
            {
                Some(user) => Some(format!("user:{}", user.id)),
                None => return Err(ApiError::not_found("user")),
            }
        }
        Some(u) => Some(format!("user:{u}")),
    };
    let events = sec
        .store()
        .query_audit(AuditQuery {
            actor,
            ip: q.ip,
            event: q.event,
            since: q.since.map(|t| t.timestamp_millis()),
            until: q.until.map(|t| t.timestamp_millis()),
            limit,
            offset,
        })
        .await
        .map_err(SecurityError::from)?;
    let events: Vec<_> = events
        .into_iter()
        .map(|e| {
            json!({
                "id": e.id, "at": time(e.at), "event": e.event, "actor": e.actor, "ip": e.ip,
                "user_agent": e.user_agent, "target": e.target, "outcome": e.outcome,
                "request_id": e.request_id, "detail": e.detail,
            })
        })
        .collect();
    let next = (events.len() as i64 == limit).then_some(offset + limit);
    Ok(HttpResponse::Ok()
        .json(json!({"events": events, "limit": limit, "offset": offset, "next_offset": next})))
}

async fn get_rate_limits(sec: Security) -> ApiResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(sec.rate_limits().await?))
}

/// Partial update: keys left out keep their value.
async fn put_rate_limits(
    sec: Security,
    req: HttpRequest,
    body: web::Json<serde_json::Map<String, serde_json::Value>>,
) -> ApiResult<HttpResponse> {
    let mut merged = serde_json::to_value(sec.rate_limits().await?)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(obj) = merged.as_object_mut() {
        for (k, v) in body.into_inner() {
            obj.insert(k, v);
        }
    }
    let limits: RateLimits = serde_json::from_value(merged)
        .map_err(|e| ApiError::bad_request(format!("invalid rate limits: {e}")))?;
    Ok(HttpResponse::Ok().json(sec.set_rate_limits(&ctx(&req), limits).await?))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogLevel {
    /// A tracing filter: `info`, `warn,doc_rag::ingest=debug`, …
    pub level: String,
}

/// The log level of the process that answers.
async fn get_log_level() -> ApiResult<HttpResponse> {
    let level = crate::telemetry::log_level().ok_or_else(log_level_not_managed)?;
    Ok(HttpResponse::Ok().json(LogLevel { level }))
}

/// Changes the log level of the process that answers, at once and until it restarts (or a
/// `SIGHUP` re-reads `log.level`). Each replica has its own: change them one by one.
async fn put_log_level(
    sec: Security,
    req: HttpRequest,
    body: web::Json<LogLevel>,
) -> ApiResult<HttpResponse> {
    use crate::telemetry::LogLevelError;
    let level = body.into_inner().level.trim().to_string();
    crate::telemetry::set_log_level(&level).map_err(|e| match e {
        LogLevelError::Invalid(why) => ApiError::bad_request(why),
        LogLevelError::NotManaged => log_level_not_managed(),
    })?;
    tracing::warn!(level = %level, "log level changed");
    sec.log_level_changed(&ctx(&req), &level).await;
    Ok(HttpResponse::Ok().json(LogLevel { level }))
}

fn log_level_not_managed() -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::CONFLICT,
        "log_level_unavailable",
        crate::telemetry::LogLevelError::NotManaged.to_string(),
    )
}

/// Sessions, API keys and grants: on the API port and the security port.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/auth/login", web::post().to(login))
        .route("/v1/auth/refresh", web::post().to(refresh))
        .route("/v1/auth/logout", web::post().to(logout))
        .route("/v1/auth/me", web::get().to(me))
        .route("/v1/auth/password", web::post().to(change_password))
        .route("/v1/api-keys", web::post().to(create_api_key))
        .route("/v1/api-keys", web::get().to(list_api_keys))
        .route("/v1/api-keys/{id}", web::delete().to(revoke_api_key))
        .route("/v1/collections/{name}/grants", web::get().to(list_grants))
        .route(
            "/v1/collections/{name}/grants/{principal}",
            web::put().to(set_grant),
        )
        .route(
            "/v1/collections/{name}/grants/{principal}",
            web::delete().to(delete_grant),
        );
}

/// `/v1/admin/*`: the security port only. The guard admits admins only.
pub fn admin_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/admin/users", web::post().to(create_user))
        .route("/v1/admin/users", web::get().to(list_users))
        .route("/v1/admin/users/{id}", web::get().to(get_user))
        .route("/v1/admin/users/{id}", web::patch().to(patch_user))
        .route("/v1/admin/users/{id}", web::delete().to(delete_user))
        .route("/v1/admin/keys/rotate", web::post().to(rotate_keys))
        .route("/v1/admin/sessions/revoke-all", web::post().to(revoke_all))
        .route("/v1/admin/ip-blocks", web::post().to(add_ip_block))
        .route("/v1/admin/ip-blocks", web::get().to(list_ip_blocks))
        .route(
            "/v1/admin/ip-blocks/{id}",
            web::delete().to(delete_ip_block),
        )
        .route("/v1/admin/audit", web::get().to(audit_log))
        .route("/v1/admin/rate-limits", web::get().to(get_rate_limits))
        .route("/v1/admin/rate-limits", web::put().to(put_rate_limits))
        .route("/v1/admin/log-level", web::get().to(get_log_level))
        .route("/v1/admin/log-level", web::put().to(put_log_level));
}
