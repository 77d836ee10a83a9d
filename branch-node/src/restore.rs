//! `branch-node restore`, the network's part: after the backup is copied into the data
//! dir, the restored branch
//!
//! 1. asks every other branch whether a copy of it still serves (a fence probe,
//!    `wire::fence`), and refuses while one does: a restore beside a running branch
//!    would let the same money be spent twice;
//! 2. makes its epoch newer than any the network has seen and registers it with every
//!    other branch, which from then on refuses the old copy (its claims and its 2PC
//!    envelopes);
//! 3. asks every other branch for the cross-branch transfers with it whose deadline is
//!    at or after the backup's moment (less an hour, for clocks that disagree), checks
//!    the signed votes and decisions behind every commit against the network file, and
//!    puts back each leg it lost: committed legs with their money, aborted ones as
//!    records, and those the other branch holds in doubt (only the lost disk knew their
//!    decision) aborted;
//! 4. reports what only the lost disk knew: the newest head the other branches hold
//!    (`wire::fence::Head`) against the restored books gives the count and the total of
//!    the deposits, withdrawals and local transfers made after the backup, which no
//!    other branch saw, and until when the network knew the branch.
//!
//! A replica restored with `--join` takes the branch from the replica that makes the
//! new log: it only checks that the branch's live copy, if any, is that new one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use wire::fence::{Claim, ClaimAnswer, ClaimKind, Head, Recovered, RecoveredOutcome, Tally};
use wire::link::{ForwardRequest, LinkRequest, LinkResponse};
use wire::twopc::{BranchBody, BranchMessage, Decision, VoteItem};
use wire::{AccountNumber, BranchId, BranchKey, Refusal, Signed, TransferId, Vote};

use crate::p2p::network::Client;
use crate::store::fence::OwnFence;
use crate::store::recover::{RecoverItem, Recovery};
use crate::store::{Durability, Store};
use client::network_file::NetworkFile;

/// How far before the backup's moment a restore looks for transfers (deadlines are set
/// by each coordinator's clock, which may disagree with this branch's).
pub const RESTORE_LOOKBACK_MS: u64 = 60 * 60 * 1_000;

/// How often the restore says which branches it still waits for.
const WAITING_SAY_MS: u64 = 5_000;

/// The report a restore writes beside the database, and prints.
pub const REPORT_FILE: &str = "restore-report.txt";

/// The same report for programs (JSON; ids as numbers, amounts in minor units).
pub const REPORT_JSON_FILE: &str = "restore-report.json";

/// What a restore did with what the network knows (also kept as JSON, for programs).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub epoch: u64,
    /// Transfers put back (committed with their money, or as aborted records).
    pub committed: Vec<(TransferId, BranchId, i64)>,
    pub aborted: usize,
    /// Transfers the other branch held in doubt: aborted by the restore.
    pub in_doubt_aborted: Vec<(TransferId, BranchId, i64)>,
    /// Transfers that could not be put back, and why.
    pub not_put_back: Vec<String>,
    /// Accounts opened after the backup, put back for a transfer the network holds,
    /// their owners unknown (see `store::recover::Repairs`).
    pub placeholders: Vec<AccountNumber>,
    /// Deposits put back for recovered debits the restored balance could not cover:
    /// (account, the deposit's id, the transfer's id, amount in minor units).
    pub inferred_deposits: Vec<(AccountNumber, TransferId, TransferId, i64)>,
    /// What only the lost disk knew: the newest head the network holds, and the
    /// restored books' head after recovery.
    pub network_head: Option<(BranchId, Head)>,
    pub restored_head: Head,
}

/// Where the other branches answer from: a client with this branch's key that dials out
/// (it listens nowhere).
struct Net {
    me: BranchId,
    key: Arc<BranchKey>,
    client: Client,
    others: Vec<BranchId>,
    /// The network's fence grace period.
    grace: Duration,
    _loop: tokio::task::JoinHandle<()>,
}

