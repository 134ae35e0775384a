//! What the checkout's scripts cost inside Redis, measured where nothing else runs: replays the
//! scripts a stack ran (captured with `redis-cli monitor`, see scripts/script-cost.sh) on an
//! idle Redis, in the order they ran, and reads the time from `INFO commandstats`. On a shared
//! 2-CPU machine `make bench`'s script µs drift by ±20 % from run to run, more than one
//! script's change is worth; replaying two captures in alternating rounds compares them on
//! the same minute of the same machine.
//!
//! Scripts run as Redis Functions (FCALL, loaded by FUNCTION LOAD) or, in a build from before
//! #29's thirteenth pass, by EVALSHA (loaded by SCRIPT LOAD): a capture is replayed as it ran.
//!
//! With `--floor` each capture is followed by its floor: every script call replaced by a
//! script that runs the very commands the call ran (names and arguments as captured, passed
//! as ARGV) and nothing else. What a checkout's scripts would cost with no Lua of their own:
//! the part of the time that only fewer commands can cut.
//!
//! `--stand-in PATH=N` replays the stand-in's capture of N requests first (bench/src/bin/standin:
//! the round trips without the work) and ends with each capture's time as a multiple of its.
//!
//! Usage: scriptcost --redis-url URL [--rounds N] [--per PREFIX] [--floor] [--stand-in PATH=N] CAPTURE...
//!
//! Every round flushes the idle Redis and replays each capture whole (the stock set up first,
//! then the checkouts). Per capture it prints the scripts and the commands they ran per
//! checkout, and the script µs per checkout (minimum and median of the rounds), then each
//! script's µs per call and per checkout: the median of a second replay in every round, with
//! SLOWLOG on (which adds ~10 %). A checkout is counted
//! per call of the script whose label starts with `--per` (default: the order's key taken by
//! begin, `order:{ord:#}:key:`). A label is the script's first key with its ids as `#`, its
//! number of keys and the start of its SHA.

mod monitor;

use std::collections::HashMap;

use redis::aio::MultiplexedConnection;

