//! [`SecurityStore`] on the SQL backends. Every change bumps `security_state.generation` in its
//! own transaction, which is how other processes learn that their security caches are stale.

use async_trait::async_trait;
use diesel::prelude::*;

use super::schema::{
    api_keys, audit_log, grants, ip_blocks, refresh_tokens, security_state, signing_keys, users,
};
use super::{Dialect, Pool, SqlStore, now_ms};
use crate::storage::StorageError;
use crate::storage::security::{
    ApiKeyRecord, AuditQuery, AuditRecord, GrantRecord, IpBlockRecord, RefreshRecord, RefreshUse,
    SecurityState, SecurityStore, SigningKeyRecord, UserRecord, UserUpdate,
};

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
struct UserRow {
    id: String,
    email: String,
    password_hash: String,
    role: String,
    disabled: bool,
    sessions_valid_after: i64,
    created_at: i64,
    updated_at: i64,
}

impl From<UserRow> for UserRecord {
    fn from(r: UserRow) -> Self {
        UserRecord {
            id: r.id,
            email: r.email,
            password_hash: r.password_hash,
            role: r.role,
            disabled: r.disabled,
            sessions_valid_after: r.sessions_valid_after,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

impl From<UserRecord> for UserRow {
    fn from(r: UserRecord) -> Self {
        UserRow {
            id: r.id,
            email: r.email,
            password_hash: r.password_hash,
            role: r.role,
            disabled: r.disabled,
            sessions_valid_after: r.sessions_valid_after,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys)]
struct ApiKeyRow {
    id: String,
    name: String,
    secret_hash: String,
    role: String,
    collection: Option<String>,
    owner_id: Option<String>,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    created_at: i64,
}

impl From<ApiKeyRow> for ApiKeyRecord {
    fn from(r: ApiKeyRow) -> Self {
        ApiKeyRecord {
            id: r.id,
            name: r.name,
            secret_hash: r.secret_hash,
            role: r.role,
            collection: r.collection,
            owner_id: r.owner_id,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            created_at: r.created_at,
        }
    }
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = refresh_tokens)]
struct RefreshRow {
    id: String,
    family: String,
    user_id: String,
    token_hash: String,
    expires_at: i64,
    used_at: Option<i64>,
    revoked_at: Option<i64>,
    created_at: i64,
}

impl From<RefreshRow> for RefreshRecord {
    fn from(r: RefreshRow) -> Self {
        RefreshRecord {
            id: r.id,
            family: r.family,
            user_id: r.user_id,
            token_hash: r.token_hash,
            expires_at: r.expires_at,
            used_at: r.used_at,
            revoked_at: r.revoked_at,
            created_at: r.created_at,
        }
    }
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = signing_keys)]
struct SigningKeyRow {
    kid: String,
    secret: String,
    created_at: i64,
    retire_at: Option<i64>,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = grants)]
struct GrantRow {
    collection: String,
    principal: String,
    access: String,
    created_at: i64,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = ip_blocks)]
struct IpBlockRow {
    id: String,
    cidr: String,
    reason: String,
    expires_at: Option<i64>,
    created_by: Option<String>,
    created_at: i64,
}

/// Read and appended; the database assigns `id`.
#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = audit_log)]
struct AuditRow {
    #[diesel(skip_insertion)]
    id: i64,
    at: i64,
    event: String,
    actor: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
    target: Option<String>,
    outcome: String,
    request_id: Option<String>,
    detail: Option<String>,
}

impl From<AuditRow> for AuditRecord {
    fn from(r: AuditRow) -> Self {
        AuditRecord {
            id: r.id,
            at: r.at,
            event: r.event,
            actor: r.actor,
            ip: r.ip,
            user_agent: r.user_agent,
            target: r.target,
            outcome: r.outcome,
            request_id: r.request_id,
            detail: r.detail,
        }
    }
}

impl From<AuditRecord> for AuditRow {
    fn from(r: AuditRecord) -> Self {
        AuditRow {
            id: r.id,
            at: r.at,
            event: r.event,
            actor: r.actor,
            ip: r.ip,
            user_agent: r.user_agent,
            target: r.target,
            outcome: r.outcome,
            request_id: r.request_id,
            detail: r.detail,
        }
    }
}

