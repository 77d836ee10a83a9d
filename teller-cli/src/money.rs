//! The one retry policy for money (deposits, withdrawals, transfers), used by the
//! subcommands, the menus and the scenario workload alike.
//!
//! The id is made once, before the first send, and every retry sends the same request
//! under it: the id's authority (the branch that owns the account money leaves, or the
//! account of a deposit) records one outcome per id, so a retry can only learn that
//! outcome, never move money twice. What the teller is finally told is a [`MoneyAnswer`]:
//!
//! - `Committed`: the money moved (exit 0);
//! - `Refused`: final, it did not move and never will (exit 3): either the id's recorded
//!   outcome, or a refusal of the request itself (not authorized, invalid) that nothing
//!   was recorded for because nothing reached the account;
//! - `NotDone`: no attempt can have reached the bank, so nothing happened and nothing
//!   will (exit 4): sending the same id again is safe;
//! - `Unknown`: an attempt may have reached the bank and no final answer came before the
//!   policy's time ran out (exit 5): ask `transfer-status ID`.

use std::time::{Duration, Instant};

use wire::teller::{TellerOp, TellerResponse, TransferState, Unavailable};
use wire::{Refusal, TransferId};

use crate::{Teller, TellerError};

/// How long a money request keeps trying for a final answer, and how.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Stop retrying once this long has passed since the first send.
    pub wait: Duration,
    /// Wait before the second attempt; doubles after each, up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Longest one attempt may wait for its answer (never past `wait`, but at least
    /// [`ATTEMPT_MIN_MS`]).
    pub attempt_timeout: Duration,
}

/// The shortest wait one attempt gets, in milliseconds, even at the end of `wait`.
pub const ATTEMPT_MIN_MS: u64 = 1_000;

/// Default total wait for a final answer, in milliseconds: long enough to ride out a
/// branch restart and its recovery.
pub const MONEY_WAIT_MS: u64 = 30_000;

/// Wait before the second attempt, in milliseconds; it doubles after each attempt...
pub const MONEY_BACKOFF_MS: u64 = 250;
/// ...up to this, in milliseconds.
pub const MONEY_BACKOFF_MAX_MS: u64 = 4_000;
/// Longest one attempt waits, in milliseconds: a branch answers a forwarded request
/// within `FORWARD_TIMEOUT_MS` (8 s), and a teller's own request times out at 10 s.
pub const MONEY_ATTEMPT_TIMEOUT_MS: u64 = 12_000;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            wait: Duration::from_millis(MONEY_WAIT_MS),
            backoff: Duration::from_millis(MONEY_BACKOFF_MS),
            backoff_max: Duration::from_millis(MONEY_BACKOFF_MAX_MS),
            attempt_timeout: Duration::from_millis(MONEY_ATTEMPT_TIMEOUT_MS),
        }
    }
}

/// What a teller is finally told about a money request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoneyAnswer {
    Committed {
        id: TransferId,
    },
    Refused {
        id: TransferId,
        reason: Refusal,
    },
    NotDone {
        id: TransferId,
        why: String,
        code: &'static str,
    },
    Unknown {
        id: TransferId,
        why: String,
    },
}

/// Exit status: the bank refused, finally.
pub const EXIT_REFUSED: u8 = 3;
/// Exit status: not done; nothing happened and nothing will (the branch could not be
/// reached, no session).
pub const EXIT_NOT_DONE: u8 = 4;
/// Exit status: the outcome is not known yet; ask with the id.
pub const EXIT_UNKNOWN: u8 = 5;

impl MoneyAnswer {
    /// The id the answer is about.
    pub fn id(&self) -> TransferId {
        match self {
            MoneyAnswer::Committed { id }
            | MoneyAnswer::Refused { id, .. }
            | MoneyAnswer::NotDone { id, .. }
            | MoneyAnswer::Unknown { id, .. } => *id,
        }
    }

    /// The process exit status that says this answer.
    pub fn exit_code(&self) -> u8 {
        match self {
            MoneyAnswer::Committed { .. } => 0,
            MoneyAnswer::Refused { .. } => EXIT_REFUSED,
            MoneyAnswer::NotDone { .. } => EXIT_NOT_DONE,
            MoneyAnswer::Unknown { .. } => EXIT_UNKNOWN,
        }
    }
}

/// Why the latest attempt did not end the request: said to the teller, with its code.
#[derive(Clone, Debug)]
struct Why {
    text: String,
    code: &'static str,
}

/// What one attempt's answer means for the policy.
enum Step {
    /// The id's final outcome.
    Final(TransferState),
    /// The request itself was refused: final when no earlier attempt may have arrived.
    Refused(Refusal),
    /// The session is gone: log in again, then send again.
    Renew,
    /// Send again; `arrived` when this attempt may have reached the bank.
    Retry { arrived: bool, why: Why },
}

fn retry(arrived: bool, text: String, code: &'static str) -> Step {
    Step::Retry {
        arrived,
        why: Why { text, code },
    }
}

/// What one attempt's answer (`None`: none came in time) means for the policy.
fn step(answer: Option<Result<TellerResponse, TellerError>>) -> Step {
    let Some(answer) = answer else {
        return retry(true, "no answer in time".into(), "no_answer");
    };
    match answer {
        Ok(TellerResponse::Receipt { state, .. }) if state.is_final() => Step::Final(state),
        Ok(TellerResponse::Receipt { .. }) => {
            retry(true, "the bank has not decided yet".into(), "pending")
        }
        Ok(other) => retry(true, format!("unexpected answer {other:?}"), "unexpected"),
        Err(TellerError::Refused(r)) => Step::Refused(r),
        Err(TellerError::Unavailable(Unavailable::SessionExpired)) => Step::Renew,
        Err(e) => retry(e.may_have_happened(), e.to_string(), e.code()),
    }
}

