//! The `Shard` conformance suite: every store (the in-memory one, the SQLite one) must
//! pass [`run_all`]. Compiled for this crate's tests and, with the `testing` feature,
//! for other crates' tests.
//!
//! Each case gets a fresh store from the caller's factory, sets up accounts through
//! [`Fixture`], and asserts outcomes and balances; every refusal also asserts that no
//! balance or hold changed.

use wire::teller::TransferState;
use wire::twopc::{DecisionItem, PrepareItem, TransferSpec, Vote};
use wire::{AccountNumber, Amount, BranchId, Decision, Refusal, TransferId};

use crate::shard::{
    ApplyOutcome, ApplyRefusal, BeginItem, BeginOutcome, DecisionRecord, InDoubtRecord, Shard,
    ShardError,
};

/// What the suite needs beyond `Shard`: set up accounts and read them back.
pub trait Fixture: Shard {
    /// Opens an account of this branch holding `minor` units.
    fn open_account(&mut self, number: AccountNumber, minor: i64);
    /// Closes an account (the suite only closes empty ones).
    fn close_account(&mut self, number: AccountNumber);
    /// (balance, held) of an account, in minor units.
    fn balance_and_held(&self, number: AccountNumber) -> (i64, i64);
}

/// The branch every suite store belongs to.
pub const HERE: BranchId = BranchId(1);
/// Another branch: the coordinator in participant cases.
pub const THERE: BranchId = BranchId(2);

fn acct(branch: BranchId, serial: u32) -> AccountNumber {
    AccountNumber::new(branch, serial).expect("valid account number")
}

fn spec(id: u128, from: AccountNumber, to: AccountNumber, minor: i64) -> TransferSpec {
    let amount = Amount::from_minor(minor).expect("non-negative");
    TransferSpec {
        id: TransferId(id),
        from,
        to,
        amount,
    }
}

fn prep(s: TransferSpec) -> PrepareItem {
    PrepareItem {
        transfer: s,
        deadline_ms: DEADLINE,
    }
}

const NOW: u64 = 50;
const DEADLINE: u64 = 100;

/// Accounts every case starts with: `a` (10000), `b` (500), `closed` (0, closed) at
/// this branch, and `there` at another branch.
struct Accounts {
    a: AccountNumber,
    b: AccountNumber,
    closed: AccountNumber,
    there: AccountNumber,
}

fn setup<S: Fixture>(s: &mut S) -> Accounts {
    let x = Accounts {
        a: acct(HERE, 1),
        b: acct(HERE, 2),
        closed: acct(HERE, 3),
        there: acct(THERE, 1),
    };
    s.open_account(x.a, 10_000);
    s.open_account(x.b, 500);
    s.open_account(x.closed, 0);
    s.close_account(x.closed);
    x
}

fn balances<S: Fixture>(s: &S, x: &Accounts) -> Vec<(i64, i64)> {
    [x.a, x.b, x.closed]
        .iter()
        .map(|n| s.balance_and_held(*n))
        .collect()
}

fn prepare_one<S: Fixture>(s: &mut S, item: PrepareItem, now: u64) -> Vote {
    let votes = s.prepare(THERE, &[item], now, &None).expect("store works");
    assert_eq!(votes.len(), 1);
    votes[0]
}

fn apply_one<S: Fixture>(
    s: &mut S,
    coordinator: BranchId,
    id: u128,
    decision: Decision,
) -> ApplyOutcome {
    let outcomes = s
        .apply(
            coordinator,
            &[DecisionItem {
                id: TransferId(id),
                decision,
            }],
            &None,
        )
        .expect("store works");
    assert_eq!(outcomes.len(), 1);
    outcomes[0]
}

/// Runs every case against fresh, empty stores of branch [`HERE`] from `new_store`.
pub fn run_all<S: Fixture>(new_store: impl Fn() -> S) {
    prepare_holds_debits_and_records_pending_credits(&mut new_store());
    prepare_refusals_change_nothing(&mut new_store());
    prepare_repeats_get_the_recorded_vote(&mut new_store());
    batch_items_are_independent(&mut new_store());
    apply_commit_moves_money_once(&mut new_store());
    apply_abort_releases(&mut new_store());
    apply_refusals_change_nothing(&mut new_store());
    local_transfers(&mut new_store());
    coordinator_records(&mut new_store());
}

