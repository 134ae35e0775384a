//! Test support (the `testing` feature, off in every service binary): a real `redis-server` on a
//! free loopback port, for the tests of each service's scripts and stores (no mock stands in
//! for Redis: a script is only tested where it runs), and [`env`], settings read from a
//! thread's own environment.

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
        crate::redis_pool::connect(&self.url(), false, Duration::from_secs(5)).expect("a pool for the test Redis")
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

    /// A stream's entries, oldest first, each a map of its fields (outbox tests).
    ///
    /// # Panics
    /// When the key holds something else than a stream.
    pub async fn stream(&self, key: &str) -> Vec<std::collections::HashMap<String, String>> {
        let mut conn = self.conn().await;
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("XRANGE");
        entries
            .into_iter()
            .map(|(_, fields)| fields.into_iter().collect())
            .collect()
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

/// Settings read as if only the given variables were set, on this thread alone, without
/// touching the process environment; and the checks every service's settings tests make.
pub mod env {
    use std::cell::RefCell;

    use crate::config::{ConfigError, EnvVar};

    /// What [`with_env`] gives this thread in place of the process environment.
    struct TestEnv {
        set: Vec<(&'static str, String)>,
        read: Vec<&'static str>,
    }

    thread_local! {
        /// `Some` while [`with_env`] runs on this thread.
        static TEST_ENV: RefCell<Option<TestEnv>> = const { RefCell::new(None) };
    }

    /// Runs `f` as if no variable were set (on this thread only) and returns its result with the
    /// names of the variables it read. For tests: settings built this way prove that a table's
    /// defaults parse, without touching the process environment.
    pub fn with_defaults_only<R>(f: impl FnOnce() -> R) -> (R, Vec<&'static str>) {
        with_env(&[], f)
    }

    /// Like [`with_defaults_only`], with the variables in `set` set to the values given.
    pub fn with_env<R>(set: &[(&'static str, &str)], f: impl FnOnce() -> R) -> (R, Vec<&'static str>) {
        /// Puts back the outer state, even if `f` panics.
        struct Restore(Option<TestEnv>);
        impl Drop for Restore {
            fn drop(&mut self) {
                TEST_ENV.set(self.0.take());
            }
        }
        let env = TestEnv {
            set: set.iter().map(|(name, value)| (*name, value.to_string())).collect(),
            read: Vec::new(),
        };
        let _restore = Restore(TEST_ENV.replace(Some(env)));
        let result = f();
        let read = TEST_ENV.take().map(|env| env.read).unwrap_or_default();
        (result, read)
    }

    /// For [`crate::config::var`]: a variable's value while [`with_env`] runs on this thread
    /// (`Some(None)`: unset), noting that it was read; None otherwise.
    pub(crate) fn lookup(name: &'static str) -> Option<Option<String>> {
        TEST_ENV.with_borrow_mut(|env| {
            let env = env.as_mut()?;
            env.read.push(name);
            Some(env.set.iter().find(|(n, _)| *n == name).map(|(_, value)| value.clone()))
        })
    }

    /// For tests of settings: the variables set, the variable named in the refusal, and its reason.
    pub type Refusal = (&'static [(&'static str, &'static str)], &'static str, &'static str);

    /// Asserts that `from_env` refuses each case's settings, naming the variable and the reason.
    pub fn assert_refused<S>(cases: &[Refusal], from_env: impl Fn() -> Result<S, ConfigError>) {
        for (set, name, reason) in cases {
            let (result, _) = with_env(set, &from_env);
            let Err(err) = result else {
                panic!("{set:?} is taken; it should be refused")
            };
            assert_eq!(err.name, *name, "{set:?}: {err}");
            assert!(err.to_string().contains(reason), "{set:?}: {err}");
        }
    }

    /// Asserts that `from_env` takes each variable at the value given (a bound, say).
    pub fn assert_taken<S>(cases: &[(&'static str, &str)], from_env: impl Fn() -> Result<S, ConfigError>) {
        for (name, value) in cases {
            let (result, _) = with_env(&[(*name, value)], &from_env);
            assert!(result.is_ok(), "{name}={value} is refused: {:?}", result.err());
        }
    }

    /// Settings from the defaults alone: asserts that they parse and that exactly the variables
    /// of `tables` were read (so every variable the code reads is documented, and the reverse).
    pub fn settings_from_defaults<S>(from_env: impl FnOnce() -> Result<S, ConfigError>, tables: &[&[EnvVar]]) -> S {
        let (settings, read) = with_defaults_only(from_env);
        let settings = settings.unwrap_or_else(|e| panic!("a default does not parse: {e}"));
        let read: std::collections::BTreeSet<_> = read.into_iter().collect();
        let listed: std::collections::BTreeSet<_> = tables.iter().flat_map(|t| t.iter()).map(|v| v.name).collect();
        assert_eq!(read, listed, "the variables read are the variables listed");
        settings
    }
}
