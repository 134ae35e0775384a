//! Redis connections and the readiness probe, for a single node or a Redis Cluster (chosen by
//! REDIS_CLUSTER). Every key the services use carries a hash tag and every script touches one
//! slot, so the same code runs on both; the one difference callers see is that a pipeline must
//! not span slots on a cluster — [`Conn::each`] handles that case.
//!
//! Also the spans of Redis operations ([`traced`]), so a checkout's trace shows its Redis time.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::ThreadId;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, FromRedisValue, IntoConnectionInfo, Pipeline, ProtocolVersion, PushInfo, PushKind,
    RedisFuture, RedisResult, Value,
};

use crate::config::CommonSettings;

/// How long opening a connection may take before the request that needed it fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("connecting took longer than {0:?}")]
    Timeout(Duration),
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The request waited for another's attempt to connect, which failed.
    #[error("cannot connect: the attempt this request waited for failed")]
    AttemptFailed,
}

/// A connection to Redis, and whether it broke.
#[derive(Clone)]
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
}

/// Boxes a future the pool seldom runs (connecting). Unboxed, its state is inlined into every
/// `Pool::get` future, and so into every Redis operation's and every handler's: a checkout's
/// task grew to 16 KiB, and moving it on spawn showed in profiles.
fn rare<'a, T>(future: impl Future<Output = T> + Send + 'a) -> Pin<Box<dyn Future<Output = T> + Send + 'a>> {
    Box::pin(future)
}

/// How connections are opened.
enum Opener {
    Node {
        client: redis::Client,
        response_timeout: Duration,
    },
    /// A cluster connection follows the cluster's slots and reconnects to its nodes by itself;
    /// its client carries the response timeout (without one, a stalled node would hold requests
    /// until their callers give up).
    Cluster(redis::cluster::ClusterClient),
}

impl Opener {
    async fn open(&self) -> RedisResult<Conn> {
        let failed = Arc::new(AtomicBool::new(false));
        Ok(match self {
            Opener::Node {
                client,
                response_timeout,
            } => {
                let flag = failed.clone();
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(Some(*response_timeout))
                    .set_push_sender(move |info: PushInfo| {
                        if info.kind == PushKind::Disconnection {
                            flag.store(true, Ordering::Relaxed);
                        }
                        Ok::<(), redis::aio::SendError>(())
                    });
                let conn = rare(client.get_multiplexed_async_connection_with_config(&config)).await?;
                Conn::Single(Pooled { conn, failed })
            }
            Opener::Cluster(client) => Conn::Cluster(Pooled {
                conn: rare(client.get_async_connection()).await?,
                failed,
            }),
        })
    }
}

/// Connections to Redis: one for each thread that asks, shared by that thread's tasks.
///
/// A connection is multiplexed: the commands of every task that holds a clone of it go out on
/// one socket, written together when they come together, and their replies come back the same
/// way. Redis then reads and answers a service's concurrent commands with one system call each
/// way instead of one per command. A pool that lent each request a connection of its own (32
/// per service) cost Redis' one thread a read and a write per command. Measured under load, three
/// alternated pairs: Redis' CPU per checkout 285 → 243 µs, the services' 424 → 341, throughput
/// +16 % (docs/benchmark.md, fourteenth pass).
///
/// Per thread, because a connection's reader and writer run as a task on the runtime of the
/// thread that opened it, and every service runs its actix worker and its background chores
/// (recovery, the webhook relay, the sweeper, the refreshers) on current-thread runtimes of
/// their own: a connection opened by one and used by another woke the opener's thread twice
/// per command (payment's main thread spent 17.6 µs per checkout on the worker's commands, 10.9
/// once each thread had its own). The services' threads are few and live as long as the
/// process, so a thread's entry is never removed.
///
/// A connection that broke ([`Pooled::failed`]) is replaced by the next `get` on its thread;
/// requests still waiting on it fail as they would have.
#[derive(Clone)]
pub struct Pool(Arc<Pools>);