fn prepare_holds_debits_and_records_pending_credits<S: Fixture>(s: &mut S) {
    let x = setup(s);
    assert_eq!(
        prepare_one(s, prep(spec(1, x.a, x.there, 3_000)), NOW),
        Vote::Yes
    );
    assert_eq!(
        s.balance_and_held(x.a),
        (10_000, 3_000),
        "debit held, balance unchanged"
    );
    assert_eq!(
        prepare_one(s, prep(spec(2, x.there, x.b, 700)), NOW),
        Vote::Yes
    );
    assert_eq!(
        s.balance_and_held(x.b),
        (500, 0),
        "pending credit is not yet money"
    );
    let mut doubt = s.in_doubt().expect("store works");
    doubt.sort_by_key(|d| d.id);
    let want = |id| InDoubtRecord {
        id: TransferId(id),
        coordinator: THERE,
        deadline_ms: DEADLINE,
    };
    assert_eq!(doubt, vec![want(1), want(2)]);
    assert_eq!(s.transfer_state(TransferId(1)), Ok(TransferState::Pending));
}

fn prepare_refusals_change_nothing<S: Fixture>(s: &mut S) {
    let x = setup(s);
    assert_eq!(
        prepare_one(s, prep(spec(1, x.a, x.there, 3_000)), NOW),
        Vote::Yes
    );
    let before = balances(s, &x);
    let unknown = acct(HERE, 99);
    let cases: Vec<(PrepareItem, u64, Refusal)> = vec![
        (
            prep(spec(10, x.a, x.there, 10_001)),
            NOW,
            Refusal::InsufficientFunds,
        ),
        (
            prep(spec(11, x.a, x.there, 7_001)),
            NOW,
            Refusal::InsufficientFunds,
        ), // 3000 held
        (
            prep(spec(12, unknown, x.there, 1)),
            NOW,
            Refusal::AccountNotFound,
        ),
        (
            prep(spec(13, x.there, unknown, 1)),
            NOW,
            Refusal::AccountNotFound,
        ),
        (
            prep(spec(14, x.closed, x.there, 1)),
            NOW,
            Refusal::AccountClosed,
        ),
        (
            prep(spec(15, x.there, x.closed, 1)),
            NOW,
            Refusal::AccountClosed,
        ),
        (prep(spec(16, x.a, x.a, 1)), NOW, Refusal::SameAccount),
        (prep(spec(17, x.a, x.there, 0)), NOW, Refusal::InvalidAmount),
        (
            prep(spec(18, x.there, acct(THERE, 2), 1)),
            NOW,
            Refusal::AccountNotFound,
        ),
        (
            prep(spec(19, x.a, x.there, 1)),
            DEADLINE + 1,
            Refusal::Expired,
        ),
        (
            PrepareItem {
                deadline_ms: NOW + wire::limits::PREPARE_DEADLINE_MAX_MS + 1,
                ..prep(spec(20, x.a, x.there, 1))
            },
            NOW,
            Refusal::DeadlineTooFar,
        ),
    ];
    for (item, now, refusal) in cases {
        assert_eq!(prepare_one(s, item, now), Vote::No(refusal), "{item:?}");
        assert_eq!(balances(s, &x), before, "refused {item:?} changed balances");
    }
    assert_eq!(
        s.in_doubt().expect("store works").len(),
        1,
        "a no vote is never in doubt"
    );
}

fn prepare_repeats_get_the_recorded_vote<S: Fixture>(s: &mut S) {
    let x = setup(s);
    let item = prep(spec(1, x.a, x.there, 3_000));
    assert_eq!(prepare_one(s, item, NOW), Vote::Yes);
    assert_eq!(prepare_one(s, item, NOW), Vote::Yes);
    assert_eq!(
        prepare_one(s, item, DEADLINE + 5),
        Vote::Yes,
        "a recorded yes stays yes past the deadline"
    );
    assert_eq!(
        s.balance_and_held(x.a),
        (10_000, 3_000),
        "a repeat holds nothing more"
    );
    let other = prep(spec(1, x.a, x.there, 3_001));
    assert_eq!(prepare_one(s, other, NOW), Vote::No(Refusal::IdConflict));
    let no = prep(spec(2, x.a, x.there, 20_000));
    assert_eq!(
        prepare_one(s, no, NOW),
        Vote::No(Refusal::InsufficientFunds)
    );
    s.open_account(acct(HERE, 4), 0);
    assert_eq!(
        prepare_one(s, no, NOW),
        Vote::No(Refusal::InsufficientFunds),
        "a recorded no stays no"
    );
    assert_eq!(s.balance_and_held(x.a), (10_000, 3_000));
}

