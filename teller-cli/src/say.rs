//! One vocabulary of answers for people: every refusal and failure code as one plain
//! sentence that says what happened to the money and what to do next, used alike by
//! the CLI, the menus and the web console. Programs read the stable codes (`--json`,
//! `data-code`); people read these. Branches are named by their names.

use std::sync::Arc;

use client::network_file::NetworkFile;
use wire::teller::Unavailable;
use wire::{BranchId, TransferId};

use crate::TellerError;
use crate::money::{MoneyAnswer, Why};

/// Branch names by id, from the network file when there is one, and the name of the
/// branch the teller is connected to.
#[derive(Debug, Clone, Default)]
pub struct Names {
    network: Option<Arc<NetworkFile>>,
    own: Option<String>,
}

impl Names {
    pub fn new(network: Option<Arc<NetworkFile>>, own: Option<String>) -> Names {
        Names { network, own }
    }

    /// The name of the branch the teller is connected to, when the network file names it.
    pub fn own(&self) -> Option<&str> {
        self.own.as_deref()
    }

    /// Branch `id` as people know it: its name, or "branch 007" when unlisted.
    pub fn branch(&self, id: BranchId) -> String {
        self.network
            .as_ref()
            .and_then(|n| n.get(id))
            .map_or_else(|| format!("branch {id}"), |b| b.name.clone())
    }
}

/// What a sentence may mention beyond its code.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The branch concerned, by name.
    pub branch: Option<String>,
    /// Seconds to wait before trying again.
    pub wait_s: Option<u64>,
}

/// The words that must never reach a person: they name the machinery, not the bank.
pub const INTERNAL_WORDS: &[&str] = &[
    "multiaddr",
    "/ip4/",
    "/p2p/",
    "peer id",
    "peerid",
    "dial",
    "stream",
    "negotiat",
    "vote",
    "deadline",
    "replica",
    "leader",
    "lease",
    "Some(",
    "::",
    "{ ",
];

/// Whether `text` (what a person reads) names the machinery; returns the word. A
/// word counts where a word starts ("lease" is not found in "please").
pub fn internal_word(text: &str) -> Option<&'static str> {
    let lower = text.to_lowercase();
    INTERNAL_WORDS.iter().copied().find(|w| {
        if *w == "::" {
            // A Rust path (`Foo::Bar`), not an IPv6 address such as `::1`.
            return text.match_indices("::").any(|(at, _)| {
                let before = text[..at].chars().next_back();
                let after = text[at + 2..].chars().next();
                before.is_some_and(char::is_alphabetic) && after.is_some_and(char::is_alphabetic)
            });
        }
        if !w.chars().all(|c| c.is_ascii_alphabetic() || c == ' ') {
            return text.contains(w) || lower.contains(w);
        }
        lower.match_indices(w).any(|(at, _)| {
            !lower[..at]
                .chars()
                .next_back()
                .is_some_and(char::is_alphabetic)
        })
    })
}

/// The sentence for a refusal code (the bank said no, finally).
fn refusal(code: &str) -> Option<&'static str> {
    Some(match code {
        "insufficient_funds" => {
            "Insufficient funds: the account does not hold enough for this. No money moved."
        }
        "unknown_account" => {
            "There is no such account at the bank. No money moved; check the account number."
        }
        "account_closed" => "That account is closed. No money moved.",
        "same_account" => "The two accounts are the same. No money moved; choose another account.",
        "invalid_amount" => {
            "The amount is not valid: give more than zero, with at most two decimals (like 1250.50). No money moved."
        }
        "id_conflict" => {
            "This payment id was already used for a different payment. No money moved; send it as a new payment."
        }
        "unauthorized" => {
            "Not authorized: this login may not do that or use that account. Nothing was done."
        }
        "one_time_code" => {
            "This login needs its current one-time code (each code works once). Nothing was done."
        }
        "bad_credentials" => {
            "Wrong user or password (or one-time code). Nothing was done; check them and try again."
        }
        "account_not_empty" => {
            "The account still holds money or has payments in progress; it can be closed only when empty."
        }
        "balance_overflow" => {
            "The balance would grow beyond what an account can hold. No money moved."
        }
        "invalid_input" => {
            "Some of what was typed is not valid. Nothing was done; check it and try again."
        }
        "unknown_branch" => {
            "The account belongs to no branch of this bank. No money moved; check the account number."
        }
        "no_vote" | "expired" | "deadline_too_far" => {
            "The other branch did not confirm the payment in time, so it was cancelled. No money moved; you can send it again."
        }
        "interrupted" => {
            "A branch restarted before the payment was completed, so it was cancelled. No money moved; you can send it again."
        }
        "user_exists" => "That login already exists. Nothing was done.",
        "weak_password" => {
            "The password is too easy to guess: use at least 8 characters and not a common password. Nothing was done."
        }
        "already_enrolled" => {
            "This login already has one-time codes; ask the branch to replace a lost device. Nothing was done."
        }
        "bad_seal" => {
            "The request was changed on its way between branches and was refused. Nothing was done; connect to your own branch and try again."
        }
        "deposit_limit" => {
            "Deposits this large are made at the branch by its staff. Nothing was done."
        }
        "no_national_id" => {
            "The bank has no national id on record for this account's owner (the account was put back from the other branches' records)."
        }
        _ => return None,
    })
}

