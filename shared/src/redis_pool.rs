//! Redis connection pool set-up and the readiness probe, for a single node or a Redis Cluster
//! (chosen by REDIS_CLUSTER). Every key the services use carries a hash tag and every script
//! touches one slot, so the same code runs on both; the one difference callers see is that a
//! pipeline must not span slots on a cluster — [`Conn::each`] handles that case.
//!
//! Also the spans of Redis operations ([`traced`]), so a checkout's trace shows its Redis time.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread::ThreadId;
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, RecycleError, RecycleResult};
pub use deadpool_redis::PoolError;
use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Cmd, FromRedisValue, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, PushKind,
    RedisError, RedisFuture, RedisResult, Value,
};

use crate::config::CommonSettings;

/// A connection handed out again within this long of its last use is not PINGed first.
///
/// deadpool-redis checks every connection it hands out with a PING round trip: a checkout,
/// which takes a connection for each of its scripts, paid a second round trip for each
/// (measured under load: 194 674 PINGs for 182 899 scripts, and 738 → 1 111 checkouts/s once
/// they were gone). A connection in steady use has just proven itself, and one that broke is
/// flagged ([`Pooled::failed`]) and never handed out again.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// A connection as the pool keeps it.
pub struct Pooled<C> {
    conn: C,
    /// Set when the connection broke: by a request that failed on it, or (single node) by the
    /// connection's own driver the moment its socket closed — so after a Redis restart no
    /// request is handed a dead connection, even one used a moment before.
    failed: Arc<AtomicBool>,
}

impl<C: ConnectionLike + Send> Pooled<C> {
    async fn command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let result = self.conn.req_packed_command(cmd).await;
        self.note(&result);
        result
    }

    async fn commands(&mut self, pipe: &Pipeline, offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        let result = self.conn.req_packed_commands(pipe, offset, count).await;
        self.note(&result);
        result
    }

    fn note<T>(&self, result: &RedisResult<T>) {
        if let Err(e) = result
            && (e.is_unrecoverable_error() || e.is_connection_dropped() || e.is_timeout())
        {
            self.failed.store(true, Ordering::Relaxed);
        }
    }

    /// The recycling decision that needs no round trip, if there is one.
    fn recycle_unchecked(&self, metrics: &Metrics) -> Option<RecycleResult<RedisError>> {
        if self.failed.load(Ordering::Relaxed) {
            Some(Err(RecycleError::message("the connection broke")))
        } else if metrics.last_used() < CHECK_IDLE_AFTER {
            Some(Ok(()))
        } else {
            None
        }
    }
}

/// Boxes a future the pool seldom runs (connecting, checking an idle connection). Unboxed, its
/// state is inlined into every `Pool::get` future, and so into every Redis operation's and
/// every handler's: a checkout's task grew to 16 KiB, and moving it on spawn showed in profiles.
fn rare<'a, T>(future: impl Future<Output = T> + Send + 'a) -> Pin<Box<dyn Future<Output = T> + Send + 'a>> {
    Box::pin(future)
}

/// Connections to one Redis node.
#[derive(Clone)]
pub struct NodeManager {
    client: redis::Client,
    response_timeout: Duration,
}

impl managed::Manager for NodeManager {
    type Type = Pooled<MultiplexedConnection>;
    type Error = RedisError;

    async fn create(&self) -> Result<Self::Type, RedisError> {
        let failed = Arc::new(AtomicBool::new(false));
        let flag = failed.clone();
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(self.response_timeout))
            .set_push_sender(move |info: PushInfo| {
                if info.kind == PushKind::Disconnection {
                    flag.store(true, Ordering::Relaxed);
                }
                Ok::<(), redis::aio::SendError>(())
            });
        // Boxed (see `rare`): connecting is a 4 KiB future.
        let conn = rare(self.client.get_multiplexed_async_connection_with_config(&config)).await?;
        Ok(Pooled { conn, failed })
    }

    async fn recycle(&self, pooled: &mut Self::Type, metrics: &Metrics) -> RecycleResult<RedisError> {
        if let Some(decision) = pooled.recycle_unchecked(metrics) {
            return decision;
        }
        let _: String = rare(redis::cmd("PING").query_async(&mut pooled.conn)).await?;
        Ok(())
    }
}

