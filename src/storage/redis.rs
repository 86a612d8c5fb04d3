//! The one connection to Redis a process keeps: a pool, a per-call timeout and a circuit breaker,
//! shared by every component that uses Redis (the result cache, the rate limiter), so one outage
//! trips one breaker and costs one timeout per cooldown, not one per component and request.

use std::time::Duration;

use deadpool_redis::redis::io::tcp::TcpSettings;
use deadpool_redis::redis::{IntoConnectionInfo, RedisResult};
use deadpool_redis::{Connection, Manager, Pool, Runtime};

use super::StorageError;
use super::breaker::Breaker;

pub struct RedisClient {
    pool: Pool,
    timeout: Duration,
    breaker: Breaker,
}

impl RedisClient {
    /// Builds the pool; it connects lazily, so a Redis that is down at start-up only degrades.
    pub fn new(url: &str, pool_size: usize, timeout: Duration) -> Result<Self, StorageError> {
        let bad = |e: &dyn std::fmt::Display| StorageError::BadUrl(format!("cache.redis_url: {e}"));
        // TCP_NODELAY: the redis crate leaves Nagle on, and a pipelined command then waits for
        // the server's delayed ACK (measured: +12 ms per search on loopback).
        let info = url
            .into_connection_info()
            .map_err(|e| bad(&e))?
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let manager = Manager::new(info).map_err(|e| bad(&e))?;
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| bad(&e))?;
        Ok(Self {
            pool,
            timeout,
            breaker: Breaker::new("redis", 3, Duration::from_secs(2)),
        })
    }

    /// Runs `f` on a pooled connection under the timeout and the breaker; `None` when Redis was
    /// skipped (breaker open) or failed, which callers answer with their fallback.
    pub async fn call<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        if !self.breaker.allow() {
            return None;
        }
        let outcome = tokio::time::timeout(self.timeout, async {
            let conn = self.pool.get().await.map_err(|e| e.to_string())?;
            f(conn).await.map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
        match outcome {
            Ok(v) => {
                self.breaker.success();
                Some(v)
            }
            Err(e) => {
                self.breaker.failure(&e);
                None
            }
        }
    }
}
