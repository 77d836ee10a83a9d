//! Signed envelopes and branch keys: one ed25519 secret is both a branch's signing key
//! and its libp2p identity, so "who signed" and "who is connected" are one fact.
//!
//! A signature covers, in order: the domain tag [`SIGNING_DOMAIN`], the protocol
//! version [`PROTOCOL_VERSION`] (u16, big-endian), the signer's [`BranchId`] (u16,
//! big-endian) and the postcard payload. The tag keeps these signatures from being
//! valid in any other context; binding the signer keeps an envelope from being
//! relabelled. Verification uses `verify_strict` (no malleable or small-order keys).

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use libp2p_identity::PeerId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::ids::BranchId;

/// Domain-separation tag prefixed to every signed message.
pub const SIGNING_DOMAIN: &[u8] = b"bankmate/branch-2pc";

/// The domain of a branch's signed statement of its position (`admin reconcile`): a
/// statement can never pass for a 2PC message, nor the other way round.
pub const STATEMENT_DOMAIN: &[u8] = b"bankmate/branch-statement";

/// Version of the branch protocol; a message signed for another version does not verify.
pub const PROTOCOL_VERSION: u16 = 1;

/// A branch's secret key. Written to its data dir with mode 0600 by `branch-node init`.
pub struct BranchKey(SigningKey);

impl fmt::Debug for BranchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BranchKey({})", self.public())
    }
}

impl BranchKey {
    /// The key whose secret is `secret` (32 random bytes drawn by the caller).
    pub fn from_secret(secret: [u8; 32]) -> Self {
        BranchKey(SigningKey::from_bytes(&secret))
    }

    /// The 32 secret bytes, for the key file.
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half, as listed in the network file.
    pub fn public(&self) -> BranchPublicKey {
        BranchPublicKey(self.0.verifying_key())
    }

    /// The libp2p identity made from the same secret.
    pub fn libp2p_keypair(&self) -> libp2p_identity::Keypair {
        // ed25519_from_bytes only fails for a length other than 32.
        libp2p_identity::Keypair::ed25519_from_bytes(self.0.to_bytes())
            .unwrap_or_else(|_| unreachable!("32-byte ed25519 secret"))
    }

    /// The PeerId this branch has on the network.
    pub fn peer_id(&self) -> PeerId {
        self.public().peer_id()
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.0
    }
}

/// A branch's public key. Text form: 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BranchPublicKey(VerifyingKey);

/// Why a text, bytes or a PeerId is not a branch public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    #[error("public key must be 64 hex digits")]
    Format,
    #[error("bytes are not an ed25519 public key")]
    NotOnCurve,
    #[error("peer id does not embed an ed25519 public key")]
    NotEd25519PeerId,
}

impl BranchPublicKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, PublicKeyError> {
        VerifyingKey::from_bytes(&bytes)
            .map(BranchPublicKey)
            .map_err(|_| PublicKeyError::NotOnCurve)
    }

    /// The 32 bytes of the key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub(crate) fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }

    /// The PeerId of the libp2p identity with this key.
    pub fn peer_id(&self) -> PeerId {
        let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(&self.0.to_bytes())
            .unwrap_or_else(|_| unreachable!("a valid verifying key is a valid libp2p key"));
        libp2p_identity::PublicKey::from(key).to_peer_id()
    }

    /// Recovers the key embedded in an ed25519 PeerId (an identity multihash of the
    /// protobuf-encoded key), so `/p2p/<peer id>` alone pins a branch's key.
    pub fn from_peer_id(peer: &PeerId) -> Result<Self, PublicKeyError> {
        let bytes = peer.to_bytes();
        // Identity multihash: code 0x00, one-byte length, then the key.
        let body = match bytes.as_slice() {
            [0x00, len, body @ ..] if usize::from(*len) == body.len() => body,
            _ => return Err(PublicKeyError::NotEd25519PeerId),
        };
        let public = libp2p_identity::PublicKey::try_decode_protobuf(body)
            .map_err(|_| PublicKeyError::NotEd25519PeerId)?;
        let ed = public
            .try_into_ed25519()
            .map_err(|_| PublicKeyError::NotEd25519PeerId)?;
        BranchPublicKey::from_bytes(ed.to_bytes())
    }
}

impl fmt::Display for BranchPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0.to_bytes()))
    }
}

impl fmt::Debug for BranchPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BranchPublicKey({self})")
    }
}

impl FromStr for BranchPublicKey {
    type Err = PublicKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| PublicKeyError::Format)?;
        BranchPublicKey::from_bytes(bytes)
    }
}

/// Why a signed envelope was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("signature is {0} bytes, not 64")]
    SignatureLength(usize),
    #[error("signature does not verify")]
    BadSignature,
    #[error("signed payload is malformed: {0}")]
    Payload(CodecError),
}

/// `T`, encoded and signed by branch `signer`. Decode the envelope with
/// [`codec::decode`], then [`Signed::verify`] against the key the network file lists for
/// `signer`; only then is the payload decoded.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    pub signer: BranchId,
    pub payload: Vec<u8>,
    /// 64 bytes when well formed; kept variable so a short one is a clear error.
    pub signature: Vec<u8>,
    #[serde(skip)]
    _payload_type: PhantomData<fn() -> T>,
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Signed {
            signer: self.signer,
            payload: self.payload.clone(),
            signature: self.signature.clone(),
            _payload_type: PhantomData,
        }
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.signer, &self.payload, &self.signature)
            == (other.signer, &other.payload, &other.signature)
    }
}