struct Capture {
    name: String,
    /// What was loaded while it was captured: (`SCRIPT` or `FUNCTION`, the source).
    sources: Vec<(&'static str, Vec<u8>)>,
    /// The script calls clients made, in order: (label, `EVALSHA` or `FCALL`, arguments after
    /// the command name).
    calls: Vec<(String, &'static str, Vec<Vec<u8>>)>,
    /// The commands each call ran, as MONITOR showed them after it.
    ran: Vec<Vec<Vec<Vec<u8>>>>,
    /// Its checkouts when given, not counted by label (the stand-in's requests).
    given: Option<f64>,
}

/// The commands that call a script, as INFO commandstats names them.
const CALLS: [&str; 2] = ["evalsha", "fcall"];

/// The script's first key with digits and id-like runs as `#`, its number of keys and the start
/// of its SHA or function name (two scripts may share the rest: reserve and complete).
fn label(args: &[Vec<u8>]) -> String {
    let sha: String = args
        .first()
        .map(|s| String::from_utf8_lossy(s).chars().take(8).collect())
        .unwrap_or_default();
    let keys = args
        .get(1)
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    let first = args
        .get(2)
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let id_like = run.len() >= 12 || run.chars().all(|c| c.is_ascii_digit());
        if !run.is_empty() {
            out.push_str(if id_like { "#" } else { run.as_str() });
        }
        run.clear();
    };
    for c in first.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    format!("{out} ({keys} keys, {sha})")
}

fn read_capture(path: &str) -> Result<Capture, String> {
    let text = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let text = String::from_utf8_lossy(&text);
    let mut sources = Vec::new();
    let mut calls = Vec::new();
    let mut ran: Vec<Vec<Vec<Vec<u8>>>> = Vec::new();
    for line in text.lines().filter_map(monitor::parse) {
        if line.from_script {
            // A script's commands follow its call: Redis runs one thing at a time.
            if let Some(last) = ran.last_mut() {
                last.push(line.args);
            }
            continue;
        }
        let name = line.args[0].to_ascii_uppercase();
        let loads = line.args.len() >= 3 && line.args[1].eq_ignore_ascii_case(b"LOAD");
        if name == b"SCRIPT" && loads {
            sources.push(("SCRIPT", line.args[2].clone()));
        } else if name == b"FUNCTION" && loads {
            // FUNCTION LOAD [REPLACE] code: the code is last.
            sources.push(("FUNCTION", line.args[line.args.len() - 1].clone()));
        } else if (name == b"EVALSHA" || name == b"FCALL") && line.args.len() >= 3 {
            let args = line.args[1..].to_vec();
            let command = if name == b"FCALL" { "FCALL" } else { "EVALSHA" };
            calls.push((label(&args), command, args));
            ran.push(Vec::new());
        }
    }
    if calls.is_empty() {
        return Err(format!(
            "{path}: no EVALSHA or FCALL in it (was the capture taken with redis-cli monitor?)"
        ));
    }
    Ok(Capture {
        name: path.to_string(),
        sources,
        calls,
        ran,
        given: None,
    })
}

/// A script that runs `shape`'s commands (name, number of arguments) with the arguments from
/// ARGV in order, and nothing else.
fn floor_source(shape: &[(String, usize)]) -> String {
    let mut out = String::new();
    let mut next = 1;
    for (name, n) in shape {
        out.push_str(&format!("redis.call('{name}'"));
        for i in next..next + n {
            out.push_str(&format!(", ARGV[{i}]"));
        }
        out.push_str(")\n");
        next += n;
    }
    out.push_str("return 1\n");
    out
}

impl Capture {
    /// The same calls, each replaced by a script that runs only the commands it ran (see
    /// [`floor_source`]), under the same labels.
    fn floor(&self) -> Capture {
        let mut shas: HashMap<Vec<(String, usize)>, String> = HashMap::new();
        let mut sources = Vec::new();
        let mut calls = Vec::new();
        for ((label, _, _), commands) in self.calls.iter().zip(&self.ran) {
            let shape: Vec<(String, usize)> = commands
                .iter()
                .map(|c| (String::from_utf8_lossy(&c[0]).into_owned(), c.len() - 1))
                .collect();
            let sha = shas
                .entry(shape)
                .or_insert_with_key(|shape| {
                    let source = floor_source(shape);
                    let sha = redis::Script::new(&source).get_hash().to_string();
                    sources.push(("SCRIPT", source.into_bytes()));
                    sha
                })
                .clone();
            let mut args = vec![sha.into_bytes(), b"0".to_vec()];
            args.extend(commands.iter().flat_map(|c| c[1..].iter().cloned()));
            calls.push((label.clone(), "EVALSHA", args));
        }
        Capture {
            name: format!("{} (floor: its scripts' commands alone)", self.name),
            sources,
            ran: vec![Vec::new(); calls.len()],
            calls,
            given: self.given,
        }
    }

