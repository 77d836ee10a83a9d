//! Account numbers: owning branch, serial and ISO 7064 MOD 97-10 check digits.
//!
//! Human form: `BBB-SSSSSSSS-CC`, for example `001-00000042-20`:
//! - `BBB`: the owning branch's code, 001..=999 (so routing needs no lookup);
//! - `SSSSSSSS`: the serial within that branch, 00000001..=99999999;
//! - `CC`: check digits over the 11 digits `BBBSSSSSSSS`, computed as in IBAN:
//!   `CC = 98 - (n * 100 mod 97)`, so that `(n * 100 + CC) mod 97 == 1`.
//!
//! Parsing accepts exactly that form or the same 13 digits without the hyphens, and
//! nothing else (no spaces, no signs). MOD 97-10 refuses every single-digit substitution
//! and every transposition of two adjacent digits: both change the 13-digit number by
//! `d * 10^i` or `d * 9 * 10^i` with `0 < |d| < 10`, never a multiple of the prime 97.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::BranchId;
use crate::limits::{ACCOUNT_BRANCH_MAX, ACCOUNT_SERIAL_MAX};

/// An account at one branch. Only valid numbers can be built, so holding one proves the
/// branch and serial are in range; the check digits are recomputed, never stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "(u16, u32)", into = "(u16, u32)")]
pub struct AccountNumber {
    branch: BranchId,
    serial: u32,
}

/// Why an account number is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AccountNumberError {
    #[error("account number must look like 001-00000042-20")]
    Format,
    #[error("account number check digits do not match (mistyped?)")]
    CheckDigits,
    #[error("account branch code must be 001..=999")]
    BranchOutOfRange,
    #[error("account serial must be 1..=99999999")]
    SerialOutOfRange,
}

impl AccountNumber {
    /// Builds the number of account `serial` at `branch`.
    pub fn new(branch: BranchId, serial: u32) -> Result<Self, AccountNumberError> {
        if branch.0 == 0 || branch.0 > ACCOUNT_BRANCH_MAX {
            return Err(AccountNumberError::BranchOutOfRange);
        }
        if serial == 0 || serial > ACCOUNT_SERIAL_MAX {
            return Err(AccountNumberError::SerialOutOfRange);
        }
        Ok(AccountNumber { branch, serial })
    }

    /// The branch that owns this account.
    pub fn branch(&self) -> BranchId {
        self.branch
    }

    /// The serial number within the branch.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// The two check digits, 2..=98.
    pub fn check_digits(&self) -> u8 {
        let body = u64::from(self.branch.0) * 100_000_000 + u64::from(self.serial);
        let check = 98 - (body * 100) % 97;
        u8::try_from(check).expect("98 - x % 97 is 2..=98")
    }
}

impl fmt::Display for AccountNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:03}-{:08}-{:02}",
            self.branch.0,
            self.serial,
            self.check_digits()
        )
    }
}

impl FromStr for AccountNumber {
    type Err = AccountNumberError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits: String = match s.len() {
            15 => {
                let b = s.as_bytes();
                if b[3] != b'-' || b[12] != b'-' {
                    return Err(AccountNumberError::Format);
                }
                [&s[0..3], &s[4..12], &s[13..15]].concat()
            }
            13 => s.to_owned(),
            _ => return Err(AccountNumberError::Format),
        };
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AccountNumberError::Format);
        }
        let whole: u64 = digits.parse().map_err(|_| AccountNumberError::Format)?;
        if whole % 97 != 1 {
            return Err(AccountNumberError::CheckDigits);
        }
        let branch =
            u16::try_from(whole / 10_000_000_000).map_err(|_| AccountNumberError::Format)?;
        let serial =
            u32::try_from((whole / 100) % 100_000_000).map_err(|_| AccountNumberError::Format)?;
        AccountNumber::new(BranchId(branch), serial)
    }
}

impl TryFrom<(u16, u32)> for AccountNumber {
    type Error = AccountNumberError;

    fn try_from((branch, serial): (u16, u32)) -> Result<Self, Self::Error> {
        AccountNumber::new(BranchId(branch), serial)
    }
}

