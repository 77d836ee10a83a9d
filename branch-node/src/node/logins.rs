//! Logins and every other password check at a branch: the throttle (`guard.rs`), a
//! bound on concurrent argon2 work, one-time codes, and enrolment for them.
//!
//! Every path costs the same until the password is verified: a throttled attempt is
//! refused before the login is looked up; an admitted one reads the user row (or
//! finds none) and runs one argon2 verification (against a dummy hash for an unknown
//! login) under a semaphore sized to the cores. Only a verified password goes on to
//! the writer (one-time code, session).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use libp2p::PeerId;
use tokio::sync::Semaphore;
use wire::Refusal;
use wire::limits::PASSWORD_CHECKS_WAITING_PER_CORE;
use wire::teller::{Role, TellerResponse, Unavailable};

use super::guard::{Attempt, Guard};
use super::now_ms;
use super::service::{Answer, Fail, Service, store_failed};
use super::sessions::SessionInfo;
use crate::store::{LoginRow, auth, bank, sessions as stored_sessions};

/// The login throttle and the argon2 budget of one branch.
#[derive(Debug)]
pub struct Logins {
    guard: Mutex<Guard>,
    checks: Semaphore,
    waiting: AtomicUsize,
    waiting_max: usize,
}

impl Logins {
    /// Password checks run on at most `cores - 1` cores at once (one on a one-core
    /// machine), so a login flood always leaves a core for 2PC and the writer, with a
    /// bounded queue.
    pub fn new(cores: usize) -> Logins {
        let cores = cores.max(1);
        Logins {
            guard: Mutex::default(),
            checks: Semaphore::new(cores.saturating_sub(1).max(1)),
            waiting: AtomicUsize::new(0),
            waiting_max: cores * PASSWORD_CHECKS_WAITING_PER_CORE,
        }
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, Guard> {
        self.guard.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs argon2 for `password` against `row` on the blocking pool, at most one per
    /// core at once; `Overloaded` when too many already wait.
    async fn verify(&self, password: String, row: LoginRow) -> Result<bool, Fail> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.waiting_max {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Unavailable::Overloaded.into());
        }
        let permit = self.checks.acquire().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let _permit = permit.map_err(|_| Unavailable::Stopping)?;
        tokio::task::spawn_blocking(move || auth::login_verify(&password, &row))
            .await
            .map_err(|_| Unavailable::StoreFailed.into())
    }
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
    ) -> Result<(Attempt, LoginRow), Fail> {
        let now = now_ms();
        let attempt = self
            .logins
            .guard()
            .admit(login, peer, now)
            .map_err(|retry_after_ms| Unavailable::Throttled { retry_after_ms })?;
        let who = login.to_owned();
        let row = self
            .reader
            .read(move |c, _| auth::login_read(c, &who))
            .await
            .map_err(store_failed)?;
        if self.logins.verify(password, row.clone()).await? {
            Ok((attempt, row))
        } else {
            Err(Refusal::BadCredentials.into())
        }
    }

    fn password_ok(&self, attempt: Attempt) {
        self.logins.guard().succeeded(attempt, now_ms());
    }

    /// A login: the password under the throttle, then (in the writer) the one-time code
    /// of an enrolled login, then a session, stored before its token is handed out.
    pub(crate) async fn login(
        &self,
        peer: PeerId,
        user: String,
        password: String,
        otp: Option<String>,
    ) -> Answer {
        let (attempt, row) = self.check_password(peer, &user, password).await?;
        let now = now_ms();
        let login = user.clone();
        let info = self
            .writer
            .call(move |c, me| auth::login_record(c, me, &login, &row, true, otp.as_deref(), now))
            .await
            .map_err(store_failed)??;
        self.password_ok(attempt);
        let opened = self.sessions().open(peer, info, rand::random(), now);
        let info = opened.info;
        let (row, evicted, numbers) = (opened.row, opened.evicted, info.accounts.clone());
        let accounts = self
            .writer
            .call(move |c, me| {
                stored_sessions::insert(c, &row, &evicted, now)?;
                let mut out = Vec::new();
                for n in numbers {
                    out.extend(bank::view(c, me, n)?);
                }
                Ok(out)
            })
            .await
            .map_err(store_failed)?;
        tracing::info!(%peer, login = %info.login, role = ?info.role, "logged in");
        Ok(TellerResponse::LoggedIn {
            session: opened.token,
            role: info.role,
            accounts,
            expires_at_ms: info.expires_at_ms,
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
        let (attempt, _) = self.check_password(peer, &session.login, password).await?;
        self.password_ok(attempt);
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
            .call(move |c, _| auth::enroll_otp(c, &who, &secret, replace))
            .await
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
