//! The invariant checker: the Jepsen bank rules, adapted to shards, run over every
//! branch's SQLite file. Conservation, no negative balance, agreement of both legs,
//! nothing in doubt, durability of every "committed" answer, verified ledger chains,
//! and signed proof (votes and decision) behind every cross-branch commit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use branch_node::store::audit::Audit;
use branch_node::store::{Durability, Store};
use client::network_file::NetworkFile;

use crate::cluster::Cluster;
use branch_node::store::evidence::{commits, signed_message, votes_yes};
use wire::twopc::BranchMessage;
use wire::{BranchId, TransferId};

/// The checker's findings.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub violations: Vec<String>,
    /// Per branch: (balance total, held total) in minor units.
    pub totals: BTreeMap<BranchId, (i64, i64)>,
    pub network_total: i64,
    /// Deposits minus withdrawals, over every ledger.
    pub expected_total: i64,
    pub in_doubt: usize,
    pub committed_checked: usize,
    pub proofs_checked: usize,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Reads every branch's store.
pub fn audit_all(databases: &[(BranchId, PathBuf)]) -> anyhow::Result<Vec<Audit>> {
    let mut out = Vec::new();
    for (id, path) in databases {
        let dir = path.parent().unwrap_or(std::path::Path::new("."));
        let keys = branch_node::keys::unlock(dir, Some(*id), None)?;
        let store = Store::open_existing(path, &keys, *id, Durability::Full)?;
        out.push(store.audit()?);
    }
    Ok(out)
}