/// Marks a security change, inside the caller's transaction.
fn bump(c: &mut impl diesel::connection::SimpleConnection) -> Result<(), StorageError> {
    c.batch_execute("UPDATE security_state SET generation = generation + 1 WHERE id = 1")?;
    Ok(())
}

/// Runs `$body` in a write transaction that also bumps the generation.
macro_rules! changing {
    ($store:expr, $c:ident => $body:expr) => {
        $store
            .blocking(move |pool| {
                with_conn!(pool, conn => conn.write_txn(|$c| {
                    let out = $body;
                    if out.is_ok() {
                        bump($c)?;
                    }
                    out
                }))
            })
            .await
    };
}

/// Runs `$body` on a pooled connection, read-only.
macro_rules! reading {
    ($store:expr, $c:ident => $body:expr) => {
        $store
            .blocking(move |pool| with_conn!(pool, $c => $body))
            .await
    };
}

#[async_trait]
impl SecurityStore for SqlStore {
    async fn state(&self) -> Result<SecurityState, StorageError> {
        reading!(self, c => {
            let (generation, sessions_valid_after, rate_limits) = security_state::table
                .find(1)
                .select((
                    security_state::generation,
                    security_state::sessions_valid_after,
                    security_state::rate_limits,
                ))
                .first::<(i64, i64, Option<String>)>(c)?;
            Ok(SecurityState { generation, sessions_valid_after, rate_limits })
        })
    }

    async fn set_rate_limits(&self, json: String) -> Result<(), StorageError> {
        changing!(self, c => {
            diesel::update(security_state::table.find(1))
                .set(security_state::rate_limits.eq(Some(json)))
                .execute(c)?;
            Ok(())
        })
    }

    async fn revoke_all_sessions(&self, now: i64) -> Result<(), StorageError> {
        changing!(self, c => {
            diesel::update(security_state::table.find(1))
                .set(security_state::sessions_valid_after.eq(now))
                .execute(c)?;
            diesel::update(refresh_tokens::table.filter(refresh_tokens::revoked_at.is_null()))
                .set(refresh_tokens::revoked_at.eq(Some(now)))
                .execute(c)?;
            Ok(())
        })
    }

    async fn count_users(&self) -> Result<i64, StorageError> {
        reading!(self, c => Ok(users::table.count().get_result::<i64>(c)?))
    }

    async fn create_user(&self, user: UserRecord) -> Result<UserRecord, StorageError> {
        changing!(self, c => {
            let row = UserRow::from(user.clone());
            match diesel::insert_into(users::table).values(&row).execute(c) {
                Ok(_) => Ok(user),
                Err(e) => match StorageError::from(e) {
                    StorageError::Conflict(_) => Err(StorageError::Conflict(format!(
                        "a user with email {} exists already",
                        user.email
                    ))),
                    other => Err(other),
                },
            }
        })
    }

    async fn get_user(&self, id: &str) -> Result<Option<UserRecord>, StorageError> {
        let id = id.to_string();
        reading!(self, c => Ok(users::table
            .find(id)
            .select(UserRow::as_select())
            .first(c)
            .optional()?
            .map(UserRecord::from)))
    }

