//! Logging in and out: the password checked under the login throttle (`guard.rs`) on
//! the password-check threads (`logins.rs`), one-time codes, and re-authentication for
//! an admin's dangerous requests.

use libp2p::PeerId;
use wire::Refusal;
use wire::teller::{Role, SessionToken, TellerOp, TellerResponse, Unavailable};

use super::{Answer, Fail, Origin, Service, outcome_of, store_failed};
use crate::node::guard::Attempt;
use crate::node::logins::ON_SITE;
use crate::node::now_ms;
use crate::node::sessions::SessionInfo;
use crate::store::ops::{WriteOp, WriteResult};
use crate::store::throttle::ThrottleOp;
use crate::store::{LoginRow, auth};
use wire::limits::LOGIN_TRUST_MS;

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
    /// A login checked here; a sealed one's secrets are opened with this replica's key
    /// first (one that does not open is refused as a wrong password, uncounted).
    pub(super) async fn login_here(&self, peer: PeerId, op: TellerOp, origin: Origin) -> Answer {
        let (user, password, otp) = match op {
            TellerOp::Login {
                user,
                password,
                otp,
            } => (user, password, otp),
            TellerOp::SealedLogin { user, secret } => {
                let opened = secret.open(&self.key, (&peer, &user, self.me));
                let s = opened.map_err(|_| Refusal::BadCredentials)?;
                if !wire::teller::login_fields_ok(&user, &s.password, s.otp.as_deref()) {
                    return Err(Refusal::BadCredentials.into());
                }
                (user, s.password, s.otp)
            }
            _ => return Err(Refusal::InvalidInput.into()),
        };
        // Connected here from this machine, not passed on by anyone.
        let local = origin == Origin::Teller && self.client.from_this_machine(&peer);
        let r = self.login((peer, local), user, password, otp).await;
        crate::metrics::get().login(outcome_of(&r));
        r
    }

    pub(super) async fn logout(&self, token: SessionToken, peer: PeerId) -> Answer {
        let closed = self.sessions().close(token, &peer);
        if let Some(hash) = closed {
            self.writer
                .call_write(WriteOp::CloseSession { token_hash: hash })
                .await
                .map_err(store_failed)?;
        }
        Ok(TellerResponse::LoggedOut)
    }

    /// Checks `password` for `login`, asked by teller `peer`, under the throttle. On
    /// success the attempt must be handed back ([`Service::password_ok`]) once the whole
    /// login succeeded; dropping it leaves the attempt counted as a failure.
    pub(super) async fn check_password(
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
                Err(turned_away.into())
            }
        }
    }

    /// The attempt logged in: its counts are undone and its teller trusted for the
    /// login, here and in the store.
    pub(super) async fn password_ok(&self, attempt: Attempt) {
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
    pub(super) async fn failed(&self, attempt: &Attempt) {
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
    pub(super) async fn keep(&self, op: ThrottleOp) {
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
