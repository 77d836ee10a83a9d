//! The coordinator role: runs the 2PC of each cross-branch transfer a teller asked this
//! branch for, and does local transfers in one step. Presumed abort.
//!
//! Per transfer: `Beginning` (begin record, with this branch's own leg prepared in the
//! same durable step, not yet durable) -> `Preparing` (prepares sent to the other
//! participants, and sent again to the silent every `prepare_resend_ms`; votes coming
//! in; deadline armed) -> `Deciding` (decision recorded, not yet
//! durable: nothing is told) -> `Decided` (durable; tellers told, decisions sent and
//! re-sent until every participant acks) -> ended and forgotten.

use std::collections::{BTreeMap, BTreeSet};

use wire::teller::TransferState;
use wire::twopc::{
    DecisionItem, PrepareItem, StatusItem, TransferSpec, TransferStatus, Vote, VoteItem,
};
use wire::{BranchId, Decision, Refusal, TransferId};

use crate::command::{Command, Ticket};
use crate::config::Config;
use crate::outbox::Outbox;
use crate::shard::{BeginItem, BeginOutcome, CoordinatedRecord, DecisionRecord, Evidence};

/// Where one coordinated transfer stands in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Beginning,
    Preparing,
    Deciding,
    Decided,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Tx {
    spec: TransferSpec,
    deadline_ms: u64,
    participants: Vec<BranchId>,
    /// Whether the other participants were sent a prepare; those that were not (its
    /// own leg refused it first) never hear of the transfer (presumed abort).
    asked: bool,
    phase: Phase,
    /// Yes votes so far, with the envelope each came in.
    yes: BTreeMap<BranchId, Evidence>,
    decision: Option<(Decision, Option<Refusal>)>,
    acked: BTreeSet<BranchId>,
    waiters: Vec<Ticket>,
    /// When the armed timer fires (deadline, or next re-send).
    due_ms: Option<u64>,
    resend_wait_ms: u64,
}

impl Tx {
    fn state(&self) -> TransferState {
        match (self.phase, self.decision) {
            (Phase::Decided, Some((Decision::Commit, _))) => TransferState::Committed,
            (Phase::Decided, Some((Decision::Abort, reason))) => {
                TransferState::Aborted(reason.unwrap_or(Refusal::Interrupted))
            }
            _ => TransferState::Pending,
        }
    }
}

/// The coordinator role of one branch. Pure: no clock, no IO.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Coordinator {
    me: BranchId,
    branches: BTreeSet<BranchId>,
    config: Config,
    txs: BTreeMap<TransferId, Tx>,
    timers: BTreeSet<(u64, TransferId)>,
}

impl Coordinator {
    /// The coordinator of branch `me` in a network of `branches` (including `me`).
    pub fn new(me: BranchId, branches: BTreeSet<BranchId>, config: Config) -> Self {
        Coordinator {
            me,
            branches,
            config,
            txs: BTreeMap::new(),
            timers: BTreeSet::new(),
        }
    }

    /// Transfers coordinated here and not yet ended.
    pub fn in_flight(&self) -> usize {
        self.txs.len()
    }

    /// The phase of a transfer in memory, if it is.
    pub fn phase(&self, id: TransferId) -> Option<Phase> {
        self.txs.get(&id).map(|t| t.phase)
    }

    /// The earliest time a timer is due.
    pub fn next_timer(&self) -> Option<u64> {
        self.timers.first().map(|(t, _)| *t)
    }

    fn arm(&mut self, id: TransferId, at_ms: u64) {
        if let Some(tx) = self.txs.get_mut(&id) {
            if let Some(old) = tx.due_ms.replace(at_ms) {
                self.timers.remove(&(old, id));
            }
            self.timers.insert((at_ms, id));
        }
    }

    fn disarm(&mut self, id: TransferId) {
        if let Some(old) = self.txs.get_mut(&id).and_then(|tx| tx.due_ms.take()) {
            self.timers.remove(&(old, id));
        }
    }

    fn forget(&mut self, id: TransferId) {
        self.disarm(id);
        self.txs.remove(&id);
    }

