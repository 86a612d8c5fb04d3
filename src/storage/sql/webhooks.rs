//! [`WebhookStore`] on the SQL backends. Deliveries of document events are recorded by the
//! metadata store's own transactions (`enqueue_webhooks!` in the parent module); this file has the
//! subscriptions, the claim, the fenced record of an attempt and the delivery log.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Text};
use tokio::sync::Notify;
use uuid::Uuid;

use super::schema::{webhook_deliveries, webhook_subscriptions};
use super::{Dialect, Pool, SqlStore, now_ms, parse_uuid, to_time};
use crate::storage::StorageError;
use crate::storage::webhooks::{
    AttemptOutcome, ClaimedDelivery, DeliveryRecord, DeliveryStatus, NewSubscription, Recorded,
    SubscriptionRecord, WebhookEvent, WebhookStore,
};

/// The longest `last_error` kept: a receiver's error page is not the log's business.
const ERROR_MAX_CHARS: usize = 500;

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = webhook_subscriptions)]
struct SubscriptionRow {
    id: String,
    collection: String,
    url: String,
    secret: String,
    events: String,
    enabled: bool,
    disabled_reason: Option<String>,
    consecutive_failures: i32,
    created_at: i64,
}

impl SubscriptionRow {
    fn into_record(self) -> Result<SubscriptionRecord, StorageError> {
        let names: Vec<String> = serde_json::from_str(&self.events)
            .map_err(|e| StorageError::Corrupt(format!("webhook events: {e}")))?;
        let events = names
            .iter()
            .map(|n| {
                WebhookEvent::parse(n)
                    .ok_or_else(|| StorageError::Corrupt(format!("webhook event {n:?}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(SubscriptionRecord {
            id: parse_uuid(&self.id)?,
            collection: self.collection,
            url: self.url,
            secret: self.secret,
            events,
            enabled: self.enabled,
            disabled_reason: self.disabled_reason,
            consecutive_failures: self.consecutive_failures,
            created_at: to_time(self.created_at),
        })
    }
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = webhook_deliveries)]
struct DeliveryRow {
    id: String,
    subscription_id: String,
    event: String,
    payload: String,
    status: String,
    attempts: i32,
    next_attempt_at: i64,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    last_status_code: Option<i32>,
    last_error: Option<String>,
    created_at: i64,
    delivered_at: Option<i64>,
}

impl DeliveryRow {
    fn into_record(self) -> Result<DeliveryRecord, StorageError> {
        Ok(DeliveryRecord {
            id: parse_uuid(&self.id)?,
            subscription_id: parse_uuid(&self.subscription_id)?,
            event: self.event,
            payload: self.payload,
            status: DeliveryStatus::parse(&self.status)?,
            attempts: self.attempts,
            next_attempt_at: to_time(self.next_attempt_at),
            last_status_code: self.last_status_code,
            last_error: self.last_error,
            created_at: to_time(self.created_at),
            delivered_at: self.delivered_at.map(to_time),
        })
    }
}

#[derive(QueryableByName)]
struct ClaimedRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    subscription_id: String,
    #[diesel(sql_type = Text)]
    event: String,
    #[diesel(sql_type = Text)]
    payload: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
}

fn claim_deliveries_sql<C: Dialect>(_: &C) -> &'static str {
    C::CLAIM_DELIVERIES_SQL
}

