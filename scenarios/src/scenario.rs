//! Scenario files and their runner: start a network of real nodes, open the accounts,
//! run the workload while the fault schedule kills, restarts, partitions, delays,
//! pauses and attacks branches, take stop-the-world snapshots to check the invariants
//! during the run, heal, and check every invariant at the end.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::{RngExt, SeedableRng};
use serde::Deserialize;
use wire::BranchId;
use wire::teller::{LinkFault, TellerOp};

use crate::cluster::Cluster;
use crate::report::Summary;
use crate::workload::{self, Answer, Progress, Tellers, Workload};
use crate::{answers, check};

/// Teller connections per branch the workload's clients share.
const TELLERS_PER_BRANCH: usize = 2;
/// How long an armed failpoint may take to crash its branch once its time comes.
const FAILPOINT_WAIT: Duration = Duration::from_secs(60);
/// How long after the rogue's attack the impersonated branch is restarted.
const ROGUE_RESTART_AFTER: Duration = Duration::from_millis(500);
/// How long a snapshot waits for every thread of every node to stop.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "three")]
    pub branches: u16,
    /// Replicas per branch: 1, 3 or 5. With more than one, a fault naming a branch
    /// (kill, pause) strikes the replica that leads it at that moment, and a failpoint
    /// is armed on every replica of the branch (it fires at whichever leads).
    #[serde(default = "one")]
    pub replicas: u64,
    #[serde(default)]
    pub accounts: AccountsSpec,
    #[serde(default)]
    pub workload: Workload,
    #[serde(default)]
    pub faults: Vec<Fault>,
    #[serde(default)]
    pub checks: Checks,
}

fn three() -> u16 {
    3
}

fn one() -> u64 {
    1
}

/// Accounts opened before the workload starts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountsSpec {
    pub per_branch: usize,
    /// Initial deposit of each account, minor units.
    pub initial_minor: i64,
}

impl Default for AccountsSpec {
    fn default() -> Self {
        AccountsSpec {
            per_branch: 8,
            initial_minor: 100_000,
        }
    }
}

/// What the run must show, beyond the invariants (always checked).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Checks {
    /// After the heal, everything must be decided and applied within this bound.
    pub settle_bound_ms: u64,
    /// A stop-the-world snapshot (every node SIGSTOPped, every store audited) this
    /// often during the run; 0 for none.
    pub snapshot_every_ms: u64,
    /// At least this many requests answered committed.
    pub min_committed: u64,
    /// Every failpoint named in the schedule must actually have crashed its branch.
    pub failpoints_fire: bool,
}

impl Default for Checks {
    fn default() -> Self {
        Checks {
            settle_bound_ms: 30_000,
            snapshot_every_ms: 2_000,
            min_committed: 1,
            failpoints_fire: true,
        }
    }
}