/// The sentence for code `code`, with what `cx` knows; every code a teller can meet
/// has one (a code unknown here gets a sentence that still tells the truth).
pub fn sentence(code: &str, cx: &Context) -> String {
    if let Some(s) = refusal(code) {
        return s.to_owned();
    }
    let branch = cx
        .branch
        .as_deref()
        .map_or_else(|| "The branch".to_owned(), |name| format!("Branch {name}"));
    match code {
        "branch_unreachable" => format!(
            "{branch} is not answering. Nothing was sent, so nothing happened; try again in a minute."
        ),
        "no_answer" => format!(
            "{branch} did not answer in time. The request may still be carried out: check its status before sending it again."
        ),
        "session_expired" => {
            "Your session has ended. Nothing was done; log in again.".to_owned()
        }
        "overloaded" => {
            "The bank is too busy right now. Nothing was done; try again shortly.".to_owned()
        }
        "store_failed" => format!(
            "{branch} had a problem saving the request. It may or may not have been carried out: check its status before sending it again."
        ),
        "stopping" | "not_leader" | "not_confirmed" | "fenced" => format!(
            "{branch} cannot take requests at the moment. Nothing was done; try again in a minute."
        ),
        "lease_lost" => format!(
            "{branch} could not confirm the request in time. It may or may not stand: check its status before sending it again."
        ),
        "throttled" => match cx.wait_s {
            Some(s) if s > 0 => format!(
                "Too many wrong passwords. Wait {} and try again; the password was not checked.",
                seconds(s)
            ),
            _ => "Too many wrong passwords. Wait a moment and try again; the password was not checked."
                .to_owned(),
        },
        "pending" | "outcome_unknown" | "not_known_yet" => {
            "The outcome is not known yet. Do not send it again: check its status in a minute.".to_owned()
        }
        "not_sent" => "Nothing was sent, so nothing happened.".to_owned(),
        "unexpected" => "The bank gave an answer this program does not understand. The request may have been carried out: check its status before sending it again.".to_owned(),
        _ => "The request did not go through. Check its status before sending it again.".to_owned(),
    }
}

/// `s` seconds for people: "45 seconds", "1 minute", "3 minutes".
pub fn seconds(s: u64) -> String {
    match s {
        1 => "1 second".into(),
        s if s < 90 => format!("{s} seconds"),
        s => {
            let m = s.div_ceil(60);
            format!("{m} minutes")
        }
    }
}

/// What a person is told for `e`.
pub fn error(e: &TellerError, names: &Names) -> String {
    match e {
        // The person's own input: its message says what to fix.
        TellerError::Usage(m) | TellerError::Invalid(m) => capitalised(m),
        TellerError::Caught(r) => {
            refusal(r.code()).map_or_else(|| capitalised(&r.to_string()), str::to_owned)
        }
        TellerError::LoginNotDone(inner) => {
            format!(
                "Could not log in, so the command was not sent. {}",
                error(inner, names)
            )
        }
        e => sentence(e.code(), &context(e, names)),
    }
}

/// How long after its id was made a payment may still reach its branch: a teller's
/// resends under one id, and a request passed on between branches, end well within it.
const MAY_STILL_ARRIVE_MS: u64 = 10 * 60 * 1000;

/// Whether a payment with `id` may still reach the bank at `now_ms`: its id was made
/// (by its time, as `teller-cli` makes ids) within the last [`MAY_STILL_ARRIVE_MS`]. A
/// made-up id names no such time (or a time in the future) and is not recent.
pub fn may_still_arrive(id: TransferId, now_ms: u64) -> bool {
    let made_ms = u64::try_from(id.0 >> 80).unwrap_or(u64::MAX);
    made_ms <= now_ms.saturating_add(60_000) && now_ms.saturating_sub(made_ms) < MAY_STILL_ARRIVE_MS
}

