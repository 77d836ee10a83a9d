//! `scenarios bench`: closed-loop load from many concurrent tellers against a local
//! network with fsync on, local and cross-branch transfers measured separately, one
//! transfer per request and (`--batch N`) as bulk payments of N: transfers/s, latency
//! p50/p99/max and CPU per transfer; then every invariant, and every answer given
//! held against the ledgers.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::answers;
use crate::check;
use crate::cluster::Cluster;
use crate::cpu::{self, Sample};
use crate::report::percentile;
use crate::workload::{
    self, Answer, Column, Entry, Mix, Person, Progress, Senders, Tellers, Workload,
};

/// How long the network may take to finish in-flight transfers after the load.
const SETTLE_BOUND: Duration = Duration::from_secs(60);

/// Concurrent senders of bulk payments by default: eight requests of up to 1,024 lines
/// keep every branch's engine and writer busy without queueing past their bounds.
pub const BATCH_CLIENTS_DEFAULT: usize = 8;

/// About how many ids with a final answer are asked about again after the run (every
/// id without one is asked).
const BENCH_ASKED_FINALS: usize = 5_000;

/// Each account's opening deposit, minor units: enough that no transfer is refused
/// for funds.
const INITIAL_MINOR: i64 = 1_000_000_000;

/// Bench settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub branches: u16,
    /// Replicas per branch (1: not replicated).
    pub replicas: u64,
    /// Seconds per mix.
    pub duration_s: u64,
    pub clients: usize,
    /// Teller connections per branch the clients share.
    pub connections: usize,
    pub accounts_per_branch: usize,
    pub mix: BenchMix,
    /// Above 1, each mix is measured again as bulk payments of this many transfers.
    pub batch: usize,
    /// Concurrent clients sending bulk payments (each waits for its answer).
    pub batch_clients: usize,
}

/// Which mixes a bench measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchMix {
    Local,
    Cross,
    Both,
}

/// One measured mode: a mix, and the transfers per request.
struct Mode {
    name: String,
    mix: Mix,
    batch: usize,
}

/// The modes `opts` asks for: local and cross-branch, one transfer per request, and
/// with `--batch N` the same as bulk payments of N.
fn modes(opts: &BenchOptions) -> Vec<Mode> {
    let only = |local: u32, cross: u32| Mix {
        deposit: 0,
        withdraw: 0,
        local,
        cross,
        refused: 0,
    };
    let mut out = Vec::new();
    let batches = if opts.batch > 1 {
        vec![1, opts.batch]
    } else {
        vec![1]
    };
    for batch in batches {
        for (name, mix) in [("local", only(1, 0)), ("cross-branch", only(0, 1))] {
            let wanted = match opts.mix {
                BenchMix::Local => mix.local > 0,
                BenchMix::Cross => mix.cross > 0,
                BenchMix::Both => true,
            };
            if wanted {
                let name = match batch {
                    1 => name.to_owned(),
                    n => format!("{name} x{n}"),
                };
                out.push(Mode { name, mix, batch });
            }
        }
    }
    out
}

/// Runs the bench in `dir`; returns the JSON result (also printed as a table).
pub async fn run(opts: &BenchOptions, dir: &Path) -> anyhow::Result<Value> {
    let cluster = Cluster::start_replicated(dir, opts.branches, opts.replicas, &[]).await?;
    let targets = (0..usize::from(opts.branches))
        .map(|b| cluster.branch_target(b))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Plenty in every account, so transfers are not refused for funds.
    let (accounts, mut committed) =
        workload::open_accounts(&targets, opts.accounts_per_branch, INITIAL_MINOR).await?;
    let tellers = Tellers::connect(&targets, opts.connections).await?;
    let admins: Vec<Person> = (0..targets.len()).map(Person::Admin).collect();
    tellers.warm(&admins).await?;
    let nodes: Vec<(String, String)> = (cluster.processes().into_iter())
        .map(|(pid, name)| (pid.to_string(), name))
        .collect();
    let mut results = Vec::new();
    let mut all = Vec::new();
    for mode in modes(opts) {
        let (result, records) = measure(opts, &mode, &accounts, &tellers, &nodes).await?;
        committed.extend(
            records
                .iter()
                .filter(|r| r.answer == Answer::Committed)
                .map(|r| r.id),
        );
        all.extend(records);
        results.push(result);
    }
    eprintln!("{}", summary_table(&results));
    // Every answer given is held against the ledgers, as a scenario's are.
    let every = (all.len() / BENCH_ASKED_FINALS).max(1);
    let statuses = answers::resolve_sampled(&all, &tellers, Senders::Admins, every).await;
    let mut cluster = cluster;
    let disagree = check::replicas_agree(&cluster, SETTLE_BOUND)?;
    let (mut report, audits) = check::finish_audited(&mut cluster, &committed, SETTLE_BOUND)?;
    report.violations.extend(disagree);
    let answer_report = answers::check(&all, &statuses, &audits, &[]);
    report.violations.extend(answer_report.violations);
    Ok(json!({
        "branches": opts.branches,
        "replicas": opts.replicas,
        "duration_s_per_mix": opts.duration_s,
        "clients": opts.clients,
        "connections_per_branch": opts.connections,
        "batch": opts.batch,
        "fsync": "synchronous=FULL",
        "cpus": std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        "results": results,
        "answers_checked": all.len(),
        "invariants_ok": report.ok(),
        "violations": report.violations,
    }))
}