/// One fault in the schedule. Branches are numbered from 1, as in the network file;
/// times are milliseconds from the start of the workload.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// kill -9 `branch` at `at_ms`; or, with `failpoint`, start it with that failpoint
    /// armed (it crashes on hit number `after_hits + 1` once the workload runs). Then
    /// restart it `restart_after_ms` after it died.
    Kill {
        branch: u16,
        #[serde(default)]
        at_ms: u64,
        failpoint: Option<String>,
        #[serde(default)]
        after_hits: u32,
        restart_after_ms: u64,
    },
    /// Block every link between the groups (both ways) for `duration_ms`.
    Partition {
        groups: Vec<Vec<u16>>,
        at_ms: u64,
        duration_ms: u64,
    },
    /// Delay every message from `from` to `to` by `delay_ms`, for `duration_ms`.
    Delay {
        from: u16,
        to: u16,
        delay_ms: u32,
        at_ms: u64,
        duration_ms: u64,
    },
    /// Drop every message from `from` to `to` (one direction), for `duration_ms`.
    Drop {
        from: u16,
        to: u16,
        at_ms: u64,
        duration_ms: u64,
    },
    /// SIGSTOP `branch`, SIGCONT it after `duration_ms`.
    Pause {
        branch: u16,
        at_ms: u64,
        duration_ms: u64,
    },
    /// A rogue peer attacks `target` with forged, misaddressed, expired, malformed and
    /// replayed messages, holding the stolen key of `impersonate`, which is killed at
    /// `at_ms` and restarted when the attack ends.
    Rogue {
        target: u16,
        impersonate: u16,
        at_ms: u64,
    },
    /// An operator restores `branch` from a backup: the backup is taken (while it runs)
    /// at `backup_at_ms`; at `at_ms` it is killed with -9 and its database lost, the
    /// backup is restored (`branch-node restore`: it waits out the branch's fence lease,
    /// makes the restored copy the branch's newest, and puts back every cross-branch
    /// transfer the other branches hold) and the branch started again. What it alone did
    /// in between is lost; the answer checker holds each such loss to the restore's
    /// report. Branches of one replica only.
    Restore {
        branch: u16,
        backup_at_ms: u64,
        at_ms: u64,
    },
    /// `count` random faults (kill, partition, pause, delay) from `seed`, spread over
    /// `over_ms`, each lasting up to `max_ms`.
    Random {
        seed: u64,
        count: u32,
        over_ms: u64,
        max_ms: u64,
    },
}

impl Fault {
    fn at(&self) -> u64 {
        match self {
            Fault::Kill { at_ms, .. }
            | Fault::Partition { at_ms, .. }
            | Fault::Delay { at_ms, .. }
            | Fault::Drop { at_ms, .. }
            | Fault::Pause { at_ms, .. }
            | Fault::Rogue { at_ms, .. } => *at_ms,
            Fault::Restore { backup_at_ms, .. } => *backup_at_ms,
            Fault::Random { .. } => 0,
        }
    }
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Scenario::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses scenario text and checks that every branch it names exists.
    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let mut s: Scenario = toml::from_str(text).map_err(|e| {
            // One line: the message and where, without toml's multi-line excerpt.
            let line = e.span().map_or(0, |r| {
                text[..r.start.min(text.len())].lines().count().max(1)
            });
            anyhow::anyhow!("line {line}: {}", e.message().trim())
        })?;
        s.faults = expand(&s.faults, s.branches);
        let n = s.branches;
        anyhow::ensure!((1..=64).contains(&n), "branches must be 1..=64");
        anyhow::ensure!(
            s.accounts.per_branch >= 2,
            "accounts.per_branch must be at least 2"
        );
        anyhow::ensure!(
            matches!(s.replicas, 1 | 3 | 5),
            "replicas must be 1, 3 or 5"
        );
        anyhow::ensure!(
            s.workload.resend_percent <= 100,
            "workload.resend_percent must be 0..=100"
        );
        let ok = |b: u16| (1..=n).contains(&b);
        for f in &s.faults {
            let named: Vec<u16> = match f {
                Fault::Kill {
                    branch, failpoint, ..
                } => {
                    if let Some(fp) = failpoint {
                        anyhow::ensure!(
                            branch_node::node::engine::FAILPOINTS.contains(&fp.as_str()),
                            "unknown failpoint {fp:?} (known: {})",
                            branch_node::node::engine::FAILPOINTS.join(", ")
                        );
                    }
                    vec![*branch]
                }
                Fault::Partition { groups, .. } => groups.iter().flatten().copied().collect(),
                Fault::Delay { from, to, .. } | Fault::Drop { from, to, .. } => vec![*from, *to],
                Fault::Pause { branch, .. } => vec![*branch],
                Fault::Rogue {
                    target,
                    impersonate,
                    ..
                } => {
                    anyhow::ensure!(
                        target != impersonate,
                        "a rogue cannot impersonate its target"
                    );
                    anyhow::ensure!(
                        s.replicas == 1,
                        "a rogue peer takes one branch's key: branches of one replica only"
                    );
                    vec![*target, *impersonate]
                }
                Fault::Restore {
                    branch,
                    backup_at_ms,
                    at_ms,
                } => {
                    anyhow::ensure!(
                        backup_at_ms < at_ms,
                        "a restore's backup_at_ms comes before its at_ms"
                    );
                    anyhow::ensure!(
                        s.replicas == 1,
                        "a restore fault restores one branch's only copy: branches of one replica only"
                    );
                    vec![*branch]
                }
                Fault::Random { .. } => vec![],
            };
            if let Some(b) = named.iter().find(|b| !ok(**b)) {
                bail!("fault names branch {b}, but the scenario has {n} branches");
            }
        }
        Ok(s)
    }
}

