//! `scenarios failover`: how long a replicated branch takes to move money again after
//! its leader fails, measured from outside. Branches of three replicas run a steady
//! stream of transfers; each trial strikes branch b1's serving replica (kill -9,
//! SIGSTOP, or a real partition that takes its network link down) and at that moment
//! starts a `teller-cli` process, as a customer at the counter would, that logs in and
//! sends a transfer with a fixed id. The trial's figure is the time from the fault to
//! that process's answer. Every answer (the stream's and the probes') goes through the
//! answer checker, and the run ends with the invariants, like every scenario. After a
//! pause or a partition, the old leader's `/readyz` is watched as it comes back: it
//! must never say "serving" while another replica serves.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::{AccountNumber, BranchId, Refusal, TransferId};

use teller_cli::money::{EXIT_NOT_DONE, EXIT_REFUSED};

use crate::answers;
use crate::check;
use crate::cluster::{Cluster, SERVE_WAIT, teller_cli_bin};
use crate::netns::Namespaces;
use crate::report::percentile;
use crate::workload::{self, Answer, Kind, Mix, Progress, Record, Senders, Tellers, Workload};

/// The subnet (10.N.0.0/24) of a failover run's namespaces.
const NETNS_NET: u8 = 232;
/// Each node's metrics endpoint in its namespace.
const NETNS_METRICS_PORT: u16 = 9100;
/// How long a probe keeps trying for a final answer (its `--wait`), in seconds.
const PROBE_WAIT_S: u64 = 30;
/// How long the old leader's `/readyz` is watched once it is back.
const READY_WATCH: Duration = Duration::from_millis(1_500);
/// How long the replicas get to catch up between trials.
const BETWEEN_TRIALS: Duration = Duration::from_millis(1_500);
/// Bound on settling after the run, and on the replicas agreeing.
const SETTLE_BOUND: Duration = Duration::from_secs(30);
/// How often the old leader's `/readyz` is asked while it comes back.
const READY_POLL: Duration = Duration::from_millis(5);
/// How long one `/readyz` question may take.
const READY_TIMEOUT: Duration = Duration::from_millis(200);
/// How often the nodes' logs are read for a new serving replica during a trial.
const LEADER_POLL: Duration = Duration::from_millis(20);
/// Accounts opened at each branch for the stream, and what each starts with (minor units).
const ACCOUNTS_PER_BRANCH: usize = 8;
const ACCOUNT_FUNDS_MINOR: i64 = 10_000_000;
/// Teller connections per branch that the stream shares.
const STREAM_CONNECTIONS: usize = 2;

/// What strikes the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultKind {
    /// kill -9, restarted once the fault's time is up.
    Kill,
    /// SIGSTOP, SIGCONT once the fault's time is up.
    Pause,
    /// Its network link taken down (network namespaces; needs root), then up again.
    Partition,
}

