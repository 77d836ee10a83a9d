//! The answer checker: every answer a teller was ever given, held against the ledgers
//! once the network has healed. "Answers are the truth":
//!
//! - an id answered committed has its legs in the ledgers (both, for a transfer);
//! - an id answered refused (exit 3) has no leg anywhere, ever;
//! - no id has two different final answers (committed, or refused with its reason),
//!   whichever branch gave them, first send or resend;
//! - an id only ever answered "not done" (exit 4) never took effect;
//! - every id left without a final answer ("unknown", exit 5) is asked about with
//!   `transfer-status` after the heal, as its own customer through some branch, and the
//!   answer is final and true ("no record" at its branch, once nothing is in flight,
//!   means it never took effect); a sample of answered ids is asked too, and must get
//!   the same answer again;
//! - a branch restored from a backup during the run (the `restore` fault) may have lost
//!   what it alone did between the backup and losing its disk: a deposit, withdrawal or
//!   local transfer of that branch answered in that window, or a cross-branch transfer
//!   the restore's report names as aborted in doubt. Such an answer is counted as lost
//!   by the restore, not as a violation; every other answer is held as above.

use std::collections::{BTreeMap, BTreeSet};

use branch_node::store::audit::Audit;
use wire::TransferId;
use wire::teller::{TellerOp, TellerResponse, TransferState};

use crate::workload::{Answer, Kind, Person, Record, Senders, Tellers};

/// A branch restored from a backup during a run: when its backup was taken, when it was
/// killed and its disk lost, and what its restore reported.
#[derive(Debug, Clone)]
pub struct Restored {
    pub branch: wire::BranchId,
    pub backed_up: std::time::Instant,
    pub killed: std::time::Instant,
    pub report: branch_node::restore::Report,
}

impl Restored {
    /// Whether the restore may have lost what `r` was told: a deposit, withdrawal or
    /// local transfer of this branch carried out between the backup and the kill (only
    /// this branch saw it), a transfer out of it refused there then (refused before any
    /// other branch heard of it), or a cross-branch transfer the report names as aborted
    /// in doubt (only the lost disk knew its decision).
    pub fn may_have_lost(&self, r: &Record) -> bool {
        if r.owner.branch() != self.branch {
            return false;
        }
        let in_window = r.sent_at < self.killed && r.sent_at + r.latency > self.backed_up;
        match r.kind {
            Kind::Cross => {
                let named = self
                    .report
                    .in_doubt_aborted
                    .iter()
                    .any(|(id, _, _)| *id == r.id);
                named || (in_window && matches!(r.answer, Answer::Refused(_)))
            }
            _ => in_window,
        }
    }
}

/// One in this many ids with a final answer is asked about again after the heal.
const CROSS_CHECK_EVERY: usize = 8;

/// What `transfer-status` said of an id after the heal, or why it could not be asked.
pub type Statuses = BTreeMap<TransferId, Result<TransferState, String>>;

/// The checker's counts and findings.
#[derive(Debug, Default, Clone)]
pub struct AnswerReport {
    /// Answers given, resends included.
    pub answers: usize,
    pub ids: usize,
    pub resent: usize,
    pub committed: usize,
    pub refused: usize,
    pub not_done: usize,
    pub unknown: usize,
    /// Ids asked about with `transfer-status` after the heal.
    pub asked: usize,
    /// Ids with no final answer that the status showed committed, or not to have
    /// happened.
    pub resolved_committed: usize,
    pub resolved_not: usize,
    /// Ids answered committed whose effect a restore lost, as its report allows.
    pub lost_by_restore: usize,
    pub violations: Vec<String>,
}

fn first_of(records: &[Record]) -> BTreeMap<TransferId, Record> {
    let mut out = BTreeMap::new();
    for r in records {
        out.entry(r.id).or_insert(*r);
    }
    out
}

/// Asks, as each id's own sender through a branch picked from the id, where every id
/// without a final answer stands (and a sample of the others).
pub async fn resolve(records: &[Record], tellers: &Tellers, senders: Senders) -> Statuses {
    resolve_sampled(records, tellers, senders, CROSS_CHECK_EVERY).await
}

