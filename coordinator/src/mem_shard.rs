//! `MemShard`: an in-memory `Shard` for tests, the simulation and the model check.
//!
//! Every call is atomic (it checks, then changes), so "durable at return" holds for a
//! process that keeps it; the simulation keeps it across a branch's crash, which is what
//! a SQLite file does. It also counts how often money moved per transfer id, so the
//! checkers can prove nothing is applied twice.

use std::collections::BTreeMap;

use wire::teller::TransferState;
use wire::twopc::{DecisionItem, PrepareItem, TransferSpec, Vote};
use wire::{AccountNumber, Amount, BranchId, Decision, Refusal, TransferId};

use crate::shard::{
    ApplyOutcome, ApplyRefusal, BeginItem, BeginOutcome, CoordinatedRecord, DecisionRecord,
    Evidence, InDoubtRecord, Shard, ShardError,
};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Account {
    balance: Amount,
    held: Amount,
    pending_credit: Amount,
    open: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PartRec {
    /// `None` when an abort arrived before any prepare.
    spec: Option<TransferSpec>,
    coordinator: BranchId,
    deadline_ms: u64,
    vote: Option<Vote>,
    decision: Option<Decision>,
    evidence: Vec<Evidence>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CoordRec {
    spec: TransferSpec,
    deadline_ms: u64,
    decision: Option<(Decision, Option<Refusal>)>,
    votes: Vec<Evidence>,
    ended: bool,
}

/// Where this branch's part of a cross-branch transfer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LegState {
    /// Voted yes; money held or credit pending; no decision applied.
    Prepared,
    Committed,
    Aborted,
}

/// An in-memory branch store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MemShard {
    me: BranchId,
    accounts: BTreeMap<AccountNumber, Account>,
    coord: BTreeMap<TransferId, CoordRec>,
    part: BTreeMap<TransferId, PartRec>,
    local: BTreeMap<TransferId, (TransferSpec, TransferState)>,
    moved: BTreeMap<TransferId, u32>,
}

impl MemShard {
    /// An empty store for branch `me`.
    pub fn new(me: BranchId) -> Self {
        MemShard {
            me,
            accounts: BTreeMap::new(),
            coord: BTreeMap::new(),
            part: BTreeMap::new(),
            local: BTreeMap::new(),
            moved: BTreeMap::new(),
        }
    }

    /// Opens `number` (which must belong to this branch) with an initial balance.
    pub fn open_account(&mut self, number: AccountNumber, balance: Amount) {
        assert_eq!(number.branch(), self.me, "account of another branch");
        let account = Account {
            balance,
            held: Amount::ZERO,
            pending_credit: Amount::ZERO,
            open: true,
        };
        self.accounts.insert(number, account);
    }

    /// Closes an account (tests of the closed-account refusal).
    pub fn close_account(&mut self, number: AccountNumber) {
        if let Some(a) = self.accounts.get_mut(&number) {
            a.open = false;
        }
    }

