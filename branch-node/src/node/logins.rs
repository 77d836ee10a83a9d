//! Logins and every other password check at a branch: the throttle (`guard.rs`), a
//! bound on concurrent argon2 work, one-time codes, and enrolment for them.
//!
//! Every path costs the same until the password is verified: a throttled attempt is
//! refused before the login is looked up; an admitted one reads the user row (or
//! finds none) and runs one argon2 verification (against a dummy hash for an unknown
//! login) on threads of their own, behind a bounded queue. Only a verified password
//! goes on to the writer (one-time code, session).
//!
//! A teller that logged in to a login before (trusted for it, `guard.rs`) has a lane
//! of its own: its checks wait in a queue of their own, taken first, with places a
//! flood of other attempts cannot fill, so the owner at their usual teller logs in
//! during a flood.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use libp2p::PeerId;
use wire::limits::{
    LOGIN_TRUST_MS, PASSWORD_CHECKS_RESERVED_PER_CORE, PASSWORD_CHECKS_WAITING_PER_CORE,
};
use wire::teller::{Role, TellerResponse, Unavailable};

use super::guard::{Attempt, Guard};
use super::now_ms;
use super::service::{Answer, Fail, Service, store_failed};
use super::sessions::SessionInfo;
use crate::store::ops::{WriteOp, WriteResult};
use crate::store::throttle::{Kept, ThrottleOp};
use crate::store::{LoginRow, auth};

/// One password to check, and where its answer goes.
type Check = (String, LoginRow, tokio::sync::oneshot::Sender<bool>);

/// The checks waiting for a password-check thread: the trusted lane's first.
#[derive(Debug, Default)]
struct Queue {
    lanes: Mutex<Lanes>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct Lanes {
    trusted: VecDeque<Check>,
    others: VecDeque<Check>,
    closed: bool,
}

/// Checks waiting in one lane, and how many may.
#[derive(Debug)]
struct Lane {
    waiting: AtomicUsize,
    max: usize,
}

impl Lane {
    fn new(max: usize) -> Lane {
        Lane {
            waiting: AtomicUsize::new(0),
            max,
        }
    }