fn connect(key: Arc<BranchKey>, network: &NetworkFile) -> anyhow::Result<Net> {
    let me = network
        .by_peer(&key.peer_id())
        .map(|b| b.id)
        .context("this data dir's key is not in the network file")?;
    let swarm = crate::p2p::node_swarm(key.libp2p_keypair(), false)?;
    let (client, event_loop, _inbound) = crate::p2p::network::new(swarm, network.clone());
    let task = tokio::spawn(event_loop.run(std::future::pending()));
    let others = network
        .branches()
        .map(|b| b.id)
        .filter(|b| *b != me)
        .collect();
    Ok(Net {
        me,
        key,
        client,
        others,
        grace: network.fence_grace(),
        _loop: task,
    })
}

impl Net {
    fn claim(&self, to: BranchId, epoch: u64, kind: ClaimKind) -> Claim {
        Claim {
            branch: self.me,
            to,
            epoch,
            kind,
            head: None,
            sent_at_ms: crate::node::now_ms(),
        }
    }

    /// Asks every other branch `kind` at `epoch` until each has answered or `wait` ran
    /// out, saying every few seconds who it waits for.
    async fn ask_all(
        &self,
        epoch: u64,
        kind: ClaimKind,
        wait: Duration,
    ) -> anyhow::Result<Vec<(BranchId, ClaimAnswer)>> {
        let deadline = Instant::now() + wait;
        let mut said = Instant::now();
        let mut answers: HashMap<BranchId, ClaimAnswer> = HashMap::new();
        loop {
            let missing: Vec<BranchId> = self
                .others
                .iter()
                .copied()
                .filter(|b| !answers.contains_key(b))
                .collect();
            if missing.is_empty() {
                return Ok(self.others.iter().map(|b| (*b, answers[b])).collect());
            }
            let wait = Duration::from_millis(crate::p2p::OPEN_TIMEOUT_MS);
            let asks = missing.iter().map(|to| {
                let claim = self.claim(*to, epoch, kind);
                crate::node::fence::ask(&self.client, &self.key, self.me, claim, wait)
            });
            for (b, a) in missing.iter().zip(futures::future::join_all(asks).await) {
                if let Some(a) = a.ok().filter(|a| *a != ClaimAnswer::Refused) {
                    answers.insert(*b, a);
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "branches {} did not answer within {} s: a restore needs every other \
                     branch (they hold what this branch did after the backup); run it again \
                     once they are up",
                    names(&missing),
                    wait.as_secs()
                );
            }
            if said.elapsed() >= Duration::from_millis(WAITING_SAY_MS) {
                eprintln!("restore: waiting for branches {}", names(&missing));
                said = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(wire::limits::FENCE_RENEW_MS)).await;
        }
    }
}

fn names(branches: &[BranchId]) -> String {
    let v: Vec<String> = branches.iter().map(ToString::to_string).collect();
    v.join(", ")
}

/// Why a restore refuses to go on while a copy of the branch serves (code `branch_in_use`).
#[derive(Debug, thiserror::Error)]
#[error(
    "branch {branch} is still served by another copy (branch {witness} saw it renew its lease \
     {secs} s ago): stop that copy first; a restore beside a running branch would let the same \
     money be spent twice (nothing was restored)"
)]
pub struct InUse {
    pub branch: BranchId,
    pub witness: BranchId,
    pub secs: u64,
}

/// The network's part of restoring the data dir `data_dir` (its database just copied
/// from a backup made at `backup_at_ms`): see the module's doc. Waits up to `wait` for
/// every other branch. On an error nothing was put back into the store but its epoch
/// (the caller removes the database, so the restore can be run again).
pub async fn recover(
    data_dir: &Path,
    (network_file, kek): (&Path, Option<&crate::keys::KekSource>),
    join: bool,
    wait: Duration,
) -> anyhow::Result<Report> {
    let network = NetworkFile::load(network_file)?;
    let key = Arc::new(crate::init::read_key(data_dir)?);
    let net = connect(key, &network)?;
    // The data dir holds the backup's keys now (restore put them there).
    let keys = crate::keys::unlock(data_dir, Some(net.me), kek)?;
    let db = data_dir.join(crate::init::DB_FILE);
    let own = {
        let store = Store::open_existing(&db, &keys, net.me, Durability::Full)?;
        crate::store::fence::own(store.conn())?
    };
    let mut report = Report {
        epoch: own.epoch,
        ..Report::default()
    };
    if net.others.is_empty() {
        return Ok(report);
    }
    let states = until_silent(&net, own, join, wait).await?;
    if join {
        return Ok(report);
    }
    let newest = states
        .iter()
        .filter_map(|(_, a)| state_epoch(a))
        .max()
        .unwrap_or(0);
    let epoch = newest.max(own.epoch) + 1;
    register(&net, epoch, wait).await?;
    report.epoch = epoch;
    report.network_head = newest_head(&states);
    put_back(&net, &network, (&db, &keys), own, wait, &mut report).await?;
    Ok(report)
}