/// [`resolve`], asking again about one in `every` ids with a final answer (a bench's
/// hundreds of thousands of answers are sampled more thinly).
pub async fn resolve_sampled(
    records: &[Record],
    tellers: &Tellers,
    senders: Senders,
    every: usize,
) -> Statuses {
    let every = every.max(1);
    let finals: BTreeSet<TransferId> = records
        .iter()
        .filter(|r| r.answer.is_final())
        .map(|r| r.id)
        .collect();
    let mut out = Statuses::new();
    let branches = tellers.branches().max(1);
    for (i, (id, r)) in first_of(records).into_iter().enumerate() {
        if finals.contains(&id) && i % every != 0 {
            continue;
        }
        let who = match senders {
            Senders::Customers => Person::Customer(r.owner),
            Senders::Admins => Person::Admin(usize::from(r.owner.branch().0).saturating_sub(1)),
        };
        let entry = usize::try_from(id.0 % branches as u128).unwrap_or(0);
        let answer = match status(tellers, &who, entry, id).await {
            Ok(TellerResponse::Status { state, .. }) => Ok(state),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        };
        out.insert(id, answer);
    }
    out
}

/// Times a status query answered "too busy, nothing done" is asked again, a growing
/// wait apart (as any teller would), before the checker gives up on it.
const STATUS_BUSY_TRIES_MAX: u32 = 8;

/// The first wait before asking again, in milliseconds; it doubles each time.
const STATUS_BUSY_WAIT_MS: u64 = 50;

/// Where `id` stands, asked as `who` through branch `entry`.
async fn status(
    tellers: &Tellers,
    who: &Person,
    entry: usize,
    id: TransferId,
) -> Result<TellerResponse, teller_cli::TellerError> {
    let mut tries = 0;
    loop {
        let answer = tellers
            .call(who, 0, entry, TellerOp::TransferStatus { id })
            .await;
        let busy = matches!(
            answer,
            Err(teller_cli::TellerError::Unavailable(
                wire::teller::Unavailable::Overloaded
            ))
        );
        tries += 1;
        if !busy || tries >= STATUS_BUSY_TRIES_MAX {
            return answer;
        }
        let wait = STATUS_BUSY_WAIT_MS << tries;
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    }
}

/// Where an id's money shows in the ledgers.
struct Legs {
    debits: BTreeSet<TransferId>,
    credits: BTreeSet<TransferId>,
    movements: BTreeSet<TransferId>,
}

impl Legs {
    fn of(audits: &[Audit]) -> Legs {
        let mut l = Legs {
            debits: BTreeSet::new(),
            credits: BTreeSet::new(),
            movements: BTreeSet::new(),
        };
        for a in audits {
            l.debits.extend(a.debits.keys());
            l.credits.extend(a.credits.keys());
            l.movements.extend(a.movement_ids.iter());
        }
        l
    }

    /// (fully applied, any leg at all).
    fn applied(&self, kind: Kind, id: TransferId) -> (bool, bool) {
        if kind.is_transfer() {
            let (d, c) = (self.debits.contains(&id), self.credits.contains(&id));
            (d && c, d || c)
        } else {
            let m = self.movements.contains(&id);
            (m, m)
        }
    }
}

fn said(a: &Answer) -> String {
    match a {
        Answer::Committed => "committed".into(),
        Answer::Refused(r) => format!("refused ({})", r.code()),
        Answer::NotDone => "not done".into(),
        Answer::Unknown => "unknown".into(),
    }
}

/// The final answer a status gives, or `None` for "not known yet".
fn status_answer(s: &TransferState) -> Option<Answer> {
    match s {
        TransferState::Committed => Some(Answer::Committed),
        TransferState::Aborted(r) => Some(Answer::Refused(*r)),
        TransferState::Pending | TransferState::Unknown => None,
    }
}

/// Checks every answer against the ledgers (`audits`, taken after the heal) and the
/// statuses asked after the heal, allowing what `restores` may have lost.
pub fn check(
    records: &[Record],
    statuses: &Statuses,
    audits: &[Audit],
    restores: &[Restored],
) -> AnswerReport {
    let mut rep = AnswerReport {
        answers: records.len(),
        resent: records.iter().filter(|r| r.resend).count(),
        asked: statuses.len(),
        ..AnswerReport::default()
    };
    for r in records {
        match r.answer {
            Answer::Committed => rep.committed += 1,
            Answer::Refused(_) => rep.refused += 1,
            Answer::NotDone => rep.not_done += 1,
            Answer::Unknown => rep.unknown += 1,
        }
    }
    let mut by_id: BTreeMap<TransferId, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_id.entry(r.id).or_default().push(r);
    }
    rep.ids = by_id.len();
    let legs = Legs::of(audits);
    for (id, answers) in &by_id {
        let lost = answers
            .iter()
            .any(|r| restores.iter().any(|x| x.may_have_lost(r)));
        if lost {
            check_lost(*id, answers, &legs, &mut rep);
        } else {
            check_id(*id, answers, statuses.get(id), &legs, &mut rep);
        }
    }
    rep
}

