//! The branch-to-branch two-phase-commit protocol: prepare, vote, decision, ack and
//! status, every one of them a batch of per-transfer items.
//!
//! A [`BranchMessage`] is always sent inside a [`crate::Signed`] envelope. It names its
//! recipient (so a message signed for one branch cannot be replayed to another) and an
//! expiry (so an old captured envelope is refused). Each item carries its transfer id,
//! and every item is idempotent at the receiver: a repeat is answered from the records.

use serde::{Deserialize, Serialize};

use crate::account::AccountNumber;
use crate::ids::{BranchId, TransferId};
use crate::limits::BATCH_TRANSFERS_MAX;
use crate::money::Amount;
use crate::refusal::Refusal;

/// What a client asked for: move `amount` from `from` to `to`, once, under `id`.
/// Its content hash (see the store) is what "same id, different content" compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TransferSpec {
    pub id: TransferId,
    #[cfg_attr(test, proptest(strategy = "crate::account::tests::any_account()"))]
    pub from: AccountNumber,
    #[cfg_attr(test, proptest(strategy = "crate::account::tests::any_account()"))]
    pub to: AccountNumber,
    pub amount: Amount,
}

impl TransferSpec {
    /// The branches whose accounts this transfer touches: debit branch first, and the
    /// credit branch if it is a different one.
    pub fn participants(&self) -> Vec<BranchId> {
        let (d, c) = (self.from.branch(), self.to.branch());
        if d == c { vec![d] } else { vec![d, c] }
    }

    /// Refuses a transfer no branch should ever prepare: same account or a bad amount.
    pub fn validate(&self) -> Result<(), Refusal> {
        if self.from == self.to {
            return Err(Refusal::SameAccount);
        }
        self.amount
            .validate_movable()
            .map(|_| ())
            .map_err(|_| Refusal::InvalidAmount)
    }
}

/// Ask a participant to prepare its legs of `transfer`: hold the debit if it owns
/// `from`, record a pending credit if it owns `to`. Refused after `deadline_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PrepareItem {
    pub transfer: TransferSpec,
    /// Milliseconds since the Unix epoch after which the participant must not vote yes.
    pub deadline_ms: u64,
}

/// A participant's vote on one transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Vote {
    /// The legs are durably held; the participant may no longer decide alone.
    Yes,
    /// The participant refused; nothing is held.
    No(Refusal),
}

/// The coordinator's decision on one transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Decision {
    Commit,
    Abort,
}

/// What a coordinator knows of a transfer when a participant asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum TransferStatus {
    /// Decided (an unknown transfer is presumed aborted and answered `Abort`).
    Decided(Decision),
    /// Still collecting votes before its deadline: ask again later.
    Pending,
}

/// One transfer's vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct VoteItem {
    pub id: TransferId,
    pub vote: Vote,
}

/// One transfer's decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DecisionItem {
    pub id: TransferId,
    pub decision: Decision,
}

/// One transfer's status, answering a status query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct StatusItem {
    pub id: TransferId,
    pub status: TransferStatus,
}

/// The batches a branch sends another. Each item has its own outcome: a `No` for one
/// transfer never aborts another in the same batch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum BranchBody {
    /// Coordinator to participant.
    Prepare(Vec<PrepareItem>),
    /// Participant to coordinator.
    Votes(Vec<VoteItem>),
    /// Coordinator to participant.
    Decisions(Vec<DecisionItem>),
    /// Participant to coordinator: these decisions are durably applied.
    Acks(Vec<TransferId>),
    /// Participant to coordinator: what did you decide for these?
    StatusQuery(Vec<TransferId>),
    /// Coordinator to participant.
    StatusAnswer(Vec<StatusItem>),
    /// Several of the kinds above for one branch in one envelope (one signature), as a
    /// branch that coordinates some transfers and takes part in others has for a peer.
    /// Canonical: at least two kinds non-empty, else it is sent as that one kind.
    Several(Bundle),
}

/// The items of each kind in a [`BranchBody::Several`], acted on in this order.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Bundle {
    pub prepare: Vec<PrepareItem>,
    pub votes: Vec<VoteItem>,
    pub decisions: Vec<DecisionItem>,
    pub acks: Vec<TransferId>,
    pub status_query: Vec<TransferId>,
    pub status_answer: Vec<StatusItem>,
}

impl Bundle {
    fn add(&mut self, body: BranchBody) {
        match body {
            BranchBody::Prepare(v) => put(&mut self.prepare, v),
            BranchBody::Votes(v) => put(&mut self.votes, v),
            BranchBody::Decisions(v) => put(&mut self.decisions, v),
            BranchBody::Acks(v) => put(&mut self.acks, v),
            BranchBody::StatusQuery(v) => put(&mut self.status_query, v),
            BranchBody::StatusAnswer(v) => put(&mut self.status_answer, v),
            BranchBody::Several(b) => {
                put(&mut self.prepare, b.prepare);
                put(&mut self.votes, b.votes);
                put(&mut self.decisions, b.decisions);
                put(&mut self.acks, b.acks);
                put(&mut self.status_query, b.status_query);
                put(&mut self.status_answer, b.status_answer);
            }
        }
    }