/// Said of an id the asker's branch has no record of (or one the asker may not see:
/// the same words, so they tell nothing of other people's payments).
pub fn no_record(id: TransferId, now_ms: u64) -> &'static str {
    if may_still_arrive(id, now_ms) {
        "No payment of yours with this id has reached the bank yet. If it was sent in the \
         last few minutes it may still arrive: ask again shortly."
    } else {
        "No payment of yours with this id was made: the bank has no record of it, and no \
         money moved."
    }
}

/// What a person is told of a money request that did not commit.
pub fn money(answer: &MoneyAnswer, names: &Names) -> String {
    let cx = |why: &Why| Context {
        branch: why
            .branch
            .map(|b| names.branch(b))
            .or_else(|| names.own.clone()),
        wait_s: None,
    };
    match answer {
        MoneyAnswer::Committed { .. } => "Done: the money moved.".to_owned(),
        MoneyAnswer::Refused { reason, .. } => sentence(reason.code(), &Context::default()),
        MoneyAnswer::NotDone { why, .. } => sentence(why.code, &cx(why)),
        MoneyAnswer::Unknown { why, .. } => {
            let cause = match why.code {
                "no_answer" => cx(why).branch.map_or_else(String::new, |b| {
                    format!("Branch {b} did not answer in time. ")
                }),
                _ => String::new(),
            };
            format!(
                "{cause}The outcome is not known yet: it may still be carried out. Do not send it \
                 again; check its status in a minute."
            )
        }
    }
}

/// What the sentence for `e` may mention.
pub fn context(e: &TellerError, names: &Names) -> Context {
    if let TellerError::LoginNotDone(inner) = e {
        return context(inner, names);
    }
    let branch = e
        .branch()
        .map(|b| names.branch(b))
        .or_else(|| names.own.clone());
    let wait_s = match e {
        TellerError::Unavailable(Unavailable::Throttled { retry_after_ms }) => {
            Some(retry_after_ms.div_ceil(1000))
        }
        _ => None,
    };
    Context { branch, wait_s }
}

/// `s` with its first letter capitalised and a full stop at its end.
pub fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    let mut out: String = c
        .next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default();
    if !out.ends_with(['.', '?', '!']) {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::Refusal;

    #[test]
    fn every_code_has_a_plain_sentence() {
        let cx = Context {
            branch: Some("Pune".into()),
            wait_s: Some(42),
        };
        let unavailable = [
            "session_expired",
            "branch_unreachable",
            "no_answer",
            "overloaded",
            "store_failed",
            "stopping",
            "throttled",
            "not_leader",
            "not_confirmed",
            "fenced",
            "lease_lost",
        ];
        let codes = Refusal::ALL.iter().map(|r| r.code()).chain(unavailable);
        for code in codes.chain(["unexpected", "pending", "not_sent"]) {
            let s = sentence(code, &cx);
            assert_ne!(
                s,
                sentence("no such code", &cx),
                "{code} has its own sentence"
            );
            assert!(s.ends_with('.') && !s.contains('\n'), "{code}: {s}");
            assert_eq!(internal_word(&s), None, "{code}: {s}");
        }
        assert!(sentence("branch_unreachable", &cx).starts_with("Branch Pune is not answering"));
        assert!(sentence("throttled", &cx).contains("Wait 42 seconds"));
    }

    #[test]
    fn internal_words_are_found() {
        for bad in [
            "Cannot reach /ip4/127.0.0.1/tcp/42449: failed to open stream",
            "Failed to negotiate transport protocol(s)",
            "did not vote before the transfer's deadline",
            "unexpected answer Some(Balance { .. })",
        ] {
            assert!(internal_word(bad).is_some(), "{bad}");
        }
        assert_eq!(
            internal_word("Branch Pune is not answering. Nothing was sent."),
            None
        );
        assert_eq!(internal_word("Please wait; devoted upstreams"), None);
        assert_eq!(internal_word("listens on 127.0.0.1 or ::1 only"), None);
        assert_eq!(internal_word("teller_cli::Teller failed"), Some("::"));
    }

    #[test]
    fn an_id_without_a_record_is_final_once_it_is_old() {
        let now = 1_800_000_000_000;
        let made = |ms| TransferId::from_time_and_random(ms, [7; 10]);
        assert!(may_still_arrive(made(now - 1_000), now));
        assert!(!may_still_arrive(made(now - MAY_STILL_ARRIVE_MS), now));
        assert!(!may_still_arrive(TransferId(42), now), "a made-up id");
        assert!(
            !may_still_arrive(TransferId(u128::MAX), now),
            "a time far ahead"
        );
        assert!(no_record(TransferId(42), now).contains("was made"));
    }

    #[test]
    fn waits_are_said_in_words() {
        assert_eq!(seconds(1), "1 second");
        assert_eq!(seconds(45), "45 seconds");
        assert_eq!(seconds(300), "5 minutes");
    }
}
