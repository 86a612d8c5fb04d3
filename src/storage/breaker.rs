//! A circuit breaker per dependency: after `threshold` failures in a row it opens and calls are
//! skipped (answered from the fallback) for `cooldown`; then one call is let through to probe
//! (half-open), and a success closes it. State changes are logged and exported as the gauge
//! `dependency_up{dependency}` (1 closed, 0 open), so an outage costs one timeout per cooldown,
//! not one per request.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Breaker {
    name: &'static str,
    threshold: u32,
    cooldown: Duration,
    failures: AtomicU32,
    /// Milliseconds since the epoch until which calls are skipped; 0 when closed.
    open_until: AtomicU64,
    /// Whether the last state change logged was "down".
    down: AtomicBool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Breaker {
    pub fn new(name: &'static str, threshold: u32, cooldown: Duration) -> Self {
        metrics::gauge!("dependency_up", "dependency" => name).set(1.0);
        Self {
            name,
            threshold: threshold.max(1),
            cooldown,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            down: AtomicBool::new(false),
        }
    }

    /// Whether a call may go out now. While open, one caller per cooldown gets through (the probe).
    pub fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::SeqCst);
        if until == 0 {
            return true;
        }
        let now = now_ms();
        // The first caller after the cooldown claims the probe by pushing the deadline on.
        now >= until
            && self
                .open_until
                .compare_exchange(
                    until,
                    now + self.cooldown.as_millis() as u64,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
    }

    pub fn success(&self) {
        self.failures.store(0, Ordering::SeqCst);
        self.open_until.store(0, Ordering::SeqCst);
        if self.down.swap(false, Ordering::SeqCst) {
            metrics::gauge!("dependency_up", "dependency" => self.name).set(1.0);
            tracing::info!(
                module = "storage",
                dependency = self.name,
                "dependency is back; circuit closed"
            );
        }
    }

    pub fn failure(&self, error: &str) {
        let n = self.failures.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.threshold {
            self.open_until.store(
                now_ms() + self.cooldown.as_millis() as u64,
                Ordering::SeqCst,
            );
            if !self.down.swap(true, Ordering::SeqCst) {
                metrics::gauge!("dependency_up", "dependency" => self.name).set(0.0);
                tracing::warn!(
                    module = "storage",
                    dependency = self.name,
                    error,
                    "dependency failing; circuit open, using the fallback"
                );
            }
        }
    }

    /// True while the circuit is open (the dependency is considered down).
    pub fn is_open(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_then_lets_one_probe_through_per_cooldown() {
        let b = Breaker::new("test", 2, Duration::from_millis(50));
        assert!(b.allow());
        b.failure("x");
        assert!(b.allow() && !b.is_open(), "one failure is not enough");
        b.failure("x");
        assert!(b.is_open());
        assert!(!b.allow(), "open: calls are skipped");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow(), "the probe");
        assert!(!b.allow(), "only one probe per cooldown");
        b.success();
        assert!(!b.is_open() && b.allow() && b.allow());
    }
}