fn batch_items_are_independent<S: Fixture>(s: &mut S) {
    let x = setup(s);
    let items = [
        prep(spec(1, x.a, x.there, 4_000)),
        prep(spec(2, x.a, x.there, 7_000)), // only 6000 left after the first
        prep(spec(3, x.a, x.there, 6_000)),
    ];
    let votes = s.prepare(THERE, &items, NOW, &None).expect("store works");
    assert_eq!(
        votes,
        vec![Vote::Yes, Vote::No(Refusal::InsufficientFunds), Vote::Yes]
    );
    assert_eq!(s.balance_and_held(x.a), (10_000, 10_000));
}

fn apply_commit_moves_money_once<S: Fixture>(s: &mut S) {
    let x = setup(s);
    prepare_one(s, prep(spec(1, x.a, x.there, 3_000)), NOW);
    prepare_one(s, prep(spec(2, x.there, x.b, 700)), NOW);
    assert_eq!(
        apply_one(s, THERE, 1, Decision::Commit),
        ApplyOutcome::Applied
    );
    assert_eq!(
        apply_one(s, THERE, 2, Decision::Commit),
        ApplyOutcome::Applied
    );
    assert_eq!(s.balance_and_held(x.a), (7_000, 0));
    assert_eq!(s.balance_and_held(x.b), (1_200, 0));
    assert_eq!(
        apply_one(s, THERE, 1, Decision::Commit),
        ApplyOutcome::AlreadyApplied
    );
    assert_eq!(
        apply_one(s, THERE, 2, Decision::Commit),
        ApplyOutcome::AlreadyApplied
    );
    assert_eq!(
        (s.balance_and_held(x.a), s.balance_and_held(x.b)),
        ((7_000, 0), (1_200, 0))
    );
    assert!(s.in_doubt().expect("store works").is_empty());
    assert_eq!(
        s.transfer_state(TransferId(1)),
        Ok(TransferState::Committed)
    );
    // Both legs at this branch (a remote coordinator): one atomic step.
    prepare_one(s, prep(spec(3, x.a, x.b, 1_000)), NOW);
    assert_eq!(
        apply_one(s, THERE, 3, Decision::Commit),
        ApplyOutcome::Applied
    );
    assert_eq!(
        (s.balance_and_held(x.a), s.balance_and_held(x.b)),
        ((6_000, 0), (2_200, 0))
    );
}

fn apply_abort_releases<S: Fixture>(s: &mut S) {
    let x = setup(s);
    prepare_one(s, prep(spec(1, x.a, x.there, 3_000)), NOW);
    prepare_one(s, prep(spec(2, x.there, x.b, 700)), NOW);
    assert_eq!(
        apply_one(s, THERE, 1, Decision::Abort),
        ApplyOutcome::Applied
    );
    assert_eq!(
        apply_one(s, THERE, 2, Decision::Abort),
        ApplyOutcome::Applied
    );
    assert_eq!(
        (s.balance_and_held(x.a), s.balance_and_held(x.b)),
        ((10_000, 0), (500, 0))
    );
    assert_eq!(
        apply_one(s, THERE, 1, Decision::Abort),
        ApplyOutcome::AlreadyApplied
    );
    // An abort that overtook its prepare: recorded, and the late prepare is refused.
    assert_eq!(
        apply_one(s, THERE, 9, Decision::Abort),
        ApplyOutcome::Applied
    );
    assert_eq!(
        prepare_one(s, prep(spec(9, x.a, x.there, 1)), NOW),
        Vote::No(Refusal::Expired)
    );
    assert_eq!(s.balance_and_held(x.a), (10_000, 0));
}

