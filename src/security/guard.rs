//! The middleware around every server on every port: deny by default.
//!
//! In order: settle the client address (trusted proxies only), refuse blocked addresses (403),
//! look up the route's [`Policy`] (the only allow-list of public routes is here), authenticate,
//! check the route class (admin-only, internal-only), apply rate limits (429 with `Retry-After`),
//! then put the [`Caller`] in the request for handlers, whose own checks are per collection.
//! Every response gets security headers; auth and admin responses are never cached.

use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, ResponseError};

use super::audit::{AuditCtx, ClientIp, Event, Outcome};
use super::limits::{Dimension, RateClass};
use super::network::client_ip;
use super::tokens::AuthFailure;
use super::{Caller, Credential, Principal, SecurityError, SecurityService};
use crate::http::ApiError;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Anyone: liveness, readiness, and the two routes that hand out tokens.
    Public,
    /// Open on loopback-bound ports; elsewhere the scrape token or an admin.
    Metrics,
    /// Any authenticated user or API key; handlers check roles and collections.
    User,
    /// Admins only.
    Admin,
    /// Internal module ports: admins or the service token.
    Internal,
}

/// The one place that makes a route public. Anything not named here needs a credential,
/// including routes added later and paths that match no route.
pub fn policy(module: &str, method: &Method, pattern: Option<&str>) -> Policy {
    match (pattern, method) {
        (Some("/health" | "/ready"), _) => Policy::Public,
        (Some("/v1/auth/login" | "/v1/auth/refresh"), &Method::POST) => Policy::Public,
        (Some("/metrics"), _) => Policy::Metrics,
        (Some(p), _) if module == "security" && p.starts_with("/v1/admin") => Policy::Admin,
        (Some(p), _) if module == "api" && p.starts_with("/v1/webhooks") => Policy::Admin,
        _ => match module {
            "api" | "security" => Policy::User,
            _ => Policy::Internal,
        },
    }
}

/// Which rate limit a route counts against.
pub fn rate_class(method: &Method, pattern: Option<&str>) -> Option<RateClass> {
    match (pattern?, method) {
        ("/v1/auth/login" | "/v1/auth/refresh" | "/v1/auth/password", &Method::POST) => {
            Some(RateClass::Auth)
        }
        ("/v1/documents", &Method::POST) | ("/v1/documents/{id}", &Method::DELETE) => {
            Some(RateClass::Ingest)
        }
        ("/v1/search" | "/v1/query", &Method::POST) => Some(RateClass::Query),
        _ => None,
    }
}

/// The longest credential looked at; longer ones are refused unread.
const MAX_CREDENTIAL_BYTES: usize = 8192;

pub fn credential(headers: &HeaderMap) -> Option<Credential> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer")
            || token.is_empty()
            || token.len() > MAX_CREDENTIAL_BYTES
        {
            return None;
        }
        return Some(Credential::Bearer(token.to_string()));
    }
    let key = headers.get("x-api-key")?.to_str().ok()?.trim();
    (!key.is_empty() && key.len() <= MAX_CREDENTIAL_BYTES)
        .then(|| Credential::ApiKey(key.to_string()))
}

/// What each server's guard knows about its server.
#[derive(Clone)]
pub struct GuardCtx {
    pub module: &'static str,
    /// The server listens on a loopback address only.
    pub loopback: bool,
    pub security: Arc<SecurityService>,
}

