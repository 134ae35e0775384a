//! Load generator for `POST /order/checkout` through nginx.
//!
//! Closed loop (`--connections N`: N requests in flight, each sent when the last answered) shows
//! the peak; open loop (`--rate R`: requests start on a fixed schedule whether or not earlier
//! ones answered) shows latency without coordinated omission — each latency is measured from
//! when the request was due, not from when a busy client got round to sending it.
//!
//! It prints throughput, latency percentiles and outcomes by status and problem slug, a
//! progress line each second, a machine-readable `RESULT` line, and with `--check-books` waits
//! for the stack to settle and checks stock conservation and that the books balance (exit 1 if
//! not). Run with `--help` for the options.

mod aof;
mod books;
mod cpu;

use books::{check_books, setup_stock, stock_sums};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const HELP: &str = "loadgen [options]
  --url URL              gateway base URL (default http://127.0.0.1:8080)
  --path PATH            request path (default /order/checkout)
  --connections N        closed loop with N requests in flight (default 32)
  --rate R               open loop at R requests/s (overrides --connections)
  --duration SECS        measured duration (default 10)
  --warmup SECS          unmeasured closed-loop warm-up first (default 2)
  --items A-B            item ids drawn uniformly (default 1-10)
  --max-quantity Q       quantity drawn from 1..=Q (default 1)
  --decline-share F      share of pm_card_chargeDeclined (default 0.05)
  --duplicate-share F    share of requests that resend a recent key and body (default 0.05)
  --setup-stock UNITS    PUT every item with UNITS available first (needs --token)
  --wallets N            pay from N customers' wallets (credited first; needs --token)
                         instead of cards
  --webhook URL          first register a platform webhook endpoint at URL for every event
  --token T              internal token, for --setup-stock, --wallets, --webhook and --check-books
  --check-books          afterwards, wait until nothing is processing and check the books
  --label NAME           name in the RESULT line (default checkout)
  --cpu-of PIDS          comma-separated pids: report the CPU time they and their descendants
                         used per request during the measured run (Linux /proc), and how much
                         of it was Redis' (processes named redis-*)
  --redis-url URL[,URL]  the stack's Redis (a cluster's masters, comma-separated): wait until
                         none is rewriting its AOF before the run, report how long a rewrite
                         ran during the measured run (the first node's), and Redis' work per
                         request, summed over the nodes: script time, commands and AOF bytes
                         (INFO commandstats and persistence)
  --rewrite-after SECS   with --redis-url: have the first node rewrite its AOF (BGREWRITEAOF)
                         SECS into the measured run, to see what one costs
  --seed N               random seed (default: from the clock)";

struct Args {
    url: String,
    path: String,
    connections: usize,
    rate: Option<f64>,
    duration: Duration,
    warmup: Duration,
    items: (u64, u64),
    max_quantity: u64,
    decline_share: f64,
    duplicate_share: f64,
    setup_stock: Option<i64>,
    wallets: u64,
    webhook: Option<String>,
    token: String,
    check_books: bool,
    label: String,
    cpu_of: Vec<u32>,
    redis_url: Option<String>,
    rewrite_after: Option<Duration>,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.iter().any(|a| a == "--help" || a == "-h") {
        return Err(HELP.to_string());
    }
    let mut map: HashMap<String, String> = HashMap::new();
    let mut i = 0;
    while i < raw.len() {
        let name = raw[i].clone();
        if name == "--check-books" {
            map.insert(name, "true".into());
            i += 1;
            continue;
        }
        let value = raw.get(i + 1).ok_or(format!("{name} needs a value\n{HELP}"))?;
        map.insert(name, value.clone());
        i += 2;
    }
    let get = |k: &str, d: &str| map.get(k).cloned().unwrap_or_else(|| d.to_string());
    let num = |k: &str, d: &str| -> Result<f64, String> {
        get(k, d).parse::<f64>().map_err(|_| format!("{k} must be a number"))
    };
    let items = get("--items", "1-10");
    let (a, b) = items.split_once('-').unwrap_or((items.as_str(), items.as_str()));
    let items = (
        a.parse().map_err(|_| "--items must look like 1-10")?,
        b.parse().map_err(|_| "--items must look like 1-10")?,
    );
    let seed = match map.get("--seed") {
        Some(s) => s.parse().map_err(|_| "--seed must be an integer")?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    Ok(Args {
        url: get("--url", "http://127.0.0.1:8080").trim_end_matches('/').to_string(),
        path: get("--path", "/order/checkout"),
        connections: num("--connections", "32")? as usize,
        rate: map
            .get("--rate")
            .map(|r| r.parse::<f64>())
            .transpose()
            .map_err(|_| "--rate must be a number")?,
        duration: Duration::from_secs_f64(num("--duration", "10")?),
        warmup: Duration::from_secs_f64(num("--warmup", "2")?),
        items,
        max_quantity: (num("--max-quantity", "1")? as u64).max(1),
        decline_share: num("--decline-share", "0.05")?,
        duplicate_share: num("--duplicate-share", "0.05")?,
        setup_stock: map
            .get("--setup-stock")
            .map(|v| v.parse())
            .transpose()
            .map_err(|_| "--setup-stock")?,
        wallets: num("--wallets", "0")? as u64,
        webhook: map.get("--webhook").cloned(),
        token: get("--token", "dev-internal-token"),
        check_books: map.contains_key("--check-books"),
        label: get("--label", "checkout"),
        cpu_of: get("--cpu-of", "")
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| p.trim().parse().map_err(|_| "--cpu-of takes pids like 12,34"))
            .collect::<Result<_, _>>()?,
        redis_url: map.get("--redis-url").cloned(),
        rewrite_after: match map.get("--rewrite-after") {
            Some(s) => Some(
                s.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or("--rewrite-after must be a number of seconds")?,
            ),
            None => None,
        },
        seed: seed | 1,
    })
}

/// xorshift64*: enough randomness for a request mix, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

#[derive(Default)]
struct Stats {
    latencies_us: Vec<u64>,
    outcomes: BTreeMap<String, u64>,
}

/// What every sender shares: the mix, recent requests (for duplicates), the results.
struct Shared {
    args: Args,
    client: reqwest::Client,
    rng: Mutex<Rng>,
    recent: Mutex<VecDeque<(String, Value)>>,
    stats: Mutex<Stats>,
    done: AtomicU64,
    failed: AtomicU64,
}

impl Shared {
    fn next_request(&self) -> (String, Value) {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        if rng.unit() < self.args.duplicate_share {
            let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if !recent.is_empty() {
                let pick = (rng.next() as usize) % recent.len();
                return recent[pick].clone();
            }
        }
        let item = rng.range(self.args.items.0, self.args.items.1);
        let quantity = rng.range(1, self.args.max_quantity);
        let body = if self.args.wallets > 0 {
            let customer = format!("bench_w{}", rng.next() % self.args.wallets);
            json!({"itemId": item, "quantity": quantity, "paymentMethod": "wallet", "customerId": customer})
        } else {
            let method = if rng.unit() < self.args.decline_share {
                "pm_card_chargeDeclined"
            } else {
                "pm_card_visa"
            };
            json!({"itemId": item, "quantity": quantity, "paymentMethod": method})
        };
        drop(rng);
        let req = (uuid::Uuid::new_v4().to_string(), body);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= 64 {
            recent.pop_front();
        }
        recent.push_back(req.clone());
        req
    }

    /// Sends one request; `due` is when it should have started (open loop) or was sent.
    async fn send(&self, due: Instant, record: bool) {
        let (key, body) = self.next_request();
        let url = format!("{}{}", self.args.url, self.args.path);
        let result = self
            .client
            .post(url)
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await;
        let outcome = match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await.unwrap_or_default();
                if status < 300 {
                    status.to_string()
                } else {
                    let slug = serde_json::from_slice::<Value>(&bytes)
                        .ok()
                        .and_then(|v| {
                            v["type"]
                                .as_str()
                                .and_then(|t| t.rsplit('/').next())
                                .map(str::to_string)
                        })
                        .unwrap_or_default();
                    format!("{status} {slug}")
                }
            }
            Err(e) if e.is_timeout() => "error timeout".to_string(),
            Err(e) if e.is_connect() => "error connect".to_string(),
            Err(_) => "error transport".to_string(),
        };
        let elapsed = due.elapsed().as_micros() as u64;
        self.done.fetch_add(1, Ordering::Relaxed);
        if outcome.starts_with('5') || outcome.starts_with("error") {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if record {
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.latencies_us.push(elapsed);
            *stats.outcomes.entry(outcome).or_default() += 1;
        }
    }
}

