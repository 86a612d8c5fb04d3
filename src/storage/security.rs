//! What the security module persists: users, API keys, refresh-token families, JWT signing keys,
//! collection grants, IP blocks, the append-only audit log, and one shared state row.
//!
//! The shared row's `generation` is bumped in the same transaction as every change, so each process
//! (replicas, and `doc-rag admin --local` run beside a server) polls one number to learn that its
//! caches are stale. Times are Unix milliseconds; secrets are stored only as hashes, except JWT
//! signing keys, which every replica must be able to verify with.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StorageError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityState {
    pub generation: i64,
    /// Access and refresh tokens issued before this time (ms) are invalid (`revoke-all`).
    pub sessions_valid_after: i64,
    /// Run-time rate limits set by an admin (JSON), overriding the configured ones.
    pub rate_limits: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub email: String,
    /// Never serialized (a backup writes it explicitly, `backup::UserLine`).
    #[serde(skip_serializing, default)]
    pub password_hash: String,
    pub role: String,
    pub disabled: bool,
    /// Tokens of this user issued before this time (ms) are invalid (password change, disable).
    pub sessions_valid_after: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    pub role: Option<String>,
    pub disabled: Option<bool>,
    pub password_hash: Option<String>,
    /// Ends every session the user has (sets `sessions_valid_after` to now, revokes refresh tokens).
    pub end_sessions: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub secret_hash: String,
    pub role: String,
    pub collection: Option<String>,
    pub owner_id: Option<String>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRecord {
    pub id: String,
    pub family: String,
    pub user_id: String,
    pub token_hash: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
}

/// What presenting a refresh token found. Marking it used is atomic: of two concurrent
/// presentations of one token, exactly one is `Fresh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// Valid and now marked used: issue its successor in the same family.
    Fresh(RefreshRecord),
    /// Already used or revoked: a replay. The caller revokes the family.
    Reused(RefreshRecord),
    Expired(RefreshRecord),
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub secret: String,
    pub created_at: i64,
    /// Verifies tokens until then (ms); `None` for the current key.
    pub retire_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub collection: String,
    /// `user:<id>` or `key:<id>`.
    pub principal: String,
    /// `read` or `write`.
    pub access: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpBlockRecord {
    pub id: String,
    pub cidr: String,
    pub reason: String,
    pub expires_at: Option<i64>,
    pub created_by: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Assigned by the store.
    #[serde(default)]
    pub id: i64,
    pub at: i64,
    pub event: String,
    pub actor: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub target: Option<String>,
    pub outcome: String,
    pub request_id: Option<String>,
    pub detail: Option<String>,
}

/// Filters of `GET /v1/admin/audit`; newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub ip: Option<String>,
    pub event: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub limit: i64,
    pub offset: i64,
}

#[async_trait]
pub trait SecurityStore: Send + Sync + 'static {
    async fn state(&self) -> Result<SecurityState, StorageError>;
    async fn set_rate_limits(&self, json: String) -> Result<(), StorageError>;
    /// Ends every session: tokens issued before `now` stop working, refresh tokens are revoked.
    async fn revoke_all_sessions(&self, now: i64) -> Result<(), StorageError>;

    async fn count_users(&self) -> Result<i64, StorageError>;
    /// `Conflict` when the email is taken.
    async fn create_user(&self, user: UserRecord) -> Result<UserRecord, StorageError>;
    async fn get_user(&self, id: &str) -> Result<Option<UserRecord>, StorageError>;
    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StorageError>;
    async fn list_users(&self) -> Result<Vec<UserRecord>, StorageError>;
    async fn update_user(
        &self,
        id: &str,
        update: UserUpdate,
    ) -> Result<Option<UserRecord>, StorageError>;
    /// Removes the user, their refresh tokens and grants. False when there was no such user.
    async fn delete_user(&self, id: &str) -> Result<bool, StorageError>;

    async fn insert_refresh(&self, token: RefreshRecord) -> Result<(), StorageError>;
    async fn use_refresh(&self, token_hash: &str, now: i64) -> Result<RefreshUse, StorageError>;
    async fn revoke_family(&self, family: &str, now: i64) -> Result<(), StorageError>;
    /// Families revoked after `since` (their access tokens are refused until they expire).
    async fn revoked_families(&self, since: i64) -> Result<Vec<String>, StorageError>;

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StorageError>;
    /// Makes `key` current; every other key still valid at `retire_old_at` retires then. With
    /// `only_if_none`, does nothing when a current key exists already (replicas starting together).
    async fn add_signing_key(
        &self,
        key: SigningKeyRecord,
        retire_old_at: i64,
        only_if_none: bool,
    ) -> Result<(), StorageError>;

    async fn create_api_key(&self, key: ApiKeyRecord) -> Result<(), StorageError>;
    async fn find_api_key(&self, secret_hash: &str) -> Result<Option<ApiKeyRecord>, StorageError>;
    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StorageError>;
    /// Keys of one owner, or every key.
    async fn list_api_keys(&self, owner: Option<&str>) -> Result<Vec<ApiKeyRecord>, StorageError>;
    async fn revoke_api_key(&self, id: &str, now: i64) -> Result<bool, StorageError>;

    async fn set_grant(&self, grant: GrantRecord) -> Result<(), StorageError>;
    async fn delete_grant(&self, collection: &str, principal: &str) -> Result<bool, StorageError>;
    async fn grants_of_principal(&self, principal: &str) -> Result<Vec<GrantRecord>, StorageError>;
    async fn grants_of_collection(
        &self,
        collection: &str,
    ) -> Result<Vec<GrantRecord>, StorageError>;
    /// Every grant (a backup).
    async fn list_grants(&self) -> Result<Vec<GrantRecord>, StorageError>;

    async fn add_ip_block(&self, block: IpBlockRecord) -> Result<(), StorageError>;
    async fn list_ip_blocks(&self) -> Result<Vec<IpBlockRecord>, StorageError>;
    async fn delete_ip_block(&self, id: &str) -> Result<bool, StorageError>;

    async fn append_audit(&self, record: AuditRecord) -> Result<(), StorageError>;
    async fn query_audit(&self, query: AuditQuery) -> Result<Vec<AuditRecord>, StorageError>;
}
