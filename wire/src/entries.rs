//! What the ledger shows a teller and where a money id stands: shared by the teller
//! protocol (`teller.rs`, which re-exports them) and by what `admin trace` carries
//! (`trace.rs`), so neither of those needs the other's types.

use serde::{Deserialize, Serialize};

use crate::account::AccountNumber;
use crate::ids::{BranchId, TransferId};
use crate::money::Amount;
use crate::refusal::Refusal;

/// The kind of a ledger entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum EntryKind {
    Deposit,
    Withdrawal,
    TransferDebit,
    TransferCredit,
}

/// One ledger entry as a teller sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EntryView {
    pub branch: BranchId,
    pub seq: u64,
    #[cfg_attr(test, proptest(strategy = "crate::account::tests::any_account()"))]
    pub account: AccountNumber,
    pub kind: EntryKind,
    #[cfg_attr(
        test,
        proptest(strategy = "proptest::option::of(crate::account::tests::any_account())")
    )]
    pub counterparty: Option<AccountNumber>,
    pub amount: Amount,
    pub balance_after: Amount,
    pub transfer_id: TransferId,
    pub at_ms: u64,
}

/// Where a transfer (or deposit or withdrawal) stands. `Committed` and `Aborted` are
/// final and the same from every branch; `Pending` and `Unknown` mean "not known yet".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum TransferState {
    Committed,
    /// Final: recorded so that this id can never apply.
    Aborted(Refusal),
    /// Known here, decision not known here yet: ask again.
    Pending,
    /// This branch has no record of the id (yet). From the id's authority, once nothing
    /// is in flight, it means the request never took effect.
    Unknown,
}

impl TransferState {
    /// True for `Committed` and `Aborted`: the outcome every later answer repeats.
    pub fn is_final(&self) -> bool {
        matches!(self, TransferState::Committed | TransferState::Aborted(_))
    }
}
