//! Money: `Amount`, an exact count of minor units (cents, paise), never a float.
//!
//! Text form, for both parsing and display: ASCII digits, optionally a `.` and one or
//! two more digits: `1250.50`, `1250.5`, `1250`, `0.01`. Display always writes two
//! decimals and no separators (`1250.50`). Parsing refuses everything else: signs,
//! exponents, spaces, thousands separators (`1,250.00` and `1_250`), a bare `.5` or
//! `5.`, more than two decimals, zero, and anything above [`AMOUNT_MINOR_MAX`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::{AMOUNT_MINOR_MAX, MINOR_PER_MAJOR};

/// A non-negative count of minor units. Balances, holds and the amounts of deposits,
/// withdrawals and transfers are all `Amount`s; an amount a client asks to move must
/// also pass [`Amount::validate_movable`] (which [`Amount::parse`] applies).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(try_from = "i64", into = "i64")]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Amount(#[cfg_attr(test, proptest(strategy = "0..=i64::MAX"))] i64);

/// Why a text or a sum is not an amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount is empty")]
    Empty,
    #[error("amount must be digits with an optional '.' and at most 2 decimals, like 1250.50")]
    Syntax,
    #[error("amount has more than 2 decimals")]
    TooManyDecimals,
    #[error("amount must be more than zero")]
    NotPositive,
    #[error("amount is above the limit of 10000000000.00")]
    TooLarge,
    #[error("amount arithmetic overflowed")]
    Overflow,
    #[error("amount would become negative")]
    Negative,
}

impl Amount {
    /// Zero minor units (an empty balance).
    pub const ZERO: Amount = Amount(0);

    /// An amount of `minor` units; refuses a negative count.
    pub fn from_minor(minor: i64) -> Result<Amount, AmountError> {
        if minor < 0 {
            return Err(AmountError::Negative);
        }
        Ok(Amount(minor))
    }

    /// The count of minor units.
    pub fn minor(self) -> i64 {
        self.0
    }

    /// Parses text strictly (see the module docs) into an amount a client may move.
    pub fn parse(text: &str) -> Result<Amount, AmountError> {
        if text.is_empty() {
            return Err(AmountError::Empty);
        }
        let (whole, fraction) = match text.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (text, None),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError::Syntax);
        }
        let fraction = match fraction {
            None => "",
            Some(f) if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(AmountError::Syntax);
            }
            Some(f) if f.len() > 2 => return Err(AmountError::TooManyDecimals),
            Some(f) => f,
        };
        // 13 significant whole digits already exceed the limit; refuse before parsing so
        // a long run of digits cannot overflow the integer parse.
        if whole.trim_start_matches('0').len() > 13 {
            return Err(AmountError::TooLarge);
        }
        let whole: i64 = whole.parse().map_err(|_| AmountError::TooLarge)?;
        let cents: i64 = match fraction.len() {
            0 => 0,
            1 => fraction.parse::<i64>().map_err(|_| AmountError::Syntax)? * 10,
            _ => fraction.parse::<i64>().map_err(|_| AmountError::Syntax)?,
        };
        let minor = whole
            .checked_mul(MINOR_PER_MAJOR)
            .and_then(|m| m.checked_add(cents))
            .ok_or(AmountError::TooLarge)?;
        Amount(minor).validate_movable()
    }

    /// Refuses an amount that a single deposit, withdrawal or transfer may not move:
    /// zero, or above [`AMOUNT_MINOR_MAX`].
    pub fn validate_movable(self) -> Result<Amount, AmountError> {
        if self.0 <= 0 {
            return Err(AmountError::NotPositive);
        }
        if self.0 > AMOUNT_MINOR_MAX {
            return Err(AmountError::TooLarge);
        }
        Ok(self)
    }

    /// `self + other`, or an error on overflow. Never wraps.
    pub fn checked_add(self, other: Amount) -> Result<Amount, AmountError> {
        self.0
            .checked_add(other.0)
            .map(Amount)
            .ok_or(AmountError::Overflow)
    }

    /// `self - other`, or an error if the result would be negative. Never wraps.
    pub fn checked_sub(self, other: Amount) -> Result<Amount, AmountError> {
        match self.0.checked_sub(other.0) {
            Some(v) if v >= 0 => Ok(Amount(v)),
            Some(_) => Err(AmountError::Negative),
            None => Err(AmountError::Overflow),
        }
    }
}