impl Scenario {
    /// The same scenario with its workload duration and every fault time multiplied by
    /// `factor` (the test suite runs shortened copies).
    pub fn scaled(mut self, factor: f64) -> Scenario {
        // Times are milliseconds well below 2^52: the float round trip is exact enough.
        #[allow(clippy::cast_possible_truncation)]
        let f = |ms: &mut u64| *ms = (*ms as f64 * factor) as u64;
        if let Some(d) = self.workload.duration_ms.as_mut() {
            f(d);
        }
        for fault in &mut self.faults {
            match fault {
                Fault::Kill {
                    at_ms,
                    restart_after_ms,
                    ..
                } => {
                    f(at_ms);
                    f(restart_after_ms);
                }
                Fault::Partition {
                    at_ms, duration_ms, ..
                }
                | Fault::Delay {
                    at_ms, duration_ms, ..
                }
                | Fault::Drop {
                    at_ms, duration_ms, ..
                }
                | Fault::Pause {
                    at_ms, duration_ms, ..
                } => {
                    f(at_ms);
                    f(duration_ms);
                }
                Fault::Rogue { at_ms, .. } => f(at_ms),
                Fault::Restore {
                    backup_at_ms,
                    at_ms,
                    ..
                } => {
                    f(backup_at_ms);
                    f(at_ms);
                }
                Fault::Random { .. } => {}
            }
        }
        self
    }
}

