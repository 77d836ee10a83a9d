//! What an admin sees when tracing one transfer across branches (`teller-cli admin
//! trace ID`), listing what is stuck (`admin in-doubt`), or reconciling branches
//! (`admin reconcile`): each branch's own records, read as they are, with the signed
//! evidence it keeps and whether each signature verified against the network file.

use serde::{Deserialize, Serialize};

use crate::entries::EntryView;
use crate::ids::{BranchId, TransferId};
use crate::money::Amount;
use crate::twopc::{Decision, TransferSpec, Vote};

/// A transfer as its coordinator recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct CoordinatorView {
    pub spec: TransferSpec,
    /// `None` while votes are awaited.
    pub decision: Option<Decision>,
    /// True once every participant acknowledged the decision.
    pub ended: bool,
    pub deadline_ms: u64,
}

/// A transfer as one participant recorded its leg.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct LegView {
    pub coordinator: BranchId,
    pub vote: Option<Vote>,
    pub decision: Option<Decision>,
    pub deadline_ms: u64,
}

/// One signed 2PC message a branch keeps as evidence for the transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EvidenceView {
    /// prepare, vote or decision.
    pub what: String,
    pub signer: BranchId,
    /// Whether the signature verified against the signer's listed key.
    pub verified: bool,
    /// When the message stopped being valid (it was sent a message lifetime before).
    pub expires_at_ms: u64,
}

/// A deposit, withdrawal or local transfer as its branch recorded it by id (one step,
/// no 2PC): refused ones too, which leave no ledger line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct MovementView {
    /// The accounts it touched: where money leaves, then where it arrives.
    #[cfg_attr(
        test,
        proptest(
            strategy = "proptest::collection::vec(crate::account::tests::any_account(), 0..3)"
        )
    )]
    pub accounts: Vec<crate::AccountNumber>,
    pub state: crate::entries::TransferState,
    pub at_ms: u64,
}

/// Everything one branch records of a transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct BranchTrace {
    pub branch: BranchId,
    pub coordinated: Option<CoordinatorView>,
    pub leg: Option<LegView>,
    /// The one-step record of the id, if it is a deposit, withdrawal or local transfer.
    pub movement: Option<MovementView>,
    pub evidence: Vec<EvidenceView>,
    pub ledger: Vec<EntryView>,
}

impl BranchTrace {
    /// True when this branch has no record of the id at all.
    pub fn is_empty(&self) -> bool {
        self.coordinated.is_none()
            && self.leg.is_none()
            && self.movement.is_none()
            && self.ledger.is_empty()
    }
}

/// Why a transfer is stuck at a branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum StuckRole {
    /// This branch voted yes and waits for the coordinator's decision.
    AwaitingDecision,
    /// This branch coordinates and waits for votes.
    AwaitingVotes,
    /// This branch decided and waits for acknowledgements.
    AwaitingAcks,
}

/// One transfer not finished at one branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct StuckView {
    pub branch: BranchId,
    pub id: TransferId,
    pub role: StuckRole,
    /// The branches it waits on.
    pub waiting_on: Vec<BranchId>,
    pub amount: Option<Amount>,
    pub deadline_ms: u64,
}

/// Most transfer ids one statement lists, over all its flows (they only name the
/// transfers behind a disagreement); the count, total and digest of every flow always
/// cover every transfer.
pub const STATEMENT_IDS_MAX: usize = 4_000;

/// Committed cross-branch money one way between this branch and a peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub count: u64,
    pub total_minor: i64,
    /// SHA-256 over every transfer of the flow in id order, each as its 16 id bytes
    /// and its amount (8 bytes, big-endian): two flows with the same digest list the
    /// same transfers with the same amounts, however many there are. All zeros for a
    /// flow of no transfers.
    pub digest: [u8; 32],
    /// The transfers, by id, with their amounts in minor units (the lowest ids, at most
    /// [`STATEMENT_IDS_MAX`] over the statement; `truncated` says when there were more).
    pub ids: Vec<(TransferId, i64)>,
    pub truncated: bool,
}

/// A branch's position against one other branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub peer: BranchId,
    /// Money that left this branch for the peer (debits here).
    pub sent: Flow,
    /// Money that arrived here from the peer (credits here).
    pub received: Flow,
}

/// What a branch signs for `admin reconcile`: its committed cross-branch debits and
/// credits per other branch, for the transfers begun at or before `cut_ms`. A
/// transfer's begin time is its deadline (set by the coordinator in its prepare and
/// recorded the same at both participants) less [`crate::limits::PREPARE_TIMEOUT_MS`],
/// so both sides of a transfer agree on whether it is inside the cut, whatever its id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub branch: BranchId,
    pub cut_ms: u64,
    pub positions: Vec<Position>,
}
