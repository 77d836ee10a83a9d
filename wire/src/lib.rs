//! The vocabulary of BankMate: identifiers, money, account numbers, the teller and
//! branch-to-branch messages, signed envelopes and the byte codec.
//!
//! No IO, no async, no clock, no randomness: callers pass the time (`now_ms`) and random
//! bytes in, so the coordinator's seeded simulation can replay any run exactly.

pub mod account;
pub mod codec;
pub mod entries;
pub mod fence;
pub mod ids;
pub mod limits;
pub mod link;
pub mod login_box;
pub mod money;
pub mod refusal;
pub mod seal;
pub mod signed;
pub mod teller;
pub mod trace;
pub mod twopc;

pub use account::{AccountNumber, AccountNumberError};
pub use codec::{CodecError, decode, decode_frame, encode, encode_frame};
pub use ids::{BranchId, TransferId, TransferIdError};
pub use libp2p_identity::PeerId;
pub use money::{Amount, AmountError};
pub use refusal::Refusal;
pub use signed::{BranchKey, BranchPublicKey, PublicKeyError, Signed, VerifyError};
pub use teller::{TellerOp, TellerRequest, TellerResponse};
pub use twopc::{
    BranchBody, BranchMessage, Decision, DecisionItem, PrepareItem, StatusItem, TransferSpec,
    TransferStatus, Vote, VoteItem,
};

#[cfg(test)]
mod roundtrip_tests {
    //! Every message type survives encode then decode unchanged, and no byte string
    //! makes a decoder panic.

    use super::*;
    use proptest::prelude::*;
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use std::fmt::Debug;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(
        value: &T,
    ) -> Result<(), TestCaseError> {
        let bytes = encode(value).expect("fits the limit");
        prop_assert_eq!(&decode::<T>(&bytes).expect("decodes"), value);
        let frame = encode_frame(value).expect("fits the limit");
        prop_assert_eq!(
            decode_frame::<T>(&frame).expect("decodes"),
            Some((decode::<T>(&bytes).expect("decodes"), frame.len()))
        );
        // Every strict prefix is "not enough bytes", never a wrong value.
        for cut in [0, bytes.len() / 2, bytes.len().saturating_sub(1)] {
            if cut < bytes.len() {
                prop_assert!(decode::<T>(&bytes[..cut]).is_err());
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn branch_messages(m in any::<BranchMessage>()) { round_trip(&m)?; }

        #[test]
        fn teller_requests(m in any::<TellerRequest>()) { round_trip(&m)?; }

        #[test]
        fn teller_responses(m in any::<TellerResponse>()) { round_trip(&m)?; }

        #[test]
        fn link_requests(m in any::<link::LinkRequest>()) { round_trip(&m)?; }

        #[test]
        fn link_responses(m in any::<link::LinkResponse>()) { round_trip(&m)?; }

        #[test]
        fn signed_envelopes(m in any::<BranchMessage>(), seed in any::<[u8; 32]>(), signer in any::<u16>()) {
            let key = BranchKey::from_secret(seed);
            let signed = Signed::sign(&key, BranchId(signer), &m).expect("fits");
            round_trip(&signed)?;
            prop_assert_eq!(signed.verify(&key.public()).expect("verifies"), m);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<BranchMessage>(&bytes);
            let _ = decode::<Signed<BranchMessage>>(&bytes);
            let _ = decode::<TellerRequest>(&bytes);
            let _ = decode::<TellerResponse>(&bytes);
            let _ = decode_frame::<TellerRequest>(&bytes);
        }

        #[test]
        fn negative_amounts_never_decode(minor in i64::MIN..0) {
            let bytes = postcard::to_stdvec(&minor).expect("encodes");
            prop_assert!(decode::<Amount>(&bytes).is_err());
        }
    }
}
