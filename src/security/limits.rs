//! Rate limits (GCRA, per client address and per user or API key, for auth, ingest and query
//! routes) and failed-login lockout, behind [`RateLimiter`] so a shared (Redis) implementation can
//! replace the in-process one without touching the guard.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use moka::sync::Cache as MokaCache;
use serde::{Deserialize, Serialize};

use crate::config::SecuritySettings;

/// Which limit a route counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateClass {
    Auth,
    Ingest,
    Query,
}

/// Whom a limit counts: the client address or the authenticated principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    Ip,
    User,
}

/// Every limit, as "N/s", "N/m" or "N/h" (a burst of N, refilled over the period); "" for none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default)]
    pub auth_ip: String,
    #[serde(default)]
    pub auth_user: String,
    #[serde(default)]
    pub ingest_ip: String,
    #[serde(default)]
    pub ingest_user: String,
    #[serde(default)]
    pub query_ip: String,
    #[serde(default)]
    pub query_user: String,
}

impl RateLimits {
    pub fn from_settings(s: &SecuritySettings) -> Self {
        RateLimits {
            auth_ip: s.rate_limit_auth_ip.clone(),
            auth_user: s.rate_limit_auth_user.clone(),
            ingest_ip: s.rate_limit_ingest_ip.clone(),
            ingest_user: s.rate_limit_ingest_user.clone(),
            query_ip: s.rate_limit_query_ip.clone(),
            query_user: s.rate_limit_query_user.clone(),
        }
    }

    fn entries(&self) -> [((RateClass, Dimension), &str, &'static str); 6] {
        use Dimension::*;
        use RateClass::*;
        [
            ((Auth, Ip), &self.auth_ip, "auth_ip"),
            ((Auth, User), &self.auth_user, "auth_user"),
            ((Ingest, Ip), &self.ingest_ip, "ingest_ip"),
            ((Ingest, User), &self.ingest_user, "ingest_user"),
            ((Query, Ip), &self.query_ip, "query_ip"),
            ((Query, User), &self.query_user, "query_user"),
        ]
    }

    /// Each limit's slot and spec.
    pub fn slots(&self) -> Vec<((RateClass, Dimension), &str)> {
        self.entries()
            .into_iter()
            .map(|(slot, spec, _)| (slot, spec))
            .collect()
    }

    pub fn validate(&self) -> Result<(), String> {
        for (_, spec, name) in self.entries() {
            parse_rate(spec).map_err(|e| format!("rate limit {name}: {e}"))?;
        }
        Ok(())
    }
}

/// "N/s" | "N/m" | "N/h" → N per period; "" → no limit.
pub fn parse_rate(spec: &str) -> Result<Option<(NonZeroU32, Duration)>, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(None);
    }
    let bad = || format!("{spec:?} is not N/s, N/m or N/h");
    let (n, unit) = spec.split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let n = NonZeroU32::new(n).ok_or_else(bad)?;
    let period = match unit.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    Ok(Some((n, period)))
}

fn quota(n: NonZeroU32, period: Duration) -> Option<Quota> {
    Quota::with_period(period / n.get()).map(|q| q.allow_burst(n))
}

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Counts one request; `Err(wait)` when over the limit.
    async fn check(
        &self,
        class: RateClass,
        dimension: Dimension,
        key: &str,
    ) -> Result<(), Duration>;
    /// Applies new limits (an admin changed them, here or on another replica).
    async fn configure(&self, limits: &RateLimits) -> Result<(), String>;
    /// `Err(wait)` while any of `keys` is locked out after failed logins.
    async fn login_allowed(&self, keys: &[&str]) -> Result<(), Duration>;
    async fn login_failed(&self, keys: &[&str]);
    async fn login_succeeded(&self, key: &str);
    /// Frees memory held for keys not seen for a while.
    async fn forget_idle(&self);
}

#[derive(Debug)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
}

/// One configured limit: its spec (to keep counters when it did not change) and its counters.
type Slot = (String, Arc<DefaultKeyedRateLimiter<String>>);

/// In-process limits (governor) and lockouts (moka).
pub struct GovernorLimiter {
    limiters: RwLock<HashMap<(RateClass, Dimension), Slot>>,
    failures: MokaCache<String, Arc<Mutex<Failures>>>,
    account_max: u32,
    ip_max: u32,
    lockout: Duration,
}

impl GovernorLimiter {
    pub fn new(s: &SecuritySettings) -> Self {
        let lockout = Duration::from_secs(s.login_lockout_secs.max(1));
        GovernorLimiter {
            limiters: RwLock::new(HashMap::new()),
            failures: MokaCache::builder()
                .max_capacity(100_000)
                .time_to_idle(lockout)
                .build(),
            account_max: s.login_max_failures.max(1),
            ip_max: s.login_ip_max_failures.max(1),
            lockout,
        }
    }