struct Pools {
    opener: Opener,
    by_thread: Mutex<Vec<(ThreadId, Arc<Slot>)>>,
}

/// A thread's connection, and how many attempts to open one have failed.
#[derive(Default)]
struct Slot {
    conn: tokio::sync::Mutex<Option<Conn>>,
    failed_attempts: AtomicU64,
}

/// A connection of either kind; use it wherever a redis connection is expected.
#[derive(Clone)]
pub enum Conn {
    Single(Pooled<MultiplexedConnection>),
    Cluster(Pooled<ClusterConnection>),
}

impl Conn {
    fn failed(&self) -> bool {
        match self {
            Conn::Single(c) => c.failed.load(Ordering::Relaxed),
            Conn::Cluster(c) => c.failed.load(Ordering::Relaxed),
        }
    }
}

impl Pool {
    fn new(opener: Opener) -> Self {
        Pool(Arc::new(Pools {
            opener,
            by_thread: Mutex::new(Vec::new()),
        }))
    }

    /// This thread's connection, opened when it has none or its last one broke.
    ///
    /// One attempt to connect at a time: the thread's other requests wait for it and share
    /// its outcome, so a Redis that does not answer costs each request at most one
    /// [`CONNECT_TIMEOUT`], not a queue of attempts one after the other; a request that comes
    /// after a failed attempt makes the next, so a Redis back up is used at once.
    pub async fn get(&self) -> Result<Conn, PoolError> {
        let slot = self.slot_of_this_thread();
        let failed_before = slot.failed_attempts.load(Ordering::Acquire);
        let mut current = slot.conn.lock().await;
        if let Some(conn) = current.as_ref()
            && !conn.failed()
        {
            return Ok(conn.clone());
        }
        if slot.failed_attempts.load(Ordering::Acquire) != failed_before {
            return Err(PoolError::AttemptFailed);
        }
        let opened = match tokio::time::timeout(CONNECT_TIMEOUT, self.0.opener.open()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                slot.failed_attempts.fetch_add(1, Ordering::Release);
                return Err(PoolError::Connect(e.to_string()));
            }
            Err(_) => {
                slot.failed_attempts.fetch_add(1, Ordering::Release);
                return Err(PoolError::Timeout(CONNECT_TIMEOUT));
            }
        };
        *current = Some(opened.clone());
        Ok(opened)
    }

    fn slot_of_this_thread(&self) -> Arc<Slot> {
        let me = std::thread::current().id();
        // Held only to find or add an entry: nothing awaits under it, and a panic elsewhere
        // cannot leave the list half-changed.
        let mut threads = self.0.by_thread.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, slot)) = threads.iter().find(|(thread, _)| *thread == me) {
            return slot.clone();
        }
        let slot = Arc::new(Slot::default());
        threads.push((me, slot.clone()));
        slot
    }

    /// How many threads hold an open connection (one each), for the metrics.
    pub fn open_connections(&self) -> usize {
        let threads = self.0.by_thread.lock().unwrap_or_else(PoisonError::into_inner);
        threads
            .iter()
            .filter(|(_, slot)| {
                slot.conn
                    .try_lock()
                    .map(|c| c.as_ref().is_some_and(|c| !c.failed()))
                    // Someone is connecting on it: count it as it will most likely be.
                    .unwrap_or(true)
            })
            .count()
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
        settings.redis_response_timeout,
    )
}

