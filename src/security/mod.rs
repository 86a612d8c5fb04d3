//! Security: who is calling, and what they may do. Deny by default.
//!
//! - [`guard`]: the middleware wrapped around every server on every port. A route is public only if
//!   the allow-list in [`guard::policy`] says so; everything else needs a credential, so a new route
//!   is protected without anyone doing anything. It also blocks IP addresses, applies rate limits
//!   and adds security headers.
//! - [`SecurityService`]: accounts (argon2id passwords), access JWTs with a `kid` from a keyring
//!   kept in the database (rotation, retirement), refresh-token families with reuse detection, API
//!   keys, per-collection grants, IP blocks, revocation and the audit log. Warm authentication is
//!   cache lookups and one HMAC: everything it reads is cached and invalidated on change.
//! - Changes made by another process (a replica, `doc-rag admin --local`) reach this one through
//!   `security_state.generation` in the database, polled every `security.sync_interval_ms`.
//! - [`http`]: `/v1/auth/*` and `/v1/api-keys` (API and security ports), grants (both), and the
//!   admin API `/v1/admin/*` (security port, 8087).

pub mod audit;
pub mod guard;
pub mod http;
pub mod limits;
pub mod network;
pub mod password;
pub mod redis_limits;
pub mod tokens;

use std::collections::{BTreeMap, HashSet};
use std::future::{Ready, ready};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use base64::Engine;
use futures::FutureExt;
use moka::sync::Cache as MokaCache;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use self::audit::{AuditCtx, Event, Outcome};
use self::limits::{GovernorLimiter, RateLimiter, RateLimits};
use self::network::{Blocklist, parse_networks};
use self::password::Passwords;
use self::tokens::{AuthFailure, Claims, Keyring};
use crate::AppState;
use crate::config::SecuritySettings;
use crate::http::{Check, check_database};
use crate::storage::StorageError;
use crate::storage::security::{
    ApiKeyRecord, AuditRecord, GrantRecord, IpBlockRecord, RefreshRecord, RefreshUse,
    SecurityStore, SigningKeyRecord, UserRecord, UserUpdate,
};

/// API keys start with this, so a bearer credential is told apart from a JWT without parsing.
pub const API_KEY_PREFIX: &str = "drk_";
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("{}", .0.message())]
    Unauthorized(AuthFailure),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("too many failed logins; retry in {} s", .0.as_secs().max(1))]
    LockedOut(Duration),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub type SecurityResult<T> = Result<T, SecurityError>;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    Hash,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> SecurityResult<Self> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "editor" => Ok(Role::Editor),
            "admin" => Ok(Role::Admin),
            other => Err(SecurityError::Invalid(format!(
                "unknown role {other:?}: use admin, editor or viewer"
            ))),
        }
    }
    /// The most a role may do in a collection it has a grant on.
    fn cap(self, p: Permission) -> Permission {
        match self {
            Role::Viewer => Permission::Read,
            Role::Editor | Role::Admin => p,
        }
    }
}

/// Access to one collection. `Write` includes reading.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Read,
    Write,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
        }
    }
    pub fn parse(s: &str) -> SecurityResult<Self> {
        match s {
            "read" => Ok(Permission::Read),
            "write" => Ok(Permission::Write),
            other => Err(SecurityError::Invalid(format!(
                "unknown access {other:?}: use read or write"
            ))),
        }
    }
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    User {
        id: String,
        email: String,
    },
    ApiKey {
        id: String,
        owner: Option<String>,
    },
    /// Another service, by `security.service_token` (internal module ports only).
    Service,
    /// The operator at the server's console (`doc-rag admin --local`).
    Local,
}

impl Principal {
    /// `user:<id>`, `key:<id>`, `service` or `anonymous`: the form grants, logs and the audit log use.
    pub fn label(&self) -> String {
        match self {
            Principal::Anonymous => "anonymous".into(),
            Principal::User { id, .. } => format!("user:{id}"),
            Principal::ApiKey { id, .. } => format!("key:{id}"),
            Principal::Service => "service".into(),
            Principal::Local => "local-admin".into(),
        }
    }
}

/// Which collections a caller reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    All,
    Some(Arc<BTreeMap<String, Permission>>),
}

/// The authenticated caller of a request, put in the request by [`guard`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub principal: Principal,
    pub role: Role,
    pub access: Access,
    /// The refresh-token family an access token belongs to (logout ends it).
    pub family: Option<String>,
}

impl Caller {
    pub fn anonymous() -> Self {
        Caller {
            principal: Principal::Anonymous,
            role: Role::Viewer,
            access: Access::Some(Arc::default()),
            family: None,
        }
    }
    /// The operator at the server's own console (`doc-rag admin --local`).
    pub fn local_admin() -> Self {
        Caller {
            principal: Principal::Local,
            role: Role::Admin,
            access: Access::All,
            family: None,
        }
    }
    pub fn is_anonymous(&self) -> bool {
        self.principal == Principal::Anonymous
    }
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin && self.access == Access::All
    }
    pub fn user_id(&self) -> Option<&str> {
        match &self.principal {
            Principal::User { id, .. } => Some(id),
            _ => None,
        }
    }
    pub fn permission(&self, collection: &str) -> Option<Permission> {
        match &self.access {
            Access::All => Some(Permission::Write),
            Access::Some(map) => map.get(collection).copied(),
        }
    }
    pub fn can_read(&self, collection: &str) -> bool {
        self.permission(collection).is_some()
    }
    pub fn can_write(&self, collection: &str) -> bool {
        self.role >= Role::Editor && self.permission(collection) == Some(Permission::Write)
    }
    /// The collections a search may look in: `None` for all of them.
    pub fn read_scope(&self) -> Option<Vec<String>> {
        match &self.access {
            Access::All => None,
            Access::Some(map) => Some(map.keys().cloned().collect()),
        }
    }
    pub fn require_admin(&self) -> SecurityResult<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(SecurityError::Forbidden("this needs the admin role".into()))
        }
    }
    pub fn require_user(&self) -> SecurityResult<&str> {
        self.user_id().ok_or_else(|| {
            SecurityError::Forbidden("this needs a user's token, not an API key".into())
        })
    }
}