/// Waits, at most `bound`, until no branch has a transfer in doubt or unfinished.
/// Returns how long it took, or `None` if the bound passed.
pub fn wait_settled(
    databases: &[(BranchId, PathBuf)],
    bound: Duration,
) -> anyhow::Result<Option<Duration>> {
    let start = std::time::Instant::now();
    loop {
        let audits = audit_all(databases)?;
        let busy = audits.iter().any(|a| {
            !a.in_doubt.is_empty()
                || a.unfinished > 0
                || a.held_total > 0
                || a.pending_credit_total > 0
        });
        if !busy {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() > bound {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Transfer debit and credit legs applied on any branch, summed by transfer id.
type Legs = BTreeMap<TransferId, i64>;

fn legs(audits: &[Audit]) -> (Legs, Legs) {
    let (mut debits, mut credits) = (Legs::new(), Legs::new());
    for a in audits {
        for (id, amt) in &a.debits {
            *debits.entry(*id).or_insert(0) += amt;
        }
        for (id, amt) in &a.credits {
            *credits.entry(*id).or_insert(0) += amt;
        }
    }
    (debits, credits)
}

/// The end of every run: waits (at most `bound`) for nothing in flight, stops the
/// network with SIGTERM, and checks every invariant; not settling is a violation.
pub fn finish(
    cluster: &mut Cluster,
    committed: &BTreeSet<TransferId>,
    bound: Duration,
) -> anyhow::Result<Report> {
    finish_audited(cluster, committed, bound).map(|(report, _)| report)
}

/// [`finish`], also giving the final audits (for the answer checker).
pub fn finish_audited(
    cluster: &mut Cluster,
    committed: &BTreeSet<TransferId>,
    bound: Duration,
) -> anyhow::Result<(Report, Vec<Audit>)> {
    let dbs = cluster.databases();
    let settled = wait_settled(&dbs, bound)?;
    cluster.stop();
    let network = NetworkFile::load(&cluster.network_file)?;
    let audits = audit_all(&dbs)?;
    let mut report = check(&network, &audits, committed);
    if settled.is_none() {
        report.violations.push(format!(
            "agreement: transfers still unfinished {} ms after the heal",
            bound.as_millis()
        ));
    }
    Ok((report, audits))
}

/// Checks every invariant once nothing is in flight. `committed` are the ids tellers
/// were told committed (transfers, deposits and withdrawals alike).
pub fn check(network: &NetworkFile, audits: &[Audit], committed: &BTreeSet<TransferId>) -> Report {
    let mut r = Report::default();
    let (debits, credits) = legs(audits);
    let mut movements = BTreeSet::new();
    for a in audits {
        r.totals.insert(a.branch, (a.balance_total, a.held_total));
        r.network_total += a.balance_total;
        r.expected_total += a.deposits - a.withdrawals;
        r.in_doubt += a.in_doubt.len();
        if a.bad_accounts > 0 {
            r.violations.push(format!(
                "branch {}: {} accounts negative or over-held",
                a.branch, a.bad_accounts
            ));
        }
        if a.held_total != 0 || a.pending_credit_total != 0 {
            r.violations.push(format!(
                "branch {}: {} held and {} pending credit with nothing in flight",
                a.branch, a.held_total, a.pending_credit_total
            ));
        }
        if !a.in_doubt.is_empty() || a.unfinished > 0 {
            r.violations.push(format!(
                "branch {}: {} legs in doubt, {} coordinated transfers unfinished",
                a.branch,
                a.in_doubt.len(),
                a.unfinished
            ));
        }
        if let Err(v) = &a.ledger {
            r.violations.push(format!(
                "branch {}: ledger does not verify: {v:?}",
                a.branch
            ));
        }
        movements.extend(a.evidence.keys().copied());
    }
    if r.network_total != r.expected_total {
        r.violations.push(format!(
            "conservation: network holds {} but deposits minus withdrawals is {}",
            r.network_total, r.expected_total
        ));
    }
    for (id, amt) in &debits {
        if credits.get(id) != Some(amt) {
            r.violations.push(format!(
                "agreement: transfer {id} debited {amt} but credited {:?}",
                credits.get(id)
            ));
        }
    }
    for (id, amt) in &credits {
        if !debits.contains_key(id) {
            r.violations.push(format!(
                "agreement: transfer {id} credited {amt} with no debit"
            ));
        }
    }
    check_durability(audits, committed, &debits, &mut r);
    check_proofs(network, audits, &mut r);
    r
}

fn check_durability(
    audits: &[Audit],
    committed: &BTreeSet<TransferId>,
    debits: &BTreeMap<TransferId, i64>,
    r: &mut Report,
) {
    // A committed deposit or withdrawal has no debit leg: look for it in the evidence-free
    // movement sums instead, by asking whether any ledger knows the id.
    let known: BTreeSet<TransferId> = audits
        .iter()
        .flat_map(|a| a.movement_ids.iter().copied())
        .chain(debits.keys().copied())
        .collect();
    for id in committed {
        r.committed_checked += 1;
        if !known.contains(id) {
            r.violations.push(format!(
                "durability: {id} was answered committed but no ledger has it"
            ));
        }
    }
}

/// Envelopes decoded and verified once each: one batch envelope is the proof of up to
/// a thousand transfers.
struct Verified<'a> {
    network: &'a NetworkFile,
    seen: std::collections::HashMap<*const u8, Option<(BranchId, BranchMessage)>>,
}

impl Verified<'_> {
    fn get(&mut self, bytes: &Arc<[u8]>) -> Option<&(BranchId, BranchMessage)> {
        let network = self.network;
        self.seen
            .entry(bytes.as_ptr())
            .or_insert_with(|| signed_message(network, bytes))
            .as_ref()
    }
}

fn check_proofs(network: &NetworkFile, audits: &[Audit], r: &mut Report) {
    let by_branch: BTreeMap<BranchId, &Audit> = audits.iter().map(|a| (a.branch, a)).collect();
    let mut verified = Verified {
        network,
        seen: std::collections::HashMap::new(),
    };
    for coordinator in audits {
        for spec in &coordinator.committed {
            let parts = spec.participants();
            if parts.len() < 2 {
                continue;
            }
            r.proofs_checked += 1;
            let id = spec.id;
            let mut yes_signers = BTreeSet::new();
            for (what, bytes) in coordinator.evidence.get(&id).into_iter().flatten() {
                if what != "vote" {
                    continue;
                }
                if let Some((signer, m)) = verified.get(bytes)
                    && votes_yes(&m.body, id)
                {
                    yes_signers.insert(*signer);
                }
            }
            for p in &parts {
                if !yes_signers.contains(p) {
                    r.violations.push(format!(
                        "proof: commit {id} has no signed yes vote from branch {p}"
                    ));
                }
                // The coordinator's own leg settles in the same transaction as its
                // decision record, which is the proof: no message, no signature.
                if *p == coordinator.branch {
                    continue;
                }
                let Some(pa) = by_branch.get(p) else { continue };
                let decided = pa
                    .evidence
                    .get(&id)
                    .into_iter()
                    .flatten()
                    .any(|(what, bytes)| {
                        what == "decision"
                            && verified.get(bytes).is_some_and(|(signer, m)| {
                                *signer == coordinator.branch && commits(&m.body, id)
                            })
                    });
                if !decided {
                    r.violations.push(format!(
                        "proof: branch {p} applied commit {id} without a stored signed decision from {}",
                        coordinator.branch
                    ));
                }
            }
        }
    }
}

/// Checks a consistent cut taken during the run (every node stopped): no negative or
/// over-held balance, and exact conservation once money in flight is counted: a
/// transfer whose debit is applied but not yet its credit still owns its amount, and
/// one credited before its debit applied owes it.
pub fn check_cut(audits: &[Audit]) -> Vec<String> {
    let mut v = Vec::new();
    let (mut balances, mut expected) = (0i64, 0i64);
    let (debits, credits) = legs(audits);
    for a in audits {
        balances += a.balance_total;
        expected += a.deposits - a.withdrawals;
        if a.bad_accounts > 0 {
            v.push(format!(
                "during the run: branch {} had {} accounts negative or over-held",
                a.branch, a.bad_accounts
            ));
        }
    }
    let in_flight: i64 = debits
        .iter()
        .filter(|(id, _)| !credits.contains_key(*id))
        .map(|(_, a)| *a)
        .sum::<i64>()
        - credits
            .iter()
            .filter(|(id, _)| !debits.contains_key(*id))
            .map(|(_, a)| *a)
            .sum::<i64>();
    if balances + in_flight != expected {
        v.push(format!(
            "during the run: balances {balances} + in flight {in_flight} != deposits minus withdrawals {expected}"
        ));
    }
    v
}

/// For every replicated branch: waits (at most `bound`) until its replicas applied the
/// same last log entry and hold the same branch row for row. Replicas compared while
/// entries still arrive can differ for a moment; a difference counts only when the
/// replicas stood at one entry before and after their stores were read. Returns the
/// violations (none when every branch's replicas agree).
pub fn replicas_agree(cluster: &Cluster, bound: Duration) -> anyhow::Result<Vec<String>> {
    let mut violations = Vec::new();
    for (branch, paths) in cluster.replica_databases() {
        let paths: Vec<&std::path::Path> = paths.iter().map(PathBuf::as_path).collect();
        if let Some(v) = replicas_of_branch_agree(&paths, bound)? {
            violations.push(format!("replicas: branch {branch}: {v}"));
        }
    }
    Ok(violations)
}

/// One branch's replicas for [`replicas_agree`]: `None` when they agree.
fn replicas_of_branch_agree(
    paths: &[&std::path::Path],
    bound: Duration,
) -> anyhow::Result<Option<String>> {
    use branch_node::replica::check;
    let start = std::time::Instant::now();
    let place = || -> anyhow::Result<Option<Option<Vec<u8>>>> {
        let places = paths
            .iter()
            .map(|p| check::applied(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(places
            .windows(2)
            .all(|w| w[0] == w[1])
            .then(|| places.into_iter().next().flatten()))
    };
    loop {
        if let Some(before) = place()? {
            let differences = check::differences(paths)?;
            if differences.is_empty() {
                return Ok(None);
            }
            if place()? == Some(before) {
                return Ok(Some(differences.join("; ")));
            }
        }
        if start.elapsed() > bound {
            return Ok(Some(format!(
                "the replicas did not reach the same log entry within {} ms",
                bound.as_millis()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