impl<T> Eq for Signed<T> {}

impl<T> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("signer", &self.signer)
            .field("payload_bytes", &self.payload.len())
            .finish_non_exhaustive()
    }
}

fn signing_bytes(domain: &[u8], signer: BranchId, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + 4 + payload.len());
    m.extend_from_slice(domain);
    m.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    m.extend_from_slice(&signer.0.to_be_bytes());
    m.extend_from_slice(payload);
    m
}

impl<T: Serialize + DeserializeOwned> Signed<T> {
    /// Encodes and signs `value` as branch `signer`.
    pub fn sign(key: &BranchKey, signer: BranchId, value: &T) -> Result<Self, CodecError> {
        Self::sign_in_domain(SIGNING_DOMAIN, key, signer, value)
    }

    /// Encodes and signs `value` as branch `signer` in `domain`.
    pub fn sign_in_domain(
        domain: &[u8],
        key: &BranchKey,
        signer: BranchId,
        value: &T,
    ) -> Result<Self, CodecError> {
        use ed25519_dalek::Signer;
        let payload = codec::encode(value)?;
        let signature = key.0.sign(&signing_bytes(domain, signer, &payload));
        Ok(Signed {
            signer,
            payload,
            signature: signature.to_bytes().to_vec(),
            _payload_type: PhantomData,
        })
    }

    /// Checks the signature against `key` (the one listed for `self.signer`) and only
    /// then decodes the payload.
    pub fn verify(&self, key: &BranchPublicKey) -> Result<T, VerifyError> {
        self.verify_in_domain(SIGNING_DOMAIN, key)
    }

    /// [`Signed::verify`] for a value signed in `domain`.
    pub fn verify_in_domain(&self, domain: &[u8], key: &BranchPublicKey) -> Result<T, VerifyError> {
        let bytes: &[u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| VerifyError::SignatureLength(self.signature.len()))?;
        let signature = Signature::from_bytes(bytes);
        key.0
            .verify_strict(
                &signing_bytes(domain, self.signer, &self.payload),
                &signature,
            )
            .map_err(|_| VerifyError::BadSignature)?;
        codec::decode(&self.payload).map_err(VerifyError::Payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TransferId;
    use crate::twopc::{BranchBody, BranchMessage};

    fn key(seed: u8) -> BranchKey {
        BranchKey::from_secret([seed; 32])
    }

    fn message() -> BranchMessage {
        BranchMessage {
            to: BranchId(2),
            expires_at_ms: 99,
            body: BranchBody::Acks(vec![TransferId(5)]),
        }
    }

    #[test]
    fn good_signature_verifies_and_round_trips_through_bytes() {
        let k = key(1);
        let s = Signed::sign(&k, BranchId(1), &message()).expect("fits");
        let bytes = codec::encode(&s).expect("fits");
        let back: Signed<BranchMessage> = codec::decode(&bytes).expect("decodes");
        assert_eq!(back.verify(&k.public()), Ok(message()));
    }

    #[test]
    fn every_kind_of_tampering_is_refused() {
        let k = key(1);
        let good = Signed::sign(&k, BranchId(1), &message()).expect("fits");
        for i in 0..good.payload.len() {
            let mut t = good.clone();
            t.payload[i] ^= 0x01;
            assert_eq!(
                t.verify(&k.public()),
                Err(VerifyError::BadSignature),
                "payload byte {i}"
            );
        }
        assert_eq!(
            good.verify(&key(2).public()),
            Err(VerifyError::BadSignature),
            "wrong key"
        );
        let mut relabelled = good.clone();
        relabelled.signer = BranchId(3);
        assert_eq!(
            relabelled.verify(&k.public()),
            Err(VerifyError::BadSignature),
            "signer relabelled"
        );
        let other_domain =
            Signed::sign_in_domain(b"bankmate/other", &k, BranchId(1), &message()).expect("fits");
        assert_eq!(
            other_domain.verify(&k.public()),
            Err(VerifyError::BadSignature),
            "wrong domain"
        );
        let mut short = good.clone();
        short.signature.truncate(63);
        assert_eq!(
            short.verify(&k.public()),
            Err(VerifyError::SignatureLength(63)),
            "truncated"
        );
        let mut flipped = good.clone();
        flipped.signature[10] ^= 0x80;
        assert_eq!(
            flipped.verify(&k.public()),
            Err(VerifyError::BadSignature),
            "signature bit"
        );
    }

    #[test]
    fn one_secret_is_both_signing_key_and_peer_id() {
        let k = key(9);
        assert_eq!(k.libp2p_keypair().public().to_peer_id(), k.peer_id());
        assert_eq!(BranchPublicKey::from_peer_id(&k.peer_id()), Ok(k.public()));
        let text = k.public().to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<BranchPublicKey>(), Ok(k.public()));
        assert_eq!("zz".parse::<BranchPublicKey>(), Err(PublicKeyError::Format));
        // A sha2-256 multihash PeerId (as RSA and secp256k1 keys get) embeds no key.
        let mut hashed = vec![0x12, 0x20];
        hashed.extend_from_slice(&[7u8; 32]);
        let hashed = PeerId::from_bytes(&hashed).expect("valid multihash");
        assert_eq!(
            BranchPublicKey::from_peer_id(&hashed),
            Err(PublicKeyError::NotEd25519PeerId)
        );
    }
}
