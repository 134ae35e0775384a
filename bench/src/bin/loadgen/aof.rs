//! Redis' AOF rewrites around a run. A rewrite forks Redis, and the child takes a core for as
//! long as it runs (about a second per 100 MB of data here): on a small machine it shows in the
//! tail. So a run does not start while the previous run's rewrite is still going, and its report
//! says how long a rewrite of its own ran.

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

const POLL: Duration = Duration::from_millis(100);
const WAIT_AT_MOST: Duration = Duration::from_secs(120);

pub struct Rewrites {
    pub seconds: f64,
    pub started: u64,
}

pub struct Watch {
    task: tokio::task::JoinHandle<Result<Rewrites, String>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Watch {
    pub async fn stop(self) -> Result<Rewrites, String> {
        let _ = self.stop.send(());
        self.task.await.map_err(|e| e.to_string())?
    }
}

pub async fn connect(url: &str) -> Result<MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
    // A stalled Redis is what this watch is there to see through, so it waits far longer
    // than the client's default half second for an answer.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| format!("{url}: {e}"))
}

async fn info(conn: &mut MultiplexedConnection, section: &str) -> Result<String, String> {
    redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())
}

/// (a rewrite is running, rewrites started since Redis started), from INFO persistence.
async fn state(conn: &mut MultiplexedConnection) -> Result<(bool, u64), String> {
    parse(&info(conn, "persistence").await?)
}

pub(super) fn parse(info: &str) -> Result<(bool, u64), String> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or(format!("INFO persistence has no {name}"))
    };
    Ok((field("aof_rewrite_in_progress")? == 1, field("aof_rewrites")?))
}

const SCRIPTS: [&str; 6] = ["eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"];
/// What the load generator and the operators' tools ask Redis, not the work of a request.
const NOT_WORK: [&str; 8] = [
    "info",
    "ping",
    "config|get",
    "config|set",
    "client|setinfo",
    "hello",
    "select",
    "command|docs",
];

/// The work Redis has done since its statistics were last reset (or it started).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    /// Microseconds spent running scripts (EVAL, EVALSHA, FCALL and their read-only forms):
    /// wall time inside Redis, the commands the scripts call included.
    pub script_usec: u64,
    /// Commands run: inside scripts, and sent on their own; the script calls themselves and
    /// [`NOT_WORK`] not counted.
    pub commands: u64,
    /// The AOF's size in bytes (`aof_current_size`; 0 without AOF).
    pub aof_bytes: u64,
    /// AOF rewrites started since Redis started (`aof_rewrites`).
    pub rewrites: u64,
}

impl Work {
    /// What was done between `before` and `self`. The AOF's growth is unknown (None) when a
    /// rewrite started in between: the file was replaced by a new base.
    pub fn since(self, before: Work) -> (u64, u64, Option<u64>) {
        let appended = (self.rewrites == before.rewrites)
            .then(|| self.aof_bytes.checked_sub(before.aof_bytes))
            .flatten();
        (
            self.script_usec.saturating_sub(before.script_usec),
            self.commands.saturating_sub(before.commands),
            appended,
        )
    }
}

/// The work of every node of a stack's Redis (one, or a cluster's masters), added up.
pub async fn work_of(nodes: &[MultiplexedConnection]) -> Result<Work, String> {
    let mut total = Work {
        script_usec: 0,
        commands: 0,
        aof_bytes: 0,
        rewrites: 0,
    };
    for conn in nodes {
        let mut conn = conn.clone();
        let commandstats = info(&mut conn, "commandstats").await?;
        let persistence = info(&mut conn, "persistence").await?;
        let node = work_in(&commandstats, &persistence);
        total.script_usec += node.script_usec;
        total.commands += node.commands;
        total.aof_bytes += node.aof_bytes;
        total.rewrites += node.rewrites;
    }
    Ok(total)
}