fn apply_refusals_change_nothing<S: Fixture>(s: &mut S) {
    let x = setup(s);
    prepare_one(s, prep(spec(1, x.a, x.there, 3_000)), NOW);
    prepare_one(s, prep(spec(2, x.a, x.there, 20_000)), NOW); // voted no
    let before = balances(s, &x);
    let cases = [
        (THERE, 5, Decision::Commit, ApplyRefusal::UnknownTransfer),
        (
            BranchId(3),
            1,
            Decision::Commit,
            ApplyRefusal::WrongCoordinator,
        ),
        (
            BranchId(3),
            1,
            Decision::Abort,
            ApplyRefusal::WrongCoordinator,
        ),
        (THERE, 2, Decision::Commit, ApplyRefusal::Contradiction),
    ];
    for (coordinator, id, decision, refusal) in cases {
        assert_eq!(
            apply_one(s, coordinator, id, decision),
            ApplyOutcome::Refused(refusal),
            "{id} {decision:?}"
        );
        assert_eq!(balances(s, &x), before);
    }
    assert_eq!(
        apply_one(s, THERE, 1, Decision::Abort),
        ApplyOutcome::Applied
    );
    assert_eq!(
        apply_one(s, THERE, 1, Decision::Commit),
        ApplyOutcome::Refused(ApplyRefusal::Contradiction)
    );
    assert_eq!(s.balance_and_held(x.a), (10_000, 0));
}

fn local_transfers<S: Fixture>(s: &mut S) {
    let x = setup(s);
    let t = |id, from, to, minor| spec(id, from, to, minor);
    let cases = [
        (t(1, x.a, x.b, 100), TransferState::Committed, (9_900, 600)),
        (t(1, x.a, x.b, 100), TransferState::Committed, (9_900, 600)), // repeat: no second move
        (
            t(1, x.a, x.b, 101),
            TransferState::Aborted(Refusal::IdConflict),
            (9_900, 600),
        ),
        (
            t(2, x.b, x.a, 601),
            TransferState::Aborted(Refusal::InsufficientFunds),
            (9_900, 600),
        ),
        (
            t(2, x.b, x.a, 1),
            TransferState::Aborted(Refusal::IdConflict),
            (9_900, 600),
        ),
        (
            t(3, x.a, x.closed, 1),
            TransferState::Aborted(Refusal::AccountClosed),
            (9_900, 600),
        ),
        (
            t(4, x.a, acct(HERE, 99), 1),
            TransferState::Aborted(Refusal::AccountNotFound),
            (9_900, 600),
        ),
        (
            t(5, x.a, x.a, 1),
            TransferState::Aborted(Refusal::SameAccount),
            (9_900, 600),
        ),
        (
            t(6, x.a, x.there, 1),
            TransferState::Aborted(Refusal::AccountNotFound),
            (9_900, 600),
        ),
        (t(7, x.b, x.a, 600), TransferState::Committed, (10_500, 0)),
    ];
    for (item, want, (a, b)) in cases {
        assert_eq!(
            s.transfer_local(&[item]).expect("store works"),
            vec![want],
            "{item:?}"
        );
        assert_eq!(
            (s.balance_and_held(x.a).0, s.balance_and_held(x.b).0),
            (a, b),
            "{item:?}"
        );
    }
    assert_eq!(
        s.transfer_state(TransferId(2)),
        Ok(TransferState::Aborted(Refusal::InsufficientFunds))
    );
    // A batch: each item its own outcome, in order, seeing the ones before it.
    let batch = [
        t(8, x.a, x.b, 10_500),
        t(9, x.a, x.b, 1),
        t(10, x.b, x.a, 10_500),
    ];
    let got = s.transfer_local(&batch).expect("store works");
    assert_eq!(
        got,
        vec![
            TransferState::Committed,
            TransferState::Aborted(Refusal::InsufficientFunds),
            TransferState::Committed
        ]
    );
    assert_eq!(s.transfer_state(TransferId(99)), Ok(TransferState::Unknown));
}