    /// Every account: number, balance, held.
    pub fn accounts(&self) -> impl Iterator<Item = (AccountNumber, Amount, Amount)> + '_ {
        self.accounts.iter().map(|(n, a)| (*n, a.balance, a.held))
    }

    /// The balance of one account.
    pub fn balance(&self, number: AccountNumber) -> Option<Amount> {
        self.accounts.get(&number).map(|a| a.balance)
    }

    /// Sum of all balances, in minor units.
    pub fn total_minor(&self) -> i128 {
        self.accounts
            .values()
            .map(|a| i128::from(a.balance.minor()))
            .sum()
    }

    /// This branch's part of a cross-branch transfer.
    pub fn leg(&self, id: TransferId) -> Option<LegState> {
        let rec = self.part.get(&id)?;
        Some(match (rec.vote, rec.decision) {
            (_, Some(Decision::Commit)) => LegState::Committed,
            (_, Some(Decision::Abort)) | (Some(Vote::No(_)) | None, None) => LegState::Aborted,
            (Some(Vote::Yes), None) => LegState::Prepared,
        })
    }

    /// The coordinator's durable decision, if this branch coordinated `id`.
    pub fn coordinated_decision(&self, id: TransferId) -> Option<Decision> {
        self.coord.get(&id).and_then(|r| r.decision.map(|(d, _)| d))
    }

    /// How many times money moved for `id` at this branch (must never exceed 1).
    pub fn times_moved(&self, id: TransferId) -> u32 {
        self.moved.get(&id).copied().unwrap_or(0)
    }

    /// Every transfer id this branch has a participant record for.
    pub fn participant_ids(&self) -> impl Iterator<Item = TransferId> + '_ {
        self.part.keys().copied()
    }

    /// Evidence stored with a participant record (prepare and decision envelopes).
    pub fn participant_evidence(&self, id: TransferId) -> usize {
        self.part.get(&id).map_or(0, |r| r.evidence.len())
    }

    fn mine(&self, n: AccountNumber) -> bool {
        n.branch() == self.me
    }

    fn check_debit(&self, n: AccountNumber, amount: Amount) -> Result<(), Refusal> {
        let a = self.accounts.get(&n).ok_or(Refusal::AccountNotFound)?;
        if !a.open {
            return Err(Refusal::AccountClosed);
        }
        let available = a
            .balance
            .checked_sub(a.held)
            .map_err(|_| Refusal::InsufficientFunds)?;
        available
            .checked_sub(amount)
            .map(|_| ())
            .map_err(|_| Refusal::InsufficientFunds)
    }

    fn check_credit(&self, n: AccountNumber, amount: Amount) -> Result<(), Refusal> {
        let a = self.accounts.get(&n).ok_or(Refusal::AccountNotFound)?;
        if !a.open {
            return Err(Refusal::AccountClosed);
        }
        a.balance
            .checked_add(a.pending_credit)
            .and_then(|b| b.checked_add(amount))
            .map(|_| ())
            .map_err(|_| Refusal::BalanceOverflow)
    }

    /// Changes one account; the caller has checked, so a failure is a broken invariant.
    fn update(
        &mut self,
        n: AccountNumber,
        f: impl FnOnce(&mut Account) -> Result<(), wire::AmountError>,
    ) {
        let account = self.accounts.get_mut(&n).expect("checked account exists");
        f(account).expect("checked arithmetic");
    }

    fn prepare_one(
        &mut self,
        coordinator: BranchId,
        item: &PrepareItem,
        now_ms: u64,
        evidence: &Evidence,
    ) -> Vote {
        let spec = item.transfer;
        if self.local.contains_key(&spec.id) {
            return Vote::No(Refusal::IdConflict);
        }
        if let Some(rec) = self.part.get(&spec.id) {
            return match (rec.spec, rec.vote) {
                (Some(s), Some(vote)) if s == spec && rec.coordinator == coordinator => vote,
                (None, _) if rec.coordinator == coordinator => Vote::No(Refusal::Expired),
                _ => Vote::No(Refusal::IdConflict),
            };
        }
        let vote = match self.check_prepare(&spec, now_ms, item.deadline_ms) {
            Ok(()) => {
                if self.mine(spec.from) {
                    self.update(spec.from, |a| {
                        a.held = a.held.checked_add(spec.amount)?;
                        Ok(())
                    });
                }
                if self.mine(spec.to) {
                    self.update(spec.to, |a| {
                        a.pending_credit = a.pending_credit.checked_add(spec.amount)?;
                        Ok(())
                    });
                }
                Vote::Yes
            }
            Err(refusal) => Vote::No(refusal),
        };
        let rec = PartRec {
            spec: Some(spec),
            coordinator,
            deadline_ms: item.deadline_ms,
            vote: Some(vote),
            decision: None,
            evidence: vec![evidence.clone()],
        };
        self.part.insert(spec.id, rec);
        vote
    }

    fn check_prepare(
        &self,
        spec: &TransferSpec,
        now_ms: u64,
        deadline_ms: u64,
    ) -> Result<(), Refusal> {
        if now_ms > deadline_ms {
            return Err(Refusal::Expired);
        }
        if deadline_ms > now_ms.saturating_add(wire::limits::PREPARE_DEADLINE_MAX_MS) {
            return Err(Refusal::DeadlineTooFar);
        }
        spec.validate()?;
        let (debit, credit) = (self.mine(spec.from), self.mine(spec.to));
        if !debit && !credit {
            return Err(Refusal::AccountNotFound);
        }
        if debit {
            self.check_debit(spec.from, spec.amount)?;
        }
        if credit {
            self.check_credit(spec.to, spec.amount)?;
        }
        Ok(())
    }

    fn apply_one(
        &mut self,
        coordinator: BranchId,
        item: &DecisionItem,
        evidence: &Evidence,
    ) -> ApplyOutcome {
        let Some(rec) = self.part.get(&item.id) else {
            if item.decision == Decision::Commit {
                return ApplyOutcome::Refused(ApplyRefusal::UnknownTransfer);
            }
            let rec = PartRec {
                spec: None,
                coordinator,
                deadline_ms: 0,
                vote: None,
                decision: Some(Decision::Abort),
                evidence: vec![evidence.clone()],
            };
            self.part.insert(item.id, rec);
            return ApplyOutcome::Applied;
        };
        if rec.coordinator != coordinator {
            return ApplyOutcome::Refused(ApplyRefusal::WrongCoordinator);
        }
        if let Some(d) = rec.decision {
            return if d == item.decision {
                ApplyOutcome::AlreadyApplied
            } else {
                ApplyOutcome::Refused(ApplyRefusal::Contradiction)
            };
        }
        let (spec, yes) = (rec.spec, rec.vote == Some(Vote::Yes));
        if !yes && item.decision == Decision::Commit {
            return ApplyOutcome::Refused(ApplyRefusal::Contradiction);
        }
        if let (true, Some(spec)) = (yes, spec) {
            self.move_prepared(&spec, item.decision);
        }
        let rec = self.part.get_mut(&item.id).expect("looked up above");
        rec.decision = Some(item.decision);
        rec.evidence.push(evidence.clone());
        ApplyOutcome::Applied
    }

    /// Turns a prepared transfer's hold and pending credit into money moved (commit) or
    /// releases them (abort).
    fn move_prepared(&mut self, spec: &TransferSpec, decision: Decision) {
        let amt = spec.amount;
        let commit = decision == Decision::Commit;
        if self.mine(spec.from) {
            self.update(spec.from, |a| {
                a.held = a.held.checked_sub(amt)?;
                if commit {
                    a.balance = a.balance.checked_sub(amt)?;
                }
                Ok(())
            });
        }
        if self.mine(spec.to) {
            self.update(spec.to, |a| {
                a.pending_credit = a.pending_credit.checked_sub(amt)?;
                if commit {
                    a.balance = a.balance.checked_add(amt)?;
                }
                Ok(())
            });
        }
        if commit {
            *self.moved.entry(spec.id).or_default() += 1;
        }
    }

    fn local_one(&mut self, spec: &TransferSpec) -> TransferState {
        if let Some((s, state)) = self.local.get(&spec.id) {
            return if s == spec {
                *state
            } else {
                TransferState::Aborted(Refusal::IdConflict)
            };
        }
        if self.coord.contains_key(&spec.id) || self.part.contains_key(&spec.id) {
            return TransferState::Aborted(Refusal::IdConflict);
        }
        let checked = spec
            .validate()
            .and_then(|()| {
                if self.mine(spec.from) && self.mine(spec.to) {
                    Ok(())
                } else {
                    Err(Refusal::AccountNotFound)
                }
            })
            .and_then(|()| self.check_debit(spec.from, spec.amount))
            .and_then(|()| self.check_credit(spec.to, spec.amount));
        let state = match checked {
            Ok(()) => {
                self.update(spec.from, |a| {
                    a.balance = a.balance.checked_sub(spec.amount)?;
                    Ok(())
                });
                self.update(spec.to, |a| {
                    a.balance = a.balance.checked_add(spec.amount)?;
                    Ok(())
                });
                *self.moved.entry(spec.id).or_default() += 1;
                TransferState::Committed
            }
            Err(refusal) => TransferState::Aborted(refusal),
        };
        self.local.insert(spec.id, (*spec, state));
        state
    }
}

