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

use wire::teller::{LineAnswer, LineReceipt, TellerOp, TellerResponse, TransferState, Unavailable};
use wire::twopc::TransferSpec;
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
/// Longest one attempt waits, in milliseconds, when the branch has other replicas: a
/// replica that stopped answering (paused, cut off) costs this much before the same
/// request goes to the next one (safe: the id keeps one outcome).
pub const MONEY_REPLICA_ATTEMPT_MS: u64 = 4_000;

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
    Committed { id: TransferId },
    Refused { id: TransferId, reason: Refusal },
    NotDone { id: TransferId, why: Why },
    Unknown { id: TransferId, why: Why },
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

/// Why the latest attempt did not end the request: its stable code, the branch it
/// concerns (if one), and the details for logs and `--json` (`text`). People are told
/// the code's sentence ([`crate::say`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Why {
    pub text: String,
    pub code: &'static str,
    pub branch: Option<wire::BranchId>,
}

impl Why {
    pub fn new(text: impl Into<String>, code: &'static str) -> Why {
        Why {
            text: text.into(),
            code,
            branch: None,
        }
    }

    pub fn of(e: &TellerError) -> Why {
        Why {
            text: e.to_string(),
            code: e.code(),
            branch: e.branch(),
        }
    }
}

/// What one attempt's answer means for the policy.
#[derive(Clone, Debug)]
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
        why: Why::new(text, code),
    }
}

/// What one attempt's answer (`None`: none came in time) means for the policy.
fn step(answer: Option<Result<TellerResponse, TellerError>>) -> Step {
    let Some(answer) = answer else {
        return retry(true, "no answer in time".into(), "no_answer");
    };
    match answer {
        Ok(TellerResponse::Receipt { state, .. }) => state_step(state),
        Ok(other) => retry(true, format!("unexpected answer {other:?}"), "unexpected"),
        Err(TellerError::Refused(r)) => Step::Refused(r),
        Err(TellerError::Unavailable(Unavailable::SessionExpired)) => Step::Renew,
        Err(e) => retry(e.may_have_happened(), e.to_string(), e.code()),
    }
}

fn state_step(state: TransferState) -> Step {
    if state.is_final() {
        Step::Final(state)
    } else {
        retry(true, "the bank has not decided yet".into(), "pending")
    }
}

/// What one line of a batch's answer means for the policy: what the same answer to a
/// transfer of its own would.
fn line_step(answer: LineAnswer) -> Step {
    match answer {
        LineAnswer::State(state) => state_step(state),
        LineAnswer::Refused(r) => Step::Refused(r),
        LineAnswer::Unavailable(u) => step(Some(Err(TellerError::Unavailable(u)))),
    }
}

/// Times a lost session is renewed within one request before it counts as a failure.
const RENEWALS_MAX: u32 = 2;

/// One money id's way through the policy.
struct Track {
    id: TransferId,
    /// Whether some attempt may have reached the bank: from then on only a final
    /// outcome ends the request as anything but "unknown".
    arrived: bool,
    why: Why,
}

impl Track {
    fn new(id: TransferId) -> Track {
        Track {
            id,
            arrived: false,
            why: Why::new("not sent", "not_sent"),
        }
    }

    /// Takes one attempt's answer: the final answer when it ends the request.
    fn take(&mut self, step: Step) -> Option<MoneyAnswer> {
        let id = self.id;
        match step {
            Step::Final(TransferState::Aborted(reason)) => {
                Some(MoneyAnswer::Refused { id, reason })
            }
            Step::Final(_) => Some(MoneyAnswer::Committed { id }),
            Step::Refused(reason) if !self.arrived => Some(MoneyAnswer::Refused { id, reason }),
            Step::Refused(reason) => {
                self.why = Why::new(format!("refused on a retry: {reason}"), reason.code());
                None
            }
            Step::Renew => {
                self.why = session_expired();
                None
            }
            Step::Retry { arrived, why } => {
                self.arrived |= arrived;
                self.why = why;
                None
            }
        }
    }

    /// Logging in again was refused: before anything may have arrived, that refusal is
    /// the answer; after, the request's outcome is not known.
    fn login_refused(&self, reason: Refusal) -> MoneyAnswer {
        if self.arrived {
            MoneyAnswer::Unknown {
                id: self.id,
                why: Why::new(
                    format!("the session ended and logging in again was refused: {reason}"),
                    reason.code(),
                ),
            }
        } else {
            MoneyAnswer::Refused {
                id: self.id,
                reason,
            }
        }
    }

    /// The policy's time ran out without a final answer.
    fn give_up(&self) -> MoneyAnswer {
        let (id, why) = (self.id, self.why.clone());
        if self.arrived {
            MoneyAnswer::Unknown { id, why }
        } else {
            MoneyAnswer::NotDone { id, why }
        }
    }
}

/// The policy's clock: how long the next attempt may wait, and the growing pause
/// between attempts.
struct Clock<'a> {
    policy: &'a RetryPolicy,
    started: Instant,
    backoff: Duration,
    renewals: u32,
}

impl Clock<'_> {
    fn start(policy: &RetryPolicy) -> Clock<'_> {
        Clock {
            policy,
            started: Instant::now(),
            backoff: policy.backoff,
            renewals: 0,
        }
    }

    /// The longest the next attempt through `teller` may wait for its answer.
    fn attempt_limit(&self, teller: &Teller) -> Duration {
        let left = self.policy.wait.saturating_sub(self.started.elapsed());
        let mut limit = self.policy.attempt_timeout;
        if teller.replicas() > 1 {
            limit = limit.min(Duration::from_millis(MONEY_REPLICA_ATTEMPT_MS));
        }
        limit.min(left.max(Duration::from_millis(ATTEMPT_MIN_MS)))
    }

    /// Pauses before the next attempt; false when the policy's time would run out first.
    async fn pause(&mut self) -> bool {
        if self.started.elapsed() + self.backoff > self.policy.wait {
            return false;
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(self.policy.backoff_max);
        true
    }

    /// Whether a lost session may be renewed once more in this request.
    fn may_renew(&mut self, teller: &Teller) -> bool {
        let ok = self.renewals < RENEWALS_MAX && teller.can_renew();
        self.renewals += u32::from(ok);
        ok
    }
}

