//! What the webhooks module persists: subscriptions and their deliveries.
//!
//! The delivery table is both the queue and the delivery log: an event becomes one `pending` row
//! per interested subscription, written in the same transaction as the change it reports (the
//! fenced job finish, the final job failure, the document's deletion record), so an event is never
//! lost to a crash and never reported for a change that rolled back. Delivery workers claim due
//! rows with a lease (owner + until), and every write about an attempt is fenced by the owner and
//! the attempt number the claim gave, so replicas sharing PostgreSQL never deliver one row at the
//! same time, and a worker that lost its lease records nothing. Times are Unix milliseconds in
//! the tables.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

use super::StorageError;

/// At most this many pending deliveries per subscription. An event that would go over it
/// disables the subscription instead (with the reason), so a receiver that accepts nothing for
/// a long bulk load cannot grow the queue without bound; the backlog is still delivered once an
/// admin enables the subscription again.
pub const MAX_PENDING_PER_SUBSCRIPTION: i64 = 10_000;

/// What a subscription can be notified of. `ping` is only ever sent by the test endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum WebhookEvent {
    /// An ingestion job finished: the document's new version is searchable.
    #[serde(rename = "job.done")]
    JobDone,
    /// An ingestion job failed for good (no attempts left, or a permanent error).
    #[serde(rename = "job.failed")]
    JobFailed,
    /// A document was deleted.
    #[serde(rename = "document.deleted")]
    DocumentDeleted,
    /// A test delivery (`POST /v1/webhooks/{id}/test`).
    #[serde(rename = "ping")]
    Ping,
}

impl WebhookEvent {
    /// The events a subscription may ask for (the default when it names none).
    pub const SUBSCRIBABLE: [WebhookEvent; 3] = [
        WebhookEvent::JobDone,
        WebhookEvent::JobFailed,
        WebhookEvent::DocumentDeleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::JobDone => "job.done",
            WebhookEvent::JobFailed => "job.failed",
            WebhookEvent::DocumentDeleted => "document.deleted",
            WebhookEvent::Ping => "ping",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "job.done" => WebhookEvent::JobDone,
            "job.failed" => WebhookEvent::JobFailed,
            "document.deleted" => WebhookEvent::DocumentDeleted,
            "ping" => WebhookEvent::Ping,
            _ => return None,
        })
    }
}

/// Whether a subscription's stored `events` (a JSON array of names) include `event`. An
/// unreadable list includes nothing: a corrupt row must not fail the job finish it rides in.
pub fn subscribed(events_json: &str, event: WebhookEvent) -> bool {
    serde_json::from_str::<Vec<String>>(events_json)
        .map(|names| names.iter().any(|n| n == event.as_str()))
        .unwrap_or(false)
}

/// A change to a document that subscriptions may be notified of; the storage backend turns it
/// into a payload inside the transaction that makes the change.
#[derive(Debug, Clone)]
pub struct DocumentEvent {
    pub event: WebhookEvent,
    pub collection: String,
    pub document_id: Uuid,
    pub job_id: Option<Uuid>,
    pub version: i64,
    pub error: Option<String>,
}

impl DocumentEvent {
    /// The body every subscription receives for this event, as sent and signed.
    pub fn payload(&self, at: DateTime<Utc>) -> String {
        let mut body = serde_json::json!({
            "event": self.event.as_str(),
            "collection": self.collection,
            "document_id": self.document_id,
            "version": self.version,
            "at": at,
        });
        if let Some(job) = self.job_id {
            body["job_id"] = serde_json::json!(job);
        }
        if let Some(error) = &self.error {
            // Job errors are short, but the payload must stay small whatever they say.
            let error: String = error.chars().take(2000).collect();
            body["error"] = serde_json::json!(error);
        }
        body.to_string()
    }
}

#[derive(Debug, Clone)]
pub struct NewSubscription {
    pub collection: String,
    pub url: String,
    pub secret: String,
    pub events: Vec<WebhookEvent>,
}

#[derive(Debug, Clone)]
pub struct SubscriptionRecord {
    pub id: Uuid,
    pub collection: String,
    pub url: String,
    /// The signing secret; the API shows it only when the subscription is created.
    pub secret: String,
    pub events: Vec<WebhookEvent>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// Deliveries that failed for good since the last one that succeeded.
    pub consecutive_failures: i32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its first or next attempt (or being attempted: see the lease).
    Pending,
    Delivered,
    /// Every attempt failed; it will not be tried again.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        Ok(match s {
            "pending" => DeliveryStatus::Pending,
            "delivered" => DeliveryStatus::Delivered,
            "failed" => DeliveryStatus::Failed,
            other => return Err(StorageError::Corrupt(format!("delivery status {other:?}"))),
        })
    }
}

