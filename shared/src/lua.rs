//! Redis scripts from `.lua` files. A script is its entry file (what it does, its `KEYS` and
//! `ARGV` named at the top) after the libraries it names: Lua files that define `local`
//! functions and nothing else. A library names the libraries it calls in turn, so a script
//! lists only what it calls itself and can never miss a function a library needs: no function
//! reaches a script unless something names the file that defines it.
//!
//! A script runs as a Redis Function (`FCALL`), not `EVALSHA`: the text `EVAL` runs is run
//! whole on every call, so every `local function` of its libraries was made again each time
//! (~24 µs of a checkout's scripts, measured; FCALL's own path gives some back, and the whole
//! checkout's script time fell ~6 %: docs/benchmark.md, thirteenth pass). As a function
//! library the libraries are made once, when Redis loads it, and each call runs only the entry
//! file. A library's per-call state (a `local` at its top that is not a function and
//! not a CONSTANT, such as the clock read once per call) is set again at the start of every
//! call, so no call sees another's. The library is loaded the first time a call finds it
//! missing (`FUNCTION LOAD REPLACE`, on every master of a cluster); Redis keeps it in its AOF
//! like the data. Its name carries the hash of its text, so two versions of a service can run
//! side by side.

use redis::aio::ConnectionLike;
use redis::{FromRedisValue, RedisResult, ToRedisArgs};

/// A Lua library: `local function`s in one file.
#[derive(Debug)]
pub struct Lib {
    pub name: &'static str,
    pub source: &'static str,
    /// Libraries its functions call; they come before it.
    pub needs: &'static [&'static Lib],
}

