//! Backoff for durable background work (ingestion jobs, webhook deliveries): how long a failed
//! attempt waits before the next. One rule for every queue, so an outage of a shared dependency
//! spreads every queue's retries the same way.

use std::time::Duration;

/// The wait after failed attempt number `attempt` (1-based): doubling from `base_ms` up to
/// `max_ms`, less a random part of up to half, so work that failed together (an outage) does not
/// all come back at once.
pub fn jittered_backoff(attempt: i32, base_ms: u64, max_ms: u64) -> Duration {
    let exponent = attempt.clamp(1, 31) as u32 - 1;
    let full = base_ms.saturating_mul(1u64 << exponent.min(30)).min(max_ms);
    let mut bytes = [0u8; 8];
    let jitter = match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes) % (full / 2 + 1),
        Err(_) => 0,
    };
    Duration::from_millis(full - jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_up_to_half_taken_off() {
        for (attempt, full) in [
            (1, 1000),
            (2, 2000),
            (3, 4000),
            (4, 8000),
            (5, 10000),
            (40, 10000),
            (-3, 1000),
        ] {
            for _ in 0..50 {
                let d = jittered_backoff(attempt, 1000, 10_000).as_millis() as u64;
                assert!((full / 2..=full).contains(&d), "attempt {attempt}: {d} ms");
            }
        }
        let spread: std::collections::HashSet<u128> = (0..50)
            .map(|_| jittered_backoff(4, 1000, 10_000).as_millis())
            .collect();
        assert!(spread.len() > 10, "jittered: {spread:?}");
    }
}
