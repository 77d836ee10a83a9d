//! The participant role: prepares this branch's legs when a coordinator asks, applies
//! decisions, and, while in doubt (voted yes, no decision), asks the coordinator.
//!
//! Its durable state lives in the `Shard`; in memory it keeps only the in-doubt legs and
//! when to ask about each. After a restart those come back through `Input::Recovered`
//! and it asks at once.

use std::collections::{BTreeMap, BTreeSet};

use wire::twopc::{DecisionItem, PrepareItem, StatusItem, TransferStatus, Vote, VoteItem};
use wire::{BranchId, TransferId};

use crate::command::Command;
use crate::config::Config;
use crate::outbox::Outbox;
use crate::shard::{ApplyOutcome, Evidence, InDoubtRecord};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Doubt {
    coordinator: BranchId,
    due_ms: u64,
    wait_ms: u64,
}

/// The participant role of one branch. Pure: no clock, no IO.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Participant {
    config: Config,
    in_doubt: BTreeMap<TransferId, Doubt>,
    timers: BTreeSet<(u64, TransferId)>,
}

impl Participant {
    /// A participant with nothing in doubt.
    pub fn new(config: Config) -> Self {
        Participant {
            config,
            in_doubt: BTreeMap::new(),
            timers: BTreeSet::new(),
        }
    }

    /// Legs voted yes on whose decision this branch has not applied.
    pub fn in_doubt(&self) -> usize {
        self.in_doubt.len()
    }

    /// The earliest time a timer is due.
    pub fn next_timer(&self) -> Option<u64> {
        self.timers.first().map(|(t, _)| *t)
    }

    fn doubt(&mut self, id: TransferId, coordinator: BranchId, due_ms: u64) {
        if self.in_doubt.contains_key(&id) {
            return;
        }
        let wait_ms = self.config.status_query_delay_ms;
        self.in_doubt.insert(
            id,
            Doubt {
                coordinator,
                due_ms,
                wait_ms,
            },
        );
        self.timers.insert((due_ms, id));
    }

    fn resolve(&mut self, id: TransferId) {
        if let Some(d) = self.in_doubt.remove(&id) {
            let had = self.timers.remove(&(d.due_ms, id));
            assert!(had, "leg {id} in doubt had no timer");
        }
    }

    /// A coordinator asks to prepare: the store decides each vote in one durable step.
    pub(crate) fn prepare(
        &mut self,
        from: BranchId,
        items: Vec<PrepareItem>,
        evidence: Evidence,
        out: &mut Vec<Command>,
    ) {
        out.push(Command::Prepare {
            coordinator: from,
            items,
            evidence,
        });
    }

    /// The votes are durable: note the yes legs as in doubt, then send the votes.
    pub(crate) fn prepared(
        &mut self,
        now: u64,
        coordinator: BranchId,
        items: Vec<PrepareItem>,
        votes: Vec<Vote>,
        out: &mut Vec<Command>,
    ) {
        assert_eq!(items.len(), votes.len(), "one vote per prepared item");
        let mut ob = Outbox::default();
        for (item, vote) in items.into_iter().zip(votes) {
            let id = item.transfer.id;
            if vote == Vote::Yes {
                let ask_at = item
                    .deadline_ms
                    .max(now)
                    .saturating_add(self.config.status_query_delay_ms);
                self.doubt(id, coordinator, ask_at);
            }
            ob.vote(coordinator, VoteItem { id, vote });
        }
        ob.flush(out);
    }

    /// Decisions arrived (in a decision batch or a status answer): apply them durably.
    pub(crate) fn decisions(
        &mut self,
        from: BranchId,
        items: Vec<DecisionItem>,
        evidence: Evidence,
        out: &mut Vec<Command>,
    ) {
        if !items.is_empty() {
            out.push(Command::Apply {
                coordinator: from,
                items,
                evidence,
            });
        }
    }

    /// A status answer: apply what is decided; a pending one is asked again later.
    pub(crate) fn status_answer(
        &mut self,
        from: BranchId,
        items: Vec<StatusItem>,
        evidence: Evidence,
        out: &mut Vec<Command>,
    ) {
        let decided = items
            .into_iter()
            .filter_map(|StatusItem { id, status }| match status {
                TransferStatus::Decided(decision) => Some(DecisionItem { id, decision }),
                TransferStatus::Pending => None,
            })
            .collect();
        self.decisions(from, decided, evidence, out);
    }

    /// The decisions are durably applied: acknowledge them.
    pub(crate) fn applied(
        &mut self,
        coordinator: BranchId,
        items: Vec<DecisionItem>,
        outcomes: Vec<ApplyOutcome>,
        out: &mut Vec<Command>,
    ) {
        assert_eq!(
            items.len(),
            outcomes.len(),
            "one apply outcome per decision"
        );
        let mut ob = Outbox::default();
        for (item, outcome) in items.into_iter().zip(outcomes) {
            match outcome {
                ApplyOutcome::Applied | ApplyOutcome::AlreadyApplied => {
                    self.resolve(item.id);
                    ob.ack(coordinator, item.id);
                }
                // Contradicts the records: nothing changed, nothing to acknowledge.
                ApplyOutcome::Refused(_) => {}
            }
        }
        ob.flush(out);
    }

    /// Ask the coordinators about legs still in doubt, backing off each time.
    pub(crate) fn tick(&mut self, now: u64, out: &mut Vec<Command>) {
        let mut ob = Outbox::default();
        while let Some(&(due, id)) = self.timers.first() {
            if due > now {
                break;
            }
            self.timers.remove(&(due, id));
            let Some(d) = self.in_doubt.get_mut(&id) else {
                continue;
            };
            ob.query(d.coordinator, id);
            d.due_ms = now.saturating_add(d.wait_ms);
            d.wait_ms = d
                .wait_ms
                .saturating_mul(2)
                .min(self.config.retry_backoff_max_ms);
            self.timers.insert((d.due_ms, id));
        }
        // Each leg in doubt has exactly one timer, and nothing else has one.
        assert_eq!(
            self.timers.len(),
            self.in_doubt.len(),
            "one timer per leg in doubt"
        );
        ob.flush(out);
    }

    /// Restart: every leg in doubt is asked about at once.
    pub(crate) fn recovered(
        &mut self,
        now: u64,
        records: Vec<InDoubtRecord>,
        out: &mut Vec<Command>,
    ) {
        for r in records {
            self.doubt(r.id, r.coordinator, now);
        }
        self.tick(now, out);
    }
}
