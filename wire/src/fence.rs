//! The fence: what makes one copy of a branch the only one that moves money.
//!
//! A branch's store holds its **epoch**, raised by every restore above any the network
//! has seen, and each process that serves it has an **instance** (a random number per
//! start; a replicated branch's Raft group is one instance, 0). A serving branch sends
//! every other branch (its *witnesses*) a signed [`Claim`] every second; a witness
//! remembers the newest epoch and the live instance of each branch, refuses claims (and
//! 2PC envelopes) from an older epoch, and refuses a second live instance. A branch
//! moves money only while a witness granted its claim within the lease
//! ([`crate::limits::FENCE_LEASE_MS`] unless the network file sets another); a new copy
//! takes over only once the old one's lease has run out everywhere
//! ([`crate::limits::fence_grace_ms`]). A restore asks the
//! witnesses first ([`ClaimKind::Probe`]) and is refused while the branch is served.
//!
//! Claims also carry the branch's [`Head`]: where its books stood. After a lost disk,
//! the newest head the witnesses hold says what the restore could not bring back.

use serde::{Deserialize, Serialize};

use crate::ids::{BranchId, TransferId};
use crate::twopc::TransferSpec;

/// The signing domain of fence claims: a claim can never pass for a 2PC message or a
/// statement, nor the other way round.
pub const FENCE_DOMAIN: &[u8] = b"bankmate/branch-fence";

/// A count of ledger entries and their sum, in minor units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Tally {
    pub count: u64,
    pub total_minor: i64,
}

/// Where a branch's books stood when it claimed: its ledger's last entry and totals of
/// every entry by kind since the branch began, and its highest account serial.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Head {
    pub ledger_seq: u64,
    pub ledger_hash: [u8; 32],
    pub deposits: Tally,
    pub withdrawals: Tally,
    /// Transfers between two accounts of the branch (counted once, by their debit).
    pub local_transfers: Tally,
    /// Legs of transfers with other branches: money out, money in.
    pub cross_debits: Tally,
    pub cross_credits: Tally,
    pub accounts_max_serial: u32,
    /// The branch's clock when it read this head (Unix milliseconds).
    pub at_ms: u64,
}

/// What a claim asks of a witness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ClaimKind {
    /// The process `instance` serves the branch at the claim's epoch: grant it the lease.
    /// `successor_of` names the instance it replaced in the same data dir on the same
    /// machine (its lock proves that one ended), so no grace period is waited.
    Serve {
        instance: u64,
        successor_of: Option<u64>,
    },
    /// A restore asks how things stand (nothing changes): answered [`ClaimAnswer::State`].
    Probe,
    /// A restore makes the claim's epoch the branch's newest, with no instance serving
    /// it yet: every older copy is fenced from then on.
    Register,
}

/// One claim: signed by the branch (a replica of it) in [`FENCE_DOMAIN`], for one
/// witness, with the time it was made.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Claim {
    pub branch: BranchId,
    /// The only witness that may act on it.
    pub to: BranchId,
    pub epoch: u64,
    pub kind: ClaimKind,
    pub head: Option<Head>,
    /// The branch's clock when it signed (Unix milliseconds); a witness refuses a claim
    /// older than [`crate::limits::FENCE_CLAIM_TTL_MS`] by its own clock.
    pub sent_at_ms: u64,
}

/// A witness's answer to a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum ClaimAnswer {
    /// The claim stands: a `Serve` claim holds the lease from when it was sent.
    Granted,
    /// A newer epoch of the branch exists (a restore): this copy must stop.
    Fenced { newest: u64 },
    /// Another instance of the branch served it `renewed_ms_ago` ago: a second copy
    /// waits, a restore is refused.
    InUse { epoch: u64, renewed_ms_ago: u64 },
    /// How things stand, for a probe: the newest epoch known (0 for none), how long ago
    /// its live instance last renewed (if one may be live), and the newest head.
    State {
        epoch: u64,
        renewed_ms_ago: Option<u64>,
        head: Option<Head>,
    },
    /// The claim is malformed, not for this witness, or too old.
    Refused,
}

/// What one branch holds of a cross-branch transfer with the branch restoring: enough,
/// with signed evidence, for that branch to put back its own leg.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Recovered {
    pub spec: TransferSpec,
    pub deadline_ms: u64,
    /// The transfer's coordinator: the restoring branch (it debited) or the answering one.
    pub coordinator: BranchId,
    pub outcome: RecoveredOutcome,
    /// Why it aborted, as far as the answering branch knows.
    pub reason: Option<crate::refusal::Refusal>,
    /// The page's envelopes (by index) that prove a commit: the restoring branch's own
    /// signed decision or yes vote, kept by the answering branch, and the answering
    /// branch's yes vote or decision, signed for this answer.
    pub evidence: Vec<u32>,
}

/// Where a recovered transfer stands, by the answering branch's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum RecoveredOutcome {
    Committed,
    Aborted,
    /// The answering branch voted yes on the restoring branch's prepare and has no
    /// decision: only the lost disk knew it (the restored branch aborts it).
    InDoubt,
    /// The answering branch coordinates it and has not decided yet: ask again after
    /// its deadline.
    Undecided,
}

/// Where a page of recovered transfers ends: the last one's (deadline in ms, id).
pub type RecoverCursor = (u64, TransferId);

/// A page of recovered transfers in (deadline, id) order, the signed envelopes they
/// point to, and where the next page starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct RecoveredPage {
    pub transfers: Vec<Recovered>,
    /// Encoded `Signed<BranchMessage>` envelopes, each once.
    pub envelopes: Vec<Vec<u8>>,
    pub next: Option<RecoverCursor>,
}

/// Most transfers one page of recovery carries.
pub const RECOVERED_PAGE_MAX: usize = 256;

/// A page stops taking transfers once its kept envelopes pass this many bytes (an
/// envelope may carry a whole batch), well under the message limit.
pub const RECOVERED_PAGE_BYTES_MAX: usize = 512 * 1024;