impl TryFrom<i64> for Amount {
    type Error = AmountError;

    fn try_from(minor: i64) -> Result<Self, Self::Error> {
        Amount::from_minor(minor)
    }
}

impl From<Amount> for i64 {
    fn from(a: Amount) -> i64 {
        a.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let per = MINOR_PER_MAJOR.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / per, abs % per)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(input: &str, expected: Result<i64, AmountError>) {
        assert_eq!(
            Amount::parse(input).map(Amount::minor),
            expected,
            "parsing {input:?}"
        );
    }

    #[test]
    fn parse_table() {
        use AmountError::*;
        check("1250.50", Ok(125_050));
        check("1250.5", Ok(125_050));
        check("1250", Ok(125_000));
        check("0.01", Ok(1));
        check("007.10", Ok(710));
        check("10000000000", Ok(AMOUNT_MINOR_MAX));
        check("10000000000.00", Ok(AMOUNT_MINOR_MAX));
        check("10000000000.01", Err(TooLarge));
        check("99999999999999999999999999", Err(TooLarge));
        check("00000000000000000000000001.00", Ok(100));
        check("", Err(Empty));
        check("0", Err(NotPositive));
        check("0.00", Err(NotPositive));
        check("1.234", Err(TooManyDecimals));
        check("1.", Err(Syntax));
        check(".5", Err(Syntax));
        check("-5", Err(Syntax));
        check("+5", Err(Syntax));
        check("1e3", Err(Syntax));
        check("NaN", Err(Syntax));
        check("inf", Err(Syntax));
        check("1,250.00", Err(Syntax));
        check("1_250", Err(Syntax));
        check(" 5", Err(Syntax));
        check("5 ", Err(Syntax));
        check("1.2.3", Err(Syntax));
        check("1.-2", Err(Syntax));
        check("١٢", Err(Syntax)); // non-ASCII digits
    }

    #[test]
    fn display_is_two_decimals_no_separators() {
        assert_eq!(Amount(125_050).to_string(), "1250.50");
        assert_eq!(Amount(1).to_string(), "0.01");
        assert_eq!(Amount(0).to_string(), "0.00");
        assert_eq!(Amount(i64::MAX).to_string(), "92233720368547758.07");
    }

    #[test]
    fn arithmetic_is_checked() {
        let max = Amount(i64::MAX);
        assert_eq!(max.checked_add(Amount(1)), Err(AmountError::Overflow));
        assert_eq!(Amount(5).checked_sub(Amount(6)), Err(AmountError::Negative));
        assert_eq!(Amount(5).checked_sub(Amount(5)), Ok(Amount::ZERO));
        assert_eq!(Amount(5).checked_add(Amount(6)), Ok(Amount(11)));
        assert_eq!(Amount::from_minor(-1), Err(AmountError::Negative));
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(minor in 1..=AMOUNT_MINOR_MAX) {
            let a = Amount(minor);
            prop_assert_eq!(Amount::parse(&a.to_string()), Ok(a));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,30}") {
            let _ = Amount::parse(&s);
        }

        #[test]
        fn add_then_sub_is_identity(a in 0..i64::MAX / 2, b in 0..i64::MAX / 2) {
            let (a, b) = (Amount(a), Amount(b));
            prop_assert_eq!(a.checked_add(b).and_then(|s| s.checked_sub(b)), Ok(a));
        }
    }
}
