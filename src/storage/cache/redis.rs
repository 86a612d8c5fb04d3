//! The shared cache: Redis (`cache.redis_url`), so every replica serves and invalidates the same
//! entries. Generations live in Redis too (`INCR` per collection and for the all-collections
//! scope): an invalidation on one replica is seen by every other at its next read, and each
//! entry carries the generation it was computed under, so a stale entry is never served.
//!
//! Redis is an optimisation, never a dependency of correctness or availability: every call has
//! a timeout, a circuit breaker skips Redis while it is down (searches are computed, not cached),
//! and an invalidation that could not be written is kept and retried, before anything is served
//! from the cache again.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{self, AsyncCommands};
use sha2::{Digest, Sha256};

use super::{ALL_COLLECTIONS, Cache};
use crate::storage::redis::RedisClient;

/// Returned by `generation` when Redis cannot say: `put` then stores nothing.
const UNKNOWN: u64 = u64::MAX;
/// Larger results are not cached (they would crowd out many small ones).
const MAX_VALUE_BYTES: usize = 1 << 20;

pub struct RedisCache {
    redis: Arc<RedisClient>,
    ttl: Duration,
    prefix: String,
    /// Collections whose invalidation has not reached Redis yet.
    pending: Mutex<BTreeSet<String>>,
}

impl RedisCache {
    pub fn new(redis: Arc<RedisClient>, ttl: Duration) -> Self {
        Self {
            redis,
            ttl,
            prefix: "docrag:".into(),
            pending: Mutex::new(BTreeSet::new()),
        }
    }

    /// Keys under another prefix than `docrag:` (tests sharing one Redis; several deployments
    /// sharing one server).
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    fn gen_key(&self, collection: &str) -> String {
        format!("{}gen:{collection}", self.prefix)
    }

    fn entry_key(&self, collection: &str, key: &str) -> String {
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        format!("{}c:{collection}:{digest}", self.prefix)
    }

    /// Writes invalidations that failed earlier. False while some are still unwritten.
    async fn flush_pending(&self) -> bool {
        let pending: Vec<String> = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        for collection in pending {
            if self.bump(&collection).await {
                self.pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&collection);
            } else {
                return false;
            }
        }
        true
    }

    async fn bump(&self, collection: &str) -> bool {
        let (one, all) = (self.gen_key(collection), self.gen_key(ALL_COLLECTIONS));
        self.redis
            .call(|mut c| async move {
                redis::pipe()
                    .atomic()
                    .incr(&one, 1)
                    .ignore()
                    .incr(&all, 1)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
            .is_some()
    }
}

fn parse_generation(raw: Option<String>) -> u64 {
    raw.and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, collection: &str, key: &str) -> Option<String> {
        if !self.flush_pending().await {
            return None;
        }
        let keys = [self.gen_key(collection), self.entry_key(collection, key)];
        let (generation, entry): (Option<String>, Option<String>) = self
            .redis
            .call(|mut c| async move {
                let values: Vec<Option<String>> = c.mget(&keys).await?;
                let mut values = values.into_iter();
                Ok((values.next().flatten(), values.next().flatten()))
            })
            .await?;
        let (tag, value) = entry?
            .split_once(':')
            .map(|(t, v)| (t.to_string(), v.to_string()))?;
        (tag.parse::<u64>().ok()? == parse_generation(generation)).then_some(value)
    }

    async fn generation(&self, collection: &str) -> u64 {
        if !self.flush_pending().await {
            return UNKNOWN;
        }
        let key = self.gen_key(collection);
        self.redis
            .call(|mut c| async move { c.get::<_, Option<String>>(&key).await })
            .await
            .map(parse_generation)
            .unwrap_or(UNKNOWN)
    }

    async fn put(&self, collection: &str, key: &str, value: String, generation: u64) {
        if generation == UNKNOWN || value.len() > MAX_VALUE_BYTES {
            return;
        }
        let entry = self.entry_key(collection, key);
        let ttl = self.ttl.as_secs().max(1);
        let tagged = format!("{generation}:{value}");
        self.redis
            .call(|mut c| async move { c.set_ex::<_, _, ()>(&entry, tagged, ttl).await })
            .await;
    }

    async fn invalidate_collection(&self, collection: &str) {
        if !self.bump(collection).await {
            // Remembered and written before the cache serves anything again.
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(collection.to_string());
        }
    }

    async fn health(&self) -> Result<(), String> {
        let pong = self
            .redis
            .call(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await;
        match pong {
            Some(_) if self.flush_pending().await => Ok(()),
            Some(_) => Err("invalidations are waiting to be written".into()),
            None => Err("redis does not answer; serving without the cache".into()),
        }
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