    fn max_for(&self, key: &str) -> u32 {
        if key.starts_with("ip:") {
            self.ip_max
        } else {
            self.account_max
        }
    }
}

#[async_trait]
impl RateLimiter for GovernorLimiter {
    async fn check(
        &self,
        class: RateClass,
        dimension: Dimension,
        key: &str,
    ) -> Result<(), Duration> {
        let limiter = match self.limiters.read() {
            Ok(map) => match map.get(&(class, dimension)) {
                Some((_, l)) => l.clone(),
                None => return Ok(()),
            },
            Err(_) => return Ok(()),
        };
        limiter
            .check_key(&key.to_string())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    async fn configure(&self, limits: &RateLimits) -> Result<(), String> {
        limits.validate()?;
        let mut map = self
            .limiters
            .write()
            .map_err(|_| "rate limiter lock poisoned")?;
        for (slot, spec, _) in limits.entries() {
            // An unchanged limit keeps its counters.
            if map.get(&slot).is_some_and(|(s, _)| s == spec) {
                continue;
            }
            match parse_rate(spec)?.and_then(|(n, p)| quota(n, p)) {
                Some(q) => {
                    map.insert(
                        slot,
                        (spec.to_string(), Arc::new(governor::RateLimiter::keyed(q))),
                    );
                }
                None => {
                    map.remove(&slot);
                }
            }
        }
        Ok(())
    }

    async fn login_allowed(&self, keys: &[&str]) -> Result<(), Duration> {
        let now = Instant::now();
        for key in keys {
            if let Some(entry) = self.failures.get(*key)
                && let Ok(f) = entry.lock()
                && let Some(until) = f.locked_until
                && until > now
            {
                return Err(until - now);
            }
        }
        Ok(())
    }

    async fn login_failed(&self, keys: &[&str]) {
        let now = Instant::now();
        for key in keys {
            let entry = self.failures.get_with(key.to_string(), || {
                Arc::new(Mutex::new(Failures {
                    count: 0,
                    locked_until: None,
                }))
            });
            if let Ok(mut f) = entry.lock() {
                if f.locked_until.is_some_and(|u| u <= now) {
                    *f = Failures {
                        count: 0,
                        locked_until: None,
                    };
                }
                f.count += 1;
                if f.count >= self.max_for(key) {
                    f.locked_until = Some(now + self.lockout);
                }
            }
        }
    }

    async fn login_succeeded(&self, key: &str) {
        self.failures.invalidate(key);
    }

    async fn forget_idle(&self) {
        if let Ok(map) = self.limiters.read() {
            for (_, limiter) in map.values() {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("").unwrap(), None);
        let (n, p) = parse_rate("30/m").unwrap().unwrap();
        assert_eq!((n.get(), p), (30, Duration::from_secs(60)));
        for bad in ["30", "0/s", "x/s", "3/d", "-1/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn limits_count_per_key_and_class_and_can_change_at_run_time() {
        let settings = Settings::defaults_with(&[]).unwrap().security;
        let l = GovernorLimiter::new(&settings);
        let limits = RateLimits {
            query_user: "3/m".into(),
            ..RateLimits::default()
        };
        l.configure(&limits).await.unwrap();
        for _ in 0..3 {
            assert!(
                l.check(RateClass::Query, Dimension::User, "user:a")
                    .await
                    .is_ok()
            );
        }
        let wait = l
            .check(RateClass::Query, Dimension::User, "user:a")
            .await
            .unwrap_err();
        assert!(
            wait > Duration::from_secs(10) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(
            l.check(RateClass::Query, Dimension::User, "user:b")
                .await
                .is_ok()
        );
        assert!(
            l.check(RateClass::Ingest, Dimension::User, "user:a")
                .await
                .is_ok()
        );
        l.configure(&RateLimits::default()).await.unwrap();
        assert!(
            l.check(RateClass::Query, Dimension::User, "user:a")
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn repeated_login_failures_lock_the_account_and_success_clears_it() {
        let mut settings = Settings::defaults_with(&[]).unwrap().security;
        settings.login_max_failures = 3;
        let l = GovernorLimiter::new(&settings);
        for _ in 0..2 {
            l.login_failed(&["acct:a", "ip:1"]).await;
        }
        assert!(l.login_allowed(&["acct:a"]).await.is_ok());
        l.login_succeeded("acct:a").await;
        for _ in 0..3 {
            l.login_failed(&["acct:a", "ip:1"]).await;
        }
        let wait = l.login_allowed(&["acct:a", "ip:1"]).await.unwrap_err();
        assert!(wait > Duration::from_secs(800));
        assert!(
            l.login_allowed(&["acct:b", "ip:1"]).await.is_ok(),
            "the address is below its own limit"
        );
    }
}