    /// The number of items of each kind, in order.
    fn lens(&self) -> [usize; 6] {
        [
            self.prepare.len(),
            self.votes.len(),
            self.decisions.len(),
            self.acks.len(),
            self.status_query.len(),
            self.status_answer.len(),
        ]
    }

    fn kinds(&self) -> usize {
        self.lens().iter().filter(|n| **n > 0).count()
    }

    /// The non-empty kinds, each as its own body, in order.
    fn parts(self) -> Vec<BranchBody> {
        let parts = [
            BranchBody::Prepare(self.prepare),
            BranchBody::Votes(self.votes),
            BranchBody::Decisions(self.decisions),
            BranchBody::Acks(self.acks),
            BranchBody::StatusQuery(self.status_query),
            BranchBody::StatusAnswer(self.status_answer),
        ];
        parts.into_iter().filter(|p| !p.is_empty()).collect()
    }

    /// The canonical body of these items: one kind alone as itself, several as `Several`.
    fn into_body(self) -> BranchBody {
        match self.kinds() {
            0 | 1 => {
                let mut parts = self.parts();
                parts.pop().unwrap_or(BranchBody::Acks(Vec::new()))
            }
            _ => BranchBody::Several(self),
        }
    }
}

/// Appends `more` to `items`, moving it whole when `items` is empty (no copy of a large
/// batch merged into nothing).
fn put<T>(items: &mut Vec<T>, more: Vec<T>) {
    if items.is_empty() {
        *items = more;
    } else {
        items.extend(more);
    }
}

/// A signed branch-to-branch message: for whom, until when, and the batch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct BranchMessage {
    /// The only branch that may act on this message.
    pub to: BranchId,
    /// Milliseconds since the Unix epoch after which the message is refused as stale.
    pub expires_at_ms: u64,
    pub body: BranchBody,
}

/// Why a decoded branch message is refused before it is acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("batch is empty")]
    EmptyBatch,
    #[error("batch of {0} items exceeds the limit of {BATCH_TRANSFERS_MAX}")]
    BatchTooLarge(usize),
    #[error("message is addressed to branch {0}")]
    WrongRecipient(BranchId),
    #[error("message expired")]
    Expired,
    #[error("several kinds in one envelope, but fewer than two of them non-empty")]
    NotCanonical,
}

impl BranchBody {
    /// Number of items in the batch.
    pub fn len(&self) -> usize {
        match self {
            BranchBody::Prepare(v) => v.len(),
            BranchBody::Votes(v) => v.len(),
            BranchBody::Decisions(v) => v.len(),
            BranchBody::Acks(v) | BranchBody::StatusQuery(v) => v.len(),
            BranchBody::StatusAnswer(v) => v.len(),
            BranchBody::Several(b) => b.lens().iter().sum(),
        }
    }

    /// Each kind as its own body, in the order they are acted on: a `Several` split into
    /// its non-empty kinds; any other body alone.
    pub fn parts(self) -> Vec<BranchBody> {
        match self {
            BranchBody::Several(b) => b.parts(),
            one => vec![one],
        }
    }

    /// The prepare items in this body, of any shape.
    pub fn prepare_items(&self) -> &[PrepareItem] {
        match self {
            BranchBody::Prepare(v) => v,
            BranchBody::Several(b) => &b.prepare,
            _ => &[],
        }
    }

    /// The votes in this body, of any shape.
    pub fn vote_items(&self) -> &[VoteItem] {
        match self {
            BranchBody::Votes(v) => v,
            BranchBody::Several(b) => &b.votes,
            _ => &[],
        }
    }

    /// The decisions in this body, of any shape.
    pub fn decision_items(&self) -> &[DecisionItem] {
        match self {
            BranchBody::Decisions(v) => v,
            BranchBody::Several(b) => &b.decisions,
            _ => &[],
        }
    }

    /// The status answers in this body, of any shape.
    pub fn answer_items(&self) -> &[StatusItem] {
        match self {
            BranchBody::StatusAnswer(v) => v,
            BranchBody::Several(b) => &b.status_answer,
            _ => &[],
        }
    }

    /// True when the batch has no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `other`'s items: to the same kind's, or as another kind of a `Several`.
    /// The caller keeps the result within `BATCH_TRANSFERS_MAX`.
    pub fn merge(&mut self, other: BranchBody) {
        let mut bundle = Bundle::default();
        bundle.add(std::mem::replace(self, BranchBody::Acks(Vec::new())));
        bundle.add(other);
        *self = bundle.into_body();
    }
}

