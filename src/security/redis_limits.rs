//! Rate limits and login lockouts shared by every replica, in Redis (`cache.redis_url`).
//!
//! Each limit is GCRA, evaluated atomically by a Lua script with Redis's own clock: one key per
//! (class, dimension, caller) holding the theoretical arrival time. So N replicas together allow
//! what one would, not N times as much. Failed logins are counted and locked out in Redis too.
//!
//! When Redis is unreachable (timeout, breaker open), every call falls back to the in-process
//! limiter: limits then hold per replica, which is looser but never fails a request.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{self, Script};

use super::limits::{Dimension, GovernorLimiter, RateClass, RateLimiter, RateLimits, parse_rate};
use crate::config::SecuritySettings;
use crate::storage::redis::RedisClient;

/// GCRA. KEYS[1]: the caller's key. ARGV: emission interval (ms), burst tolerance (ms).
/// Returns 0 when allowed, else the milliseconds to wait.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > burst then return tat - now - burst end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now + 1000)
return 0
"#;

/// Failed logins. KEYS[1]: counter, KEYS[2]: lock. ARGV: max failures, lockout (ms).
const FAILED: &str = r#"
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if n >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], 1, 'PX', ARGV[2])
  redis.call('DEL', KEYS[1])
end
return n
"#;

pub struct RedisLimiter {
    redis: Arc<RedisClient>,
    prefix: String,
    fallback: GovernorLimiter,
    /// (emission interval, burst tolerance) per configured limit.
    limits: RwLock<HashMap<(RateClass, Dimension), (u64, u64)>>,
    gcra: Script,
    failed: Script,
    account_max: u32,
    ip_max: u32,
    lockout: Duration,
}

impl RedisLimiter {
    pub fn new(redis: Arc<RedisClient>, prefix: &str, s: &SecuritySettings) -> Self {
        Self {
            redis,
            prefix: format!("{prefix}rl:"),
            fallback: GovernorLimiter::new(s),
            limits: RwLock::new(HashMap::new()),
            gcra: Script::new(GCRA),
            failed: Script::new(FAILED),
            account_max: s.login_max_failures.max(1),
            ip_max: s.login_ip_max_failures.max(1),
            lockout: Duration::from_secs(s.login_lockout_secs.max(1)),
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

fn slot_name(class: RateClass, dimension: Dimension) -> &'static str {
    match (class, dimension) {
        (RateClass::Auth, Dimension::Ip) => "auth_ip",
        (RateClass::Auth, Dimension::User) => "auth_user",
        (RateClass::Ingest, Dimension::Ip) => "ingest_ip",
        (RateClass::Ingest, Dimension::User) => "ingest_user",
        (RateClass::Query, Dimension::Ip) => "query_ip",
        (RateClass::Query, Dimension::User) => "query_user",
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn check(
        &self,
        class: RateClass,
        dimension: Dimension,
        key: &str,
    ) -> Result<(), Duration> {
        let limit = self
            .limits
            .read()
            .ok()
            .and_then(|m| m.get(&(class, dimension)).copied());
        let Some((interval, burst)) = limit else {
            return Ok(());
        };
        let redis_key = format!("{}{}:{key}", self.prefix, slot_name(class, dimension));
        let script = &self.gcra;
        let wait = self
            .redis
            .call(|mut c| async move {
                script
                    .key(redis_key)
                    .arg(interval)
                    .arg(burst)
                    .invoke_async::<u64>(&mut c)
                    .await
            })
            .await;
        match wait {
            Some(0) => Ok(()),
            Some(ms) => Err(Duration::from_millis(ms)),
            None => self.fallback.check(class, dimension, key).await,
        }
    }

    async fn configure(&self, limits: &RateLimits) -> Result<(), String> {
        self.fallback.configure(limits).await?;
        let mut map = HashMap::new();
        for (slot, spec) in limits.slots() {
            if let Some((n, period)) = parse_rate(spec)? {
                let interval = (period.as_millis() as u64 / n.get() as u64).max(1);
                map.insert(slot, (interval, interval * (n.get() as u64 - 1)));
            }
        }
        *self
            .limits
            .write()
            .map_err(|_| "rate limiter lock poisoned")? = map;
        Ok(())
    }

    async fn login_allowed(&self, keys: &[&str]) -> Result<(), Duration> {
        let locks: Vec<String> = keys
            .iter()
            .map(|k| format!("{}lock:{k}", self.prefix))
            .collect();
        let ttls = self
            .redis
            .call(|mut c| async move {
                let mut pipe = redis::pipe();
                for k in &locks {
                    pipe.cmd("PTTL").arg(k);
                }
                pipe.query_async::<Vec<i64>>(&mut c).await
            })
            .await;
        match ttls {
            Some(ttls) => match ttls.into_iter().max() {
                Some(ms) if ms > 0 => Err(Duration::from_millis(ms as u64)),
                _ => Ok(()),
            },
            None => self.fallback.login_allowed(keys).await,
        }
    }

    async fn login_failed(&self, keys: &[&str]) {
        let lockout = self.lockout.as_millis() as u64;
        for key in keys {
            let (count, lock) = (
                format!("{}fail:{key}", self.prefix),
                format!("{}lock:{key}", self.prefix),
            );
            let max = self.max_for(key);
            let script = &self.failed;
            let written = self
                .redis
                .call(|mut c| async move {
                    script
                        .key(count)
                        .key(lock)
                        .arg(max)
                        .arg(lockout)
                        .invoke_async::<i64>(&mut c)
                        .await
                })
                .await;
            if written.is_none() {
                self.fallback.login_failed(&[key]).await;
            }
        }
    }

    async fn login_succeeded(&self, key: &str) {
        let keys = [
            format!("{}fail:{key}", self.prefix),
            format!("{}lock:{key}", self.prefix),
        ];
        self.redis
            .call(
                |mut c| async move { redis::cmd("DEL").arg(&keys).query_async::<()>(&mut c).await },
            )
            .await;
        self.fallback.login_succeeded(key).await;
    }

    async fn forget_idle(&self) {
        // Redis keys expire by themselves; only the fallback holds memory.
        self.fallback.forget_idle().await;
    }
}
