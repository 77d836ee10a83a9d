//! Collects the messages one step produces and emits them as batches, one per
//! destination and kind, split at `BATCH_TRANSFERS_MAX`.

use std::collections::BTreeMap;

use wire::limits::BATCH_TRANSFERS_MAX;
use wire::twopc::{BranchBody, DecisionItem, PrepareItem, StatusItem, VoteItem};
use wire::{BranchId, TransferId};

use crate::command::Command;

/// Pending outgoing items of one step, by destination.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    prepares: BTreeMap<BranchId, Vec<PrepareItem>>,
    votes: BTreeMap<BranchId, Vec<VoteItem>>,
    decisions: BTreeMap<BranchId, Vec<DecisionItem>>,
    acks: BTreeMap<BranchId, Vec<TransferId>>,
    queries: BTreeMap<BranchId, Vec<TransferId>>,
    answers: BTreeMap<BranchId, Vec<StatusItem>>,
}

impl Outbox {
    pub(crate) fn prepare(&mut self, to: BranchId, item: PrepareItem) {
        self.prepares.entry(to).or_default().push(item);
    }
    pub(crate) fn vote(&mut self, to: BranchId, item: VoteItem) {
        self.votes.entry(to).or_default().push(item);
    }
    pub(crate) fn decision(&mut self, to: BranchId, item: DecisionItem) {
        self.decisions.entry(to).or_default().push(item);
    }
    pub(crate) fn ack(&mut self, to: BranchId, id: TransferId) {
        self.acks.entry(to).or_default().push(id);
    }
    pub(crate) fn query(&mut self, to: BranchId, id: TransferId) {
        self.queries.entry(to).or_default().push(id);
    }
    pub(crate) fn answer(&mut self, to: BranchId, item: StatusItem) {
        self.answers.entry(to).or_default().push(item);
    }

    /// Emits every batch as `Send` commands.
    pub(crate) fn flush(self, out: &mut Vec<Command>) {
        emit(self.prepares, BranchBody::Prepare, out);
        emit(self.votes, BranchBody::Votes, out);
        emit(self.decisions, BranchBody::Decisions, out);
        emit(self.acks, BranchBody::Acks, out);
        emit(self.queries, BranchBody::StatusQuery, out);
        emit(self.answers, BranchBody::StatusAnswer, out);
    }
}

fn emit<T: Clone>(
    by_dest: BTreeMap<BranchId, Vec<T>>,
    wrap: fn(Vec<T>) -> BranchBody,
    out: &mut Vec<Command>,
) {
    for (to, items) in by_dest {
        for chunk in items.chunks(BATCH_TRANSFERS_MAX) {
            out.push(Command::Send {
                to,
                body: wrap(chunk.to_vec()),
            });
        }
    }
}