    /// Tellers asked for transfers.
    pub(crate) fn request(
        &mut self,
        now: u64,
        specs: Vec<(Ticket, TransferSpec)>,
        out: &mut Vec<Command>,
    ) {
        let mut begin = Vec::new();
        let mut local = Vec::new();
        for (ticket, spec) in specs {
            let reply = |state| Command::Reply {
                ticket,
                id: spec.id,
                state,
            };
            if let Some(tx) = self.txs.get_mut(&spec.id) {
                if tx.spec != spec {
                    out.push(reply(TransferState::Aborted(Refusal::IdConflict)));
                } else if tx.phase == Phase::Decided {
                    out.push(reply(tx.state()));
                } else {
                    tx.waiters.push(ticket);
                }
                continue;
            }
            // Done here in one step, which records the outcome under the id, refusals
            // too: a transfer within this branch, and one refused on its content alone
            // (bad amount, same account, an account at no listed branch). So every
            // refusal a teller hears about an id is one that id keeps.
            let participants = spec.participants();
            let unlisted = participants.iter().any(|p| !self.branches.contains(p));
            if participants == [self.me] || spec.validate().is_err() || unlisted {
                local.push((ticket, spec));
                continue;
            }
            if self.txs.len() >= self.config.in_flight_transfers_max {
                // Not taken: nothing is recorded, so this is no refusal of the id.
                out.push(reply(TransferState::Unknown));
                continue;
            }
            let deadline_ms = now.saturating_add(self.config.prepare_timeout_ms);
            self.txs.insert(
                spec.id,
                Tx {
                    spec,
                    deadline_ms,
                    participants,
                    asked: false,
                    phase: Phase::Beginning,
                    yes: BTreeMap::new(),
                    decision: None,
                    acked: BTreeSet::new(),
                    waiters: vec![ticket],
                    due_ms: None,
                    resend_wait_ms: self.config.decision_resend_ms,
                },
            );
            begin.push(BeginItem { spec, deadline_ms });
        }
        if !local.is_empty() {
            out.push(Command::TransferLocal { items: local });
        }
        if !begin.is_empty() {
            out.push(Command::Begin { items: begin });
        }
    }

    /// The begin records, and this branch's own legs, are durable (or an earlier use
    /// of the id was found). The prepares go to the other participants only now, so no
    /// branch hears of an id before its begin record is durable here.
    pub(crate) fn begun(
        &mut self,
        items: Vec<BeginItem>,
        outcomes: Vec<BeginOutcome>,
        evidence: Evidence,
        out: &mut Vec<Command>,
    ) {
        assert_eq!(items.len(), outcomes.len(), "one begin outcome per item");
        let mut ob = Outbox::default();
        let mut records = Vec::new();
        for (item, outcome) in items.into_iter().zip(outcomes) {
            let id = item.spec.id;
            let Some(tx) = self.txs.get_mut(&id) else {
                continue;
            };
            if tx.phase != Phase::Beginning || tx.spec != item.spec {
                continue;
            }
            let answer = match outcome {
                BeginOutcome::New(own @ (None | Some(Vote::Yes))) => {
                    tx.phase = Phase::Preparing;
                    if own.is_some() {
                        tx.yes.insert(self.me, evidence.clone());
                    }
                    // Timed from the request (the deadline less the timeout).
                    let start = tx
                        .deadline_ms
                        .saturating_sub(self.config.prepare_timeout_ms);
                    self.send_prepares(id, start, &mut ob);
                    continue;
                }
                BeginOutcome::New(Some(Vote::No(reason))) => {
                    tx.phase = Phase::Preparing;
                    self.decide(id, Decision::Abort, Some(reason), &mut records);
                    continue;
                }
                BeginOutcome::Existing(state) => state,
                BeginOutcome::Conflict => TransferState::Aborted(Refusal::IdConflict),
            };
            for ticket in std::mem::take(&mut tx.waiters) {
                out.push(Command::Reply {
                    ticket,
                    id,
                    state: answer,
                });
            }
            self.forget(id);
        }
        Self::flush_decisions(records, out);
        ob.flush(out);
    }

    /// Sends the prepare of `id` to the participants that have not voted yes, and arms
    /// the next re-send, `prepare_resend_ms` after `from_ms` (or the deadline, if sooner).
    fn send_prepares(&mut self, id: TransferId, from_ms: u64, ob: &mut Outbox) {
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        tx.asked = true;
        let prepare = PrepareItem {
            transfer: tx.spec,
            deadline_ms: tx.deadline_ms,
        };
        for &p in &tx.participants {
            if !tx.yes.contains_key(&p) {
                ob.prepare(p, prepare);
            }
        }
        let wake = tx
            .deadline_ms
            .min(from_ms.saturating_add(self.config.prepare_resend_ms));
        self.arm(id, wake);
    }

