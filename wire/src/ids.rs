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

    /// Builds a UUIDv7-shaped id: the caller's Unix time in milliseconds (48 bits), then
    /// 74 random bits (with the version and variant bits of RFC 9562). Ids made this way
    /// sort by time, so the stores insert them near the end of their indexes instead of
    /// at random pages: fewer pages written per transfer under load.
    pub fn from_time_and_random(unix_ms: u64, random: [u8; 10]) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
        bytes[6..].copy_from_slice(&random);
        bytes[6] = 0x70 | (bytes[6] & 0x0f);
        bytes[8] = 0x80 | (bytes[8] & 0x3f);
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

    #[test]
    fn time_ordered_ids_sort_by_time_and_carry_the_uuid_v7_bits() {
        let a = TransferId::from_time_and_random(1_700_000_000_000, [0xff; 10]);
        let b = TransferId::from_time_and_random(1_700_000_000_001, [0x00; 10]);
        assert!(
            a < b,
            "a later millisecond sorts later whatever the random part"
        );
        for id in [a, b] {
            let text = id.to_string();
            assert_eq!(&text[12..13], "7", "version nibble in {text}");
            assert!(
                matches!(&text[16..17], "8" | "9" | "a" | "b"),
                "variant in {text}"
            );
            assert_eq!(text.parse::<TransferId>(), Ok(id));
        }
        assert_eq!(
            TransferId::from_time_and_random(0x0123_4567_89ab, [0; 10]).to_string(),
            "0123456789ab70008000000000000000"
        );
    }
}
