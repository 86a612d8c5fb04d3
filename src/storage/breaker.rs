//! A circuit breaker per dependency: after `threshold` failures in a row it opens and calls are
//! skipped (answered from the fallback) for `cooldown`; then one call is let through to probe
//! (half-open), and a success closes it. State changes are logged and exported as the gauge
//! `dependency_up{dependency}` (1 closed, 0 open), so an outage costs one timeout per cooldown,
//! not one per request. [`Guarded`] wraps the breaker with per-attempt timeouts and retries for
//! the stores that fail over to no fallback (MongoDB, the Qdrant server).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Dependency, StorageError};

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
        metrics::counter!("dependency_errors_total", "dependency" => name).increment(0);
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

/// How a call to a dependency failed.
pub enum CallError {
    /// The server did not answer, timed out or is failing over: retried, counted by the breaker,
    /// and reported as [`StorageError::Unavailable`].
    Transient(String),
    /// The server answered with an error of ours (bad input, a bug): neither retried nor counted.
    Permanent(StorageError),
}

/// Every call to one server-backed store: a timeout per attempt, a few retries of transient
/// failures with exponential backoff and jitter (every call it guards must be idempotent), and the
/// breaker, so an outage costs one timeout per cooldown and answers [`StorageError::Unavailable`]
/// naming the dependency.
pub struct Guarded {
    dependency: Dependency,
    breaker: Breaker,
    timeout: Duration,
    retries: u32,
}

impl StorageError {
    /// A server-backed store that does not answer (see [`Guarded`]).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StorageError::Unavailable { .. })
    }
}

impl Guarded {
    pub fn new(dependency: Dependency, timeout: Duration, retries: u32) -> Self {
        Self {
            dependency,
            breaker: Breaker::new(dependency.as_str(), 3, Duration::from_secs(2)),
            timeout,
            retries,
        }
    }

    pub fn is_open(&self) -> bool {
        self.breaker.is_open()
    }

    pub async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        let unavailable = |message: String| StorageError::Unavailable {
            dependency: self.dependency,
            message: format!("{what}: {message}"),
        };
        let mut attempt = 0;
        loop {
            if !self.breaker.allow() {
                return Err(unavailable("circuit open after repeated failures".into()));
            }
            let outcome = tokio::time::timeout(self.timeout, f())
                .await
                .unwrap_or_else(|_| {
                    Err(CallError::Transient(format!(
                        "timed out after {} ms",
                        self.timeout.as_millis()
                    )))
                });
            match outcome {
                Ok(v) => {
                    self.breaker.success();
                    return Ok(v);
                }
                Err(CallError::Permanent(e)) => return Err(e),
                Err(CallError::Transient(message)) => {
                    self.breaker.failure(&message);
                    metrics::counter!("dependency_errors_total", "dependency" => self.dependency.as_str())
                        .increment(1);
                    if attempt >= self.retries {
                        return Err(unavailable(message));
                    }
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }
}

/// Runs `f` until it succeeds, while its error is `retryable` (the server does not answer) and
/// `wait` has not passed, with a log line per attempt: at start-up a server may come up after
/// doc-rag (containers start in any order), and crash-looping would only hide why.
pub async fn wait_at_startup<T, F, Fut>(
    server: &str,
    wait: Duration,
    retryable: impl Fn(&StorageError) -> bool,
    mut f: F,
) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StorageError>>,
{
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(500);
    loop {
        match f().await {
            Err(e) if retryable(&e) && started.elapsed() + delay < wait => {
                tracing::warn!(
                    module = "storage",
                    server,
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    waited_secs = started.elapsed().as_secs(),
                    "{server} not reachable yet; waiting for it"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            other => return other,
        }
    }
}

/// 50 ms, 100 ms, 200 ms, … (at most 1 s), each scaled by a random factor in [0.5, 1.0) so
/// replicas that failed together do not retry together.
fn backoff(attempt: u32) -> Duration {
    let base = 50u64 << attempt.min(5).saturating_sub(1);
    let jitter = 0.5 + f64::from(getrandom::u32().unwrap_or(0) % 1000) / 2000.0;
    Duration::from_millis(((base.min(1000) as f64) * jitter) as u64)
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
