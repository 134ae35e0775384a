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

/// Microseconds Redis has spent running scripts (EVAL, EVALSHA, FCALL and their read-only
/// forms) since its statistics were last reset, from INFO commandstats. Wall time inside
/// Redis, the commands the scripts call included.
pub async fn script_usec(mut conn: MultiplexedConnection) -> Result<u64, String> {
    Ok(script_usec_in(&info(&mut conn, "commandstats").await?))
}

pub(super) fn script_usec_in(info: &str) -> u64 {
    const SCRIPTS: [&str; 6] = ["eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro"];
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_")?.split_once(':'))
        .filter(|(name, _)| SCRIPTS.contains(name))
        .filter_map(|(_, stats)| {
            stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("usec="))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
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
    fn script_time_sums_every_script_command_and_nothing_else() {
        let info = "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=250,usec_per_call=25.00,rejected_calls=0\r\n\
                    cmdstat_hset:calls=40,usec=80,usec_per_call=2.00\r\n\
                    cmdstat_eval:calls=1,usec=7,usec_per_call=7.00\r\n\
                    cmdstat_fcall_ro:calls=2,usec=3,usec_per_call=1.50\r\n\
                    cmdstat_script|load:calls=5,usec=100,usec_per_call=20.00\r\n";
        assert_eq!(script_usec_in(info), 260);
        assert_eq!(script_usec_in("# Commandstats\r\n"), 0);
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