pub(super) fn work_in(commandstats: &str, persistence: &str) -> Work {
    let stat = |stats: &str, key: &str| {
        stats
            .split(',')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let persisted = |name: &str| {
        persistence
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut work = Work {
        script_usec: 0,
        commands: 0,
        aof_bytes: persisted("aof_current_size"),
        rewrites: persisted("aof_rewrites"),
    };
    for (name, stats) in commandstats
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_")?.split_once(':'))
    {
        if SCRIPTS.contains(&name) {
            work.script_usec += stat(stats, "usec");
        } else if !NOT_WORK.contains(&name) {
            work.commands += stat(stats, "calls");
        }
    }
    work
}

/// Asks Redis to rewrite its AOF `after` from now, as it does by itself whenever the AOF has
/// doubled: what a run with a rewrite in it looks like, whatever the dataset's age.
pub fn rewrite_after(mut conn: MultiplexedConnection, after: Duration) -> tokio::task::JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        match redis::cmd("BGREWRITEAOF").query_async::<String>(&mut conn).await {
            Ok(_) => Ok(()),
            // Redis started one by itself first: the run has its rewrite all the same.
            Err(e) if e.to_string().contains("already in progress") => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    })
}

pub async fn wait_idle(mut conn: MultiplexedConnection) -> Result<(), String> {
    let start = Instant::now();
    let mut said = false;
    while state(&mut conn).await?.0 {
        if !said {
            eprintln!("waiting for Redis to finish rewriting its AOF (the run before caused it)");
            said = true;
        }
        if start.elapsed() > WAIT_AT_MOST {
            return Err(format!("Redis still rewrites its AOF after {WAIT_AT_MOST:?}"));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Samples every 100 ms until stopped. The time since the previous sample counts as
/// rewriting when a sample says so: measured, not assumed to be 100 ms, because a Redis that
/// stalls during a rewrite answers late.
pub fn watch(mut conn: MultiplexedConnection) -> Watch {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let (_, first) = state(&mut conn).await?;
        let mut seconds = 0.0;
        let mut sampled = Instant::now();
        let last = loop {
            let (running, total) = state(&mut conn).await?;
            if running {
                seconds += sampled.elapsed().as_secs_f64();
            }
            sampled = Instant::now();
            tokio::select! {
                _ = &mut stopped => break total,
                _ = tokio::time::sleep(POLL) => {}
            }
        };
        Ok(Rewrites {
            seconds,
            started: last.saturating_sub(first),
        })
    });
    Watch { task, stop }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_time_sums_every_script_command_and_commands_count_the_rest_but_the_tools() {
        let info = "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=250,usec_per_call=25.00,rejected_calls=0\r\n\
                    cmdstat_hset:calls=40,usec=80,usec_per_call=2.00\r\n\
                    cmdstat_eval:calls=1,usec=7,usec_per_call=7.00\r\n\
                    cmdstat_fcall_ro:calls=2,usec=3,usec_per_call=1.50\r\n\
                    cmdstat_info:calls=9,usec=90,usec_per_call=10.00\r\n\
                    cmdstat_script|load:calls=5,usec=100,usec_per_call=20.00\r\n";
        let work = work_in(
            info,
            "# Persistence\r\naof_enabled:1\r\naof_rewrites:2\r\naof_current_size:4096\r\n",
        );
        assert_eq!(
            work,
            Work {
                script_usec: 260,
                commands: 45,
                aof_bytes: 4096,
                rewrites: 2
            }
        );
        assert_eq!(work_in("# Commandstats\r\n", "").commands, 0);
    }

    #[test]
    fn the_aofs_growth_is_unknown_across_a_rewrite() {
        let before = Work {
            script_usec: 10,
            commands: 5,
            aof_bytes: 1000,
            rewrites: 1,
        };
        let grown = Work {
            script_usec: 30,
            commands: 25,
            aof_bytes: 3000,
            rewrites: 1,
        };
        assert_eq!(grown.since(before), (20, 20, Some(2000)));
        // A rewrite replaced the file: what it holds now says nothing of what was appended.
        let rewritten = Work { rewrites: 2, ..grown };
        assert_eq!(rewritten.since(before), (20, 20, None));
    }

    #[test]
    fn reads_whether_a_rewrite_runs_and_how_many_started() {
        let info = "# Persistence\r\nloading:0\r\naof_rewrite_in_progress:1\r\naof_rewrites:4\r\n\
                    aof_rewrites_consecutive_failures:0\r\n";
        assert_eq!(parse(info), Ok((true, 4)));
        let idle = info.replace("aof_rewrite_in_progress:1", "aof_rewrite_in_progress:0");
        assert_eq!(parse(&idle), Ok((false, 4)));
        assert!(
            parse("# Persistence\r\nloading:0\r\n").is_err(),
            "a Redis without the fields is an error"
        );
    }
}
