//! The `Shard` trait: what the 2PC roles ask of a branch's store, and its durability contract.
//!
//! Every method that changes anything is **atomic and durable when it returns `Ok`**: all
//! of its effects are on disk (SQLite: one transaction, `synchronous=FULL`) or none are.
//! A batch is one such step; each item in it still gets its own outcome, and a refusal of
//! one item never undoes another. The state machines never call a `Shard`: they emit a
//! [`crate::Command`], the driver calls the matching method with [`crate::execute`], and
//! the result comes back as an [`crate::Input`]. So anything a machine sends after a
//! storage command was durable before it was sent.
//!
//! The records are kept per role, keyed by transfer id:
//! - **coordinated**: transfers this branch coordinates (begun, decided, ended);
//! - **participant**: this branch's legs of cross-branch transfers (vote, decision);
//! - **local**: transfers with both accounts here, done in one step without 2PC.
//!
//! An id names one transfer: the same id with different content is refused `IdConflict`.

use std::sync::Arc;

use wire::teller::TransferState;
use wire::twopc::{Decision, DecisionItem, PrepareItem, TransferSpec, Vote};
use wire::{BranchId, Refusal, TransferId};

/// The encoded signed envelope an item arrived in, kept with its record as proof.
/// `None` where there is no envelope (the simulation, or a test).
pub type Evidence = Option<Arc<[u8]>>;

/// A transfer a coordinator starts: the client's request and its prepare deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct BeginItem {
    pub spec: TransferSpec,
    pub deadline_ms: u64,
}

/// What [`Shard::begin`] found for one transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BeginOutcome {
    /// Recorded as begun and undecided, with this branch's own legs prepared in the
    /// same durable step: here is their vote (`None` when it owns neither account).
    New(Option<Vote>),
    /// This id was begun before with the same content; here is where it stands.
    Existing(TransferState),
    /// This id is already used for a different transfer (here or as a local transfer).
    Conflict,
}

/// A coordinator's decision, with the reason for an abort and, for a commit, the
/// participants' signed yes votes (the proof that they agreed).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DecisionRecord {
    pub id: TransferId,
    pub decision: Decision,
    /// Why it aborted; `None` for a commit.
    pub reason: Option<Refusal>,
    pub votes: Vec<Evidence>,
}

/// A coordinated transfer that is not yet ended, read back at start.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CoordinatedRecord {
    pub spec: TransferSpec,
    pub deadline_ms: u64,
    /// `None`: begun, never decided. `Some`: decided, not every participant acked.
    pub decision: Option<Decision>,
    /// Why it aborted, when it did.
    pub reason: Option<Refusal>,
}

/// A leg this branch voted yes on and has no decision for, read back at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InDoubtRecord {
    pub id: TransferId,
    pub coordinator: BranchId,
    pub deadline_ms: u64,
}

/// What [`Shard::apply`] did with one decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ApplyOutcome {
    /// Durably applied now (a commit moved money; an abort released holds).
    Applied,
    /// The same decision was applied before: nothing changed.
    AlreadyApplied,
    /// Refused, nothing changed: the message contradicts the records (see the reason).
    Refused(ApplyRefusal),
}

/// Why a decision was refused. In a correct network none of these happens; each one is
/// logged as a protocol violation by the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ApplyRefusal {
    #[error("commit for a transfer this branch never prepared")]
    UnknownTransfer,
    #[error("decision from a branch that is not the transfer's coordinator")]
    WrongCoordinator,
    #[error("decision contradicts the recorded vote or decision")]
    Contradiction,
}

/// A failure of the store itself (disk, corruption), or a caller breaking the contract.
/// Business refusals are never errors: they are `Vote::No`, `Aborted` or `Refused` values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("store failure: {0}")]
    Io(StoreFailure),
    /// The store answered outside its contract (say, an answer that does not fit the
    /// command): a bug, never a business outcome.
    #[error("the store broke its contract: {0}")]
    Defensive(String),
    #[error("transfer {0} already has a different decision")]
    DecisionConflict(TransferId),
    #[error("transfer {0} is not a transfer this branch coordinates")]
    NotCoordinated(TransferId),
}