/// One row of the delivery log.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub id: Uuid,
    pub subscription_id: Uuid,
    pub event: String,
    /// The body as sent.
    pub payload: String,
    pub status: DeliveryStatus,
    /// Attempts made (claims, counting one a crashed worker never finished).
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A delivery a worker holds the lease of, with what it needs to send it.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: Uuid,
    pub subscription_id: Uuid,
    pub event: String,
    /// The exact body to send and sign.
    pub payload: String,
    /// This attempt's number (1 for the first); with the lease owner it fences the outcome.
    pub attempts: i32,
    pub url: String,
    pub secret: String,
}

/// What one attempt at a delivery came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The receiver answered 2xx.
    Delivered { status: u16 },
    /// Any other answer (`status`), or none (a timeout, a refused connection: `status` is `None`).
    Failed { status: Option<u16>, error: String },
}

/// What [`WebhookStore::record_attempt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Delivered,
    /// Back in the queue until its next attempt is due.
    Retrying,
    /// Given up; `disabled` when this failure disabled the subscription.
    Failed {
        disabled: bool,
    },
    /// The worker no longer holds the delivery (its lease expired and another took it, or the
    /// subscription was deleted): nothing was written.
    LeaseLost,
}

/// Webhook subscriptions and the delivery queue/log.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Stores a new subscription unless `max` subscriptions exist already (`None` then); the
    /// count and the insert are one transaction, so concurrent creates cannot pass the limit.
    async fn create_subscription(
        &self,
        new: NewSubscription,
        max: i64,
    ) -> Result<Option<SubscriptionRecord>, StorageError>;
    /// Every subscription, oldest first.
    async fn list_subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StorageError>;
    async fn get_subscription(&self, id: Uuid) -> Result<Option<SubscriptionRecord>, StorageError>;
    /// Removes a subscription and its deliveries (log and queue); false when there is none.
    async fn delete_subscription(&self, id: Uuid) -> Result<bool, StorageError>;
    /// Enables a subscription again: clears the reason and the failure count. Its pending
    /// deliveries become claimable again. `None` when there is none.
    async fn enable_subscription(
        &self,
        id: Uuid,
    ) -> Result<Option<SubscriptionRecord>, StorageError>;
    /// Records a `ping` delivery for the subscription already leased to `worker` (its first
    /// attempt is the caller's to make at once), even when the subscription is disabled: an
    /// admin tests a receiver before enabling it again. `None` when there is no subscription.
    async fn enqueue_ping(
        &self,
        subscription_id: Uuid,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedDelivery>, StorageError>;
    /// Up to `limit` due deliveries of enabled subscriptions (pending and due, or leased to a
    /// worker whose lease expired), oldest due first, leased to `worker`; each claim counts an
    /// attempt. Concurrent claims never return the same delivery.
    async fn claim_deliveries(
        &self,
        worker: &str,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<ClaimedDelivery>, StorageError>;
    /// Records an attempt's outcome, fenced: only while `worker` holds the delivery at this
    /// attempt. A failure with `retry_in` puts the delivery back, due after that delay; without
    /// it the delivery has failed for good, which counts against the subscription: the
    /// `disable_after`th consecutive failed delivery disables it. A success resets the count.
    async fn record_attempt(
        &self,
        delivery: &ClaimedDelivery,
        worker: &str,
        outcome: &AttemptOutcome,
        retry_in: Option<Duration>,
        disable_after: i32,
    ) -> Result<Recorded, StorageError>;
    /// A subscription's deliveries, newest first.
    async fn list_deliveries(
        &self,
        subscription_id: Uuid,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<DeliveryRecord>, StorageError>;
    /// Deliveries waiting for an attempt, for the `webhook_deliveries_pending` gauge.
    async fn pending_deliveries(&self) -> Result<i64, StorageError>;
    /// Forgets delivered and failed deliveries created before `before`; returns how many.
    async fn prune_deliveries(&self, before: DateTime<Utc>) -> Result<u64, StorageError>;
    /// Notified (a single stored permit, so it never queues) after a transaction in this process
    /// recorded new deliveries: it only wakes the delivery worker early, the table is the truth.
    fn deliveries_enqueued(&self) -> Arc<Notify>;
}
