//! A login's secrets (password and one-time code) encrypted to the branch that checks
//! them, so a branch that passes the login on never sees them.
//!
//! The teller draws an ephemeral X25519 key and, for each replica of the issuing branch
//! (whichever leads checks the login), derives a key from the Diffie-Hellman of its
//! ephemeral secret and the replica's ed25519 key taken as X25519 (the birational map
//! every ed25519 library offers: the replica needs no second key), then encrypts the
//! secrets with ChaCha20-Poly1305. The key is SHA-256 over a domain tag, the shared
//! point, the ephemeral key and the replica's key; each key is used once, so the nonce
//! is zero. The associated data binds the box to the teller's PeerId, the login name and
//! the branch: a branch in between cannot reuse it for another teller or another login.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use curve25519_dalek::montgomery::MontgomeryPoint;
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec;
use crate::ids::BranchId;
use crate::signed::{BranchKey, BranchPublicKey};

/// Domain tag of the key derivation.
pub const LOGIN_BOX_DOMAIN: &[u8] = b"bankmate/login-box";

/// Most replicas a branch runs as: at most one box each.
pub const LOGIN_BOXES_MAX: usize = 5;

/// What a login box holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginSecret {
    pub password: String,
    pub otp: Option<String>,
}

/// The secrets for one replica, whose ed25519 public key is `recipient`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct LoginBox {
    pub recipient: [u8; 32],
    pub ciphertext: Vec<u8>,
}

/// A login's secrets, encrypted to every replica of the issuing branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct SealedSecret {
    /// The teller's ephemeral X25519 public key.
    pub ephemeral: [u8; 32],
    pub boxes: Vec<LoginBox>,
}

/// Why a sealed secret could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BoxError {
    #[error("no box for this replica's key")]
    NotForMe,
    #[error("the box does not open (changed, or for another teller or login)")]
    DoesNotOpen,
}

/// The associated data: whose login this is, of what, at which branch.
fn associated(teller: &PeerId, user: &str, to: BranchId) -> Vec<u8> {
    let mut aad = LOGIN_BOX_DOMAIN.to_vec();
    aad.extend_from_slice(&to.0.to_be_bytes());
    let peer = teller.to_bytes();
    aad.extend_from_slice(&u32::try_from(peer.len()).unwrap_or(u32::MAX).to_be_bytes());
    aad.extend_from_slice(&peer);
    aad.extend_from_slice(user.as_bytes());
    aad
}

fn cipher(
    shared: &MontgomeryPoint,
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
) -> ChaCha20Poly1305 {
    let key = Sha256::new()
        .chain_update(LOGIN_BOX_DOMAIN)
        .chain_update(shared.as_bytes())
        .chain_update(ephemeral)
        .chain_update(recipient)
        .finalize();
    ChaCha20Poly1305::new(Key::from_slice(&key))
}

impl SealedSecret {
    /// Encrypts `secret` of `user`, logging in as `teller` at branch `to`, for each key
    /// in `recipients`; `ephemeral_secret` is 32 random bytes drawn by the caller.
    pub fn seal(
        secret: &LoginSecret,
        (teller, user, to): (&PeerId, &str, BranchId),
        recipients: &[BranchPublicKey],
        ephemeral_secret: [u8; 32],
    ) -> SealedSecret {
        let ephemeral = MontgomeryPoint::mul_base_clamped(ephemeral_secret).to_bytes();
        let aad = associated(teller, user, to);
        // A login's secrets always encode (two short strings).
        let plain = codec::encode(secret).unwrap_or_default();
        let boxes = recipients
            .iter()
            .map(|r| {
                let recipient = r.to_bytes();
                let shared = r
                    .verifying_key()
                    .to_montgomery()
                    .mul_clamped(ephemeral_secret);
                let payload = Payload {
                    msg: &plain,
                    aad: &aad,
                };
                let ciphertext = cipher(&shared, &ephemeral, &recipient)
                    .encrypt(Nonce::from_slice(&[0; 12]), payload)
                    .unwrap_or_default();
                LoginBox {
                    recipient,
                    ciphertext,
                }
            })
            .collect();
        SealedSecret { ephemeral, boxes }
    }

    /// Opens the box for `key` (this replica's), sent by `teller` for `user` at `to`.
    pub fn open(
        &self,
        key: &BranchKey,
        (teller, user, to): (&PeerId, &str, BranchId),
    ) -> Result<LoginSecret, BoxError> {
        let me = key.public().to_bytes();
        let mine = self
            .boxes
            .iter()
            .find(|b| b.recipient == me)
            .ok_or(BoxError::NotForMe)?;
        let shared =
            MontgomeryPoint(self.ephemeral).mul_clamped(key.signing_key().to_scalar_bytes());
        let aad = associated(teller, user, to);
        let payload = Payload {
            msg: &mine.ciphertext,
            aad: &aad,
        };
        let plain = cipher(&shared, &self.ephemeral, &me)
            .decrypt(Nonce::from_slice(&[0; 12]), payload)
            .map_err(|_| BoxError::DoesNotOpen)?;
        codec::decode(&plain).map_err(|_| BoxError::DoesNotOpen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> LoginSecret {
        LoginSecret {
            password: "her-password".into(),
            otp: Some("123456".into()),
        }
    }

    #[test]
    fn only_a_listed_replica_opens_it_and_only_for_that_teller_and_login() {
        let replicas: Vec<BranchKey> = (1..=3).map(|i| BranchKey::from_secret([i; 32])).collect();
        let publics: Vec<_> = replicas.iter().map(BranchKey::public).collect();
        let teller = BranchKey::from_secret([9; 32]).peer_id();
        let at = (&teller, "001-00000001-46", BranchId(1));
        let sealed = SealedSecret::seal(&secret(), at, &publics, [7; 32]);
        for r in &replicas {
            assert_eq!(sealed.open(r, at), Ok(secret()));
        }
        let other = BranchKey::from_secret([4; 32]);
        assert_eq!(sealed.open(&other, at), Err(BoxError::NotForMe));
        let thief = BranchKey::from_secret([8; 32]).peer_id();
        for wrong in [
            (&thief, "001-00000001-46", BranchId(1)),
            (&teller, "001-00000002-43", BranchId(1)),
            (&teller, "001-00000001-46", BranchId(2)),
        ] {
            assert_eq!(sealed.open(&replicas[0], wrong), Err(BoxError::DoesNotOpen));
        }
        let mut changed = sealed.clone();
        changed.boxes[0].ciphertext[0] ^= 1;
        assert_eq!(changed.open(&replicas[0], at), Err(BoxError::DoesNotOpen));
        let mut other_ephemeral = sealed;
        other_ephemeral.ephemeral[0] ^= 1;
        assert_eq!(
            other_ephemeral.open(&replicas[0], at),
            Err(BoxError::DoesNotOpen)
        );
    }
}
