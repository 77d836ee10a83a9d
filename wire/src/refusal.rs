//! `Refusal`: every business reason a request or a 2PC leg is turned down, as one enum.
//!
//! A refusal is a value, never a panic or a string (TigerBeetle `CreateTransferStatus`).
//! The same enum is the reason in a `Vote::No`, in an aborted transfer's outcome and in
//! a teller's `Refused` answer, so a reason found at a remote branch reaches the teller
//! unchanged. Messages are one line, lowercase, without a trailing period.
//!
//! A refusal is **final**: the request did not take effect and never will. Anything that
//! is not final (no session, a branch out of reach, a busy branch, a failing store) is
//! a [`crate::teller::Unavailable`], never a `Refusal`.
//!
//! Refusals are stored (postcard, by variant index) in aborted transfers' records, so
//! the order of the variants is part of the store format: append, never reorder.

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
    /// The login is enrolled for one-time codes and none was given, or the code was
    /// wrong or already used. (Index 7 was a lockout before throttles replaced it; login
    /// answers are never stored, so the index is free to reuse.)
    #[error("this login needs its current one-time code (a code works once)")]
    OneTimeCode,
    #[error("wrong user or password (or one-time code)")]
    BadCredentials,
    #[error("account still holds money or has holds; it must be empty to close")]
    AccountNotEmpty,
    #[error("balance would exceed the largest representable amount")]
    BalanceOverflow,
    #[error("invalid input")]
    InvalidInput,
    #[error("branch is not in the network file")]
    UnknownBranch,
    /// The coordinator's prepare deadline passed without every vote: recorded as aborted.
    #[error("a branch did not vote before the transfer's deadline; nothing moved")]
    NoVote,
    #[error("the transfer's deadline passed before it was prepared")]
    Expired,
    #[error("user already exists")]
    UserExists,
    #[error("transfer interrupted by a branch restart before its decision; nothing moved")]
    Interrupted,
    /// A new password is shorter than 8 characters or on the list of common passwords.
    #[error("password must be at least 8 characters and not a commonly used one")]
    WeakPassword,
    /// A customer enrolling a second time: an admin replaces a lost device.
    #[error("this login is already enrolled for one-time codes; an admin can replace it")]
    AlreadyEnrolled,
    /// A prepare whose deadline lies further ahead than a participant accepts: a
    /// coordinator could otherwise hold this branch's money in doubt for that long.
    #[error("the transfer's deadline is too far ahead; nothing moved")]
    DeadlineTooFar,
    /// A request another branch passed on is not sealed by the teller it names, or its
    /// seal is for another branch, used already, or expires too far ahead: the branch
    /// in between may have made or changed it. Nothing was done.
    #[error("the request is not sealed by its teller; nothing was done")]
    BadSeal,
    /// A customer's own deposit above the branch's limit (set at `branch-node init`):
    /// larger deposits are made by an admin. Nothing was done.
    #[error("deposits above the branch's limit for customers need an admin; nothing was done")]
    DepositLimit,
    /// No national id is on record for the account's owner (an account a restore put
    /// back from the network's records, whose owner the lost disk alone knew).
    #[error("no national id is on record for this account's owner")]
    NoNationalId,
}

impl Refusal {
    /// Every refusal, in declaration (and encoding) order.
    pub const ALL: [Refusal; 23] = [
        Refusal::InsufficientFunds,
        Refusal::AccountNotFound,
        Refusal::AccountClosed,
        Refusal::SameAccount,
        Refusal::InvalidAmount,
        Refusal::IdConflict,
        Refusal::Unauthorized,
        Refusal::OneTimeCode,
        Refusal::BadCredentials,
        Refusal::AccountNotEmpty,
        Refusal::BalanceOverflow,
        Refusal::InvalidInput,
        Refusal::UnknownBranch,
        Refusal::NoVote,
        Refusal::Expired,
        Refusal::UserExists,
        Refusal::Interrupted,
        Refusal::WeakPassword,
        Refusal::AlreadyEnrolled,
        Refusal::DeadlineTooFar,
        Refusal::BadSeal,
        Refusal::DepositLimit,
        Refusal::NoNationalId,
    ];

    /// A stable machine-readable code (snake case) for programs: `--json` output and
    /// scripts match on it, never on the message.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::InsufficientFunds => "insufficient_funds",
            Refusal::AccountNotFound => "unknown_account",
            Refusal::AccountClosed => "account_closed",
            Refusal::SameAccount => "same_account",
            Refusal::InvalidAmount => "invalid_amount",
            Refusal::IdConflict => "id_conflict",
            Refusal::Unauthorized => "unauthorized",
            Refusal::OneTimeCode => "one_time_code",
            Refusal::BadCredentials => "bad_credentials",
            Refusal::AccountNotEmpty => "account_not_empty",
            Refusal::BalanceOverflow => "balance_overflow",
            Refusal::InvalidInput => "invalid_input",
            Refusal::UnknownBranch => "unknown_branch",
            Refusal::NoVote => "no_vote",
            Refusal::Expired => "expired",
            Refusal::UserExists => "user_exists",
            Refusal::Interrupted => "interrupted",
            Refusal::WeakPassword => "weak_password",
            Refusal::AlreadyEnrolled => "already_enrolled",
            Refusal::DeadlineTooFar => "deadline_too_far",
            Refusal::BadSeal => "bad_seal",
            Refusal::DepositLimit => "deposit_limit",
            Refusal::NoNationalId => "no_national_id",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_lowercase_line_without_period() {
        for r in Refusal::ALL {
            let m = r.to_string();
            assert!(!m.contains('\n') && !m.ends_with('.'), "{m:?}");
            assert_eq!(
                m.chars().next(),
                m.chars().next().map(|c| c.to_ascii_lowercase()),
                "{m:?}"
            );
        }
    }

    #[test]
    fn codes_are_unique_snake_case() {
        let codes: std::collections::BTreeSet<_> = Refusal::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Refusal::ALL.len());
        for c in codes {
            assert!(
                c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'),
                "{c}"
            );
        }
    }

    /// Stored records hold refusals by variant index: this pins the store format.
    #[test]
    fn encoding_is_the_declaration_index() {
        for (i, r) in Refusal::ALL.iter().enumerate() {
            let bytes = crate::encode(r).expect("encodes");
            assert_eq!(bytes, vec![u8::try_from(i).expect("small")], "{r:?}");
        }
    }
}
