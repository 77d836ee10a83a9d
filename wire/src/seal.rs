//! A teller's seal: its own ed25519 signature over one request, so a branch that passes
//! the request on can delay or drop it but never make or change one.
//!
//! The teller's key is the one its PeerId embeds (tellers use ed25519 identities, like
//! branches), so the branch that runs the request checks the seal against the teller
//! the request is for and needs no other list of keys. A seal covers, in order: the
//! domain tag [`TELLER_DOMAIN`], the protocol version, the branch the request is for,
//! a nonce, the expiry and the postcard bytes of `(session, op)`. The branch takes each
//! (session, nonce) once while the seal is live, and no seal after its expiry, which is
//! at most [`crate::limits::SEAL_HORIZON_MS`] ahead on that branch's clock: a request
//! held back by a branch in between is void once that time has passed.

use ed25519_dalek::{Signature, Signer};
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::ids::BranchId;
use crate::signed::{BranchKey, BranchPublicKey, PROTOCOL_VERSION};
use crate::teller::{SessionToken, TellerOp};

/// Domain-separation tag of a teller's seal: it can never pass for a branch's signature.
pub const TELLER_DOMAIN: &[u8] = b"bankmate/teller-request";

/// A teller's signature over one request and what makes it usable once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Seal {
    /// The branch that runs the request: where its session was issued.
    pub to: BranchId,
    /// Random per request: a branch takes one (session, nonce) once.
    pub nonce: u64,
    /// After this time (on the clock of branch `to`, as the teller estimates it) the
    /// request is void. A teller seals with exactly [`crate::limits::SEAL_HORIZON_MS`]
    /// ahead, so the expiry also says when the seal was made: a branch refuses (as
    /// "not confirmed", to be sealed again) one made before it started serving.
    pub expires_at_ms: u64,
    /// 64 bytes when well formed; kept variable so a short one is a clear error.
    pub signature: Vec<u8>,
}

/// Why a seal does not hold for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the request carries no seal")]
    Missing,
    #[error("the teller's peer id does not embed an ed25519 key")]
    NotEd25519,
    #[error("the seal's signature does not verify")]
    BadSignature,
    #[error("the request does not encode")]
    Encoding,
}

fn sealed_bytes(
    seal: &Seal,
    session: Option<SessionToken>,
    op: &TellerOp,
) -> Result<Vec<u8>, CodecError> {
    let body = codec::encode(&(session, op))?;
    let mut m = Vec::with_capacity(TELLER_DOMAIN.len() + 20 + body.len());
    m.extend_from_slice(TELLER_DOMAIN);
    m.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    m.extend_from_slice(&seal.to.0.to_be_bytes());
    m.extend_from_slice(&seal.nonce.to_be_bytes());
    m.extend_from_slice(&seal.expires_at_ms.to_be_bytes());
    m.extend_from_slice(&body);
    Ok(m)
}

impl Seal {
    /// The seal of teller `key` over `(session, op)`, for branch `to`.
    pub fn make(
        key: &BranchKey,
        (to, nonce, expires_at_ms): (BranchId, u64, u64),
        session: Option<SessionToken>,
        op: &TellerOp,
    ) -> Result<Seal, CodecError> {
        let mut seal = Seal {
            to,
            nonce,
            expires_at_ms,
            signature: Vec::new(),
        };
        let bytes = sealed_bytes(&seal, session, op)?;
        seal.signature = key.signing_key().sign(&bytes).to_bytes().to_vec();
        Ok(seal)
    }

    /// Whether this seal is `teller`'s signature over `(session, op)`. The caller checks
    /// the rest: that `to` is itself, the expiry, and that the nonce is new.
    pub fn check(
        &self,
        teller: &PeerId,
        session: Option<SessionToken>,
        op: &TellerOp,
    ) -> Result<(), SealError> {
        let key = BranchPublicKey::from_peer_id(teller).map_err(|_| SealError::NotEd25519)?;
        let signature: &[u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| SealError::BadSignature)?;
        let bytes = sealed_bytes(self, session, op).map_err(|_| SealError::Encoding)?;
        key.verifying_key()
            .verify_strict(&bytes, &Signature::from_bytes(signature))
            .map_err(|_| SealError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teller::SessionToken;

    fn op() -> TellerOp {
        TellerOp::Logout
    }

    #[test]
    fn a_seal_holds_for_its_request_only() {
        let key = BranchKey::from_secret([7; 32]);
        let session = Some(SessionToken(42));
        let seal = Seal::make(&key, (BranchId(1), 9, 1_000), session, &op()).expect("seals");
        assert_eq!(seal.check(&key.peer_id(), session, &op()), Ok(()));
        let other = BranchKey::from_secret([8; 32]).peer_id();
        assert_eq!(
            seal.check(&other, session, &op()),
            Err(SealError::BadSignature)
        );
        let changed = TellerOp::TransferStatus {
            id: crate::TransferId(1),
        };
        assert_eq!(
            seal.check(&key.peer_id(), session, &changed),
            Err(SealError::BadSignature)
        );
        assert_eq!(
            seal.check(&key.peer_id(), Some(SessionToken(43)), &op()),
            Err(SealError::BadSignature)
        );
        for tamper in [
            Seal {
                to: BranchId(2),
                ..seal.clone()
            },
            Seal {
                nonce: 10,
                ..seal.clone()
            },
            Seal {
                expires_at_ms: 2_000,
                ..seal.clone()
            },
            Seal {
                signature: vec![0; 10],
                ..seal.clone()
            },
        ] {
            assert_eq!(
                tamper.check(&key.peer_id(), session, &op()),
                Err(SealError::BadSignature)
            );
        }
    }
}
