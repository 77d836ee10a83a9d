//! `Input` and `Command`: everything that goes into and comes out of the 2PC state machines.
//!
//! Storage commands are answered by an input carrying the result (see [`crate::execute`]);
//! a machine sends nothing that depends on a storage command until that input arrives,
//! which is how "durable before send" is guaranteed by construction.

use wire::teller::TransferState;
use wire::twopc::{BranchBody, DecisionItem, PrepareItem, TransferSpec, Vote};
use wire::{BranchId, Decision, TransferId};

use crate::shard::{
    ApplyOutcome, BeginItem, BeginOutcome, CoordinatedRecord, DecisionRecord, Evidence,
    InDoubtRecord,
};

/// Names one waiting teller request; chosen by the driver, echoed in its [`Command::Reply`].
pub type Ticket = u64;

/// Something that happened to a branch, fed to [`crate::Branch::step`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// Tellers asked for these transfers (this branch coordinates them).
    Request(Vec<(Ticket, TransferSpec)>),
    /// A message from branch `from`, whose envelope the caller has already verified
    /// against the network file (signature, listed signer, signer = connected peer,
    /// recipient and expiry). `evidence` is that envelope's bytes, kept as proof.
    Message {
        from: BranchId,
        body: BranchBody,
        evidence: Evidence,
    },
    /// Timers may be due: the machine acts on those at or before `now`.
    Tick,
    /// Read back at start, before any other input.
    Recovered {
        coordinated: Vec<CoordinatedRecord>,
        in_doubt: Vec<InDoubtRecord>,
    },
    /// Result of [`Command::Begin`], one outcome per item, in order. `evidence` is
    /// this branch's own yes votes among them, signed as a `Votes` message to itself
    /// (the driver signs it; `None` in the simulation), kept as proof with a commit.
    Begun {
        items: Vec<BeginItem>,
        outcomes: Vec<BeginOutcome>,
        evidence: Evidence,
    },
    /// [`Command::RecordDecisions`] is durable.
    DecisionsDurable { ids: Vec<TransferId> },
    /// Result of [`Command::ReadDecisions`].
    DecisionsRead {
        asker: BranchId,
        items: Vec<(TransferId, Option<Decision>)>,
    },
    /// Result of [`Command::Prepare`], one vote per item, in order.
    Prepared {
        coordinator: BranchId,
        items: Vec<PrepareItem>,
        votes: Vec<Vote>,
    },
    /// Result of [`Command::Apply`], one outcome per item, in order.
    Applied {
        coordinator: BranchId,
        items: Vec<DecisionItem>,
        outcomes: Vec<ApplyOutcome>,
    },
    /// Result of [`Command::TransferLocal`], one state per item, in order.
    LocalDone {
        items: Vec<(Ticket, TransferSpec)>,
        states: Vec<TransferState>,
    },
}

/// Something a branch's driver must do.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Command {
    /// `Shard::begin` (with the current time), then feed [`Input::Begun`].
    Begin { items: Vec<BeginItem> },
    /// `Shard::record_decisions`, then feed [`Input::DecisionsDurable`].
    RecordDecisions { items: Vec<DecisionRecord> },
    /// `Shard::mark_ended`; nothing to feed back.
    MarkEnded { ids: Vec<TransferId> },
    /// `Shard::read_decisions`, then feed [`Input::DecisionsRead`].
    ReadDecisions {
        asker: BranchId,
        ids: Vec<TransferId>,
    },
    /// `Shard::prepare` (with the current time), then feed [`Input::Prepared`].
    Prepare {
        coordinator: BranchId,
        items: Vec<PrepareItem>,
        evidence: Evidence,
    },
    /// `Shard::apply`, then feed [`Input::Applied`].
    Apply {
        coordinator: BranchId,
        items: Vec<DecisionItem>,
        evidence: Evidence,
    },
    /// `Shard::transfer_local`, then feed [`Input::LocalDone`].
    TransferLocal { items: Vec<(Ticket, TransferSpec)> },
    /// Sign `body` and send it to branch `to` (possibly this branch itself: deliver it
    /// in-process, as an [`Input::Message`] from this branch).
    Send { to: BranchId, body: BranchBody },
    /// Tell the teller request `ticket` where transfer `id` stands: a final state, or
    /// `Unknown` when the machine did not take it (too many in flight: nothing was
    /// recorded and nothing will happen, so the teller may send it again).
    Reply {
        ticket: Ticket,
        id: TransferId,
        state: TransferState,
    },
}

impl Command {
    /// True for the commands a driver runs against the `Shard`.
    pub fn is_storage(&self) -> bool {
        !matches!(self, Command::Send { .. } | Command::Reply { .. })
    }
}