fn state_epoch(a: &ClaimAnswer) -> Option<u64> {
    match a {
        ClaimAnswer::State { epoch, .. } => Some(*epoch),
        _ => None,
    }
}

/// The newest head any other branch holds of this one.
fn newest_head(states: &[(BranchId, ClaimAnswer)]) -> Option<(BranchId, Head)> {
    states
        .iter()
        .filter_map(|(b, a)| match a {
            ClaimAnswer::State { head: Some(h), .. } => Some((*b, *h)),
            _ => None,
        })
        .max_by_key(|(_, h)| (h.ledger_seq, h.at_ms))
}

/// The other branches' states once no copy of this branch has renewed its lease for
/// the grace period: a copy killed just before (its last renewal recent) is waited
/// out, while one that keeps renewing still serves, and the restore is refused once
/// `wait` has passed.
async fn until_silent(
    net: &Net,
    own: OwnFence,
    join: bool,
    wait: Duration,
) -> anyhow::Result<Vec<(BranchId, ClaimAnswer)>> {
    let deadline = Instant::now() + wait;
    let mut said = None;
    loop {
        let states = net.ask_all(own.epoch, ClaimKind::Probe, wait).await?;
        let Err(e) = refuse_if_served(net, &states, own, join) else {
            return Ok(states);
        };
        if Instant::now() > deadline {
            return Err(e);
        }
        if said.is_none_or(|t: Instant| t.elapsed() >= Duration::from_millis(WAITING_SAY_MS)) {
            eprintln!(
                "restore: {e:#}\nrestore: waiting until no copy has renewed for {} s (a copy \
                 that stopped is waited out; one that runs must be stopped)",
                net.grace.as_secs()
            );
            said = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(wire::limits::FENCE_RENEW_MS)).await;
    }
}

/// Refuses while a copy serves the branch: any live one, or (joining) a live one not
/// newer than the backup (the original group, not the new log being joined).
fn refuse_if_served(
    net: &Net,
    states: &[(BranchId, ClaimAnswer)],
    own: OwnFence,
    join: bool,
) -> anyhow::Result<()> {
    for (witness, answer) in states {
        if let ClaimAnswer::State {
            epoch,
            renewed_ms_ago: Some(ago),
            ..
        } = answer
            && !(join && *epoch > own.epoch)
        {
            return Err(InUse {
                branch: net.me,
                witness: *witness,
                secs: ago / 1_000,
            }
            .into());
        }
    }
    Ok(())
}

/// Registers `epoch` with every other branch: from then on each refuses older copies.
async fn register(net: &Net, epoch: u64, wait: Duration) -> anyhow::Result<()> {
    let answers = net.ask_all(epoch, ClaimKind::Register, wait).await?;
    for (witness, answer) in answers {
        match answer {
            ClaimAnswer::Granted => {}
            ClaimAnswer::InUse { renewed_ms_ago, .. } => {
                return Err(InUse {
                    branch: net.me,
                    witness,
                    secs: renewed_ms_ago / 1_000,
                }
                .into());
            }
            other => anyhow::bail!("branch {witness} refused the new epoch {epoch}: {other:?}"),
        }
    }
    Ok(())
}

/// Sets the report's epoch and the serial floor its network head implies, then
/// fetches, checks and puts back every branch's transfers.
async fn put_back(
    net: &Net,
    network: &NetworkFile,
    (db, keys): (&Path, &crate::keys::DataKeys),
    own: OwnFence,
    wait: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let epoch = report.epoch;
    let serial_floor = report
        .network_head
        .map_or(0, |(_, h)| h.accounts_max_serial);
    let mut store = Store::open_existing(db, keys, net.me, Durability::Full)?;
    store.in_tx(|c, _| {
        crate::store::fence::set_meta(c, "epoch", epoch)?;
        crate::store::fence::set_meta(c, "serial_floor", u64::from(serial_floor))
    })?;
    let since = own.backup_at_ms.saturating_sub(RESTORE_LOOKBACK_MS);
    for from in net.others.clone() {
        let items = fetch_settled(net, from, since, wait).await?;
        for (r, envelopes) in items {
            apply_one(&mut store, network, net, from, r, &envelopes, report)?;
        }
    }
    report.restored_head =
        store.in_tx(|c, me| crate::store::fence::advance_head(c, me, Head::default()))?;
    Ok(())
}