fn coord_state(rec: &CoordRec) -> TransferState {
    match rec.decision {
        None => TransferState::Pending,
        Some((Decision::Commit, _)) => TransferState::Committed,
        Some((Decision::Abort, reason)) => {
            TransferState::Aborted(reason.unwrap_or(Refusal::Interrupted))
        }
    }
}

impl Shard for MemShard {
    fn branch(&self) -> BranchId {
        self.me
    }

    fn begin(&mut self, items: &[BeginItem], now_ms: u64) -> Result<Vec<BeginOutcome>, ShardError> {
        let me = self.branch();
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let id = item.spec.id;
            if let Some(rec) = self.coord.get(&id) {
                out.push(if rec.spec == item.spec {
                    BeginOutcome::Existing(coord_state(rec))
                } else {
                    BeginOutcome::Conflict
                });
                continue;
            }
            if self.local.contains_key(&id) {
                out.push(BeginOutcome::Conflict);
                continue;
            }
            let rec = CoordRec {
                spec: item.spec,
                deadline_ms: item.deadline_ms,
                decision: None,
                votes: Vec::new(),
                ended: false,
            };
            self.coord.insert(id, rec);
            let own = PrepareItem {
                transfer: item.spec,
                deadline_ms: item.deadline_ms,
            };
            let mine = item.spec.participants().contains(&me);
            out.push(BeginOutcome::New(
                mine.then(|| self.prepare_one(me, &own, now_ms, &None)),
            ));
        }
        Ok(out)
    }

    fn record_decisions(&mut self, items: &[DecisionRecord]) -> Result<(), ShardError> {
        for item in items {
            let rec = self
                .coord
                .get(&item.id)
                .ok_or(ShardError::NotCoordinated(item.id))?;
            if rec.decision.is_some_and(|(d, _)| d != item.decision) {
                return Err(ShardError::DecisionConflict(item.id));
            }
        }
        let me = self.branch();
        for item in items {
            let rec = self.coord.get_mut(&item.id).expect("checked above");
            if rec.decision.is_some() {
                continue;
            }
            rec.decision = Some((item.decision, item.reason));
            rec.votes = item.votes.clone();
            // The own leg, if any, settles in the same step.
            if self.part.get(&item.id).is_some_and(|p| p.coordinator == me) {
                let decision = DecisionItem {
                    id: item.id,
                    decision: item.decision,
                };
                self.apply_one(me, &decision, &None);
            }
        }
        Ok(())
    }

    fn mark_ended(&mut self, ids: &[TransferId]) -> Result<(), ShardError> {
        for id in ids {
            if let Some(rec) = self.coord.get_mut(id) {
                rec.ended = true;
            }
        }
        Ok(())
    }

    fn read_decisions(&self, ids: &[TransferId]) -> Result<Vec<Option<Decision>>, ShardError> {
        Ok(ids
            .iter()
            .map(|id| self.coordinated_decision(*id))
            .collect())
    }

    fn unfinished_coordinated(&self) -> Result<Vec<CoordinatedRecord>, ShardError> {
        Ok(self
            .coord
            .values()
            .filter(|r| !r.ended)
            .map(|r| CoordinatedRecord {
                spec: r.spec,
                deadline_ms: r.deadline_ms,
                decision: r.decision.map(|(d, _)| d),
                reason: r.decision.and_then(|(_, reason)| reason),
            })
            .collect())
    }

    fn prepare(
        &mut self,
        coordinator: BranchId,
        items: &[PrepareItem],
        now_ms: u64,
        evidence: &Evidence,
    ) -> Result<Vec<Vote>, ShardError> {
        Ok(items
            .iter()
            .map(|item| self.prepare_one(coordinator, item, now_ms, evidence))
            .collect())
    }

    fn apply(
        &mut self,
        coordinator: BranchId,
        items: &[DecisionItem],
        evidence: &Evidence,
    ) -> Result<Vec<ApplyOutcome>, ShardError> {
        Ok(items
            .iter()
            .map(|item| self.apply_one(coordinator, item, evidence))
            .collect())
    }

    fn in_doubt(&self) -> Result<Vec<InDoubtRecord>, ShardError> {
        Ok(self
            .part
            .iter()
            .filter(|(_, r)| r.vote == Some(Vote::Yes) && r.decision.is_none())
            .map(|(id, r)| InDoubtRecord {
                id: *id,
                coordinator: r.coordinator,
                deadline_ms: r.deadline_ms,
            })
            .collect())
    }

    fn transfer_local(&mut self, items: &[TransferSpec]) -> Result<Vec<TransferState>, ShardError> {
        Ok(items.iter().map(|spec| self.local_one(spec)).collect())
    }

    fn transfer_state(&self, id: TransferId) -> Result<TransferState, ShardError> {
        if let Some(rec) = self.coord.get(&id) {
            return Ok(coord_state(rec));
        }
        if let Some((_, state)) = self.local.get(&id) {
            return Ok(*state);
        }
        Ok(match self.leg(id) {
            Some(LegState::Committed) => TransferState::Committed,
            // A participant does not know why a transfer aborted: its coordinator tells.
            Some(LegState::Aborted | LegState::Prepared) => TransferState::Pending,
            None => TransferState::Unknown,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credit_that_would_overflow_is_voted_no_and_holds_nothing() {
        let me = BranchId(1);
        let (full, other) = (
            AccountNumber::new(me, 1).expect("valid"),
            AccountNumber::new(BranchId(2), 1).expect("valid"),
        );
        let mut s = MemShard::new(me);
        s.open_account(
            full,
            Amount::from_minor(i64::MAX - 5).expect("non-negative"),
        );
        let spec = TransferSpec {
            id: TransferId(1),
            from: other,
            to: full,
            amount: Amount::from_minor(10).expect("non-negative"),
        };
        let votes = s
            .prepare(
                BranchId(2),
                &[PrepareItem {
                    transfer: spec,
                    deadline_ms: 10,
                }],
                0,
                &None,
            )
            .expect("works");
        assert_eq!(votes, vec![Vote::No(Refusal::BalanceOverflow)]);
        assert!(s.in_doubt().expect("works").is_empty());
        assert_eq!(s.balance(full), Amount::from_minor(i64::MAX - 5).ok());
    }
}
