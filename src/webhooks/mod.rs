//! Webhooks: per-collection subscriptions notified when an ingestion job finishes (`job.done`) or
//! fails for good (`job.failed`) and when a document is deleted (`document.deleted`).
//!
//! This module owns the subscriptions' rules (what a valid receiver URL and event list are, the
//! signing secret, the limits) and the delivery of events; it does not decide when an event
//! happens. The metadata store records a pending delivery per interested subscription in the same
//! transaction as the change (see [`crate::storage::webhooks`]), so the delivery table is the
//! truth: [`delivery`]'s worker claims due rows with a lease, POSTs them signed, retries with
//! backoff, and disables a subscription whose deliveries keep failing. Delivery is at least once
//! (a worker that dies after the receiver answered leaves the row to be sent again), so receivers
//! dedupe on the `X-DocRag-Delivery` id. The admin API is in [`http`].

pub mod delivery;
pub mod http;

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::config::WebhookSettings;
use crate::limits::validate_collection;
use crate::storage::StorageError;
use crate::storage::webhooks::{
    DeliveryRecord, NewSubscription, Recorded, SubscriptionRecord, WebhookEvent, WebhookStore,
};

pub use self::delivery::{SIGNATURE_PREFIX, retry_delay, sign};

/// Event names in one subscription request at most (there are three events; a longer list is
/// a mistake, and is refused before it is looked at).
pub const MAX_EVENTS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Bad input: a URL, an event name, a collection name.
    #[error("{0}")]
    Invalid(String),
    /// A `webhooks.*` limit was reached; the message names the key.
    #[error("{0}")]
    Limit(String),
    #[error("webhook {0} not found")]
    NotFound(Uuid),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The operating system gave no randomness for a secret.
    #[error("cannot generate a secret: {0}")]
    Random(String),
}

/// A subscription as the admin API creates it, before validation.
#[derive(Debug, Clone)]
pub struct SubscriptionRequest {
    pub collection: String,
    pub url: String,
    /// `None`: every event.
    pub events: Option<Vec<String>>,
}

/// What the test endpoint's synchronous first attempt came to.
#[derive(Debug, Clone)]
pub struct PingResult {
    pub delivery_id: Uuid,
    pub recorded: Recorded,
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

pub struct WebhookService {
    store: Arc<dyn WebhookStore>,
    settings: WebhookSettings,
    client: reqwest::Client,
    /// This process's lease-owner name for deliveries.
    worker_id: String,
}

impl WebhookService {
    pub fn new(store: Arc<dyn WebhookStore>, settings: WebhookSettings) -> anyhow::Result<Self> {
        let timeout = Duration::from_millis(settings.timeout_ms);
        let client = reqwest::Client::builder()
            // A receiver's redirect is not followed: the subscription names where events go,
            // and a redirect could point the signed body anywhere.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(concat!("doc-rag-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            store,
            settings,
            client,
            worker_id: format!("webhooks-{}", Uuid::new_v4().simple()),
        })
    }

    pub fn settings(&self) -> &WebhookSettings {
        &self.settings
    }

    /// Validates and stores a subscription with a fresh secret; the record carries the secret,
    /// which the caller shows once.
    pub async fn create(
        &self,
        req: SubscriptionRequest,
    ) -> Result<SubscriptionRecord, WebhookError> {
        validate_collection(&req.collection).map_err(WebhookError::Invalid)?;
        let url = self.validate_url(&req.url)?;
        let events = parse_events(req.events)?;
        let secret = new_secret()?;
        let max = self.settings.max_subscriptions;
        self.store
            .create_subscription(
                NewSubscription {
                    collection: req.collection,
                    url,
                    secret,
                    events,
                },
                max,
            )
            .await?
            .ok_or_else(|| {
                WebhookError::Limit(format!(
                    "there are {max} webhook subscriptions already (webhooks.max_subscriptions); \
                     delete one first"
                ))
            })
    }

    pub async fn list(&self) -> Result<Vec<SubscriptionRecord>, WebhookError> {
        Ok(self.store.list_subscriptions().await?)
    }

    pub async fn delete(&self, id: Uuid) -> Result<(), WebhookError> {
        if self.store.delete_subscription(id).await? {
            Ok(())
        } else {
            Err(WebhookError::NotFound(id))
        }
    }

    /// Enables a subscription again and wakes the worker for its waiting deliveries.
    pub async fn enable(&self, id: Uuid) -> Result<SubscriptionRecord, WebhookError> {
        let record = self
            .store
            .enable_subscription(id)
            .await?
            .ok_or(WebhookError::NotFound(id))?;
        self.store.deliveries_enqueued().notify_one();
        Ok(record)
    }

    /// A subscription's delivery log, newest first.
    pub async fn deliveries(
        &self,
        id: Uuid,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<DeliveryRecord>, WebhookError> {
        if self.store.get_subscription(id).await?.is_none() {
            return Err(WebhookError::NotFound(id));
        }
        Ok(self.store.list_deliveries(id, limit, offset).await?)
    }

    /// Records a `ping` delivery and makes its first attempt now, reporting the outcome. The ping
    /// is a delivery like any other: in the log, retried with backoff when this attempt fails,
    /// and counted against the subscription if it fails for good.
    pub async fn ping(&self, id: Uuid) -> Result<PingResult, WebhookError> {
        let delivery = self
            .store
            .enqueue_ping(id, &self.worker_id, self.lease())
            .await?
            .ok_or(WebhookError::NotFound(id))?;
        let outcome = delivery::attempt(&self.client, &delivery, self.timeout()).await;
        let recorded = self.settle(&delivery, &outcome).await?;
        let (status_code, error) = match outcome {
            crate::storage::webhooks::AttemptOutcome::Delivered { status } => (Some(status), None),
            crate::storage::webhooks::AttemptOutcome::Failed { status, error } => {
                (status, Some(error))
            }
        };
        Ok(PingResult {
            delivery_id: delivery.id,
            recorded,
            status_code,
            error,
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.settings.timeout_ms)
    }

    /// A delivery's lease: one attempt is bounded by the timeout, so twice that and a margin
    /// outlives any attempt; a worker that died frees its deliveries after it.
    fn lease(&self) -> Duration {
        self.timeout() * 2 + Duration::from_secs(5)
    }

    /// A receiver URL: http(s), a host, no credentials, not longer than `webhooks.url_max_bytes`.
    fn validate_url(&self, raw: &str) -> Result<String, WebhookError> {
        let raw = raw.trim();
        let max = self.settings.url_max_bytes;
        if raw.len() > max {
            return Err(WebhookError::Limit(format!(
                "url is {} bytes, over the limit of {max} (webhooks.url_max_bytes)",
                raw.len()
            )));
        }
        let url = reqwest::Url::parse(raw)
            .map_err(|e| WebhookError::Invalid(format!("url is not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WebhookError::Invalid(format!(
                "url must be http:// or https://, not {}://",
                url.scheme()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(WebhookError::Invalid("url has no host".into()));
        }
        // Credentials in the URL would be shown in every listing and log line; the signature
        // is how a receiver authenticates doc-rag.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(WebhookError::Invalid(
                "url must not carry credentials (user:password@); verify the signature instead"
                    .into(),
            ));
        }
        Ok(url.to_string())
    }
}

