//! The workload: opens accounts with initial deposits, then runs concurrent teller
//! clients that send a weighted mix of deposits, withdrawals, local and cross-branch
//! transfers and deliberately refused requests, recording every outcome and latency.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::{Rng, RngExt, SeedableRng};
use serde::Deserialize;
use teller_cli::{Target, Teller, TellerError, new_transfer_id};
use wire::teller::{NewCustomer, TellerOp, TellerResponse, TransferState};
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, BranchId, Refusal, TransferId};

use crate::cluster::ADMIN_PASSWORD;

/// Relative weights of each kind of request.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mix {
    pub deposit: u32,
    pub withdraw: u32,
    pub local: u32,
    pub cross: u32,
    /// Requests the bank must refuse: overdrafts and transfers to unknown accounts.
    pub refused: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            deposit: 10,
            withdraw: 10,
            local: 30,
            cross: 45,
            refused: 5,
        }
    }
}

/// What the clients do, and for how long.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Concurrent clients (each waits for its answer before sending the next request).
    pub clients: usize,
    /// Stop after this many requests...
    pub count: Option<u64>,
    /// ...or after this long (milliseconds). With neither, 10 seconds.
    pub duration_ms: Option<u64>,
    /// Total requests per second across clients; absent means as fast as answers come.
    pub rate: Option<u32>,
    pub mix: Mix,
    /// The first `hot_accounts` accounts get `hot_percent` of the traffic.
    pub hot_accounts: usize,
    pub hot_percent: u32,
    /// Largest amount moved by one request, minor units.
    pub amount_max_minor: i64,
    /// Random seed (the choice of requests; timing still varies).
    pub seed: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            clients: 8,
            count: None,
            duration_ms: None,
            rate: None,
            mix: Mix::default(),
            hot_accounts: 0,
            hot_percent: 0,
            amount_max_minor: 5_000,
            seed: 1,
        }
    }
}

/// The accounts opened for a run, per branch index (0-based, as in the cluster).
#[derive(Debug, Clone)]
pub struct Accounts {
    pub by_branch: Vec<Vec<AccountNumber>>,
    /// Every account, in a fixed order (the hot ones first).
    pub all: Vec<AccountNumber>,
}

/// The amount of a deliberate overdraft: more than any generated account holds.
const OVERDRAFT_MINOR: i64 = 1_000_000_000_000;
/// An account serial no generated bank reaches: transfers to it are refused.
const NO_SUCH_SERIAL: u32 = 99_999_999;

/// Every account's password in a generated bank.
pub const CUSTOMER_PASSWORD: &str = "customer-password";

/// Opens `per_branch` accounts at each branch, each with `initial_minor` deposited.
/// Returns the accounts and the deposit ids (answered committed).
pub async fn open_accounts(
    targets: &[Target],
    per_branch: usize,
    initial_minor: i64,
) -> anyhow::Result<(Accounts, BTreeSet<TransferId>)> {
    let mut by_branch = Vec::new();
    let mut committed = BTreeSet::new();
    for (i, t) in targets.iter().enumerate() {
        let mut admin = Teller::connect(t).await?;
        admin.login("admin", ADMIN_PASSWORD).await?;
        let mut mine = Vec::new();
        for n in 0..per_branch {
            let r = admin
                .call(TellerOp::OpenAccount {
                    customer: NewCustomer {
                        national_id: format!("W{i}-{n}"),
                        phone: "+1 555 0100".into(),
                        first_name: format!("Client{n}"),
                        last_name: format!("Branch{}", i + 1),
                        sms_opt_in: n % 4 == 0,
                    },
                    password: CUSTOMER_PASSWORD.into(),
                    existing: None,
                })
                .await?;
            let TellerResponse::AccountOpened(view) = r else {
                bail!("open account: {r:?}");
            };
            if initial_minor > 0 {
                let id = new_transfer_id();
                let r = admin
                    .call(TellerOp::Deposit {
                        id,
                        account: view.number,
                        amount: Amount::from_minor(initial_minor)?,
                    })
                    .await?;
                match r {
                    TellerResponse::Receipt {
                        state: TransferState::Committed,
                        ..
                    } => {
                        committed.insert(id);
                    }
                    other => bail!("initial deposit: {other:?}"),
                }
            }
            mine.push(view.number);
        }
        by_branch.push(mine);
    }
    // Interleave branches so "the first N" (the hot accounts) spans every branch.
    let mut all = Vec::new();
    for n in 0..per_branch {
        for b in &by_branch {
            all.push(b[n]);
        }
    }
    Ok((Accounts { by_branch, all }, committed))
}

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// Refused by the bank's rules (funds, unknown account, bad amount...).
    Refused,
    /// Aborted by the protocol (a branch unreachable, a deadline, a restart).
    Aborted,
    /// No answer: the teller does not know (resolved afterwards by asking).
    Unknown,
}

/// The kind of request, for the tallies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Deposit,
    Withdraw,
    Local,
    Cross,
    Refused,
}

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    pub kind: Kind,
    pub id: TransferId,
    /// Index of the branch that was asked (it coordinates a transfer).
    pub branch: usize,
    pub outcome: Outcome,
    pub latency: Duration,
}

