//! The teller service: validates and authorizes every teller request before it touches
//! the store, runs it here or forwards it to the branch that must run it, and answers
//! requests forwarded by other branches.
//!
//! Routing, one rule: **a session's requests run at the branch that issued it.** A
//! customer logs in at their account's branch (a login sent elsewhere is forwarded
//! there) and an admin at the branch they administer, so the issuing branch owns every
//! account the session may touch: it is the authority for every money id the session
//! can send (it coordinates the transfer, or does the deposit or withdrawal), and it
//! checks the authorization table (`authz.rs`) for every request. Any other branch
//! only passes the request on, so a retry of an id reaches the same authority wherever
//! the teller connects, and nothing a teller sends can be authorized anywhere else.
//!
//! This file routes and dispatches (where a request came from is an [`Origin`]); the
//! requests themselves are in one file per group: `login` (logging in and out),
//! `money`, `accounts`, `listings`, `audit` (trace, in doubt, reconcile) and `forward`
//! (requests passed between branches).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use libp2p::PeerId;
use wire::teller::{
    LineAnswer, Scope, SessionToken, TellerOp, TellerRequest, TellerResponse, TransferState,
    Unavailable,
};
use wire::{AccountNumber, Amount, BranchId, Refusal, TransferId};

use super::authz;
use super::engine::EngineHandle;
use super::logins::Logins;
use super::now_ms;
use super::sessions::{SessionInfo, Sessions};
use crate::p2p::network::Client;
use crate::store::reader::Reader;
use crate::store::writer::WriterHandle;
use crate::store::{Movement, StoreError};
use client::network_file::NetworkFile;

mod accounts;
mod audit;
mod forward;
mod listings;
mod login;
mod money;

/// Everything a branch needs to answer tellers and forwarded requests.
#[derive(Debug)]
pub struct Service {
    pub(crate) me: BranchId,
    pub(crate) network: Arc<NetworkFile>,
    pub(crate) writer: WriterHandle,
    pub(crate) engine: EngineHandle,
    pub(crate) client: Client,
    pub(crate) sessions: Mutex<Sessions>,
    /// The largest deposit a customer may make (`branch-node init`).
    pub(crate) customer_deposit_max: Amount,
    /// The teller seals taken on requests other branches passed on.
    pub(crate) seals: super::seals::Seals,
    /// Read-only connections: reads never wait behind the writer's batches.
    pub(crate) reader: Reader,
    /// The login throttle and the argon2 budget.
    pub(crate) logins: Arc<Logins>,
    /// Forwards in flight to each other branch, bounded by
    /// [`wire::limits::FORWARDS_PER_BRANCH_MAX`].
    pub(crate) forwards: std::collections::HashMap<BranchId, tokio::sync::Semaphore>,
    /// Forwards in flight for each teller, bounded by
    /// [`wire::limits::FORWARDS_PER_TELLER_MAX`]: one teller cannot take every forward.
    pub(crate) forwarders: Arc<super::shares::Shares>,
    /// Whether admins may use the fault switch (`branch-node run --fault-switch`).
    pub(crate) fault_switch: bool,
    /// The branch's key: signs its statements for `admin reconcile`.
    pub(crate) key: Arc<wire::BranchKey>,
    /// This copy's fence lease: no money moves, and no change is answered, without it.
    pub(crate) lease: super::fence::Lease,
    /// Payee lookups per login (`lookups.rs`).
    pub(crate) lookups: Mutex<super::lookups::Lookups>,
}

/// Where a teller request came from: this decides whether it may be passed on and
/// what proves the teller asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The teller is connected to this node.
    Teller,
    /// One of this branch's own replicas passed it on for the teller it names (a
    /// follower to its leader): served as if the teller were connected here.
    OwnReplica,
    /// Another branch passed it on for the teller it names: it is never passed on
    /// again, and runs only under the teller's seal (`seals.rs`).
    OtherBranch,
}

/// Why a request got no business answer: a final refusal, or not carried out now.
#[derive(Debug)]
pub(crate) enum Fail {
    Refused(Refusal),
    Unavailable(Unavailable),
}

impl From<Refusal> for Fail {
    fn from(r: Refusal) -> Self {
        Fail::Refused(r)
    }
}

impl From<Unavailable> for Fail {
    fn from(u: Unavailable) -> Self {
        Fail::Unavailable(u)
    }
}

pub(crate) type Answer = Result<TellerResponse, Fail>;

/// A money state as a metrics label.
fn state_outcome(state: &TransferState) -> &'static str {
    match state {
        TransferState::Committed => "committed",
        TransferState::Aborted(r) => r.code(),
        TransferState::Pending => "pending",
        TransferState::Unknown => "unknown",
    }
}

