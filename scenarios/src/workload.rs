//! The workload: opens accounts with initial deposits, then runs concurrent teller
//! clients that send a weighted mix of deposits, withdrawals, local and cross-branch
//! transfers and deliberately refused requests, as each account's own customer through
//! a randomly chosen branch, under `teller-cli`'s retry policy; some answered requests
//! are sent again under the same id, at the same or another branch. Every answer ever
//! given is recorded, for the answer checker (`answers.rs`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::{Rng, RngExt, SeedableRng};
use serde::Deserialize;
use teller_cli::money::{MoneyAnswer, RetryPolicy};
use teller_cli::{Target, Teller, new_transfer_id};
use wire::teller::{NewCustomer, TellerOp, TellerResponse, TransferState};
use wire::twopc::TransferSpec;
use wire::{AccountNumber, Amount, BranchId, Refusal, TransferId};

use crate::cluster::ADMIN_PASSWORD;
pub use crate::tellers::{CUSTOMER_PASSWORD, Person, Tellers};

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

/// Who sends the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Senders {
    /// Each account's own customer, with their own session (the default).
    Customers,
    /// Each branch's admin, through their own branch (the bench: no per-account logins).
    Admins,
}

/// Which branch a request is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entry {
    /// Any branch, at random (it forwards to the account's branch). The default.
    Random,
    /// The branch of the account money leaves (admins always use it).
    Home,
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
    pub senders: Senders,
    pub entry: Entry,
    /// Percent of answered requests sent once more under the same id, to a branch
    /// chosen like the first (the same one or another).
    pub resend_percent: u32,
    /// How long one request keeps retrying for a final answer before the teller is
    /// told its outcome is unknown (the retry policy's wait), in milliseconds.
    pub answer_wait_ms: u64,
    /// Transfers per request. Above 1, a client sends bulk payments: each request a
    /// `TransferBatch` of this many transfers (at most `BATCH_LINES_MAX`) out of one
    /// branch's accounts, sent by that branch's admin through that branch; deposits
    /// and withdrawals rolled on the way are sent one by one as usual.
    pub batch: usize,
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
            senders: Senders::Customers,
            entry: Entry::Random,
            resend_percent: 10,
            answer_wait_ms: 10_000,
            batch: 1,
        }
    }
}

impl Workload {
    /// The retry policy every request of this workload is sent under.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            wait: Duration::from_millis(self.answer_wait_ms),
            ..RetryPolicy::default()
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

/// What a teller was told about one request (see `teller_cli::money::MoneyAnswer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Committed,
    /// Final (exit 3).
    Refused(Refusal),
    /// Nothing reached the bank (exit 4).
    NotDone,
    /// It may have reached the bank; no final answer (exit 5).
    Unknown,
}

impl Answer {
    fn of(m: &MoneyAnswer) -> Answer {
        match m {
            MoneyAnswer::Committed { .. } => Answer::Committed,
            MoneyAnswer::Refused { reason, .. } => Answer::Refused(*reason),
            MoneyAnswer::NotDone { .. } => Answer::NotDone,
            MoneyAnswer::Unknown { .. } => Answer::Unknown,
        }
    }

    /// Committed or refused: the outcome every later answer must repeat.
    pub fn is_final(&self) -> bool {
        matches!(self, Answer::Committed | Answer::Refused(_))
    }

    /// The report's column: refusals by the protocol (a branch out of reach before the
    /// decision, a restart) are "aborted", the bank's rules "refused".
    pub fn column(&self) -> Column {
        match self {
            Answer::Committed => Column::Committed,
            Answer::Refused(r) if is_protocol_abort(*r) => Column::Aborted,
            Answer::Refused(_) => Column::Refused,
            Answer::NotDone => Column::NotDone,
            Answer::Unknown => Column::Unknown,
        }
    }
}

/// The columns of the report's outcome table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Committed,
    Aborted,
    Refused,
    NotDone,
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

impl Kind {
    /// Whether the request is a transfer (two legs) rather than a deposit or withdrawal.
    pub fn is_transfer(&self) -> bool {
        !matches!(self, Kind::Deposit | Kind::Withdraw)
    }
}

/// One answer a teller was given.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    pub kind: Kind,
    pub id: TransferId,
    /// The account whose owner sent it (money leaves it; a deposit's account).
    pub owner: AccountNumber,
    /// Index of the branch the request was sent to.
    pub branch: usize,
    pub answer: Answer,
    pub latency: Duration,
    /// A second send of an id already answered.
    pub resend: bool,
    /// When it was sent (its answer came `latency` later).
    pub sent_at: Instant,
}