/// Live counters, for progress bars and the schedule.
#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub committed: AtomicU64,
    pub refused: AtomicU64,
    pub aborted: AtomicU64,
    pub unknown: AtomicU64,
    pub stop: AtomicBool,
}

fn is_protocol_abort(r: Refusal) -> bool {
    matches!(
        r,
        Refusal::BranchUnreachable
            | Refusal::Expired
            | Refusal::Overloaded
            | Refusal::Interrupted
            | Refusal::StoreUnavailable
    )
}

/// One admin teller per branch (admins move money on their own branch's accounts);
/// re-logs in when a restarted branch has forgotten the session.
#[derive(Debug, Clone)]
pub struct Tellers {
    tellers: Vec<Arc<tokio::sync::Mutex<Teller>>>,
}

impl Tellers {
    /// `per_branch` connections to each branch, logged in as its admin.
    pub async fn connect(targets: &[Target], per_branch: usize) -> anyhow::Result<Tellers> {
        let mut tellers = Vec::new();
        for t in targets {
            for _ in 0..per_branch.max(1) {
                let mut teller = Teller::connect(t).await?;
                teller.login("admin", ADMIN_PASSWORD).await?;
                tellers.push(Arc::new(tokio::sync::Mutex::new(teller)));
            }
        }
        Ok(Tellers { tellers })
    }

    fn pick(
        &self,
        branch: usize,
        branches: usize,
        client: usize,
    ) -> &Arc<tokio::sync::Mutex<Teller>> {
        let per = self.tellers.len() / branches;
        &self.tellers[branch * per + client % per]
    }

    /// Sends `op` to `branch`; a lost session is renewed once and the same op re-sent.
    pub async fn call(
        &self,
        branch: usize,
        branches: usize,
        client: usize,
        op: TellerOp,
    ) -> Result<TellerResponse, TellerError> {
        let slot = self.pick(branch, branches, client);
        let teller = slot.lock().await.clone();
        match teller.call(op.clone()).await {
            Err(TellerError::Refused(Refusal::SessionExpired)) => {
                let mut t = slot.lock().await;
                t.login("admin", ADMIN_PASSWORD).await?;
                let renewed = t.clone();
                drop(t);
                renewed.call(op).await
            }
            other => other,
        }
    }
}

/// The request one client sends next.
fn next_op(
    rng: &mut impl Rng,
    w: &Workload,
    accounts: &Accounts,
) -> (Kind, usize, TellerOp, TransferId) {
    let m = w.mix;
    let total = (m.deposit + m.withdraw + m.local + m.cross + m.refused).max(1);
    let mut roll = rng.random_range(0..total);
    let mut kind = Kind::Refused;
    for (k, weight) in [
        (Kind::Deposit, m.deposit),
        (Kind::Withdraw, m.withdraw),
        (Kind::Local, m.local),
        (Kind::Cross, m.cross),
    ] {
        if roll < weight {
            kind = k;
            break;
        }
        roll -= weight;
    }
    let branches = accounts.by_branch.len();
    let hot = w.hot_accounts.min(accounts.all.len());
    let pick = |rng: &mut dyn rand::Rng, branch: Option<usize>| -> AccountNumber {
        if hot > 0 && rng.random_range(0..100) < w.hot_percent {
            let candidates: Vec<&AccountNumber> = accounts.all[..hot]
                .iter()
                .filter(|a| branch.is_none_or(|b| accounts.by_branch[b].contains(a)))
                .collect();
            if !candidates.is_empty() {
                return *candidates[rng.random_range(0..candidates.len())];
            }
        }
        let b = branch.unwrap_or_else(|| rng.random_range(0..branches));
        let list = &accounts.by_branch[b];
        list[rng.random_range(0..list.len())]
    };
    let id = new_transfer_id();
    let amount = |rng: &mut dyn rand::Rng| {
        Amount::from_minor(rng.random_range(1..=w.amount_max_minor.max(1))).unwrap_or(Amount::ZERO)
    };
    // Branch ids are 1..=n in a local network, and `by_branch` is indexed from 0.
    let branch_of = |a: AccountNumber| usize::from(a.branch().0).saturating_sub(1);
    match kind {
        Kind::Deposit | Kind::Withdraw => {
            let account = pick(rng, None);
            let amount = amount(rng);
            let op = TellerOp::movement(kind == Kind::Deposit, id, account, amount);
            (kind, branch_of(account), op, id)
        }
        Kind::Local | Kind::Cross => {
            let from = pick(rng, None);
            let b = branch_of(from);
            let to = if kind == Kind::Local || branches < 2 {
                // Another account of the same branch (the next one if the pick is `from`).
                let list = &accounts.by_branch[b];
                let to = pick(rng, Some(b));
                match list.iter().position(|a| *a == to) {
                    Some(i) if to == from => list[(i + 1) % list.len()],
                    _ => to,
                }
            } else {
                let other = (b + rng.random_range(1..branches)) % branches;
                pick(rng, Some(other))
            };
            let spec = TransferSpec {
                id,
                from,
                to,
                amount: amount(rng),
            };
            (kind, b, TellerOp::Transfer(spec), id)
        }
        Kind::Refused => {
            let from = pick(rng, None);
            let b = branch_of(from);
            let spec = if rng.random_bool(0.5) {
                // An overdraft: more than any account holds.
                TransferSpec {
                    id,
                    from,
                    to: pick(rng, None),
                    amount: Amount::from_minor(OVERDRAFT_MINOR).unwrap_or(Amount::ZERO),
                }
            } else {
                // To an account no branch has.
                let to = AccountNumber::new(
                    BranchId(u16::try_from(branches).unwrap_or(1)),
                    NO_SUCH_SERIAL,
                )
                .unwrap_or(from);
                TransferSpec {
                    id,
                    from,
                    to,
                    amount: amount(rng),
                }
            };
            (kind, b, TellerOp::Transfer(spec), id)
        }
    }
}

