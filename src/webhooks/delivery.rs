//! Delivering webhooks: the worker that claims due deliveries, one signed POST per attempt, and
//! the record of each outcome (retry with backoff, give up, disable the subscription).
//!
//! The delivery table is the truth and the only queue; the in-process `Notify` the metadata store
//! pings after a commit only wakes the worker early (other replicas' events and retries coming due
//! are found by polling). At most `webhooks.concurrency` attempts run at once, each bounded by
//! `webhooks.timeout_ms`, each under a lease longer than that; every record of an outcome is
//! fenced by the lease owner and the attempt number, so a worker that stalled past its lease
//! records nothing over the worker that took the delivery over.
//!
//! The signature: `X-DocRag-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`
//! with `X-DocRag-Timestamp` (Unix seconds) in the signed string, so a receiver that checks the
//! timestamp's age also refuses replays of an old delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{WebhookError, WebhookService};
use crate::config::WebhookSettings;
use crate::storage::webhooks::{AttemptOutcome, ClaimedDelivery, Recorded};

/// The signature header's value starts with this, then the hex digest.
pub const SIGNATURE_PREFIX: &str = "sha256=";

/// Bytes of a receiver's error answer kept in the delivery log.
const ANSWER_SNIPPET_BYTES: usize = 256;

/// How often delivered and failed deliveries older than `webhooks.retention_hours` are removed.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// A worker loop that ended without being asked to (a panic) restarts after this pause.
const RESTART_PAUSE: Duration = Duration::from_millis(500);

