//! Query-result cache. Keys are scoped by collection so a change to one collection invalidates
//! only its entries (and the entries of searches that spanned every collection).
//!
//! The in-process implementation uses moka; a shared (Redis) implementation comes with the
//! production-backends work, since replicas must see each other's invalidations.

use std::time::Duration;

use async_trait::async_trait;
use moka::future::Cache as MokaCache;

/// The collection scope of a search over every collection.
pub const ALL_COLLECTIONS: &str = "*";

#[async_trait]
pub trait Cache: Send + Sync + 'static {
    async fn get(&self, collection: &str, key: &str) -> Option<String>;
    async fn put(&self, collection: &str, key: &str, value: String);
    /// Drops entries of `collection` and of searches over all collections.
    async fn invalidate_collection(&self, collection: &str);
    fn backend(&self) -> &'static str;
}

pub struct MemoryCache {
    inner: MokaCache<(String, String), String>,
}

impl MemoryCache {
    pub fn new(max_entries: u64, ttl: Duration) -> Self {
        let inner = MokaCache::builder()
            .max_capacity(max_entries)
            .time_to_live(ttl)
            .support_invalidation_closures()
            .build();
        Self { inner }
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, collection: &str, key: &str) -> Option<String> {
        self.inner
            .get(&(collection.to_string(), key.to_string()))
            .await
    }

    async fn put(&self, collection: &str, key: &str, value: String) {
        self.inner
            .insert((collection.to_string(), key.to_string()), value)
            .await;
    }

    async fn invalidate_collection(&self, collection: &str) {
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

    #[tokio::test]
    async fn invalidation_is_scoped_to_the_collection_and_global_searches() {
        let cache = MemoryCache::new(100, Duration::from_secs(60));
        cache.put("a", "q", "1".into()).await;
        cache.put("b", "q", "2".into()).await;
        cache.put(ALL_COLLECTIONS, "q", "3".into()).await;
        cache.invalidate_collection("a").await;
        assert_eq!(cache.get("a", "q").await, None);
        assert_eq!(cache.get("b", "q").await.as_deref(), Some("2"));
        assert_eq!(cache.get(ALL_COLLECTIONS, "q").await, None);
    }
}