/// An id a restore may have lost: its outcome may be gone with the disk (a resend after
/// the restore got a new one), so it is not held to its first answer; what it is held
/// to is that a committed transfer moved money on both legs or on neither.
fn check_lost(id: TransferId, answers: &[&Record], legs: &Legs, rep: &mut AnswerReport) {
    let kind = answers[0].kind;
    let (applied, any_leg) = legs.applied(kind, id);
    if kind.is_transfer() && any_leg && !applied {
        rep.violations.push(format!(
            "answers: {id} ({kind:?}): half applied after a restore"
        ));
    }
    if answers.iter().any(|r| r.answer == Answer::Committed) && !applied {
        rep.lost_by_restore += 1;
    }
}

fn check_id(
    id: TransferId,
    answers: &[&Record],
    status: Option<&Result<TransferState, String>>,
    legs: &Legs,
    rep: &mut AnswerReport,
) {
    let kind = answers[0].kind;
    let (applied, any_leg) = legs.applied(kind, id);
    let mut finals: Vec<Answer> = answers
        .iter()
        .map(|r| r.answer)
        .filter(Answer::is_final)
        .collect();
    finals.dedup();
    let told: Vec<String> = answers
        .iter()
        .map(|r| format!("{} at b{}", said(&r.answer), r.branch + 1))
        .collect();
    let mut v = |what: String| {
        rep.violations.push(format!(
            "answers: {id} ({kind:?}): {what}; told {}",
            told.join(", ")
        ))
    };
    if finals.len() > 1 {
        v("two different final answers".into());
    }
    let status = match status {
        None => None,
        Some(Ok(s)) => Some(*s),
        Some(Err(e)) => {
            v(format!(
                "transfer-status could not be asked after the heal: {e}"
            ));
            return;
        }
    };
    let truth = finals
        .first()
        .copied()
        .or(status.and_then(|s| status_answer(&s)));
    match truth {
        Some(Answer::Committed) if !applied => {
            v("committed, but its money is not in the ledgers".into())
        }
        Some(Answer::Refused(_)) if any_leg => v("refused, but it moved money".into()),
        None if any_leg => v(
            "never answered committed, and status says it did not happen, but it moved money"
                .into(),
        ),
        _ => {}
    }
    let Some(status) = status else {
        if finals.is_empty() {
            v("no final answer and never asked about".into());
        }
        return;
    };
    match (finals.first(), status_answer(&status)) {
        (Some(f), Some(s)) if *f != s => {
            v(format!("transfer-status says {} after the heal", said(&s)))
        }
        (Some(_), None) => v(format!(
            "transfer-status says {status:?} after the heal, though it was answered"
        )),
        (None, _) if status == TransferState::Pending => v("still pending after the heal".into()),
        (None, Some(Answer::Committed)) => rep.resolved_committed += 1,
        (None, _) => rep.resolved_not += 1,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use wire::{AccountNumber, BranchId, Refusal};

    fn rec(id: u128, kind: Kind, answer: Answer) -> Record {
        Record {
            kind,
            id: TransferId(id),
            owner: AccountNumber::new(BranchId(1), 1).expect("valid"),
            branch: 0,
            answer,
            latency: Duration::ZERO,
            resend: false,
            sent_at: std::time::Instant::now(),
        }
    }

    fn audit(debits: &[u128], credits: &[u128], movements: &[u128]) -> Vec<Audit> {
        let mut a = branch_node::store::audit::Audit::empty(BranchId(1));
        a.debits = debits.iter().map(|i| (TransferId(*i), 1)).collect();
        a.credits = credits.iter().map(|i| (TransferId(*i), 1)).collect();
        a.movement_ids = movements.iter().map(|i| TransferId(*i)).collect();
        vec![a]
    }

    /// One line per case: the answers, the status asked (if any), the ledgers, and
    /// whether the checker must find a violation.
    fn check_case(answers: &[Answer], status: Option<TransferState>, applied: bool, bad: bool) {
        let records: Vec<Record> = answers.iter().map(|a| rec(7, Kind::Cross, *a)).collect();
        let statuses: Statuses = status.map(|s| (TransferId(7), Ok(s))).into_iter().collect();
        let ids: &[u128] = if applied { &[7] } else { &[] };
        let rep = check(&records, &statuses, &audit(ids, ids, &[]), &[]);
        assert_eq!(
            !rep.violations.is_empty(),
            bad,
            "{answers:?} {status:?} applied={applied}: {:?}",
            rep.violations
        );
    }

    #[test]
    fn the_rules() {
        use Answer::*;
        let no = Refused(Refusal::InsufficientFunds);
        let other = Refused(Refusal::NoVote);
        let (c, a) = (
            TransferState::Committed,
            TransferState::Aborted(Refusal::InsufficientFunds),
        );
        check_case(&[Committed], None, true, false);
        check_case(&[Committed], None, false, true);
        check_case(&[no], None, false, false);
        check_case(&[no], None, true, true);
        check_case(&[Committed, Committed], Some(c), true, false);
        check_case(&[Committed, no], None, true, true);
        check_case(&[no, other], None, false, true);
        check_case(&[Unknown], Some(c), true, false);
        check_case(&[Unknown], Some(c), false, true);
        check_case(&[Unknown], Some(TransferState::Unknown), false, false);
        check_case(&[Unknown], Some(TransferState::Unknown), true, true);
        check_case(&[Unknown], Some(TransferState::Pending), false, true);
        check_case(&[Unknown], None, false, true);
        check_case(&[NotDone], Some(TransferState::Unknown), false, false);
        check_case(&[NotDone], Some(TransferState::Unknown), true, true);
        check_case(&[Unknown, no], Some(a), false, false);
        check_case(&[no], Some(c), false, true);
        check_case(&[Committed], Some(TransferState::Unknown), true, true);
    }

    #[test]
    fn a_restore_may_lose_what_only_its_branch_saw_in_its_window_and_nothing_else() {
        use std::time::Instant;
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut report = branch_node::restore::Report::default();
        report
            .in_doubt_aborted
            .push((TransferId(9), BranchId(2), 100));
        let restored = Restored {
            branch: BranchId(1),
            backed_up: at(1_000),
            killed: at(2_000),
            report,
        };
        let sent = |id: u128, kind: Kind, ms: u64| Record {
            sent_at: at(ms),
            latency: Duration::from_millis(10),
            ..rec(id, kind, Answer::Committed)
        };
        let lost = |r: Record| {
            check(
                &[r],
                &Statuses::new(),
                &audit(&[], &[], &[]),
                std::slice::from_ref(&restored),
            )
        };
        let in_window = lost(sent(1, Kind::Deposit, 1_500));
        assert!(
            in_window.violations.is_empty(),
            "{:?}",
            in_window.violations
        );
        assert_eq!(in_window.lost_by_restore, 1);
        for r in [sent(2, Kind::Deposit, 500), sent(3, Kind::Withdraw, 2_500)] {
            assert_eq!(lost(r).violations.len(), 1, "outside the window: {r:?}");
        }
        assert!(
            lost(sent(9, Kind::Cross, 1_500)).violations.is_empty(),
            "named"
        );
        assert_eq!(
            lost(sent(8, Kind::Cross, 1_500)).violations.len(),
            1,
            "not named"
        );
        // A transfer refused at the restored branch in the window: its record is lost.
        let refused = Record {
            answer: Answer::Refused(wire::Refusal::InsufficientFunds),
            ..sent(7, Kind::Cross, 1_500)
        };
        let statuses: Statuses = [(TransferId(7), Ok(TransferState::Unknown))].into();
        let rep = check(
            &[refused],
            &statuses,
            &audit(&[], &[], &[]),
            std::slice::from_ref(&restored),
        );
        assert!(rep.violations.is_empty(), "{:?}", rep.violations);
    }

    #[test]
    fn a_half_applied_transfer_is_not_committed() {
        let rep = check(
            &[rec(7, Kind::Cross, Answer::Committed)],
            &Statuses::new(),
            &audit(&[7], &[], &[]),
            &[],
        );
        assert_eq!(rep.violations.len(), 1, "{:?}", rep.violations);
        let rep = check(
            &[rec(8, Kind::Deposit, Answer::Committed)],
            &Statuses::new(),
            &audit(&[], &[], &[8]),
            &[],
        );
        assert!(rep.violations.is_empty(), "{:?}", rep.violations);
    }
}