/// `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`: the `X-DocRag-Signature` value.
pub fn sign(secret: &str, timestamp: i64, body: &str) -> String {
    // HMAC takes a key of any length: new_from_slice cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "{SIGNATURE_PREFIX}{}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// How long a delivery waits after failed attempt number `attempt` (`webhooks.retry_base_ms`
/// doubling up to `webhooks.retry_max_ms`, jittered; see [`crate::retry`]).
pub fn retry_delay(attempt: i32, s: &WebhookSettings) -> Duration {
    crate::retry::jittered_backoff(attempt, s.retry_base_ms, s.retry_max_ms)
}

/// One attempt: POSTs the stored body, signed, and reads at most a snippet of the answer. Never
/// takes longer than `timeout`.
pub(super) async fn attempt(
    client: &reqwest::Client,
    d: &ClaimedDelivery,
    timeout: Duration,
) -> AttemptOutcome {
    let timestamp = chrono::Utc::now().timestamp();
    let request = client
        .post(&d.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-DocRag-Event", &d.event)
        .header("X-DocRag-Delivery", d.id.to_string())
        .header("X-DocRag-Timestamp", timestamp.to_string())
        .header("X-DocRag-Signature", sign(&d.secret, timestamp, &d.payload))
        .timeout(timeout)
        .body(d.payload.clone());
    let exchange = async {
        let mut response = request.send().await.map_err(|e| failure(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(status.as_u16());
        }
        let mut snippet = Vec::new();
        while snippet.len() < ANSWER_SNIPPET_BYTES {
            match response.chunk().await {
                Ok(Some(bytes)) => snippet.extend_from_slice(&bytes),
                _ => break,
            }
        }
        snippet.truncate(ANSWER_SNIPPET_BYTES);
        let text = String::from_utf8_lossy(&snippet);
        let text = text.trim();
        Err(AttemptOutcome::Failed {
            status: Some(status.as_u16()),
            error: if text.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {text}")
            },
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(status)) => AttemptOutcome::Delivered { status },
        Ok(Err(failed)) => failed,
        Err(_) => AttemptOutcome::Failed {
            status: None,
            error: format!("no answer within {} ms", timeout.as_millis()),
        },
    }
}

/// A transport error with its causes ("connection refused"), without the URL: a receiver URL may
/// carry a token in its query, and the delivery log names the subscription anyway.
fn failure(e: &reqwest::Error) -> AttemptOutcome {
    let mut error = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        error.push_str(": ");
        error.push_str(&s.to_string());
        source = s.source();
    }
    AttemptOutcome::Failed {
        status: None,
        error,
    }
}

impl WebhookService {
    /// Starts the delivery worker, restarted if it ever ends before `shutdown` turns true.
    pub fn spawn_worker(
        self: &Arc<Self>,
        shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let run = tokio::spawn(Arc::clone(&this).run(shutdown.clone()));
                let why = match run.await {
                    Ok(()) => return,
                    Err(e) if e.is_panic() => "panicked".to_string(),
                    Err(e) => e.to_string(),
                };
                if *shutdown.borrow() {
                    return;
                }
                metrics::counter!("webhook_worker_restarts_total").increment(1);
                tracing::error!(
                    module = "webhooks",
                    why,
                    "webhook delivery worker ended; restarting it"
                );
                tokio::time::sleep(RESTART_PAUSE).await;
            }
        })
    }

    /// Claims and delivers until `shutdown`; then waits for the attempts in flight (each is
    /// bounded by the timeout), so none is cut off after the receiver got it but before its
    /// outcome was recorded.
    async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let wake = self.store.deliveries_enqueued();
        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        let concurrency = self.settings.concurrency.max(1);
        let mut in_flight: JoinSet<()> = JoinSet::new();
        let mut pruned = Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            while let Some(ended) = in_flight.try_join_next() {
                report_panic(ended);
            }
            let free = concurrency.saturating_sub(in_flight.len());
            let mut full_batch = false;
            if free > 0 {
                match self
                    .store
                    .claim_deliveries(&self.worker_id, self.lease(), free)
                    .await
                {
                    Ok(batch) => {
                        full_batch = batch.len() == free;
                        for d in batch {
                            in_flight.spawn(Arc::clone(&self).deliver(d));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(module = "webhooks", error = %e, "cannot claim webhook deliveries");
                        tokio::select! {
                            _ = tokio::time::sleep(poll * 2) => {}
                            _ = shutdown.changed() => {}
                        }
                        continue;
                    }
                }
            }
            if pruned.elapsed() >= PRUNE_EVERY {
                pruned = Instant::now();
                self.prune().await;
            }
            // A full batch may mean more is due: claim again as soon as a slot frees.
            if full_batch && in_flight.len() < concurrency {
                continue;
            }
            tokio::select! {
                Some(ended) = in_flight.join_next(), if !in_flight.is_empty() => report_panic(ended),
                _ = wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.changed() => {}
            }
        }
        while let Some(ended) = in_flight.join_next().await {
            report_panic(ended);
        }
    }

    /// Attempts one claimed delivery and records the outcome. A delivery claimed more often
    /// than `max_attempts` lost every earlier worker before it could record anything (a crash,
    /// a kill): it is given up instead of looping.
    async fn deliver(self: Arc<Self>, d: ClaimedDelivery) {
        let outcome = if d.attempts > self.settings.max_attempts {
            AttemptOutcome::Failed {
                status: None,
                error: format!(
                    "gave up after {} attempts that each ended without an outcome (the worker \
                     died or lost its lease)",
                    d.attempts - 1
                ),
            }
        } else {
            attempt(&self.client, &d, self.timeout()).await
        };
        if let Err(e) = self.settle(&d, &outcome).await {
            // The lease runs out and the delivery is attempted again: at least once.
            tracing::warn!(module = "webhooks", delivery_id = %d.id, error = %e, "cannot record a webhook delivery attempt; it will be retried");
        }
    }

    /// Records an attempt's outcome with the retry policy, counts it, and reports a subscription
    /// this outcome disabled.
    pub(super) async fn settle(
        &self,
        d: &ClaimedDelivery,
        outcome: &AttemptOutcome,
    ) -> Result<Recorded, WebhookError> {
        let retry_in = match outcome {
            AttemptOutcome::Delivered { .. } => None,
            AttemptOutcome::Failed { .. } => (d.attempts < self.settings.max_attempts)
                .then(|| retry_delay(d.attempts, &self.settings)),
        };
        let recorded = self
            .store
            .record_attempt(
                d,
                &self.worker_id,
                outcome,
                retry_in,
                self.settings.disable_after,
            )
            .await?;
        let label = match recorded {
            Recorded::Delivered => "delivered",
            Recorded::Retrying => "retrying",
            Recorded::Failed { .. } => "failed",
            Recorded::LeaseLost => "lease_lost",
        };
        metrics::counter!("webhook_deliveries_total", "outcome" => label).increment(1);
        let error = match outcome {
            AttemptOutcome::Failed { error, .. } => error.as_str(),
            AttemptOutcome::Delivered { .. } => "",
        };
        match recorded {
            Recorded::Delivered => tracing::debug!(
                module = "webhooks",
                delivery_id = %d.id,
                subscription_id = %d.subscription_id,
                event = %d.event,
                attempt = d.attempts,
                "webhook delivered"
            ),
            Recorded::Retrying => tracing::info!(
                module = "webhooks",
                delivery_id = %d.id,
                subscription_id = %d.subscription_id,
                attempt = d.attempts,
                retry_in_ms = retry_in.map_or(0, |r| r.as_millis() as u64),
                error,
                "webhook delivery attempt failed; will retry"
            ),
            Recorded::Failed { disabled } => {
                tracing::warn!(
                    module = "webhooks",
                    delivery_id = %d.id,
                    subscription_id = %d.subscription_id,
                    attempts = d.attempts,
                    error,
                    "webhook delivery failed"
                );
                if disabled {
                    metrics::counter!("webhook_subscriptions_disabled_total", "reason" => "failures")
                        .increment(1);
                    tracing::warn!(
                        module = "webhooks",
                        subscription_id = %d.subscription_id,
                        consecutive_failures = self.settings.disable_after,
                        "webhook subscription disabled after consecutive failed deliveries; \
                         POST /v1/webhooks/{{id}}/enable turns it back on"
                    );
                }
            }
            Recorded::LeaseLost => tracing::info!(
                module = "webhooks",
                delivery_id = %d.id,
                "webhook delivery was taken over (lease expired) or its subscription deleted; \
                 outcome not recorded"
            ),
        }
        Ok(recorded)
    }

    async fn prune(&self) {
        let keep = chrono::Duration::hours(self.settings.retention_hours.min(100_000) as i64);
        match self.store.prune_deliveries(chrono::Utc::now() - keep).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(
                    module = "webhooks",
                    deliveries = n,
                    "pruned the webhook delivery log"
                )
            }
            Err(e) => {
                tracing::warn!(module = "webhooks", error = %e, "cannot prune the webhook delivery log")
            }
        }
    }
}

fn report_panic(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended {
        // The delivery's lease runs out and another attempt follows.
        tracing::error!(module = "webhooks", error = %e, "a webhook delivery task ended abnormally");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        assert_eq!(
            sign("whsec_test", 1_700_000_000, r#"{"a":1}"#),
            "sha256=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
        assert_ne!(
            sign("whsec_test", 1_700_000_001, r#"{"a":1}"#),
            sign("whsec_test", 1_700_000_000, r#"{"a":1}"#),
            "the timestamp is signed"
        );
    }

    #[test]
    fn retry_delays_follow_the_webhook_settings() {
        let s = Settings::defaults_with(&[
            ("webhooks.retry_base_ms".into(), "1000".into()),
            ("webhooks.retry_max_ms".into(), "3000".into()),
        ])
        .unwrap()
        .webhooks;
        let d = retry_delay(5, &s).as_millis();
        assert!((1500..=3000).contains(&d), "capped at retry_max_ms: {d} ms");
    }
}