/// Replaces `random` entries by the concrete faults their seed gives.
fn expand(faults: &[Fault], branches: u16) -> Vec<Fault> {
    let mut out = Vec::new();
    for f in faults {
        let Fault::Random {
            seed,
            count,
            over_ms,
            max_ms,
        } = f
        else {
            out.push(f.clone());
            continue;
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(*seed);
        let gap = over_ms / u64::from((*count).max(1));
        for k in 0..u64::from(*count) {
            let at_ms = k * gap + rng.random_range(0..gap.max(1));
            let duration_ms = rng.random_range(200..=(*max_ms).max(201));
            let b = rng.random_range(1..=branches);
            let other = if branches > 1 { (b % branches) + 1 } else { b };
            out.push(match rng.random_range(0..4) {
                0 => Fault::Kill {
                    branch: b,
                    at_ms,
                    failpoint: None,
                    after_hits: 0,
                    restart_after_ms: duration_ms,
                },
                1 if branches > 1 => Fault::Partition {
                    groups: vec![vec![b], (1..=branches).filter(|x| *x != b).collect()],
                    at_ms,
                    duration_ms,
                },
                2 => Fault::Pause {
                    branch: b,
                    at_ms,
                    duration_ms,
                },
                _ => Fault::Delay {
                    from: b,
                    to: other,
                    delay_ms: rng.random_range(10..300),
                    at_ms,
                    duration_ms,
                },
            });
        }
    }
    out.sort_by_key(Fault::at);
    out
}

/// Shared state of a run: the cluster (behind a lock: the schedule and the snapshots
/// both touch processes) and which nodes the schedule has paused.
struct Shared {
    cluster: Mutex<Cluster>,
    paused: Mutex<BTreeSet<usize>>,
    violations: Mutex<Vec<String>>,
    faults_done: Mutex<Vec<String>>,
    /// The most legs in doubt seen at one snapshot (shows the faults bit).
    max_in_doubt: std::sync::atomic::AtomicUsize,
    /// Branches the schedule restored from a backup.
    restores: Mutex<Vec<answers::Restored>>,
}

impl Shared {
    fn new(cluster: Cluster) -> Shared {
        Shared {
            cluster: Mutex::new(cluster),
            paused: Mutex::new(BTreeSet::new()),
            violations: Mutex::new(Vec::new()),
            faults_done: Mutex::new(Vec::new()),
            max_in_doubt: std::sync::atomic::AtomicUsize::new(0),
            restores: Mutex::new(Vec::new()),
        }
    }

    fn cluster(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.cluster
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    fn note(&self, line: String) {
        if let Ok(mut v) = self.faults_done.lock() {
            v.push(line);
        }
    }
    fn violation(&self, line: String) {
        if let Ok(mut v) = self.violations.lock() {
            v.push(line);
        }
    }
}

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Show indicatif progress bars (only drawn on a terminal).
    pub progress: bool,
}

/// `s`'s network in `dir`, started (a branch with an armed failpoint starts with it,
/// every replica of it) and serving.
async fn start_cluster(s: &Scenario, dir: &Path) -> anyhow::Result<Cluster> {
    let mut cluster = Cluster::create_replicated(dir, s.branches, s.replicas, &["--fault-switch"])?;
    for i in 0..cluster.nodes.len() {
        let branch = cluster.nodes[i].id.0;
        let armed: Vec<String> = s
            .faults
            .iter()
            .filter_map(|f| match f {
                Fault::Kill {
                    branch: b,
                    failpoint: Some(fp),
                    after_hits,
                    ..
                } if *b == branch => Some(format!("{fp}={after_hits}*off->panic")),
                _ => None,
            })
            .collect();
        let env = armed.join(";");
        if env.is_empty() {
            cluster.start_node(i, &[])?;
        } else {
            cluster.start_node(i, &[("FAILPOINTS", &env)])?;
        }
    }
    for b in (0..usize::from(s.branches)).filter(|_| s.replicas > 1) {
        cluster.wait_serving(b, crate::cluster::SERVE_WAIT).await?;
    }
    for i in (0..cluster.nodes.len()).filter(|_| s.replicas == 1) {
        cluster.wait_node_serving(i, crate::cluster::SERVE_WAIT)?;
    }
    Ok(cluster)
}

/// Runs `s` in `dir` and returns its summary (violations included).
pub async fn run(s: &Scenario, dir: &Path, opts: &RunOptions) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let cluster = start_cluster(s, dir).await?;
    let targets = (0..usize::from(s.branches))
        .map(|b| cluster.branch_target(b))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let dbs = cluster.databases();
    let (accounts, mut committed) =
        workload::open_accounts(&targets, s.accounts.per_branch, s.accounts.initial_minor).await?;
    let tellers = Tellers::connect(&targets, TELLERS_PER_BRANCH).await?;
    let shared = Arc::new(Shared::new(cluster));
    let progress = Arc::new(Progress::default());
    let bar = crate::report::bar(opts.progress, &s.workload, progress.clone());

    let run_start = Instant::now();
    let faults = (s.faults.clone(), tellers.clone(), accounts.clone());
    let schedule = tokio::spawn(schedule(faults, shared.clone(), run_start));
    let every_ms = s.checks.snapshot_every_ms;
    let snapshots = tokio::spawn(snapshots(
        every_ms,
        shared.clone(),
        dbs.clone(),
        progress.clone(),
    ));
    let records = workload::run(&s.workload, &accounts, &tellers, progress.clone()).await?;
    let workload_time = run_start.elapsed();
    // The schedule runs to its end (restarts included) before the heal.
    schedule.await.context("fault schedule")??;
    progress.stop.store(true, Ordering::Relaxed);
    let snapshot_count = snapshots.await.context("snapshots")?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }

    heal(&shared, &tellers, s.branches).await?;
    let bound = Duration::from_millis(s.checks.settle_bound_ms);
    let settle = check::wait_settled(&dbs, bound)?;
    // Asked while the nodes still run; then the common end: settle, stop, check.
    let statuses = answers::resolve(&records, &tellers, s.workload.senders).await;
    let restores = copied(&shared.restores);
    // What a restore lost is held to its report by the answer checker, not to the
    // ledgers as durable.
    let kept = |r: &&crate::workload::Record| !restores.iter().any(|x| x.may_have_lost(r));
    let answered = records.iter().filter(|r| r.answer == Answer::Committed);
    committed.extend(answered.filter(kept).map(|r| r.id));
    let disagree = check::replicas_agree(&shared.cluster(), bound)?;
    let (mut report, audits) = check::finish_audited(&mut shared.cluster(), &committed, bound)?;
    report.violations.extend(disagree);
    let answer_report = answers::check(&records, &statuses, &audits, &restores);
    report
        .violations
        .extend(answer_report.violations.iter().cloned());
    report.violations.extend(copied(&shared.violations));
    report.violations.extend(progress.internal_words());
    let faults_done = copied(&shared.faults_done);
    report
        .violations
        .extend(scenario_checks(s, &records, &faults_done));
    Ok(Summary {
        name: s.name.clone(),
        records,
        report,
        settle,
        answers: answer_report,
        faults: faults_done,
        snapshots: snapshot_count,
        max_in_doubt_during: shared.max_in_doubt.load(Ordering::Relaxed),
        workload_time,
        total_time: started.elapsed(),
    })
}