impl FromRequest for Caller {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(Ok(req
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::anonymous)))
    }
}

/// A credential as presented.
#[derive(Debug, Clone)]
pub enum Credential {
    Bearer(String),
    ApiKey(String),
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// `len` random bytes, base64url without padding.
pub fn random_token(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Checks the `[security]` settings at load time, so a typo fails start-up, not a request.
pub fn validate_settings(s: &SecuritySettings) -> Result<(), String> {
    tokens::algorithm(&s.jwt_algorithm)?;
    parse_networks(&s.trusted_proxies).map_err(|e| format!("security.trusted_proxies: {e}"))?;
    RateLimits::from_settings(s).validate()?;
    if s.access_token_ttl_secs == 0 || s.refresh_token_ttl_secs == 0 {
        return Err("security token lifetimes must be at least 1 second".into());
    }
    if s.hash_concurrency == 0 {
        return Err("security.hash_concurrency must be at least 1".into());
    }
    password::params(s).map_err(|e| format!("security.argon2_*: {e}"))?;
    Ok(())
}

/// A user as the API shows it (never the password hash).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub role: Role,
    pub disabled: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

fn to_time(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

impl UserView {
    fn from_record(r: &UserRecord) -> Self {
        UserView {
            id: r.id.clone(),
            email: r.email.clone(),
            role: Role::parse(&r.role).unwrap_or(Role::Viewer),
            disabled: r.disabled,
            created_at: to_time(r.created_at),
            updated_at: to_time(r.updated_at),
        }
    }
}

/// Access and refresh token for a session.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub refresh_token: String,
    pub refresh_expires_in: u64,
    pub user: UserView,
}

/// An API key as listed (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub collection: Option<String>,
    pub owner_id: Option<String>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl ApiKeyView {
    fn from_record(r: &ApiKeyRecord) -> Self {
        ApiKeyView {
            id: r.id.clone(),
            name: r.name.clone(),
            role: Role::parse(&r.role).unwrap_or(Role::Viewer),
            collection: r.collection.clone(),
            owner_id: r.owner_id.clone(),
            expires_at: r.expires_at.map(to_time),
            revoked_at: r.revoked_at.map(to_time),
            created_at: to_time(r.created_at),
        }
    }
}

/// What the database says about sessions, mirrored in memory and refreshed on change.
#[derive(Debug, Default)]
struct Synced {
    generation: i64,
    sessions_valid_after: i64,
    revoked_families: HashSet<String>,
}

/// What a new API key may be.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub name: String,
    pub role: Role,
    pub collection: Option<String>,
    pub expires_at: Option<i64>,
}

pub struct SecurityService {
    settings: SecuritySettings,
    store: Arc<dyn SecurityStore>,
    passwords: Passwords,
    keyring: Keyring,
    limiter: Arc<dyn RateLimiter>,
    blocks: Blocklist,
    trusted_proxies: Vec<ipnet::IpNet>,
    synced: RwLock<Synced>,
    users: MokaCache<String, Option<Arc<UserRecord>>>,
    api_keys: MokaCache<String, Option<Arc<ApiKeyRecord>>>,
    grants: MokaCache<String, Arc<BTreeMap<String, Permission>>>,
    /// Audit events that could flood the log (rate limiting) are recorded once a minute per key.
    audit_once: MokaCache<String, ()>,
}

impl SecurityService {
    /// Loads keys, blocks and revocations, creates the first signing key and the bootstrap admin
    /// when there are none.
    pub async fn start(
        settings: SecuritySettings,
        store: Arc<dyn SecurityStore>,
    ) -> SecurityResult<Arc<Self>> {
        let limiter = Arc::new(GovernorLimiter::new(&settings));
        Self::start_with(settings, store, limiter).await
    }

    /// As [`start`](Self::start), with the rate limiter to use (the shared Redis one when
    /// replicas must count together).
    pub async fn start_with(
        settings: SecuritySettings,
        store: Arc<dyn SecurityStore>,
        limiter: Arc<dyn RateLimiter>,
    ) -> SecurityResult<Arc<Self>> {
        validate_settings(&settings).map_err(SecurityError::Invalid)?;
        let service = Arc::new(SecurityService {
            passwords: Passwords::new(&settings)?,
            keyring: Keyring::new(&settings).map_err(SecurityError::Invalid)?,
            limiter,
            blocks: Blocklist::default(),
            trusted_proxies: parse_networks(&settings.trusted_proxies)
                .map_err(SecurityError::Invalid)?,
            synced: RwLock::new(Synced {
                generation: -1,
                ..Synced::default()
            }),
            users: cache(100_000),
            api_keys: cache(100_000),
            grants: cache(100_000),
            audit_once: MokaCache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            store,
            settings,
        });
        if service.settings.jwt_secret().is_none() {
            service
                .store
                .add_signing_key(new_signing_key(), now_ms(), true)
                .await?;
        }
        service.bootstrap_admin().await?;
        service.reload().await?;
        Ok(service)
    }

    pub fn settings(&self) -> &SecuritySettings {
        &self.settings
    }

    pub fn store(&self) -> &Arc<dyn SecurityStore> {
        &self.store
    }

    pub fn limiter(&self) -> &Arc<dyn RateLimiter> {
        &self.limiter
    }

    pub fn trusted_proxies(&self) -> &[ipnet::IpNet] {
        &self.trusted_proxies
    }

    pub fn blocklist(&self) -> &Blocklist {
        &self.blocks
    }