    fn decide(
        &mut self,
        id: TransferId,
        decision: Decision,
        reason: Option<Refusal>,
        records: &mut Vec<DecisionRecord>,
    ) {
        self.disarm(id);
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        // One decision per transfer, taken while it prepares: every caller checks.
        assert_eq!(tx.phase, Phase::Preparing, "transfer {id} decided twice");
        tx.phase = Phase::Deciding;
        tx.decision = Some((decision, reason));
        let votes = match decision {
            Decision::Commit => tx.yes.values().cloned().collect(),
            Decision::Abort => Vec::new(),
        };
        records.push(DecisionRecord {
            id,
            decision,
            reason,
            votes,
        });
    }

    fn flush_decisions(records: Vec<DecisionRecord>, out: &mut Vec<Command>) {
        if !records.is_empty() {
            out.push(Command::RecordDecisions { items: records });
        }
    }

    /// Votes from participant `from`.
    pub(crate) fn votes(
        &mut self,
        from: BranchId,
        items: Vec<VoteItem>,
        evidence: &Evidence,
        out: &mut Vec<Command>,
    ) {
        let mut records = Vec::new();
        for VoteItem { id, vote } in items {
            let Some(tx) = self.txs.get_mut(&id) else {
                continue;
            };
            if tx.phase != Phase::Preparing || !tx.participants.contains(&from) {
                continue;
            }
            match vote {
                Vote::Yes => {
                    tx.yes.insert(from, evidence.clone());
                    if tx.yes.len() == tx.participants.len() {
                        self.decide(id, Decision::Commit, None, &mut records);
                    }
                }
                Vote::No(reason) => self.decide(id, Decision::Abort, Some(reason), &mut records),
            }
        }
        Self::flush_decisions(records, out);
    }

    /// The decisions are durable, and applied to this branch's own legs in the same
    /// step: tell the tellers, send them to the other participants that were asked to
    /// prepare (a transfer no other branch heard of ends here).
    pub(crate) fn decisions_durable(
        &mut self,
        now: u64,
        ids: Vec<TransferId>,
        out: &mut Vec<Command>,
    ) {
        let mut ob = Outbox::default();
        let mut ended = Vec::new();
        for id in ids {
            let Some(tx) = self.txs.get_mut(&id) else {
                continue;
            };
            let (Phase::Deciding, Some((decision, _))) = (tx.phase, tx.decision) else {
                continue;
            };
            tx.phase = Phase::Decided;
            let state = tx.state();
            for ticket in std::mem::take(&mut tx.waiters) {
                out.push(Command::Reply { ticket, id, state });
            }
            // Its own leg settled in the same step as the decision record.
            if tx.participants.contains(&self.me) {
                tx.acked.insert(self.me);
            }
            let rest: Vec<_> = (tx.participants.iter())
                .filter(|p| tx.asked && !tx.acked.contains(p))
                .collect();
            if rest.is_empty() {
                ended.push(id);
                self.forget(id);
                continue;
            }
            for &p in rest {
                ob.decision(p, DecisionItem { id, decision });
            }
            let wait = tx.resend_wait_ms;
            self.arm(id, now.saturating_add(wait));
        }
        ob.flush(out);
        if !ended.is_empty() {
            out.push(Command::MarkEnded { ids: ended });
        }
    }

    /// Participant `from` has durably applied these decisions.
    pub(crate) fn acks(&mut self, from: BranchId, ids: Vec<TransferId>, out: &mut Vec<Command>) {
        let mut ended = Vec::new();
        for id in ids {
            let Some(tx) = self.txs.get_mut(&id) else {
                continue;
            };
            if tx.phase != Phase::Decided || !tx.participants.contains(&from) {
                continue;
            }
            tx.acked.insert(from);
            if tx.acked.len() == tx.participants.len() {
                ended.push(id);
                self.forget(id);
            }
        }
        if !ended.is_empty() {
            out.push(Command::MarkEnded { ids: ended });
        }
    }

    /// Participant `from` asks what was decided.
    pub(crate) fn status_query(
        &mut self,
        now: u64,
        from: BranchId,
        ids: Vec<TransferId>,
        out: &mut Vec<Command>,
    ) {
        let mut ob = Outbox::default();
        let mut records = Vec::new();
        let mut unknown = Vec::new();
        for id in ids {
            let Some(tx) = self.txs.get(&id) else {
                unknown.push(id);
                continue;
            };
            // Past its deadline and still undecided: abort now; the abort reaches the
            // participants once it is durable.
            if tx.phase == Phase::Preparing && now > tx.deadline_ms {
                self.decide(id, Decision::Abort, Some(Refusal::NoVote), &mut records);
            }
            // A decision is revealed only once durable.
            let status = match self.txs.get(&id).map(|tx| (tx.phase, tx.decision)) {
                Some((Phase::Decided, Some((d, _)))) => TransferStatus::Decided(d),
                _ => TransferStatus::Pending,
            };
            ob.answer(from, StatusItem { id, status });
        }
        Self::flush_decisions(records, out);
        ob.flush(out);
        if !unknown.is_empty() {
            out.push(Command::ReadDecisions {
                asker: from,
                ids: unknown,
            });
        }
    }

