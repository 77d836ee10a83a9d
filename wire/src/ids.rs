//! Identifiers: `BranchId` (u16) and the client-chosen 128-bit `TransferId`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A branch of the bank. Its key and addresses are listed in the network file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct BranchId(pub u16);

impl fmt::Display for BranchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03}", self.0)
    }
}

/// A transfer's network-wide identity, chosen by the client before it first sends the
/// transfer. Sending the same id twice never moves money twice.
///
/// Text form: 32 lowercase hex digits. Parsing also accepts upper case and the UUID
/// form `8-4-4-4-12` with hyphens, so ids from other systems can be pasted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TransferId(pub u128);

impl TransferId {
    /// Builds an id from 16 random bytes supplied by the caller (`wire` draws no randomness).
    pub fn from_random_bytes(bytes: [u8; 16]) -> Self {
        TransferId(u128::from_be_bytes(bytes))
    }
}

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Why a text is not a transfer id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("transfer id must be 32 hex digits or a uuid (8-4-4-4-12)")]
pub struct TransferIdError;

impl FromStr for TransferId {
    type Err = TransferIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = match s.len() {
            32 => s.to_owned(),
            36 => {
                let groups: Vec<&str> = s.split('-').collect();
                let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
                if lens != [8, 4, 4, 4, 12] {
                    return Err(TransferIdError);
                }
                groups.concat()
            }
            _ => return Err(TransferIdError),
        };
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TransferIdError);
        }
        u128::from_str_radix(&hex, 16)
            .map(TransferId)
            .map_err(|_| TransferIdError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Option<u128>) {
        let got = input.parse::<TransferId>().ok().map(|id| id.0);
        assert_eq!(got, expected, "parsing {input:?}");
    }

    #[test]
    fn transfer_id_text_forms() {
        check("0000000000000000000000000000002a", Some(42));
        check("0000000000000000000000000000002A", Some(42));
        check("00000000-0000-0000-0000-00000000002a", Some(42));
        check("ffffffffffffffffffffffffffffffff", Some(u128::MAX));
        check("", None);
        check("2a", None);
        check("+000000000000000000000000000002a", None);
        check("0000000000000000000000000000002g", None);
        check("00000000-0000-0000-00000-0000000002a", None);
        check("000000000000-0000-0000-0000-0000002a", None);
        check(" 0000000000000000000000000000002a", None);
    }

    #[test]
    fn transfer_id_display_round_trips() {
        for v in [
            0u128,
            1,
            42,
            u128::MAX,
            0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        ] {
            let id = TransferId(v);
            assert_eq!(id.to_string().parse::<TransferId>(), Ok(id));
        }
        assert_eq!(BranchId(7).to_string(), "007");
    }
}