/// What an answer came to, as a metrics label: "ok", a money state, a refusal code or
/// the code of why it was not carried out.
fn outcome_of(answer: &Answer) -> &'static str {
    match answer {
        Ok(TellerResponse::Receipt { state, .. }) => state_outcome(state),
        Ok(_) => "ok",
        Err(Fail::Refused(r)) => r.code(),
        Err(Fail::Unavailable(u)) => u.code(),
    }
}

/// What one line of a bulk payment came to, as the same label.
fn line_outcome(answer: &LineAnswer) -> &'static str {
    match answer {
        LineAnswer::State(state) => state_outcome(state),
        LineAnswer::Refused(r) => r.code(),
        LineAnswer::Unavailable(u) => u.code(),
    }
}

/// One money answer given here (a request's, or one line's of a bulk payment): counted
/// and timed, and logged with its id while the log's allowance lasts (past it, counted
/// as unlogged).
fn answered(kind: &'static str, id: TransferId, outcome: &'static str, started: Instant) {
    let metrics = crate::metrics::get();
    metrics.money_answer(kind, outcome, started);
    if crate::metrics::log_line_allowed() {
        let ms = started.elapsed().as_millis();
        tracing::info!(%id, kind, outcome, ms, "money answered");
    } else {
        metrics.money_lines_unlogged.inc();
    }
}

/// Whether `op` moves money or opens or closes an account: it needs this copy's fence
/// lease (`fence.rs`), and its answer is confirmed against it.
fn changes_books(op: &TellerOp) -> bool {
    matches!(
        op,
        TellerOp::Deposit { .. }
            | TellerOp::Withdraw { .. }
            | TellerOp::Transfer(_)
            | TellerOp::TransferBatch { .. }
            | TellerOp::OpenAccount { .. }
            | TellerOp::CloseAccount { .. }
    )
}

/// A store failure: logged here, and told as "may or may not have happened".
pub(crate) fn store_failed(e: StoreError) -> Fail {
    tracing::error!("store failed: {e}");
    Fail::Unavailable(Unavailable::StoreFailed)
}

impl Service {
    /// Answers one teller request from `peer`, which came from `origin`.
    pub async fn teller(
        &self,
        peer: PeerId,
        request: TellerRequest,
        origin: Origin,
    ) -> TellerResponse {
        let op = request.op.name();
        match self.route(peer, request, origin).await {
            Ok(r) => r,
            Err(Fail::Refused(refusal)) => {
                tracing::info!(%peer, op, %refusal, "teller request refused");
                TellerResponse::Refused(refusal)
            }
            Err(Fail::Unavailable(why)) => {
                tracing::info!(%peer, op, %why, "teller request not carried out");
                TellerResponse::Unavailable(why)
            }
        }
    }

    async fn route(&self, peer: PeerId, request: TellerRequest, origin: Origin) -> Answer {
        let passed_on = origin == Origin::OtherBranch;
        request.validate()?;
        if let TellerOp::Login { user, .. } | TellerOp::SealedLogin { user, .. } = &request.op {
            return match user.parse::<AccountNumber>() {
                Ok(a) if a.branch() == self.me => self.login_here(peer, request.op, origin).await,
                Ok(_) if passed_on => Err(Refusal::BadCredentials.into()),
                Ok(a) if self.network.get(a.branch()).is_some() => {
                    self.forward_teller(a.branch(), peer, request).await
                }
                Ok(_) => Err(Refusal::BadCredentials.into()),
                Err(_) => self.login_here(peer, request.op, origin).await,
            };
        }
        let token = request.session.ok_or(Unavailable::SessionExpired)?;
        let issuer = token.issuer();
        if issuer != self.me {
            if passed_on || self.network.get(issuer).is_none() {
                return Err(Unavailable::SessionExpired.into());
            }
            return self.forward_teller(issuer, peer, request).await;
        }
        let session = self
            .sessions()
            .get(token, &peer, now_ms())
            .ok_or(Unavailable::SessionExpired)?;
        if passed_on {
            // Another branch names the teller: only the teller's seal proves it asked.
            self.seals.take(&peer, &request, now_ms())?;
        }
        authz::check(&session, self.me, &request.op)?;
        authz::deposit_within(&session, &request.op, self.customer_deposit_max)?;
        self.execute(peer, token, &session, request.op).await
    }

