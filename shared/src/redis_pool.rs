//! Redis connection pool set-up and the readiness probe.

use std::time::Duration;

use deadpool_redis::{Config, Pool, PoolConfig, Runtime, Timeouts};

use crate::config::CommonSettings;

pub fn create(settings: &CommonSettings) -> Result<Pool, String> {
    let mut cfg = Config::from_url(settings.redis_url.clone());
    let mut pool = PoolConfig::new(settings.redis_pool_size);
    // Bounded waits: a dead Redis must turn into a quick 503, not a request that hangs.
    pool.timeouts = Timeouts {
        wait: Some(Duration::from_secs(2)),
        create: Some(Duration::from_secs(2)),
        recycle: Some(Duration::from_secs(2)),
    };
    cfg.pool = Some(pool);
    cfg.create_pool(Some(Runtime::Tokio1))
        .map_err(|e| format!("redis pool for {}: {e}", settings.redis_url))
}

/// True when Redis answers PING within a second.
pub async fn is_ready(pool: &Pool) -> bool {
    let ping = async {
        let mut conn = pool.get().await.ok()?;
        redis::cmd("PING").query_async::<String>(&mut conn).await.ok()
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), ping).await, Ok(Some(_)))
}