/// The events a request names (`None`: all of them), deduplicated, in a stable order.
fn parse_events(names: Option<Vec<String>>) -> Result<Vec<WebhookEvent>, WebhookError> {
    let Some(names) = names else {
        return Ok(WebhookEvent::SUBSCRIBABLE.to_vec());
    };
    if names.len() > MAX_EVENTS {
        return Err(WebhookError::Limit(format!(
            "events lists {} names, over the limit of {MAX_EVENTS}",
            names.len()
        )));
    }
    if names.is_empty() {
        return Err(WebhookError::Invalid(
            "events must name at least one event (or be left out for all)".into(),
        ));
    }
    let valid = || {
        WebhookEvent::SUBSCRIBABLE
            .iter()
            .map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut events = Vec::new();
    for name in &names {
        match WebhookEvent::parse(name) {
            Some(e) if WebhookEvent::SUBSCRIBABLE.contains(&e) => {
                if !events.contains(&e) {
                    events.push(e);
                }
            }
            _ => {
                let shown: String = name.chars().take(64).collect();
                return Err(WebhookError::Invalid(format!(
                    "unknown event {shown:?}; events are {}",
                    valid()
                )));
            }
        }
    }
    events.sort_by_key(|e| WebhookEvent::SUBSCRIBABLE.iter().position(|s| s == e));
    Ok(events)
}

/// A fresh signing secret: 32 random bytes, hex, with a prefix that says what it is.
fn new_secret() -> Result<String, WebhookError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| WebhookError::Random(e.to_string()))?;
    Ok(format!("whsec_{}", hex::encode(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Option<Vec<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn events_default_to_all_and_unknown_or_ping_are_refused() {
        assert_eq!(
            parse_events(None).unwrap(),
            WebhookEvent::SUBSCRIBABLE.to_vec()
        );
        assert_eq!(
            parse_events(names(&["document.deleted", "job.done", "job.done"])).unwrap(),
            vec![WebhookEvent::JobDone, WebhookEvent::DocumentDeleted]
        );
        for bad in [&["job.finished"][..], &["ping"], &[]] {
            assert!(
                matches!(parse_events(names(bad)), Err(WebhookError::Invalid(_))),
                "{bad:?}"
            );
        }
        let many: Vec<&str> = std::iter::repeat_n("job.done", MAX_EVENTS + 1).collect();
        assert!(matches!(
            parse_events(names(&many)),
            Err(WebhookError::Limit(_))
        ));
    }

    #[test]
    fn secrets_are_fresh_and_prefixed() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert!(a.starts_with("whsec_") && a.len() == 6 + 64);
        assert_ne!(a, b);
    }
}
