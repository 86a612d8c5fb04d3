//! Security events: what happened, to whom, by whom, from where. Each event is a row of the
//! append-only `audit_log` table (the database refuses updates and deletes) and one log line with
//! `audit=true`. Secrets never go in either: targets are ids, never tokens or passwords.

use actix_web::{HttpMessage, HttpRequest};

use super::Caller;
use crate::storage::security::AuditRecord;
use crate::telemetry::RequestId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    LoginSuccess,
    LoginFailure,
    RefreshReuse,
    Logout,
    PasswordChange,
    KeyCreated,
    KeyRevoked,
    UserCreated,
    UserDeleted,
    RoleChange,
    UserDisabled,
    UserEnabled,
    IpBlocked,
    IpUnblocked,
    JwtRotation,
    RevokeAll,
    DocumentDeleted,
    PermissionDenied,
    RateLimited,
    GrantSet,
    GrantRemoved,
    RateLimitsChanged,
    LogLevelChanged,
    WebhookCreated,
    WebhookDeleted,
    WebhookEnabled,
    WebhookTested,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::LoginSuccess => "login_success",
            Event::LoginFailure => "login_failure",
            Event::RefreshReuse => "refresh_reuse",
            Event::Logout => "logout",
            Event::PasswordChange => "password_change",
            Event::KeyCreated => "api_key_created",
            Event::KeyRevoked => "api_key_revoked",
            Event::UserCreated => "user_created",
            Event::UserDeleted => "user_deleted",
            Event::RoleChange => "role_change",
            Event::UserDisabled => "user_disabled",
            Event::UserEnabled => "user_enabled",
            Event::IpBlocked => "ip_blocked",
            Event::IpUnblocked => "ip_unblocked",
            Event::JwtRotation => "jwt_rotation",
            Event::RevokeAll => "revoke_all_sessions",
            Event::DocumentDeleted => "document_deleted",
            Event::PermissionDenied => "permission_denied",
            Event::RateLimited => "rate_limited",
            Event::GrantSet => "grant_set",
            Event::GrantRemoved => "grant_removed",
            Event::RateLimitsChanged => "rate_limits_changed",
            Event::LogLevelChanged => "log_level_changed",
            Event::WebhookCreated => "webhook_created",
            Event::WebhookDeleted => "webhook_deleted",
            Event::WebhookEnabled => "webhook_enabled",
            Event::WebhookTested => "webhook_tested",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// The client address the guard settled on, stored in the request.
#[derive(Debug, Clone)]
pub struct ClientIp(pub std::net::IpAddr);

/// Who and where, for audit records of one request.
#[derive(Debug, Clone, Default)]
pub struct AuditCtx {
    pub actor: Option<String>,
    pub ip: String,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl AuditCtx {
    pub fn from_request(req: &HttpRequest) -> Self {
        let ext = req.extensions();
        AuditCtx {
            actor: ext
                .get::<Caller>()
                .filter(|c| !c.is_anonymous())
                .map(|c| c.principal.label()),
            ip: ext
                .get::<ClientIp>()
                .map(|c| c.0.to_string())
                .unwrap_or_else(|| "-".into()),
            user_agent: req
                .headers()
                .get(actix_web::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(256).collect()),
            request_id: ext.get::<RequestId>().map(|r| r.0.clone()),
        }
    }

    /// The server's own console (`doc-rag admin --local`).
    pub fn local() -> Self {
        AuditCtx {
            actor: Some("local-admin".into()),
            ip: "local".into(),
            user_agent: Some(format!("doc-rag-cli/{}", env!("CARGO_PKG_VERSION"))),
            request_id: None,
        }
    }

    pub fn record(
        &self,
        event: Event,
        target: Option<String>,
        outcome: Outcome,
        detail: Option<String>,
    ) -> AuditRecord {
        AuditRecord {
            id: 0,
            at: super::now_ms(),
            event: event.as_str().into(),
            actor: self.actor.clone(),
            ip: Some(self.ip.clone()),
            user_agent: self.user_agent.clone(),
            target,
            outcome: outcome.as_str().into(),
            request_id: self.request_id.clone(),
            detail,
        }
    }
}