    /// Its checkouts: the calls of the script whose label starts with `per` (at least 1).
    fn checkouts(&self, per: &str) -> f64 {
        self.given
            .unwrap_or_else(|| self.calls.iter().filter(|(l, _, _)| l.starts_with(per)).count() as f64)
            .max(1.0)
    }
}

/// Runs a command whose answer is only OK.
async fn ok(conn: &mut MultiplexedConnection, cmd: &redis::Cmd) -> Result<(), String> {
    cmd.query_async::<()>(conn).await.map_err(|e| e.to_string())
}

/// One replay of a capture on a flushed Redis: (µs of script calls, commands the scripts ran,
/// script calls, error replies).
async fn replay(conn: &mut MultiplexedConnection, capture: &Capture) -> Result<(u64, u64, u64, u64), String> {
    let e = |e: redis::RedisError| e.to_string();
    ok(conn, &redis::cmd("FLUSHALL")).await?;
    ok(conn, redis::cmd("FUNCTION").arg("FLUSH")).await?;
    for (kind, source) in &capture.sources {
        let mut load = redis::cmd(kind);
        load.arg("LOAD");
        if *kind == "FUNCTION" {
            load.arg("REPLACE");
        }
        load.arg(source).query_async::<String>(conn).await.map_err(e)?;
    }
    ok(conn, redis::cmd("CONFIG").arg("RESETSTAT")).await?;
    let mut errors = 0;
    for (_, command, args) in &capture.calls {
        let reply: redis::RedisResult<redis::Value> = redis::cmd(command).arg(args).query_async(conn).await;
        if matches!(reply, Err(_) | Ok(redis::Value::ServerError(_))) {
            errors += 1;
        }
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .map_err(e)?;
    let (mut usec, mut inner, mut evals) = (0, 0, 0);
    for line in stats.lines() {
        let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
            continue;
        };
        let field = |key: &str| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match name {
            _ if CALLS.contains(&name) => {
                usec += field("usec=");
                evals += field("calls=");
            }
            "info" | "config" => {}
            _ => inner += field("calls="),
        }
    }
    Ok((usec, inner, evals, errors))
}

/// Each script's µs per call from SLOWLOG, by label: one more replay with every command logged.
async fn breakdown(conn: &mut MultiplexedConnection, capture: &Capture) -> Result<HashMap<String, (u64, u64)>, String> {
    let e = |e: redis::RedisError| e.to_string();
    let by_sha: HashMap<&[u8], &str> = capture
        .calls
        .iter()
        .map(|(label, _, args)| (args[0].as_slice(), label.as_str()))
        .collect();
    let set = |name: &'static str, value: i64| redis::cmd("CONFIG").arg("SET").arg(name).arg(value).clone();
    ok(conn, &set("slowlog-max-len", 1_000_000)).await?;
    ok(conn, &set("slowlog-log-slower-than", 0)).await?;
    ok(conn, redis::cmd("SLOWLOG").arg("RESET")).await?;
    let replayed = replay(conn, capture).await;
    ok(conn, &set("slowlog-log-slower-than", 10_000)).await?;
    replayed?;
    // Each entry: id, time, µs, arguments[, client address, client name].
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query_async(conn)
        .await
        .map_err(e)?;
    // Freed now, not in the middle of the next replay.
    ok(conn, redis::cmd("SLOWLOG").arg("RESET")).await?;
    let entries = entries.into_iter().filter_map(|entry| {
        let redis::Value::Array(items) = entry else { return None };
        let mut it = items.into_iter().skip(2);
        let micros: i64 = redis::from_redis_value(it.next()?).ok()?;
        let args: Vec<Vec<u8>> = redis::from_redis_value(it.next()?).ok()?;
        Some((micros, args))
    });
    let mut out: HashMap<String, (u64, u64)> = HashMap::new();
    for (micros, args) in entries {
        if args.len() > 1
            && (args[0].eq_ignore_ascii_case(b"EVALSHA") || args[0].eq_ignore_ascii_case(b"FCALL"))
            && let Some(label) = by_sha.get(args[1].as_slice())
        {
            let slot = out.entry((*label).to_string()).or_default();
            slot.0 += 1;
            slot.1 += micros.max(0) as u64;
        }
    }
    Ok(out)
}

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("scriptcost: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "usage: scriptcost --redis-url URL [--rounds N] [--per PREFIX] [--floor] [--stand-in PATH=N] CAPTURE..."
        );
        return Ok(());
    }
    let url = arg_value(&args, "--redis-url").ok_or("--redis-url is required (an idle Redis: it is flushed)")?;
    let rounds: usize = arg_value(&args, "--rounds")
        .map(|r| r.parse().map_err(|_| "--rounds must be a number"))
        .transpose()?
        .unwrap_or(5);
    let per = arg_value(&args, "--per").unwrap_or_else(|| "order:{ord:#}:key:".to_string());
    let floor = args.iter().any(|a| a == "--floor");
    let mut paths = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--floor" {
            i += 1;
        } else if args[i].starts_with("--") {
            i += 2;
        } else {
            paths.push(args[i].clone());
            i += 1;
        }
    }
    let mut captures = Vec::new();
    let stand_in = arg_value(&args, "--stand-in");
    if let Some(spec) = &stand_in {
        let (path, n) = spec
            .rsplit_once('=')
            .and_then(|(p, n)| Some((p, n.parse::<f64>().ok()?)))
            .ok_or("--stand-in takes PATH=N, N its requests")?;
        let mut capture = read_capture(path)?;
        capture.name = format!("{path} (the stand-in)");
        capture.given = Some(n);
        captures.push(capture);
    }
    for path in &paths {
        let capture = read_capture(path)?;
        let floor = floor.then(|| capture.floor());
        captures.push(capture);
        captures.extend(floor);
    }
    let client = redis::Client::open(url.as_str()).map_err(|e| format!("{url}: {e}"))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("{url}: {e}"))?;

    let checkouts: Vec<f64> = captures.iter().map(|c| c.checkouts(&per)).collect();
    let mut totals: Vec<Vec<f64>> = vec![Vec::new(); captures.len()];
    let mut counts = vec![(0.0, 0.0, 0); captures.len()];
    // Per capture, per label: calls per checkout, and µs per call of each SLOWLOG round.
    let mut shares: Vec<HashMap<String, (f64, Vec<f64>)>> = vec![HashMap::new(); captures.len()];
    for _ in 0..rounds {
        for (i, capture) in captures.iter().enumerate() {
            let checkouts = checkouts[i];
            let (usec, inner, evals, errors) = replay(&mut conn, capture).await?;
            totals[i].push(usec as f64 / checkouts);
            counts[i] = (evals as f64 / checkouts, inner as f64 / checkouts, errors);
            for (label, (calls, micros)) in breakdown(&mut conn, capture).await? {
                let slot = shares[i].entry(label).or_default();
                slot.0 = calls as f64 / checkouts;
                slot.1.push(micros as f64 / calls.max(1) as f64);
            }
        }
    }
    let medians: Vec<f64> = totals.iter_mut().map(|t| median(t)).collect();
    for (i, capture) in captures.iter().enumerate() {
        let checkouts = checkouts[i];
        let min = totals[i].iter().copied().fold(f64::INFINITY, f64::min);
        let (evals, inner, errors) = counts[i];
        println!(
            "{}: {checkouts} checkouts; per checkout {evals:.2} scripts running {inner:.1} commands; \
             script µs per checkout min {min:.1}, median {:.1} of {rounds} rounds; {errors} error replies",
            capture.name, medians[i]
        );
        let mut rows: Vec<(String, f64, f64)> = shares[i]
            .iter_mut()
            .map(|(label, (calls, per_call))| (label.clone(), *calls, median(per_call)))
            .collect();
        rows.sort_by(|a, b| (b.1 * b.2).total_cmp(&(a.1 * a.2)));
        println!(
            "  {:>9} {:>9} {:>12}  script (median of the SLOWLOG rounds)",
            "calls/co", "µs/call", "µs/checkout"
        );
        for (label, calls, per_call) in rows {
            println!("  {calls:>9.2} {per_call:>9.1} {:>12.1}  {label}", calls * per_call);
        }
    }
    if stand_in.is_some() && medians[0] > 0.0 {
        println!("Script µs per checkout / the stand-in's (medians):");
        for (capture, m) in captures.iter().zip(&medians).skip(1) {
            println!("  {:>6.2}×  {}", m / medians[0], capture.name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_script_runs_each_command_with_its_arguments_in_order() {
        let shape = vec![("HSET".to_string(), 3), ("ZREM".to_string(), 2)];
        assert_eq!(
            floor_source(&shape),
            "redis.call('HSET', ARGV[1], ARGV[2], ARGV[3])\nredis.call('ZREM', ARGV[4], ARGV[5])\nreturn 1\n"
        );
    }

    #[test]
    fn a_floor_keeps_each_calls_label_and_passes_the_commands_arguments() {
        let capture = Capture {
            name: "c".into(),
            sources: Vec::new(),
            calls: vec![
                ("a".into(), "FCALL", vec![b"f1".to_vec(), b"0".to_vec()]),
                ("b".into(), "FCALL", vec![b"f2".to_vec(), b"0".to_vec()]),
            ],
            ran: vec![
                vec![vec![b"GET".to_vec(), b"k".to_vec()]],
                vec![vec![b"GET".to_vec(), b"j".to_vec()]],
            ],
            given: None,
        };
        let floor = capture.floor();
        assert_eq!(floor.sources.len(), 1, "one script per shape of commands");
        assert_eq!(floor.calls[0].0, "a");
        assert_eq!(floor.calls[1].2[2..], [b"j".to_vec()]);
        assert_eq!(floor.calls[0].2[0], floor.calls[1].2[0]);
    }

    #[test]
    fn a_label_hides_ids_and_counts_keys() {
        let args = |key: &str| vec![b"0123456789abcdef".to_vec(), b"5".to_vec(), key.as_bytes().to_vec()];
        assert_eq!(
            label(&args("order:{ord:12}:key:a1ea4c62-414a-43c8-bf0d-606b02ca42e7")),
            "order:{ord:#}:key:# (5 keys, 01234567)"
        );
        assert_eq!(
            label(&args("payment:{pay:3}:charge:ch_0cHtVRH4t1TaWRhsMiDLrT")),
            "payment:{pay:#}:charge:# (5 keys, 01234567)"
        );
    }
}
