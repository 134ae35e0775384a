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
  --token T              internal token, for --setup-stock and --check-books
  --check-books          afterwards, wait until nothing is processing and check the books
  --label NAME           name in the RESULT line (default checkout)
  --cpu-of PIDS          comma-separated pids: report the CPU time they and their descendants
                         used per request during the measured run (Linux /proc), and how much
                         of it was Redis' (processes named redis-*)
  --redis-url URL        the stack's Redis: wait until it is not rewriting its AOF before the
                         run, report how long a rewrite ran during the measured run, and the
                         time Redis spent running scripts per request (INFO commandstats)
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
    token: String,
    check_books: bool,
    label: String,
    cpu_of: Vec<u32>,
    redis_url: Option<String>,
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
        token: get("--token", "dev-internal-token"),
        check_books: map.contains_key("--check-books"),
        label: get("--label", "checkout"),
        cpu_of: get("--cpu-of", "")
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| p.trim().parse().map_err(|_| "--cpu-of takes pids like 12,34"))
            .collect::<Result<_, _>>()?,
        redis_url: map.get("--redis-url").cloned(),
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
        let method = if rng.unit() < self.args.decline_share {
            "pm_card_chargeDeclined"
        } else {
            "pm_card_visa"
        };
        drop(rng);
        let req = (
            uuid::Uuid::new_v4().to_string(),
            json!({"itemId": item, "quantity": quantity, "paymentMethod": method}),
        );
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

async fn get_json(shared: &Shared, path: &str) -> Result<Value, String> {
    let resp = shared
        .client
        .get(format!("{}{path}", shared.args.url))
        .bearer_auth(&shared.args.token)
        .send()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("GET {path}: {}", resp.status()));
    }
    resp.json().await.map_err(|e| format!("GET {path}: {e}"))
}

/// available + reserved + sold per item.
async fn stock_sums(shared: &Shared) -> Result<BTreeMap<u64, (i64, i64)>, String> {
    let items = get_json(shared, "/stock/items").await?;
    let list = items
        .as_array()
        .or_else(|| items["items"].as_array())
        .cloned()
        .unwrap_or_default();
    let mut sums = BTreeMap::new();
    for item in list {
        let id = item["id"].as_u64().unwrap_or(0);
        let n = |f: &str| item[f].as_i64().unwrap_or(0);
        sums.insert(id, (n("available") + n("reserved") + n("sold"), n("reserved")));
    }
    Ok(sums)
}

async fn check_books(shared: &Shared, before: &BTreeMap<u64, (i64, i64)>) -> Result<Vec<String>, String> {
    // Checkouts still running (202s, recovery) must end before the books can balance.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let totals = get_json(shared, "/order/totals").await?;
        let processing: i64 = totals
            .as_object()
            .map(|m| m.values().map(|c| c["processing"]["count"].as_i64().unwrap_or(0)).sum())
            .unwrap_or(0);
        if processing == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Ok(vec![format!("{processing} orders still processing after 90 s")]);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut violations = Vec::new();
    for (id, (sum, reserved)) in stock_sums(shared).await? {
        if let Some((was, _)) = before.get(&id)
            && *was != sum
        {
            violations.push(format!("item {id}: available+reserved+sold went from {was} to {sum}"));
        }
        if reserved != 0 {
            violations.push(format!("item {id}: {reserved} units still reserved"));
        }
    }
    let orders = get_json(shared, "/order/totals").await?;
    let payments = get_json(shared, "/payment/totals").await?;
    for (currency, o) in orders.as_object().cloned().unwrap_or_default() {
        if currency == "XXX" {
            continue;
        }
        let completed = o["completed"]["amount"].as_i64().unwrap_or(0);
        let p = &payments[&currency];
        let net = p["charged"]["amount"].as_i64().unwrap_or(0) - p["refunded"]["amount"].as_i64().unwrap_or(0);
        if net != completed {
            violations.push(format!(
                "{currency}: charged − refunded = {net}, completed orders = {completed}"
            ));
        }
    }
    Ok(violations)
}