fn coordinator_records<S: Fixture>(s: &mut S) {
    let x = setup(s);
    let item = BeginItem {
        spec: spec(1, x.a, x.there, 5),
        deadline_ms: DEADLINE,
    };
    let other = BeginItem {
        spec: spec(1, x.a, x.there, 6),
        deadline_ms: DEADLINE,
    };
    let (balance, held) = s.balance_and_held(x.a);
    assert_eq!(
        s.begin(&[item], NOW).expect("store works"),
        vec![BeginOutcome::New(Some(Vote::Yes))]
    );
    assert_eq!(
        s.balance_and_held(x.a),
        (balance, held + 5),
        "the own leg is prepared in the same step"
    );
    assert_eq!(
        s.begin(&[item, other], NOW).expect("store works"),
        vec![
            BeginOutcome::Existing(TransferState::Pending),
            BeginOutcome::Conflict
        ]
    );
    let unfinished = s.unfinished_coordinated().expect("store works");
    assert_eq!(unfinished.len(), 1);
    assert_eq!(
        (unfinished[0].spec, unfinished[0].decision),
        (item.spec, None)
    );
    assert_eq!(
        s.read_decisions(&[TransferId(1), TransferId(2)])
            .expect("store works"),
        vec![None, None]
    );
    let commit = DecisionRecord {
        id: TransferId(1),
        decision: Decision::Commit,
        reason: None,
        votes: vec![None, None],
    };
    s.record_decisions(std::slice::from_ref(&commit))
        .expect("store works");
    assert_eq!(
        s.balance_and_held(x.a),
        (balance - 5, held),
        "the own leg settles with the decision record"
    );
    assert!(s.in_doubt().expect("store works").is_empty());
    s.record_decisions(std::slice::from_ref(&commit))
        .expect("same decision again is a no-op");
    assert_eq!(s.balance_and_held(x.a), (balance - 5, held));
    let abort = DecisionRecord {
        decision: Decision::Abort,
        reason: Some(Refusal::Interrupted),
        votes: vec![],
        ..commit
    };
    assert_eq!(
        s.record_decisions(&[abort]),
        Err(ShardError::DecisionConflict(TransferId(1)))
    );
    let stranger = DecisionRecord {
        id: TransferId(7),
        decision: Decision::Abort,
        reason: None,
        votes: vec![],
    };
    assert_eq!(
        s.record_decisions(&[stranger]),
        Err(ShardError::NotCoordinated(TransferId(7)))
    );
    assert_eq!(
        s.read_decisions(&[TransferId(1)]).expect("store works"),
        vec![Some(Decision::Commit)]
    );
    assert_eq!(
        s.unfinished_coordinated().expect("store works")[0].decision,
        Some(Decision::Commit)
    );
    assert_eq!(
        s.transfer_state(TransferId(1)),
        Ok(TransferState::Committed)
    );
    assert_eq!(
        s.begin(&[item], NOW).expect("store works"),
        vec![BeginOutcome::Existing(TransferState::Committed)]
    );
    s.mark_ended(&[TransferId(1)]).expect("store works");
    assert!(s.unfinished_coordinated().expect("store works").is_empty());
    assert_eq!(
        s.read_decisions(&[TransferId(1)]).expect("store works"),
        vec![Some(Decision::Commit)],
        "ended keeps its decision"
    );
    // A local transfer's id cannot be begun, and a begun id cannot be used locally.
    s.transfer_local(&[spec(2, x.a, x.b, 1)])
        .expect("store works");
    let local_reuse = BeginItem {
        spec: spec(2, x.a, x.there, 1),
        deadline_ms: DEADLINE,
    };
    assert_eq!(
        s.begin(&[local_reuse], NOW).expect("store works"),
        vec![BeginOutcome::Conflict]
    );
    assert_eq!(
        s.balance_and_held(x.a),
        (balance - 6, held),
        "a refused begin holds nothing"
    );
    // The own leg refused: begun all the same (so the id keeps its outcome), nothing held.
    let too_much = BeginItem {
        spec: spec(3, x.a, x.there, balance * 2),
        deadline_ms: DEADLINE,
    };
    assert_eq!(
        s.begin(&[too_much], NOW).expect("store works"),
        vec![BeginOutcome::New(Some(Vote::No(
            Refusal::InsufficientFunds
        )))]
    );
    assert_eq!(s.balance_and_held(x.a), (balance - 6, held));
    assert_eq!(
        s.begin(&[too_much], NOW).expect("store works"),
        vec![BeginOutcome::Existing(TransferState::Pending)]
    );
    assert_eq!(
        s.transfer_local(&[spec(1, x.a, x.b, 5)])
            .expect("store works"),
        vec![TransferState::Aborted(Refusal::IdConflict)]
    );
}

impl Fixture for crate::MemShard {
    fn open_account(&mut self, number: AccountNumber, minor: i64) {
        crate::MemShard::open_account(
            self,
            number,
            Amount::from_minor(minor).expect("non-negative"),
        );
    }
    fn close_account(&mut self, number: AccountNumber) {
        crate::MemShard::close_account(self, number);
    }
    fn balance_and_held(&self, number: AccountNumber) -> (i64, i64) {
        self.accounts()
            .find(|(n, _, _)| *n == number)
            .map_or((-1, -1), |(_, b, h)| (b.minor(), h.minor()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mem_shard_passes_the_conformance_suite() {
        super::run_all(|| crate::MemShard::new(super::HERE));
    }
}