impl From<AccountNumber> for (u16, u32) {
    fn from(a: AccountNumber) -> Self {
        (a.branch.0, a.serial)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Any valid account number, for property tests elsewhere in the crate.
    pub(crate) fn any_account() -> impl Strategy<Value = AccountNumber> {
        (1..=ACCOUNT_BRANCH_MAX, 1..=ACCOUNT_SERIAL_MAX)
            .prop_map(|(b, s)| AccountNumber::new(BranchId(b), s).expect("in range"))
    }

    fn check(input: &str, expected: Result<(u16, u32), AccountNumberError>) {
        let got = input.parse::<AccountNumber>().map(<(u16, u32)>::from);
        assert_eq!(got, expected, "parsing {input:?}");
    }

    #[test]
    fn parse_table() {
        let n42 = AccountNumber::new(BranchId(1), 42)
            .expect("valid")
            .to_string();
        check(&n42, Ok((1, 42)));
        check(&n42.replace('-', ""), Ok((1, 42)));
        check("999-99999999-", Err(AccountNumberError::Format));
        check("", Err(AccountNumberError::Format));
        check("001 00000042 20", Err(AccountNumberError::Format));
        check("001-0000004a-20", Err(AccountNumberError::Format));
        check("+01-00000042-20", Err(AccountNumberError::Format));
        check("001-00000042-2", Err(AccountNumberError::Format));
        check("0010-0000042-20", Err(AccountNumberError::Format));
        check("001-00000042-206", Err(AccountNumberError::Format));
        check(" 001-00000042-20", Err(AccountNumberError::Format));
        // Valid check digits, out-of-range parts.
        let zero_serial = format!("001-00000000-{:02}", 98 - (100_000_000u64 * 100) % 97);
        check(&zero_serial, Err(AccountNumberError::SerialOutOfRange));
        let zero_branch = format!("000-00000042-{:02}", 98 - (42u64 * 100) % 97);
        check(&zero_branch, Err(AccountNumberError::BranchOutOfRange));
    }

    #[test]
    fn known_value_matches_iso7064() {
        // 00100000042 * 100 mod 97 = 78, so CC = 98 - 78 = 20.
        let a = AccountNumber::new(BranchId(1), 42).expect("valid");
        assert_eq!(a.to_string(), "001-00000042-20");
        assert_eq!(a.check_digits(), 20);
    }

    #[test]
    fn new_refuses_out_of_range() {
        assert_eq!(
            AccountNumber::new(BranchId(0), 1),
            Err(AccountNumberError::BranchOutOfRange)
        );
        assert_eq!(
            AccountNumber::new(BranchId(1000), 1),
            Err(AccountNumberError::BranchOutOfRange)
        );
        assert_eq!(
            AccountNumber::new(BranchId(1), 0),
            Err(AccountNumberError::SerialOutOfRange)
        );
        assert_eq!(
            AccountNumber::new(BranchId(1), ACCOUNT_SERIAL_MAX + 1),
            Err(AccountNumberError::SerialOutOfRange)
        );
    }

    /// Positions of the 13 digits within the 15-character human form.
    const DIGIT_POSITIONS: [usize; 13] = [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14];

    fn assert_every_typo_refused(a: AccountNumber) {
        let text = a.to_string();
        let original: Vec<u8> = text.bytes().collect();
        for &pos in &DIGIT_POSITIONS {
            for d in b'0'..=b'9' {
                if d == original[pos] {
                    continue;
                }
                let mut typo = original.clone();
                typo[pos] = d;
                let typo = String::from_utf8(typo).expect("ascii");
                assert!(
                    typo.parse::<AccountNumber>().is_err(),
                    "substitution {typo} of {text} accepted"
                );
            }
        }
        for w in DIGIT_POSITIONS.windows(2) {
            let (i, j) = (w[0], w[1]);
            if original[i] == original[j] {
                continue; // swapping equal digits is no typo
            }
            let mut typo = original.clone();
            typo.swap(i, j);
            let typo = String::from_utf8(typo).expect("ascii");
            assert!(
                typo.parse::<AccountNumber>().is_err(),
                "transposition {typo} of {text} accepted"
            );
        }
    }

    #[test]
    fn every_single_substitution_and_adjacent_transposition_is_refused_exhaustively_for_samples() {
        for branch in [1, 2, 3, 17, 500, 998, 999] {
            for serial in [
                1,
                2,
                42,
                1234,
                9_876_543,
                12_345_678,
                90_000_001,
                ACCOUNT_SERIAL_MAX,
            ] {
                assert_every_typo_refused(
                    AccountNumber::new(BranchId(branch), serial).expect("valid"),
                );
            }
        }
    }

    proptest! {
        #[test]
        fn every_typo_refused(a in any_account()) {
            assert_every_typo_refused(a);
        }

        #[test]
        fn display_parse_round_trip(a in any_account()) {
            prop_assert_eq!(a.to_string().parse::<AccountNumber>(), Ok(a));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,20}") {
            let _ = s.parse::<AccountNumber>();
        }
    }
}