    /// Takes a place, or `false` when the lane is full.
    fn enter(&self) -> bool {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn leave(&self) {
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The login throttle and the argon2 budget of one branch.
#[derive(Debug)]
pub struct Logins {
    guard: Mutex<Guard>,
    /// Argon2 runs on a few threads of its own, never on the shared blocking pool:
    /// each check allocates 19 MiB, and the allocator keeps that much per thread that
    /// ever ran one (a flood grew a node to 750 MB on 500 pool threads).
    queue: Arc<Queue>,
    others: Lane,
    trusted: Lane,
}

impl Logins {
    /// Password checks run on at most `cores - 1` cores at once (one on a one-core
    /// machine), so a login flood always leaves a core for 2PC and the writer, with a
    /// bounded queue.
    pub fn new(cores: usize) -> Logins {
        let cores = cores.max(1);
        let queue = Arc::new(Queue::default());
        for i in 0..cores.saturating_sub(1).max(1) {
            let queue = Arc::clone(&queue);
            let spawned = std::thread::Builder::new()
                .name(format!("password-check-{i}"))
                .spawn(move || password_checker(&queue));
            if let Err(e) = spawned {
                tracing::error!("cannot start a password-check thread: {e}");
            }
        }
        Logins {
            guard: Mutex::default(),
            queue,
            others: Lane::new(cores * PASSWORD_CHECKS_WAITING_PER_CORE),
            trusted: Lane::new(cores * PASSWORD_CHECKS_RESERVED_PER_CORE),
        }
    }

    /// Takes in the throttle's lasting part, read from the store.
    pub fn load(&self, kept: Kept) {
        self.guard().load(kept);
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, Guard> {
        self.guard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs argon2 for `password` against `row` on the password-check threads, in the
    /// trusted lane when `trusted`; `Overloaded` at once when its lane is full.
    async fn verify(&self, password: String, row: LoginRow, trusted: bool) -> Result<bool, Fail> {
        let lane = if trusted { &self.trusted } else { &self.others };
        if !lane.enter() {
            return Err(Unavailable::Overloaded.into());
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        {
            let mut lanes = self
                .queue
                .lanes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match trusted {
                true => lanes.trusted.push_back((password, row, reply)),
                false => lanes.others.push_back((password, row, reply)),
            }
        }
        self.queue.ready.notify_one();
        let verified = answer.await.map_err(|_| Unavailable::Stopping);
        lane.leave();
        Ok(verified?)
    }
}

impl Drop for Logins {
    fn drop(&mut self) {
        self.queue
            .lanes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.queue.ready.notify_all();
    }
}

/// A password-check thread: takes checks off the queue, the trusted lane first, until
/// the branch's logins are dropped.
fn password_checker(queue: &Queue) {
    loop {
        let next = {
            let mut lanes = queue.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(c) = lanes
                    .trusted
                    .pop_front()
                    .or_else(|| lanes.others.pop_front())
                {
                    break Some(c);
                }
                if lanes.closed {
                    break None;
                }
                lanes = queue
                    .ready
                    .wait(lanes)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        let Some((password, row, reply)) = next else {
            return;
        };
        let _ = reply.send(auth::login_verify(&password, &row));
    }
}

/// What an on-site admin attempt's login count is kept under: apart from the login's
/// own, so strangers' failures elsewhere never delay an admin at the branch's machine
/// (whose own failures are throttled the same way, on their own).
const ON_SITE: &str = "\u{0}on-site";

/// An admin login enrolled for one-time codes: from the branch's own machine, with a
/// code, its attempts are counted apart ([`ON_SITE`]) and take the trusted lane.
fn on_site_admin(row: &LoginRow) -> bool {
    matches!(
        row,
        LoginRow::Found {
            role: Role::Admin,
            enrolled: true,
            ..
        }
    )
}

/// Whether the store keeps the counts of `attempt`'s login: an existing login's own
/// (an on-site admin's are kept by this node only).
fn lasting(attempt: &Attempt) -> bool {
    attempt.exists() && !attempt.login().contains(ON_SITE)
}

/// The answer to a throttled attempt, at once: holding it back would keep an in-service
/// place (shared with the teller's other requests, and at a forwarding branch with
/// everyone's forwards) for a request that has nothing left to do.
fn throttled(retry_after_ms: u64) -> Fail {
    Unavailable::Throttled { retry_after_ms }.into()
}

impl Service {
    /// Checks `password` for `login`, asked by teller `peer`, under the throttle. On
    /// success the attempt must be handed back ([`Service::password_ok`]) once the whole
    /// login succeeded; dropping it leaves the attempt counted as a failure.
    async fn check_password(
        &self,
        peer: PeerId,
        login: &str,
        password: String,
        (otp_missing, local): (bool, bool),
    ) -> Result<(Attempt, LoginRow), Fail> {
        let now = now_ms();
        let waited = self.logins.guard().peer_wait(peer, now);
        if waited > 0 {
            return Err(throttled(waited));
        }
        let who = login.to_owned();
        let row = self
            .reader
            .read(move |c, _| auth::login_read(c, &who))
            .await
            .map_err(store_failed)?;
        let exists = matches!(row, LoginRow::Found { .. });
        let on_site = local && !otp_missing && on_site_admin(&row);
        let key = match on_site {
            true => format!("{login}{ON_SITE}"),
            false => login.to_owned(),
        };
        let admitted = self.logins.guard().admit(&key, exists, peer, now);
        let attempt = match admitted {
            Ok(attempt) => attempt,
            Err(retry_after_ms) => return Err(throttled(retry_after_ms)),
        };
        let trusted = attempt.trusted() || on_site;
        match self.logins.verify(password, row.clone(), trusted).await {
            Ok(true) => Ok((attempt, row)),
            Ok(false) => {
                self.failed(&attempt).await;
                Err(auth::wrong_password(&row, otp_missing).into())
            }
            Err(turned_away) => {
                // Overloaded (or stopping) before the check: no attempt was made.
                self.logins.guard().not_made(attempt);
                Err(turned_away)
            }
        }
    }

    /// The attempt logged in: its counts are undone and its teller trusted for the
    /// login, here and in the store.
    async fn password_ok(&self, attempt: Attempt) {
        let now = now_ms();
        let kept = lasting(&attempt).then(|| ThrottleOp::Succeeded {
            login: attempt.login().to_owned(),
            peer: attempt.peer().to_bytes(),
            until_ms: now.saturating_add(LOGIN_TRUST_MS),
            now_ms: now,
        });
        self.logins.guard().succeeded(attempt, now);
        if let Some(op) = kept {
            self.keep(op).await;
        }
    }

    /// The attempt failed: an existing login's count, as the guard has it now, goes to
    /// the store too, so a restart or a new leader does not forget it.
    async fn failed(&self, attempt: &Attempt) {
        if !lasting(attempt) || attempt.trusted() {
            return;
        }
        let count = self.logins.guard().count(attempt.login());
        if let Some((failures, last_ms)) = count {
            let login = attempt.login().to_owned();
            let op = ThrottleOp::Failed {
                login,
                failures,
                last_ms,
            };
            self.keep(op).await;
        }
    }

    /// Writes `op`; a store that cannot take it is logged (the live count stands).
    async fn keep(&self, op: ThrottleOp) {
        let written = self.writer.call_write(WriteOp::Throttle(op)).await;
        if let Err(e) = written.and_then(WriteResult::into_done) {
            tracing::warn!("the login throttle's change was not stored: {e}");
        }
    }

    /// A login: the password under the throttle, then (in the writer) the one-time code
    /// of an enrolled login, then a session, stored before its token is handed out.
    /// `local`: the teller is connected here from this machine (not through anyone).
    pub(crate) async fn login(
        &self,
        (peer, local): (PeerId, bool),
        user: String,
        password: String,
        otp: Option<String>,
    ) -> Answer {
        let otp_missing = otp.is_none();
        let (attempt, row) = self
            .check_password(peer, &user, password, (otp_missing, local))
            .await?;
        let now = now_ms();
        let login = user.clone();
        let info = self
            .writer
            .call_write(WriteOp::Login {
                login,
                row,
                otp,
                now_ms: now,
            })
            .await
            .and_then(WriteResult::into_login)
            .map_err(store_failed)?;
        let info = match info {
            Ok(info) => info,
            Err(refusal) => {
                // A wrong or used one-time code: a failed attempt like a wrong password.
                self.failed(&attempt).await;
                return Err(refusal.into());
            }
        };
        self.password_ok(attempt).await;
        let opened = self.sessions().open(peer, info, rand::random(), now);
        let info = opened.info;
        let (row, evicted, numbers) = (opened.row, opened.evicted, info.accounts.clone());
        let accounts = self
            .writer
            .call_write(WriteOp::OpenSession {
                row,
                evicted,
                accounts: numbers,
                now_ms: now,
            })
            .await
            .and_then(WriteResult::into_accounts)
            .map_err(store_failed)?;
        tracing::info!(%peer, login = %info.login, role = ?info.role, "logged in");
        Ok(TellerResponse::LoggedIn {
            session: opened.token,
            role: info.role,
            accounts,
            expires_at_ms: info.expires_at_ms,
            now_ms: now_ms(),
        })
    }

    /// The session's own password typed again (closing an account, enrolling a
    /// device), checked under the same throttle as a login.
    pub(crate) async fn reauthenticate(
        &self,
        peer: PeerId,
        session: &SessionInfo,
        password: String,
    ) -> Result<(), Fail> {
        let (attempt, _) = self
            .check_password(peer, &session.login, password, (false, false))
            .await?;
        self.password_ok(attempt).await;
        Ok(())
    }

    /// Enrols `user` for one-time codes and answers the `otpauth://` URI. A customer
    /// enrols only themselves and only once; an admin may replace a device.
    pub(crate) async fn enroll_otp(
        &self,
        peer: PeerId,
        session: &SessionInfo,
        user: String,
        password: String,
    ) -> Answer {
        self.reauthenticate(peer, session, password).await?;
        let secret = crate::totp::new_secret();
        let replace = session.role == Role::Admin;
        let who = user.clone();
        self.writer
            .call_write(WriteOp::EnrollOtp {
                login: who,
                secret: secret.to_vec(),
                replace,
            })
            .await
            .and_then(WriteResult::into_done)
            .map_err(store_failed)??;
        let issuer = self
            .network
            .get(self.me)
            .map_or_else(|| format!("BankMate {}", self.me), |b| b.name.clone());
        tracing::info!(%peer, by = %session.login, %user, "enrolled for one-time codes");
        Ok(TellerResponse::OtpEnrolled {
            uri: crate::totp::otpauth_uri(&secret, &issuer, &user),
            user,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the other lane full (a flood), an attempt from a trusted teller still gets
    /// a place, and is checked before the flood's waiting checks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trusted_teller_has_places_a_flood_cannot_fill() {
        let logins = Arc::new(Logins::new(1));
        let flood: Vec<_> = (0..logins.others.max)
            .map(|i| {
                let logins = Arc::clone(&logins);
                tokio::spawn(async move {
                    logins
                        .verify(format!("guess-{i}"), LoginRow::Unknown, false)
                        .await
                })
            })
            .collect();
        while logins.others.waiting.load(Ordering::Acquire) < logins.others.max {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let r = logins
            .verify("one more".into(), LoginRow::Unknown, false)
            .await;
        assert!(
            matches!(r, Err(Fail::Unavailable(Unavailable::Overloaded))),
            "{r:?}"
        );
        let r = logins.verify("owner".into(), LoginRow::Unknown, true).await;
        assert!(matches!(r, Ok(false)), "{r:?}");
        let still_waiting = logins.others.waiting.load(Ordering::Acquire);
        assert!(
            still_waiting >= logins.others.max - 3,
            "taken first: {still_waiting} wait"
        );
        for f in flood {
            assert!(matches!(f.await.expect("task"), Ok(false)));
        }
    }
}