/// Live counters, for progress bars and the schedule.
#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub committed: AtomicU64,
    pub refused: AtomicU64,
    pub aborted: AtomicU64,
    pub not_done: AtomicU64,
    pub unknown: AtomicU64,
    pub stop: AtomicBool,
    /// What a teller was told that named the machinery (`teller_cli::say`): the first
    /// few, each a violation of the run.
    pub internal: Mutex<Vec<String>>,
}

/// Most answers naming the machinery a run keeps to report.
const INTERNAL_KEPT: usize = 5;

impl Progress {
    /// Holds what a teller would be told of `told` (the CLI's, menus' and console's
    /// one sentence) against the machinery's words.
    fn hear(&self, told: &MoneyAnswer) {
        let said = teller_cli::say::money(told, &teller_cli::say::Names::default());
        if let Some(word) = teller_cli::say::internal_word(&said) {
            let mut kept = self.internal.lock().unwrap_or_else(PoisonError::into_inner);
            if kept.len() < INTERNAL_KEPT {
                kept.push(format!("a teller was told {said:?}: it names {word:?}"));
            }
        }
    }

    /// The answers that named the machinery, as violations.
    pub fn internal_words(&self) -> Vec<String> {
        self.internal.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn count(&self, answer: Answer) {
        let c = match answer.column() {
            Column::Committed => &self.committed,
            Column::Aborted => &self.aborted,
            Column::Refused => &self.refused,
            Column::NotDone => &self.not_done,
            Column::Unknown => &self.unknown,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

fn is_protocol_abort(r: Refusal) -> bool {
    matches!(r, Refusal::NoVote | Refusal::Expired | Refusal::Interrupted)
}

/// The request one client sends next; a transfer's money leaves an account of branch
/// index `from_branch` when given.
fn next_op(
    rng: &mut impl Rng,
    w: &Workload,
    accounts: &Accounts,
    from_branch: Option<usize>,
) -> (Kind, TellerOp) {
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
    match kind {
        Kind::Deposit | Kind::Withdraw => {
            let account = pick(rng, None);
            let amount = amount(rng);
            (
                kind,
                TellerOp::movement(kind == Kind::Deposit, id, account, amount),
            )
        }
        Kind::Local | Kind::Cross => {
            let from = pick(rng, from_branch);
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
            (kind, TellerOp::Transfer(spec))
        }
        Kind::Refused => {
            let from = pick(rng, from_branch);
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
            (kind, TellerOp::Transfer(spec))
        }
    }
}

/// The account whose owner sends `op`: the one money leaves, or a deposit's account.
fn owner(op: &TellerOp) -> Option<AccountNumber> {
    match op {
        TellerOp::Deposit { account, .. } | TellerOp::Withdraw { account, .. } => Some(*account),
        TellerOp::Transfer(spec) => Some(spec.from),
        _ => None,
    }
}

/// Branch ids are 1..=n in a local network, and branch indexes count from 0.
fn branch_of(a: AccountNumber) -> usize {
    usize::from(a.branch().0).saturating_sub(1)
}

/// One client's view of a run: what it sends, through which tellers, where answers go.
struct Client {
    n: usize,
    w: Workload,
    accounts: Accounts,
    tellers: Tellers,
    progress: Arc<Progress>,
    policy: RetryPolicy,
}

impl Client {
    /// The branch a request of `owner`'s goes to.
    fn entry(&self, rng: &mut impl Rng, owner: AccountNumber) -> usize {
        match (self.w.senders, self.w.entry) {
            (Senders::Customers, Entry::Random) => rng.random_range(0..self.tellers.branches()),
            _ => branch_of(owner),
        }
    }

    fn person(&self, owner: AccountNumber) -> Person {
        match self.w.senders {
            Senders::Customers => Person::Customer(owner),
            Senders::Admins => Person::Admin(branch_of(owner)),
        }
    }

    /// Sends `op` once (under the retry policy) and records what the teller was told.
    async fn send(&self, rng: &mut impl Rng, kind: Kind, op: &TellerOp, resend: bool) -> Record {
        let owner = owner(op).unwrap_or_else(|| self.accounts.all[0]);
        let branch = self.entry(rng, owner);
        let started = Instant::now();
        let told = self
            .tellers
            .send_money(
                &self.person(owner),
                self.n,
                branch,
                op.clone(),
                &self.policy,
            )
            .await;
        let answer = Answer::of(&told);
        self.progress.hear(&told);
        if !resend {
            self.progress.count(answer);
        }
        Record {
            kind,
            id: told.id(),
            owner,
            branch,
            answer,
            latency: started.elapsed(),
            resend,
            sent_at: started,
        }
    }

    /// One bulk payment: `batch` transfers out of one branch's accounts, sent as that
    /// branch's admin (deposits and withdrawals rolled on the way go one by one), and
    /// sent once more whole under the same ids when a resend is rolled.
    async fn bulk(&self, rng: &mut impl Rng) -> Vec<Record> {
        let b = rng.random_range(0..self.accounts.by_branch.len());
        let mut lines = Vec::new();
        let mut records = Vec::new();
        for _ in 0..self.w.batch.min(wire::limits::BATCH_LINES_MAX) {
            match next_op(rng, &self.w, &self.accounts, Some(b)) {
                (kind, TellerOp::Transfer(spec)) => lines.push((kind, spec)),
                (kind, op) => records.push(self.send(rng, kind, &op, false).await),
            }
        }
        records.extend(self.send_lines(b, &lines, false).await);
        if rng.random_range(0..100) < self.w.resend_percent {
            records.extend(self.send_lines(b, &lines, true).await);
        }
        records
    }

    /// Sends `lines` as one bulk payment by branch `b`'s admin and records each answer.
    async fn send_lines(
        &self,
        b: usize,
        lines: &[(Kind, TransferSpec)],
        resend: bool,
    ) -> Vec<Record> {
        let specs: Vec<TransferSpec> = lines.iter().map(|l| l.1).collect();
        let started = Instant::now();
        let told = self
            .tellers
            .send_batch(&Person::Admin(b), self.n, b, &specs, &self.policy)
            .await;
        let latency = started.elapsed();
        lines
            .iter()
            .zip(told)
            .map(|((kind, spec), told)| {
                let answer = Answer::of(&told);
                self.progress.hear(&told);
                if !resend {
                    self.progress.count(answer);
                }
                Record {
                    kind: *kind,
                    id: spec.id,
                    owner: spec.from,
                    branch: b,
                    answer,
                    latency,
                    resend,
                    sent_at: started,
                }
            })
            .collect()
    }

    /// Sends requests until the count or the deadline is reached, or the run stops.
    async fn run(self, deadline: Option<Instant>, gap: Option<Duration>) -> Vec<Record> {
        let seed = self.w.seed.wrapping_mul(1_000_003) + self.n as u64;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut mine = Vec::new();
        loop {
            if self.progress.stop.load(Ordering::Relaxed)
                || deadline.is_some_and(|d| Instant::now() >= d)
            {
                break;
            }
            let per_request = self.w.batch.max(1) as u64;
            let n = self.progress.sent.fetch_add(per_request, Ordering::Relaxed);
            if self.w.count.is_some_and(|c| n >= c) {
                break;
            }
            let started = Instant::now();
            if self.w.batch > 1 {
                mine.extend(self.bulk(&mut rng).await);
            } else {
                let (kind, op) = next_op(&mut rng, &self.w, &self.accounts, None);
                let first = self.send(&mut rng, kind, &op, false).await;
                mine.push(first);
                if first.answer != Answer::NotDone
                    && rng.random_range(0..100) < self.w.resend_percent
                {
                    mine.push(self.send(&mut rng, kind, &op, true).await);
                }
            }
            if let Some(gap) = gap {
                let spent = started.elapsed();
                if spent < gap {
                    tokio::time::sleep(gap - spent).await;
                }
            }
        }
        mine
    }
}

/// Runs the workload until its count or duration is reached, or `progress.stop` is set.
/// Returns every answer given, resends included.
pub async fn run(
    w: &Workload,
    accounts: &Accounts,
    tellers: &Tellers,
    progress: Arc<Progress>,
) -> anyhow::Result<Vec<Record>> {
    if accounts.all.is_empty() {
        bail!("the workload needs accounts");
    }
    let deadline = match (w.count, w.duration_ms) {
        (Some(_), None) => None,
        (_, d) => Some(Instant::now() + Duration::from_millis(d.unwrap_or(10_000))),
    };
    let clients = w.clients.max(1);
    let gap = w
        .rate
        .filter(|r| *r > 0)
        .map(|r| Duration::from_secs_f64(clients as f64 / f64::from(r)));
    let records = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..clients {
        let client = Client {
            n,
            w: w.clone(),
            accounts: accounts.clone(),
            tellers: tellers.clone(),
            progress: progress.clone(),
            policy: w.policy(),
        };
        let records = records.clone();
        tasks.spawn(async move {
            let mine = client.run(deadline, gap).await;
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