fn truncated(s: &str) -> String {
    s.chars().take(ERROR_MAX_CHARS).collect()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl WebhookStore for SqlStore {
    async fn create_subscription(
        &self,
        new: NewSubscription,
        max: i64,
    ) -> Result<Option<SubscriptionRecord>, StorageError> {
        let events: Vec<&str> = new.events.iter().map(|e| e.as_str()).collect();
        let row = SubscriptionRow {
            id: Uuid::new_v4().to_string(),
            collection: new.collection,
            url: new.url,
            secret: new.secret,
            events: serde_json::to_string(&events)
                .map_err(|e| StorageError::Corrupt(e.to_string()))?,
            enabled: true,
            disabled_reason: None,
            consecutive_failures: 0,
            created_at: now_ms(),
        };
        self.blocking(move |pool| {
            with_conn!(pool, c => c.write_txn(|c| {
                // Two concurrent creates must not both see max - 1.
                c.serialize_writes("webhook_subscriptions")?;
                let n: i64 = webhook_subscriptions::table.count().get_result(c)?;
                if n >= max {
                    return Ok(None);
                }
                diesel::insert_into(webhook_subscriptions::table).values(&row).execute(c)?;
                row.into_record().map(Some)
            }))
        })
        .await
    }

    async fn list_subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StorageError> {
        self.blocking(|pool| {
            with_conn!(pool, c => {
                webhook_subscriptions::table
                    .select(SubscriptionRow::as_select())
                    .order((webhook_subscriptions::created_at, webhook_subscriptions::id))
                    .load(c)?
                    .into_iter()
                    .map(SubscriptionRow::into_record)
                    .collect()
            })
        })
        .await
    }

    async fn get_subscription(&self, id: Uuid) -> Result<Option<SubscriptionRecord>, StorageError> {
        self.blocking(move |pool| {
            with_conn!(pool, c => {
                webhook_subscriptions::table
                    .find(id.to_string())
                    .select(SubscriptionRow::as_select())
                    .first(c)
                    .optional()?
                    .map(SubscriptionRow::into_record)
                    .transpose()
            })
        })
        .await
    }

    async fn delete_subscription(&self, id: Uuid) -> Result<bool, StorageError> {
        self.blocking(move |pool| {
            with_conn!(pool, c => c.write_txn(|c| {
                let id = id.to_string();
                // Explicitly, not by ON DELETE CASCADE: SQLite honours that only with the
                // foreign_keys pragma on for the connection.
                diesel::delete(
                    webhook_deliveries::table.filter(webhook_deliveries::subscription_id.eq(&id)),
                )
                .execute(c)?;
                let n = diesel::delete(webhook_subscriptions::table.find(&id)).execute(c)?;
                Ok(n == 1)
            }))
        })
        .await
    }

    async fn enable_subscription(
        &self,
        id: Uuid,
    ) -> Result<Option<SubscriptionRecord>, StorageError> {
        self.blocking(move |pool| {
            with_conn!(pool, c => c.write_txn(|c| {
                let id = id.to_string();
                diesel::update(webhook_subscriptions::table.find(&id))
                    .set((
                        webhook_subscriptions::enabled.eq(true),
                        webhook_subscriptions::disabled_reason.eq(None::<String>),
                        webhook_subscriptions::consecutive_failures.eq(0),
                    ))
                    .execute(c)?;
                webhook_subscriptions::table
                    .find(&id)
                    .select(SubscriptionRow::as_select())
                    .first(c)
                    .optional()?
                    .map(SubscriptionRow::into_record)
                    .transpose()
            }))
        })
        .await
    }

    async fn enqueue_ping(
        &self,
        subscription_id: Uuid,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedDelivery>, StorageError> {
        let worker = worker.to_string();
        self.blocking(move |pool| {
            with_conn!(pool, c => c.write_txn(|c| {
                let sub_id = subscription_id.to_string();
                let found: Option<(String, String, String)> = webhook_subscriptions::table
                    .find(&sub_id)
                    .select((
                        webhook_subscriptions::collection,
                        webhook_subscriptions::url,
                        webhook_subscriptions::secret,
                    ))
                    .first(c)
                    .optional()?;
                let Some((collection, url, secret)) = found else {
                    return Ok(None);
                };
                let now = now_ms();
                let payload = serde_json::json!({
                    "event": WebhookEvent::Ping.as_str(),
                    "collection": collection,
                    "subscription_id": subscription_id,
                    "at": to_time(now),
                })
                .to_string();
                let id = Uuid::new_v4();
                // Born claimed by the caller, as its first attempt: no worker can take it before
                // the caller has tried (and, failing, it is retried like any delivery).
                let row = DeliveryRow {
                    id: id.to_string(),
                    subscription_id: sub_id,
                    event: WebhookEvent::Ping.as_str().into(),
                    payload: payload.clone(),
                    status: DeliveryStatus::Pending.as_str().into(),
                    attempts: 1,
                    next_attempt_at: now,
                    lease_owner: Some(worker.clone()),
                    lease_until: Some(now.saturating_add(millis(lease))),
                    last_status_code: None,
                    last_error: None,
                    created_at: now,
                    delivered_at: None,
                };
                diesel::insert_into(webhook_deliveries::table).values(&row).execute(c)?;
                Ok(Some(ClaimedDelivery {
                    id,
                    subscription_id,
                    event: WebhookEvent::Ping.as_str().into(),
                    payload,
                    attempts: 1,
                    url,
                    secret,
                }))
            }))
        })
        .await
    }

    async fn claim_deliveries(
        &self,
        worker: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedDelivery>, StorageError> {
        let worker = worker.to_string();
        let limit = limit.clamp(1, 1000) as i64;
        self.blocking(move |pool| {
            with_conn!(pool, c => c.write_txn(|c| {
                let now = now_ms();
                let rows: Vec<ClaimedRow> = diesel::sql_query(claim_deliveries_sql(&*c))
                    .bind::<Text, _>(&worker)
                    .bind::<BigInt, _>(now.saturating_add(millis(lease)))
                    .bind::<BigInt, _>(now)
                    .bind::<BigInt, _>(now)
                    .bind::<BigInt, _>(limit)
                    .load(c)?;
                if rows.is_empty() {
                    return Ok(Vec::new());
                }
                let ids: Vec<&str> = rows.iter().map(|r| r.subscription_id.as_str()).collect();
                let targets: Vec<(String, String, String)> = webhook_subscriptions::table
                    .filter(webhook_subscriptions::id.eq_any(&ids))
                    .select((
                        webhook_subscriptions::id,
                        webhook_subscriptions::url,
                        webhook_subscriptions::secret,
                    ))
                    .load(c)?;
                let mut claimed = Vec::with_capacity(rows.len());
                for row in rows {
                    // The join in the claim found the subscription in this transaction.
                    let Some((_, url, secret)) =
                        targets.iter().find(|(id, ..)| *id == row.subscription_id)
                    else {
                        continue;
                    };
                    claimed.push(ClaimedDelivery {
                        id: parse_uuid(&row.id)?,
                        subscription_id: parse_uuid(&row.subscription_id)?,
                        event: row.event,
                        payload: row.payload,
                        attempts: row.attempts,
                        url: url.clone(),
                        secret: secret.clone(),
                    });
                }
                Ok(claimed)
            }))
        })
        .await
    }

    async fn record_attempt(
        &self,
        delivery: &ClaimedDelivery,
        worker: &str,
        outcome: &AttemptOutcome,
        retry_in: Option<Duration>,
        disable_after: i32,
    ) -> Result<Recorded, StorageError> {
        let id = delivery.id.to_string();
        let sub_id = delivery.subscription_id.to_string();
        let attempt = delivery.attempts;
        let worker = worker.to_string();
        let outcome = outcome.clone();
        self.blocking(move |pool| {
            with_conn!(pool, c => c.write_txn(|c| {
                let now = now_ms();
                // The fence: still pending, still ours, and still the attempt we were given (a
                // worker that took the delivery over after our lease expired bumped it).
                let held = webhook_deliveries::table
                    .find(&id)
                    .filter(webhook_deliveries::status.eq(DeliveryStatus::Pending.as_str()))
                    .filter(webhook_deliveries::lease_owner.eq(&worker))
                    .filter(webhook_deliveries::attempts.eq(attempt));
                let release = (
                    webhook_deliveries::lease_owner.eq(None::<String>),
                    webhook_deliveries::lease_until.eq(None::<i64>),
                );
                match &outcome {
                    AttemptOutcome::Delivered { status } => {
                        let n = diesel::update(held)
                            .set((
                                webhook_deliveries::status.eq(DeliveryStatus::Delivered.as_str()),
                                webhook_deliveries::last_status_code.eq(Some(i32::from(*status))),
                                webhook_deliveries::last_error.eq(None::<String>),
                                webhook_deliveries::delivered_at.eq(Some(now)),
                                release,
                            ))
                            .execute(c)?;
                        if n == 0 {
                            return Ok(Recorded::LeaseLost);
                        }
                        diesel::update(webhook_subscriptions::table.find(&sub_id))
                            .set(webhook_subscriptions::consecutive_failures.eq(0))
                            .execute(c)?;
                        Ok(Recorded::Delivered)
                    }
                    AttemptOutcome::Failed { status, error } => {
                        let code = status.map(i32::from);
                        let error = truncated(error);
                        if let Some(wait) = retry_in {
                            let n = diesel::update(held)
                                .set((
                                    webhook_deliveries::next_attempt_at
                                        .eq(now.saturating_add(millis(wait))),
                                    webhook_deliveries::last_status_code.eq(code),
                                    webhook_deliveries::last_error.eq(Some(&error)),
                                    release,
                                ))
                                .execute(c)?;
                            return Ok(if n == 0 { Recorded::LeaseLost } else { Recorded::Retrying });
                        }
                        let n = diesel::update(held)
                            .set((
                                webhook_deliveries::status.eq(DeliveryStatus::Failed.as_str()),
                                webhook_deliveries::last_status_code.eq(code),
                                webhook_deliveries::last_error.eq(Some(&error)),
                                release,
                            ))
                            .execute(c)?;
                        if n == 0 {
                            return Ok(Recorded::LeaseLost);
                        }
                        diesel::update(webhook_subscriptions::table.find(&sub_id))
                            .set(
                                webhook_subscriptions::consecutive_failures
                                    .eq(webhook_subscriptions::consecutive_failures + 1),
                            )
                            .execute(c)?;
                        let state: Option<(bool, i32)> = webhook_subscriptions::table
                            .find(&sub_id)
                            .select((
                                webhook_subscriptions::enabled,
                                webhook_subscriptions::consecutive_failures,
                            ))
                            .first(c)
                            .optional()?;
                        let disable = matches!(state, Some((true, n)) if n >= disable_after.max(1));
                        if disable {
                            let reason = format!(
                                "{disable_after} consecutive deliveries failed; the last: {error}"
                            );
                            diesel::update(webhook_subscriptions::table.find(&sub_id))
                                .set((
                                    webhook_subscriptions::enabled.eq(false),
                                    webhook_subscriptions::disabled_reason.eq(Some(truncated(&reason))),
                                ))
                                .execute(c)?;
                        }
                        Ok(Recorded::Failed { disabled: disable })
                    }
                }
            }))
        })
        .await
    }

    async fn list_deliveries(
        &self,
        subscription_id: Uuid,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<DeliveryRecord>, StorageError> {
        self.blocking(move |pool| {
            with_conn!(pool, c => {
                webhook_deliveries::table
                    .filter(webhook_deliveries::subscription_id.eq(subscription_id.to_string()))
                    .select(DeliveryRow::as_select())
                    .order((webhook_deliveries::created_at.desc(), webhook_deliveries::id.desc()))
                    .limit(limit)
                    .offset(offset)
                    .load(c)?
                    .into_iter()
                    .map(DeliveryRow::into_record)
                    .collect()
            })
        })
        .await
    }

    async fn pending_deliveries(&self) -> Result<i64, StorageError> {
        self.blocking(|pool| {
            with_conn!(pool, c => {
                Ok(webhook_deliveries::table
                    .filter(webhook_deliveries::status.eq(DeliveryStatus::Pending.as_str()))
                    .count()
                    .get_result(c)?)
            })
        })
        .await
    }

    async fn prune_deliveries(&self, before: DateTime<Utc>) -> Result<u64, StorageError> {
        let before = before.timestamp_millis();
        self.blocking(move |pool| {
            with_conn!(pool, c => {
                let n = diesel::delete(
                    webhook_deliveries::table
                        .filter(webhook_deliveries::status.ne(DeliveryStatus::Pending.as_str()))
                        .filter(webhook_deliveries::created_at.lt(before)),
                )
                .execute(c)?;
                Ok(n as u64)
            })
        })
        .await
    }

    fn deliveries_enqueued(&self) -> Arc<Notify> {
        Arc::clone(&self.webhook_wake)
    }
}