    async fn find_user_by_email(&self, email: &str) -> Result<Option<UserRecord>, StorageError> {
        let email = email.to_string();
        reading!(self, c => Ok(users::table
            .filter(users::email.eq(email))
            .select(UserRow::as_select())
            .first(c)
            .optional()?
            .map(UserRecord::from)))
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>, StorageError> {
        reading!(self, c => Ok(users::table
            .select(UserRow::as_select())
            .order(users::created_at)
            .load(c)?
            .into_iter()
            .map(UserRecord::from)
            .collect()))
    }

    async fn update_user(
        &self,
        id: &str,
        update: UserUpdate,
    ) -> Result<Option<UserRecord>, StorageError> {
        let id = id.to_string();
        changing!(self, c => {
            let now = now_ms();
            let target = || users::table.find(id.clone());
            let exists = diesel::update(target()).set(users::updated_at.eq(now)).execute(c)? > 0;
            if !exists {
                return Ok(None);
            }
            if let Some(role) = &update.role {
                diesel::update(target()).set(users::role.eq(role)).execute(c)?;
            }
            if let Some(disabled) = update.disabled {
                diesel::update(target()).set(users::disabled.eq(disabled)).execute(c)?;
            }
            if let Some(hash) = &update.password_hash {
                diesel::update(target()).set(users::password_hash.eq(hash)).execute(c)?;
            }
            if update.end_sessions {
                diesel::update(target()).set(users::sessions_valid_after.eq(now)).execute(c)?;
                diesel::update(
                    refresh_tokens::table
                        .filter(refresh_tokens::user_id.eq(&id))
                        .filter(refresh_tokens::revoked_at.is_null()),
                )
                .set(refresh_tokens::revoked_at.eq(Some(now)))
                .execute(c)?;
            }
            Ok(Some(target().select(UserRow::as_select()).first(c)?.into()))
        })
    }

    async fn delete_user(&self, id: &str) -> Result<bool, StorageError> {
        let id = id.to_string();
        changing!(self, c => {
            diesel::delete(grants::table.filter(grants::principal.eq(format!("user:{id}"))))
                .execute(c)?;
            diesel::delete(refresh_tokens::table.filter(refresh_tokens::user_id.eq(&id)))
                .execute(c)?;
            Ok(diesel::delete(users::table.find(&id)).execute(c)? > 0)
        })
    }

    async fn insert_refresh(&self, token: RefreshRecord) -> Result<(), StorageError> {
        reading!(self, c => {
            let row = RefreshRow {
                id: token.id,
                family: token.family,
                user_id: token.user_id,
                token_hash: token.token_hash,
                expires_at: token.expires_at,
                used_at: token.used_at,
                revoked_at: token.revoked_at,
                created_at: token.created_at,
            };
            diesel::insert_into(refresh_tokens::table).values(&row).execute(c)?;
            Ok(())
        })
    }

    async fn use_refresh(&self, token_hash: &str, now: i64) -> Result<RefreshUse, StorageError> {
        let hash = token_hash.to_string();
        reading!(self, c => {
            let Some(row) = refresh_tokens::table
                .filter(refresh_tokens::token_hash.eq(&hash))
                .select(RefreshRow::as_select())
                .first(c)
                .optional()?
            else {
                return Ok(RefreshUse::Unknown);
            };
            let record = RefreshRecord::from(row);
            if record.used_at.is_some() || record.revoked_at.is_some() {
                return Ok(RefreshUse::Reused(record));
            }
            if record.expires_at <= now {
                return Ok(RefreshUse::Expired(record));
            }
            // Only one of two concurrent presentations can flip `used_at`.
            let claimed = diesel::update(
                refresh_tokens::table
                    .find(&record.id)
                    .filter(refresh_tokens::used_at.is_null())
                    .filter(refresh_tokens::revoked_at.is_null()),
            )
            .set(refresh_tokens::used_at.eq(Some(now)))
            .execute(c)?;
            Ok(if claimed == 1 {
                RefreshUse::Fresh(record)
            } else {
                RefreshUse::Reused(record)
            })
        })
    }

    async fn revoke_family(&self, family: &str, now: i64) -> Result<(), StorageError> {
        let family = family.to_string();
        changing!(self, c => {
            diesel::update(
                refresh_tokens::table
                    .filter(refresh_tokens::family.eq(&family))
                    .filter(refresh_tokens::revoked_at.is_null()),
            )
            .set(refresh_tokens::revoked_at.eq(Some(now)))
            .execute(c)?;
            Ok(())
        })
    }

    async fn revoked_families(&self, since: i64) -> Result<Vec<String>, StorageError> {
        reading!(self, c => Ok(refresh_tokens::table
            .filter(refresh_tokens::revoked_at.gt(since))
            .select(refresh_tokens::family)
            .distinct()
            .load::<String>(c)?))
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StorageError> {
        reading!(self, c => Ok(signing_keys::table
            .select(SigningKeyRow::as_select())
            .order(signing_keys::created_at)
            .load(c)?
            .into_iter()
            .map(|r| SigningKeyRecord {
                kid: r.kid,
                secret: r.secret,
                created_at: r.created_at,
                retire_at: r.retire_at,
            })
            .collect()))
    }

    async fn add_signing_key(
        &self,
        key: SigningKeyRecord,
        retire_old_at: i64,
        only_if_none: bool,
    ) -> Result<(), StorageError> {
        changing!(self, c => {
            let current = signing_keys::table.filter(signing_keys::retire_at.is_null());
            if only_if_none && current.count().get_result::<i64>(c)? > 0 {
                return Ok(());
            }
            // Every key still valid at `retire_old_at` retires then: `--revoke-old` also ends keys
            // that were already retiring on a timer.
            diesel::update(signing_keys::table.filter(
                signing_keys::retire_at
                    .is_null()
                    .or(signing_keys::retire_at.gt(retire_old_at)),
            ))
            .set(signing_keys::retire_at.eq(Some(retire_old_at)))
            .execute(c)?;
            let row = SigningKeyRow {
                kid: key.kid,
                secret: key.secret,
                created_at: key.created_at,
                retire_at: None,
            };
            diesel::insert_into(signing_keys::table).values(&row).execute(c)?;
            Ok(())
        })
    }

    async fn create_api_key(&self, key: ApiKeyRecord) -> Result<(), StorageError> {
        changing!(self, c => {
            let row = ApiKeyRow {
                id: key.id,
                name: key.name,
                secret_hash: key.secret_hash,
                role: key.role,
                collection: key.collection,
                owner_id: key.owner_id,
                expires_at: key.expires_at,
                revoked_at: key.revoked_at,
                created_at: key.created_at,
            };
            diesel::insert_into(api_keys::table).values(&row).execute(c)?;
            Ok(())
        })
    }

    async fn find_api_key(&self, secret_hash: &str) -> Result<Option<ApiKeyRecord>, StorageError> {
        let hash = secret_hash.to_string();
        reading!(self, c => Ok(api_keys::table
            .filter(api_keys::secret_hash.eq(hash))
            .select(ApiKeyRow::as_select())
            .first(c)
            .optional()?
            .map(ApiKeyRecord::from)))
    }

    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StorageError> {
        let id = id.to_string();
        reading!(self, c => Ok(api_keys::table
            .find(id)
            .select(ApiKeyRow::as_select())
            .first(c)
            .optional()?
            .map(ApiKeyRecord::from)))
    }

    async fn list_api_keys(&self, owner: Option<&str>) -> Result<Vec<ApiKeyRecord>, StorageError> {
        let owner = owner.map(str::to_string);
        reading!(self, c => {
            let mut q = api_keys::table.select(ApiKeyRow::as_select()).into_boxed();
            if let Some(owner) = owner {
                q = q.filter(api_keys::owner_id.eq(owner));
            }
            Ok(q.order(api_keys::created_at)
                .load(c)?
                .into_iter()
                .map(ApiKeyRecord::from)
                .collect())
        })
    }

    async fn revoke_api_key(&self, id: &str, now: i64) -> Result<bool, StorageError> {
        let id = id.to_string();
        changing!(self, c => {
            let n = diesel::update(api_keys::table.find(&id).filter(api_keys::revoked_at.is_null()))
                .set(api_keys::revoked_at.eq(Some(now)))
                .execute(c)?;
            Ok(n > 0)
        })
    }

    async fn set_grant(&self, grant: GrantRecord) -> Result<(), StorageError> {
        changing!(self, c => {
            let row = GrantRow {
                collection: grant.collection,
                principal: grant.principal,
                access: grant.access,
                created_at: grant.created_at,
            };
            diesel::delete(
                grants::table
                    .filter(grants::collection.eq(&row.collection))
                    .filter(grants::principal.eq(&row.principal)),
            )
            .execute(c)?;
            diesel::insert_into(grants::table).values(&row).execute(c)?;
            Ok(())
        })
    }

    async fn delete_grant(&self, collection: &str, principal: &str) -> Result<bool, StorageError> {
        let (collection, principal) = (collection.to_string(), principal.to_string());
        changing!(self, c => Ok(diesel::delete(
            grants::table
                .filter(grants::collection.eq(&collection))
                .filter(grants::principal.eq(&principal)),
        )
        .execute(c)?
            > 0))
    }

    async fn grants_of_principal(&self, principal: &str) -> Result<Vec<GrantRecord>, StorageError> {
        let principal = principal.to_string();
        reading!(self, c => Ok(grants::table
            .filter(grants::principal.eq(principal))
            .select(GrantRow::as_select())
            .load(c)?
            .into_iter()
            .map(grant_record)
            .collect()))
    }

    async fn grants_of_collection(
        &self,
        collection: &str,
    ) -> Result<Vec<GrantRecord>, StorageError> {
        let collection = collection.to_string();
        reading!(self, c => Ok(grants::table
            .filter(grants::collection.eq(collection))
            .select(GrantRow::as_select())
            .order(grants::principal)
            .load(c)?
            .into_iter()
            .map(grant_record)
            .collect()))
    }

    async fn list_grants(&self) -> Result<Vec<GrantRecord>, StorageError> {
        reading!(self, c => Ok(grants::table
            .select(GrantRow::as_select())
            .order((grants::collection, grants::principal))
            .load(c)?
            .into_iter()
            .map(grant_record)
            .collect()))
    }

    async fn add_ip_block(&self, block: IpBlockRecord) -> Result<(), StorageError> {
        changing!(self, c => {
            let row = IpBlockRow {
                id: block.id,
                cidr: block.cidr,
                reason: block.reason,
                expires_at: block.expires_at,
                created_by: block.created_by,
                created_at: block.created_at,
            };
            diesel::insert_into(ip_blocks::table).values(&row).execute(c)?;
            Ok(())
        })
    }

    async fn list_ip_blocks(&self) -> Result<Vec<IpBlockRecord>, StorageError> {
        reading!(self, c => Ok(ip_blocks::table
            .select(IpBlockRow::as_select())
            .order(ip_blocks::created_at)
            .load(c)?
            .into_iter()
            .map(|r| IpBlockRecord {
                id: r.id,
                cidr: r.cidr,
                reason: r.reason,
                expires_at: r.expires_at,
                created_by: r.created_by,
                created_at: r.created_at,
            })
            .collect()))
    }

    async fn delete_ip_block(&self, id: &str) -> Result<bool, StorageError> {
        let id = id.to_string();
        changing!(self, c => Ok(diesel::delete(ip_blocks::table.find(&id)).execute(c)? > 0))
    }

    async fn append_audit(&self, r: AuditRecord) -> Result<(), StorageError> {
        reading!(self, c => {
            let row = AuditRow::from(r.clone());
            diesel::insert_into(audit_log::table).values(&row).execute(c)?;
            Ok(())
        })
    }

    async fn query_audit(&self, q: AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
        reading!(self, c => {
            let mut query = audit_log::table.select(AuditRow::as_select()).into_boxed();
            if let Some(actor) = &q.actor {
                query = query.filter(audit_log::actor.eq(actor.clone()));
            }
            if let Some(ip) = &q.ip {
                query = query.filter(audit_log::ip.eq(ip.clone()));
            }
            if let Some(event) = &q.event {
                query = query.filter(audit_log::event.eq(event.clone()));
            }
            if let Some(since) = q.since {
                query = query.filter(audit_log::at.ge(since));
            }
            if let Some(until) = q.until {
                query = query.filter(audit_log::at.lt(until));
            }
            Ok(query
                .order(audit_log::id.desc())
                .limit(q.limit)
                .offset(q.offset)
                .load(c)?
                .into_iter()
                .map(AuditRecord::from)
                .collect())
        })
    }
}

fn grant_record(r: GrantRow) -> GrantRecord {
    GrantRecord {
        collection: r.collection,
        principal: r.principal,
        access: r.access,
        created_at: r.created_at,
    }
}