impl BranchMessage {
    /// Checks what can be checked without records: recipient, expiry and batch size.
    /// `now_ms` is passed in because `wire` reads no clock.
    pub fn check_shape(&self, me: BranchId, now_ms: u64) -> Result<(), ShapeError> {
        if self.to != me {
            return Err(ShapeError::WrongRecipient(self.to));
        }
        if now_ms > self.expires_at_ms {
            return Err(ShapeError::Expired);
        }
        if let BranchBody::Several(b) = &self.body
            && b.kinds() < 2
        {
            return Err(ShapeError::NotCanonical);
        }
        match self.body.len() {
            0 => Err(ShapeError::EmptyBatch),
            n if n > BATCH_TRANSFERS_MAX => Err(ShapeError::BatchTooLarge(n)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: usize, to: u16, expires_at_ms: u64) -> BranchMessage {
        BranchMessage {
            to: BranchId(to),
            expires_at_ms,
            body: BranchBody::Acks((0..n as u128).map(TransferId).collect()),
        }
    }

    #[test]
    fn merge_appends_the_same_kind_and_bundles_other_kinds() {
        let mut acks = BranchBody::Acks(vec![TransferId(1)]);
        acks.merge(BranchBody::Acks(vec![TransferId(2)]));
        assert_eq!(acks, BranchBody::Acks(vec![TransferId(1), TransferId(2)]));
        acks.merge(BranchBody::StatusQuery(vec![TransferId(3)]));
        acks.merge(BranchBody::Acks(vec![TransferId(4)]));
        assert_eq!(acks.len(), 4);
        let ids = |v: &[u128]| v.iter().map(|i| TransferId(*i)).collect::<Vec<_>>();
        assert_eq!(
            acks.clone().parts(),
            vec![
                BranchBody::Acks(ids(&[1, 2, 4])),
                BranchBody::StatusQuery(ids(&[3]))
            ]
        );
        // One kind alone in a `Several` is refused: it has one canonical form.
        let lone = BranchMessage {
            to: BranchId(2),
            expires_at_ms: 100,
            body: BranchBody::Several(Bundle {
                acks: ids(&[1]),
                ..Bundle::default()
            }),
        };
        assert_eq!(
            lone.check_shape(BranchId(2), 0),
            Err(ShapeError::NotCanonical)
        );
        let two = BranchMessage { body: acks, ..lone };
        assert_eq!(two.check_shape(BranchId(2), 0), Ok(()));
        // The batch limit counts the items of every kind together.
        let mut full = BranchBody::Acks((0..BATCH_TRANSFERS_MAX as u128).map(TransferId).collect());
        full.merge(BranchBody::StatusQuery(ids(&[1])));
        let over = BranchMessage { body: full, ..two };
        assert_eq!(
            over.check_shape(BranchId(2), 0),
            Err(ShapeError::BatchTooLarge(BATCH_TRANSFERS_MAX + 1))
        );
    }

    #[test]
    fn shape_checks() {
        let me = BranchId(2);
        assert_eq!(msg(1, 2, 100).check_shape(me, 100), Ok(()));
        assert_eq!(msg(BATCH_TRANSFERS_MAX, 2, 100).check_shape(me, 0), Ok(()));
        assert_eq!(
            msg(0, 2, 100).check_shape(me, 0),
            Err(ShapeError::EmptyBatch)
        );
        assert_eq!(
            msg(BATCH_TRANSFERS_MAX + 1, 2, 100).check_shape(me, 0),
            Err(ShapeError::BatchTooLarge(BATCH_TRANSFERS_MAX + 1))
        );
        assert_eq!(
            msg(1, 3, 100).check_shape(me, 0),
            Err(ShapeError::WrongRecipient(BranchId(3)))
        );
        assert_eq!(
            msg(1, 2, 100).check_shape(me, 101),
            Err(ShapeError::Expired)
        );
    }

    #[test]
    fn transfer_validation() {
        let a = AccountNumber::new(BranchId(1), 1).expect("valid");
        let b = AccountNumber::new(BranchId(2), 1).expect("valid");
        let t = |from, to, minor| TransferSpec {
            id: TransferId(1),
            from,
            to,
            amount: Amount::from_minor(minor).expect("non-negative"),
        };
        assert_eq!(t(a, b, 5).validate(), Ok(()));
        assert_eq!(t(a, a, 5).validate(), Err(Refusal::SameAccount));
        assert_eq!(t(a, b, 0).validate(), Err(Refusal::InvalidAmount));
        assert_eq!(t(a, b, 5).participants(), vec![BranchId(1), BranchId(2)]);
        let a2 = AccountNumber::new(BranchId(1), 2).expect("valid");
        assert_eq!(t(a, a2, 5).participants(), vec![BranchId(1)]);
    }
}
