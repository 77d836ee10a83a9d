//! `scenarios bench`: closed-loop load from many concurrent tellers against a local
//! network with fsync on, local and cross-branch transfers measured separately:
//! transfers/s, latency p50/p99/max and CPU per transfer, then every invariant.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::check;
use crate::cluster::Cluster;
use crate::report::percentile;
use crate::workload::{
    self, Answer, Column, Entry, Mix, Person, Progress, Senders, Tellers, Workload,
};

/// How long the network may take to finish in-flight transfers after the load.
const SETTLE_BOUND: Duration = Duration::from_secs(60);

/// Each account's opening deposit, minor units: enough that no transfer is refused
/// for funds.
const INITIAL_MINOR: i64 = 1_000_000_000;

/// Bench settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub branches: u16,
    /// Seconds per mix.
    pub duration_s: u64,
    pub clients: usize,
    /// Teller connections per branch the clients share.
    pub connections: usize,
    pub accounts_per_branch: usize,
    pub mix: BenchMix,
}

/// Which mixes a bench measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMix {
    Local,
    Cross,
    Both,
}

/// CPU time (user + system) of process `pid` so far, from /proc (Linux reports it in
/// USER_HZ = 100 ticks per second).
fn cpu_time(pid: &str) -> Duration {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After the command: state is field 3, utime 14, stime 15 (1-based overall).
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(Duration::from_millis(ticks * 10))
        })
        .unwrap_or_default()
}

/// Runs the bench in `dir`; returns the JSON result (also printed as a table).
pub async fn run(opts: &BenchOptions, dir: &Path) -> anyhow::Result<Value> {
    let cluster = Cluster::start(dir, opts.branches, &[])?;
    let targets = (0..cluster.nodes.len())
        .map(|i| cluster.target(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Plenty in every account, so transfers are not refused for funds.
    let (accounts, mut committed) =
        workload::open_accounts(&targets, opts.accounts_per_branch, INITIAL_MINOR).await?;
    let tellers = Tellers::connect(&targets, opts.connections).await?;
    let admins: Vec<Person> = (0..targets.len()).map(Person::Admin).collect();
    tellers.warm(&admins).await?;
    let pids: Vec<String> = cluster.pids().iter().map(u32::to_string).collect();
    let mut results = Vec::new();
    for (name, mix) in [
        (
            "local",
            Mix {
                deposit: 0,
                withdraw: 0,
                local: 1,
                cross: 0,
                refused: 0,
            },
        ),
        (
            "cross-branch",
            Mix {
                deposit: 0,
                withdraw: 0,
                local: 0,
                cross: 1,
                refused: 0,
            },
        ),
    ]
    .into_iter()
    .filter(|(_, m)| match opts.mix {
        BenchMix::Local => m.local > 0,
        BenchMix::Cross => m.cross > 0,
        BenchMix::Both => true,
    }) {
        let w = Workload {
            clients: opts.clients,
            duration_ms: Some(opts.duration_s * 1000),
            mix,
            amount_max_minor: 100,
            // The data path: each branch's admin through their own branch, no resends.
            senders: Senders::Admins,
            entry: Entry::Home,
            resend_percent: 0,
            ..Workload::default()
        };
        let nodes_before: Duration = pids.iter().map(|p| cpu_time(p)).sum();
        let me_before = cpu_time("self");
        let start = Instant::now();
        let records = workload::run(&w, &accounts, &tellers, Arc::new(Progress::default())).await?;
        let wall = start.elapsed();
        let nodes_cpu = pids.iter().map(|p| cpu_time(p)).sum::<Duration>() - nodes_before;
        let me_cpu = cpu_time("self") - me_before;
        let ok: Vec<_> = records
            .iter()
            .filter(|r| r.answer == Answer::Committed)
            .collect();
        committed.extend(ok.iter().map(|r| r.id));
        let count = |c: Column| records.iter().filter(|r| r.answer.column() == c).count();
        let (aborted, refused, unknown) = (
            count(Column::Aborted),
            count(Column::Refused),
            count(Column::NotDone) + count(Column::Unknown),
        );
        let mut lat: Vec<Duration> = ok.iter().map(|r| r.latency).collect();
        lat.sort();
        let n = ok.len().max(1) as f64;
        let result = json!({
            "mix": name,
            "committed": ok.len(),
            "not_committed": records.len() - ok.len(),
            "aborted": aborted,
            "refused": refused,
            "unknown": unknown,
            "transfers_per_s": ok.len() as f64 / wall.as_secs_f64(),
            "p50_ms": percentile(&lat, 50.0).as_secs_f64() * 1000.0,
            "p99_ms": percentile(&lat, 99.0).as_secs_f64() * 1000.0,
            "max_ms": lat.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
            "node_cpu_us_per_transfer": nodes_cpu.as_secs_f64() * 1e6 / n,
            "client_cpu_us_per_transfer": me_cpu.as_secs_f64() * 1e6 / n,
        });
        eprintln!(
            "{name:>13}: {:>8.0} transfers/s  p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>7.1} ms  \
             cpu/transfer: nodes {:>5.0} us, load generator {:>5.0} us  ({} committed, \
             {aborted} aborted, {refused} refused, {unknown} unknown)",
            result["transfers_per_s"].as_f64().unwrap_or(0.0),
            result["p50_ms"].as_f64().unwrap_or(0.0),
            result["p99_ms"].as_f64().unwrap_or(0.0),
            result["max_ms"].as_f64().unwrap_or(0.0),
            result["node_cpu_us_per_transfer"].as_f64().unwrap_or(0.0),
            result["client_cpu_us_per_transfer"].as_f64().unwrap_or(0.0),
            ok.len(),
        );
        results.push(result);
    }
    let mut cluster = cluster;
    let report = check::finish(&mut cluster, &committed, SETTLE_BOUND)?;
    Ok(json!({
        "branches": opts.branches,
        "duration_s_per_mix": opts.duration_s,
        "clients": opts.clients,
        "connections_per_branch": opts.connections,
        "fsync": "synchronous=FULL",
        "cpus": std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        "results": results,
        "invariants_ok": report.ok(),
        "violations": report.violations,
    }))
}