/// Connections to `redis_url` (on a cluster, comma-separated nodes), opened when first asked
/// for.
///
/// A command unanswered after `response_timeout` fails, and its connection is replaced. The
/// client library's own default (500ms) turned an fsync stall under load into failed requests.
pub fn connect(redis_url: &str, cluster: bool, response_timeout: Duration) -> Result<Pool, String> {
    let fail = |e: String| format!("redis connections to {redis_url}: {e}");
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
        Ok(Pool::new(Opener::Cluster(client)))
    } else {
        // RESP3 (Redis 6 and later): the protocol in which a connection reports its own
        // disconnection, which is how a broken connection is replaced before a request fails on it.
        let info = redis_url.into_connection_info().map_err(|e| fail(e.to_string()))?;
        let info = info
            .clone()
            .set_redis_settings(info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3));
        let client = redis::Client::open(info).map_err(|e| fail(e.to_string()))?;
        Ok(Pool::new(Opener::Node {
            client,
            response_timeout,
        }))
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
    //! The connections against a real Redis.
    use super::*;
    use crate::testing::TestRedis;

    async fn client_id(conn: &mut Conn) -> i64 {
        redis::cmd("CLIENT")
            .arg("ID")
            .query_async(conn)
            .await
            .expect("CLIENT ID")
    }

    /// The ids Redis gives the connections of two `get`s held at once on `pool`.
    async fn two_held_at_once(pool: &Pool) -> (i64, i64) {
        let (mut a, mut b) = (pool.get().await.expect("a"), pool.get().await.expect("b"));
        (client_id(&mut a).await, client_id(&mut b).await)
    }

    #[tokio::test]
    async fn a_threads_tasks_share_one_connection_and_another_thread_opens_its_own() {
        let redis = TestRedis::start().await;
        let pool = connect(&redis.url(), false, Duration::from_secs(5)).expect("connections");
        let (here, here_too) = two_held_at_once(&pool).await;
        assert_eq!(
            here, here_too,
            "two requests in flight on one thread share its connection"
        );

        // Another thread with a runtime of its own, as an actix worker beside the main thread.
        let elsewhere = pool.clone();
        let (there, there_too) = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(two_held_at_once(&elsewhere))
        })
        .join()
        .expect("the other thread");

        assert_eq!(there, there_too);
        assert_ne!(here, there, "a connection opened on one thread was handed to another");
        assert_eq!(pool.open_connections(), 2);
    }

    #[tokio::test]
    async fn a_connection_redis_closed_is_replaced_before_the_next_request_uses_it() {
        let redis = TestRedis::start().await;
        let pool = connect(&redis.url(), false, Duration::from_secs(5)).expect("connections");
        let mut conn = pool.get().await.expect("a connection");
        let first = client_id(&mut conn).await;
        let mut admin = redis.conn().await;
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(first)
            .query_async(&mut admin)
            .await
            .expect("CLIENT KILL");
        // The driver flags the connection when its socket closes; give it that moment.
        for _ in 0..100 {
            if conn.failed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(conn.failed(), "the closed connection is flagged");

        let mut next = pool.get().await.expect("a new connection");
        let second = client_id(&mut next).await;
        assert_ne!(first, second);
        let pong: String = redis::cmd("PING").query_async(&mut next).await.expect("PING");
        assert_eq!(pong, "PONG");
    }

    #[tokio::test]
    async fn requests_waiting_on_a_connect_share_its_failure_and_the_next_request_tries_again() {
        // A server that takes connections and never answers Redis' handshake: every attempt
        // to connect lasts until a timeout (the response timeout's, here 1 s).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a listener");
        let port = listener.local_addr().expect("its address").port();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let pool = connect(&format!("redis://127.0.0.1:{port}"), false, Duration::from_secs(1)).expect("connections");

        let (first, second) = tokio::join!(pool.get(), pool.get());
        assert!(
            matches!(first, Err(PoolError::Connect(_) | PoolError::Timeout(_))),
            "the attempt fails"
        );
        assert!(
            matches!(second, Err(PoolError::AttemptFailed)),
            "the request that waited shares its outcome instead of a second attempt after it"
        );
        silent.abort();

        // Nobody listens there now: the next request makes an attempt of its own.
        assert!(matches!(pool.get().await, Err(PoolError::Connect(_))));
        assert!(
            matches!(pool.get().await, Err(PoolError::Connect(_))),
            "and so does the one after it"
        );
    }
}
