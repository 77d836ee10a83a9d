//! `Refusal`: every business reason a request or a 2PC leg is turned down, as one enum.
//!
//! A refusal is a value, never a panic or a string (TigerBeetle `CreateTransferStatus`).
//! The same enum is the reason in a `Vote::No`, in an aborted transfer's outcome and in
//! a teller's `Refused` answer, so a reason found at a remote branch reaches the teller
//! unchanged. Messages are one line, lowercase, without a trailing period.

use serde::{Deserialize, Serialize};

/// Why a request or one leg of a transfer was turned down. Nothing changed in any store.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    thiserror::Error,
)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum Refusal {
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("account not found")]
    AccountNotFound,
    #[error("account is closed")]
    AccountClosed,
    #[error("cannot transfer to the same account")]
    SameAccount,
    #[error("invalid amount")]
    InvalidAmount,
    #[error("transfer id already used for a different transfer")]
    IdConflict,
    #[error("not authorized")]
    Unauthorized,
    #[error("login locked after repeated failures; try again later")]
    LockedOut,
    #[error("wrong user or password")]
    BadCredentials,
    #[error("session expired or unknown; log in again")]
    SessionExpired,
    #[error("account still holds money or has holds; it must be empty to close")]
    AccountNotEmpty,
    #[error("balance would exceed the largest representable amount")]
    BalanceOverflow,
    #[error("invalid input")]
    InvalidInput,
    #[error("branch is not in the network file")]
    UnknownBranch,
    #[error("branch did not answer before the transfer's deadline")]
    BranchUnreachable,
    #[error("the transfer's deadline passed before it was prepared")]
    Expired,
    #[error("too many transfers in flight; retry shortly")]
    Overloaded,
    #[error("user already exists")]
    UserExists,
    #[error("transfer interrupted by a branch restart before its decision; nothing moved")]
    Interrupted,
    #[error("branch store failed; the request was not applied, try again")]
    StoreUnavailable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_lowercase_line_without_period() {
        use Refusal::*;
        let all = [
            InsufficientFunds,
            AccountNotFound,
            AccountClosed,
            SameAccount,
            InvalidAmount,
            IdConflict,
            Unauthorized,
            LockedOut,
            BadCredentials,
            SessionExpired,
            AccountNotEmpty,
            BalanceOverflow,
            InvalidInput,
            UnknownBranch,
            BranchUnreachable,
            Expired,
            Overloaded,
            UserExists,
            Interrupted,
            StoreUnavailable,
        ];
        for r in all {
            let m = r.to_string();
            assert!(!m.contains('\n') && !m.ends_with('.'), "{m:?}");
            assert_eq!(
                m.chars().next(),
                m.chars().next().map(|c| c.to_ascii_lowercase()),
                "{m:?}"
            );
        }
    }
}