/// Every transfer `from` holds with this branch since `since`, once none is undecided
/// there (an undecided one is decided by its deadline; the restore waits for it).
async fn fetch_settled(
    net: &Net,
    from: BranchId,
    since: u64,
    wait: Duration,
) -> anyhow::Result<Vec<(Recovered, Vec<Vec<u8>>)>> {
    let deadline = Instant::now() + wait;
    loop {
        let items = fetch_all(net, from, since, deadline).await?;
        let open = items
            .iter()
            .filter(|(r, _)| r.outcome == RecoveredOutcome::Undecided)
            .map(|(r, _)| r.deadline_ms)
            .max();
        let Some(latest) = open else {
            return Ok(items);
        };
        anyhow::ensure!(
            Instant::now() < deadline,
            "branch {from} still has transfers with this branch undecided; run the restore again"
        );
        let ms = latest
            .saturating_sub(crate::node::now_ms())
            .clamp(500, 10_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Every page of `from`'s transfers with this branch since `since`.
async fn fetch_all(
    net: &Net,
    from: BranchId,
    since: u64,
    deadline: Instant,
) -> anyhow::Result<Vec<(Recovered, Vec<Vec<u8>>)>> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let request = LinkRequest::Forward(ForwardRequest::Recover {
            since_ms: since,
            after,
        });
        let page = match net.client.link_branch(from, request).await {
            Ok(LinkResponse::Recovered(page)) => page,
            other if Instant::now() < deadline => {
                tracing::debug!(%from, ?other, "recovery page not given; asking again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            other => anyhow::bail!("branch {from} did not give its transfers: {other:?}"),
        };
        for r in page.transfers {
            let envelopes = r
                .evidence
                .iter()
                .filter_map(|i| page.envelopes.get(usize::try_from(*i).ok()?).cloned())
                .collect();
            out.push((r, envelopes));
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// Checks one recovered transfer's evidence and puts its leg back.
fn apply_one(
    store: &mut Store,
    network: &NetworkFile,
    net: &Net,
    from: BranchId,
    r: Recovered,
    envelopes: &[Vec<u8>],
    report: &mut Report,
) -> anyhow::Result<()> {
    let me = net.me;
    let id = r.spec.id;
    let amount = r.spec.amount.minor();
    let item = match r.outcome {
        RecoveredOutcome::Committed => match committed_item(network, net, &r, envelopes) {
            Ok(item) => item,
            Err(why) => {
                report.not_put_back.push(format!(
                    "{id} ({}) from branch {from}: {why}",
                    r.spec.amount
                ));
                return Ok(());
            }
        },
        RecoveredOutcome::Aborted | RecoveredOutcome::InDoubt | RecoveredOutcome::Undecided => {
            RecoverItem {
                spec: r.spec,
                deadline_ms: r.deadline_ms,
                coordinator: r.coordinator,
                decision: Decision::Abort,
                reason: Some(r.reason.unwrap_or(Refusal::Interrupted)),
                // In doubt there: this branch sends its abort when it runs.
                ended: r.outcome != RecoveredOutcome::InDoubt,
                evidence: Vec::new(),
            }
        }
    };
    let now = crate::node::now_ms();
    let done = store.in_tx(|c, _| crate::store::recover::recover(c, me, &item, now))?;
    if let Recovery::Applied(repairs) = done {
        report.placeholders.extend(repairs.placeholder);
        if let Some((deposit, a)) = repairs.inferred_deposit {
            report
                .inferred_deposits
                .push((r.spec.from, deposit, id, a.minor()));
        }
    }
    match (done, r.outcome) {
        (Recovery::Applied(_), RecoveredOutcome::Committed) => {
            report.committed.push((id, from, amount))
        }
        (Recovery::Applied(_), RecoveredOutcome::InDoubt) => {
            report.in_doubt_aborted.push((id, from, amount));
        }
        (Recovery::Applied(_), _) => report.aborted += 1,
        (Recovery::AlreadyHere, _) => {}
        (Recovery::Refused(why), _) => report.not_put_back.push(format!(
            "{id} ({}) with branch {from}: {why} ({})",
            r.spec.amount,
            why.code()
        )),
    }
    Ok(())
}

/// A committed transfer's item, once its evidence holds: the coordinator's signed
/// commit and both participants' signed yes votes.
fn committed_item(
    network: &NetworkFile,
    net: &Net,
    r: &Recovered,
    envelopes: &[Vec<u8>],
) -> Result<RecoverItem, String> {
    let id = r.spec.id;
    let me = net.me;
    let other = if r.coordinator == me {
        r.spec.to.branch()
    } else {
        r.coordinator
    };
    let signed_by = |b: BranchId, test: &dyn Fn(&BranchBody) -> bool| {
        envelopes.iter().find(|e| {
            crate::store::evidence::signed_message(network, e)
                .is_some_and(|(s, m)| s == b && test(&m.body))
        })
    };
    let commits = |body: &BranchBody| crate::store::evidence::commits(body, id);
    let votes = |body: &BranchBody| crate::store::evidence::votes_yes(body, id);
    let decision =
        signed_by(r.coordinator, &commits).ok_or("no commit decision signed by its coordinator")?;
    if r.coordinator == me {
        // This branch decided it: its own signed decision, kept by the other branch, is
        // the proof; the coordinator record keeps both participants' yes votes.
        let theirs = signed_by(other, &votes).ok_or("no yes vote signed by the other branch")?;
        let _ = decision;
        let own = own_vote(net, id).map_err(|e| e.to_string())?;
        Ok(RecoverItem {
            spec: r.spec,
            deadline_ms: r.deadline_ms,
            coordinator: me,
            decision: Decision::Commit,
            reason: None,
            ended: true,
            evidence: vec![Arc::from(theirs.clone()), Arc::from(own)],
        })
    } else {
        signed_by(me, &votes)
            .ok_or("no yes vote of this branch, signed, kept by its coordinator")?;
        Ok(RecoverItem {
            spec: r.spec,
            deadline_ms: r.deadline_ms,
            coordinator: r.coordinator,
            decision: Decision::Commit,
            reason: None,
            ended: true,
            evidence: vec![Arc::from(decision.clone())],
        })
    }
}

/// This branch's yes vote on `id`, signed now (as its engine signs its own votes).
fn own_vote(net: &Net, id: TransferId) -> Result<Vec<u8>, wire::CodecError> {
    let message = BranchMessage {
        to: net.me,
        expires_at_ms: crate::node::now_ms().saturating_add(crate::node::engine::MESSAGE_TTL_MS),
        body: BranchBody::Votes(vec![VoteItem {
            id,
            vote: Vote::Yes,
        }]),
    };
    wire::encode(&Signed::sign(&net.key, net.me, &message)?)
}

impl Report {
    /// What only the lost disk knew: the network's last head less the restored one.
    pub fn lost(&self) -> Option<Lost> {
        let (_, n) = self.network_head?;
        let r = &self.restored_head;
        let less = |a: Tally, b: Tally| Tally {
            count: a.count.saturating_sub(b.count),
            total_minor: a.total_minor.saturating_sub(b.total_minor).max(0),
        };
        Some(Lost {
            deposits: less(n.deposits, r.deposits),
            withdrawals: less(n.withdrawals, r.withdrawals),
            local_transfers: less(n.local_transfers, r.local_transfers),
            cross_debits: less(n.cross_debits, r.cross_debits),
            cross_credits: less(n.cross_credits, r.cross_credits),
            accounts_opened: n.accounts_max_serial.saturating_sub(r.accounts_max_serial),
            known_until_ms: n.at_ms,
        })
    }

    /// The report for the operator, as printed and kept in [`REPORT_FILE`].
    pub fn text(&self) -> String {
        let money =
            |m: i64| wire::Amount::from_minor(m).map_or_else(|_| m.to_string(), |a| a.to_string());
        let mut out = format!("restore: this branch's epoch is now {}\n", self.epoch);
        let total: i64 = self.committed.iter().map(|c| c.2).sum();
        out.push_str(&format!(
            "put back from the other branches: {} committed cross-branch transfers ({}), {} aborted\n",
            self.committed.len(),
            money(total),
            self.aborted
        ));
        for (id, b, a) in &self.committed {
            out.push_str(&format!(
                "  committed {id} with branch {b}: {}\n",
                money(*a)
            ));
        }
        for (id, b, a) in &self.in_doubt_aborted {
            out.push_str(&format!(
                "  ABORTED {id} with branch {b}: {} (branch {b} had voted yes; only the lost disk \
                 knew its decision, so it is aborted; if a teller was told it committed, settle it by hand)\n",
                money(*a)
            ));
        }
        for line in &self.not_put_back {
            out.push_str(&format!("  NOT PUT BACK {line}\n"));
        }
        for n in &self.placeholders {
            out.push_str(&format!(
                "  account {n} was opened after the backup: put back for the transfers the \
                 network holds, its owner unknown (no customer details, no login); an admin \
                 must attach it\n"
            ));
        }
        for (n, deposit, transfer, a) in &self.inferred_deposits {
            out.push_str(&format!(
                "  deposit {deposit} of {} into {n} put back: transfer {transfer} took more than \
                 the restored balance, so money came in after the backup that only the lost \
                 disk recorded\n",
                money(*a)
            ));
        }
        out.push_str(&self.lost_text());
        out
    }

    fn lost_text(&self) -> String {
        let money =
            |m: i64| wire::Amount::from_minor(m).map_or_else(|_| m.to_string(), |a| a.to_string());
        let Some(l) = self.lost() else {
            return "what only the lost disk knew: no other branch holds a later state of this \
                    branch than the backup (nothing is known to be lost)\n"
                .into();
        };
        let by = self.network_head.map_or(BranchId(0), |(b, _)| b);
        let line =
            |what: &str, t: Tally| format!("  {what}: {} ({})\n", t.count, money(t.total_minor));
        let mut out = format!(
            "what only the lost disk knew (the books as branch {by} last heard of them, at {} UTC, \
             against the books restored; ids were never sent to other branches, and anything after \
             that moment is not known):\n",
            utc(l.known_until_ms)
        );
        out.push_str(&line("deposits lost", l.deposits));
        out.push_str(&line("withdrawals lost", l.withdrawals));
        out.push_str(&line("local transfers lost", l.local_transfers));
        out.push_str(&line("cross-branch debits not put back", l.cross_debits));
        out.push_str(&line("cross-branch credits not put back", l.cross_credits));
        out.push_str(&format!(
            "  accounts opened after the backup: {} (their numbers are never given again)\n",
            l.accounts_opened
        ));
        out
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS`.
fn utc(ms: u64) -> String {
    let secs = ms / 1_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 as (year, month, day) (Howard Hinnant's civil_from_days).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Lost after the backup, by kind (see [`Report::lost`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost {
    pub deposits: Tally,
    pub withdrawals: Tally,
    pub local_transfers: Tally,
    pub cross_debits: Tally,
    pub cross_credits: Tally,
    pub accounts_opened: u32,
    pub known_until_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_for_people() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_764_806_400_000 + 3_723_000), "2025-12-04 01:02:03");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn what_is_lost_is_the_network_head_less_the_restored_one() {
        let t = |count, total_minor| Tally { count, total_minor };
        let network = Head {
            deposits: t(5, 500),
            local_transfers: t(3, 90),
            cross_debits: t(2, 20),
            accounts_max_serial: 12,
            at_ms: 7,
            ..Head::default()
        };
        let restored = Head {
            deposits: t(2, 200),
            local_transfers: t(1, 10),
            cross_debits: t(2, 20),
            accounts_max_serial: 10,
            ..Head::default()
        };
        let report = Report {
            network_head: Some((BranchId(2), network)),
            restored_head: restored,
            ..Report::default()
        };
        let lost = report.lost().expect("a head");
        assert_eq!((lost.deposits, lost.local_transfers), (t(3, 300), t(2, 80)));
        assert_eq!((lost.cross_debits, lost.accounts_opened), (t(0, 0), 2));
        let text = report.text();
        assert!(text.contains("deposits lost: 3 (3.00)"), "{text}");
        assert!(text.contains("local transfers lost: 2 (0.80)"), "{text}");
    }
}