/// Runs the workload until its count or duration is reached, or `progress.stop` is set.
pub async fn run(
    w: &Workload,
    accounts: &Accounts,
    tellers: &Tellers,
    progress: Arc<Progress>,
) -> anyhow::Result<Vec<Record>> {
    if accounts.all.is_empty() {
        bail!("the workload needs accounts");
    }
    let records = Arc::new(Mutex::new(Vec::new()));
    let deadline = match (w.count, w.duration_ms) {
        (Some(_), None) => None,
        (_, d) => Some(Instant::now() + Duration::from_millis(d.unwrap_or(10_000))),
    };
    let clients = w.clients.max(1);
    let per_client_gap = w
        .rate
        .filter(|r| *r > 0)
        .map(|r| Duration::from_secs_f64(clients as f64 / f64::from(r)));
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (w, accounts, tellers) = (w.clone(), accounts.clone(), tellers.clone());
        let (progress, records) = (progress.clone(), records.clone());
        tasks.spawn(async move {
            let mut rng =
                rand::rngs::StdRng::seed_from_u64(w.seed.wrapping_mul(1_000_003) + client as u64);
            let branches = accounts.by_branch.len();
            let mut mine = Vec::new();
            loop {
                if progress.stop.load(Ordering::Relaxed)
                    || deadline.is_some_and(|d| Instant::now() >= d)
                {
                    break;
                }
                let n = progress.sent.fetch_add(1, Ordering::Relaxed);
                if w.count.is_some_and(|c| n >= c) {
                    break;
                }
                let started = Instant::now();
                let (kind, branch, op, id) = next_op(&mut rng, &w, &accounts);
                let answer = tellers.call(branch, branches, client, op).await;
                let outcome = match answer {
                    Ok(TellerResponse::Receipt { state, .. }) => match state {
                        TransferState::Committed => Outcome::Committed,
                        TransferState::Aborted(r) if is_protocol_abort(r) => Outcome::Aborted,
                        TransferState::Aborted(_) => Outcome::Refused,
                        TransferState::Pending | TransferState::Unknown => Outcome::Unknown,
                    },
                    Err(TellerError::Refused(r)) if is_protocol_abort(r) => Outcome::Aborted,
                    Err(TellerError::Refused(_) | TellerError::Invalid(_)) => Outcome::Refused,
                    Ok(_) | Err(_) => Outcome::Unknown,
                };
                let counter = match outcome {
                    Outcome::Committed => &progress.committed,
                    Outcome::Refused => &progress.refused,
                    Outcome::Aborted => &progress.aborted,
                    Outcome::Unknown => &progress.unknown,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                mine.push(Record {
                    kind,
                    id,
                    branch,
                    outcome,
                    latency: started.elapsed(),
                });
                if let Some(gap) = per_client_gap {
                    let spent = started.elapsed();
                    if spent < gap {
                        tokio::time::sleep(gap - spent).await;
                    }
                }
            }
            if let Ok(mut all) = records.lock() {
                all.extend(mine);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("a workload client failed")?;
    }
    let out = std::mem::take(&mut *records.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok(out)
}

/// Asks, after the heal, how each request with an unknown outcome ended.
/// Returns (committed, not committed, still unknown).
pub async fn resolve_unknown(
    records: &[Record],
    tellers: &Tellers,
    branches: usize,
) -> (u64, u64, u64) {
    let (mut yes, mut no, mut still) = (0, 0, 0);
    for r in records.iter().filter(|r| r.outcome == Outcome::Unknown) {
        match tellers
            .call(r.branch, branches, 0, TellerOp::TransferStatus { id: r.id })
            .await
        {
            Ok(TellerResponse::Status {
                state: TransferState::Committed,
                ..
            }) => yes += 1,
            Ok(TellerResponse::Status {
                state: TransferState::Aborted(_),
                ..
            }) => no += 1,
            // Never seen by the branch: it did not happen.
            Ok(TellerResponse::Status {
                state: TransferState::Unknown,
                ..
            }) => no += 1,
            _ => still += 1,
        }
    }
    (yes, no, still)
}
