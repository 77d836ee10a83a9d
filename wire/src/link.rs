//! The branch-to-branch link protocols: requests and answers that carry signed 2PC
//! envelopes (one protocol) and teller requests forwarded between branches (another).
//!
//! Only branches listed in the network file may speak it; the Noise handshake proves the
//! sender's PeerId. 2PC envelopes are additionally signed, because they are kept as proof.
//! Forwarded requests are not: they are answered, never stored as evidence.

use serde::{Deserialize, Serialize};

use crate::account::AccountNumber;
use crate::fence::RecoverCursor;
use crate::ids::{BranchId, TransferId};
use crate::refusal::Refusal;
use crate::teller::{
    AccountView, EntryView, PageRequest, TellerRequest, TellerResponse, TransferState,
};

/// What one branch asks another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum LinkRequest {
    /// `envelope`: the bytes of a `Signed<BranchMessage>`, kept as they came (they are
    /// the evidence), sent by the copy of its branch at `epoch` (see [`crate::fence`]):
    /// refused once the receiver knows a newer epoch of that branch.
    TwoPc {
        epoch: u64,
        envelope: Vec<u8>,
    },
    Forward(ForwardRequest),
    /// The bytes of a `Signed<fence::Claim>`: the sender's lease, or a restore's probe or
    /// registration. Answered [`LinkResponse::Fence`].
    Fence(Vec<u8>),
}

impl LinkRequest {
    /// A 2PC envelope sent by the copy of its branch at `epoch`.
    pub fn two_pc(epoch: u64, envelope: Vec<u8>) -> LinkRequest {
        LinkRequest::TwoPc { epoch, envelope }
    }
}

/// A request one branch passes to another. `teller` is the PeerId bytes of the teller
/// connected to the asking branch, which the Noise handshake proved to that branch (the
/// receiving branch trusts a listed branch to report it truthfully).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ForwardRequest {
    /// Answer `request` as if `teller` were connected here: its session (or, for a
    /// login, its account) is here. Never forwarded again, and never acted on after
    /// `expires_at_ms` (the asking branch has stopped waiting by then, so a forward
    /// that arrives late cannot take effect after its teller was told "no answer").
    Teller {
        teller: Vec<u8>,
        request: TellerRequest,
        expires_at_ms: u64,
    },
    /// Where transfer `id` stands by this branch's own records as its coordinator (the
    /// id's authority); asked by a participant that cannot tell the final outcome.
    Outcome { id: TransferId },
    /// An admin of the asking branch lists a page of this branch's accounts.
    Accounts { page: crate::teller::AccountsPage },
    /// An admin of the asking branch lists this branch's ledger.
    Transactions {
        page: PageRequest,
        filter: crate::teller::EntryFilter,
    },
    /// An admin of the asking branch traces transfer `id`: this branch's records.
    Trace { id: TransferId },
    /// An admin of the asking branch lists what is not finished here.
    InDoubt,
    /// An admin of the asking branch reconciles: this branch's signed statement.
    Statement { cut_ms: u64 },
    /// The asking branch is being restored from a backup: the transfers with it that
    /// this branch holds with a deadline at or after `since_ms`, in id order after
    /// `after`, each with the signed evidence of its outcome. Answered
    /// [`LinkResponse::Recovered`].
    Recover {
        since_ms: u64,
        after: Option<RecoverCursor>,
    },
    /// A replica of this branch that does not lead it passes on a request of `teller`,
    /// connected there: answer it as if `teller` were connected here (so it may still
    /// be forwarded to another branch). Taken only from this branch's own replicas, and
    /// never acted on after `expires_at_ms`.
    Replica {
        teller: Vec<u8>,
        request: TellerRequest,
        expires_at_ms: u64,
    },
    /// A teller of the asking branch confirms whom a transfer to `account` (an account
    /// of this branch) pays. Answered [`LinkResponse::Payee`], or refused
    /// `account_not_found`.
    Payee {
        #[cfg_attr(test, proptest(strategy = "crate::account::tests::any_account()"))]
        account: AccountNumber,
    },
}

/// The answer to a [`LinkRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum LinkResponse {
    /// The 2PC envelope passed every check and was handed to the protocol.
    Accepted,
    /// The 2PC envelope was refused; nothing was done with it.
    Refused(EnvelopeRefusal),
    Teller(TellerResponse),
    Outcome(TransferState),
    Accounts(Vec<AccountView>),
    Entries {
        entries: Vec<EntryView>,
        next_before: Option<u64>,
    },
    Trace(crate::trace::BranchTrace),
    Stuck(Vec<crate::trace::StuckView>),
    /// An encoded `Signed<Statement>`.
    Statement(Vec<u8>),
    /// The forward itself was refused (for example a request no branch may forward).
    ForwardRefused(Refusal),
    /// This replica of the branch is not its leader (`leader`: the replica it believes
    /// leads, if any); nothing was done with the request.
    NotLeader {
        leader: Option<u64>,
    },
    Fence(crate::fence::ClaimAnswer),
    Recovered(crate::fence::RecoveredPage),
    /// The masked name of an account's owner, and whether it is open.
    Payee {
        name: String,
        open: bool,
    },
}

/// Why a branch refused an envelope or a link request. Nothing in its store changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum EnvelopeRefusal {
    #[error("peer is not a branch in the network file")]
    PeerNotListed,
    #[error("envelope bytes are malformed")]
    Malformed,
    #[error("signer {0} is not in the network file")]
    UnknownSigner(BranchId),
    #[error("signer {0} is not the connected peer")]
    SignerNotPeer(BranchId),
    #[error("signature does not verify")]
    BadSignature,
    #[error("message is addressed to another branch")]
    WrongRecipient,
    #[error("message expired")]
    Expired,
    #[error("batch is empty or too large")]
    BadBatch,
    #[error("link is blocked by the fault switch")]
    LinkBlocked,
    #[error("branch is overloaded; the sender retries")]
    Overloaded,
    /// A prepare from another branch debits an account of this branch. Only the debit
    /// account's branch coordinates a transfer, so no honest branch sends one.
    #[error("prepare debits an account of this branch, which only this branch may coordinate")]
    RemoteDebit,
    /// The sending copy of its branch is out of date: a newer one (a restore) took its
    /// place. It must stop.
    #[error("sender is a fenced copy of its branch: a newer copy serves it")]
    Fenced,
    /// The sender's epoch is newer than any this branch has seen claimed: the sender
    /// claims it first, then sends again.
    #[error("sender's epoch is not yet confirmed here; it sends again")]
    NotConfirmed,
}