/// Times a lost session is renewed within one request before it counts as a failure.
const RENEWALS_MAX: u32 = 2;

/// Sends money request `op` (its id made by the caller) until a final answer comes or
/// `policy.wait` runs out, renewing a lost session with the teller's kept credentials.
pub async fn send(teller: &mut Teller, op: TellerOp, policy: &RetryPolicy) -> MoneyAnswer {
    let id = op.money_id().unwrap_or(TransferId(0));
    let started = Instant::now();
    let mut backoff = policy.backoff;
    let mut renewals = 0;
    // Whether some attempt may have reached the bank: from then on only a final
    // outcome ends the request as anything but "unknown".
    let mut arrived = false;
    let mut why: Why;
    loop {
        let left = policy.wait.saturating_sub(started.elapsed());
        let limit = policy
            .attempt_timeout
            .min(left.max(Duration::from_millis(ATTEMPT_MIN_MS)));
        let answer = tokio::time::timeout(limit, teller.call(op.clone())).await;
        match step(answer.ok()) {
            Step::Final(TransferState::Aborted(reason)) => {
                return MoneyAnswer::Refused { id, reason };
            }
            Step::Final(_) => return MoneyAnswer::Committed { id },
            Step::Refused(reason) if !arrived => return MoneyAnswer::Refused { id, reason },
            Step::Refused(reason) => {
                why = Why {
                    text: format!("refused on a retry: {reason}"),
                    code: reason.code(),
                };
            }
            Step::Renew if renewals < RENEWALS_MAX && teller.can_renew() => {
                renewals += 1;
                match teller.renew().await {
                    Ok(()) => continue,
                    Err(TellerError::Refused(reason)) => return login_refused(id, arrived, reason),
                    Err(e) => {
                        why = Why {
                            text: e.to_string(),
                            code: e.code(),
                        }
                    }
                }
            }
            Step::Renew => why = session_expired(),
            Step::Retry { arrived: a, why: w } => {
                arrived |= a;
                why = w;
            }
        }
        if started.elapsed() + backoff > policy.wait {
            break;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(policy.backoff_max);
    }
    if arrived {
        MoneyAnswer::Unknown { id, why: why.text }
    } else {
        MoneyAnswer::NotDone {
            id,
            why: why.text,
            code: why.code,
        }
    }
}

fn session_expired() -> Why {
    let u = Unavailable::SessionExpired;
    Why {
        text: u.to_string(),
        code: u.code(),
    }
}

/// Logging in again was refused: before anything may have arrived, that refusal is the
/// answer; after, the request's outcome is not known.
fn login_refused(id: TransferId, arrived: bool, reason: Refusal) -> MoneyAnswer {
    if arrived {
        MoneyAnswer::Unknown {
            id,
            why: format!("the session ended and logging in again was refused: {reason}"),
        }
    } else {
        MoneyAnswer::Refused { id, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use branch_node::p2p::client::ClientError;
    use wire::BranchId;

    /// What the policy makes of one answer: "final", "refused", "renew", or
    /// "retry (arrived)" / "retry (not sent)".
    fn check(answer: Option<Result<TellerResponse, TellerError>>, expected: &str) {
        let got = match step(answer) {
            Step::Final(_) => "final",
            Step::Refused(_) => "refused",
            Step::Renew => "renew",
            Step::Retry { arrived: true, .. } => "retry (arrived)",
            Step::Retry { arrived: false, .. } => "retry (not sent)",
        };
        assert_eq!(got, expected);
    }

    fn receipt(state: TransferState) -> Option<Result<TellerResponse, TellerError>> {
        Some(Ok(TellerResponse::Receipt {
            id: TransferId(1),
            state,
        }))
    }

    fn failed(e: TellerError) -> Option<Result<TellerResponse, TellerError>> {
        Some(Err(e))
    }

    #[test]
    fn each_answer_means_one_thing() {
        let addr: libp2p::Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().expect("addr");
        let b2 = BranchId(2);
        check(receipt(TransferState::Committed), "final");
        check(
            receipt(TransferState::Aborted(Refusal::InsufficientFunds)),
            "final",
        );
        check(receipt(TransferState::Pending), "retry (arrived)");
        check(receipt(TransferState::Unknown), "retry (arrived)");
        check(
            failed(TellerError::Refused(Refusal::Unauthorized)),
            "refused",
        );
        check(
            failed(TellerError::Unavailable(Unavailable::SessionExpired)),
            "renew",
        );
        check(
            failed(TellerError::Unavailable(Unavailable::BranchUnreachable(b2))),
            "retry (not sent)",
        );
        check(
            failed(TellerError::Unavailable(Unavailable::Overloaded)),
            "retry (not sent)",
        );
        check(
            failed(TellerError::Unavailable(Unavailable::Stopping)),
            "retry (not sent)",
        );
        check(
            failed(TellerError::Unavailable(Unavailable::NoAnswer(b2))),
            "retry (arrived)",
        );
        check(
            failed(TellerError::Unavailable(Unavailable::StoreFailed)),
            "retry (arrived)",
        );
        let reason = String::from("x");
        let unreachable = ClientError::Unreachable {
            addr: addr.clone(),
            reason: reason.clone(),
        };
        check(
            failed(TellerError::Connection(unreachable)),
            "retry (not sent)",
        );
        check(
            failed(TellerError::Connection(ClientError::NoAnswer {
                addr,
                reason,
            })),
            "retry (arrived)",
        );
        check(None, "retry (arrived)");
    }
}