/// Runs one mode for the bench's duration; its figures, and every answer given.
async fn measure(
    opts: &BenchOptions,
    mode: &Mode,
    accounts: &workload::Accounts,
    tellers: &Tellers,
    nodes: &[(String, String)],
) -> anyhow::Result<(Value, Vec<workload::Record>)> {
    let clients = if mode.batch > 1 {
        opts.batch_clients
    } else {
        opts.clients
    };
    let w = Workload {
        clients,
        duration_ms: Some(opts.duration_s * 1000),
        mix: mode.mix,
        amount_max_minor: 100,
        // The data path: each branch's admin through their own branch, no resends.
        senders: Senders::Admins,
        entry: Entry::Home,
        resend_percent: 0,
        batch: mode.batch,
        ..Workload::default()
    };
    let sample = || {
        let nodes: Vec<Sample> = nodes.iter().map(|(pid, _)| Sample::take(pid)).collect();
        (nodes, Sample::take("self"))
    };
    let (nodes_before, me_before) = sample();
    let start = Instant::now();
    let records = workload::run(&w, accounts, tellers, Arc::new(Progress::default())).await?;
    let wall = start.elapsed();
    let (nodes_after, me_after) = sample();
    let nodes_cpu: Duration = nodes_after
        .iter()
        .zip(&nodes_before)
        .map(|(a, b)| a.since(b))
        .sum();
    let me_cpu = me_after.since(&me_before);
    let mut busy: Vec<Value> = nodes_after
        .iter()
        .zip(&nodes_before)
        .zip(nodes)
        .map(|((a, b), (_, name))| a.busy(b, wall, name))
        .collect();
    busy.push(me_after.busy(&me_before, wall, "load generator"));
    let ok: Vec<_> = records
        .iter()
        .filter(|r| r.answer == Answer::Committed)
        .collect();
    let count = |c: Column| records.iter().filter(|r| r.answer.column() == c).count();
    let (aborted, refused, unknown) = (
        count(Column::Aborted),
        count(Column::Refused),
        count(Column::NotDone) + count(Column::Unknown),
    );
    let mut lat: Vec<Duration> = ok.iter().map(|r| r.latency).collect();
    lat.sort();
    let n = ok.len().max(1) as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let result = json!({
        "mix": mode.name,
        "transfers_per_request": mode.batch,
        "clients": clients,
        "committed": ok.len(),
        "not_committed": records.len() - ok.len(),
        "aborted": aborted,
        "refused": refused,
        "unknown": unknown,
        "transfers_per_s": ok.len() as f64 / wall.as_secs_f64(),
        "p50_ms": ms(percentile(&lat, 50.0)),
        "p99_ms": ms(percentile(&lat, 99.0)),
        "max_ms": ms(lat.last().copied().unwrap_or_default()),
        "node_cpu_us_per_transfer": nodes_cpu.as_secs_f64() * 1e6 / n,
        "client_cpu_us_per_transfer": me_cpu.as_secs_f64() * 1e6 / n,
        "cores_busy": busy,
    });
    eprintln!("{}", line(&result));
    for process in result["cores_busy"].as_array().into_iter().flatten() {
        eprintln!("{:>18}{}", "", cpu::busy_line(process));
    }
    Ok((result, records))
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

/// One mode's figures in a line, as it ends.
fn line(r: &Value) -> String {
    format!(
        "{:>16}: {:>8.0} transfers/s  p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>7.1} ms  \
         cpu/transfer: nodes {:>5.0} us, load generator {:>5.0} us  ({} committed, \
         {} aborted, {} refused, {} unknown)",
        r["mix"].as_str().unwrap_or(""),
        num(r, "transfers_per_s"),
        num(r, "p50_ms"),
        num(r, "p99_ms"),
        num(r, "max_ms"),
        num(r, "node_cpu_us_per_transfer"),
        num(r, "client_cpu_us_per_transfer"),
        r["committed"],
        r["aborted"],
        r["refused"],
        r["unknown"],
    )
}

/// Every mode side by side: a latency of a bulk payment is that of its whole request.
fn summary_table(results: &[Value]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.set_header([
        "mode",
        "transfers/s",
        "p50 ms",
        "p99 ms",
        "node cpu us/transfer",
        "not committed",
    ]);
    for r in results {
        t.add_row([
            r["mix"].as_str().unwrap_or("").to_owned(),
            format!("{:.0}", num(r, "transfers_per_s")),
            format!("{:.1}", num(r, "p50_ms")),
            format!("{:.1}", num(r, "p99_ms")),
            format!("{:.0}", num(r, "node_cpu_us_per_transfer")),
            r["not_committed"].to_string(),
        ]);
    }
    t
}
