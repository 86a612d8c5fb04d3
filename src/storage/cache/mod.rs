//! Query-result cache. Keys are scoped by collection so a change to one collection invalidates
//! only its entries (and the entries of searches that spanned every collection).
//!
//! Invalidation is race-free through generations: a search reads the scope's generation before it
//! runs and stores its result tagged with it; every invalidation bumps the generation, and an
//! entry whose tag is no longer current is never served. So a search that was already running
//! when a document was deleted cannot put the deleted text back.
//!
//! The in-process implementation ([`MemoryCache`]) uses moka, bounded by bytes (a weigher), not
//! entry count: one result of 100 long chunks weighs what a thousand short ones do. Replicas share
//! [`redis::RedisCache`] instead, so they see each other's entries and invalidations.

pub mod redis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use moka::future::Cache as MokaCache;

/// The collection scope of a search over every collection.
pub const ALL_COLLECTIONS: &str = "*";

#[async_trait]
pub trait Cache: Send + Sync + 'static {
    async fn get(&self, collection: &str, key: &str) -> Option<String>;
    /// The scope's generation now; read it before computing a value to `put`.
    async fn generation(&self, collection: &str) -> u64;
    /// Stores `value` unless the scope was invalidated since `generation` was read.
    async fn put(&self, collection: &str, key: &str, value: String, generation: u64);
    /// Drops entries of `collection` and of searches over all collections.
    async fn invalidate_collection(&self, collection: &str);
    /// `Err` says why the cache is not serving (the service still works without it).
    async fn health(&self) -> Result<(), String> {
        Ok(())
    }
    fn backend(&self) -> &'static str;
}

pub struct MemoryCache {
    inner: MokaCache<(String, String), (u64, String)>,
    generations: Mutex<HashMap<String, u64>>,
    /// The generation of the all-collections scope: bumped by every invalidation.
    all: AtomicU64,
}

impl MemoryCache {
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        let inner = MokaCache::builder()
            .max_capacity(max_bytes)
            .weigher(
                |(scope, key): &(String, String), (_, value): &(u64, String)| {
                    // Strings plus a rough fixed cost per entry (hash table slot, timers).
                    let bytes = scope.len() + key.len() + value.len() + 96;
                    u32::try_from(bytes).unwrap_or(u32::MAX)
                },
            )
            .time_to_live(ttl)
            .support_invalidation_closures()
            .build();
        Self {
            inner,
            generations: Mutex::new(HashMap::new()),
            all: AtomicU64::new(0),
        }
    }

    fn current(&self, collection: &str) -> u64 {
        if collection == ALL_COLLECTIONS {
            return self.all.load(Ordering::SeqCst);
        }
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(collection)
            .copied()
            .unwrap_or(0)
    }

    /// Bytes held, as the weigher counts them (after pending maintenance).
    pub async fn weighted_size(&self) -> u64 {
        self.inner.run_pending_tasks().await;
        self.inner.weighted_size()
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, collection: &str, key: &str) -> Option<String> {
        let (generation, value) = self
            .inner
            .get(&(collection.to_string(), key.to_string()))
            .await?;
        (generation == self.current(collection)).then_some(value)
    }

    async fn generation(&self, collection: &str) -> u64 {
        self.current(collection)
    }

    async fn put(&self, collection: &str, key: &str, value: String, generation: u64) {
        if generation != self.current(collection) {
            return;
        }
        self.inner
            .insert(
                (collection.to_string(), key.to_string()),
                (generation, value),
            )
            .await;
    }

    async fn invalidate_collection(&self, collection: &str) {
        // Generations first: from here on, no entry computed before is served.
        *self
            .generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(collection.to_string())
            .or_default() += 1;
        self.all.fetch_add(1, Ordering::SeqCst);
        let collection = collection.to_string();
        // Fails only when closures are not enabled, which `new` always does.
        let _ = self
            .inner
            .invalidate_entries_if(move |(c, _), _| *c == collection || c == ALL_COLLECTIONS);
        self.inner.run_pending_tasks().await;
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn put_now(cache: &MemoryCache, scope: &str, key: &str, value: &str) {
        let g = cache.generation(scope).await;
        cache.put(scope, key, value.into(), g).await;
    }

    #[tokio::test]
    async fn invalidation_is_scoped_to_the_collection_and_global_searches() {
        let cache = MemoryCache::new(1 << 20, Duration::from_secs(60));
        put_now(&cache, "a", "q", "1").await;
        put_now(&cache, "b", "q", "2").await;
        put_now(&cache, ALL_COLLECTIONS, "q", "3").await;
        cache.invalidate_collection("a").await;
        assert_eq!(cache.get("a", "q").await, None);
        assert_eq!(cache.get("b", "q").await.as_deref(), Some("2"));
        assert_eq!(cache.get(ALL_COLLECTIONS, "q").await, None);
    }

    #[tokio::test]
    async fn a_result_computed_before_an_invalidation_is_never_served() {
        let cache = MemoryCache::new(1 << 20, Duration::from_secs(60));
        for scope in ["a", ALL_COLLECTIONS] {
            // A search starts, a delete lands while it runs, then the search stores its result.
            let before = cache.generation(scope).await;
            cache.invalidate_collection("a").await;
            cache.put(scope, "q", "stale".into(), before).await;
            assert_eq!(cache.get(scope, "q").await, None, "{scope}");
            // The next search stores and serves normally.
            put_now(&cache, scope, "q", "fresh").await;
            assert_eq!(cache.get(scope, "q").await.as_deref(), Some("fresh"));
        }
    }

    #[tokio::test]
    async fn the_cache_is_bounded_by_bytes() {
        let cache = MemoryCache::new(64 * 1024, Duration::from_secs(60));
        let big = "x".repeat(4096);
        for i in 0..200 {
            put_now(&cache, "a", &format!("q{i}"), &big).await;
        }
        let size = cache.weighted_size().await;
        assert!(size <= 64 * 1024, "{size} bytes held");
        assert!(size > 32 * 1024, "it does hold entries: {size}");
    }
}