    /// The session table; a panic elsewhere while it was held leaves nothing half-done
    /// in it (every change is one map operation), so a poisoned lock is used as it is.
    pub(crate) fn sessions(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `op`; a money request is counted in the metrics with its answer and time.
    async fn execute(
        &self,
        peer: PeerId,
        token: SessionToken,
        session: &SessionInfo,
        op: TellerOp,
    ) -> Answer {
        let money = match &op {
            TellerOp::Deposit { .. } => Some("deposit"),
            TellerOp::Withdraw { .. } => Some("withdrawal"),
            TellerOp::Transfer(_) => Some("transfer"),
            _ => None,
        };
        let id = op.money_id();
        let started = Instant::now();
        let fenced = changes_books(&op);
        let answer = if fenced {
            match self.lease.serving() {
                Ok(()) => {
                    let answer = self.execute_op(peer, token, session, op).await;
                    self.confirmed(answer).await
                }
                Err(why) => Err(why.into()),
            }
        } else {
            self.execute_op(peer, token, session, op).await
        };
        if let (Some(kind), Some(id)) = (money, id) {
            answered(kind, id, outcome_of(&answer), started);
        }
        answer
    }

    /// `answer`, once the lease is seen to hold after the change it reports became
    /// durable (the fence, `fence.rs`). If it does not, a final outcome may not stand:
    /// it is told `lease_lost` (ask again with the id) instead.
    async fn confirmed(&self, answer: Answer) -> Answer {
        let final_state = |s: &TransferState| s.is_final();
        let settles = match &answer {
            Ok(TellerResponse::Receipt { state, .. }) => final_state(state),
            Ok(TellerResponse::Receipts(lines)) => lines
                .iter()
                .any(|l| matches!(&l.answer, LineAnswer::State(s) if final_state(s))),
            Ok(TellerResponse::Account(_)) => true,
            _ => false,
        };
        if !settles {
            return answer;
        }
        let Err(why) = self.lease.still_serving().await else {
            return answer;
        };
        tracing::warn!(%why, "a change was made but this copy's lease did not hold: answered lease_lost");
        match answer {
            Ok(TellerResponse::Receipts(mut lines)) => {
                for l in &mut lines {
                    if matches!(&l.answer, LineAnswer::State(s) if final_state(s)) {
                        l.answer = LineAnswer::Unavailable(Unavailable::LeaseLost);
                    }
                }
                Ok(TellerResponse::Receipts(lines))
            }
            _ => Err(Unavailable::LeaseLost.into()),
        }
    }

    async fn execute_op(
        &self,
        peer: PeerId,
        token: SessionToken,
        session: &SessionInfo,
        op: TellerOp,
    ) -> Answer {
        match op {
            TellerOp::Login { .. } | TellerOp::SealedLogin { .. } => {
                Err(Refusal::InvalidInput.into())
            }
            TellerOp::EnrollOtp { user, password } => {
                self.enroll_otp(peer, session, user, password).await
            }
            TellerOp::Logout => self.logout(token, peer).await,
            TellerOp::Balance { account } => self.balance(account).await,
            TellerOp::Deposit {
                id,
                account,
                amount,
            } => self.movement(Movement::Deposit, id, account, amount).await,
            TellerOp::Withdraw {
                id,
                account,
                amount,
            } => {
                self.movement(Movement::Withdrawal, id, account, amount)
                    .await
            }
            TellerOp::Transfer(spec) => self.transfer(spec).await,
            TellerOp::History { account, page } => self.history(account, page).await,
            TellerOp::TransferStatus { id } => self.status(session, id).await,
            TellerOp::Trace { id } => self.trace(id).await,
            TellerOp::InDoubt => self.in_doubt().await,
            TellerOp::Reconcile { cut_ms } => self.reconcile(cut_ms).await,
            TellerOp::OpenAccount {
                customer,
                password,
                existing,
            } => self.open_account(customer, password, existing).await,
            TellerOp::CloseAccount {
                account,
                admin_password,
            } => {
                self.close_account(peer, session, account, admin_password)
                    .await
            }
            TellerOp::ListAccounts { scope, page } => self.accounts(scope, page).await,
            TellerOp::ListTransactions {
                scope,
                page,
                filter,
                network,
            } => match scope {
                Scope::Branch => self.branch_transactions(page, filter).await,
                Scope::Network => self.network_transactions(page, filter, network).await,
            },
            TellerOp::SetLinkFault { branch, fault } => self.set_link_fault(branch, fault).await,
            TellerOp::TransferBatch { transfers } => self.transfer_batch(session, transfers).await,
            TellerOp::Payee { account } => self.payee(session, account).await,
            TellerOp::OwnAccounts => self.own_accounts(token, session).await,
            TellerOp::FindCustomer { national_id } => self.find_customer(&national_id).await,
            TellerOp::RevealNationalId {
                account,
                admin_password,
            } => {
                self.reveal_national_id(peer, session, account, admin_password)
                    .await
            }
        }
    }
}