    /// Records answered a status query for transfers not in memory.
    pub(crate) fn decisions_read(
        &mut self,
        asker: BranchId,
        items: Vec<(TransferId, Option<Decision>)>,
        out: &mut Vec<Command>,
    ) {
        let mut ob = Outbox::default();
        for (id, recorded) in items {
            // A transfer that came back into memory since the read answers from memory
            // at the next query; never presume an abort for it.
            let status = match (self.txs.contains_key(&id), recorded) {
                (true, _) => TransferStatus::Pending,
                (false, Some(d)) => TransferStatus::Decided(d),
                (false, None) => TransferStatus::Decided(Decision::Abort), // presumed abort
            };
            ob.answer(asker, StatusItem { id, status });
        }
        ob.flush(out);
    }

    /// Local transfers are done: answer their tellers.
    pub(crate) fn local_done(
        &mut self,
        items: Vec<(Ticket, TransferSpec)>,
        states: Vec<TransferState>,
        out: &mut Vec<Command>,
    ) {
        assert_eq!(items.len(), states.len(), "one local outcome per transfer");
        for ((ticket, spec), state) in items.into_iter().zip(states) {
            out.push(Command::Reply {
                ticket,
                id: spec.id,
                state,
            });
        }
    }

    /// Timers: send prepares again to participants that have not voted, abort what
    /// missed its deadline, re-send unacknowledged decisions.
    pub(crate) fn tick(&mut self, now: u64, out: &mut Vec<Command>) {
        let mut ob = Outbox::default();
        let mut records = Vec::new();
        while let Some(&(due, id)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.remove(&(due, id));
            let Some(tx) = self.txs.get_mut(&id) else {
                continue;
            };
            if tx.due_ms != Some(due) {
                continue;
            }
            tx.due_ms = None;
            match (tx.phase, tx.decision) {
                (Phase::Preparing, _) if now < tx.deadline_ms => {
                    self.send_prepares(id, now, &mut ob);
                }
                (Phase::Preparing, _) => {
                    self.decide(id, Decision::Abort, Some(Refusal::NoVote), &mut records);
                }
                (Phase::Decided, Some((decision, _))) => {
                    for &p in &tx.participants {
                        if !tx.acked.contains(&p) {
                            ob.decision(p, DecisionItem { id, decision });
                        }
                    }
                    tx.resend_wait_ms = tx
                        .resend_wait_ms
                        .saturating_mul(2)
                        .min(self.config.retry_backoff_max_ms);
                    let wait = tx.resend_wait_ms;
                    self.arm(id, now.saturating_add(wait));
                }
                _ => {}
            }
        }
        Self::flush_decisions(records, out);
        ob.flush(out);
    }

    /// Restart: abort what was never decided, re-send what was decided but not acked.
    pub(crate) fn recovered(
        &mut self,
        now: u64,
        records: Vec<CoordinatedRecord>,
        out: &mut Vec<Command>,
    ) {
        let mut ob = Outbox::default();
        let mut decisions = Vec::new();
        for rec in records {
            let id = rec.spec.id;
            self.txs.insert(
                id,
                Tx {
                    spec: rec.spec,
                    deadline_ms: rec.deadline_ms,
                    participants: rec.spec.participants(),
                    asked: true,
                    // Undecided ones are aborted just below (Preparing -> Deciding).
                    phase: if rec.decision.is_some() {
                        Phase::Decided
                    } else {
                        Phase::Preparing
                    },
                    yes: BTreeMap::new(),
                    decision: rec.decision.map(|d| (d, rec.reason)),
                    acked: BTreeSet::new(),
                    waiters: Vec::new(),
                    due_ms: None,
                    resend_wait_ms: self.config.decision_resend_ms,
                },
            );
            match rec.decision {
                None => self.decide(
                    id,
                    Decision::Abort,
                    Some(Refusal::Interrupted),
                    &mut decisions,
                ),
                Some(decision) => {
                    for p in rec.spec.participants() {
                        ob.decision(p, DecisionItem { id, decision });
                    }
                    self.arm(id, now.saturating_add(self.config.decision_resend_ms));
                }
            }
        }
        Self::flush_decisions(decisions, out);
        ob.flush(out);
    }
}