pub async fn guard(
    ctx: GuardCtx,
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody + 'static>>, actix_web::Error> {
    let security = &ctx.security;
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let ip = client_ip(
        req.peer_addr().map(|a| a.ip()),
        forwarded,
        security.trusted_proxies(),
    );
    req.extensions_mut().insert(ClientIp(ip));
    let span = tracing::Span::current();
    span.record("client_ip", tracing::field::display(ip));
    let path = req.path().to_string();

    if security.blocked(ip) {
        rejected(Rejection::IpBlocked);
        let err = ApiError::new(
            StatusCode::FORBIDDEN,
            "ip_blocked",
            "requests from this address are blocked",
        );
        return Ok(finish(
            req.into_response(err.error_response())
                .map_into_right_body(),
            &path,
        ));
    }

    let pattern = req.match_pattern();
    let method = req.method().clone();
    let policy = policy(ctx.module, &method, pattern.as_deref());
    let presented = credential(req.headers());

    let caller = match admit(security, policy, ctx.loopback, presented).await {
        Ok(caller) => caller,
        Err(Denied::Unauthenticated(failure)) => {
            rejected(Rejection::Unauthorized);
            // The one mapping of credential failures to statuses (401, or 503 when unavailable).
            let err = ApiError::from(SecurityError::Unauthorized(failure));
            return Ok(finish(
                req.into_response(err.error_response())
                    .map_into_right_body(),
                &path,
            ));
        }
        Err(Denied::Forbidden(caller, why)) => {
            rejected(Rejection::Forbidden);
            span.record("user", tracing::field::display(caller.principal.label()));
            req.extensions_mut().insert(caller.clone());
            let audit = AuditCtx::from_request(req.request());
            let key = format!(
                "denied:{}:{method}:{}",
                caller.principal.label(),
                pattern.as_deref().unwrap_or("?")
            );
            security
                .audit_once(
                    key,
                    &audit,
                    Event::PermissionDenied,
                    Outcome::Denied,
                    Some(format!("{method} {path}: {why}")),
                )
                .await;
            let err = ApiError::new(StatusCode::FORBIDDEN, "forbidden", why);
            return Ok(finish(
                req.into_response(err.error_response())
                    .map_into_right_body(),
                &path,
            ));
        }
    };

    if let Some(caller) = &caller {
        span.record("user", tracing::field::display(caller.principal.label()));
        req.extensions_mut().insert(caller.clone());
    }

    if let Some(class) = rate_class(&method, pattern.as_deref()) {
        let ip_key = ip.to_string();
        let mut limited = security
            .limiter()
            .check(class, Dimension::Ip, &ip_key)
            .await
            .err()
            .map(|w| (w, ip_key));
        if limited.is_none()
            && let Some(c) = &caller
        {
            let label = c.principal.label();
            limited = security
                .limiter()
                .check(class, Dimension::User, &label)
                .await
                .err()
                .map(|w| (w, label));
        }
        if let Some((wait, who)) = limited {
            rejected(Rejection::RateLimited);
            let audit = AuditCtx::from_request(req.request());
            security
                .audit_once(
                    format!("rate:{class:?}:{who}"),
                    &audit,
                    Event::RateLimited,
                    Outcome::Denied,
                    Some(format!("{class:?} limit for {who}")),
                )
                .await;
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("rate limit exceeded; retry in {secs} s"),
            )
            .with_retry_after(secs.max(1));
            return Ok(finish(
                req.into_response(err.error_response())
                    .map_into_right_body(),
                &path,
            ));
        }
    }

    let res = next.call(req).await?;
    Ok(finish(res.map_into_left_body(), &path))
}

enum Denied {
    Unauthenticated(AuthFailure),
    Forbidden(Caller, String),
}

async fn admit(
    security: &SecurityService,
    policy: Policy,
    loopback: bool,
    presented: Option<Credential>,
) -> Result<Option<Caller>, Denied> {
    match (policy, &presented) {
        (Policy::Public, _) => return Ok(None),
        (Policy::Metrics, _) if loopback => return Ok(None),
        (Policy::Metrics, Some(Credential::Bearer(t))) if security.is_metrics_token(t) => {
            return Ok(None);
        }
        _ => {}
    }
    let credential = presented.ok_or(Denied::Unauthenticated(AuthFailure::Missing))?;
    let caller = security
        .authenticate(&credential)
        .await
        .map_err(Denied::Unauthenticated)?;
    let service = caller.principal == Principal::Service;
    match policy {
        Policy::Public => Ok(None),
        // The service token opens internal ports only.
        Policy::User if service => Err(Denied::Unauthenticated(AuthFailure::Invalid)),
        Policy::User => Ok(Some(caller)),
        Policy::Internal if service || caller.is_admin() => Ok(Some(caller)),
        Policy::Internal => Err(Denied::Forbidden(
            caller,
            "internal module ports need an admin token or the service token".into(),
        )),
        Policy::Admin | Policy::Metrics if caller.is_admin() => Ok(Some(caller)),
        Policy::Admin | Policy::Metrics => Err(Denied::Forbidden(
            caller,
            "this needs the admin role".into(),
        )),
    }
}