/// Connections to a Redis Cluster, which follow the cluster's slots and reconnect to its nodes
/// by themselves. Ours rather than deadpool-redis's manager, whose client cannot be given a
/// response timeout (without one, a stalled node would hold requests until their callers give up).
#[derive(Clone)]
pub struct ClusterManager {
    client: redis::cluster::ClusterClient,
}

impl managed::Manager for ClusterManager {
    type Type = Pooled<redis::cluster_async::ClusterConnection>;
    type Error = RedisError;

    async fn create(&self) -> Result<Self::Type, RedisError> {
        Ok(Pooled {
            conn: rare(self.client.get_async_connection()).await?,
            failed: Arc::default(),
        })
    }

    async fn recycle(&self, pooled: &mut Self::Type, metrics: &Metrics) -> RecycleResult<RedisError> {
        if let Some(decision) = pooled.recycle_unchecked(metrics) {
            return decision;
        }
        let _: String = rare(redis::cmd("PING").query_async(&mut pooled.conn)).await?;
        Ok(())
    }
}

/// Connections to Redis, a pool of them for each thread that asks (each up to the size given).
///
/// A connection's reader and writer run as a task on the runtime of the thread that opened
/// it, and every service runs its actix worker and its background chores (recovery, the
/// webhook relay, the sweeper, the refreshers) on current-thread runtimes of their own. One
/// pool shared by them handed a connection opened by one thread to the other, and then each
/// command woke the opener's thread twice (the command in, its reply out). Measured under load,
/// three alternated pairs: payment's main thread went from 17.6 to 10.9 µs per checkout, stock's
/// from 5.5 to none, and the three services together from 477 to 443 (docs/benchmark.md,
/// fourteenth pass). A thread's pool is made on its first [`Pool::get`] and opens connections
/// as it needs them; the services' threads are few and live as long as the process, so an
/// entry is never removed.
#[derive(Clone)]
pub struct Pool(Arc<Pools>);

struct Pools {
    config: PoolConfig,
    /// The pool `connect` made, from which each thread's is made alike.
    first: Inner,
    by_thread: Mutex<Vec<(ThreadId, Inner)>>,
}

#[derive(Clone)]
enum Inner {
    Single(managed::Pool<NodeManager>),
    Cluster(managed::Pool<ClusterManager>),
}

impl Inner {
    /// An empty pool with this one's manager (its client and timeouts) and `config`.
    fn alike(&self, config: PoolConfig) -> Result<Inner, managed::BuildError> {
        Ok(match self {
            Inner::Single(p) => Inner::Single(build(p.manager().clone(), config)?),
            Inner::Cluster(p) => Inner::Cluster(build(p.manager().clone(), config)?),
        })
    }
}

fn build<M: managed::Manager>(manager: M, config: PoolConfig) -> Result<managed::Pool<M>, managed::BuildError> {
    managed::Pool::builder(manager)
        .config(config)
        .runtime(Runtime::Tokio1)
        .build()
}

/// A pooled connection of either kind; use it wherever a redis connection is expected.
pub enum Conn {
    Single(Object<NodeManager>),
    Cluster(Object<ClusterManager>),
}

/// Pool occupancy, for the metrics.
pub struct Status {
    pub size: usize,
    pub available: usize,
    pub waiting: usize,
}

impl Pool {
    fn new(config: PoolConfig, first: Inner) -> Self {
        Pool(Arc::new(Pools {
            config,
            first,
            by_thread: Mutex::new(Vec::new()),
        }))
    }

    /// A connection from this thread's pool.
    pub async fn get(&self) -> Result<Conn, PoolError> {
        Ok(match self.of_this_thread()? {
            Inner::Single(p) => Conn::Single(p.get().await?),
            Inner::Cluster(p) => Conn::Cluster(p.get().await?),
        })
    }