/// The policy for requests sent together (one, or a bulk payment's lines): each ends
/// at its final answer, the rest are sent again until `policy.wait` runs out, and a
/// lost session is renewed for all of them.
struct Drive<'a> {
    tracks: Vec<Track>,
    done: Vec<Option<MoneyAnswer>>,
    clock: Clock<'a>,
}

impl<'a> Drive<'a> {
    fn new(ids: impl IntoIterator<Item = TransferId>, policy: &'a RetryPolicy) -> Drive<'a> {
        let tracks: Vec<Track> = ids.into_iter().map(Track::new).collect();
        Drive {
            done: vec![None; tracks.len()],
            tracks,
            clock: Clock::start(policy),
        }
    }

    /// The indexes still without a final answer, if any.
    fn open(&self) -> Option<Vec<usize>> {
        let open: Vec<usize> = (0..self.done.len())
            .filter(|&i| self.done[i].is_none())
            .collect();
        (!open.is_empty()).then_some(open)
    }

    /// Takes one attempt's steps for `open` (renewing a lost session, or pausing before
    /// the next attempt); false when the policy's time has run out.
    async fn take(&mut self, teller: &mut Teller, open: &[usize], steps: Vec<Step>) -> bool {
        let lost = steps.iter().all(|s| matches!(s, Step::Renew));
        if lost && self.clock.may_renew(teller) {
            // Renewed, nothing is lost by sending again at once.
            match teller.renew().await {
                Ok(()) => return true,
                Err(TellerError::Refused(reason)) => {
                    for &i in open {
                        self.done[i] = Some(self.tracks[i].login_refused(reason));
                    }
                    return true;
                }
                Err(e) => open.iter().for_each(|&i| self.tracks[i].why = Why::of(&e)),
            }
        } else {
            for (&i, step) in open.iter().zip(steps) {
                self.done[i] = self.tracks[i].take(step);
            }
        }
        self.done.iter().all(Option::is_some) || self.clock.pause().await
    }

    /// Every request's answer: its final one, or what running out of time makes it.
    fn answers(self) -> Vec<MoneyAnswer> {
        self.done
            .into_iter()
            .zip(&self.tracks)
            .map(|(d, t)| d.unwrap_or_else(|| t.give_up()))
            .collect()
    }
}

/// Sends money request `op` (its id made by the caller) until a final answer comes or
/// `policy.wait` runs out, renewing a lost session with the teller's kept credentials.
pub async fn send(teller: &mut Teller, op: TellerOp, policy: &RetryPolicy) -> MoneyAnswer {
    let id = op.money_id().unwrap_or(TransferId(0));
    let mut drive = Drive::new([id], policy);
    while let Some(open) = drive.open() {
        let (limit, from) = (drive.clock.attempt_limit(teller), teller.replica_in_use());
        let answer = tokio::time::timeout(limit, teller.call(op.clone())).await;
        if answer.is_err() {
            teller.move_on_from(from).await;
        }
        if !drive.take(teller, &open, vec![step(answer.ok())]).await {
            break;
        }
    }
    let mut answers = drive.answers();
    answers.pop().unwrap_or_else(|| Track::new(id).give_up())
}

/// Sends `specs` (at most [`wire::limits::BATCH_LINES_MAX`]) as one `TransferBatch`
/// under the same policy as [`send`], line by line: a line ends at its final answer,
/// the others are sent again (same ids) until theirs come or `policy.wait` runs out.
/// The answers are in the order of `specs`.
pub async fn send_batch(
    teller: &mut Teller,
    specs: &[TransferSpec],
    policy: &RetryPolicy,
) -> Vec<MoneyAnswer> {
    let mut drive = Drive::new(specs.iter().map(|s| s.id), policy);
    while let Some(open) = drive.open() {
        let transfers = open.iter().map(|&i| specs[i]).collect();
        let op = TellerOp::TransferBatch { transfers };
        let (limit, from) = (drive.clock.attempt_limit(teller), teller.replica_in_use());
        let steps = match tokio::time::timeout(limit, teller.call(op)).await {
            Ok(Ok(TellerResponse::Receipts(lines))) => batch_steps(&open, specs, &lines),
            Err(_) => {
                teller.move_on_from(from).await;
                vec![step(None); open.len()]
            }
            other => vec![step(other.ok()); open.len()],
        };
        if !drive.take(teller, &open, steps).await {
            break;
        }
    }
    drive.answers()
}

/// Each open line's step from a batch answer; an answer that does not line up with
/// the request (another length or other ids) is "unexpected" for every line.
fn batch_steps(open: &[usize], specs: &[TransferSpec], lines: &[LineReceipt]) -> Vec<Step> {
    let lined_up =
        lines.len() == open.len() && open.iter().zip(lines).all(|(&i, l)| l.id == specs[i].id);
    if !lined_up {
        let odd = retry(
            true,
            "an answer that does not match the batch".into(),
            "unexpected",
        );
        return vec![odd; open.len()];
    }
    lines.iter().map(|l| line_step(l.answer)).collect()
}

fn session_expired() -> Why {
    Why::of(&TellerError::Unavailable(Unavailable::SessionExpired))
}

#[cfg(test)]
mod tests {
    use super::*;
    use client::peer::ClientError;
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
