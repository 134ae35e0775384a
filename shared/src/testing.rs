//! Test support (the `testing` feature): a real `redis-server` on a free loopback port, for the
//! tests of each service's scripts and stores. No mock stands in for Redis: a script is only
//! tested where it runs.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use crate::redis_pool::Pool;

/// A `redis-server` of its own, stopped and its directory removed when dropped.
pub struct TestRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl TestRedis {
    /// Starts one (no persistence: a test's data lives as long as the test).
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not answer: a test cannot run without it.
    pub async fn start() -> Self {
        let program = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("redis-server"));
        // A port found free can be taken by another test before Redis binds it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("shared-test-redis-{}-{port}", std::process::id()));
            let _ = std::fs::create_dir_all(&dir);
            let child = Command::new(&program)
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e} (make deps installs it)", program.display()));
            let mut redis = Self { child, port, dir };
            if redis.answers().await {
                return redis;
            }
            let _ = redis.child.kill();
        }
        panic!("redis-server did not start");
    }

    async fn answers(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The services' own pool type, for testing a store.
    ///
    /// # Panics
    /// When the pool cannot be built for this server's URL.
    pub fn pool(&self) -> Pool {
        crate::redis_pool::connect(&self.url(), false, 4, Duration::from_secs(5)).expect("a pool for the test Redis")
    }

    /// A plain connection, for running a script and reading what it wrote.
    ///
    /// # Panics
    /// When the server does not accept a connection.
    pub async fn conn(&self) -> MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("a client for the test Redis")
            .get_multiplexed_async_connection()
            .await
            .expect("a connection to the test Redis")
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}