    async fn bootstrap_admin(&self) -> SecurityResult<()> {
        if self.store.count_users().await? > 0 {
            return Ok(());
        }
        let email = normalize_email(&self.settings.admin_email)?;
        let configured = self.settings.admin_password.expose_secret().to_string();
        let generated = configured.is_empty();
        let password = if generated {
            random_token(18)
        } else {
            configured
        };
        check_password(&password)?;
        let hash = self
            .passwords
            .hash(SecretString::from(password.clone()))
            .await?;
        match self
            .store
            .create_user(new_user(&email, hash, Role::Admin))
            .await
        {
            Ok(user) => {
                if generated {
                    // The one time a password is logged: nobody could log in otherwise.
                    tracing::warn!(
                        module = "security",
                        email = %email,
                        "created the first admin with a generated password: {password} \
                         (shown once; change it with POST /v1/auth/password)"
                    );
                } else {
                    tracing::info!(module = "security", email = %email, "created the first admin");
                }
                self.log_audit_line(&AuditRecord {
                    at: now_ms(),
                    event: Event::UserCreated.as_str().into(),
                    actor: Some("bootstrap".into()),
                    target: Some(format!("user:{}", user.id)),
                    outcome: Outcome::Success.as_str().into(),
                    ..AuditRecord::default()
                });
                Ok(())
            }
            // Another replica created it first.
            Err(StorageError::Conflict(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Re-reads everything cached from the database when another process changed it.
    pub async fn sync(&self) -> SecurityResult<()> {
        let state = self.store.state().await?;
        let stale = self
            .synced
            .read()
            .map(|s| s.generation != state.generation)
            .unwrap_or(true);
        if stale {
            self.reload().await?;
        }
        Ok(())
    }

    /// Reloads keys, blocks, revocations and limits, and drops cached users, keys and grants.
    pub async fn reload(&self) -> SecurityResult<()> {
        let state = self.store.state().await?;
        let keys = self.store.signing_keys().await?;
        self.keyring
            .load(&keys, self.settings.jwt_secret().as_deref())
            .map_err(SecurityError::Invalid)?;
        self.blocks.load(&self.store.list_ip_blocks().await?);
        let horizon = now_ms() - (self.settings.access_token_ttl_secs as i64 + 60) * 1000;
        let families: HashSet<String> = self
            .store
            .revoked_families(horizon)
            .await?
            .into_iter()
            .collect();
        let limits = match &state.rate_limits {
            Some(json) => serde_json::from_str(json)
                .unwrap_or_else(|_| RateLimits::from_settings(&self.settings)),
            None => RateLimits::from_settings(&self.settings),
        };
        if let Err(e) = self.limiter.configure(&limits).await {
            tracing::warn!(module = "security", error = %e, "stored rate limits are invalid; kept the previous ones");
        }
        self.users.invalidate_all();
        self.api_keys.invalidate_all();
        self.grants.invalidate_all();
        if let Ok(mut synced) = self.synced.write() {
            *synced = Synced {
                generation: state.generation,
                sessions_valid_after: state.sessions_valid_after,
                revoked_families: families,
            };
        }
        Ok(())
    }

    /// Polls for changes made elsewhere until shutdown; also forgets idle rate-limit keys.
    pub fn spawn_sync(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let service = Arc::clone(self);
        let every = Duration::from_millis(service.settings.sync_interval_ms.max(50));
        tokio::spawn(async move {
            let mut ticks: u64 = 0;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.changed() => return,
                }
                if let Err(e) = service.sync().await {
                    tracing::warn!(module = "security", error = %e, "security state sync failed");
                }
                ticks += 1;
                if ticks.is_multiple_of(60) {
                    service.limiter.forget_idle().await;
                }
            }
        })
    }

    // --- authentication -------------------------------------------------------------------

    /// Resolves a credential to a caller. The warm path reads only in-memory caches.
    pub async fn authenticate(&self, credential: &Credential) -> Result<Caller, AuthFailure> {
        match credential {
            Credential::ApiKey(key) => self.authenticate_key(key).await,
            Credential::Bearer(token) if token.starts_with(API_KEY_PREFIX) => {
                self.authenticate_key(token).await
            }
            Credential::Bearer(token) => {
                if self.is_service_token(token) {
                    return Ok(Caller {
                        principal: Principal::Service,
                        role: Role::Viewer,
                        access: Access::All,
                        family: None,
                    });
                }
                self.authenticate_jwt(token).await
            }
        }
    }

    pub fn is_service_token(&self, token: &str) -> bool {
        secret_matches(&self.settings.service_token, token)
    }

    pub fn is_metrics_token(&self, token: &str) -> bool {
        secret_matches(&self.settings.metrics_token, token)
    }

    async fn authenticate_jwt(&self, token: &str) -> Result<Caller, AuthFailure> {
        let claims = self.keyring.verify(token, now_ms())?;
        {
            let synced = self.synced.read().map_err(|_| AuthFailure::Invalid)?;
            if claims.ims < synced.sessions_valid_after
                || synced.revoked_families.contains(&claims.fam)
            {
                return Err(AuthFailure::Revoked);
            }
        }
        let user = self
            .user(&claims.sub)
            .await
            .map_err(|_| AuthFailure::Unavailable)?
            .ok_or(AuthFailure::Invalid)?;
        if user.disabled {
            return Err(AuthFailure::Disabled);
        }
        if claims.ims < user.sessions_valid_after {
            return Err(AuthFailure::Revoked);
        }
        let role = Role::parse(&user.role).map_err(|_| AuthFailure::Invalid)?;
        let principal = Principal::User {
            id: user.id.clone(),
            email: user.email.clone(),
        };
        let access = self
            .access_for(&principal, role, None)
            .await
            .map_err(|_| AuthFailure::Unavailable)?;
        Ok(Caller {
            principal,
            role,
            access,
            family: Some(claims.fam),
        })
    }

    async fn authenticate_key(&self, key: &str) -> Result<Caller, AuthFailure> {
        let hash = sha256_hex(key);
        let record = match self.api_keys.get(&hash) {
            Some(cached) => cached,
            None => {
                let found = self
                    .store
                    .find_api_key(&hash)
                    .await
                    .map_err(|_| AuthFailure::Unavailable)?
                    .map(Arc::new);
                self.api_keys.insert(hash, found.clone());
                found
            }
        }
        .ok_or(AuthFailure::Invalid)?;
        if record.revoked_at.is_some() {
            return Err(AuthFailure::Revoked);
        }
        if record.expires_at.is_some_and(|t| t <= now_ms()) {
            return Err(AuthFailure::Expired);
        }
        // A key stops working with its owner.
        if let Some(owner) = &record.owner_id {
            let user = self
                .user(owner)
                .await
                .map_err(|_| AuthFailure::Unavailable)?;
            if user.is_none_or(|u| u.disabled) {
                return Err(AuthFailure::Disabled);
            }
        }
        let role = Role::parse(&record.role).map_err(|_| AuthFailure::Invalid)?;
        let principal = Principal::ApiKey {
            id: record.id.clone(),
            owner: record.owner_id.clone(),
        };
        let access = self
            .access_for(&principal, role, record.collection.as_deref())
            .await
            .map_err(|_| AuthFailure::Unavailable)?;
        Ok(Caller {
            principal,
            role,
            access,
            family: None,
        })
    }

    async fn user(&self, id: &str) -> SecurityResult<Option<Arc<UserRecord>>> {
        if let Some(cached) = self.users.get(id) {
            return Ok(cached);
        }
        let found = self.store.get_user(id).await?.map(Arc::new);
        self.users.insert(id.to_string(), found.clone());
        Ok(found)
    }

    async fn access_for(
        &self,
        principal: &Principal,
        role: Role,
        scope: Option<&str>,
    ) -> SecurityResult<Access> {
        if let Some(collection) = scope {
            let only = BTreeMap::from([(collection.to_string(), role.cap(Permission::Write))]);
            return Ok(Access::Some(Arc::new(only)));
        }
        if role == Role::Admin {
            return Ok(Access::All);
        }
        let label = principal.label();
        if let Some(cached) = self.grants.get(&label) {
            return Ok(Access::Some(cached));
        }
        let mut map = BTreeMap::new();
        for g in self.store.grants_of_principal(&label).await? {
            if let Ok(p) = Permission::parse(&g.access) {
                map.insert(g.collection, role.cap(p));
            }
        }
        let map = Arc::new(map);
        self.grants.insert(label, map.clone());
        Ok(Access::Some(map))
    }

    /// After a change: reload this process's security state and record the event as a success.
    async fn done(
        &self,
        ctx: &AuditCtx,
        event: Event,
        target: Option<String>,
        detail: Option<String>,
    ) {
        self.changed().await;
        self.audit(ctx, event, target, Outcome::Success, detail)
            .await;
    }

    /// Drops this process's cached security state at once; other processes follow at their next
    /// sync (the change bumped the generation).
    async fn changed(&self) {
        if let Err(e) = self.reload().await {
            tracing::warn!(module = "security", error = %e, "reloading security state failed");
        }
    }

    // --- sessions ---------------------------------------------------------------------------

    pub async fn login(
        &self,
        ctx: &AuditCtx,
        email: &str,
        password: SecretString,
    ) -> SecurityResult<TokenPair> {
        let email = normalize_email(email).unwrap_or_else(|_| email.trim().to_lowercase());
        let account_key = format!("acct:{email}");
        let ip_key = format!("ip:{}", ctx.ip);
        if let Err(wait) = self.limiter.login_allowed(&[&account_key, &ip_key]).await {
            self.audit(
                ctx,
                Event::LoginFailure,
                Some(format!("email:{email}")),
                Outcome::Denied,
                Some("locked out after repeated failures".into()),
            )
            .await;
            metrics::counter!("auth_login_failures_total").increment(1);
            return Err(SecurityError::LockedOut(wait));
        }
        let user = self.store.find_user_by_email(&email).await?;
        if password.expose_secret().len() > MAX_PASSWORD_BYTES {
            metrics::counter!("auth_login_failures_total").increment(1);
            return Err(SecurityError::Unauthorized(AuthFailure::BadCredentials));
        }
        let ok = self
            .passwords
            .verify(password, user.as_ref().map(|u| u.password_hash.clone()))
            .await?;
        let mut audit_ctx = ctx.clone();
        if let Some(u) = &user {
            audit_ctx.actor = Some(format!("user:{}", u.id));
        }
        let user = match user {
            Some(u) if ok && !u.disabled => u,
            other => {
                self.limiter.login_failed(&[&account_key, &ip_key]).await;
                metrics::counter!("auth_login_failures_total").increment(1);
                let reason = match other {
                    None => "unknown user",
                    Some(u) if u.disabled => "account disabled",
                    Some(_) => "wrong password",
                };
                self.audit(
                    &audit_ctx,
                    Event::LoginFailure,
                    Some(format!("email:{email}")),
                    Outcome::Failure,
                    Some(reason.into()),
                )
                .await;
                return Err(SecurityError::Unauthorized(AuthFailure::BadCredentials));
            }
        };
        self.limiter.login_succeeded(&account_key).await;
        metrics::counter!("auth_logins_total").increment(1);
        let pair = self.issue(&user, random_token(16)).await?;
        self.audit(
            &audit_ctx,
            Event::LoginSuccess,
            Some(format!("user:{}", user.id)),
            Outcome::Success,
            None,
        )
        .await;
        Ok(pair)
    }

    /// A new access token and a refresh token in `family`.
    async fn issue(&self, user: &UserRecord, family: String) -> SecurityResult<TokenPair> {
        let now = now_ms();
        let access_ttl = self.settings.access_token_ttl_secs;
        let refresh_ttl = self.settings.refresh_token_ttl_secs;
        let claims = Claims::new(&self.settings, &user.id, &user.role, &family, now);
        let access_token = self.keyring.sign(&claims).map_err(SecurityError::Invalid)?;
        let refresh_token = random_token(32);
        self.store
            .insert_refresh(RefreshRecord {
                id: uuid::Uuid::new_v4().to_string(),
                family,
                user_id: user.id.clone(),
                token_hash: sha256_hex(&refresh_token),
                expires_at: now + refresh_ttl as i64 * 1000,
                used_at: None,
                revoked_at: None,
                created_at: now,
            })
            .await?;
        Ok(TokenPair {
            access_token,
            token_type: "Bearer".into(),
            expires_in: access_ttl,
            refresh_token,
            refresh_expires_in: refresh_ttl,
            user: UserView::from_record(user),
        })
    }

    /// Rotates a refresh token. Presenting one that was already used revokes its whole family:
    /// either the client or a thief holds a copy, and only the legitimate owner can log in again.
    pub async fn refresh(&self, ctx: &AuditCtx, token: &str) -> SecurityResult<TokenPair> {
        let now = now_ms();
        match self.store.use_refresh(&sha256_hex(token), now).await? {
            RefreshUse::Fresh(record) => {
                let user = self
                    .store
                    .get_user(&record.user_id)
                    .await?
                    .filter(|u| !u.disabled)
                    .ok_or(SecurityError::Unauthorized(AuthFailure::Disabled))?;
                let state = self.store.state().await?;
                if record.created_at < state.sessions_valid_after
                    || record.created_at < user.sessions_valid_after
                {
                    return Err(SecurityError::Unauthorized(AuthFailure::Revoked));
                }
                self.issue(&user, record.family).await
            }
            RefreshUse::Reused(record) => {
                self.store.revoke_family(&record.family, now).await?;
                self.changed().await;
                let mut ctx = ctx.clone();
                ctx.actor = Some(format!("user:{}", record.user_id));
                self.audit(
                    &ctx,
                    Event::RefreshReuse,
                    Some(format!("family:{}", record.family)),
                    Outcome::Denied,
                    Some("a used refresh token was presented again; its family is revoked".into()),
                )
                .await;
                Err(SecurityError::Unauthorized(AuthFailure::Revoked))
            }
            RefreshUse::Expired(_) => Err(SecurityError::Unauthorized(AuthFailure::Expired)),
            RefreshUse::Unknown => Err(SecurityError::Unauthorized(AuthFailure::Invalid)),
        }
    }

    /// Ends the caller's session: its refresh family, and the access tokens of that family.
    pub async fn logout(&self, ctx: &AuditCtx, caller: &Caller) -> SecurityResult<()> {
        let user_id = caller.require_user()?;
        match &caller.family {
            Some(family) => self.store.revoke_family(family, now_ms()).await?,
            None => {
                self.store
                    .update_user(
                        user_id,
                        UserUpdate {
                            end_sessions: true,
                            ..UserUpdate::default()
                        },
                    )
                    .await?;
            }
        }
        self.done(ctx, Event::Logout, Some(format!("user:{user_id}")), None)
            .await;
        Ok(())
    }

    pub async fn me(&self, caller: &Caller) -> SecurityResult<serde_json::Value> {
        let grants: BTreeMap<String, &str> = match &caller.access {
            Access::All => BTreeMap::new(),
            Access::Some(map) => map.iter().map(|(c, p)| (c.clone(), p.as_str())).collect(),
        };
        let mut me = serde_json::json!({
            "principal": caller.principal.label(),
            "role": caller.role,
            "all_collections": caller.access == Access::All,
            "grants": grants,
        });
        if let Some(id) = caller.user_id()
            && let Some(user) = self.store.get_user(id).await?
        {
            me["user"] = serde_json::to_value(UserView::from_record(&user)).unwrap_or_default();
        }
        Ok(me)
    }

    pub async fn change_password(
        &self,
        ctx: &AuditCtx,
        caller: &Caller,
        current: SecretString,
        new: SecretString,
    ) -> SecurityResult<()> {
        let user_id = caller.require_user()?;
        let user = self
            .store
            .get_user(user_id)
            .await?
            .ok_or(SecurityError::NotFound("user"))?;
        if current.expose_secret().len() > MAX_PASSWORD_BYTES
            || !self
                .passwords
                .verify(current, Some(user.password_hash.clone()))
                .await?
        {
            self.audit(
                ctx,
                Event::PasswordChange,
                Some(format!("user:{user_id}")),
                Outcome::Failure,
                Some("wrong current password".into()),
            )
            .await;
            return Err(SecurityError::Forbidden(
                "the current password is wrong".into(),
            ));
        }
        check_password(new.expose_secret())?;
        let hash = self.passwords.hash(new).await?;
        self.store
            .update_user(
                user_id,
                UserUpdate {
                    password_hash: Some(hash),
                    end_sessions: true,
                    ..UserUpdate::default()
                },
            )
            .await?;
        self.done(
            ctx,
            Event::PasswordChange,
            Some(format!("user:{user_id}")),
            None,
        )
        .await;
        Ok(())
    }

    // --- administration ---------------------------------------------------------------------

    pub async fn create_user(
        &self,
        ctx: &AuditCtx,
        email: &str,
        password: SecretString,
        role: Role,
    ) -> SecurityResult<UserView> {
        let email = normalize_email(email)?;
        check_password(password.expose_secret())?;
        let hash = self.passwords.hash(password).await?;
        let user = self
            .store
            .create_user(new_user(&email, hash, role))
            .await
            .map_err(|e| match e {
                StorageError::Conflict(m) => SecurityError::Conflict(m),
                other => other.into(),
            })?;
        self.done(
            ctx,
            Event::UserCreated,
            Some(format!("user:{}", user.id)),
            Some(format!("role {}", role.as_str())),
        )
        .await;
        Ok(UserView::from_record(&user))
    }

    pub async fn list_users(&self) -> SecurityResult<Vec<UserView>> {
        Ok(self
            .store
            .list_users()
            .await?
            .iter()
            .map(UserView::from_record)
            .collect())
    }

    pub async fn get_user(&self, id: &str) -> SecurityResult<UserView> {
        let user = self
            .store
            .get_user(id)
            .await?
            .ok_or(SecurityError::NotFound("user"))?;
        Ok(UserView::from_record(&user))
    }

    pub async fn update_user(
        &self,
        ctx: &AuditCtx,
        id: &str,
        role: Option<Role>,
        disabled: Option<bool>,
        password: Option<SecretString>,
    ) -> SecurityResult<UserView> {
        let before = self
            .store
            .get_user(id)
            .await?
            .ok_or(SecurityError::NotFound("user"))?;
        if before.role == Role::Admin.as_str()
            && (role.is_some_and(|r| r != Role::Admin) || disabled == Some(true))
        {
            self.keep_an_admin(id).await?;
        }
        let password_hash = match password {
            Some(p) => {
                check_password(p.expose_secret())?;
                Some(self.passwords.hash(p).await?)
            }
            None => None,
        };
        let reset = password_hash.is_some();
        let end_sessions = disabled == Some(true) || reset;
        let user = self
            .store
            .update_user(
                id,
                UserUpdate {
                    role: role.map(|r| r.as_str().to_string()),
                    disabled,
                    password_hash,
                    end_sessions,
                },
            )
            .await?
            .ok_or(SecurityError::NotFound("user"))?;
        self.changed().await;
        let target = Some(format!("user:{id}"));
        if let Some(r) = role.filter(|r| r.as_str() != before.role) {
            self.audit(
                ctx,
                Event::RoleChange,
                target.clone(),
                Outcome::Success,
                Some(format!("{} -> {}", before.role, r.as_str())),
            )
            .await;
        }
        if let Some(d) = disabled.filter(|d| *d != before.disabled) {
            let event = if d {
                Event::UserDisabled
            } else {
                Event::UserEnabled
            };
            self.audit(ctx, event, target.clone(), Outcome::Success, None)
                .await;
        }
        if reset {
            self.audit(
                ctx,
                Event::PasswordChange,
                target,
                Outcome::Success,
                Some("reset by an admin".into()),
            )
            .await;
        }
        Ok(UserView::from_record(&user))
    }

    /// Refuses to remove the last enabled admin: nobody could administer the service after.
    async fn keep_an_admin(&self, leaving: &str) -> SecurityResult<()> {
        let others = self
            .store
            .list_users()
            .await?
            .into_iter()
            .filter(|u| u.id != leaving && u.role == Role::Admin.as_str() && !u.disabled)
            .count();
        if others == 0 {
            return Err(SecurityError::Conflict(
                "this is the last enabled admin; create another admin first".into(),
            ));
        }
        Ok(())
    }

    pub async fn delete_user(&self, ctx: &AuditCtx, id: &str) -> SecurityResult<()> {
        let user = self
            .store
            .get_user(id)
            .await?
            .ok_or(SecurityError::NotFound("user"))?;
        if user.role == Role::Admin.as_str() {
            self.keep_an_admin(id).await?;
        }
        self.store.delete_user(id).await?;
        self.done(ctx, Event::UserDeleted, Some(format!("user:{id}")), None)
            .await;
        Ok(())
    }

    /// Makes a new signing key current. Old keys verify the tokens they signed until those
    /// expire, or stop at once with `revoke_old`.
    pub async fn rotate_signing_key(
        &self,
        ctx: &AuditCtx,
        revoke_old: bool,
    ) -> SecurityResult<String> {
        if self.settings.jwt_secret().is_some() {
            return Err(SecurityError::Conflict(
                "the signing key comes from JWT_SECRET / security.jwt_secret: set a new secret and \
                 restart to rotate it"
                    .into(),
            ));
        }
        let now = now_ms();
        let key = new_signing_key();
        let kid = key.kid.clone();
        let retire_at = if revoke_old {
            now
        } else {
            now + (self.settings.access_token_ttl_secs as i64 + 60) * 1000
        };
        self.store.add_signing_key(key, retire_at, false).await?;
        self.done(
            ctx,
            Event::JwtRotation,
            Some(format!("kid:{kid}")),
            Some(if revoke_old {
                "old keys retired at once".into()
            } else {
                "old keys verify until their tokens expire".into()
            }),
        )
        .await;
        Ok(kid)
    }

    pub async fn revoke_all_sessions(&self, ctx: &AuditCtx) -> SecurityResult<()> {
        self.store.revoke_all_sessions(now_ms()).await?;
        self.done(ctx, Event::RevokeAll, None, None).await;
        Ok(())
    }

    /// Blocks an address or network on every port: here at once, on other replicas at their next
    /// sync.
    pub async fn block_ip(&self, ctx: &AuditCtx, block: IpBlockRecord) -> SecurityResult<()> {
        self.store.add_ip_block(block.clone()).await?;
        self.done(ctx, Event::IpBlocked, Some(block.cidr), Some(block.reason))
            .await;
        Ok(())
    }

    pub async fn unblock_ip(&self, ctx: &AuditCtx, id: &str) -> SecurityResult<()> {
        let blocks = self.store.list_ip_blocks().await?;
        let block = blocks
            .iter()
            .find(|b| b.id == id)
            .ok_or(SecurityError::NotFound("IP block"))?;
        self.store.delete_ip_block(id).await?;
        self.done(ctx, Event::IpUnblocked, Some(block.cidr.clone()), None)
            .await;
        Ok(())
    }

    pub async fn ip_blocks(&self) -> SecurityResult<Vec<IpBlockRecord>> {
        Ok(self.store.list_ip_blocks().await?)
    }

    pub async fn create_api_key(
        &self,
        ctx: &AuditCtx,
        caller: &Caller,
        key: NewApiKey,
    ) -> SecurityResult<(String, ApiKeyView)> {
        let name = key.name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(SecurityError::Invalid(
                "name must be 1 to 200 characters".into(),
            ));
        }
        let owner = match &caller.principal {
            Principal::User { id, .. } => Some(id.clone()),
            Principal::Local => None,
            _ => {
                return Err(SecurityError::Forbidden(
                    "API keys are created by users".into(),
                ));
            }
        };
        if key.role > caller.role {
            return Err(SecurityError::Forbidden(format!(
                "a {} cannot create a key with role {}",
                caller.role.as_str(),
                key.role.as_str()
            )));
        }
        if let Some(c) = &key.collection {
            if key.role == Role::Admin {
                return Err(SecurityError::Invalid(
                    "an admin key cannot be limited to a collection; use role editor or viewer"
                        .into(),
                ));
            }
            let needed = if key.role >= Role::Editor {
                Permission::Write
            } else {
                Permission::Read
            };
            if caller.permission(c).is_none_or(|p| p < needed) {
                return Err(SecurityError::Forbidden(format!(
                    "you lack {} access to collection {c:?}",
                    needed.as_str()
                )));
            }
        }
        if key.expires_at.is_some_and(|t| t <= now_ms()) {
            return Err(SecurityError::Invalid("expires_at is in the past".into()));
        }
        let secret = format!("{API_KEY_PREFIX}{}", random_token(32));
        let record = ApiKeyRecord {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            secret_hash: sha256_hex(&secret),
            role: key.role.as_str().into(),
            collection: key.collection,
            owner_id: owner,
            expires_at: key.expires_at,
            revoked_at: None,
            created_at: now_ms(),
        };
        self.store.create_api_key(record.clone()).await?;
        self.done(
            ctx,
            Event::KeyCreated,
            Some(format!("key:{}", record.id)),
            Some(format!("role {}", record.role)),
        )
        .await;
        Ok((secret, ApiKeyView::from_record(&record)))
    }

    pub async fn list_api_keys(
        &self,
        caller: &Caller,
        all: bool,
    ) -> SecurityResult<Vec<ApiKeyView>> {
        let owner = if all && caller.is_admin() {
            None
        } else {
            Some(caller.require_user()?.to_string())
        };
        Ok(self
            .store
            .list_api_keys(owner.as_deref())
            .await?
            .iter()
            .map(ApiKeyView::from_record)
            .collect())
    }

    pub async fn revoke_api_key(
        &self,
        ctx: &AuditCtx,
        caller: &Caller,
        id: &str,
    ) -> SecurityResult<()> {
        let key = self
            .store
            .get_api_key(id)
            .await?
            .ok_or(SecurityError::NotFound("API key"))?;
        let own = key
            .owner_id
            .as_deref()
            .is_some_and(|o| Some(o) == caller.user_id());
        if !own && !caller.is_admin() {
            return Err(SecurityError::NotFound("API key"));
        }
        self.store.revoke_api_key(id, now_ms()).await?;
        self.done(ctx, Event::KeyRevoked, Some(format!("key:{id}")), None)
            .await;
        Ok(())
    }

    pub async fn set_grant(
        &self,
        ctx: &AuditCtx,
        collection: &str,
        principal: &str,
        access: Permission,
    ) -> SecurityResult<()> {
        crate::limits::validate_collection(collection).map_err(SecurityError::Invalid)?;
        self.check_principal(principal).await?;
        self.store
            .set_grant(GrantRecord {
                collection: collection.to_string(),
                principal: principal.to_string(),
                access: access.as_str().to_string(),
                created_at: now_ms(),
            })
            .await?;
        self.done(
            ctx,
            Event::GrantSet,
            Some(principal.to_string()),
            Some(format!("{} on {collection}", access.as_str())),
        )
        .await;
        Ok(())
    }

    pub async fn delete_grant(
        &self,
        ctx: &AuditCtx,
        collection: &str,
        principal: &str,
    ) -> SecurityResult<()> {
        if !self.store.delete_grant(collection, principal).await? {
            return Err(SecurityError::NotFound("grant"));
        }
        self.done(
            ctx,
            Event::GrantRemoved,
            Some(principal.to_string()),
            Some(format!("on {collection}")),
        )
        .await;
        Ok(())
    }

    pub async fn list_grants(&self, collection: &str) -> SecurityResult<Vec<GrantRecord>> {
        Ok(self.store.grants_of_collection(collection).await?)
    }

    async fn check_principal(&self, principal: &str) -> SecurityResult<()> {
        let exists = match principal.split_once(':') {
            Some(("user", id)) => self.store.get_user(id).await?.is_some(),
            Some(("key", id)) => self.store.get_api_key(id).await?.is_some(),
            _ => {
                return Err(SecurityError::Invalid(format!(
                    "principal {principal:?} must be user:<id> or key:<id>"
                )));
            }
        };
        if exists {
            Ok(())
        } else {
            Err(SecurityError::NotFound("principal"))
        }
    }

    pub async fn rate_limits(&self) -> SecurityResult<RateLimits> {
        let state = self.store.state().await?;
        Ok(state
            .rate_limits
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_else(|| RateLimits::from_settings(&self.settings)))
    }

    /// Records an admin's change of this process's log level.
    pub async fn log_level_changed(&self, ctx: &AuditCtx, level: &str) {
        self.audit(
            ctx,
            Event::LogLevelChanged,
            None,
            Outcome::Success,
            Some(level.to_string()),
        )
        .await;
    }

    pub async fn set_rate_limits(
        &self,
        ctx: &AuditCtx,
        limits: RateLimits,
    ) -> SecurityResult<RateLimits> {
        limits.validate().map_err(SecurityError::Invalid)?;
        let json =
            serde_json::to_string(&limits).map_err(|e| SecurityError::Invalid(e.to_string()))?;
        self.store.set_rate_limits(json.clone()).await?;
        self.done(ctx, Event::RateLimitsChanged, None, Some(json))
            .await;
        Ok(limits)
    }

    // --- audit ------------------------------------------------------------------------------

    /// Appends an event to the audit log and writes it as one log line with `audit=true`.
    pub async fn audit(
        &self,
        ctx: &AuditCtx,
        event: Event,
        target: Option<String>,
        outcome: Outcome,
        detail: Option<String>,
    ) {
        let record = ctx.record(event, target, outcome, detail);
        self.log_audit_line(&record);
        if let Err(e) = self.store.append_audit(record).await {
            tracing::error!(module = "security", error = %e, "cannot write the audit log");
        }
    }

    /// Like [`Self::audit`], but at most once a minute per `key`, for events a flood repeats.
    pub async fn audit_once(
        &self,
        key: String,
        ctx: &AuditCtx,
        event: Event,
        outcome: Outcome,
        detail: Option<String>,
    ) {
        if self.audit_once.contains_key(&key) {
            return;
        }
        self.audit_once.insert(key, ());
        self.audit(ctx, event, None, outcome, detail).await;
    }

    fn log_audit_line(&self, r: &AuditRecord) {
        tracing::info!(
            module = "security",
            audit = true,
            event = %r.event,
            actor = r.actor.as_deref().unwrap_or("-"),
            client_ip = r.ip.as_deref().unwrap_or("-"),
            target = r.target.as_deref().unwrap_or("-"),
            outcome = %r.outcome,
            detail = r.detail.as_deref().unwrap_or(""),
            "audit"
        );
    }

    pub fn blocked(&self, ip: std::net::IpAddr) -> bool {
        self.blocks.contains(ip, now_ms())
    }
}

/// A cache of security state; entries also leave when the generation changes.
fn cache<V: Clone + Send + Sync + 'static>(n: u64) -> MokaCache<String, V> {
    MokaCache::builder()
        .max_capacity(n)
        .time_to_live(Duration::from_secs(300))
        .build()
}

/// Compares a presented token with a configured secret (empty = disabled) in constant time.
fn secret_matches(configured: &SecretString, presented: &str) -> bool {
    let configured = configured.expose_secret();
    if configured.is_empty() {
        return false;
    }
    let a = Sha256::digest(configured.as_bytes());
    let b = Sha256::digest(presented.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn new_signing_key() -> SigningKeyRecord {
    SigningKeyRecord {
        kid: uuid::Uuid::new_v4().simple().to_string()[..16].to_string(),
        secret: random_token(64),
        created_at: now_ms(),
        retire_at: None,
    }
}

fn new_user(email: &str, password_hash: String, role: Role) -> UserRecord {
    let now = now_ms();
    UserRecord {
        id: uuid::Uuid::new_v4().to_string(),
        email: email.to_string(),
        password_hash,
        role: role.as_str().to_string(),
        disabled: false,
        sessions_valid_after: 0,
        created_at: now,
        updated_at: now,
    }
}

pub fn normalize_email(email: &str) -> SecurityResult<String> {
    let email = email.trim().to_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        Err(SecurityError::Invalid(format!(
            "{email:?} is not an email address"
        )))
    }
}

pub fn check_password(password: &str) -> SecurityResult<()> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(SecurityError::Invalid(format!(
            "a password needs at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(SecurityError::Invalid(format!(
            "a password may have at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

pub fn readiness(
    state: Arc<AppState>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Check>> + Send>> {
    async move { vec![check_database(&state).await] }.boxed()
}

/// Routes of the security port: everything of [`http`].
pub fn routes(cfg: &mut actix_web::web::ServiceConfig) {
    http::routes(cfg);
    http::admin_routes(cfg);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, grants: &[(&str, Permission)]) -> Caller {
        Caller {
            principal: Principal::User {
                id: "u".into(),
                email: "u@x".into(),
            },
            role,
            access: Access::Some(Arc::new(
                grants
                    .iter()
                    .map(|(c, p)| (c.to_string(), role.cap(*p)))
                    .collect(),
            )),
            family: None,
        }
    }

    #[test]
    fn roles_cap_grants() {
        let viewer = caller(Role::Viewer, &[("a", Permission::Write)]);
        assert!(viewer.can_read("a") && !viewer.can_write("a") && !viewer.can_read("b"));
        let editor = caller(
            Role::Editor,
            &[("a", Permission::Write), ("b", Permission::Read)],
        );
        assert!(editor.can_write("a") && !editor.can_write("b") && editor.can_read("b"));
        assert_eq!(
            editor.read_scope(),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert!(!editor.is_admin());
        assert!(Caller::local_admin().is_admin());
        assert_eq!(Caller::local_admin().read_scope(), None);
    }

    #[test]
    fn emails_and_passwords_are_checked() {
        assert_eq!(
            normalize_email(" Ann@Example.ORG ").unwrap(),
            "ann@example.org"
        );
        for bad in ["", "ann", "@x", "a@", "a b@x", "a@b@c"] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
        assert!(check_password("short").is_err());
        assert!(check_password(&"x".repeat(2000)).is_err());
        assert!(check_password("long enough").is_ok());
    }

    #[test]
    fn configured_secrets_compare_exactly_and_empty_disables() {
        let s = SecretString::from("scrape-me");
        assert!(secret_matches(&s, "scrape-me"));
        assert!(!secret_matches(&s, "scrape-m"));
        assert!(!secret_matches(&SecretString::from(""), ""));
    }
}
