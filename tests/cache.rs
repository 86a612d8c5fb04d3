//! One behaviour suite for the result cache, run on every backend: the in-process cache and Redis
//! (the server on 127.0.0.1:6379, see scripts/ensure-services.sh). Plus what Redis adds: replicas
//! share entries and invalidations, and a Redis that goes away only degrades the cache.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{RedisServer, redis_url};

use doc_rag::storage::Cache;
use doc_rag::storage::cache::redis::RedisCache;
use doc_rag::storage::cache::{ALL_COLLECTIONS, MemoryCache};
use doc_rag::storage::redis::RedisClient;

/// A connection of its own, as each replica has.
fn client(url: &str) -> Arc<RedisClient> {
    Arc::new(RedisClient::new(url, 4, Duration::from_millis(500)).unwrap())
}

fn redis(url: &str) -> RedisCache {
    RedisCache::new(client(url), Duration::from_secs(60))
        .with_prefix(&format!("docrag-test-{}:", uuid::Uuid::new_v4().simple()))
}

async fn put_now(cache: &dyn Cache, scope: &str, key: &str, value: &str) {
    let g = cache.generation(scope).await;
    cache.put(scope, key, value.into(), g).await;
}

async fn suite(cache: &dyn Cache) {
    assert!(cache.health().await.is_ok());
    assert_eq!(cache.get("a", "q").await, None);
    put_now(cache, "a", "q", "1").await;
    put_now(cache, "b", "q", "2").await;
    put_now(cache, ALL_COLLECTIONS, "q", "3").await;
    assert_eq!(cache.get("a", "q").await.as_deref(), Some("1"));
    assert_eq!(cache.get("a", "other").await, None);

    // Invalidation is scoped to the collection and to searches over every collection.
    cache.invalidate_collection("a").await;
    assert_eq!(cache.get("a", "q").await, None);
    assert_eq!(cache.get("b", "q").await.as_deref(), Some("2"));
    assert_eq!(cache.get(ALL_COLLECTIONS, "q").await, None);

    // A result computed before an invalidation is never served.
    for scope in ["b", ALL_COLLECTIONS] {
        let before = cache.generation(scope).await;
        cache.invalidate_collection("b").await;
        cache.put(scope, "late", "stale".into(), before).await;
        assert_eq!(cache.get(scope, "late").await, None, "{scope}");
    }
    put_now(cache, "b", "late", "fresh").await;
    assert_eq!(cache.get("b", "late").await.as_deref(), Some("fresh"));
}

#[tokio::test]
async fn memory_cache_behaviour() {
    suite(&MemoryCache::new(1 << 20, Duration::from_secs(60))).await;
}

#[tokio::test]
async fn redis_cache_behaviour() {
    let cache = redis(&redis_url());
    suite(&cache).await;
    assert_eq!(cache.backend(), "redis");
}

/// Two replicas (two caches on one Redis, same prefix): an entry one stores, the other serves; an
/// invalidation one makes, the other honours at once.
#[tokio::test]
async fn replicas_share_entries_and_invalidations() {
    let prefix = format!("docrag-test-{}:", uuid::Uuid::new_v4().simple());
    let make =
        || RedisCache::new(client(&redis_url()), Duration::from_secs(60)).with_prefix(&prefix);
    let (one, two) = (make(), make());
    put_now(&one, "c", "q", "from one").await;
    assert_eq!(two.get("c", "q").await.as_deref(), Some("from one"));
    two.invalidate_collection("c").await;
    assert_eq!(one.get("c", "q").await, None);
}

/// Redis stops: reads miss at once (no error, no long waits), writes are skipped, health says why;
/// when it is back, the cache serves again without a restart.
#[tokio::test]
async fn a_redis_outage_degrades_to_no_cache_and_recovers() {
    let (server, port) = RedisServer::start_on_free_port();
    let cache = redis(&format!("redis://127.0.0.1:{port}"));
    put_now(&cache, "c", "q", "cached").await;
    assert_eq!(cache.get("c", "q").await.as_deref(), Some("cached"));

    drop(server);
    let started = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(cache.get("c", "q").await, None);
        put_now(&cache, "c", "q2", "ignored").await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the breaker skips a dead Redis instead of waiting on every call: {:?}",
        started.elapsed()
    );
    assert!(cache.health().await.is_err());

    let _server = RedisServer::start(port);
    let mut healthy = false;
    for _ in 0..50 {
        if cache.health().await.is_ok() {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healthy, "the cache recovers without a restart");
    put_now(&cache, "c", "q", "fresh").await;
    assert_eq!(cache.get("c", "q").await.as_deref(), Some("fresh"));
}

/// An invalidation that cannot reach Redis (writes paused) is kept: nothing is served from the
/// cache until it has been written, so the entry it invalidated is never served.
#[tokio::test]
async fn an_invalidation_redis_missed_is_written_before_the_cache_serves_again() {
    let (_server, port) = RedisServer::start_on_free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let cache = redis(&url);
    put_now(&cache, "c", "q", "before the delete").await;
    let direct = deadpool_redis::redis::Client::open(url).unwrap();
    let mut conn = direct.get_multiplexed_async_connection().await.unwrap();
    let _: () = deadpool_redis::redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg("1500")
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .unwrap();
    cache.invalidate_collection("c").await;
    assert_eq!(
        cache.get("c", "q").await,
        None,
        "not served while the invalidation waits"
    );
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let mut served = Some(String::new());
    for _ in 0..50 {
        if cache.health().await.is_ok() {
            served = cache.get("c", "q").await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        served, None,
        "the invalidation reached Redis; the old entry is dead"
    );
}
