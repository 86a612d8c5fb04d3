-- Webhook subscriptions (POST /v1/webhooks): one collection, a receiver URL, the events it wants
-- (a JSON array of names) and the secret deliveries are signed with (kept so it can sign; shown
-- only when the subscription is created). A subscription whose deliveries keep failing is
-- disabled (enabled = FALSE) with the reason, until an admin enables it again.
CREATE TABLE webhook_subscriptions (
    id TEXT PRIMARY KEY NOT NULL,
    collection TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    events TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    disabled_reason TEXT,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
CREATE INDEX webhook_subscriptions_collection ON webhook_subscriptions(collection);

-- One row per event per subscription: the delivery queue (status 'pending', claimed with a lease
-- like jobs) and, once delivered or failed, the delivery log. The payload is the exact body sent
-- and signed. Times are Unix milliseconds.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY NOT NULL,
    subscription_id TEXT NOT NULL REFERENCES webhook_subscriptions(id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    last_status_code INTEGER,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT
);
-- The claim looks for due pending deliveries; the backlog check counts one subscription's.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_backlog ON webhook_deliveries(subscription_id) WHERE status = 'pending';
-- The delivery log, newest first, and pruning by age.
CREATE INDEX webhook_deliveries_log ON webhook_deliveries(subscription_id, created_at);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries(created_at);