async fn closed_loop(shared: Arc<Shared>, connections: usize, length: Duration, record: bool) {
    let end = Instant::now() + length;
    let workers = (0..connections).map(|_| {
        let shared = shared.clone();
        tokio::spawn(async move {
            while Instant::now() < end {
                shared.send(Instant::now(), record).await;
            }
        })
    });
    futures_util::future::join_all(workers).await;
}

async fn open_loop(shared: Arc<Shared>, rate: f64, length: Duration) {
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut tasks = Vec::new();
    let mut n: u32 = 0;
    loop {
        let due = start + interval * n;
        if due.duration_since(start) >= length {
            break;
        }
        tokio::time::sleep_until(due).await;
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move { shared.send(due.into_std(), true).await }));
        n += 1;
    }
    futures_util::future::join_all(tasks).await;
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

/// One line a second; with the p99 of the requests that ended in it, so a stall shows when it
/// happened (the run's own percentiles cannot say).
async fn progress(shared: Arc<Shared>) {
    let start = Instant::now();
    let mut last = 0;
    let mut recorded = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let done = shared.done.load(Ordering::Relaxed);
        let mut second: Vec<u64> = {
            let stats = shared.stats.lock().unwrap_or_else(|p| p.into_inner());
            let new = stats.latencies_us.get(recorded..).unwrap_or_default().to_vec();
            recorded = stats.latencies_us.len();
            new
        };
        second.sort_unstable();
        let p99 = if second.is_empty() {
            String::new()
        } else {
            format!("  p99 {:>7.2} ms", percentile(&second, 99.0))
        };
        eprintln!(
            "[{:>4.0}s] {done:>8} done  {:>6} req/s{p99}  {} failed",
            start.elapsed().as_secs_f64(),
            done - last,
            shared.failed.load(Ordering::Relaxed)
        );
        last = done;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let client = match shared::tls::client_builder()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("http client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let seed = args.seed;
    let shared = Arc::new(Shared {
        rng: Mutex::new(Rng(seed)),
        args,
        client,
        recent: Mutex::new(VecDeque::new()),
        stats: Mutex::new(Stats::default()),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let a = &shared.args;
    if let Some(url) = &a.webhook
        && let Err(e) = books::subscribe(&shared, url).await
    {
        eprintln!("setup: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = books::setup_wallets(&shared, a.wallets).await {
        eprintln!("setup: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(units) = a.setup_stock
        && let Err(e) = setup_stock(&shared, units).await
    {
        eprintln!("setup: {e}");
        return ExitCode::FAILURE;
    }
    let before = if a.check_books {
        match stock_sums(&shared).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("books: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        BTreeMap::new()
    };
    let mode = match a.rate {
        Some(r) => format!("open loop at {r} req/s"),
        None => format!("closed loop, {} connections", a.connections),
    };
    eprintln!(
        "{}: {}{} for {:?} after {:?} warm-up (seed {seed})",
        a.label, a.url, a.path, a.duration, a.warmup
    );
    let mut nodes = Vec::new();
    for url in a
        .redis_url
        .iter()
        .flat_map(|urls| urls.split(','))
        .filter(|u| !u.is_empty())
    {
        match aof::connect(url).await {
            Ok(conn) => nodes.push(conn),
            Err(e) => {
                eprintln!("redis: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    for conn in &nodes {
        if let Err(e) = aof::wait_idle(conn.clone()).await {
            eprintln!("redis: {e}");
            return ExitCode::FAILURE;
        }
    }
    let redis = (!nodes.is_empty()).then_some(nodes);
    let ticker = tokio::spawn(progress(shared.clone()));
    if !a.warmup.is_zero() {
        closed_loop(shared.clone(), a.connections.max(1), a.warmup, false).await;
    }
    let cpu_before = cpu::ticks(&a.cpu_of);
    let work_before = match &redis {
        Some(nodes) => Some(aof::work_of(nodes).await),
        None => None,
    };
    let rewrites = redis.as_ref().and_then(|nodes| nodes.first()).cloned().map(aof::watch);
    let forced = match (a.rewrite_after, redis.as_ref().and_then(|nodes| nodes.first())) {
        (Some(after), Some(conn)) => Some(aof::rewrite_after(conn.clone(), after)),
        (Some(_), None) => {
            eprintln!("--rewrite-after needs --redis-url");
            return ExitCode::FAILURE;
        }
        _ => None,
    };
    let started = Instant::now();
    match a.rate {
        Some(rate) => open_loop(shared.clone(), rate, a.duration).await,
        None => closed_loop(shared.clone(), a.connections.max(1), a.duration, true).await,
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu::ticks(&a.cpu_of);
    let cpu_used = cpu::seconds(cpu_after.total.saturating_sub(cpu_before.total));
    let redis_cpu_used = cpu::seconds(cpu_after.redis.saturating_sub(cpu_before.redis));
    // Redis' work during the run: script time, commands, AOF bytes.
    let work = match (&redis, work_before) {
        (Some(nodes), Some(Ok(before))) => Some(aof::work_of(nodes).await.map(|after| after.since(before))),
        (_, Some(Err(e))) => Some(Err(e)),
        _ => None,
    };
    let rewrites = match rewrites {
        Some(watch) => Some(watch.stop().await),
        None => None,
    };
    if let Some(task) = forced
        && let Err(e) = task.await.map_err(|e| e.to_string()).and_then(|r| r)
    {
        eprintln!("redis: could not start the AOF rewrite: {e}");
        return ExitCode::FAILURE;
    }
    ticker.abort();

    let (mut lat, outcomes) = {
        let mut stats = shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        (
            std::mem::take(&mut stats.latencies_us),
            std::mem::take(&mut stats.outcomes),
        )
    };
    lat.sort_unstable();
    let total = lat.len() as u64;
    let rps = total as f64 / elapsed;
    let failed: u64 = outcomes
        .iter()
        .filter(|(k, _)| k.starts_with('5') || k.starts_with("error"))
        .map(|(_, v)| v)
        .sum();
    let (p50, p90, p99, p999) = (
        percentile(&lat, 50.0),
        percentile(&lat, 90.0),
        percentile(&lat, 99.0),
        percentile(&lat, 99.9),
    );
    let max = lat.last().copied().unwrap_or(0) as f64 / 1000.0;
    println!("{} ({mode}, {elapsed:.1} s)", a.label);
    println!("  requests {total}   throughput {rps:.1} req/s");
    println!("  latency ms   p50 {p50:.2}   p90 {p90:.2}   p99 {p99:.2}   p99.9 {p999:.2}   max {max:.2}");
    let per_request = |seconds: f64| (!a.cpu_of.is_empty() && total > 0).then(|| seconds * 1e6 / total as f64);
    let cpu_us = per_request(cpu_used);
    let redis_cpu_us = per_request(redis_cpu_used);
    // Where the stack's CPU went, per process name: "name:µs,…", most first.
    let mut cpu_by = "-".to_string();
    if let (Some(us), Some(redis_us)) = (cpu_us, redis_cpu_us) {
        println!(
            "  CPU of the stack (not the load generator): {us:.0} µs per request ({redis_us:.0} of them Redis'), {:.2} cores busy",
            cpu_used / elapsed
        );
        let us_per_tick = cpu::seconds(1) * 1e6 / total as f64;
        let by_name: Vec<String> = cpu_after
            .by_name_since(&cpu_before)
            .into_iter()
            .map(|(name, ticks)| format!("{name}:{:.0}", ticks as f64 * us_per_tick))
            .collect();
        println!("    by process, µs per request: {}", by_name.join(" "));
        cpu_by = by_name.join(",");
    }
    let (script_us, commands, aof_bytes) = match &work {
        Some(Ok((usec, commands, aof))) if total > 0 => {
            let per = |n: u64| n as f64 / total as f64;
            println!(
                "  Redis ran scripts for {:.0} µs per request (wall time inside Redis, INFO commandstats); {:.1} commands per request",
                per(*usec),
                per(*commands)
            );
            match aof {
                Some(bytes) => println!("  the AOF grew by {:.0} bytes per request", per(*bytes)),
                None => println!("  the AOF's growth is unknown: it was rewritten during the run"),
            }
            (Some(per(*usec)), Some(per(*commands)), aof.map(per))
        }
        Some(Err(e)) => {
            println!("  Redis' work: could not read it: {e}");
            (None, None, None)
        }
        _ => (None, None, None),
    };
    match &rewrites {
        Some(Ok(r)) => println!(
            "  Redis rewrote its AOF for {:.1} s of the run ({} rewrite(s) started in it)",
            r.seconds, r.started
        ),
        Some(Err(e)) => println!("  Redis' AOF rewrites: could not watch them: {e}"),
        None => {}
    }
    println!("  outcomes");
    for (outcome, n) in &outcomes {
        println!("    {outcome:<36} {n:>9}");
    }
    let mut books_ok = true;
    if a.check_books {
        match check_books(&shared, &before).await {
            Ok(v) if v.is_empty() => {
                println!("  books: hold (stock conserved, nothing reserved, charged − refunded = completed)")
            }
            Ok(v) => {
                books_ok = false;
                println!("  books: VIOLATED");
                for line in v {
                    println!("    {line}");
                }
            }
            Err(e) => {
                books_ok = false;
                println!("  books: could not check: {e}");
            }
        }
    }
    println!(
        "RESULT label={} rps={rps:.1} p50={p50:.2} p90={p90:.2} p99={p99:.2} p999={p999:.2} max={max:.2} failed={failed} cpu_us={} redis_cpu_us={} script_us={} cmds={} aof_bytes={} aof_rewrite_s={} books={} cpu_by={cpu_by}",
        a.label,
        cpu_us.map_or("-".to_string(), |us| format!("{us:.0}")),
        redis_cpu_us.map_or("-".to_string(), |us| format!("{us:.0}")),
        script_us.map_or("-".to_string(), |us| format!("{us:.0}")),
        commands.map_or("-".to_string(), |n| format!("{n:.1}")),
        aof_bytes.map_or("-".to_string(), |b| format!("{b:.0}")),
        match &rewrites {
            None => "-".to_string(),
            Some(Err(_)) => "?".to_string(),
            Some(Ok(r)) => format!("{:.1}", r.seconds),
        },
        if !a.check_books {
            "unchecked"
        } else if books_ok {
            "ok"
        } else {
            "violated"
        }
    );
    if books_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