async fn setup_stock(shared: &Shared, units: i64) -> Result<(), String> {
    for id in shared.args.items.0..=shared.args.items.1 {
        let resp = shared
            .client
            .put(format!("{}/stock/items/{id}", shared.args.url))
            .bearer_auth(&shared.args.token)
            .json(&json!({"name": format!("Bench item {id}"), "price": 100 + id as i64, "currency": "USD", "available": units}))
            .send()
            .await
            .map_err(|e| format!("PUT item {id}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("PUT item {id}: {}", resp.status()));
        }
    }
    Ok(())
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
    let client = match reqwest::Client::builder()
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
    let redis = match &a.redis_url {
        Some(url) => match aof::connect(url).await {
            Ok(conn) => Some(conn),
            Err(e) => {
                eprintln!("redis: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    if let Some(conn) = &redis
        && let Err(e) = aof::wait_idle(conn.clone()).await
    {
        eprintln!("redis: {e}");
        return ExitCode::FAILURE;
    }
    let ticker = tokio::spawn(progress(shared.clone()));
    if !a.warmup.is_zero() {
        closed_loop(shared.clone(), a.connections.max(1), a.warmup, false).await;
    }
    let cpu_before = cpu::ticks(&a.cpu_of);
    let scripts_before = match &redis {
        Some(conn) => Some(aof::script_usec(conn.clone()).await),
        None => None,
    };
    let rewrites = redis.clone().map(aof::watch);
    let started = Instant::now();
    match a.rate {
        Some(rate) => open_loop(shared.clone(), rate, a.duration).await,
        None => closed_loop(shared.clone(), a.connections.max(1), a.duration, true).await,
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = cpu::ticks(&a.cpu_of);
    let cpu_used = cpu::seconds(cpu_after.total.saturating_sub(cpu_before.total));
    let redis_cpu_used = cpu::seconds(cpu_after.redis.saturating_sub(cpu_before.redis));
    let scripts_usec = match (&redis, scripts_before) {
        (Some(conn), Some(Ok(before))) => Some(
            aof::script_usec(conn.clone())
                .await
                .map(|after| after.saturating_sub(before)),
        ),
        (_, Some(Err(e))) => Some(Err(e)),
        _ => None,
    };
    let rewrites = match rewrites {
        Some(watch) => Some(watch.stop().await),
        None => None,
    };
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
    if let (Some(us), Some(redis_us)) = (cpu_us, redis_cpu_us) {
        println!(
            "  CPU of the stack (not the load generator): {us:.0} µs per request ({redis_us:.0} of them Redis'), {:.2} cores busy",
            cpu_used / elapsed
        );
    }
    let script_us = match &scripts_usec {
        Some(Ok(usec)) if total > 0 => {
            let us = *usec as f64 / total as f64;
            println!("  Redis ran scripts for {us:.0} µs per request (wall time inside Redis, INFO commandstats)");
            Some(us)
        }
        Some(Err(e)) => {
            println!("  Redis' script time: could not read it: {e}");
            None
        }
        _ => None,
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
        "RESULT label={} rps={rps:.1} p50={p50:.2} p90={p90:.2} p99={p99:.2} p999={p999:.2} max={max:.2} failed={failed} cpu_us={} redis_cpu_us={} script_us={} aof_rewrite_s={} books={}",
        a.label,
        cpu_us.map_or("-".to_string(), |us| format!("{us:.0}")),
        redis_cpu_us.map_or("-".to_string(), |us| format!("{us:.0}")),
        script_us.map_or("-".to_string(), |us| format!("{us:.0}")),
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

/// CPU time of a set of processes and all their descendants, from /proc. Throughput on a shared
/// machine moves with its neighbours; CPU time per request moves much less, so it is the number
/// to compare two builds or two stacks by.
mod cpu {
    use std::collections::HashMap;

    /// Clock ticks of a set of processes: all of them, and Redis' part.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Ticks {
        pub total: u64,
        /// Processes named `redis-*`: the server and the AOF-rewrite child it forks.
        pub redis: u64,
    }

    /// utime + stime + the reaped children's (Redis's AOF rewrites are children it reaps), in
    /// clock ticks, of `roots` and every process below them.
    pub fn ticks(roots: &[u32]) -> Ticks {
        let mut sum = Ticks::default();
        if roots.is_empty() {
            return sum;
        }
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut own: HashMap<u32, (u64, bool)> = HashMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return sum;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The command name is in parentheses and may hold spaces: fields count from the last ')'.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let is_redis = head.split_once('(').is_some_and(|(_, comm)| comm.starts_with("redis-"));
            let f: Vec<&str> = rest.split_whitespace().collect();
            let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // After ')': state, ppid, … utime is the 12th, then stime, cutime, cstime.
            children.entry(field(1) as u32).or_default().push(pid);
            own.insert(pid, (field(11) + field(12) + field(13) + field(14), is_redis));
        }
        let mut stack: Vec<u32> = roots.to_vec();
        while let Some(pid) = stack.pop() {
            if let Some(&(ticks, is_redis)) = own.get(&pid) {
                sum.total += ticks;
                if is_redis {
                    sum.redis += ticks;
                }
            }
            stack.extend(children.get(&pid).into_iter().flatten());
        }
        sum
    }

    pub fn seconds(ticks: u64) -> f64 {
        ticks as f64 / clock_ticks_per_second()
    }

    fn clock_ticks_per_second() -> f64 {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn counts_the_cpu_of_processes_below_the_root() {
            // A grandchild (timeout → sh) spins for a second; walking down from this process must
            // find its time while it runs.
            let mut child = std::process::Command::new("timeout")
                .args(["1", "sh", "-c", "while :; do :; done"])
                .spawn()
                .expect("timeout and sh run");
            let me = std::process::id();
            let before = ticks(&[me]);
            std::thread::sleep(std::time::Duration::from_millis(700));
            let after = ticks(&[me]);
            let _ = child.wait();
            let busy = seconds(after.total.saturating_sub(before.total));
            assert!(busy >= 0.1, "a process spinning for 0.7 s added only {busy:.2} s");
            assert_eq!(after.redis, before.redis, "no Redis below this test, so no Redis time");
            assert_eq!(ticks(&[]), Ticks::default(), "no roots, no time");
        }
    }
}

/// Redis' AOF rewrites around a run. A rewrite forks Redis, and the child takes a core for as
/// long as it runs (about a second per 100 MB of data here): on a small machine it shows in the
/// tail. So a run does not start while the previous run's rewrite is still going, and its report
/// says how long a rewrite of its own ran.
mod aof {
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
}
