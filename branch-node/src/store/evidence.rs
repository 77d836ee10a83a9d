//! What a stored signed envelope proves: who signed it (checked against the network
//! file's keys) and whether it commits, or votes yes on, a transfer. Read by `admin
//! trace` here, by `branch-node verify` and by the scenarios' checker.

use client::network_file::NetworkFile;
use wire::twopc::{BranchBody, BranchMessage, Decision, TransferStatus, Vote};
use wire::{BranchId, Signed, TransferId};

/// The signer and the message of a stored envelope, if its signature verifies against
/// the network file's key for the branch it names.
pub fn signed_message(network: &NetworkFile, bytes: &[u8]) -> Option<(BranchId, BranchMessage)> {
    let signed: Signed<BranchMessage> = wire::decode(bytes).ok()?;
    let branch = network.get(signed.signer)?;
    let message = branch
        .verify_in_domain(&signed, wire::signed::SIGNING_DOMAIN)
        .ok()?;
    Some((signed.signer, message))
}

/// Whether a coordinator's signed body says `id` committed: a decision, or the answer
/// to a status query.
pub fn commits(body: &BranchBody, id: TransferId) -> bool {
    let decided = body
        .decision_items()
        .iter()
        .any(|i| i.id == id && i.decision == Decision::Commit);
    decided
        || body
            .answer_items()
            .iter()
            .any(|i| i.id == id && i.status == TransferStatus::Decided(Decision::Commit))
}

/// Whether a signed body is its signer's yes vote on `id`.
pub fn votes_yes(body: &BranchBody, id: TransferId) -> bool {
    body.vote_items()
        .iter()
        .any(|i| i.id == id && i.vote == Vote::Yes)
}
