//! CPU time of a set of processes and all their descendants, from /proc. Throughput on a shared
//! machine moves with its neighbours; CPU time per request moves much less, so it is the number
//! to compare two builds or two stacks by.

use std::collections::{BTreeMap, HashMap};

/// Clock ticks of a set of processes: all of them, Redis' part, and each command name's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ticks {
    pub total: u64,
    /// Processes named `redis-*`: the server and the AOF-rewrite child it forks.
    pub redis: u64,
    /// Per command name (`order-service`, `nginx`, …: every process of a name together).
    pub by_name: BTreeMap<String, u64>,
}

impl Ticks {
    /// Each name's ticks since `before`, most first, leaving out names that used none.
    pub fn by_name_since(&self, before: &Ticks) -> Vec<(String, u64)> {
        let mut used: Vec<(String, u64)> = self
            .by_name
            .iter()
            .map(|(name, &t)| {
                (
                    name.clone(),
                    t.saturating_sub(before.by_name.get(name).copied().unwrap_or(0)),
                )
            })
            .filter(|(_, t)| *t > 0)
            .collect();
        used.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        used
    }
}

/// utime + stime + the reaped children's (Redis's AOF rewrites are children it reaps), in
/// clock ticks, of `roots` and every process below them.
pub fn ticks(roots: &[u32]) -> Ticks {
    let mut sum = Ticks::default();
    if roots.is_empty() {
        return sum;
    }
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut own: HashMap<u32, (u64, String)> = HashMap::new();
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
        let name = head.split_once('(').map_or("?", |(_, comm)| comm).to_string();
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // After ')': state, ppid, … utime is the 12th, then stime, cutime, cstime.
        children.entry(field(1) as u32).or_default().push(pid);
        own.insert(pid, (field(11) + field(12) + field(13) + field(14), name));
    }
    let mut stack: Vec<u32> = roots.to_vec();
    while let Some(pid) = stack.pop() {
        if let Some((ticks, name)) = own.get(&pid) {
            sum.total += ticks;
            if name.starts_with("redis-") {
                sum.redis += ticks;
            }
            *sum.by_name.entry(name.clone()).or_default() += ticks;
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
        let named = after.by_name_since(&before);
        assert!(named.iter().any(|(name, t)| name == "sh" && *t > 0), "{named:?}");
        assert_eq!(ticks(&[]), Ticks::default(), "no roots, no time");
    }
}