fn finish<B>(mut res: ServiceResponse<B>, path: &str) -> ServiceResponse<B> {
    let headers = res.headers_mut();
    let set = |h: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    );
    if ["/v1/auth", "/v1/api-keys", "/v1/admin", "/v1/webhooks"]
        .iter()
        .any(|p| path.starts_with(p))
    {
        set(headers, header::CACHE_CONTROL, "no-store");
        set(headers, header::PRAGMA, "no-cache");
    }
    if res.status() == StatusCode::UNAUTHORIZED {
        set(res.headers_mut(), header::WWW_AUTHENTICATE, "Bearer");
    }
    res
}

/// Why the guard turned a request away, as `security_rejected_requests_total{reason}` counts it
/// (the security dashboard and the blocked-address alert).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    IpBlocked,
    RateLimited,
    Unauthorized,
    Forbidden,
}

impl Rejection {
    pub const ALL: [Rejection; 4] = [
        Self::IpBlocked,
        Self::RateLimited,
        Self::Unauthorized,
        Self::Forbidden,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::IpBlocked => "ip_blocked",
            Self::RateLimited => "rate_limited",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
        }
    }
}

fn rejected(reason: Rejection) {
    metrics::counter!("security_rejected_requests_total", "reason" => reason.as_str()).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_allow_list_is_public() {
        let get = Method::GET;
        let post = Method::POST;
        for module in [
            "api", "security", "query", "response", "embedder", "storage",
        ] {
            assert_eq!(policy(module, &get, Some("/health")), Policy::Public);
            assert_eq!(policy(module, &get, Some("/ready")), Policy::Public);
            assert_eq!(policy(module, &get, Some("/metrics")), Policy::Metrics);
            assert_ne!(
                policy(module, &get, None),
                Policy::Public,
                "unmatched paths are protected"
            );
            assert_ne!(
                policy(module, &get, Some("/some/new/route")),
                Policy::Public
            );
        }
        assert_eq!(policy("api", &post, Some("/v1/auth/login")), Policy::Public);
        assert_eq!(policy("api", &get, Some("/v1/auth/login")), Policy::User);
        assert_eq!(policy("api", &post, Some("/v1/auth/logout")), Policy::User);
        assert_eq!(policy("api", &get, Some("/openapi.json")), Policy::User);
        assert_eq!(
            policy("security", &get, Some("/v1/admin/users")),
            Policy::Admin
        );
        assert_eq!(policy("api", &post, Some("/v1/webhooks")), Policy::Admin);
        assert_eq!(
            policy("api", &get, Some("/v1/webhooks/{id}/deliveries")),
            Policy::Admin
        );
        assert_eq!(policy("query", &post, Some("/v1/search")), Policy::Internal);
        assert_eq!(policy("storage", &get, Some("/v1/stats")), Policy::Internal);
    }

    #[test]
    fn credentials_come_from_bearer_or_x_api_key() {
        let mut h = HeaderMap::new();
        assert!(credential(&h).is_none());
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(credential(&h).is_none());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer t0k"),
        );
        assert!(matches!(credential(&h), Some(Credential::Bearer(t)) if t == "t0k"));
        let mut h = HeaderMap::new();
        h.insert(
            header::HeaderName::from_static("x-api-key"),
            HeaderValue::from_static("drk_x"),
        );
        assert!(matches!(credential(&h), Some(Credential::ApiKey(k)) if k == "drk_x"));
    }
}