/// A copy of what a shared list holds now (empty if a panic poisoned it).
fn copied<T: Clone>(list: &Mutex<Vec<T>>) -> Vec<T> {
    list.lock().map(|v| v.clone()).unwrap_or_default()
}

/// After the workload: every node running again, every link healthy.
async fn heal(shared: &Shared, tellers: &Tellers, branches: u16) -> anyhow::Result<()> {
    {
        let mut c = shared.cluster();
        for i in 0..c.nodes.len() {
            if !c.running(i) {
                c.start_node(i, &[])?;
            }
        }
    }
    for from in 1..=branches {
        for to in (1..=branches).filter(|to| *to != from) {
            link_fault(tellers, from, to, LinkFault::Healthy).await;
        }
    }
    Ok(())
}

/// What the scenario file itself asks of the run: enough commits, and (if asked) that
/// every failpoint it names fired.
fn scenario_checks(
    s: &Scenario,
    records: &[crate::workload::Record],
    faults_done: &[String],
) -> Vec<String> {
    let mut violations = Vec::new();
    let n_committed = records
        .iter()
        .filter(|r| !r.resend && r.answer == Answer::Committed)
        .count() as u64;
    if n_committed < s.checks.min_committed {
        violations.push(format!(
            "check: {n_committed} requests committed, the scenario wants at least {}",
            s.checks.min_committed
        ));
    }
    if !s.checks.failpoints_fire {
        return violations;
    }
    for f in &s.faults {
        if let Fault::Kill {
            branch,
            failpoint: Some(fp),
            ..
        } = f
            && !faults_done.iter().any(|d| {
                d.starts_with(&format!("b{branch} ")) && d.contains(&format!(" crashed at {fp} "))
            })
        {
            violations.push(format!("check: failpoint {fp} on b{branch} never fired"));
        }
    }
    violations
}

/// Asks branch `from` to apply `fault` to its link to branch `to`.
async fn link_fault(tellers: &Tellers, from: u16, to: u16, fault: LinkFault) {
    let _ = tellers
        .admin(
            usize::from(from - 1),
            TellerOp::SetLinkFault {
                branch: BranchId(to),
                fault,
            },
        )
        .await;
}

