//! Checks on every inbound 2PC envelope, in order: it decodes, its signer is a listed
//! branch, that branch is the connected peer, the signature verifies against the listed
//! key, and the message is for this branch, unexpired, with a sane batch. Only then does
//! the engine see it, with the envelope's bytes as evidence.

use libp2p::PeerId;
use wire::link::EnvelopeRefusal;
use wire::twopc::{BranchMessage, ShapeError};
use wire::{BranchId, Signed};

use client::network_file::NetworkFile;

/// Verifies `bytes`, received from `peer`, as a 2PC envelope for branch `me` at `now_ms`.
pub fn verify_envelope(
    network: &NetworkFile,
    me: BranchId,
    peer: &PeerId,
    bytes: &[u8],
    now_ms: u64,
) -> Result<(BranchId, BranchMessage), EnvelopeRefusal> {
    let signed: Signed<BranchMessage> =
        wire::decode(bytes).map_err(|_| EnvelopeRefusal::Malformed)?;
    let signer = network
        .get(signed.signer)
        .ok_or(EnvelopeRefusal::UnknownSigner(signed.signer))?;
    // The connected peer must be one of the signing branch's replicas, and its own key
    // must have signed.
    let replica = signer
        .replica_by_peer(peer)
        .ok_or(EnvelopeRefusal::SignerNotPeer(signed.signer))?;
    let message = signed.verify(&replica.public_key).map_err(|e| match e {
        wire::VerifyError::Payload(_) => EnvelopeRefusal::Malformed,
        _ => EnvelopeRefusal::BadSignature,
    })?;
    message.check_shape(me, now_ms).map_err(|e| match e {
        ShapeError::WrongRecipient(_) => EnvelopeRefusal::WrongRecipient,
        ShapeError::Expired => EnvelopeRefusal::Expired,
        ShapeError::EmptyBatch | ShapeError::BatchTooLarge(_) | ShapeError::NotCanonical => {
            EnvelopeRefusal::BadBatch
        }
    })?;
    if signed.signer != me && debits_here(&message, me) {
        return Err(EnvelopeRefusal::RemoteDebit);
    }
    Ok((signed.signer, message))
}

/// Whether `message` is a prepare that debits an account of branch `me`.
fn debits_here(message: &BranchMessage, me: BranchId) -> bool {
    message
        .body
        .prepare_items()
        .iter()
        .any(|i| i.transfer.from.branch() == me)
}
