//! `Branch`: one branch's two roles behind one `step`, and `execute`, which runs a
//! storage command against a `Shard` and returns the input that answers it.
//!
//! A driver (the node, the simulation, the model check) loops: feed an input to
//! [`Branch::step`], then for each command: run storage commands **in the order
//! emitted** with [`execute`] and feed their answers back, send `Send`s (delivering
//! those addressed to this branch in-process), answer `Reply`s, and call `step(Tick)`
//! once [`Branch::next_timer`] is due.

use std::collections::BTreeSet;

use wire::BranchId;
use wire::twopc::BranchBody;

use crate::command::{Command, Input};
use crate::config::Config;
use crate::coordinator::Coordinator;
use crate::participant::Participant;
use crate::shard::{Shard, ShardError};

/// Both 2PC roles of one branch. Pure: no clock, no IO.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Branch {
    me: BranchId,
    coordinator: Coordinator,
    participant: Participant,
}

impl Branch {
    /// Branch `me` in a network of `branches` (including `me`), with nothing in memory.
    /// Feed [`Input::Recovered`] first.
    pub fn new(me: BranchId, branches: BTreeSet<BranchId>, config: Config) -> Self {
        Branch {
            me,
            coordinator: Coordinator::new(me, branches, config),
            participant: Participant::new(config),
        }
    }

    /// This branch's id.
    pub fn id(&self) -> BranchId {
        self.me
    }

    /// The coordinator role, for inspection.
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }

    /// The participant role, for inspection.
    pub fn participant(&self) -> &Participant {
        &self.participant
    }

    /// The earliest time either role wants a `Tick`.
    pub fn next_timer(&self) -> Option<u64> {
        match (self.coordinator.next_timer(), self.participant.next_timer()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Feeds one input at time `now_ms`; the commands to run are appended to `out`.
    pub fn step(&mut self, now_ms: u64, input: Input, out: &mut Vec<Command>) {
        let (c, p) = (&mut self.coordinator, &mut self.participant);
        match input {
            Input::Request(specs) => c.request(now_ms, specs, out),
            Input::Message {
                from,
                body,
                evidence,
            } => match body {
                BranchBody::Prepare(items) => p.prepare(from, items, evidence, out),
                BranchBody::Decisions(items) => p.decisions(from, items, evidence, out),
                BranchBody::StatusAnswer(items) => p.status_answer(from, items, evidence, out),
                BranchBody::Votes(items) => c.votes(from, items, &evidence, out),
                BranchBody::Acks(ids) => c.acks(from, ids, out),
                BranchBody::StatusQuery(ids) => c.status_query(now_ms, from, ids, out),
                several @ BranchBody::Several(_) => {
                    for body in several.parts() {
                        let evidence = evidence.clone();
                        let part = Input::Message {
                            from,
                            body,
                            evidence,
                        };
                        self.step(now_ms, part, out);
                    }
                }
            },
            Input::Tick => {
                c.tick(now_ms, out);
                p.tick(now_ms, out);
            }
            Input::Recovered {
                coordinated,
                in_doubt,
            } => {
                c.recovered(now_ms, coordinated, out);
                p.recovered(now_ms, in_doubt, out);
            }
            Input::Begun {
                items,
                outcomes,
                evidence,
            } => c.begun(items, outcomes, evidence, out),
            Input::DecisionsDurable { ids } => c.decisions_durable(now_ms, ids, out),
            Input::DecisionsRead { asker, items } => c.decisions_read(asker, items, out),
            Input::LocalDone { items, states } => c.local_done(items, states, out),
            Input::Prepared {
                coordinator,
                items,
                votes,
            } => p.prepared(now_ms, coordinator, items, votes, out),
            Input::Applied {
                coordinator,
                items,
                outcomes,
            } => p.applied(coordinator, items, outcomes, out),
        }
    }
}

/// Runs one storage command against `shard` at time `now_ms` and returns the input that
/// answers it (`None` for `MarkEnded`, or for a command that is not a storage command).
pub fn execute<S: Shard + ?Sized>(
    shard: &mut S,
    now_ms: u64,
    command: Command,
) -> Result<Option<Input>, ShardError> {
    Ok(Some(match command {
        Command::Begin { items } => {
            let outcomes = shard.begin(&items, now_ms)?;
            Input::Begun {
                items,
                outcomes,
                evidence: None,
            }
        }
        Command::RecordDecisions { items } => {
            shard.record_decisions(&items)?;
            Input::DecisionsDurable {
                ids: items.iter().map(|r| r.id).collect(),
            }
        }
        Command::MarkEnded { ids } => {
            shard.mark_ended(&ids)?;
            return Ok(None);
        }
        Command::ReadDecisions { asker, ids } => {
            let found = shard.read_decisions(&ids)?;
            Input::DecisionsRead {
                asker,
                items: ids.into_iter().zip(found).collect(),
            }
        }
        Command::Prepare {
            coordinator,
            items,
            evidence,
        } => {
            let votes = shard.prepare(coordinator, &items, now_ms, &evidence)?;
            Input::Prepared {
                coordinator,
                items,
                votes,
            }
        }
        Command::Apply {
            coordinator,
            items,
            evidence,
        } => {
            let outcomes = shard.apply(coordinator, &items, &evidence)?;
            Input::Applied {
                coordinator,
                items,
                outcomes,
            }
        }
        Command::TransferLocal { items } => {
            let specs: Vec<_> = items.iter().map(|(_, s)| *s).collect();
            let states = shard.transfer_local(&specs)?;
            Input::LocalDone { items, states }
        }
        Command::Send { .. } | Command::Reply { .. } => return Ok(None),
    }))
}
