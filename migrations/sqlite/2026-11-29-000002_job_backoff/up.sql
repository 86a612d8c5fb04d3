-- A retried job waits until then (ms), so an outage does not use up its attempts at once.
ALTER TABLE jobs ADD COLUMN not_before BIGINT;
