//! Rate limits and login lockouts on Redis (the server on 127.0.0.1:6379) are shared by every
//! replica; with Redis unreachable each replica falls back to its own in-process limits.

mod common;

use std::sync::Arc;
use std::time::Duration;

use doc_rag::config::Settings;
use doc_rag::security::limits::{Dimension, RateClass, RateLimiter, RateLimits};
use doc_rag::security::redis_limits::RedisLimiter;
use doc_rag::storage::redis::RedisClient;

fn limiter(url: &str, prefix: &str) -> RedisLimiter {
    let settings = Settings::defaults_with(&[
        ("security.login_max_failures".into(), "3".into()),
        ("security.login_lockout_secs".into(), "60".into()),
    ])
    .unwrap()
    .security;
    let redis = RedisClient::new(url, 4, Duration::from_millis(300)).unwrap();
    RedisLimiter::new(Arc::new(redis), prefix, &settings)
}

fn five_per_minute() -> RateLimits {
    RateLimits {
        query_user: "5/m".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn two_replicas_share_one_budget_and_one_lockout() {
    let prefix = format!("docrag-test-{}:", uuid::Uuid::new_v4().simple());
    let (a, b) = (
        limiter(&common::redis_url(), &prefix),
        limiter(&common::redis_url(), &prefix),
    );
    for l in [&a, &b] {
        l.configure(&five_per_minute()).await.unwrap();
    }
    let mut allowed = 0;
    for i in 0..8 {
        let replica = if i % 2 == 0 { &a } else { &b };
        if replica
            .check(RateClass::Query, Dimension::User, "user:alice")
            .await
            .is_ok()
        {
            allowed += 1;
        }
    }
    assert_eq!(
        allowed, 5,
        "five per minute across both replicas, not per replica"
    );
    let wait = a
        .check(RateClass::Query, Dimension::User, "user:alice")
        .await
        .expect_err("over the limit");
    assert!(
        wait > Duration::from_secs(5) && wait <= Duration::from_secs(12),
        "{wait:?}"
    );
    assert!(
        a.check(RateClass::Query, Dimension::User, "user:bob")
            .await
            .is_ok(),
        "per caller"
    );
    assert!(
        a.check(RateClass::Ingest, Dimension::User, "user:alice")
            .await
            .is_ok(),
        "unlimited class"
    );

    // Failed logins counted on either replica lock the account out on both.
    for replica in [&a, &b, &a] {
        replica.login_failed(&["account:carol"]).await;
    }
    assert!(b.login_allowed(&["account:carol"]).await.is_err());
    b.login_succeeded("account:carol").await;
    assert!(a.login_allowed(&["account:carol"]).await.is_ok());
}

#[tokio::test]
async fn without_redis_each_replica_limits_on_its_own() {
    let port = common::free_port();
    let dead = format!("redis://127.0.0.1:{port}");
    let l = limiter(&dead, "docrag-test-dead:");
    l.configure(&five_per_minute()).await.unwrap();
    let started = std::time::Instant::now();
    let allowed = {
        let mut n = 0;
        for _ in 0..8 {
            if l.check(RateClass::Query, Dimension::User, "user:dave")
                .await
                .is_ok()
            {
                n += 1;
            }
        }
        n
    };
    assert_eq!(allowed, 5, "the in-process fallback still limits");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    for _ in 0..3 {
        l.login_failed(&["account:erin"]).await;
    }
    assert!(l.login_allowed(&["account:erin"]).await.is_err());
}
