//! Redis scripts from `.lua` files. A script is its entry file (what it does, its `KEYS` and
//! `ARGV` named at the top) after the libraries it names: Lua files that define `local`
//! functions and nothing else. A library names the libraries it calls in turn, so a script
//! lists only what it calls itself and can never miss a function a library needs: no function
//! reaches a script unless something names the file that defines it.

use redis::Script;

/// A Lua library: `local function`s in one file.
#[derive(Debug)]
pub struct Lib {
    pub name: &'static str,
    pub source: &'static str,
    /// Libraries its functions call; they come before it.
    pub needs: &'static [&'static Lib],
}

/// The text of a script: `needs` (and what they need, each once, dependencies first), then `main`.
pub fn source(needs: &[&'static Lib], main: &str) -> String {
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
    out.push_str(main);
    out
}

/// A script ready to run: [`source`] of `needs` and `main`.
pub fn script(needs: &[&'static Lib], main: &str) -> Script {
    Script::new(&source(needs, main))
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
        assert_eq!(source(&[&C, &B], "return 1"), "-- a\n-- b\n-- c\nreturn 1");
        assert_eq!(source(&[], "return 1"), "return 1");
    }
}

#[cfg(test)]
mod script_tests {
    //! counts.lua against a real Redis.

    use super::*;
    use crate::testing::TestRedis;

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
