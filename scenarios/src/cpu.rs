//! Where a bench's CPU went: each process's and each of its threads' CPU time from
//! /proc, sampled before and after a run, turned into cores busy (CPU seconds per
//! second of wall time). A thread near 1.0 is a ceiling: that work cannot go faster
//! on more cores.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

/// Linux reports CPU times in USER_HZ = 100 ticks per second: milliseconds per tick.
const TICK_MS: u64 = 10;

/// How many of a process's busiest threads a report names.
const THREADS_NAMED: usize = 3;

/// CPU time (user + system) from the text of a `/proc/.../stat` file, with the
/// command name in it.
fn parse_stat(stat: &str) -> Option<(String, Duration)> {
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based overall).
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((name, Duration::from_millis(ticks.saturating_mul(TICK_MS))))
}

/// CPU time of process `pid` ("self" for this one) so far; zero when it is gone.
pub fn process_time(pid: &str) -> Duration {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_stat(&s))
        .map(|(_, t)| t)
        .unwrap_or_default()
}

/// One process's CPU time so far, in all and by thread (threads of one name summed:
/// a runtime's workers share theirs).
#[derive(Debug, Clone, Default)]
pub struct Sample {
    total: Duration,
    threads: BTreeMap<String, Duration>,
}

impl Sample {
    /// Process `pid` now.
    pub fn take(pid: &str) -> Sample {
        let mut threads = BTreeMap::new();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten();
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            if let Some((name, t)) = parse_stat(&stat) {
                *threads.entry(name).or_default() += t;
            }
        }
        Sample {
            total: process_time(pid),
            threads,
        }
    }

    /// The CPU time spent between `before` and this sample.
    pub fn since(&self, before: &Sample) -> Duration {
        self.total.saturating_sub(before.total)
    }

    /// Cores busy between `before` and this sample over `wall`: the process's, and its
    /// busiest threads' (by name), highest first.
    pub fn busy(&self, before: &Sample, wall: Duration, label: &str) -> Value {
        let cores = |d: Duration| round2(d.as_secs_f64() / wall.as_secs_f64().max(1e-9));
        let mut threads: Vec<(&String, Duration)> = self
            .threads
            .iter()
            .map(|(name, t)| {
                let was = before.threads.get(name).copied().unwrap_or_default();
                (name, t.saturating_sub(was))
            })
            .collect();
        threads.sort_by_key(|t| std::cmp::Reverse(t.1));
        let named: Vec<Value> = threads
            .into_iter()
            .take(THREADS_NAMED)
            .map(|(name, t)| json!({ "thread": name, "cores_busy": cores(t) }))
            .collect();
        json!({ "process": label, "cores_busy": cores(self.since(before)), "busiest_threads": named })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// One line for a process's `busy` report: "b1 1.23 cores (store-writer-1 0.95, ...)".
pub fn busy_line(v: &Value) -> String {
    let threads: Vec<String> = v["busiest_threads"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let busy = t["cores_busy"].as_f64().unwrap_or(0.0);
            format!("{} {busy:.2}", t["thread"].as_str().unwrap_or("?"))
        })
        .collect();
    format!(
        "{} {:.2} cores ({})",
        v["process"].as_str().unwrap_or("?"),
        v["cores_busy"].as_f64().unwrap_or(0.0),
        threads.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_the_name_and_user_plus_system_time() {
        // A thread name may hold spaces and parentheses: the last ')' ends it.
        let stat = "4242 (store-writer (1)) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 9 0";
        let (name, t) = parse_stat(stat).expect("parsed");
        assert_eq!(name, "store-writer (1)");
        assert_eq!(t, Duration::from_millis(3250));
    }

    #[test]
    fn this_process_is_sampled_with_its_threads() {
        let before = Sample::take("self");
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        // Spins until the kernel has counted some of it (bounded, for a busy machine).
        while process_time("self") < before.total + Duration::from_millis(3 * TICK_MS)
            && spin.elapsed() < Duration::from_secs(10)
        {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = Sample::take("self");
        assert!(!after.threads.is_empty());
        let v = after.busy(&before, spin.elapsed(), "me");
        assert!(v["cores_busy"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
        assert!(busy_line(&v).starts_with("me "), "{}", busy_line(&v));
    }
}