impl FaultKind {
    fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill -9",
            FaultKind::Pause => "SIGSTOP",
            FaultKind::Partition => "partition",
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct FailoverOptions {
    /// Trials of each kind.
    pub trials: usize,
    pub kinds: Vec<FaultKind>,
    pub branches: u16,
    /// How long each fault lasts before the restart, SIGCONT or heal.
    pub fault: Duration,
    /// Clients of the steady stream of transfers.
    pub clients: usize,
}

/// One trial's outcome.
#[derive(Clone, Debug)]
pub struct Trial {
    pub kind: FaultKind,
    /// From the fault to the probe's answer.
    pub answered: Duration,
    /// From the fault to another replica saying it serves (by its log), if one did
    /// while the probe ran.
    pub elected: Option<Duration>,
    /// The probe's answer (committed, or what else it said).
    pub answer: Answer,
    /// The probe's exit status and last line.
    pub exit: i32,
    pub said: String,
}

/// A failover run's figures and checks.
#[derive(Debug, Default)]
pub struct FailoverReport {
    pub trials: Vec<Trial>,
    pub violations: Vec<String>,
    pub notes: Vec<String>,
    pub answers: usize,
}

impl FailoverReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// Min / median / max of what `time` says of each trial of `kind` (where it says
    /// something), and how many trials said it.
    fn spread(
        &self,
        kind: FaultKind,
        time: impl Fn(&Trial) -> Option<Duration>,
    ) -> (usize, String) {
        let mut times: Vec<Duration> = self
            .trials
            .iter()
            .filter(|t| t.kind == kind)
            .filter_map(time)
            .collect();
        times.sort();
        let s = |d: Option<&Duration>| d.map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64()));
        let mid = (!times.is_empty()).then(|| percentile(&times, 50.0));
        let text = format!(
            "{} / {} / {} s",
            s(times.first()),
            s(mid.as_ref()),
            s(times.last())
        );
        (times.len(), text)
    }

    /// The report a person reads.
    pub fn table(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.set_header([
            "fault on b1's leader",
            "trials",
            "new leader serving min / median / max",
            "committed",
            "first commit min / median / max",
        ]);
        for kind in [FaultKind::Kill, FaultKind::Pause, FaultKind::Partition] {
            let n = self.trials.iter().filter(|t| t.kind == kind).count();
            if n == 0 {
                continue;
            }
            let (_, elected) = self.spread(kind, |t| t.elected);
            let committed = |t: &Trial| (t.answer == Answer::Committed).then_some(t.answered);
            let (ok, first) = self.spread(kind, committed);
            t.add_row([
                kind.name().to_owned(),
                n.to_string(),
                elected,
                ok.to_string(),
                first,
            ]);
        }
        let mut out = format!("{t}\n");
        for line in self.trials.iter().filter(|t| t.answer != Answer::Committed) {
            out.push_str(&format!(
                "  {} trial: exit {} after {:.2} s: {}\n",
                line.kind.name(),
                line.exit,
                line.answered.as_secs_f64(),
                line.said
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out.push_str(&format!("{} answers checked\n", self.answers));
        match self.violations.is_empty() {
            true => out.push_str("every answer true, invariants hold\n"),
            false => {
                for v in &self.violations {
                    out.push_str(&format!("VIOLATION: {v}\n"));
                }
            }
        }
        out
    }

    pub fn json(&self) -> Value {
        let trials: Vec<Value> = self
            .trials
            .iter()
            .map(|t| {
                json!({ "fault": t.kind.name(), "answered_ms": ms(t.answered),
                        "elected_ms": t.elected.map(ms),
                        "exit": t.exit, "committed": t.answer == Answer::Committed })
            })
            .collect();
        json!({ "trials": trials, "violations": self.violations, "answers": self.answers })
    }
}

/// Whole milliseconds of `d`, for JSON.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The network under test, where its nodes are, and what the trials need of it.
struct Lab {
    cluster: Cluster,
    ns: Option<Namespaces>,
    accounts: workload::Accounts,
    violations: Vec<String>,
    probes: Vec<Record>,
    /// The network file with each branch's replicas listed last to first: every other
    /// probe reads it, so the order a teller's file lists replicas in does not matter.
    reversed: PathBuf,
}

/// Runs the trials in `dir` and checks everything after.
pub async fn run(opts: &FailoverOptions, dir: &Path) -> anyhow::Result<FailoverReport> {
    let mut report = FailoverReport::default();
    let ns = match opts.kinds.contains(&FaultKind::Partition) {
        true => Some(Namespaces::make(
            usize::from(opts.branches) * 3,
            NETNS_NET,
            true,
        )?),
        false => None,
    };
    let cluster = start(dir, opts.branches, ns.as_ref()).await?;
    let targets = (0..usize::from(opts.branches))
        .map(|b| cluster.branch_target(b))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (accounts, committed) =
        workload::open_accounts(&targets, ACCOUNTS_PER_BRANCH, ACCOUNT_FUNDS_MINOR).await?;
    let tellers = Tellers::connect(&targets, STREAM_CONNECTIONS).await?;
    let progress = Arc::new(Progress::default());
    let stream = tokio::spawn(steady_stream(
        opts.clients,
        accounts.clone(),
        tellers.clone(),
        progress.clone(),
    ));
    let reversed = dir.join("network-reversed.toml");
    std::fs::write(&reversed, reversed_replicas(&cluster.network_file)?)?;
    let mut lab = Lab {
        cluster,
        ns,
        accounts,
        violations: Vec::new(),
        probes: Vec::new(),
        reversed,
    };
    for n in 0..opts.trials {
        for &kind in &opts.kinds {
            let trial = lab.trial(kind, n, opts.fault).await?;
            eprintln!(
                "{} trial {}: exit {} after {:.2} s",
                kind.name(),
                n + 1,
                trial.exit,
                trial.answered.as_secs_f64()
            );
            report.trials.push(trial);
        }
    }
    progress.stop.store(true, Ordering::Relaxed);
    let mut records = stream.await.context("the stream of transfers")??;
    records.append(&mut lab.probes);
    report.violations.append(&mut lab.violations);
    check_after(&mut lab.cluster, &records, &tellers, committed, &mut report).await?;
    Ok(report)
}

/// After the trials: every answer in `records` against the settled stores (with
/// `committed`, the set-up's deposits), the replicas compared, the invariants, and no
/// probe answered anything but committed or unknown. Stops the network.
async fn check_after(
    cluster: &mut Cluster,
    records: &[Record],
    tellers: &Tellers,
    mut committed: BTreeSet<TransferId>,
    report: &mut FailoverReport,
) -> anyhow::Result<()> {
    report.answers = records.len();
    if check::wait_settled(&cluster.databases(), SETTLE_BOUND)?.is_none() {
        report
            .notes
            .push("transfers were still unfinished 30 s after the last trial".into());
    }
    let statuses = answers::resolve(records, tellers, Senders::Customers).await;
    let answered = records.iter().filter(|r| r.answer == Answer::Committed);
    committed.extend(answered.map(|r| r.id));
    let disagree = check::replicas_agree(cluster, SETTLE_BOUND)?;
    report.violations.extend(disagree);
    let (end, audits) = check::finish_audited(cluster, &committed, SETTLE_BOUND)?;
    report.violations.extend(end.violations);
    let checked = answers::check(records, &statuses, &audits, &[]);
    report.violations.extend(checked.violations);
    let wrong = answer_violations(report);
    report.violations.extend(wrong);
    Ok(())
}

/// Makes and starts `branches` branches of three replicas (each in a namespace of its
/// own, with `ns`), every node's metrics endpoint on, and waits until each serves.
async fn start(dir: &Path, branches: u16, ns: Option<&Namespaces>) -> anyhow::Result<Cluster> {
    let listen = match ns {
        Some(_) => format!("0.0.0.0:{NETNS_METRICS_PORT}"),
        None => "127.0.0.1:0".to_owned(),
    };
    let flags = ["--metrics-listen", listen.as_str()];
    let place = |k: usize| ns.map(|n| (n.addr(k), n.node(k)));
    let mut cluster = Cluster::create_placed(dir, branches, 3, &flags, &place)?;
    for i in 0..cluster.nodes.len() {
        cluster.start_node(i, &[])?;
    }
    for b in 0..usize::from(branches) {
        cluster.wait_serving(b, SERVE_WAIT).await?;
    }
    Ok(cluster)
}

/// Transfers (local and cross-branch, each by its account's customer) until stopped.
async fn steady_stream(
    clients: usize,
    accounts: workload::Accounts,
    tellers: Tellers,
    progress: Arc<Progress>,
) -> anyhow::Result<Vec<Record>> {
    let w = Workload {
        clients,
        duration_ms: Some(24 * 3_600_000),
        mix: Mix {
            deposit: 5,
            withdraw: 5,
            local: 40,
            cross: 50,
            refused: 0,
        },
        answer_wait_ms: PROBE_WAIT_S * 1000,
        resend_percent: 0,
        ..Workload::default()
    };
    workload::run(&w, &accounts, &tellers, progress).await
}

impl Lab {
    /// One trial: strikes b1's serving replica with `kind`, runs the probe, then after
    /// `fault` ends the fault and watches the old leader come back.
    async fn trial(&mut self, kind: FaultKind, n: usize, fault: Duration) -> anyhow::Result<Trial> {
        self.cluster.wait_serving(0, SERVE_WAIT).await?;
        tokio::time::sleep(BETWEEN_TRIALS).await;
        let Some(leader) = self.cluster.serving_replica(BranchId(1)) else {
            bail!("b1 has no serving replica before trial {}", n + 1);
        };
        let from = self.accounts.by_branch[0][n % self.accounts.by_branch[0].len()];
        let to = self.accounts.all[(n * 7 + 1) % self.accounts.all.len()];
        let to = if to == from { self.accounts.all[0] } else { to };
        let struck = Instant::now();
        self.strike(kind, leader, true)?;
        let probe = tokio::task::spawn_blocking({
            let network = match n % 2 {
                0 => self.cluster.network_file.clone(),
                _ => self.reversed.clone(),
            };
            move || probe(&network, from, to)
        });
        let (probed, elected) = tokio::join!(probe, self.new_leader(leader, struck));
        let (id, exit, said) = probed??;
        let answered = struck.elapsed();
        // The probe's last line for people (its JSON line is for programs).
        if !said.starts_with('{')
            && let Some(word) = teller_cli::say::internal_word(&said)
        {
            self.violations.push(format!(
                "a probe's teller was told {said:?}: it names {word:?}"
            ));
        }
        tokio::time::sleep(fault.saturating_sub(answered)).await;
        let back = Instant::now();
        self.strike(kind, leader, false)?;
        if kind != FaultKind::Kill {
            self.watch_ready(leader, back).await;
        }
        let answer = answer_of(exit, &said);
        self.probes.push(Record {
            kind: if to.branch() == from.branch() {
                Kind::Local
            } else {
                Kind::Cross
            },
            id,
            owner: from,
            branch: 0,
            answer,
            latency: answered,
            resend: false,
            sent_at: struck,
        });
        Ok(Trial {
            kind,
            answered,
            elected,
            answer,
            exit,
            said,
        })
    }

    /// From `struck` until a replica of b1 other than `old` says it serves (by its
    /// log), polled while the probe runs; `None` if none did within the probe's wait.
    async fn new_leader(&self, old: usize, struck: Instant) -> Option<Duration> {
        while struck.elapsed() < Duration::from_secs(PROBE_WAIT_S) {
            if self
                .cluster
                .serving_replica(BranchId(1))
                .is_some_and(|i| i != old)
            {
                return Some(struck.elapsed());
            }
            tokio::time::sleep(LEADER_POLL).await;
        }
        None
    }

    /// Starts (`on`) or ends fault `kind` on node `i`.
    fn strike(&mut self, kind: FaultKind, i: usize, on: bool) -> anyhow::Result<()> {
        match (kind, on) {
            (FaultKind::Kill, true) => {
                self.cluster.kill(i);
                Ok(())
            }
            (FaultKind::Kill, false) => self.cluster.start_node(i, &[]),
            (FaultKind::Pause, true) => self.cluster.pause(i),
            (FaultKind::Pause, false) => self.cluster.resume(i),
            (FaultKind::Partition, up) => match &self.ns {
                Some(ns) => ns.link(i, !up),
                None => bail!("a partition needs the network namespaces"),
            },
        }
    }

    /// Watches node `i`'s `/readyz` from `back` (its fault just ended) for a while: it
    /// must not say it serves while another replica does.
    async fn watch_ready(&mut self, i: usize, back: Instant) {
        let Some(url) = self.ready_url(i) else {
            return;
        };
        while back.elapsed() < READY_WATCH {
            if let Ok((200, body)) = http_get(&url).await
                && body.contains("serving")
                && body.contains("leader")
                && self.cluster.serving_replica(BranchId(1)) != Some(i)
            {
                self.violations.push(format!(
                    "readiness: b1 replica {} said {:?} {} ms after it came back, while \
                     another replica served",
                    self.cluster.nodes[i].replica,
                    body.trim(),
                    back.elapsed().as_millis()
                ));
                return;
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Node `i`'s `/readyz`, reachable from here.
    fn ready_url(&self, i: usize) -> Option<String> {
        let url = self.cluster.nodes[i].metrics_url.as_deref()?;
        let url = url.trim_end_matches("/metrics").to_owned() + "/readyz";
        Some(match &self.ns {
            Some(ns) => url.replace("0.0.0.0", &ns.addr(i)),
            None => url,
        })
    }
}

/// The network file at `path` with each branch's replicas in the opposite order.
fn reversed_replicas(path: &Path) -> anyhow::Result<String> {
    let mut file: toml::Table = toml::from_str(&std::fs::read_to_string(path)?)?;
    let branches = file.get_mut("branch").and_then(toml::Value::as_array_mut);
    for b in branches.into_iter().flatten() {
        if let Some(replicas) = b.get_mut("replica").and_then(toml::Value::as_array_mut) {
            replicas.reverse();
        }
    }
    Ok(toml::to_string(&file)?)
}

/// What a probe's exit status and JSON line say.
fn answer_of(exit: i32, said: &str) -> Answer {
    let Ok(exit) = u8::try_from(exit) else {
        return Answer::Unknown;
    };
    match exit {
        0 => Answer::Committed,
        EXIT_REFUSED => {
            let code = serde_json::from_str::<Value>(said)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let r = Refusal::ALL.iter().find(|r| r.code() == code);
            r.map_or(Answer::Unknown, |r| Answer::Refused(*r))
        }
        EXIT_NOT_DONE => Answer::NotDone,
        _ => Answer::Unknown,
    }
}

/// Runs `teller-cli` as `from`'s customer, who sends 1.00 to `to` with a fixed id:
/// the id, its exit status and its last line of output.
fn probe(
    network: &PathBuf,
    from: AccountNumber,
    to: AccountNumber,
) -> anyhow::Result<(TransferId, i32, String)> {
    let id = teller_cli::new_transfer_id();
    let out = std::process::Command::new(teller_cli_bin()?)
        .arg("--network-file")
        .arg(network)
        .args(["--branch", "b1", "--user", &from.to_string()])
        .args(["--password-env", "BM_PROBE_PASSWORD", "--json"])
        .args(["--wait", &PROBE_WAIT_S.to_string()])
        .args([
            "transfer",
            "--to",
            &to.to_string(),
            "--id",
            &id.to_string(),
            "1.00",
        ])
        .env("BM_PROBE_PASSWORD", workload::CUSTOMER_PASSWORD)
        .output()
        .context("runs teller-cli")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Ok((id, out.status.code().unwrap_or(-1), last.to_owned()))
}

/// A plain HTTP GET of `url` (`http://HOST:PORT/PATH`), bounded by a short timeout:
/// the status and the body.
async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    let rest = url.strip_prefix("http://").context("not an http url")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let get = async {
        let mut s = tokio::net::TcpStream::connect(host).await?;
        let req = format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(READY_TIMEOUT, get).await??;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// Trials that did not commit, said as violations of the goal "no answer other than
/// committed, or a truthful unknown with its id".
fn answer_violations(report: &FailoverReport) -> Vec<String> {
    report
        .trials
        .iter()
        .filter(|t| !matches!(t.answer, Answer::Committed | Answer::Unknown))
        .map(|t| {
            format!(
                "{} trial answered exit {}: {}",
                t.kind.name(),
                t.exit,
                t.said
            )
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}
