//! Redis connection pool set-up and the readiness probe, for a single node or a Redis Cluster
//! (chosen by REDIS_CLUSTER). Every key the services use carries a hash tag and every script
//! touches one slot, so the same code runs on both; the one difference callers see is that a
//! pipeline must not span slots on a cluster — [`Conn::each`] handles that case.
//!
//! Also the spans of Redis operations ([`traced`]), so a checkout's trace shows its Redis time.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use deadpool_redis::{PoolConfig, PoolError, Runtime, Timeouts};
use redis::aio::ConnectionLike;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Value};

use crate::config::CommonSettings;

#[derive(Clone)]
pub enum Pool {
    Single(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// A pooled connection of either kind; use it wherever a redis connection is expected.
pub enum Conn {
    Single(deadpool_redis::Connection),
    Cluster(deadpool_redis::cluster::Connection),
}

/// Pool occupancy, for the metrics.
pub struct Status {
    pub size: usize,
    pub available: usize,
    pub waiting: usize,
}

impl Pool {
    pub async fn get(&self) -> Result<Conn, PoolError> {
        Ok(match self {
            Pool::Single(p) => Conn::Single(p.get().await?),
            Pool::Cluster(p) => Conn::Cluster(p.get().await?),
        })
    }

    pub fn status(&self) -> Status {
        let s = match self {
            Pool::Single(p) => p.status(),
            Pool::Cluster(p) => p.status(),
        };
        Status {
            size: s.size,
            available: s.available,
            waiting: s.waiting,
        }
    }
}

impl Conn {
    /// Runs commands that may touch different slots: one pipeline on a single node, one
    /// command at a time on a cluster (a cluster pipeline goes to one node).
    pub async fn each<T: FromRedisValue>(&mut self, cmds: Vec<Cmd>) -> redis::RedisResult<Vec<T>> {
        match self {
            Conn::Single(_) => {
                let mut pipe = Pipeline::new();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query_async(self).await
            }
            Conn::Cluster(_) => {
                let mut out = Vec::with_capacity(cmds.len());
                for cmd in cmds {
                    out.push(cmd.query_async(self).await?);
                }
                Ok(out)
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

pub fn create(settings: &CommonSettings) -> Result<Pool, String> {
    let mut pool = PoolConfig::new(settings.redis_pool_size);
    // Bounded waits: a dead Redis must turn into a quick 503, not a request that hangs.
    pool.timeouts = Timeouts {
        wait: Some(Duration::from_secs(2)),
        create: Some(Duration::from_secs(2)),
        recycle: Some(Duration::from_secs(2)),
    };
    let fail = |e: String| format!("redis pool for {}: {e}", settings.redis_url);
    if settings.redis_cluster {
        let urls: Vec<String> = settings
            .redis_url
            .split(',')
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        let mut cfg = deadpool_redis::cluster::Config::from_urls(urls);
        cfg.pool = Some(pool);
        cfg.create_pool(Some(Runtime::Tokio1))
            .map(Pool::Cluster)
            .map_err(|e| fail(e.to_string()))
    } else {
        let mut cfg = deadpool_redis::Config::from_url(settings.redis_url.clone());
        cfg.pool = Some(pool);
        cfg.create_pool(Some(Runtime::Tokio1))
            .map(Pool::Single)
            .map_err(|e| fail(e.to_string()))
    }
}

/// True when Redis answers PING within a second.
pub async fn is_ready(pool: &Pool) -> bool {
    let ping = async {
        let mut conn = pool.get().await.ok()?;
        redis::cmd("PING").query_async::<String>(&mut conn).await.ok()
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), ping).await, Ok(Some(_)))
}

/// A client span for one Redis operation, `redis <operation>` (e.g. `redis idempotency.begin`,
/// `redis stock.reserve`), following the OpenTelemetry database conventions. Outside any span it
/// is a disabled span: background chores (lease renewals, sweeps) would otherwise make a
/// one-span trace each, every few seconds.
pub fn op_span(operation: &'static str) -> tracing::Span {
    if tracing::Span::current().is_none() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "redis",
        otel.name = %format_args!("redis {operation}"),
        otel.kind = "client",
        db.system.name = "redis",
        db.operation.name = operation,
    )
}

/// Runs one Redis operation (pool checkout included: a pool wait is Redis time too) in its
/// [`op_span`], marking the span when it fails. For the stores' scripts:
/// `redis_pool::traced("stock.reserve", async { … invoke_async … }).await`.
pub async fn traced<T, E, F>(operation: &'static str, op: F) -> Result<T, E>
where
    E: Display,
    F: Future<Output = Result<T, E>>,
{
    let span = op_span(operation);
    let result = tracing::Instrument::instrument(op, span.clone()).await;
    if let Err(e) = &result {
        crate::telemetry::mark_error(&span, "redis", e);
    }
    result
}