/// Runs the fault schedule; every fault ends (restart, heal, resume) before it returns.
async fn schedule(
    (faults, tellers, accounts): (Vec<Fault>, Tellers, workload::Accounts),
    shared: Arc<Shared>,
    start: Instant,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for f in faults {
        let run = FaultRun {
            shared: shared.clone(),
            tellers: tellers.clone(),
            accounts: accounts.clone(),
            start,
        };
        tasks.spawn(async move {
            tokio::time::sleep_until((start + Duration::from_millis(f.at())).into()).await;
            run.apply(f).await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("a fault task failed")??;
    }
    Ok(())
}

/// What one fault of the schedule acts with.
struct FaultRun {
    shared: Arc<Shared>,
    tellers: Tellers,
    accounts: workload::Accounts,
    start: Instant,
}

impl FaultRun {
    /// Milliseconds since the workload started, for the report's fault lines.
    fn t(&self) -> u128 {
        self.start.elapsed().as_millis()
    }

    async fn apply(&self, f: Fault) -> anyhow::Result<()> {
        match f {
            Fault::Kill {
                branch,
                failpoint,
                restart_after_ms,
                ..
            } => self.kill(branch, failpoint, restart_after_ms).await,
            Fault::Partition {
                groups,
                duration_ms,
                ..
            } => {
                self.partition(groups, duration_ms).await;
                Ok(())
            }
            Fault::Delay {
                from,
                to,
                delay_ms,
                duration_ms,
                ..
            } => {
                let fault = LinkFault::Delayed { delay_ms };
                let what = format!("b{from}->b{to} delayed {delay_ms} ms");
                self.link(from, to, fault, what, duration_ms).await;
                Ok(())
            }
            Fault::Drop {
                from,
                to,
                duration_ms,
                ..
            } => {
                let what = format!("b{from}->b{to} dropping");
                self.link(from, to, LinkFault::Blocked, what, duration_ms)
                    .await;
                Ok(())
            }
            Fault::Pause {
                branch,
                duration_ms,
                ..
            } => {
                self.pause(branch, duration_ms).await;
                Ok(())
            }
            Fault::Rogue {
                target,
                impersonate,
                ..
            } => self.rogue(target, impersonate).await,
            Fault::Restore {
                branch,
                backup_at_ms,
                at_ms,
            } => {
                self.restore(branch, at_ms.saturating_sub(backup_at_ms))
                    .await
            }
            Fault::Random { .. } => Ok(()),
        }
    }

    /// kill -9 the node of `branch` (the replica leading it) now, or with `failpoint`
    /// wait for the failpoint to crash one of the branch's nodes; restart it after
    /// `restart_after_ms`.
    async fn kill(
        &self,
        branch: u16,
        failpoint: Option<String>,
        restart_after_ms: u64,
    ) -> anyhow::Result<()> {
        let died = match &failpoint {
            Some(fp) => match self.wait_crash(branch).await? {
                Some(i) => {
                    self.shared
                        .note(format!("{} crashed at {fp} ({} ms)", self.who(i), self.t()));
                    i
                }
                None => return Ok(()),
            },
            None => {
                let i = self.node_of(branch);
                let who = self.who(i);
                let sh = self.shared.clone();
                tokio::task::spawn_blocking(move || sh.cluster().kill(i)).await?;
                self.shared
                    .note(format!("{who} killed -9 ({} ms)", self.t()));
                i
            }
        };
        tokio::time::sleep(Duration::from_millis(restart_after_ms)).await;
        self.restart(died).await?;
        self.shared
            .note(format!("{} restarted ({} ms)", self.who(died), self.t()));
        Ok(())
    }

    /// The node a fault naming `branch` strikes: the branch's, or the replica leading it.
    fn node_of(&self, branch: u16) -> usize {
        let c = self.shared.cluster();
        let replicas = c.replicas_of(wire::BranchId(branch));
        match replicas.len() {
            1 => replicas[0],
            _ => c
                .serving_replica(wire::BranchId(branch))
                .unwrap_or(replicas[0]),
        }
    }

    /// How a report names node `i`: `b2`, or `b2 replica 3`.
    fn who(&self, i: usize) -> String {
        let c = self.shared.cluster();
        let n = &c.nodes[i];
        match c.replicas_of(n.id).len() {
            1 => format!("b{}", n.id.0),
            _ => format!("b{} replica {}", n.id.0, n.replica),
        }
    }

    /// Waits (bounded) for an armed failpoint to crash one of `branch`'s nodes; which.
    async fn wait_crash(&self, branch: u16) -> anyhow::Result<Option<usize>> {
        let sh = self.shared.clone();
        Ok(tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + FAILPOINT_WAIT;
            let nodes = sh.cluster().replicas_of(wire::BranchId(branch));
            while Instant::now() < deadline {
                let mut c = sh.cluster();
                if let Some(i) = nodes.iter().copied().find(|&i| !c.running(i)) {
                    return Some(i);
                }
                drop(c);
                std::thread::sleep(Duration::from_millis(20));
            }
            None
        })
        .await?)
    }

    async fn restart(&self, i: usize) -> anyhow::Result<()> {
        let sh = self.shared.clone();
        tokio::task::spawn_blocking(move || sh.cluster().start_node(i, &[])).await??;
        Ok(())
    }

    /// Blocks every link between the groups (both ways), then heals them.
    async fn partition(&self, groups: Vec<Vec<u16>>, duration_ms: u64) {
        let mut pairs: Vec<(u16, u16)> = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            for (gj, h) in groups.iter().enumerate() {
                if gi != gj {
                    pairs.extend(g.iter().flat_map(|a| h.iter().map(|b| (*a, *b))));
                }
            }
        }
        for (a, b) in &pairs {
            link_fault(&self.tellers, *a, *b, LinkFault::Blocked).await;
        }
        self.shared
            .note(format!("partition {groups:?} ({} ms)", self.t()));
        tokio::time::sleep(Duration::from_millis(duration_ms)).await;
        for (a, b) in &pairs {
            link_fault(&self.tellers, *a, *b, LinkFault::Healthy).await;
        }
        self.shared
            .note(format!("partition healed ({} ms)", self.t()));
    }

    /// Sets one link's fault for a while, then heals it.
    async fn link(&self, from: u16, to: u16, fault: LinkFault, what: String, duration_ms: u64) {
        link_fault(&self.tellers, from, to, fault).await;
        self.shared.note(format!("{what} ({} ms)", self.t()));
        tokio::time::sleep(Duration::from_millis(duration_ms)).await;
        link_fault(&self.tellers, from, to, LinkFault::Healthy).await;
    }

    /// SIGSTOPs `branch` (the replica leading it), SIGCONTs it after a while.
    async fn pause(&self, branch: u16, duration_ms: u64) {
        let i = self.node_of(branch);
        let paused = {
            let c = self.shared.cluster();
            let ok = c.pause(i).is_ok();
            if ok && let Ok(mut p) = self.shared.paused.lock() {
                p.insert(i);
            }
            ok
        };
        if !paused {
            return;
        }
        self.shared
            .note(format!("b{branch} paused ({} ms)", self.t()));
        tokio::time::sleep(Duration::from_millis(duration_ms)).await;
        let c = self.shared.cluster();
        let _ = c.resume(i);
        if let Ok(mut p) = self.shared.paused.lock() {
            p.remove(&i);
        }
        self.shared
            .note(format!("b{branch} resumed ({} ms)", self.t()));
    }

    /// A rogue peer holding `impersonate`'s key (which is killed) attacks `target`;
    /// every wrong answer it gets is a violation.
    async fn rogue(&self, target: u16, impersonate: u16) -> anyhow::Result<()> {
        let (ti, ii) = (usize::from(target - 1), usize::from(impersonate - 1));
        let sh = self.shared.clone();
        tokio::task::spawn_blocking(move || sh.cluster().kill(ii)).await?;
        self.shared.note(format!(
            "b{impersonate} killed; rogue holds its key ({} ms)",
            self.t()
        ));
        let from = self.accounts.by_branch[ti][0];
        let setup = crate::rogue::Setup::new(&self.shared.cluster(), ti, ii)?;
        let wrong = crate::rogue::attack(&setup, from).await?;
        self.shared.note(format!(
            "rogue attacked b{target}: {} wrong answers ({} ms)",
            wrong.len(),
            self.t()
        ));
        for w in wrong {
            self.shared.violation(w);
        }
        tokio::time::sleep(ROGUE_RESTART_AFTER).await;
        self.restart(ii).await?;
        self.shared
            .note(format!("b{impersonate} restarted ({} ms)", self.t()));
        Ok(())
    }
}