    fn of_this_thread(&self) -> Result<Inner, PoolError> {
        let me = std::thread::current().id();
        // Held only to find or add an entry: nothing awaits under it, and a panic elsewhere
        // cannot leave the list half-changed.
        let mut threads = self.0.by_thread.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, pool)) = threads.iter().find(|(thread, _)| *thread == me) {
            return Ok(pool.clone());
        }
        let pool = if threads.is_empty() {
            self.0.first.clone()
        } else {
            self.0
                .first
                .alike(self.0.config)
                .map_err(|_| PoolError::NoRuntimeSpecified)?
        };
        threads.push((me, pool.clone()));
        Ok(pool)
    }

    /// All threads' pools together.
    pub fn status(&self) -> Status {
        let threads = self.0.by_thread.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total = Status {
            size: 0,
            available: 0,
            waiting: 0,
        };
        for (_, pool) in threads.iter() {
            let s = match pool {
                Inner::Single(p) => p.status(),
                Inner::Cluster(p) => p.status(),
            };
            total.size += s.size;
            total.available += s.available;
            total.waiting += s.waiting;
        }
        total
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
            Conn::Single(c) => Box::pin(c.command(cmd)),
            Conn::Cluster(c) => Box::pin(c.command(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => Box::pin(c.commands(cmd, offset, count)),
            Conn::Cluster(c) => Box::pin(c.commands(cmd, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.conn.get_db(),
            Conn::Cluster(c) => c.conn.get_db(),
        }
    }
}

pub fn create(settings: &CommonSettings) -> Result<Pool, String> {
    connect(
        &settings.redis_url,
        settings.redis_cluster,
        settings.redis_pool_size,
        settings.redis_response_timeout,
    )
}

/// A pool of up to `size` connections to `redis_url` (on a cluster, comma-separated nodes).
///
/// A command unanswered after `response_timeout` fails, and its connection is replaced. The
/// client library's own default (500ms) turned an fsync stall under load into failed requests.
pub fn connect(redis_url: &str, cluster: bool, size: usize, response_timeout: Duration) -> Result<Pool, String> {
    let mut config = PoolConfig::new(size);
    // Bounded waits: a dead Redis must turn into a quick 503, not a request that hangs.
    config.timeouts = Timeouts {
        wait: Some(Duration::from_secs(2)),
        create: Some(Duration::from_secs(2)),
        recycle: Some(Duration::from_secs(2)),
    };
    let fail = |e: String| format!("redis pool for {redis_url}: {e}");
    if cluster {
        let urls: Vec<String> = redis_url
            .split(',')
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        let client = redis::cluster::ClusterClientBuilder::new(urls)
            .response_timeout(response_timeout)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        build(ClusterManager { client }, config)
            .map(|p| Pool::new(config, Inner::Cluster(p)))
            .map_err(|e| fail(e.to_string()))
    } else {
        // RESP3 (Redis 6 and later): the protocol in which a connection reports its own
        // disconnection, which is what lets the pool skip the PING (see `CHECK_IDLE_AFTER`).
        let info = redis_url.into_connection_info().map_err(|e| fail(e.to_string()))?;
        let info = info
            .clone()
            .set_redis_settings(info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3));
        let client = redis::Client::open(info).map_err(|e| fail(e.to_string()))?;
        build(
            NodeManager {
                client,
                response_timeout,
            },
            config,
        )
        .map(|p| Pool::new(config, Inner::Single(p)))
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

#[cfg(test)]
mod tests {
    //! The pool against a real Redis.
    use super::*;
    use crate::testing::TestRedis;

    /// The ids Redis gives the connections of two `get`s in a row (the first given back before
    /// the second) on `pool`, from inside the current task's thread.
    async fn two_client_ids(pool: &Pool) -> (i64, i64) {
        let mut ids = Vec::new();
        for _ in 0..2 {
            let mut conn = pool.get().await.expect("a connection");
            ids.push(
                redis::cmd("CLIENT")
                    .arg("ID")
                    .query_async(&mut conn)
                    .await
                    .expect("CLIENT ID"),
            );
        }
        (ids[0], ids[1])
    }

    #[tokio::test]
    async fn a_thread_is_handed_only_connections_it_opened_itself() {
        let redis = TestRedis::start().await;
        let pool = connect(&redis.url(), false, 1, Duration::from_secs(5)).expect("a pool");
        let (here, here_again) = two_client_ids(&pool).await;
        assert_eq!(here, here_again, "one thread reuses its connection");

        // Another thread with a runtime of its own, as an actix worker beside the main thread.
        let elsewhere = pool.clone();
        let (there, there_again) = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(two_client_ids(&elsewhere))
        })
        .join()
        .expect("the other thread");

        assert_eq!(there, there_again, "the other thread reuses its own connection");
        assert_ne!(here, there, "a connection opened on one thread was handed to another");
        assert_eq!(pool.status().size, 2, "a pool of one connection per thread");
    }
}