/// A store's own error, kept whole (its type and sources) and cheap to clone: what
/// went wrong under a [`ShardError::Io`].
#[derive(Clone, Debug)]
pub struct StoreFailure(pub std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl StoreFailure {
    /// Wraps a store's error.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> StoreFailure {
        StoreFailure(std::sync::Arc::new(e))
    }
}

impl std::fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Two failures are equal when they are the same one, or say the same.
impl PartialEq for StoreFailure {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl Eq for StoreFailure {}

/// A branch's store, as the 2PC roles see it. See the module docs for the contract.
pub trait Shard {
    /// The branch this store belongs to.
    fn branch(&self) -> BranchId;

    // Coordinator role.

    /// Durably records each new transfer as begun (undecided) and, where this branch
    /// owns one of its accounts, prepares its own legs (as [`Shard::prepare`] would for a
    /// prepare from this branch, at `now_ms`, with no envelope), in one durable step; or
    /// reports what an earlier use of the id found, changing nothing. Must be durable
    /// before any `Prepare` is sent.
    fn begin(&mut self, items: &[BeginItem], now_ms: u64) -> Result<Vec<BeginOutcome>, ShardError>;

    /// Durably records decisions for begun transfers and, in the same durable step,
    /// applies each new one to this branch's own leg of it, if it has one (as
    /// [`Shard::apply`] would for a decision from this branch, with no envelope). Must be
    /// durable before any decision is sent or a teller is told. Recording the same
    /// decision again is a no-op; a different one is `DecisionConflict` and changes
    /// nothing.
    fn record_decisions(&mut self, items: &[DecisionRecord]) -> Result<(), ShardError>;

    /// Marks decided transfers ended (every participant acked). Need not be forced to
    /// disk: losing it only makes the coordinator re-send a decision after a restart.
    fn mark_ended(&mut self, ids: &[TransferId]) -> Result<(), ShardError>;

    /// The decision recorded for each id, `None` when there is none (presumed abort).
    fn read_decisions(&self, ids: &[TransferId]) -> Result<Vec<Option<Decision>>, ShardError>;

    /// Every coordinated transfer that is not ended, for recovery at start.
    fn unfinished_coordinated(&self) -> Result<Vec<CoordinatedRecord>, ShardError>;

    // Participant role.

    /// Prepares this branch's legs of each transfer, coordinated by `coordinator`, in one
    /// durable step, and returns one vote per item, in order:
    /// - an id seen before: the recorded vote (`No(IdConflict)` if the content differs);
    /// - `now_ms` past the item's deadline: `No(Expired)`;
    /// - otherwise the legs are checked (accounts here, open, funds available on the
    ///   debit) and, on success, the debit is held and/or the credit recorded pending.
    ///
    /// Every vote is recorded, so a repeat gets the same answer.
    fn prepare(
        &mut self,
        coordinator: BranchId,
        items: &[PrepareItem],
        now_ms: u64,
        evidence: &Evidence,
    ) -> Result<Vec<Vote>, ShardError>;

    /// Applies decisions from `coordinator` in one durable step, one outcome per item: a
    /// commit turns the hold into a debit and the pending credit into a credit (each a
    /// ledger entry); an abort releases them. An abort for an unknown id is recorded so a
    /// late prepare for it is refused. Repeats change nothing.
    fn apply(
        &mut self,
        coordinator: BranchId,
        items: &[DecisionItem],
        evidence: &Evidence,
    ) -> Result<Vec<ApplyOutcome>, ShardError>;

    /// Every leg this branch voted yes on without a decision yet, for recovery.
    fn in_doubt(&self) -> Result<Vec<InDoubtRecord>, ShardError>;

    // Local transfers.

    /// Moves money between two accounts of this branch, each item one atomic step
    /// (all in one durable batch), deduplicated by id: `Committed` or `Aborted(reason)`,
    /// and a repeat of the id gets the first outcome.
    fn transfer_local(&mut self, items: &[TransferSpec]) -> Result<Vec<TransferState>, ShardError>;

    /// Where a transfer stands at this branch, from any role's records: the outcome
    /// where this branch coordinated it or did it in one step; for a leg it only took
    /// part in, `Committed` once the commit is applied and `Pending` otherwise (the
    /// reason of an abort is the coordinator's to tell); `Unknown` without a record.
    fn transfer_state(&self, id: TransferId) -> Result<TransferState, ShardError>;
}