impl FaultRun {
    /// Backs `branch` up now; `after_ms` later kills it, loses its database, restores
    /// the backup and starts it again, the cluster held throughout (no snapshot audits
    /// a branch without its database).
    async fn restore(&self, branch: u16, after_ms: u64) -> anyhow::Result<()> {
        let i = usize::from(branch - 1);
        let sh = self.shared.clone();
        // The copy is one moment while the command runs: what was answered after it
        // starts may be missing from it.
        let backed_up = Instant::now();
        let file = tokio::task::spawn_blocking(move || sh.cluster().backup(i)).await??;
        self.shared
            .note(format!("b{branch} backed up ({} ms)", self.t()));
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        let sh = self.shared.clone();
        let (killed, report) = tokio::task::spawn_blocking(move || {
            let mut c = sh.cluster();
            c.kill(i);
            let killed = Instant::now();
            c.lose_database(i)?;
            let report = c.restore(i, &file)?;
            c.start_node(i, &[])?;
            anyhow::Ok((killed, report))
        })
        .await??;
        let lost = report.lost().map_or(0, |l| {
            l.deposits.count + l.withdrawals.count + l.local_transfers.count
        });
        self.shared.note(format!(
            "b{branch} killed -9, its disk lost, restored from the backup and started \
             (epoch {}, {} cross-branch transfers put back, {} in doubt aborted, {lost} \
             one-step movements reported lost) ({} ms)",
            report.epoch,
            report.committed.len(),
            report.in_doubt_aborted.len(),
            self.t()
        ));
        if let Ok(mut r) = self.shared.restores.lock() {
            r.push(answers::Restored {
                branch: BranchId(branch),
                backed_up,
                killed,
                report,
            });
        }
        Ok(())
    }
}