/// The libraries a script made of `needs` runs: each needed one (and what it needs, each once,
/// dependencies first), each followed by a newline.
fn libraries(needs: &[&'static Lib]) -> String {
    fn add(lib: &'static Lib, seen: &mut Vec<&'static str>, out: &mut String) {
        if seen.contains(&lib.name) {
            return;
        }
        for dep in lib.needs {
            add(dep, seen, out);
        }
        seen.push(lib.name);
        out.push_str(lib.source);
        out.push('\n');
    }
    let mut seen = Vec::new();
    let mut out = String::new();
    for lib in needs {
        add(lib, &mut seen, &mut out);
    }
    out
}

/// The statements that give a library's per-call state its first value again: for each
/// top-level `local` that is not a function and whose names are not all CONSTANTS, the same
/// declaration as an assignment (`local seen = {}` → `seen = {}`, `local t` → `t = nil`).
/// Err names a declaration that spans lines: it could not be repeated from one line.
fn per_call_state(libraries: &str) -> Result<String, String> {
    let mut out = String::new();
    for line in libraries.lines() {
        let Some(decl) = line.strip_prefix("local ") else {
            continue;
        };
        if decl.starts_with("function ") {
            continue;
        }
        let (names, value) = match decl.split_once('=') {
            Some((names, value)) => (names.trim(), value.trim()),
            None => (decl.trim(), "nil"),
        };
        let constant = names.split(',').all(|n| {
            n.trim()
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        });
        if constant {
            continue;
        }
        let balanced = |open: char, close: char| value.matches(open).count() == value.matches(close).count();
        if value.is_empty() || !balanced('{', '}') || !balanced('(', ')') {
            return Err(format!(
                "a library's per-call state must be declared on one line: `{line}`"
            ));
        }
        out.push_str(&format!("{names} = {value}\n"));
    }
    Ok(out)
}

/// A script ready to run: the [`libraries`] of its `needs`, then its `main`, as a Redis
/// Function library.
#[derive(Debug, Clone)]
pub struct Script {
    /// The function's name (and its library's): `f` and the library text's SHA-1.
    name: String,
    /// What `FUNCTION LOAD` is given.
    library: String,
}

/// A script composed of `needs` and `main` (see [`Script`]). Panics when a library's
/// per-call state spans lines: a fault of the source, found by the script's tests.
pub fn script(needs: &[&'static Lib], main: &str) -> Script {
    let libs = libraries(needs);
    let state = per_call_state(&libs).unwrap_or_else(|e| panic!("{e}"));
    // KEYS and ARGV are the call's, as under EVAL; the libraries see them as upvalues.
    let body = format!(
        "local KEYS, ARGV\n{libs}\nlocal function call(keys, argv)\nKEYS, ARGV = keys, argv\n{state}{main}\nend\n"
    );
    // redis::Script hashes its text (SHA-1) the way Redis names scripts: no crate of our own.
    let hash = redis::Script::new(&body).get_hash().to_string();
    let name = format!("f{hash}");
    let library = format!("#!lua name={name}\n{body}redis.register_function('{name}', call)\n");
    Script { name, library }
}

impl Script {
    /// The function's name, as `FCALL` and `FUNCTION LIST` show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An invocation with this key (more follow with [`Invocation::key`]).
    pub fn key<T: ToRedisArgs>(&self, key: T) -> Invocation<'_> {
        let mut inv = self.prepare_invoke();
        inv.key(key);
        inv
    }

    /// An invocation with this argument.
    pub fn arg<T: ToRedisArgs>(&self, arg: T) -> Invocation<'_> {
        let mut inv = self.prepare_invoke();
        inv.arg(arg);
        inv
    }

    /// An invocation with no keys or arguments yet.
    pub fn prepare_invoke(&self) -> Invocation<'_> {
        Invocation {
            script: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Loads the library (again: `REPLACE`), on every master of a cluster.
    pub async fn load_async<C: ConnectionLike>(&self, con: &mut C) -> RedisResult<()> {
        let _: redis::Value = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(&self.library)
            .query_async(con)
            .await?;
        Ok(())
    }
}

/// A call being put together: the script, its keys and its arguments.
pub struct Invocation<'a> {
    script: &'a Script,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Invocation<'_> {
    pub fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    pub fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// `FCALL`, loading the library first when Redis does not have it (a new Redis, a new
    /// version, `FUNCTION FLUSH`).
    pub async fn invoke_async<T: FromRedisValue>(&self, con: &mut impl ConnectionLike) -> RedisResult<T> {
        let mut fcall = redis::cmd("FCALL");
        fcall
            .arg(&self.script.name)
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        match fcall.query_async(con).await {
            Err(e) if is_missing_function(&e) => {
                self.script.load_async(con).await?;
                fcall.query_async(con).await
            }
            other => other,
        }
    }
}

/// Redis' answer to an `FCALL` of a function it has not loaded.
fn is_missing_function(e: &redis::RedisError) -> bool {
    e.to_string().contains("Function not found")
}

/// Redis' clock, read once per script: `now_ms()`.
pub static CLOCK: Lib = Lib {
    name: "clock",
    source: include_str!("lua/clock.lua"),
    needs: &[],
};

/// `rfc3339_ms(ms)`: a timestamp rendered exactly as [`crate::time::rfc3339_ms`] renders it.
pub static RFC3339: Lib = Lib {
    name: "rfc3339",
    source: crate::time::RFC3339_LUA,
    needs: &[],
};

/// `add_counts(hash, changes)`: several counters of one hash changed by one HSET.
pub static COUNTS: Lib = Lib {
    name: "counts",
    source: include_str!("lua/counts.lua"),
    needs: &[],
};

#[cfg(test)]
mod tests {
    use super::*;

    static A: Lib = Lib {
        name: "a",
        source: "-- a",
        needs: &[],
    };
    static B: Lib = Lib {
        name: "b",
        source: "-- b",
        needs: &[&A],
    };
    static C: Lib = Lib {
        name: "c",
        source: "-- c",
        needs: &[&A, &B],
    };

    #[test]
    fn libraries_come_once_each_before_what_needs_them() {
        assert_eq!(libraries(&[&C, &B]), "-- a\n-- b\n-- c\n");
        assert_eq!(libraries(&[]), "");
    }

    #[test]
    fn a_librarys_state_is_declared_again_per_call_and_its_constants_and_functions_are_not() {
        let libraries = "-- a comment\nlocal clock\nlocal seen = {}\nlocal a, b = 1, {x = 2}\nlocal LIMIT = 9\n\
                         local ONE, TWO = 1, 2\nlocal function f()\n  local inner = 1\nend\n";
        assert_eq!(
            per_call_state(libraries).as_deref(),
            Ok("clock = nil\nseen = {}\na, b = 1, {x = 2}\n")
        );
        assert_eq!(per_call_state("local function f() end\n").as_deref(), Ok(""));
    }

    #[test]
    fn state_declared_over_several_lines_is_refused() {
        let err = per_call_state("local seen = {\n  a = 1,\n}\n");
        assert!(err.is_err_and(|e| e.contains("local seen = {")));
        assert!(per_call_state("local x =\n  1\n").is_err());
    }

    #[test]
    fn a_scripts_name_follows_its_text() {
        let one = script(&[&A], "return 1");
        assert_eq!(one.name(), script(&[&A], "return 1").name());
        assert_ne!(one.name(), script(&[&A], "return 2").name());
        assert!(one.library.starts_with(&format!("#!lua name={}\n", one.name())));
    }
}

#[cfg(test)]
mod script_tests {
    //! Scripts as Redis Functions, and counts.lua, against a real Redis.

    use super::*;
    use crate::testing::TestRedis;

    static STATEFUL: Lib = Lib {
        name: "stateful",
        source: "local calls = 0\nlocal seen = {}\nlocal function note(v) calls = calls + 1; seen[#seen + 1] = v end",
        needs: &[],
    };

    /// What [`counter`] answers: the notes it saw, how many it kept, and those two.
    type Noted = (i64, i64, String, String);

    /// Each call notes its argument and its key and answers what it saw: two notes when no
    /// state is left over from an earlier call.
    fn counter() -> Script {
        script(
            &[&STATEFUL],
            "note(ARGV[1])\nnote(KEYS[1])\nreturn {calls, #seen, seen[1], seen[2]}",
        )
    }

    async fn count(conn: &mut redis::aio::MultiplexedConnection, key: &str, arg: &str) -> Noted {
        counter().key(key).arg(arg).invoke_async(conn).await.expect("fcall")
    }

    #[tokio::test]
    async fn no_call_sees_the_state_another_call_left_in_a_library() {
        let redis = TestRedis::start().await;
        let mut conn = redis.conn().await;

        let first = count(&mut conn, "k1", "a").await;
        let second = count(&mut conn, "k2", "b").await;

        assert_eq!(first, (2, 2, "a".into(), "k1".into()));
        assert_eq!(second, (2, 2, "b".into(), "k2".into()));
    }

    #[tokio::test]
    async fn a_function_redis_lost_is_loaded_again_by_the_next_call() {
        let redis = TestRedis::start().await;
        let mut conn = redis.conn().await;
        count(&mut conn, "k", "a").await;
        let _: () = redis::cmd("FUNCTION")
            .arg("FLUSH")
            .query_async(&mut conn)
            .await
            .expect("flush");

        let again = count(&mut conn, "k", "b").await;

        assert_eq!(again.0, 2);
        let name = counter().name().to_string();
        let listed: redis::Value = redis::cmd("FUNCTION")
            .arg("LIST")
            .arg("LIBRARYNAME")
            .arg(&name)
            .query_async(&mut conn)
            .await
            .expect("list");
        assert!(format!("{listed:?}").contains(&name), "{listed:?}");
    }

    #[tokio::test]
    async fn a_scripts_own_error_is_not_taken_for_a_missing_function() {
        let redis = TestRedis::start().await;
        let mut conn = redis.conn().await;
        let failing = script(&[], "return redis.error_reply('refused here')");

        let err = failing
            .key("k")
            .invoke_async::<()>(&mut conn)
            .await
            .expect_err("an error");

        let text = err.to_string();
        assert!(text.contains("refused") && text.contains("here"), "{text}");
    }

    /// `add_counts` called by a script with ARGV as its changes.
    fn adder() -> Script {
        script(
            &[&COUNTS],
            "add_counts(KEYS[1], ARGV)\nreturn redis.call('HGETALL', KEYS[1])",
        )
    }

    async fn calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(conn)
            .await
            .expect("info");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    async fn seed(conn: &mut redis::aio::MultiplexedConnection, fields: &[&str]) {
        let _: () = redis::cmd("HSET")
            .arg("t")
            .arg(fields)
            .query_async(conn)
            .await
            .expect("HSET");
    }

    /// Runs add_counts on hash `t` with `changes`: the hash after it, sorted by field.
    async fn add(
        conn: &mut redis::aio::MultiplexedConnection,
        changes: &[&str],
    ) -> redis::RedisResult<Vec<(String, String)>> {
        let all: Vec<String> = adder().key("t").arg(changes).invoke_async(conn).await?;
        let mut pairs: Vec<_> = all.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
        pairs.sort();
        Ok(pairs)
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(f, v)| ((*f).to_string(), (*v).to_string()))
            .collect()
    }

    #[tokio::test]
    async fn several_counters_change_with_one_hset_and_a_zero_is_not_written() {
        let redis = TestRedis::start().await;
        let mut conn = redis.conn().await;
        seed(&mut conn, &["a", "5", "z", "7"]).await;
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await
            .expect("resetstat");

        let after = add(&mut conn, &["a", "-2", "b", "1000", "z", "0"]).await.expect("add");

        assert_eq!(after, owned(&[("a", "3"), ("b", "1000"), ("z", "7")]));
        assert_eq!(calls(&mut conn, "hset").await, 1, "one HSET for both changes");
        assert_eq!(calls(&mut conn, "hincrby").await, 0);
    }

    /// Past 2^53 a double no longer holds every integer: such counts are added by Redis,
    /// exactly, and an overflow is refused as HINCRBY refuses it.
    #[tokio::test]
    async fn counts_past_2_53_stay_exact_and_an_overflow_is_refused() {
        let redis = TestRedis::start().await;
        let mut conn = redis.conn().await;
        seed(&mut conn, &["big", "9007199254740993", "small", "1"]).await;

        let after = add(&mut conn, &["small", "1", "big", "1"]).await.expect("add");
        let huge = add(&mut conn, &["big", "9223372036854775807"]).await;

        assert_eq!(after, owned(&[("big", "9007199254740994"), ("small", "2")]));
        assert!(huge.is_err(), "an overflow is an error: {huge:?}");
        let big: String = redis::cmd("HGET")
            .arg("t")
            .arg("big")
            .query_async(&mut conn)
            .await
            .expect("hget");
        assert_eq!(big, "9007199254740994", "nothing written by the refused change");
    }
}