/// Takes stop-the-world snapshots until the workload stops; returns how many.
async fn snapshots(
    every_ms: u64,
    shared: Arc<Shared>,
    dbs: Vec<(BranchId, std::path::PathBuf)>,
    progress: Arc<Progress>,
) -> usize {
    let mut n = 0;
    if every_ms == 0 {
        return n;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(every_ms)).await;
        if progress.stop.load(Ordering::Relaxed) {
            return n;
        }
        let (sh, dbs) = (shared.clone(), dbs.clone());
        match tokio::task::spawn_blocking(move || snapshot(&sh, &dbs)).await {
            Ok(Ok(())) => n += 1,
            Ok(Err(e)) => shared.violation(format!("snapshot failed: {e:#}")),
            Err(e) => shared.violation(format!("snapshot failed: {e}")),
        }
    }
}

/// Whether every thread of process `pid` is stopped (state T).
fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true; // gone
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "T" || state == "t" || state == "Z" || state == "X")
        })
    })
}

/// SIGSTOPs every running node not already paused, waits until each has stopped, audits
/// every store (a consistent cut: nothing moves), resumes them and checks the cut.
fn snapshot(shared: &Shared, dbs: &[(BranchId, std::path::PathBuf)]) -> anyhow::Result<()> {
    let mut c = shared.cluster();
    let paused = shared.paused.lock().map(|p| p.clone()).unwrap_or_default();
    let stop: Vec<usize> = (0..c.nodes.len())
        .filter(|i| !paused.contains(i) && c.running(*i))
        .collect();
    for i in &stop {
        c.pause(*i)?;
    }
    let deadline = Instant::now() + STOP_WAIT;
    let pids = c.pids();
    while !pids.iter().all(|p| all_stopped(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let audits = check::audit_all(dbs);
    for i in &stop {
        let _ = c.resume(*i);
    }
    let audits = audits?;
    let in_doubt = audits.iter().map(|a| a.in_doubt.len()).sum();
    shared.max_in_doubt.fetch_max(in_doubt, Ordering::Relaxed);
    for v in check::check_cut(&audits) {
        shared.violation(v);
    }
    Ok(())
}
